"""The bundled demo application (namespaces/board): in-process, then through `sbio run`."""
import functools
import os
import re
import signal
import socket
import subprocess
import sys
import time

import gevent
import pytest
import requests

from sbio import ConnectionRefused
from sbio.config import parse_config
from sbio.server import Server
from sbio.tasks import lifecycle
from sbio.testing import CallError, LiveClient

# Importing the app registers its DaemonTask with the process-wide lifecycle;
# import it in isolation so the servers of other test modules do not run it.
with lifecycle.isolated():
    import board
    from board import BoardNamespace, blueprint
    from board.models import Board, Card, Session, seed
    from board.namespace import failed_logins
    from board.tasks import stats_task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def sbio_session_manager():
    return Session


@pytest.fixture
def sbio_db_seed():
    return seed                               # the boards of the configuration: main, ideas


@pytest.fixture
def login(sbio_client, sbio_db):
    """``login("ann") -> LocalClient`` connected to /board and logged in."""
    def make(user, **kwargs):
        client = sbio_client(BoardNamespace, **kwargs)
        client.call("login", user, "secret")
        return client
    return make


# -- logging in ----------------------------------------------------------------------


def test_everything_is_locked_until_login(sbio_client, sbio_db):
    c = sbio_client(BoardNamespace)
    assert c.call("whoami") is None
    with pytest.raises(CallError) as err:
        c.call("add_card", "main", "sneaky")
    assert err.value.code == "forbidden"
    with pytest.raises(CallError) as err:
        c.subscribe("cards", "main")
    assert err.value.code == "forbidden"


def test_wrong_password_is_refused_with_a_message(sbio_client, sbio_db):
    c = sbio_client(BoardNamespace)
    with pytest.raises(CallError) as err:
        c.call("login", "ann", "guess")
    assert (err.value.code, err.value.message) == ("bad_credentials",
                                                   "Wrong user name or password.")
    with pytest.raises(CallError) as err:
        c.call("login", "mallory", "secret")
    assert err.value.code == "bad_credentials"
    assert c.call("whoami") is None


def test_login_token_logs_a_new_connection_in(sbio_client, sbio_db):
    c = sbio_client(BoardNamespace)
    me = c.call("login", "ann", "secret")
    assert me["user"] == "ann" and len(me["token"]) > 20
    again = sbio_client(BoardNamespace, auth={"token": me["token"]})   # a reconnect, a reload
    assert again.call("whoami") == "ann"
    assert again.call("add_card", "main", "no login needed")
    stranger = sbio_client(BoardNamespace, auth={"token": "forged"})
    assert stranger.call("whoami") is None

    again.call("logout", me["token"])                                  # the token is gone
    assert again.call("whoami") is None
    assert sbio_client(BoardNamespace, auth={"token": me["token"]}).call("whoami") is None


def test_logout_leaves_the_board_room_and_ends_subscriptions(login):
    ann, bob, watcher = login("ann"), login("bob"), login("ann")
    for client in (ann, bob, watcher):
        client.call("open_board", "main")
    watcher_cards = watcher.subscribe("cards", "main")
    bob.subscribe("cards", "main")
    bob.subscribe("stats")
    broadcaster = bob.server.live.broadcaster("/board")
    assert len(broadcaster.subscriptions_of(bob.sid)) == 2

    assert bob.call("logout") is None
    assert broadcaster.subscriptions_of(bob.sid) == {}
    assert bob.call("whoami") is None
    seen = len(bob.received())
    ann.call("add_card", "main", "secret plans")
    assert watcher.receive("activity") == [{"user": "ann", "text": "added “secret plans”"}]
    assert [c["title"] for c in watcher_cards.wait_update()] == ["secret plans"]
    assert bob.received()[seen:] == []                  # neither the activity nor the cards


