"""Database work under the gevent server: PostgreSQL queries in 50 greenlets do not
block each other, and the server keeps answering other events meanwhile."""
import gevent
from sqlalchemy import text

from sbio import Namespace
from sbio.sa import create_engine

ENGINE = {}
IN_FLIGHT = {"now": 0, "max": 0}


class Work(Namespace):
    name = "/work"

    def on_sleep_in_db(self, seconds: float):
        IN_FLIGHT["now"] += 1
        IN_FLIGHT["max"] = max(IN_FLIGHT["max"], IN_FLIGHT["now"])
        try:
            with ENGINE["engine"].connect() as conn:
                conn.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})
        finally:
            IN_FLIGHT["now"] -= 1
        return "slept"

    def on_ping(self):
        return "pong"


def test_fifty_db_greenlets_and_a_responsive_server(sbio_postgres_url, sbio_server,
                                                     sbio_live_client):
    engine = ENGINE["engine"] = create_engine(sbio_postgres_url, pool_size=50, max_overflow=0)
    try:
        server = sbio_server(Work)
        workers = [sbio_live_client(server, "/work") for _ in range(50)]
        pinger = sbio_live_client(server, "/work")
        calls = [gevent.spawn(w.call, "sleep_in_db", 1.0, timeout=30) for w in workers]
        gevent.sleep(0)
        pongs_while_busy = 0
        # Until the first query returns, every ping answered is one the server
        # answered while all 50 queries were in flight.
        while not any(c.ready() for c in calls):
            assert pinger.call("ping") == "pong"
            pongs_while_busy += 1
        assert pongs_while_busy >= 5
        results = [c.get(timeout=30) for c in calls]
        assert results == ["slept"] * 50
        # every query was in PostgreSQL at the same time: none blocked the hub
        assert IN_FLIGHT["max"] == 50
    finally:
        engine.dispose()
