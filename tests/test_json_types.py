"""Python values on the wire (issue 13): datetimes, UUIDs, Decimals, enums, dataclasses,
sets... in acks, emits, server-to-client calls, live pushes and emits relayed through
Redis; ``register_json_type`` per process and per server; values nothing can encode.

Every test talks socket.io over a real socket: :class:`sbio.testing.LiveClient`
(python-socketio's client) against started servers, two of them sharing a Redis
for the cluster path.
"""
import dataclasses
import datetime
import decimal
import enum
import logging
import uuid

import gevent
import gevent.event
import pytest
import socketio

import sbio
from sbio import Namespace, notify_remote, subscribes
from sbio.config import load_sbio_config
from sbio.jsonenc import JSONProvider, JSONTypes
from sbio.tasks import Lifecycle
from sbio.testing import CallError, LiveClient

NS = "/values"
PARIS = datetime.timezone(datetime.timedelta(hours=2))


class Color(enum.Enum):
    RED = "red"
    BLUE = 2


@dataclasses.dataclass
class Point:
    x: int
    y: int
    seen: datetime.date


class Opaque:
    """A type nothing can encode."""


class Money:
    def __init__(self, amount, currency):
        self.amount = decimal.Decimal(amount)
        self.currency = currency


class Broken:
    """Registered with a conversion that raises."""


class Celsius:
    """Registered process-wide by a test (nothing else uses it)."""

    def __init__(self, degrees):
        self.degrees = degrees


def _broken(value):
    raise RuntimeError("conversion bug")


VALUES = {
    "moment": datetime.datetime(2024, 5, 1, 14, 30, 15, 123456, tzinfo=PARIS),
    "utc": datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc),
    "naive": datetime.datetime(2024, 5, 1, 12, 0),
    "day": datetime.date(2024, 5, 1),
    "clock": datetime.time(9, 15, 0, tzinfo=PARIS),
    "lasted": datetime.timedelta(minutes=1, seconds=30),
    "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "price": decimal.Decimal("12.50"),
    "big": decimal.Decimal("12345678901234567890.123456789"),
    "color": Color.RED,
    "number": Color.BLUE,
    "point": Point(1, 2, datetime.date(2020, 2, 29)),
    "tags": {"b", "c", "a"},
    "frozen": frozenset({3, 1, 2}),
    "mixed": (1, "two", None),
    "nested": [{"when": datetime.date(2000, 1, 1)}, (decimal.Decimal("0.1"),)],
}

EXPECTED = {
    "moment": "2024-05-01T14:30:15.123456+02:00",
    "utc": "2024-05-01T12:00:00+00:00",
    "naive": "2024-05-01T12:00:00",
    "day": "2024-05-01",
    "clock": "09:15:00+02:00",
    "lasted": 90.0,
    "id": "12345678-1234-5678-1234-567812345678",
    "price": "12.50",
    "big": "12345678901234567890.123456789",
    "color": "red",
    "number": 2,
    "point": {"x": 1, "y": 2, "seen": "2020-02-29"},
    "tags": ["a", "b", "c"],
    "frozen": [1, 2, 3],
    "mixed": [1, "two", None],
    "nested": [{"when": "2000-01-01"}, ["0.1"]],
}


class State:
    live = None     # what on_live returns
    runs = 0
    answer = None   # what the client answered to confirm
    answered = None


class Values(Namespace):
    name = NS

    def on_values(self):
        return VALUES

    def on_emit_values(self):
        self.emit("values", VALUES, Color.BLUE)

    def on_broadcast_values(self):
        self.broadcast("values", VALUES)

    def on_ask(self):
        State.answer = self.call("confirm", VALUES["moment"], VALUES["price"], timeout=10)
        return State.answer

    def on_money(self):
        return {"total": Money("9.99", "EUR")}

    def on_point(self):
        return Point(3, 4, datetime.date(2021, 1, 1))

    def on_unsendable(self):
        return {"fine": 1, "bad": Opaque()}

    def on_emit_unsendable(self):
        self.emit("news", Opaque())
        return "sent"

    def on_broken(self):
        return [Broken()]

    def on_echo(self, value):
        return value

    def on_weather(self):
        return {"today": Celsius(21.5), "when": datetime.date(2024, 7, 1)}

    @subscribes("values")
    def on_live(self):
        State.runs += 1
        return State.live


@pytest.fixture(autouse=True)
def _state():
    State.live = {"when": VALUES["moment"], "ids": {8, 16}, "price": VALUES["price"]}
    State.runs = 0
    State.answer = None
    yield


@pytest.fixture
def server(sbio_server):
    return sbio_server(Values)


def _client(server, sbio_live_client):
    return sbio_live_client(server, NS)


