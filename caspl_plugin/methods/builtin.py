"""Imports the built-in methods so that they register themselves."""
from . import base  # noqa: F401
from . import maple  # noqa: F401
from . import coop  # noqa: F401
from . import cocoop  # noqa: F401
from . import ivlp  # noqa: F401
from . import promptsrc  # noqa: F401
