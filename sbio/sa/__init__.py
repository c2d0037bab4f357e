"""SQLAlchemy helpers (this commit only renames sa.py to sa/crud.py; the next splits it)."""
from .crud import *  # noqa: F401,F403
from .crud import __all__  # noqa: F401
