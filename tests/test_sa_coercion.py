"""from_dict's coercion rules for column types test_sa.py's models do not use."""
import datetime
import uuid

import pytest
from sqlalchemy import Column, Integer, Interval, types

from sbio.sa import SessionManager, ValidationError, create_engine, declarative_base


class TaggedUuid(types.TypeDecorator):
    """A user's own decorator over SQLAlchemy's Uuid."""

    impl = types.Uuid
    cache_ok = True


@declarative_base
class Base:
    id = Column(Integer, primary_key=True)


class Timer(Base):
    pause = Column(Interval)
    ref = Column(TaggedUuid)


class Session(SessionManager):
    base = Base
    notify_changes = False


@pytest.fixture
def timer_db():
    Session.engine = create_engine("sqlite://")
    Session.initialize_db()
    yield Session
    Session.engine.dispose()
    Session.engine = None


def test_interval_takes_a_timedelta_or_seconds_and_is_stored(timer_db):
    assert Timer.from_dict({"pause": 90}).pause == datetime.timedelta(seconds=90)
    assert Timer.from_dict({"pause": 1.5}).pause == datetime.timedelta(seconds=1.5)
    with timer_db() as s:
        s.add(Timer.from_dict({"id": 1, "pause": datetime.timedelta(minutes=2)}))
    with timer_db() as s:
        assert s.get(Timer, 1).pause == datetime.timedelta(minutes=2)
    with pytest.raises(ValidationError) as info:
        Timer.from_dict({"pause": True})
    assert info.value.errors == {"pause": "expected a duration (timedelta or seconds)"}
    with pytest.raises(ValidationError) as info:
        Timer.from_dict({"pause": datetime.datetime(2024, 1, 1)})
    assert info.value.errors == {"pause": "expected a duration (timedelta or seconds)"}


def test_a_decorated_uuid_takes_the_string_to_dict_gives():
    ref = uuid.uuid4()
    timer = Timer(id=2, ref=ref)
    data = timer.to_dict(jsonable=True)
    assert data["ref"] == str(ref)
    assert Timer.from_dict(data).ref == ref
    with pytest.raises(ValidationError) as info:
        Timer.from_dict({"ref": "not-a-uuid"})
    assert info.value.errors == {"ref": "not a UUID: 'not-a-uuid'"}
