"""Flask contexts around the code sbio runs, over a real socket; mounting any WSGI app.

Handlers, on_connect, on_disconnect, live-data re-runs and spawned jobs run
in a request context made from the connection's handshake (flask.request,
flask.session, flask.g, Flask-Login's current_user); hooks, DaemonTasks and
Callers in the app context of the server's Flask app.
"""
import itertools

import flask
import gevent
import gevent.event
import pytest
import requests
from flask import Flask, current_app, g, request
from flask_login import LoginManager, UserMixin, current_user, login_user

from sbio import Namespace, notify, subscribes
from sbio.server import Server
from sbio.tasks import Caller, DaemonTask
from sbio.testing import LiveClient

TRANSPORTS = [("websocket",), ("polling",)]

#: what the namespaces below saw, per test (cleared by the autouse fixture)
seen = {}


@pytest.fixture(autouse=True)
def _clear_seen():
    seen.clear()
    yield
    seen.clear()


def _wait_for(predicate, timeout=10):
    with gevent.Timeout(timeout, AssertionError(f"not true within {timeout} s: {predicate}")):
        while not predicate():
            gevent.sleep(0.01)


# -- a Flask app with Flask-Login -------------------------------------------------------------


class User(UserMixin):
    def __init__(self, user_id):
        self.id = user_id


def login_app():
    app = Flask("login-tests")
    app.secret_key = "flask-context-tests"
    manager = LoginManager(app)
    users = {"ann": User("ann"), "bob": User("bob")}
    loaded = []

    @manager.user_loader
    def load_user(user_id):
        loaded.append(user_id)
        return users.get(user_id)

    @app.route("/login/<name>", methods=["POST"])
    def login(name):
        login_user(users[name])
        flask.session["color"] = "blue"
        return "logged in"

    app.loaded_users = loaded
    return app


def whoami():
    """What a handler sees of Flask: the same in every kind of code."""
    return {
        "user": current_user.get_id(),
        "authenticated": bool(current_user.is_authenticated),
        "color": flask.session.get("color"),
        "probe": request.headers.get("X-Probe"),
        "cookies": sorted(request.cookies),
        "remote": request.remote_addr,
        "app": current_app.name,
    }


class Who(Namespace):
    name = "/who"

    def on_connect(self, auth):
        seen["connect"] = whoami()
        seen["connect_sid_ok"] = request.sid == self.sid and request.namespace == self.namespace

    def on_whoami(self):
        return dict(whoami(), sid_ok=request.sid == self.sid)

    def on_remember(self, value):
        flask.session["remembered"] = value

    def on_recall(self):
        return flask.session.get("remembered")

    def on_body(self):
        return request.get_data(as_text=True)

    def on_disconnect(self, reason):
        seen["disconnect"] = whoami()


def _logged_in_cookie(server, name="ann"):
    http = requests.Session()
    answer = http.post(server.url + f"/login/{name}", timeout=5)
    assert answer.status_code == 200, answer.text
    return "; ".join(f"{key}={value}" for key, value in http.cookies.items())


@pytest.mark.parametrize("transports", TRANSPORTS, ids=lambda t: t[0])
def test_current_user_of_a_flask_login_session_in_on_connect_and_handlers(sbio_server,
                                                                           transports):
    app = login_app()
    server = sbio_server(Who, app=app)
    cookie = _logged_in_cookie(server)
    client = LiveClient(server.url, "/who", transports=transports,
                        headers={"Cookie": cookie, "X-Probe": "p1"})
    try:
        expected = {"user": "ann", "authenticated": True, "color": "blue", "probe": "p1",
                    "cookies": ["session"], "remote": "127.0.0.1", "app": "login-tests"}
        assert seen["connect"] == expected
        assert seen["connect_sid_ok"] is True
        assert client.call("whoami") == dict(expected, sid_ok=True)
    finally:
        client.disconnect()
    _wait_for(lambda: "disconnect" in seen)
    assert seen["disconnect"] == expected


def test_without_the_session_cookie_current_user_is_anonymous(sbio_server):
    server = sbio_server(Who, app=login_app())
    _logged_in_cookie(server)  # someone else logged in
    client = LiveClient(server.url, "/who")
    try:
        answer = client.call("whoami")
    finally:
        client.disconnect()
    assert answer["user"] is None and answer["authenticated"] is False
    assert answer["color"] is None and answer["cookies"] == []


def test_two_users_on_two_connections_each_see_their_own(sbio_server):
    server = sbio_server(Who, app=login_app())
    ann = LiveClient(server.url, "/who", headers={"Cookie": _logged_in_cookie(server, "ann")})
    bob = LiveClient(server.url, "/who", headers={"Cookie": _logged_in_cookie(server, "bob")})
    try:
        assert [ann.call("whoami")["user"], bob.call("whoami")["user"],
                ann.call("whoami")["user"]] == ["ann", "bob", "ann"]
    finally:
        ann.disconnect()
        bob.disconnect()


