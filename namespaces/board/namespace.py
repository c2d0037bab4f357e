"""The ``/board`` namespace: everything a browser can ask the board for."""
import logging
import math
import re
import uuid

from sqlalchemy import delete, func, select

from sbio import ConnectionRefused, Namespace, RpcError, notifies, notify, subscribes

from . import config
from .models import BOARD_NAME, Board, Card, Login, Session, seed
from .throttle import Throttle

log = logging.getLogger(__name__)

#: user name -> password, from the configuration ("ann:secret" pairs).
USERS = dict(pair.split(":", 1) for pair in config["board.users"])
#: The columns of every board, left to right.
COLUMNS = list(config["board.columns"])

#: What a login token looks like (``secrets.token_urlsafe(32)`` makes 43 characters).
TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_token(token):
    return isinstance(token, str) and TOKEN.fullmatch(token) is not None


def login_throttle(max_keys):
    """A :class:`Throttle` of failed logins with the ``[login]`` limits."""
    return Throttle(max_failures=lambda: config["login.max_failures"],
                    window=lambda: config["login.window"], max_keys=max_keys)


def failed_logins(server):
    """The failed logins per user name on *server*; each connection counts its own too.

    One table per server, kept where a Flask extension keeps its state (the
    server's ``app.extensions``): two servers in one process count apart.
    """
    tables = server.app.extensions
    if "board.failed_logins" not in tables:
        tables["board.failed_logins"] = login_throttle(max_keys=lambda: config["login.max_users"])
    return tables["board.failed_logins"]


