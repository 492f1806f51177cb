"""llmdistill: distill a large language model into a small, fast text classifier."""

__version__ = "0.1.0"
