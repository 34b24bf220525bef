"""Imports the built-in methods so that they register themselves."""
from . import base  # noqa: F401
