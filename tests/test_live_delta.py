"""Delta pushes (``"delta": true``): JSON Patches against the last value each subscriber got.

In-process clients for the rules, and a property test against a real server
with a raw python-socketio client applying the patches with
:func:`sbio.live.patch.apply_patch`.
"""
import copy
import json
import os
import shutil
import subprocess
import threading

import gevent
import pytest
import socketio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sbio.live.broadcaster
from sbio import Client, Namespace, notifies, subscribes
from sbio.live.patch import apply_patch
from sbio.testing import CallError

NS = "/deck"
WAIT = float(os.environ.get("SBIO_TEST_DELTA_WAIT", "10"))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cards(n, column="To do"):
    return [{"id": i, "column": column, "title": f"card number {i}"} for i in range(n)]


class State:
    def __init__(self):
        self.board = cards(50)
        self.fail = False


S = State()


class Deck(Namespace):
    name = NS

    @subscribes("deck")
    def on_board(self):
        if S.fail:
            raise RuntimeError("failing on purpose")
        return S.board

    @subscribes("deck", shared=True)
    def on_shared_board(self):
        if S.fail:
            raise RuntimeError("failing on purpose")
        return S.board

    @notifies("deck")
    def on_set(self, board):
        S.board = board

    def on_ping(self):
        return "pong"


@pytest.fixture(autouse=True)
def state():
    S.__init__()
    yield S


def quiet(client):
    """Nothing queued or running in the broadcaster, then a round trip: every push is in."""
    b = client.server.live.broadcaster(NS)
    with gevent.Timeout(10, AssertionError("the broadcaster did not go quiet")):
        while b._pending or b._requests or len(b.pool):
            gevent.sleep(0.005)
    assert client.call("ping") == "pong"


def changed(board, index, **fields):
    board = copy.deepcopy(board)
    board[index].update(fields)
    return board


@pytest.mark.parametrize("event", ["board", "shared_board"])
def test_first_push_whole_then_patches_and_the_client_has_whole_values(sbio_client, event):
    watcher, writer = sbio_client(Deck), sbio_client(Deck)
    delta = watcher.subscribe(event, delta=True)
    whole = watcher.subscribe(event)
    assert delta.data == whole.data == S.board

    # The first push after a subscribe is whole: the client cannot tell a
    # patch of the subscription it replaced from one of the new one before.
    writer.call("set", changed(S.board, 3, column="Doing"))
    assert delta.wait_update() == whole.wait_update() == S.board
    assert "data" in delta.pushes[-1] and "patch" not in delta.pushes[-1]

    for n in range(4, 8):
        writer.call("set", changed(S.board, n, column="Done"))
        assert delta.wait_update() == whole.wait_update() == S.board
        assert delta.pushes[-1] == {"id": delta.id, "trigger": "set", "patch": [
            {"op": "replace", "path": f"/{n}/column", "value": "Done"}]}
        assert whole.pushes[-1]["data"] == S.board
    metrics = watcher.server.live.broadcaster(NS).metrics
    assert metrics["patches"] == 4


def test_a_patch_that_is_not_smaller_is_sent_whole(sbio_client):
    watcher, writer = sbio_client(Deck), sbio_client(Deck)
    sub = watcher.subscribe("board", delta=True)
    writer.call("set", changed(S.board, 0, title="x"))
    sub.wait_update()  # whole: the first push
    writer.call("set", cards(50, column="Elsewhere"))  # 50 replaces: longer than the value
    assert sub.wait_update() == cards(50, column="Elsewhere")
    assert "data" in sub.pushes[-1]
    writer.call("set", [1])
    assert sub.wait_update() == [1]
    assert sub.pushes[-1]["data"] == [1]  # a tiny result: whole is shorter
    writer.call("set", [1, 2])
    assert sub.wait_update() == [1, 2]


def test_after_an_error_the_next_push_is_whole(sbio_client):
    watcher, writer = sbio_client(Deck, raise_server_errors=False), sbio_client(Deck)
    sub = watcher.subscribe("board", delta=True)
    writer.call("set", changed(S.board, 0, title="x"))
    sub.wait_update()
    writer.call("set", changed(S.board, 1, title="y"))
    sub.wait_update()
    assert "patch" in sub.pushes[-1]
    S.fail = True
    writer.call("set", S.board)
    with pytest.raises(CallError):
        sub.wait_update()
    S.fail = False
    writer.call("set", changed(S.board, 2, title="z"))
    assert sub.wait_update() == S.board
    assert "data" in sub.pushes[-1]