def test_login_tokens_expire(sbio_client, sbio_db, monkeypatch):
    from datetime import timedelta

    from sqlalchemy import select, update

    from board.models import Login, utcnow

    def issued_ago(token, **age):
        with Session() as s:
            s.execute(update(Login).filter_by(token=token)
                      .values(created=utcnow() - timedelta(**age)))

    def user_of(token):
        return sbio_client(BoardNamespace, auth={"token": token}).call("whoami")

    assert board.config["login.token_lifetime"] == 7 * 24 * 3600      # the default: a week
    token = sbio_client(BoardNamespace).call("login", "ann", "secret")["token"]
    issued_ago(token, days=6, hours=23)
    assert user_of(token) == "ann"
    monkeypatch.setitem(board.config, "login.token_lifetime", 24 * 3600)
    assert user_of(token) is None                                     # older than a day
    monkeypatch.undo()
    issued_ago(token, days=7, minutes=1)
    assert user_of(token) is None                                     # older than a week

    sbio_client(BoardNamespace).call("login", "bob", "secret")        # a login forgets expired ones
    with Session() as s:
        assert token not in set(s.scalars(select(Login.token)))


def test_logout_revokes_only_the_callers_own_token(sbio_client, sbio_db):
    ann, bob = sbio_client(BoardNamespace), sbio_client(BoardNamespace)
    ann_token = ann.call("login", "ann", "secret")["token"]
    bob_token = bob.call("login", "bob", "secret")["token"]
    with pytest.raises(CallError) as err:
        ann.call("logout", bob_token)
    assert err.value.code == "not_your_token"
    assert "nothing was revoked" in err.value.message
    assert ann.call("whoami") is None                      # ann is logged out all the same
    assert sbio_client(BoardNamespace, auth={"token": bob_token}).call("whoami") == "bob"
    with pytest.raises(CallError) as err:                  # an unknown token: the same answer
        bob.call("logout", "A" * 43)
    assert err.value.code == "not_your_token"

    again = sbio_client(BoardNamespace, auth={"token": ann_token})
    assert again.call("whoami") == "ann"
    assert again.call("logout", ann_token) is None                     # one's own: revoked
    assert sbio_client(BoardNamespace, auth={"token": ann_token}).call("whoami") is None


MALFORMED_TOKENS = [["a" * 43], {"token": "a" * 43}, 43, 4.5, True,
                    "a" * 65, "a" * 43 + "\n", "not a token!"]


@pytest.mark.parametrize("token", MALFORMED_TOKENS, ids=repr)
def test_a_malformed_token_is_a_bad_request(sbio_client, sbio_db, caplog, token):
    with pytest.raises(ConnectionRefused) as refused:
        sbio_client(BoardNamespace, auth={"token": token})
    assert refused.value.data == {"code": "bad_request"}
    ann = sbio_client(BoardNamespace)
    ann.call("login", "ann", "secret")
    with pytest.raises(CallError) as err:
        ann.call("logout", token)
    assert err.value.code == "bad_request"
    assert ann.call("whoami") == "ann"                     # a bad request changes nothing
    assert [r for r in caplog.records if r.exc_info or r.levelname in ("ERROR", "CRITICAL")] == []


def test_login_attempts_are_throttled_per_user(sbio_client, sbio_db):
    guesser = [sbio_client(BoardNamespace) for _ in range(5)]
    for client in guesser:                                 # 5 failures from 5 connections
        with pytest.raises(CallError) as err:
            client.call("login", "ann", "guess")
        assert err.value.code == "bad_credentials"
    for client in [guesser[0], sbio_client(BoardNamespace)]:
        with pytest.raises(CallError) as err:
            client.call("login", "ann", "secret")                     # even the right password
        assert err.value.code == "rate_limited"
        assert re.fullmatch(r"Too many failed logins: try again in \d+ s\.", err.value.message)
    assert sbio_client(BoardNamespace).call("login", "bob", "secret")["user"] == "bob"