def _wait_for(predicate, what, timeout=10):
    with gevent.Timeout(timeout, AssertionError(f"timed out waiting for {what}")):
        while not predicate():
            gevent.sleep(0.02)


def _sbio_messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name.startswith("sbio")]


# -- the built-in types, on every path ----------------------------------------------------


def test_an_ack_carries_datetimes_uuids_decimals_enums_dataclasses_and_sets(
        server, sbio_live_client):
    client = _client(server, sbio_live_client)
    assert client.call("values") == EXPECTED


def test_decimals_are_strings_so_no_digit_is_lost(server, sbio_live_client):
    client = _client(server, sbio_live_client)
    data = client.call("values")
    assert isinstance(data["price"], str) and decimal.Decimal(data["price"]) == VALUES["price"]
    assert decimal.Decimal(data["big"]) == VALUES["big"]  # a float would keep ~17 digits


def test_an_emit_carries_them(server, sbio_live_client):
    client = _client(server, sbio_live_client)
    client.call("emit_values")
    assert client.receive("values") == [EXPECTED, 2]


def test_a_broadcast_carries_them_to_every_connection(server, sbio_live_client):
    one, two = _client(server, sbio_live_client), _client(server, sbio_live_client)
    one.call("broadcast_values")
    assert one.receive("values") == [EXPECTED]
    assert two.receive("values") == [EXPECTED]


def test_a_server_to_client_call_carries_them(server, sbio_live_client):
    client = _client(server, sbio_live_client)
    client.on("confirm", lambda *args: list(args))
    assert client.call("ask") == [EXPECTED["moment"], "12.50"]
    assert State.answer == [EXPECTED["moment"], "12.50"]


def test_a_live_push_carries_them_and_a_set_in_another_order_is_no_change(
        server, sbio_live_client):
    client = _client(server, sbio_live_client)
    sub = client.subscribe("live")
    assert sub.data == {"when": EXPECTED["moment"], "ids": [8, 16], "price": "12.50"}
    metrics = server.live.broadcaster(NS).metrics
    skipped = metrics["skipped_unchanged"]
    # The same set built the other way round iterates 16, 8 (8 and 16 collide in
    # a small set's table): sorted, it is the same text, so no push.
    rebuilt = {16, 8}
    assert list(rebuilt) != list(State.live["ids"])
    State.live = dict(State.live, ids=rebuilt)
    sbio.notify("values")
    _wait_for(lambda: metrics["skipped_unchanged"] == skipped + 1, "the unchanged re-run")
    assert sub.pushes == []
    State.live = {"when": datetime.date(2025, 1, 1), "ids": frozenset({3, 1}),
                  "price": decimal.Decimal("0.10"), "color": Color.RED}
    sbio.notify("values")
    assert sub.wait_update() == {"when": "2025-01-01", "ids": [1, 3], "price": "0.10",
                                 "color": "red"}
    assert len(sub.pushes) == 1


# -- register_json_type ---------------------------------------------------------------------


def test_register_json_type_for_every_server_of_the_process(server, sbio_live_client):
    client = _client(server, sbio_live_client)
    with pytest.raises(CallError) as info:
        client.call("weather")
    assert info.value.code == "internal"
    # process-wide: a running server takes it at once (its cache is dropped)
    sbio.register_json_type(Celsius, lambda c: {"celsius": c.degrees})
    assert client.call("weather") == {"today": {"celsius": 21.5}, "when": "2024-07-01"}
    assert JSONProvider().dumps(Celsius(3)) == '{"celsius":3}'  # every new provider too


def test_a_registered_type_reaches_the_client(sbio_server, sbio_live_client):
    plain = sbio_server(Values)
    money = sbio.Server([Values], config=plain.config)
    money.register_json_type(Money, lambda m: {"amount": m.amount, "currency": m.currency})
    money.start()
    try:
        client = LiveClient(money.url, NS)
        try:
            # the conversion's result holds a Decimal: encoded in turn
            assert client.call("money") == {"total": {"amount": "9.99", "currency": "EUR"}}
        finally:
            client.disconnect()
    finally:
        money.stop(timeout=5)
    other = _client(plain, sbio_live_client)
    with pytest.raises(CallError) as info:
        other.call("money")
    assert info.value.code == "internal"


def test_a_registration_overrides_the_builtin_for_that_class_and_its_subclasses():
    server = sbio.Server([Values], config=load_sbio_config(overrides={
        "server.host": "127.0.0.1", "server.port": 0, "server.secret_key": "t"}))
    server.register_json_type(datetime.date, lambda d: d.strftime("%d/%m/%Y"))
    server.register_json_type(Point, lambda p: [p.x, p.y])
    server.start()
    try:
        client = LiveClient(server.url, NS)
        try:
            data = client.call("values")
        finally:
            client.disconnect()
    finally:
        server.stop(timeout=5)
    assert data["day"] == "01/05/2024"
    # A datetime is a date, but the built-in for datetime is nearer on its MRO:
    # overriding datetimes takes a registration for datetime.datetime.
    assert data["moment"] == EXPECTED["moment"]
    assert data["clock"] == EXPECTED["clock"]
    assert data["point"] == [1, 2]
    assert data["nested"] == [{"when": "01/01/2000"}, ["0.1"]]


