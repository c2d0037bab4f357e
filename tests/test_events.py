"""Any event name, raw acks (issue 13): ``@sbio.event(name)`` and ``raw=True`` / ``raw_acks``.

In-process through the real dispatch (``sbio_client``) for the rules, and
over a real socket (python-socketio's client) for the wire format of raw acks.
"""
import pytest

import sbio
from sbio import Namespace, RpcError, event, rate_limit, subscribes
from sbio.protocol import MAX_EVENT_NAME_LENGTH
from sbio.testing import CallError


class Chat(Namespace):
    """A Namespace as a plain socket.io front end expects it, beside sbio's own style."""

    name = "/events"

    def get_initial_acl(self):
        return None

    @event("chat message")
    def chat(self, text: str):
        self.broadcast("chat message", text)
        return "sent"

    @event("message-with-ack", raw=True)
    def echo(self, *args):
        return args  # a tuple: several ack arguments

    @event("nothing", raw=True)
    def nothing(self):
        return None  # an ack with no arguments

    @event("one list", raw=True)
    def one_list(self):
        return [1, 2]  # a list: one argument

    @event("add numbers", raw=True)
    def add(self, a: int, b: int = 1):
        return a + b

    @event("refuse", raw=True)
    def refuse(self):
        raise RpcError("no_way", "you cannot do that")

    @event("crash", raw=True)
    def crash(self):
        raise ValueError("boom")

    @event("unjsonable", raw=True)
    def unjsonable(self):
        return object()  # no JSON form (sets have one since register_json_type)

    @event("alias one")
    @event("alias two", raw=True)
    def alias(self):
        return "alias"

    def on_login(self, user: str):  # the on_<name> convention stays
        return {"user": user}

    @event("on_x")  # a name, not the convention: the ACL names it "on_x"
    def odd(self):
        return "odd"


class RawChat(Namespace):
    """Every handler raw, but one."""

    name = "/raw"
    raw_acks = True

    def on_pair(self):
        return 1, "two"

    @event("wrapped", raw=False)
    def wrapped(self):
        return "in an envelope"

    @event("guarded")
    @rate_limit(1, burst=1)
    def guarded(self):
        return "ok"

    @subscribes("cards")
    def on_cards(self):
        return ["ace"]


class Locked(Namespace):
    name = "/locked-events"

    def get_initial_acl(self):
        return ["log in"]

    @event("log in", raw=True)
    def login(self):
        self.add_acl_method("secret stuff")
        return True

    @event("secret stuff", raw=True)
    def secret(self):
        return "s3cret"

    @event("other stuff", raw=True)
    def other(self):
        return "other"

    @event("live cards")
    @subscribes("cards")
    def cards(self):
        return ["king"]


# -- names --------------------------------------------------------------------------


def test_any_event_name_reaches_its_handler(sbio_client):
    c = sbio_client(Chat)
    assert c.call("chat message", "hi") == "sent"
    assert c.receive("chat message") == ["hi"]
    assert c.call("login", "ann") == {"user": "ann"}
    assert c.call("on_x") == "odd"
    assert c.call("alias one") == "alias"
    assert c.call_raw("alias two") == ["alias"]


def test_the_decorator_returns_the_function_itself():
    def handler(self):
        return 1

    assert event("x y")(handler) is handler
    assert handler._sbio_events == (("x y", None),)


@pytest.mark.parametrize("name", [
    "sbio:mine", "connect", "disconnect", "connect_error", "disconnecting", "newListener",
    "removeListener", "", "x" * (MAX_EVENT_NAME_LENGTH + 1), "line\nbreak", "nul\x00"])
def test_names_sbio_and_socketio_reserve_are_refused(name):
    with pytest.raises(ValueError, match=r"@sbio.event"):
        event(name)


def test_the_longest_name_is_dispatchable(sbio_client):
    long_name = "é" * MAX_EVENT_NAME_LENGTH

    class Long(Namespace):
        name = "/long"

        @event(long_name)
        def handler(self):
            return "long"

    assert sbio_client(Long).call(long_name) == "long"


