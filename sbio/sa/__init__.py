"""SQLAlchemy 2.x helpers: declarative models, sessions, column types, change notifications.

A typical models module::

    import uuid
    from sqlalchemy import Column, Text
    from sbio.sa import declarative_base, SessionManager, UUID, create_engine

    @declarative_base
    class Base:
        id = Column(UUID(), primary_key=True, default=uuid.uuid4)

    class Website(Base):                # table "website"
        url = Column(Text(), nullable=False, unique=True)

    class Session(SessionManager):
        engine = create_engine("sqlite:///ragnarok.db")

    Session.initialize_db()             # explicit; never done at import time

    with Session() as s:                # commit on success, rollback on error, always close
        s.add(Website(url="https://example.org"))
    # after the commit the channel "website" is notified (sbio.live.notify)

See ``docs/database.md`` for the user guide. Import everything from
``sbio.sa``; the modules of the package, each one concept (an arrow: imports):

* ``types``: the column types ``UUID``, ``JSON``, ``UTCDateTime``;
* ``coercion``: a value's rule per column type, for ``from_dict`` (the
  ``_COERCIONS`` table) and back to its JSON form for ``to_dict`` -> types;
* ``plan``: what ``from_dict`` will change, planned and checked before
  anything is -> coercion;
* ``crud``: ``CrudMixin`` (``to_dict``, ``from_dict``, ``repr``, constructor
  defaults) and ``ValidationError`` -> coercion, plan;
* ``base``: ``declarative_base`` and the validators it installs -> crud, types;
* ``notifications``: the session events that record the changed channels and
  notify them after the commit;
* ``session``: ``SbioSession`` and ``SessionManager`` -> base, notifications;
* ``engine``: ``create_engine`` and its gevent checks.
"""
from sbio.channels import model_channel, snake_case

from .base import declarative_base
from .crud import CrudMixin, ValidationError
from .engine import create_engine
from .session import SbioSession, SessionManager
from .types import JSON, UUID, UTCDateTime

__all__ = [
    "declarative_base",
    "CrudMixin",
    "SessionManager",
    "SbioSession",
    "UUID",
    "JSON",
    "UTCDateTime",
    "ValidationError",
    "create_engine",
    "model_channel",
    "snake_case",
]
