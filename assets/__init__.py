"""Glimpse's data files, shipped as package data: the icons, and the calibration and held-out pictures the
converter's int8 step needs (``engine.convert.vision_int8.assets_dir``)."""
