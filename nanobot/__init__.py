"""nanobot: a lightweight personal AI assistant."""

__version__ = "0.1.0"
__logo__ = "🐈"
