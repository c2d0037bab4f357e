"""The board's data: boards, cards and login tokens, stored through sbio.sa."""
import re
import secrets
import uuid
from datetime import datetime, timedelta, timezone

from sqlalchemy import Column, ForeignKey, String, delete, select
from sqlalchemy.orm import relationship

from sbio import RpcError
from sbio.sa import UUID, SessionManager, UTCDateTime, create_engine, declarative_base

from . import config


def utcnow():
    return datetime.now(timezone.utc)


@declarative_base
class Base:
    id = Column(UUID(), primary_key=True, default=uuid.uuid4)
    created = Column(UTCDateTime(), nullable=False, default=utcnow)


class Board(Base):                         # table and channel "board"
    name = Column(String(30), nullable=False, unique=True)
    cards = relationship("Card", back_populates="board", cascade="all, delete-orphan")


class Card(Base):                          # table and channel "card"
    board_id = Column(UUID(), ForeignKey("board.id"), nullable=False)
    column = Column(String(30), nullable=False)
    title = Column(String(200), nullable=False)
    author = Column(String(40), nullable=False)
    board = relationship("Board", back_populates="cards")


class Login(Base):                         # a logged-in browser, remembered by its token
    token = Column(String(64), nullable=False, unique=True,
                   default=lambda: secrets.token_urlsafe(32))
    user = Column(String(40), nullable=False)


class Session(SessionManager):
    engine = create_engine(config["db.url"])    # connects lazily: nothing happens at import

    class SessionMixin:
        def board(self, name):
            """The board called *name*, or an ``RpcError`` the client sees."""
            board = self.scalars(select(Board).filter_by(name=name)).first()
            if board is None:
                raise RpcError("no_such_board", f"there is no board {name!r}")
            return board

        def login(self, token):
            """The ``Login`` of *token*, or None if there is none or it expired."""
            return self.scalars(select(Login).filter(Login.token == token,
                                                     Login.created > token_cutoff())).first()

        def forget_expired_logins(self):
            self.execute(delete(Login).filter(Login.created <= token_cutoff()))


def token_cutoff():
    """When the oldest login token still valid was issued (``login.token_lifetime`` ago)."""
    return utcnow() - timedelta(seconds=config["login.token_lifetime"])


BOARD_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,29}$")


def seed(session):
    """Create the configured boards that do not exist yet."""
    existing = set(session.scalars(select(Board.name)))
    session.add_all(Board(name=name) for name in config["board.boards"] if name not in existing)
