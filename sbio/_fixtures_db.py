"""Old location of :mod:`sbio.testing.db_fixtures` (kept so existing imports work).

Importing it has no side effects (no monkey-patching): the sbio pytest plugin
patches, when a project loads it (see :mod:`sbio.testing`).
"""
from sbio.testing.db_fixtures import *  # noqa: F403