class Money:
    def __init__(self, cents):
        self.cents = cents


AMOUNTS = [1, 2, 3]


class Till(Namespace):
    name = "/till"

    @subscribes("till")
    def on_amounts(self):
        return [{"n": i, "money": Money(c)} for i, c in enumerate(AMOUNTS)]

    @notifies("till")
    def on_set(self, i, cents):
        AMOUNTS[i] = cents


def test_delta_pushes_use_the_servers_registered_json_types(sbio_client):
    watcher = sbio_client(Till)
    watcher.server.register_json_type(Money, lambda m: {"eur": m.cents / 100})
    AMOUNTS[:] = [100, 250, 999] * 10
    sub = watcher.subscribe("amounts", delta=True)
    watcher.call("set", 1, 260)  # the first push is whole
    assert sub.wait_update() == [{"n": i, "money": {"eur": c / 100}}
                                 for i, c in enumerate(AMOUNTS)]
    watcher.call("set", 2, 1000)
    assert sub.wait_update()[2] == {"n": 2, "money": {"eur": 10.0}}
    assert "patch" in sub.pushes[-1]  # the patch carries the converted value
    assert sub.pushes[-1]["patch"] == [{"op": "replace", "path": "/2/money/eur", "value": 10.0}]


def test_a_shared_group_makes_one_patch_for_all_its_delta_members(sbio_client, monkeypatch):
    made = []
    real = sbio.live.broadcaster.make_patch

    def counting(old, new):
        made.append(1)
        return real(old, new)

    monkeypatch.setattr(sbio.live.broadcaster, "make_patch", counting)
    writer = sbio_client(Deck)
    clients = [sbio_client(Deck) for _ in range(5)]
    deltas = [c.subscribe("shared_board", delta=True) for c in clients[:4]]
    whole = clients[4].subscribe("shared_board")
    writer.call("set", changed(S.board, 0, title="first"))
    for sub in [*deltas, whole]:
        sub.wait_update()
    del made[:]
    writer.call("set", changed(S.board, 9, title="ninth"))
    for sub in deltas:
        assert sub.wait_update() == S.board
        assert sub.pushes[-1]["patch"] == [{"op": "replace", "path": "/9/title",
                                            "value": "ninth"}]
    assert whole.wait_update() == S.board and "data" in whole.pushes[-1]
    assert len(made) == 1  # once per group and run, not once per member

    late = clients[0].subscribe("shared_board", id="late", delta=True)  # joins the group
    writer.call("set", changed(S.board, 10, title="tenth"))
    assert late.wait_update() == S.board and "data" in late.pushes[-1]  # its first: whole
    assert deltas[1].wait_update() == S.board and "patch" in deltas[1].pushes[-1]


def test_unchanged_results_are_not_pushed_to_delta_subscribers(sbio_client):
    watcher, writer = sbio_client(Deck), sbio_client(Deck)
    sub = watcher.subscribe("board", delta=True)
    shared = watcher.subscribe("shared_board", delta=True)
    writer.call("set", S.board)
    quiet(watcher)
    assert sub.pushes == shared.pushes == []


def test_max_delta_bytes_bounds_what_is_kept(sbio_config, sbio_client):
    sbio_config["broadcaster"]["max_delta_bytes"] = 1000  # S.board is ~2,300 bytes of JSON
    watcher, writer = sbio_client(Deck), sbio_client(Deck)
    subs = [watcher.subscribe("board", delta=True), watcher.subscribe("shared_board", delta=True)]
    for n in range(3):
        writer.call("set", changed(S.board, n, title="t"))
        for sub in subs:
            assert sub.wait_update() == S.board
            assert "data" in sub.pushes[-1]
    broadcaster = watcher.server.live.broadcaster(NS)
    single = broadcaster.subscriptions_of(watcher.sid)[subs[0].id]
    assert single.value is sbio.live.subscription._NO_VALUE
    assert broadcaster.metrics["patches"] == 0