def test_two_servers_of_one_process_do_not_see_each_others_types(sbio_config):
    one = sbio.Server([Values], config=sbio_config)
    two = sbio.Server([Values], config=sbio_config)
    one.register_json_type(Point, lambda p: f"{p.x},{p.y}")
    one.register_json_type(Money, lambda m: str(m.amount))
    two.register_json_type(Point, lambda p: {"at": [p.x, p.y]})
    one.start()
    two.start()
    try:
        a, b = LiveClient(one.url, NS), LiveClient(two.url, NS)
        try:
            assert a.call("point") == "3,4"
            assert b.call("point") == {"at": [3, 4]}
            assert a.call("money") == {"total": "9.99"}
            with pytest.raises(CallError) as info:
                b.call("money")
            assert info.value.code == "internal"
            # sets and datetimes still built in on both
            assert a.call("values")["tags"] == b.call("values")["tags"] == ["a", "b", "c"]
        finally:
            a.disconnect()
            b.disconnect()
    finally:
        one.stop(timeout=5)
        two.stop(timeout=5)
    # each server has a packet class of its own; python-socketio's stays untouched
    assert one.sio.packet_class is not two.sio.packet_class
    assert one.sio.packet_class.json.encoder is one.json
    assert socketio.packet.Packet.json is not one.sio.packet_class.json
    assert not isinstance(socketio.packet.Packet.json, type(one.sio.packet_class.json))


def test_a_server_can_be_given_its_provider(sbio_config, sbio_live_client):
    class Upper(JSONProvider):
        """A provider whose own built-in: enums by name."""

    provider = Upper()
    provider.register_type(Color, lambda c: c.name)
    server = sbio.Server([Values], config=sbio_config, json=provider).start()
    try:
        assert server.json is provider and server.sio.json is provider
        client = sbio_live_client(server, NS)
        data = client.call("values")
        assert data["color"] == "RED" and data["number"] == "BLUE"
    finally:
        server.stop(timeout=5)


def test_what_cannot_be_registered_is_refused_with_a_reason(sbio_config):
    server = sbio.Server(config=sbio_config)

    class Name(str):
        pass

    with pytest.raises(TypeError, match="str and its subclasses are written by the JSON encoder"):
        server.register_json_type(Name, str)
    with pytest.raises(TypeError, match="binary attachments"):
        server.register_json_type(bytes, bytes.hex)
    with pytest.raises(TypeError, match="not a class"):
        server.register_json_type(Point(1, 2, None), str)
    with pytest.raises(TypeError, match="not callable"):
        sbio.register_json_type(Opaque, "str")
    with pytest.raises(TypeError, match="int and its subclasses"):
        sbio.register_json_type(bool, str)


def test_register_json_type_after_start_is_refused(sbio_server):
    server = sbio_server(Values)
    with pytest.raises(RuntimeError, match="before starting the server"):
        server.register_json_type(Opaque, repr)


# -- values nothing can encode ------------------------------------------------------------


def test_an_unencodable_result_is_internal_and_the_log_names_the_type(
        server, sbio_live_client, caplog):
    caplog.set_level(logging.INFO)
    client = _client(server, sbio_live_client)
    envelope = client.call_envelope("unsendable")
    assert envelope == {"ok": False, "error": {
        "code": "internal",
        "message": "the handler returned a value that cannot be sent as JSON"}}
    lines = [m for m in _sbio_messages(caplog) if "not JSON-serializable" in m]
    assert len(lines) == 1, _sbio_messages(caplog)
    assert "test_json_types.Opaque" in lines[0] and "register_json_type" in lines[0]
    assert "event=unsendable" in lines[0]
    assert client.call("echo", "still here") == "still here"


def test_an_unencodable_emit_is_internal_and_nothing_is_sent(server, sbio_live_client, caplog):
    caplog.set_level(logging.INFO)
    client = _client(server, sbio_live_client)
    envelope = client.call_envelope("emit_unsendable")
    assert envelope["error"] == {"code": "internal", "message": "internal server error"}
    assert client.received("news") == []
    assert any("Opaque is not JSON serializable" in (r.exc_text or "") for r in caplog.records)
    assert client.call("echo", 2) == 2


