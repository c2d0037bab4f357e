"""The ``/board`` namespace: everything a browser can ask the board for."""
import uuid

from sqlalchemy import delete, func, select

from sbio import Namespace, RpcError, notifies, subscribes

from . import config
from .models import BOARD_NAME, Board, Card, Login, Session, seed

#: user name -> password, from the configuration ("ann:secret" pairs).
USERS = dict(pair.split(":", 1) for pair in config["board.users"])
#: The columns of every board, left to right.
COLUMNS = list(config["board.columns"])

#: sid -> user name of every logged-in connection of this process (read by tasks.py).
online = {}
#: What tasks.refresh_stats computed last (read by on_stats).
STATS = {}


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
        # A browser that logged in before (and reconnects, or reloads the
        # page) sends its token in the handshake: no need to log in again.
        token = auth.get("token") if isinstance(auth, dict) else None
        if token:
            with Session() as s:
                login = s.scalars(select(Login).filter_by(token=token)).first()
            if login is not None:
                self._logged_in(login.user)

    def on_disconnect(self, reason):
        online.pop(self.sid, None)

    def on_login(self, username: str, password: str):
        if USERS.get(username) != password:
            raise RpcError("bad_credentials", "Wrong user name or password.")
        with Session() as s:
            login = Login(user=username)
            s.add(login)
        self._logged_in(username)
        return {"user": username, "token": login.token}

    def _logged_in(self, username):
        self.session["user"] = username
        online[self.sid] = username
        self.lift_acl_restrictions()

    def on_whoami(self):
        return self.session.get("user")

    def on_logout(self, token: str = ""):
        if token:
            with Session() as s:
                s.execute(delete(Login).filter_by(token=token))
        self.session["user"] = None
        online.pop(self.sid, None)
        self.reset_acl()

    # -- boards ------------------------------------------------------------------------

    @subscribes(Board, Card, shared=True)    # re-run after every commit touching either table
    def on_boards(self):
        with Session() as s:
            rows = s.execute(select(Board.name, func.count(Card.id))
                             .outerjoin(Card).group_by(Board.id).order_by(Board.created, Board.name))
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
