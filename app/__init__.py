"""Glimpse desktop app (PySide6). It talks to the model only through the engine API."""