def test_login_attempts_are_throttled_per_connection(sbio_client, sbio_db):
    sprayer = sbio_client(BoardNamespace)
    for name in ["ann", "bob", "carol", "dave", "eve"]:               # one guess per user name
        with pytest.raises(CallError) as err:
            sprayer.call("login", name, "guess")
        assert err.value.code == "bad_credentials"
    with pytest.raises(CallError) as err:
        sprayer.call("login", "bob", "secret")
    assert err.value.code == "rate_limited"
    assert sbio_client(BoardNamespace).call("login", "bob", "secret")["user"] == "bob"


def test_throttling_is_logged_once_not_per_guess(sbio_client, sbio_db, caplog):
    c = sbio_client(BoardNamespace)
    for _ in range(20):
        with pytest.raises(CallError):
            c.call("login", "ann", "guess")
    warnings = [r.getMessage() for r in caplog.records if r.name == "board.namespace"]
    assert warnings == ["5 failed logins as 'ann' within 60.0 s: throttled",
                        f"5 failed logins on connection {c.sid} within 60.0 s: throttled"]


def test_a_login_resets_the_count_and_the_window_ends(sbio_client, sbio_db, monkeypatch):
    c = sbio_client(BoardNamespace)
    for _ in range(2):
        for _ in range(4):
            with pytest.raises(CallError) as err:
                c.call("login", "ann", "guess")
            assert err.value.code == "bad_credentials"
        c.call("login", "ann", "secret")                              # resets both counts
    monkeypatch.setitem(board.config, "login.window", 0.5)
    for _ in range(5):
        with pytest.raises(CallError):
            c.call("login", "ann", "guess")
    with pytest.raises(CallError) as err:
        c.call("login", "ann", "secret")
    assert err.value.code == "rate_limited"
    gevent.sleep(0.6)                                                 # the window is over
    assert c.call("login", "ann", "secret")["user"] == "ann"


def test_failed_logins_are_remembered_for_a_bounded_number_of_users(
        sbio_client, sbio_db, monkeypatch, caplog):
    assert board.config["login.max_users"] == 10000                   # the default
    monkeypatch.setitem(board.config, "login.max_users", 20)
    for n in range(100):                                              # a spray over 100 user names
        client = sbio_client(BoardNamespace)
        with pytest.raises(CallError):
            client.call("login", f"user{n}", "guess")
        client.disconnect()
    table = failed_logins(client.server)
    assert len(table) == 20
    assert "user99" in table and table.retry_after("user99") == 0
    assert "user0" not in table                                       # the oldest went first
    assert [r.getMessage() for r in caplog.records if r.name == "board.namespace"] == [
        "failed logins of more than 20 user names: forgetting the oldest"]        # once


def test_chat_logout_leaves_every_room(sbio_server, sbio_live_client):
    import chat  # namespaces/chat.py, over a real socket

    server = sbio_server(chat.Chat)
    ann, bob = sbio_live_client(server, "/chat"), sbio_live_client(server, "/chat")
    for client, user in [(ann, "ann"), (bob, "bob")]:
        client.call("login", user, "secret")
        client.call("join", "lobby")
        client.call("join", "ops")
    assert bob.call("logout") is None
    assert server.sio.rooms(bob.sid, namespace="/chat") == [bob.sid]
    seen = len(bob.received())
    ann.call("say", "lobby", "card titles and other secrets")
    ann.call("say", "ops", "more of them")
    assert ann.receive("message", count=2)[0]["text"] == "more of them"
    ann.call("whoami")                                    # a round trip after the messages
    bob.call_envelope("whoami")
    assert bob.received()[seen:] == []


# -- cards --------------------------------------------------------------------------