def test_decorator_misuse_is_a_clear_error():
    with pytest.raises(TypeError, match="parentheses"):
        event(lambda self: None)  # type: ignore[arg-type]  # @sbio.event without a name
    with pytest.raises(TypeError, match="plain methods"):
        event("x")(staticmethod(lambda: None))  # type: ignore[type-var]
    with pytest.raises(TypeError, match="raw must be"):
        event("x", raw="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("body", ["duplicate", "collision", "reserved_convention", "async",
                                  "hook"])
def test_handler_conflicts_are_refused_when_the_namespace_is_added(sbio_server, body):
    namespace = {"name": "/conflict"}
    if body == "duplicate":
        namespace["a"] = event("same")(lambda self: 1)
        namespace["b"] = event("same")(lambda self: 2)
    elif body == "collision":  # two events the ACL would know by one name
        namespace["on_x"] = lambda self: 1
        namespace["odd"] = event("on_x")(lambda self: 2)
    elif body == "reserved_convention":
        namespace["on_disconnecting"] = lambda self: 1
    elif body == "async":
        async def handler(self):
            return 1
        namespace["handler"] = event("as ync")(handler)
    else:
        namespace["on_connect"] = event("hello")(lambda self, auth: None)
    cls = type("Conflict", (Namespace,), namespace)
    with pytest.raises(TypeError, match="Conflict"):
        sbio_server(cls)


def test_event_is_exported():
    assert sbio.event is event
    assert "event" in sbio.__all__


# -- raw acks -----------------------------------------------------------------------


def test_raw_acks_are_the_return_value(sbio_client):
    c = sbio_client(Chat)
    assert c.call_raw("message-with-ack", 1, "2", {"3": [False]}) == [1, "2", {"3": [False]}]
    assert c.call_raw("nothing") == []
    assert c.call_raw("one list") == [[1, 2]]
    assert c.call_raw("add numbers", 2) == [3]
    # a handler without raw keeps the envelope
    assert c.call_raw("chat message", "x") == [{"ok": True, "data": "sent"}]


def test_raw_failures_ack_one_error_object(sbio_client):
    c = sbio_client(Chat, raise_server_errors=False)
    assert c.call_raw("refuse") == [{"error": {"code": "no_way",
                                               "message": "you cannot do that"}}]
    assert c.call_raw("crash") == [{"error": {"code": "internal",
                                              "message": "internal server error"}}]
    assert c.call_raw("add numbers", "2") == [{"error": {
        "code": "bad_request", "message": "argument 'a' of event 'add numbers' must be int, "
                                          "got str"}}]
    assert c.call_raw("unjsonable")[0]["error"]["code"] == "internal"
    # events without a handler: the namespace's raw_acks decides (False here)
    assert c.call_raw("nope")[0]["error"]["code"] == "not_found"
    assert c.call_raw("nope")[0]["ok"] is False


def test_in_process_raw_call_shows_the_server_exception(sbio_client):
    c = sbio_client(Chat)
    with pytest.raises(CallError) as err:
        c.call_raw("crash")
    assert err.value.code == "internal"
    assert isinstance(err.value.__cause__, ValueError)


def test_unacked_raw_failure_still_pushes_sbio_error(sbio_client):
    c = sbio_client(Chat, raise_server_errors=False)
    c.emit("refuse")
    assert c.receive("sbio:error") == [{"event": "refuse", "code": "no_way",
                                        "message": "you cannot do that"}]


def test_raw_acks_class_wide_with_one_envelope_handler(sbio_client):
    c = sbio_client(RawChat, raise_server_errors=False)
    assert c.call_raw("pair") == [1, "two"]
    assert c.call_raw("wrapped") == [{"ok": True, "data": "in an envelope"}]
    assert c.call_raw("guarded") == ["ok"]
    assert c.call_raw("guarded")[0]["error"]["code"] == "rate_limited"
    assert c.call_raw("nope") == [{"error": {"code": "not_found",
                                             "message": "no handler for event 'nope'"}}]
    # sbio's own event names keep the envelope: sbio.js speaks it
    assert c.call_raw("sbio:nope")[0]["ok"] is False
    assert c.subscribe("cards").data == ["ace"]


