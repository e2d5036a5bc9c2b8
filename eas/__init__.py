"""eas: research on the activation space of language models."""

__version__ = "0.1.0"
