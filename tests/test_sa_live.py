"""sbio.sa change notifications reaching real live subscriptions, on SQLite and PostgreSQL."""
import pytest
from sqlalchemy import Column, Text, select

from sbio import Namespace, subscribes
from sbio.sa import SessionManager, create_engine, declarative_base
from sbio.testing import CallError


@declarative_base
class Base:
    id = Column(Text(), primary_key=True)


class Website(Base):  # table "website", channel "website"
    url = Column(Text(), nullable=False, unique=True)


class Session(SessionManager):
    engine = create_engine("sqlite://")  # rebound to the test database by the db fixture
    base = Base


class Sites(Namespace):
    name = "/sites"

    @subscribes(Website)
    def on_sites(self):
        with Session() as s:
            return sorted(s.scalars(select(Website.url)))

    def on_add(self, url):
        with Session() as s:
            s.add(Website(id=url, url=url))

    def on_add_then_fail(self, url):
        with Session() as s:
            s.add(Website(id=url, url=url))
            s.flush()
            raise ValueError("rolled back")


@pytest.fixture
def sbio_session_manager():
    return Session


BACKENDS = pytest.mark.parametrize("sbio_db_backend", ["sqlite", "postgres"], indirect=True)


@BACKENDS
def test_commit_updates_subscribers_and_rollback_does_not(sbio_db, sbio_client):
    watcher, writer = sbio_client(Sites), sbio_client(Sites, raise_server_errors=False)
    sites = watcher.subscribe("sites")
    assert sites.data == []

    writer.call("add", "https://example.org")
    assert sites.wait_update(5) == ["https://example.org"]
    assert sites.pushes[-1]["trigger"] == "commit"

    metrics = watcher.server.live.broadcaster("/sites").metrics
    notified = metrics["notifications"]  # counted when a notification arrives
    with pytest.raises(CallError):
        writer.call("add_then_fail", "https://rolled.back")
    assert metrics["notifications"] == notified  # the rollback notified nothing
    writer.call("add", "https://second.example")
    assert metrics["notifications"] == notified + 1
    assert sites.wait_update(5) == ["https://example.org", "https://second.example"]
    assert len(sites.pushes) == 2


@BACKENDS
def test_commit_outside_a_handler_notifies_too(sbio_db, sbio_client):
    watcher = sbio_client(Sites)
    sites = watcher.subscribe("sites")
    with Session() as s:  # e.g. a DaemonTask or a script
        s.add(Website(id="t", url="https://from.a.task"))
    assert sites.wait_update(5) == ["https://from.a.task"]