def test_a_new_card_reaches_every_subscriber_of_its_board(login):
    ann, bob = login("ann"), login("bob")
    ann_cards = ann.subscribe("cards", "main")
    bob_cards = bob.subscribe("cards", "main")
    assert ann_cards.data == bob_cards.data == []

    card_id = ann.call("add_card", "main", "  Write   the tutorial ")
    pushed = bob_cards.wait_update()
    assert [(c["id"], c["title"], c["column"], c["author"]) for c in pushed] == [
        (card_id, "Write the tutorial", "To do", "ann")]
    assert ann_cards.wait_update() == pushed


def test_cards_channels_are_per_board(login, monkeypatch):
    runs = []
    original = BoardNamespace.on_cards

    @functools.wraps(original)                # keeps the @subscribes marker
    def spy(self, board):
        runs.append(board)
        return original(self, board)

    monkeypatch.setattr(BoardNamespace, "on_cards", spy)
    ann, bob = login("ann"), login("bob")
    main, ideas = ann.subscribe("cards", "main"), bob.subscribe("cards", "ideas")
    del runs[:]

    ann.call("add_card", "main", "only main")
    assert [c["title"] for c in main.wait_update()] == ["only main"]
    bob.call("add_card", "ideas", "only ideas")
    assert [c["title"] for c in ideas.wait_update()] == ["only ideas"]
    # "board:main" re-ran main's subscription only, "board:ideas" ideas' only.
    assert runs == ["main", "ideas"]


def test_move_and_delete_cards(login):
    ann = login("ann")
    cards = ann.subscribe("cards", "main")
    card_id = ann.call("add_card", "main", "Ship it")
    cards.wait_update()

    ann.call("move_card", "main", card_id, "Doing")
    assert [c["column"] for c in cards.wait_update()] == ["Doing"]
    for args, code in [((card_id, "Nowhere"), "bad_column"),
                       (("not-a-uuid", "Done"), "no_such_card")]:
        with pytest.raises(CallError) as err:
            ann.call("move_card", "main", *args)
        assert err.value.code == code
    with pytest.raises(CallError) as err:               # the card is on another board
        ann.call("delete_card", "ideas", card_id)
    assert err.value.code == "no_such_card"

    ann.call("delete_card", "main", card_id)
    assert cards.wait_update() == []


def test_one_card_follows_its_own_row_channel(login, monkeypatch):
    runs = []
    original = BoardNamespace.on_card

    @functools.wraps(original)                # keeps the @subscribes marker
    def spy(self, card_id):
        runs.append(card_id)
        return original(self, card_id)

    monkeypatch.setattr(BoardNamespace, "on_card", spy)
    ann = login("ann")
    mine, other = ann.call("add_card", "main", "mine"), ann.call("add_card", "main", "other")
    card = ann.subscribe("card", mine)
    assert (card.data["title"], card.data["column"], card.data["board"]) == ("mine", "To do",
                                                                             "main")
    del runs[:]
    ann.call("move_card", "main", other, "Done")      # commits "card:<other>": not this one
    ann.call("move_card", "main", mine, "Doing")      # commits "card:<mine>"
    assert card.wait_update()["column"] == "Doing"
    assert runs == [mine] and len(card.pushes) == 1
    ann.call("delete_card", "main", mine)
    with pytest.raises(CallError) as err:
        card.wait_update()
    assert err.value.code == "no_such_card"


def test_card_titles_and_boards_are_checked(login):
    ann = login("ann")
    for title in ["", "   ", "x" * 201]:
        with pytest.raises(CallError) as err:
            ann.call("add_card", "main", title)
        assert err.value.code == "bad_title"
    with pytest.raises(CallError) as err:
        ann.call("add_card", "nope", "lost")
    assert err.value.code == "no_such_board"
    with pytest.raises(CallError) as err:
        ann.call("add_card", "main", 42)                # the annotation `title: str`
    assert err.value.code == "bad_request"


# -- boards: change notifications after each commit -----------------------------


