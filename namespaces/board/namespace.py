"""The ``/board`` namespace: everything a browser can ask the board for."""
import logging
import math
import re
import uuid

from sqlalchemy import delete, func, select

from sbio import ConnectionRefused, Namespace, RpcError, notifies, subscribes

from . import config
from .models import BOARD_NAME, Board, Card, Login, Session, seed
from .throttle import Throttle

log = logging.getLogger(__name__)

#: user name -> password, from the configuration ("ann:secret" pairs).
USERS = dict(pair.split(":", 1) for pair in config["board.users"])
#: The columns of every board, left to right.
COLUMNS = list(config["board.columns"])

#: sid -> user name of every logged-in connection of this process (read by tasks.py).
online = {}
#: What tasks.refresh_stats computed last (read by on_stats).
STATS = {}

#: What a login token looks like (``secrets.token_urlsafe(32)`` makes 43 characters).
TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_token(token):
    return isinstance(token, str) and TOKEN.fullmatch(token) is not None


def login_throttle(max_keys):
    """A :class:`Throttle` of failed logins with the ``[login]`` limits."""
    return Throttle(max_failures=lambda: config["login.max_failures"],
                    window=lambda: config["login.window"], max_keys=max_keys)


#: Failed logins per user name in this process; each connection counts its own too.
failed_logins = login_throttle(max_keys=lambda: config["login.max_users"])


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
        online.pop(self.sid, None)

    def on_login(self, username: str, password: str):
        user_key = username[:40]             # a user name has at most 40 characters
        mine = self.session["failed_logins"]
        wait = max(failed_logins.retry_after(user_key), mine.retry_after(None))
        if wait:
            raise RpcError("rate_limited",
                           f"Too many failed logins: try again in {math.ceil(wait)} s.")
        if USERS.get(username) != password:
            self._failed_login(user_key)
            raise RpcError("bad_credentials", "Wrong user name or password.")
        failed_logins.succeeded(user_key)
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
        if failed_logins.failed(user_key):
            log.warning("%d failed logins as %r within %s s: throttled", failures, user_key, window)
        if self.session["failed_logins"].failed(None):
            log.warning("%d failed logins on connection %s within %s s: throttled",
                        failures, self.sid, window)
        if failed_logins.evicted == 1:
            log.warning("failed logins of more than %d user names: forgetting the oldest",
                        config["login.max_users"])

    def _logged_in(self, username):
        self.session["user"] = username
        online[self.sid] = username
        self.lift_acl_restrictions()

    def on_whoami(self):
        return self.session.get("user")

    def on_logout(self, token: str = ""):
        """Log this connection out, and revoke *token* if it is one of this user's."""
        if token and not is_token(token):
            raise RpcError("bad_request", "A login token is the string login() returned.")
        user = self.session.get("user")
        self.session["user"] = None
        online.pop(self.sid, None)
        self.reset_acl()
        for room in self.rooms():            # no more activity messages
            if room != self.sid:
                self.leave_room(room)
        # and no more pushes: the page subscribes again after the next login
        self.server.live.broadcaster(self.namespace).drop_connection(self.sid)
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
        if card is None or card.board.name != board:
            raise RpcError("no_such_card", "That card does not exist (any more).")
        return card

    def _tell(self, board, text):
        """Tell the other people looking at *board* what this user did."""
        self.broadcast("activity", {"user": self.session["user"], "text": text},
                       room=f"board:{board}", include_self=False)

    # -- statistics (refreshed by tasks.py) ------------------------------------------

    @subscribes("stats", shared=True)
    def on_stats(self):
        return STATS
