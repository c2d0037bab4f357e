"""Old location of :mod:`sbio.testing.config_fixtures` (kept so existing imports work).

Importing it imports :mod:`sbio.testing`, which monkey-patches gevent first
(see there; ``SBIO_MONKEY_PATCH=0`` opts out).
"""
from sbio.testing.config_fixtures import *  # noqa: F403