def test_board_list_follows_every_commit(login):
    ann = login("ann")
    boards = ann.subscribe("boards")
    assert boards.data == {"columns": ["To do", "Doing", "Done"],
                           "boards": [{"name": "main", "cards": 0}, {"name": "ideas", "cards": 0}]}

    ann.call("add_card", "ideas", "counted")            # a Card commit notifies "card"
    assert boards.wait_update()["boards"][1] == {"name": "ideas", "cards": 1}
    assert ann.call("add_board", " Ops ") == "ops"      # a Board commit notifies "board"
    assert [b["name"] for b in boards.wait_update()["boards"]] == ["main", "ideas", "ops"]
    with pytest.raises(CallError) as err:
        ann.call("add_board", "no spaces please")
    assert err.value.code == "bad_name"


# -- rooms: activity messages go to the people looking at the same board --------


def test_activity_is_sent_to_the_board_room(login):
    ann, bob = login("ann"), login("bob")
    ann.call("open_board", "main")
    bob.call("open_board", "main")
    ann.call("add_card", "main", "hello bob")
    assert bob.receive("activity") == [{"user": "ann", "text": "added “hello bob”"}]

    bob.call("open_board", "ideas")                     # leaves main's room
    ann.call("add_card", "main", "bob is elsewhere")
    ann.call("open_board", "ideas")
    ann.call("add_card", "ideas", "hello again")
    assert bob.receive("activity", count=2) == [{"user": "ann", "text": "added “hello again”"}]
    # Her own actions reach ann once each, marked as hers, whether in the room or not.
    assert ann.received("activity") == [
        [{"user": "ann", "text": text, "own": True}]
        for text in ["added “hello bob”", "added “bob is elsewhere”", "added “hello again”"]]
    with pytest.raises(CallError) as err:
        ann.call("open_board", "nope")
    assert err.value.code == "no_such_board"


# -- statistics: pushed on every change, and re-read by the DaemonTask ------------


def test_stats_follow_commits_logins_and_logouts_at_once(login, sbio_client):
    ann = login("ann")
    stats = ann.subscribe("stats")                   # no task runs in these tests
    assert stats.data == {"boards": 2, "online": ["ann"],
                          "cards": [["To do", 0], ["Doing", 0], ["Done", 0]]}

    card_id = ann.call("add_card", "main", "one")         # a Card commit
    assert stats.wait_update()["cards"] == [["To do", 1], ["Doing", 0], ["Done", 0]]
    ann.call("move_card", "main", card_id, "Done")
    assert stats.wait_update()["cards"] == [["To do", 0], ["Doing", 0], ["Done", 1]]
    ann.call("add_board", "ops")                          # a Board commit
    assert stats.wait_update()["boards"] == 3

    bob = login("bob")                                    # a login
    assert stats.wait_update()["online"] == ["ann", "bob"]
    bob.call("logout")                                    # a logout
    assert stats.wait_update()["online"] == ["ann"]
    token = bob.call("login", "bob", "secret")["token"]
    assert stats.wait_update()["online"] == ["ann", "bob"]
    bob.disconnect()                                      # a disconnect
    assert stats.wait_update()["online"] == ["ann"]
    sbio_client(BoardNamespace, auth={"token": token})    # a login by token, at connect
    assert stats.wait_update()["online"] == ["ann", "bob"]


def test_stats_task_shows_what_nobody_announced(login, sbio_run_task_once):
    from sqlalchemy import insert, select

    ann = login("ann")
    stats = ann.subscribe("stats")
    with Session.engine.begin() as connection:      # SQL that no sbio.sa session notifies
        main = connection.scalar(select(Board.id).filter_by(name="main"))
        connection.execute(insert(Card).values(board_id=main, column="Doing",
                                               title="from a script", author="cron"))

    sbio_run_task_once(stats_task)                  # what the task does every interval
    assert stats.wait_update()["cards"] == [["To do", 0], ["Doing", 1], ["Done", 0]]
    sbio_run_task_once(stats_task)                  # nothing new: nothing pushed
    ann.call("add_card", "main", "two")
    assert stats.wait_update()["cards"] == [["To do", 1], ["Doing", 1], ["Done", 0]]


