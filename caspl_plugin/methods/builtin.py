"""Imports the built-in methods so that they register themselves."""
from . import base, cocoop, coop, ivlp, maple, promptsrc  # noqa: F401
