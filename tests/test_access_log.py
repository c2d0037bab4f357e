"""The access log (logger sbio.access) over a real socket; [logging] levels; the secret_key hint."""
import logging
import re

import gevent
import pytest

from sbio import Namespace
from sbio.cli import _configure_logging
from sbio.config import ConfigurationError, load_sbio_config
from sbio.server import Server

NS = "/acc"


class Acc(Namespace):
    name = NS

    def on_echo(self, value):
        return value

    def on_login(self, user, password):
        return user


def _config(**overrides):
    values = {"server.host": "127.0.0.1", "server.port": 0, "server.secret_key": "access-tests"}
    values.update({key.replace("__", "."): value for key, value in overrides.items()})
    return load_sbio_config(overrides=values)


def _lines(caplog, level=logging.INFO):
    return [r.getMessage() for r in caplog.records if r.name == "sbio.access"
            and r.levelno >= level]


def _wait_for(predicate, timeout=10):
    with gevent.Timeout(timeout, AssertionError(f"not true within {timeout} s")):
        while not predicate():
            gevent.sleep(0.01)


def test_one_line_per_connection_at_info(sbio_server, sbio_live_client, caplog):
    caplog.set_level(logging.INFO, logger="sbio.access")
    server = sbio_server(Acc)
    client = sbio_live_client(server, NS)
    sid = client.sid
    assert client.call("echo", 1) == 1
    client.disconnect()
    _wait_for(lambda: len(_lines(caplog)) >= 2)
    connect, disconnect = _lines(caplog)
    assert connect == f"connect sid={sid} namespace={NS} remote=127.0.0.1"
    assert re.fullmatch(rf'disconnect sid={re.escape(sid)} namespace={NS} remote=127\.0\.0\.1 '
                        r'reason="[a-z ]+" duration=\d+\.\ds', disconnect), disconnect


def test_events_are_logged_only_when_asked(sbio_server, sbio_live_client, caplog):
    caplog.set_level(logging.INFO, logger="sbio.access")
    quiet = sbio_server(Acc)
    sbio_live_client(quiet, NS).call("echo", 1)
    assert not [line for line in _lines(caplog) if line.startswith("event")]

    server = sbio_server(Acc, config=_config(logging__access="events"))
    client = sbio_live_client(server, NS)
    client.call("echo", "x")
    client.call_envelope("nope")
    client.call_envelope("login", "ann")  # missing an argument
    client.call_envelope("bad name!")
    _wait_for(lambda: len([x for x in _lines(caplog) if x.startswith("event")]) >= 4)
    events = [line for line in _lines(caplog) if line.startswith("event")]
    pattern = rf"event sid={re.escape(client.sid)} namespace={NS} event=(.+?) code=(\w+) ms=\d+\.\d"
    parsed = [re.fullmatch(pattern, line).groups() for line in events]
    assert parsed == [("echo", "ok"), ("nope", "not_found"), ("login", "bad_request"),
                      ("'bad name!'", "not_found")]  # any name may have a handler (@sbio.event)


def test_refused_calls_are_logged_as_events(sbio_server, sbio_live_client, caplog):
    caplog.set_level(logging.INFO, logger="sbio.access")
    server = sbio_server(Acc, config=_config(logging__access="events", server__rate_limit=0.001,
                                             server__rate_limit_burst=1))
    client = sbio_live_client(server, NS)
    client.call("echo", 1)
    assert client.call_envelope("echo", 2)["error"]["code"] == "rate_limited"
    _wait_for(lambda: any("code=rate_limited" in line for line in _lines(caplog)))


def test_access_off_logs_nothing(sbio_server, sbio_live_client, caplog):
    caplog.set_level(logging.INFO, logger="sbio.access")
    server = sbio_server(Acc, config=_config(logging__access="off"))
    client = sbio_live_client(server, NS)
    client.call("echo", 1)
    client.disconnect()
    server.stop(timeout=5)
    assert _lines(caplog, logging.DEBUG) == []


def test_the_access_lines_are_bounded_and_the_rest_counted(sbio_server, sbio_live_client,
                                                           caplog):
    caplog.set_level(logging.INFO, logger="sbio.access")
    # one line, then a token every 1000 s: everything after the first is counted
    server = sbio_server(Acc, config=_config(logging__access="events",
                                             logging__access_rate=0.001))
    client = sbio_live_client(server, NS)
    for i in range(20):
        client.call("echo", i)
    client.disconnect()
    server.stop(timeout=5)
    lines = _lines(caplog)
    assert lines[0].startswith("connect ")
    warnings = [line for line in lines if "access_rate" in line]
    assert len(warnings) == 2, lines  # once when it starts counting, once with the count
    assert warnings[0].startswith("more than 0.001 access lines a second")
    # the count: 20 events and the disconnect
    assert warnings[1].startswith("21 access line(s) not logged"), warnings
    assert len(lines) == 3


def test_access_and_rate_are_validated():
    with pytest.raises(ConfigurationError) as excinfo:
        _config(logging__access="everything", logging__access_rate=-1)
    assert {key for key, _ in excinfo.value.errors} == {"logging.access", "logging.access_rate"}


# -- [logging] levels --------------------------------------------------------------------------


def test_level_names_in_any_case_and_per_logger_levels_from_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "development.ini").write_text(
        "[logging]\nlevel = debug\n[[levels]]\nsbio.live = Warning\nwerkzeug = error\n")
    monkeypatch.setenv("SBIO_LOGGING__LEVELS__GEVENT", "info")
    config = load_sbio_config()
    assert config["logging"]["level"] == "DEBUG"
    assert dict(config["logging"]["levels"]) == {"sbio.live": "WARNING", "werkzeug": "ERROR",
                                                 "gevent": "INFO"}


def test_a_bad_level_names_the_logger():
    with pytest.raises(ConfigurationError, match=r"logging\.levels\.sbio\.live: the value "
                                                 r'"loud" is unacceptable \(expected a level'):
        load_sbio_config(overrides={"logging.levels": {"sbio.live": "loud"}})


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    names = ["sbio.live", "sbio.access", "sbio.access.http", "sbio.socketio", "sbio.engineio",
             "geventwebsocket.handler"]
    saved = (root.level, list(root.handlers), {n: logging.getLogger(n).level for n in names})
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


def test_configure_logging_sets_the_levels_and_keeps_access_lines(restore_logging):
    config = load_sbio_config(overrides={"logging.level": "warning",
                                         "logging.levels": {"sbio.live": "debug"}})
    _configure_logging(config["logging"], debug=False)
    assert logging.getLogger("sbio.live").level == logging.DEBUG
    assert logging.getLogger("sbio.access.http").level == logging.WARNING  # per request: noisy
    assert logging.getLogger("sbio.access").level == logging.NOTSET  # follows the root level
    config = load_sbio_config(overrides={"logging.levels": {"sbio.access.http": "debug"}})
    _configure_logging(config["logging"], debug=False)
    assert logging.getLogger("sbio.access.http").level == logging.DEBUG  # [[levels]] wins


def test_the_secret_key_warning_says_how_to_set_it(caplog):
    caplog.set_level(logging.WARNING, logger="sbio.server")
    Server(config=load_sbio_config(overrides={"server.secret_key": ""})).app  # noqa: B018
    (warning,) = [r.getMessage() for r in caplog.records if "secret_key" in r.getMessage()]
    assert "[server] secret_key" in warning and "SBIO_SERVER__SECRET_KEY" in warning