def test_delta_must_be_a_boolean(sbio_client):
    client = sbio_client(Deck)
    envelope = client.call_envelope("sbio:subscribe", {"id": "x", "event": "board", "args": [],
                                                       "delta": 1})
    assert envelope == {"ok": False, "error": {
        "code": "bad_request", "message": 'sbio:subscribe: "delta" must be true or false'}}


def test_a_group_forgets_its_value_when_its_last_delta_member_leaves(sbio_client):
    watcher, writer = sbio_client(Deck), sbio_client(Deck)
    delta = watcher.subscribe("shared_board", delta=True)
    watcher.subscribe("shared_board", id="plain")
    writer.call("set", changed(S.board, 0, title="x"))
    delta.wait_update()
    (group,) = watcher.server.live.broadcaster(NS).groups.values()
    assert group.deltas == 1 and group.value == S.board
    watcher.unsubscribe(delta)
    assert group.deltas == 0 and group.value is sbio.live.subscription._NO_VALUE


# -- a property test against a real server: delta and whole subscribers agree ---------------

card = st.fixed_dictionaries({
    "id": st.integers(0, 10**6),
    "column": st.sampled_from(["To do", "Doing", "Done"]),
    "title": st.text(max_size=12),
}, optional={"tags": st.lists(st.sampled_from(["a", "b", None, True, 1, 1.5]), max_size=3),
             "note": st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-2, 2)})


@st.composite
def edits(draw):
    """A starting board and a sequence of edits of it, as a user would make them."""
    board = draw(st.lists(card, max_size=12))
    states = []
    for _ in range(draw(st.integers(1, 8))):
        board = copy.deepcopy(board)
        action = draw(st.sampled_from(["add", "remove", "move", "edit", "unset", "replace"]))
        if action == "add" or not board:
            board.insert(draw(st.integers(0, len(board))), draw(card))
        elif action == "remove":
            del board[draw(st.integers(0, len(board) - 1))]
        elif action == "move":
            item = board.pop(draw(st.integers(0, len(board) - 1)))
            board.insert(draw(st.integers(0, len(board))), item)
        elif action == "edit":
            target = board[draw(st.integers(0, len(board) - 1))]
            target[draw(st.sampled_from(["column", "title", "note"]))] = draw(card)["title"]
        elif action == "unset":
            board[draw(st.integers(0, len(board) - 1))].pop("note", None)
        else:
            board = draw(st.lists(card, max_size=12))
        states.append(board)
    return states


class RawSubscriber:
    """A plain python-socketio client holding one delta and one whole subscription."""

    def __init__(self, url, event):
        self.sio = socketio.Client(reconnection=False)
        self.values = {}     # subscription id -> the value the client holds
        self.bodies = []     # every sbio:update body
        self.records = []    # {old, patch, new} of every patch applied (for sbio.js)
        self.sio.on("sbio:update", self._on_update, namespace=NS)
        self.sio.connect(url, namespaces=[NS], transports=["websocket"], wait_timeout=10)
        self.has_value = {}
        for sub_id, delta in (("delta", True), ("whole", False)):
            ack = self.sio.call("sbio:subscribe", {"id": sub_id, "event": event, "args": [],
                                                   "delta": delta}, namespace=NS, timeout=10)
            assert ack["ok"], ack
            self.values.setdefault(sub_id, ack["data"])

    def _on_update(self, body):
        self.bodies.append(body)
        sub_id = body["id"]
        if "patch" in body:
            assert self.has_value.get(sub_id), "a patch before any whole push"
            old = self.values[sub_id]
            self.values[sub_id] = apply_patch(old, body["patch"])
            self.records.append({"old": old, "patch": body["patch"],
                                 "new": self.values[sub_id]})
        else:
            assert "error" not in body, body
            self.values[sub_id] = body["data"]
            self.has_value[sub_id] = True

    def call(self, event, *args):
        ack = self.sio.call(event, tuple(args), namespace=NS, timeout=10)
        assert ack["ok"], ack
        return ack["data"]

    def close(self):
        self.sio.disconnect()


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@pytest.fixture(scope="module")
def recorded():
    """(previous value, patch, value) of every patch the property test received."""
    return []