class BoardNamespace(Namespace):
    """A shared task board: log in, then add and move cards; every browser sees them live."""

    name = "/board"

    @classmethod
    def on_startup(cls):
        # Runs when a server hosting this namespace starts, never at import.
        Session.initialize_db()
        with Session() as s:
            seed(s)

    # -- logging in ------------------------------------------------------------------

    def get_initial_acl(self):
        return ["on_login", "on_whoami"]     # everything else waits for the login

    def on_connect(self, auth):
        self.session["failed_logins"] = login_throttle(max_keys=lambda: 1)
        # A browser that logged in before (and reconnects, or reloads the
        # page) sends its token in the handshake: no need to log in again.
        token = auth.get("token") if isinstance(auth, dict) else None
        if token is not None and token != "":
            if not is_token(token):
                raise ConnectionRefused("malformed login token", {"code": "bad_request"})
            with Session() as s:
                login = s.login(token)       # None if unknown or expired
            if login is not None:
                self._logged_in(login.user)

    def on_disconnect(self, reason):
        if self.session.get("user"):
            notify("stats")                  # one user fewer online

    def on_login(self, username: str, password: str):
        user_key = username[:40]             # a user name has at most 40 characters
        per_user, mine = failed_logins(self.server), self.session["failed_logins"]
        wait = max(per_user.retry_after(user_key), mine.retry_after(None))
        if wait:
            raise RpcError("rate_limited",
                           f"Too many failed logins: try again in {math.ceil(wait)} s.")
        if USERS.get(username) != password:
            self._failed_login(user_key)
            raise RpcError("bad_credentials", "Wrong user name or password.")
        per_user.succeeded(user_key)
        mine.succeeded(None)
        with Session() as s:
            s.forget_expired_logins()
            login = Login(user=username)
            s.add(login)
        self._logged_in(username)
        return {"user": username, "token": login.token}

    def _failed_login(self, user_key):
        """Count a failed login; log once when a user name or this connection has to wait."""
        failures, window = config["login.max_failures"], config["login.window"]
        per_user = failed_logins(self.server)
        if per_user.failed(user_key):
            log.warning("%d failed logins as %r within %s s: throttled", failures, user_key, window)
        if self.session["failed_logins"].failed(None):
            log.warning("%d failed logins on connection %s within %s s: throttled",
                        failures, self.sid, window)
        if per_user.evicted == 1:
            log.warning("failed logins of more than %d user names: forgetting the oldest",
                        config["login.max_users"])

    def _logged_in(self, username):
        self.session["user"] = username
        self.lift_acl_restrictions()
        notify("stats")                      # one more user online

    def on_whoami(self):
        return self.session.get("user")

    def on_logout(self, token: str = ""):
        """Log this connection out, and revoke *token* if it is one of this user's."""
        if token and not is_token(token):
            raise RpcError("bad_request", "A login token is the string login() returned.")
        user = self.session.get("user")
        self.session["user"] = None
        self.reset_acl()
        for room in self.rooms():            # no more activity messages
            if room != self.sid:
                self.leave_room(room)
        # and no more pushes: the page subscribes again after the next login
        self.unsubscribe_all()
        notify("stats")                      # one user fewer online
        if token:
            with Session() as s:
                revoked = s.execute(delete(Login).filter_by(token=token, user=user)).rowcount
            if not revoked:
                raise RpcError("not_your_token", "You are logged out, but that token is not "
                               "one of yours: nothing was revoked.")

    # -- boards ------------------------------------------------------------------------

    @subscribes(Board, Card, shared=True)    # re-run after every commit touching either table
    def on_boards(self):
        with Session() as s:
            rows = s.execute(select(Board.name, func.count(Card.id))
                             .outerjoin(Card).group_by(Board.id)
                             .order_by(Board.created, Board.name))
            return {"columns": COLUMNS,
                    "boards": [{"name": name, "cards": count} for name, count in rows]}

    def on_add_board(self, name: str):
        name = name.strip().lower()
        if not BOARD_NAME.match(name):
            raise RpcError("bad_name", "A board name is 1 to 30 lower-case letters, digits or '-'.")
        with Session() as s:
            if s.scalars(select(Board).filter_by(name=name)).first() is None:
                s.add(Board(name=name))
        return name

    def on_open_board(self, board: str):
        """Join the board's room (its activity messages), leaving any other board's."""
        with Session() as s:
            s.board(board)                   # raises no_such_board
        for room in self.rooms():
            if room.startswith("board:"):
                self.leave_room(room)
        self.enter_room(f"board:{board}")
        return board

    # -- cards: one channel per board ---------------------------------------------

    @subscribes("board:{board}", shared=True)
    def on_cards(self, board: str):
        with Session() as s:
            cards = s.board(board).cards
            return [card.to_dict(["id", "column", "title", "author", "created"], jsonable=True)
                    for card in sorted(cards, key=lambda c: c.created)]

    @notifies("board:{board}")
    def on_add_card(self, board: str, title: str):
        title = " ".join(title.split())
        if not title:
            raise RpcError("bad_title", "A card needs a title.")
        if len(title) > 200:
            raise RpcError("bad_title", "A card title has at most 200 characters.")
        with Session() as s:
            card = Card(board=s.board(board), column=COLUMNS[0], title=title,
                        author=self.session["user"])
            s.add(card)
        self._tell(board, f"added “{title}”")
        return str(card.id)

    @notifies("board:{board}")
    def on_move_card(self, board: str, card_id: str, column: str):
        if column not in COLUMNS:
            raise RpcError("bad_column", f"there is no column {column!r}")
        with Session() as s:
            card = self._card(s, board, card_id)
            card.column = column
        self._tell(board, f"moved “{card.title}” to {column}")

    @notifies("board:{board}")
    def on_delete_card(self, board: str, card_id: str):
        with Session() as s:
            card = self._card(s, board, card_id)
            s.delete(card)
        self._tell(board, f"deleted “{card.title}”")

    @staticmethod
    def _card(s, board, card_id):
        try:
            card = s.get(Card, uuid.UUID(card_id))
        except (TypeError, ValueError):      # not a UUID at all
            card = None
        if card is None or (board is not None and card.board.name != board):
            raise RpcError("no_such_card", "That card does not exist (any more).")
        return card

    # -- one card: the row channel its commits name -----------------------------

    @subscribes("card:{card_id}")            # "card:<id>": named by every commit of that card
    def on_card(self, card_id: str):
        """One card and its board, e.g. for a detail view; re-run only when it changes."""
        with Session() as s:
            card = self._card(s, None, card_id)
            return {**card.to_dict(["id", "column", "title", "author", "created"], jsonable=True),
                    "board": card.board.name}

    def _tell(self, board, text):
        """Tell the people looking at *board* what this user did, and this connection too."""
        activity = {"user": self.session["user"], "text": text}
        self.broadcast("activity", activity, room=f"board:{board}", include_self=False)
        # Straight to this connection, in the room or not (yet: after a reconnect
        # the page joins the room again while its waiting calls go out).
        self.emit("activity", dict(activity, own=True))

    # -- statistics ------------------------------------------------------------------

    @subscribes(Board, Card, "stats", shared=True)   # after every commit touching either
    def on_stats(self):                              # table, and every login and logout
        with Session() as s:
            per_column = dict(s.execute(select(Card.column, func.count())
                                        .group_by(Card.column)).all())
            boards = s.scalar(select(func.count()).select_from(Board))
        return {"boards": boards,
                "cards": [[column, per_column.get(column, 0)] for column in COLUMNS],
                "online": self._online()}

    def _online(self):
        """The users logged in on this server (each process of a cluster knows its own)."""
        connections = self.server.dispatcher(self.namespace).instances.values()
        return sorted({c.session["user"] for c in connections if c.session.get("user")})
