"""Glimpse's version, the one place it is written: pyproject.toml reads it (``[tool.setuptools.dynamic]``), and so do
the wheel's metadata, ``glimpse --version``, the window, model.json and packaging/build_deb.py. Imports nothing."""

__version__ = "0.1.0"
