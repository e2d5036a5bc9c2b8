"""The pure core: tensors, models and dataclasses in; tensors, numbers and dataclasses out.

No file IO, no Hydra, no printing, no globals. Hooks are scoped by context
managers and always removed, also on error.
"""