@pytest.mark.parametrize("event", ["board", "shared_board"])
def test_delta_and_whole_subscribers_end_with_identical_values(sbio_server, event, recorded):
    server = sbio_server(Deck)
    client = RawSubscriber(server.url, event)
    patches_before = server.live.broadcaster(NS).metrics["patches"]

    def wait_for(expected):
        with gevent.Timeout(WAIT, AssertionError(f"subscribers never got {expected!r}: "
                                               f"{client.values!r}")):
            while not all(canonical(v) == canonical(expected) for v in client.values.values()):
                gevent.sleep(0.002)

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(edits())
    def check(states):
        for board in states:
            client.call("set", board)
            wait_for(board)
            # both hold exactly what a whole push gives: types, nulls and order included
            assert canonical(client.values["delta"]) == canonical(client.values["whole"])
            assert client.values["delta"] == client.values["whole"] == json.loads(
                json.dumps(board))

    try:
        check()
    finally:
        client.close()
    recorded.extend(client.records)
    assert server.live.broadcaster(NS).metrics["patches"] > patches_before  # deltas were used


class _Values:
    """A callback recording every value it gets; waits on a condition, with a timeout."""

    def __init__(self):
        self.values = []
        self._cond = threading.Condition()

    def __call__(self, value):
        with self._cond:
            self.values.append(value)
            self._cond.notify_all()

    def wait_for(self, predicate, what):
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.values), WAIT):
                raise AssertionError(f"never got {what}: {self.values[-3:]!r}")


@pytest.mark.parametrize("event", ["board", "shared_board"])
def test_a_delta_sbio_client_ends_with_the_value_of_a_whole_one(sbio_server, event):
    """sbio.Client(subscribe(..., delta=True)) applies the patches: whole values in its
    callback, equal to a whole-value subscriber's after every change, errors included."""
    server = sbio_server(Deck)
    metrics = server.live.broadcaster(NS).metrics
    patches_before = metrics["patches"]
    got = {"delta": _Values(), "whole": _Values()}
    errors = {"delta": _Values(), "whole": _Values()}
    clients = [Client(server.url, NS, reconnect=False) for _ in range(2)]
    try:
        subs = {kind: client.subscribe(event, callback=got[kind], on_error=errors[kind],
                                       delta=kind == "delta")
                for kind, client in zip(("delta", "whole"), clients, strict=True)}
        assert subs["delta"].delta and not subs["whole"].delta
        assert subs["delta"].data == subs["whole"].data == S.board

        def step(board):
            clients[1].call("set", board)
            for kind in got:
                got[kind].wait_for(lambda values, board=board: values and values[-1] == board,
                                   f"{kind}: {board!r}"[:200])

        board = S.board
        for i in range(0, 10, 3):  # one card moves: a patch each time
            board = changed(board, i, column="Done")
            step(board)
        board = board[:20] + board[21:]  # one card removed
        step(board)
        board = [*board[:5], {"id": 99, "column": "To do", "title": "new"}, *board[5:]]
        step(board)
        S.fail = True  # the next re-run fails: an error push to both
        clients[1].call("set", changed(board, 0, title="never seen"))
        for kind in errors:
            errors[kind].wait_for(lambda values: len(values) == 1, f"{kind}: an error")
        S.fail = False
        board = changed(board, 1, title="after the error")  # whole first, then patches again
        step(board)
        board = changed(board, 2, column="Doing")
        step(board)
        board = cards(3, "Done")  # a patch would not be smaller: whole
        step(board)
        board = changed(board, 0, title="last")
        step(board)
        assert subs["delta"].data == subs["whole"].data == board
        # the callbacks got whole values (every one the server had), never a patch
        assert got["delta"].values == got["whole"].values
        assert all(isinstance(value, list) for value in got["delta"].values)
        assert metrics["patches"] > patches_before  # the delta subscriber did get patches
    finally:
        for client in clients:
            client.close()


def test_sbio_js_applies_the_servers_patches(recorded, tmp_path):
    """sbio.js's applyPatch on every patch the real server sent in the property test."""
    node = shutil.which("node")
    if not node:
        pytest.skip("node is not installed")
    if not recorded:
        pytest.skip("the property test recorded no patches (run it in the same session)")
    vectors = tmp_path / "patches.json"
    vectors.write_text(json.dumps(recorded))
    script = os.path.join(REPO, "tests", "node", "apply_recorded_patches.js")
    result = subprocess.run([node, script, str(vectors)], capture_output=True, text=True,
                            timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(recorded)} patches applied" in result.stdout