def test_a_conversion_that_raises_is_internal_and_logged(sbio_config, sbio_live_client, caplog):
    caplog.set_level(logging.INFO)
    server = sbio.Server([Values], config=sbio_config)
    server.register_json_type(Broken, _broken)
    server.start()
    try:
        client = sbio_live_client(server, NS)
        assert client.call_envelope("broken")["error"]["code"] == "internal"
        lines = [m for m in _sbio_messages(caplog) if "not JSON-serializable" in m]
        assert len(lines) == 1 and "Broken" in lines[0] and "conversion bug" in lines[0], lines
        assert client.call("point") == {"x": 3, "y": 4, "seen": "2021-01-01"}
    finally:
        server.stop(timeout=5)


def test_an_unencodable_live_result_is_an_internal_error_push(server, sbio_live_client, caplog):
    caplog.set_level(logging.INFO)
    client = _client(server, sbio_live_client)
    sub = client.subscribe("live")
    State.live = {"bad": Opaque()}
    sbio.notify("values")
    with pytest.raises(CallError) as info:
        sub.wait_update()
    assert info.value.code == "internal"
    assert any("Opaque" in m and "not JSON-serializable" in m for m in _sbio_messages(caplog))


# -- through Redis: emits relayed to the clients of another server ------------------------------


def _cluster_config(url, prefix):
    return load_sbio_config(overrides={
        "server.host": "127.0.0.1", "server.port": 0, "server.secret_key": "t",
        "server.message_queue": url, "cluster.prefix": prefix})


@pytest.fixture
def cluster(sbio_redis_url):
    prefix = f"sbiotest-{uuid.uuid4().hex[:12]}"
    config = _cluster_config(sbio_redis_url, prefix)
    sender = sbio.Server([Values], config=config, lifecycle=Lifecycle())
    receiver = sbio.Server([Values], config=config, lifecycle=Lifecycle())
    # Money is known to the sender only: what the receiver relays is the
    # sender's encoding
    sender.register_json_type(Money, lambda m: {"amount": m.amount, "currency": m.currency})
    servers = [sender.start(), receiver.start()]
    try:
        for server in servers:
            assert server.cluster.wait_connected(10)
        yield sender, receiver, sbio_redis_url, prefix
    finally:
        for server in servers:
            server.stop(timeout=5)


def test_an_emit_relayed_through_redis_carries_them(cluster, sbio_live_client):
    sender, receiver, _url, _prefix = cluster
    client = sbio_live_client(receiver, NS)
    payload = dict(VALUES, total=Money("1.05", "EUR"))
    expected = dict(EXPECTED, total={"amount": "1.05", "currency": "EUR"})
    # No connection of the sender's is in the namespace: the packets reach the
    # client only through Redis and the receiver's manager.
    sender.emit("values", payload, namespace=NS)
    assert client.receive("values", timeout=10) == [expected]


def test_an_unencodable_emit_is_refused_before_it_reaches_redis(cluster, sbio_live_client,
                                                                caplog):
    sender, receiver, _url, _prefix = cluster
    client = sbio_live_client(receiver, NS)
    with pytest.raises(TypeError, match="Opaque is not JSON serializable"):
        sender.emit("values", {"x": Opaque()}, namespace=NS)
    # the emitter's error, not an outage: Redis is not marked unreachable
    assert not sender.cluster.health.is_down(sender.sio.manager.part)
    assert not any("unreachable" in m for m in _sbio_messages(caplog))
    sender.emit("values", "next", namespace=NS)
    assert client.receive("values", timeout=10) == ["next"]
    assert client.received("values") == [["next"]]


def test_a_remote_notify_pushes_them_to_another_process_s_subscriber(cluster, sbio_live_client):
    _sender, receiver, url, prefix = cluster
    client = sbio_live_client(receiver, NS)
    sub = client.subscribe("live")
    runs = State.runs
    State.live = {"when": datetime.time(8, 0), "ids": {16, 8}, "color": Color.BLUE}
    assert notify_remote(url, "values", prefix=prefix) >= 1
    assert sub.wait_update(timeout=10) == {"when": "08:00:00", "ids": [8, 16], "color": 2}
    assert State.runs > runs


# -- the in-process client and the provider on its own ---------------------------------------


def test_the_in_process_client_sees_what_the_socket_carries(sbio_client):
    client = sbio_client(Values)
    assert client.call("values") == EXPECTED
    assert client.call("point") == {"x": 3, "y": 4, "seen": "2021-01-01"}


def test_a_provider_without_the_process_registry_ignores_it():
    class Kelvin:
        pass

    sbio.register_json_type(Kelvin, lambda k: "K")
    isolated = JSONProvider(types=JSONTypes())
    with pytest.raises(TypeError, match="Kelvin is not JSON serializable"):
        isolated.dumps(Kelvin())
    assert isolated.dumps(VALUES["day"]) == '"2024-05-01"'  # built-ins stay
    assert JSONProvider().dumps(Kelvin()) == '"K"'