# -- per-server state: two servers in one process share nothing ------------------


def test_two_servers_in_one_process_keep_their_own_board_state(unstarted_server, sbio_db):
    from sbio.testing import LocalClient

    one, two = unstarted_server([BoardNamespace]), unstarted_server([BoardNamespace])
    clients = []

    def client(server, **kwargs):
        clients.append(LocalClient(server, "/board", **kwargs))
        return clients[-1]

    try:
        guesser = client(one)
        for n in range(5):
            with pytest.raises(CallError):
                guesser.call("login", "ann", f"guess{n}")
        with pytest.raises(CallError) as err:              # ann is throttled on one ...
            client(one).call("login", "ann", "secret")
        assert err.value.code == "rate_limited"
        ann = client(two)
        ann.call("login", "ann", "secret")                 # ... not on two
        bob = client(one)
        bob.call("login", "bob", "secret")
        assert ann.subscribe("stats").data["online"] == ["ann"]   # who is online: per server
        assert bob.subscribe("stats").data["online"] == ["bob"]
    finally:
        for c in clients:
            c.disconnect()


# -- configuration ------------------------------------------------------------------


def test_configuration_defaults_and_environment(monkeypatch):
    assert board.config["db.url"] == "sqlite:///sbio-demo.db"     # in the working directory
    assert board.config["stats.interval"] == 2.0
    assert board.config["board.columns"] == ["To do", "Doing", "Done"]
    monkeypatch.setenv("BOARD_STATS__INTERVAL", "0.5")
    monkeypatch.setenv("BOARD_BOARD__USERS", "carol:pw")
    config = parse_config(board.__file__)
    assert config["stats.interval"] == 0.5
    assert config["board.users"] == ["carol:pw"]


# -- pages ------------------------------------------------------------------------------


@pytest.fixture
def unstarted_server(sbio_config):
    servers = []

    def make(*args, **kwargs):
        servers.append(Server(*args, config=sbio_config, **kwargs))
        return servers[-1]
    yield make
    for server in servers:
        server.stop(timeout=5)                            # leaves the live-data bus


def test_index_links_the_board_page(unstarted_server):
    app = unstarted_server([BoardNamespace], blueprints=[blueprint]).app
    index = app.test_client().get("/")
    assert index.status_code == 200
    assert '<a href="/board/">' in index.text and "/board" in index.text

    page = app.test_client().get("/board/")
    assert page.status_code == 200
    for needle in ["<b>ann</b> and <b>bob</b>", "password <b>secret</b>",
                   "/static/node_modules/socket.io-client/dist/socket.io.min.js",
                   "/static/sbio.js", "/static/board.js", "/static/demo.css"]:
        assert needle in page.text


# -- the whole application, as `sbio run` serves it ---------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_demo(workdir, port, **env):
    """`sbio run` in *workdir*, with the repository's namespaces and static files."""
    config = workdir / "sbio-test.ini"
    config.write_text(f"[server]\nnamespaces = {REPO}/namespaces\nstatic_dir = {REPO}/static\n"
                      "secret_key = demo-tests\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sbio", "run", "--port", str(port), "--config", str(config)],
        cwd=workdir, env=dict(os.environ, PYTHONUNBUFFERED="1", **env),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"sbio run exited early:\n{proc.communicate()[0]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"sbio run did not listen on port {port} within 30 s")