def test_the_acl_names_decorated_handlers_by_their_event_name(sbio_client):
    c = sbio_client(Locked)
    assert "log in" in Locked.handler_names()
    assert Locked.handler_function("secret stuff") is Locked.secret
    assert c.call_raw("secret stuff") == [{"error": {"code": "forbidden",
                                                     "message": "not allowed to call "
                                                                "'secret stuff'"}}]
    assert c.call_raw("no such thing")[0]["error"]["code"] == "forbidden"  # nothing leaks
    assert c.call_raw("log in") == [True]
    assert c.call_raw("secret stuff") == ["s3cret"]
    assert c.call_raw("other stuff")[0]["error"]["code"] == "forbidden"
    with pytest.raises(CallError) as err:
        c.subscribe("live cards")
    assert err.value.code == "forbidden"
    c.instance.lift_acl_restrictions()
    assert c.subscribe("live cards").data == ["king"]
    c.instance.del_acl_method("other stuff")
    assert c.call_raw("other stuff")[0]["error"]["code"] == "forbidden"
    assert c.call_raw("secret stuff") == ["s3cret"]


def test_event_handlers_lists_every_event():
    table = Chat.event_handlers()
    assert table["chat message"].attr == "chat"
    assert table["chat message"].raw is False
    assert table["message-with-ack"].raw is True
    assert table["login"].acl_name == "on_login"
    assert table["on_x"].acl_name == "on_x" and table["on_x"].attr == "odd"
    assert "x" not in table
    assert RawChat.event_handlers()["pair"].raw is True
    assert RawChat.event_handlers()["wrapped"].raw is False


# -- over a real socket -------------------------------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_raw_acks_on_the_wire(sbio_server, sbio_live_client, transport):
    server = sbio_server(Chat, RawChat)
    c = sbio_live_client(server, "/events", transports=(transport,))
    assert c.call_raw("message-with-ack", 1, "2", {"3": [False]}) == [1, "2", {"3": [False]}]
    assert c.call_raw("nothing") == []
    assert c.call_raw("message-with-ack", b"\x01\x02") == [b"\x01\x02"]  # binary ack
    assert c.call_raw("refuse") == [{"error": {"code": "no_way",
                                               "message": "you cannot do that"}}]
    assert c.call("chat message", "hi") == "sent"
    raw = sbio_live_client(server, "/raw", transports=(transport,))
    assert raw.call_raw("pair") == [1, "two"]
    assert raw.call_raw("nope") == [{"error": {"code": "not_found",
                                               "message": "no handler for event 'nope'"}}]


def test_the_decorator_works_above_and_below_the_others(sbio_client):
    from sbio import notifies

    class Stacked(Namespace):
        name = "/stacked"

        @notifies("things")
        @event("inner mark")
        @rate_limit(100)
        def inner(self):
            return "inner"

        @event("outer mark", raw=True)
        @notifies("things")
        @subscribes("things")
        def outer(self):
            return "outer"

    table = Stacked.event_handlers()
    assert set(table) == {"inner mark", "outer mark"}
    assert hasattr(table["inner mark"].func, "_sbio_rate_limit")
    c = sbio_client(Stacked)
    assert c.call("inner mark") == "inner"
    assert c.call_raw("outer mark") == ["outer"]
    assert c.subscribe("outer mark").data == "outer"


def test_notifies_triggers_with_the_event_name(sbio_client):
    from sbio import notifies

    cards = ["ace"]

    class Board(Namespace):
        name = "/board-events"

        @event("all cards")
        @subscribes("cards")
        def all_cards(self):
            return list(cards)

        @event("add card")
        @notifies("cards")
        def add_card(self, card: str):
            cards.append(card)

        @notifies("cards")
        @event("drop card")
        def drop_card(self):
            cards.pop()

    c = sbio_client(Board)
    sub = c.subscribe("all cards")
    c.call("add card", "king")
    assert sub.wait_update() == ["ace", "king"]
    c.call("drop card")
    assert sub.wait_update() == ["ace"]
    assert [push["trigger"] for push in sub.pushes] == ["add card", "drop card"]
