"""Background tasks (this commit only renames tasks.py to tasks/_lifecycle.py; the next splits it)."""
from ._lifecycle import *  # noqa: F401,F403
from ._lifecycle import __all__  # noqa: F401
