"""A DaemonTask re-reading the statistics every few seconds, for changes nobody announced."""
from sbio import DaemonTask, notify

from . import config


def refresh_stats():
    # Commits, logins and logouts on this server re-run the statistics at once
    # (on_stats in namespace.py). A change nobody announced shows at the next
    # refresh: a script writing to the database, another server sharing no
    # [cluster] with this one. A re-run that finds nothing new pushes nothing.
    notify("stats")


# Registered at import; starts and stops with the server.
stats_task = DaemonTask(refresh_stats, interval=config["stats.interval"], name="board.stats")
