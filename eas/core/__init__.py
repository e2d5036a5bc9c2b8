"""The pure core: tensors, models and dataclasses in; tensors, numbers and dataclasses out.

It imports nothing from eas outside ``eas.core``. No file IO, no Hydra, no printing, no
logging, no globals, no resource policy (batch sizes from free memory and retrying on
out-of-memory are the caller's: ``eas.resources``). Hooks are scoped by context managers
and always removed, also on error. ``eas.core.sites`` is the per-architecture site table.
"""
