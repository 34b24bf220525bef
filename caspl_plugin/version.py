"""The package's version (a module of its own, so every layer can read it without importing the rest)."""
__version__ = "0.1.0"