def test_the_session_lasts_for_the_connection_and_is_not_shared(sbio_server):
    server = sbio_server(Who, app=login_app())
    cookie = _logged_in_cookie(server)
    first = LiveClient(server.url, "/who", headers={"Cookie": cookie})
    second = LiveClient(server.url, "/who", headers={"Cookie": cookie})
    try:
        first.call("remember", "x")
        assert first.call("recall") == "x"   # kept from one call to the next
        assert second.call("recall") is None  # never written back to the cookie
    finally:
        first.disconnect()
        second.disconnect()


def test_the_handshake_body_is_never_read(sbio_server):
    # request.get_data() must not read the socket the handshake came on
    server = sbio_server(Who, app=login_app())
    for transports in TRANSPORTS:
        client = LiveClient(server.url, "/who", transports=transports)
        try:
            assert client.call("body", timeout=5) == ""
            assert client.call("whoami")["remote"] == "127.0.0.1"  # still answering
        finally:
            client.disconnect()


# -- g, teardown, concurrency --------------------------------------------------------------------


class PerCall(Namespace):
    name = "/percall"

    def on_mark(self, value):
        previous = g.get("mark")
        g.mark = value
        return previous

    def on_slow(self, value):
        g.mark = value
        gevent.sleep(0.2)  # another call of this connection runs meanwhile
        return g.mark

    def on_fail(self):
        raise RuntimeError("boom")

    def on_after(self):
        flask.after_this_request(lambda response: response)  # never runs: there is no response

    def on_flash(self, message):
        if message:
            flask.flash(message)
        return flask.get_flashed_messages()


def teardown_app():
    app = Flask("teardown-tests")
    app.secret_key = "flask-context-tests"
    app.torn_down = []

    @app.teardown_request
    def record(exc):
        app.torn_down.append(type(exc).__name__ if exc is not None else None)

    return app


def test_each_call_has_its_own_g_and_teardown_runs_after_it(sbio_server, sbio_live_client):
    app = teardown_app()
    server = sbio_server(PerCall, app=app)
    client = sbio_live_client(server, "/percall")
    baseline = len(app.torn_down)  # on_connect's
    assert client.call("mark", 1) is None
    assert client.call("mark", 2) is None  # g does not outlive a call
    assert app.torn_down[baseline:] == [None, None]
    assert client.call_envelope("fail")["error"]["code"] == "internal"
    assert app.torn_down[-1] == "RuntimeError"  # the exception reaches teardown


def test_what_one_call_reads_of_flashed_messages_is_not_seen_by_the_next(sbio_server,
                                                                         sbio_live_client):
    server = sbio_server(PerCall, app=teardown_app())
    client = sbio_live_client(server, "/percall")
    assert client.call("flash", "hi") == ["hi"]
    assert client.call("flash", None) == []
    assert [client.call("mark", i) for i in range(3)] == [None] * 3


def test_after_this_request_does_not_pile_up_on_a_connection(sbio_client):
    client = sbio_client(PerCall)
    for _ in range(10):
        client.call("after")
    client.call("mark", 1)
    # the contexts kept for the next calls carry nothing of those calls
    contexts = client.instance._sbio_request_ctx
    assert contexts.idle and all(ctx._after_request_functions == [] for ctx in contexts.idle)


def test_concurrent_calls_of_one_connection_have_separate_contexts(sbio_server,
                                                                   sbio_live_client):
    server = sbio_server(PerCall, app=teardown_app())
    client = sbio_live_client(server, "/percall")
    results = {}
    jobs = [gevent.spawn(lambda v=v: results.__setitem__(v, client.call("slow", v)))
            for v in range(4)]
    gevent.joinall(jobs, timeout=10, raise_error=True)
    assert results == {v: v for v in range(4)}


# -- the default app, re-runs, spawned jobs, opting out --------------------------------------


_counter = itertools.count()


class Live(Namespace):
    name = "/live"

    @subscribes("probe")
    def on_probe(self):
        return {"n": next(_counter), "probe": request.headers.get("X-Probe"),
                "app": current_app.name, "rerun": self.subscription is not None}

    def on_background(self):
        def job():
            seen["job"] = (request.headers.get("X-Probe"), current_app.name)
        self.spawn(job)


class Bare(Namespace):
    name = "/bare"
    flask_context = False

    def on_check(self):
        return [flask.has_app_context(), flask.has_request_context()]


