"""A shared task board: log in, add cards, and watch every open browser update live.

The demo application that ``sbio run`` serves out of the box, built step by
step in docs/tutorial.md:

* ``configspec.ini``  its own configuration (:func:`sbio.parse_config`);
* ``models.py``       SQLAlchemy models and the session manager (:mod:`sbio.sa`);
* ``namespace.py``    the ``/board`` namespace: login and ACL, live subscriptions,
                      per-board channels and rooms;
* ``throttle.py``     counting failed logins per user name and per connection;
* ``tasks.py``        a :class:`sbio.DaemonTask` re-reading the statistics;
* ``pages.py``        the Flask blueprint serving the page, ``templates/board.html``
                      (with ``static/board.js`` and ``static/demo.css``).
"""
from sbio import parse_config

# First, before the modules below import it.
config = parse_config(__file__)

from .namespace import BoardNamespace  # noqa: E402
from .pages import blueprint  # noqa: E402
from .tasks import stats_task  # noqa: E402

__all__ = ["config", "BoardNamespace", "blueprint", "stats_task"]
