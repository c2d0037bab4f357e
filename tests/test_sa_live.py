"""sbio.sa change notifications reaching real live subscriptions, on SQLite and PostgreSQL."""
import gevent
import pytest
from sqlalchemy import Column, ForeignKey, Integer, Text, delete, select, update

from sbio import Namespace, subscribes
from sbio.sa import SessionManager, create_engine, declarative_base
from sbio.testing import CallError


@declarative_base
class Base:
    id = Column(Text(), primary_key=True)


class Website(Base):  # table "website", channel "website"
    url = Column(Text(), nullable=False, unique=True)


class Poll(Base):  # channel "poll", rows "poll:17"
    id = Column(Integer, primary_key=True, autoincrement=False)
    title = Column(Text(), nullable=False)


class Vote(Base):  # channel "vote", rows "vote:<id>"; also names its poll's row
    __notify_parents__ = ("poll_id",)
    poll_id = Column(Integer, ForeignKey("poll.id"), nullable=False)
    choice = Column(Text(), nullable=False)


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


#: poll ids in the order Polls.on_poll ran for them
POLL_RUNS = []


class Polls(Namespace):
    name = "/polls"

    @subscribes("poll:{poll_id}")
    def on_poll(self, poll_id: int):
        POLL_RUNS.append(poll_id)
        with Session() as s:
            poll = s.get(Poll, poll_id)
            if poll is None:
                return None
            votes = sorted(s.scalars(select(Vote.choice).filter_by(poll_id=poll_id)))
            return {"title": poll.title, "votes": votes}

    def on_ping(self):
        return "pong"


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


# -- per-row channels ---------------------------------------------------------------------


def _quiet(client, namespace):
    """Nothing queued or running in the broadcaster, then a round trip: every push is in."""
    b = client.server.live.broadcaster(namespace)
    with gevent.Timeout(10, AssertionError("the broadcaster did not go quiet")):
        while b._pending or b._requests or len(b.pool):
            gevent.sleep(0.005)
    assert client.call("ping") == "pong"


@pytest.fixture
def polls(sbio_db, sbio_client):
    with Session() as s:
        s.add_all([Poll(id=17, title="seventeen"), Poll(id=18, title="eighteen")])
    POLL_RUNS.clear()
    client = sbio_client(Polls)
    p17, p18 = client.subscribe("poll", 17), client.subscribe("poll", 18)
    assert p17.data == {"title": "seventeen", "votes": []}
    POLL_RUNS.clear()
    return client, p17, p18


@BACKENDS
def test_a_commit_touching_row_17_reruns_its_subscriptions_only(polls):
    client, p17, p18 = polls
    with Session() as s:  # an update of row 17
        s.get(Poll, 17).title = "17!"
    assert p17.wait_update(5) == {"title": "17!", "votes": []}
    assert p17.pushes[-1]["trigger"] == "commit"
    _quiet(client, "/polls")
    assert POLL_RUNS == [17] and p18.pushes == []

    with Session() as s:  # an insert of a child row names its parent (__notify_parents__)
        s.add(Vote(id="v1", poll_id=18, choice="yes"))
    assert p18.wait_update(5) == {"title": "eighteen", "votes": ["yes"]}
    _quiet(client, "/polls")
    assert POLL_RUNS == [17, 18] and len(p17.pushes) == 1

    with Session() as s:  # moving the vote names both parents
        s.get(Vote, "v1").poll_id = 17
    assert p17.wait_update(5) == {"title": "17!", "votes": ["yes"]}
    assert p18.wait_update(5) == {"title": "eighteen", "votes": []}
    _quiet(client, "/polls")
    assert sorted(POLL_RUNS[2:]) == [17, 18]


@BACKENDS
def test_delete_and_insert_name_their_rows(polls):
    client, p17, p18 = polls
    with Session() as s:
        s.delete(s.get(Poll, 17))
    assert p17.wait_update(5) is None
    _quiet(client, "/polls")
    assert POLL_RUNS == [17] and p18.pushes == []

    with Session() as s:
        s.add(Poll(id=17, title="again"))
    assert p17.wait_update(5) == {"title": "again", "votes": []}
    _quiet(client, "/polls")
    assert POLL_RUNS == [17, 17] and p18.pushes == []


@BACKENDS
def test_a_rollback_names_nothing(polls):
    client, p17, p18 = polls
    metrics = client.server.live.broadcaster("/polls").metrics
    notified = metrics["notifications"]
    with pytest.raises(ValueError), Session() as s:
        s.get(Poll, 17).title = "never"
        s.add(Vote(id="v2", poll_id=18, choice="no"))
        s.flush()
        raise ValueError("rolled back")
    with Session() as s, pytest.raises(ValueError), s.begin_nested():
        s.delete(s.get(Poll, 18))
        s.flush()
        raise ValueError("the savepoint is rolled back, the transaction commits nothing")
    _quiet(client, "/polls")
    assert metrics["notifications"] == notified
    assert POLL_RUNS == [] and p17.pushes == p18.pushes == []


@BACKENDS
def test_bulk_statements_name_every_row(polls):
    client, p17, p18 = polls
    with Session() as s:  # which rows it touched is not known: "poll:*"
        s.execute(update(Poll).where(Poll.id == 18).values(title="bulk"))
    assert p18.wait_update(5) == {"title": "bulk", "votes": []}
    _quiet(client, "/polls")
    assert sorted(POLL_RUNS) == [17, 18] and p17.pushes == []  # 17 re-ran, unchanged

    with Session() as s:
        s.execute(delete(Poll).where(Poll.id == 17))
    assert p17.wait_update(5) is None
