"""lhama: the Llama system in Python."""

__version__ = "0.1.0"
