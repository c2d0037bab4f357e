"""A DaemonTask refreshing the statistics every few seconds and pushing them to every page."""
from datetime import datetime, timezone

from sqlalchemy import func, select

from sbio import DaemonTask, notify

from . import config
from .models import Board, Card, Session
from .namespace import COLUMNS, STATS, online


def refresh_stats():
    with Session() as s:
        per_column = dict(s.execute(select(Card.column, func.count()).group_by(Card.column)).all())
        boards = s.scalar(select(func.count()).select_from(Board))
    STATS.update(
        boards=boards,
        cards=[[column, per_column.get(column, 0)] for column in COLUMNS],  # in board order
        online=sorted(set(online.values())),
        updated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    notify("stats")                          # every stats subscription re-runs


# Registered at import; starts and stops with the server.
stats_task = DaemonTask(refresh_stats, interval=config["stats.interval"], name="board.stats")
