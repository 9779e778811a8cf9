"""Glimpse engine: FastVLM conversion, model management and inference, with no Qt."""

__version__ = "0.1.0"
