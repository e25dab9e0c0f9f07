"""dropforge: a hot folder for generative models."""

__version__ = "0.1.0"