def stop_demo(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.communicate(timeout=5)[0]
    return proc.communicate(timeout=5)[0]


def test_sbio_run_serves_the_demo(tmp_path, static_node_modules):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_demo(tmp_path, port, BOARD_STATS__INTERVAL="0.2")
    clients = []
    try:
        index = requests.get(url + "/", timeout=5)
        assert '<a href="/board/">' in index.text and "<code>/board</code>" in index.text
        assert requests.get(url + "/board/", timeout=5).status_code == 200
        for path in ["/static/board.js", "/static/demo.css", "/static/sbio.js",
                     "/static/node_modules/socket.io-client/dist/socket.io.min.js"]:
            assert requests.get(url + path, timeout=5).status_code == 200, path

        ann = LiveClient(url, "/board", timeout=10)
        clients.append(ann)
        ann.call("login", "ann", "secret")
        stats = ann.subscribe("stats")
        cards = ann.subscribe("cards", "main")
        ann.call("add_card", "main", "persisted")
        assert [c["title"] for c in cards.wait_update()] == ["persisted"]
        for _ in range(20):                               # the task runs every 0.2 s
            if stats.wait_update(timeout=10).get("online") == ["ann"]:
                break
        else:
            pytest.fail("the stats task never reported ann online")

        with pytest.raises(ConnectionRefused) as refused:  # a malformed token, over the wire
            LiveClient(url, "/board", auth={"token": {"$ne": ""}}, timeout=10)
        assert refused.value.data == {"code": "bad_request"}
        guesser = LiveClient(url, "/board", timeout=10)
        clients.append(guesser)
        codes = [guesser.call_envelope("login", "bob", f"guess{n}")["error"]["code"]
                 for n in range(7)]
        assert codes == ["bad_credentials"] * 5 + ["rate_limited"] * 2
    finally:
        for client in clients:
            client.disconnect()
        output = stop_demo(proc)
    assert proc.returncode == 0, output
    assert (tmp_path / "sbio-demo.db").exists()           # the database is in the working dir
    assert "Traceback" not in output, output

    proc = start_demo(tmp_path, port)                     # the data survives a restart
    try:
        bob = LiveClient(url, "/board", timeout=10)
        clients.append(bob)
        bob.call("login", "bob", "secret")
        assert [c["title"] for c in bob.subscribe("cards", "main").data] == ["persisted"]
        bob.disconnect()
    finally:
        output = stop_demo(proc)
    assert "Traceback" not in output, output


# -- the tutorial ---------------------------------------------------------------------

ELISION = {"...", "# ...", "// ...", "<!-- ... -->"}


def tutorial_excerpts():
    """``(path, chunks)`` for each code block of docs/tutorial.md whose first line names a file.

    A block is cut into chunks at ``...`` lines; each chunk is a run of lines
    of the file, and the chunks come in the file's order.
    """
    import re

    with open(os.path.join(REPO, "docs", "tutorial.md"), encoding="utf-8") as f:
        text = f.read()
    header = re.compile(r"^(?:#|//|<!--)\s*(\S+\.\w+)\s*(?:-->)?$")
    for block in re.findall(r"^```\w*\n(.*?)^```", text, flags=re.S | re.M):
        lines = [line.rstrip() for line in block.splitlines()]
        match = header.match(lines[0]) if lines else None
        if not match or not os.path.isfile(os.path.join(REPO, match.group(1))):
            continue
        chunks = [[]]
        for line in lines[1:]:
            if line.strip() in ELISION:
                chunks.append([])
            else:
                chunks[-1].append(line)
        yield match.group(1), [c for c in chunks if c]


def test_tutorial_snippets_match_the_code():
    checked = 0
    for path, chunks in tutorial_excerpts():
        with open(os.path.join(REPO, path), encoding="utf-8") as f:
            source = [line.rstrip() for line in f.read().splitlines()]
        start = 0
        for chunk in chunks:
            found = next((i for i in range(start, len(source) - len(chunk) + 1)
                          if source[i:i + len(chunk)] == chunk), None)
            assert found is not None, (
                f"docs/tutorial.md quotes {path}, but these lines are not in it "
                f"(in this order, after line {start}):\n" + "\n".join(chunk))
            start = found + len(chunk)
            checked += 1
    assert checked >= 20