def test_default_app_contexts_in_reruns_and_spawned_jobs(sbio_server, sbio_live_client):
    server = sbio_server(Live)  # no app: sbio's default Flask app
    assert server.flask_app is server.app
    client = sbio_live_client(server, "/live", headers={"X-Probe": "p2"})
    sub = client.subscribe("probe")
    first = sub.data
    assert (first["probe"], first["app"], first["rerun"]) == ("p2", "sbio", True)
    notify("probe")  # from outside any context: the broadcaster re-runs it
    update = sub.wait_update(timeout=10)
    assert update["n"] > first["n"]
    assert (update["probe"], update["app"], update["rerun"]) == ("p2", "sbio", True)
    client.call("background")
    _wait_for(lambda: "job" in seen)
    assert seen["job"] == ("p2", "sbio")


def test_a_namespace_can_opt_out_of_flask_contexts(sbio_server, sbio_live_client):
    server = sbio_server(Bare, Live)
    assert sbio_live_client(server, "/bare").call("check") == [False, False]


# -- lifecycle: hooks, tasks, callers ----------------------------------------------------------


def test_hooks_tasks_and_callers_run_in_the_app_context(sbio_server, sbio_lifecycle):
    app = Flask("lifecycle-tests")
    ran = gevent.event.Event()

    def where(kind):
        seen.setdefault(kind, set()).add(current_app.name if flask.has_app_context() else None)

    sbio_lifecycle.on_startup(lambda: where("startup"))
    sbio_lifecycle.on_shutdown(lambda: where("shutdown"))
    DaemonTask(lambda: (where("task"), ran.set()), interval=60, lifecycle=sbio_lifecycle)
    caller = Caller(lambda value, key: where(f"caller-{key}-{value}"), lifecycle=sbio_lifecycle)
    server = sbio_server(app=app)
    caller.defer(1, key="k")
    assert ran.wait(10)
    assert caller.join(10)
    server.stop(timeout=5)
    assert seen == {"startup": {"lifecycle-tests"}, "task": {"lifecycle-tests"},
                    "caller-k-1": {"lifecycle-tests"}, "shutdown": {"lifecycle-tests"}}
    sbio_lifecycle.start()  # without a server: no context
    try:
        assert sbio_lifecycle.in_context(flask.has_app_context) is False
    finally:
        sbio_lifecycle.stop()


# -- mounting any WSGI application ----------------------------------------------------------------


def plain_wsgi(environ, start_response):
    body = f"plain {environ['PATH_INFO']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


class Context(Namespace):
    name = "/ctx"

    def on_where(self):
        return {"app": current_app.name, "probe": request.headers.get("X-Probe"),
                "path": request.path}

    def on_url(self):
        return flask.url_for("sbio_client.asset", name="sbio.js")


def test_a_plain_wsgi_app_is_mounted_beside_the_socket(sbio_server, sbio_live_client):
    server = sbio_server(Context, app=plain_wsgi)
    assert server.app is plain_wsgi
    assert isinstance(server.flask_app, Flask) and server.flask_app.secret_key
    answer = requests.get(server.url + "/anything/here", timeout=5)
    assert (answer.status_code, answer.text) == (200, "plain /anything/here")
    assert answer.headers["X-Content-Type-Options"] == "nosniff"  # sbio's headers still added
    client_js = requests.get(server.url + "/sbio/sbio.js", timeout=5)
    assert client_js.status_code == 200  # sbio's own Flask app serves the browser client
    assert client_js.headers["Content-Type"].startswith("text/javascript")
    client = sbio_live_client(server, "/ctx", headers={"X-Probe": "p4"})
    assert client.call("where") == {"app": "sbio", "probe": "p4", "path": "/socket.io/"}
    assert [client.call("url"), client.call("url")] == ["/sbio/sbio.js"] * 2


def test_blueprints_beside_a_plain_wsgi_app(sbio_config):
    pages = flask.Blueprint("pages", __name__, url_prefix="/pages")

    @pages.route("/hello")
    def hello():
        return "hello from a blueprint"

    server = Server([Context], config=sbio_config, app=plain_wsgi, blueprints=[pages]).start()
    try:
        assert requests.get(server.url + "/pages/hello", timeout=5).text == \
            "hello from a blueprint"
        assert requests.get(server.url + "/pages/other", timeout=5).text == "plain /pages/other"
    finally:
        server.stop(timeout=5)


@pytest.mark.parametrize("app", [42, "app", Flask, object()], ids=repr)
def test_an_app_that_is_not_a_wsgi_application_is_a_type_error(app):
    with pytest.raises(TypeError, match=r"Server\(app=...\) takes a Flask app or a WSGI"):
        Server(app=app)


def test_the_in_process_client_runs_handlers_in_the_contexts_too(sbio_client):
    client = sbio_client(Context)
    assert client.call("where") == {"app": "sbio", "probe": None, "path": "/socket.io/"}
    assert [client.call("url"), client.call("url")] == ["/sbio/sbio.js"] * 2
