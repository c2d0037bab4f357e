"""Health checks (docs/operations.md): /healthz and /readyz over real HTTP requests."""
import gevent
import pytest
import requests

import sbio
from sbio.tasks import Lifecycle

from test_ops_metrics import config, shop_namespace, wait_for


def get(server, path):
    answer = requests.get(server.url + path, timeout=5)
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Cache-Control"] == "no-store"
    return answer.status_code, answer.json()


def test_a_running_server_is_healthy_and_ready(sbio_server):
    server = sbio_server(shop_namespace())  # on by default, metrics or not
    assert get(server, "/healthz") == (200, {"status": "ok"})
    assert get(server, "/readyz") == (200, {"ready": True, "reason": "ready"})
    head = requests.head(server.url + "/readyz", timeout=5)
    assert head.status_code == 200 and head.content == b""


def test_readyz_is_503_while_a_graceful_stop_drains(sbio_server):
    server = sbio_server(shop_namespace(), config=config(health__drain_time=120))
    stopper = gevent.spawn(server.stop)
    try:
        # count-based: poll until the stop has begun (the listener still accepts meanwhile)
        _, body = wait_for(lambda: (lambda answer: answer[0] == 503 and answer)(
            get(server, "/readyz")), what="/readyz at 503")
        assert body == {"ready": False, "reason": "stopping: the server is shutting down"}
        assert get(server, "/healthz") == (200, {"status": "ok"})  # the process still serves
        assert server.stopping and not stopper.dead
    finally:
        server.stop()  # a second stop() (a second SIGTERM) ends the drain at once
        stopper.join(30)
    assert stopper.dead and not server.started
    assert server.ops.readiness() == (False, "not started")


def test_a_socketio_handshake_while_stopping_is_refused_with_503(sbio_server):
    """During the drain the listener still accepts (a keep-alive connection, a
    balancer that has not noticed yet): a new session would be closed at once,
    so its handshake is refused and the client retries elsewhere or later;
    requests of an existing session (``sid=``) still reach Engine.IO."""
    server = sbio_server(shop_namespace(), config=config(health__drain_time=120))
    polling = server.url + "/socket.io/?EIO=4&transport=polling"
    session = requests.get(polling, timeout=5)
    assert session.status_code == 200 and session.text.startswith("0{")
    sid = session.text.split('"sid":"', 1)[1].split('"', 1)[0]
    stopper = gevent.spawn(server.stop)
    try:
        wait_for(lambda: server.stopping, what="the stop to begin")
        refused = requests.get(polling, timeout=5)
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] == "1"
        assert refused.headers["Connection"] == "close"
        assert refused.text == "server stopping\n"
        # the open session is not refused: Engine.IO answers it (its CONNECT)
        answer = requests.post(f"{polling}&sid={sid}", data="40", timeout=5)
        assert answer.status_code == 200 and answer.text == "OK", answer.text
    finally:
        server.stop()
        stopper.join(30)
    assert stopper.dead


def test_readyz_is_503_until_the_shutdown_hooks_are_done(sbio_server):
    lifecycle = Lifecycle(name="health-test")
    seen = []

    @lifecycle.on_shutdown
    def slow_cleanup():
        # what /readyz would say now, while the server is still stopping
        seen.append(server.ops.readiness())
        seen.append(server.wsgi_app({"REQUEST_METHOD": "GET", "PATH_INFO": "/readyz"},
                                    lambda status, headers, exc_info=None: seen.append(status)))

    server = sbio.Server([shop_namespace()], config=config(), lifecycle=lifecycle).start()
    assert get(server, "/readyz")[0] == 200
    server.stop(timeout=5)
    assert seen[0] == (False, "stopping: the server is shutting down")
    assert seen[1] == "503 Service Unavailable"
    assert b'"ready": false' in b"".join(seen[2])


def test_readyz_is_503_while_redis_is_unreachable(sbio_server):
    pytest.importorskip("redis")
    from test_demo import free_port

    closed = free_port()  # nothing listens there
    server = sbio_server(shop_namespace(), config=config(
        server__message_queue=f"redis://127.0.0.1:{closed}/0",
        cluster__socket_timeout=0.2, cluster__reconnect_max_delay=0.5))
    status, body = get(server, "/readyz")
    assert status == 503
    assert body == {"ready": False, "reason": f"Redis redis://127.0.0.1:{closed}/0 unreachable "
                    "(server.message_queue)"}
    assert get(server, "/healthz") == (200, {"status": "ok"})


def test_readyz_is_200_with_a_reachable_redis(sbio_server, sbio_redis_url):
    server = sbio_server(shop_namespace(), config=config(server__message_queue=sbio_redis_url,
                                                        cluster__prefix="sbio-ops-health"))
    wait_for(lambda: server.cluster.wait_connected(0), what="the Redis subscription")
    assert get(server, "/readyz") == (200, {"ready": True, "reason": "ready"})


def test_a_server_whose_lifecycle_another_server_stopped_is_not_ready(sbio_server):
    lifecycle = Lifecycle(name="shared")
    first = sbio.Server([shop_namespace()], config=config(), lifecycle=lifecycle).start()
    second = sbio.Server([shop_namespace()], config=config(), lifecycle=lifecycle).start()
    try:
        assert get(second, "/readyz")[0] == 200
        first.stop(timeout=5)  # it started the lifecycle: it stops it
        status, body = get(second, "/readyz")
        assert status == 503
        assert body["reason"].startswith("lifecycle stopped")
    finally:
        first.stop(timeout=5)
        second.stop(timeout=5)


def test_health_endpoints_can_be_turned_off(sbio_server):
    server = sbio_server(shop_namespace(), config=config(health__enabled=False))
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 404
    assert requests.get(server.url + "/readyz", timeout=5).status_code == 404


def test_an_app_that_routes_healthz_itself_keeps_it(sbio_server, caplog):
    import flask

    app = flask.Flask("own-health")

    @app.get("/healthz")
    def healthz():
        return {"mine": True}

    with caplog.at_level("WARNING", logger="sbio.ops"):
        server = sbio_server(shop_namespace(), app=app, config=config())
    answer = requests.get(server.url + "/healthz", timeout=5)
    assert answer.status_code == 200 and answer.json() == {"mine": True}
    assert get(server, "/readyz") == (200, {"ready": True, "reason": "ready"})  # still sbio's
    warnings = [r.getMessage() for r in caplog.records if r.name == "sbio.ops"]
    assert warnings == ["the application routes /healthz itself: sbio's health check is not "
                        "served there (set health.enabled = false to turn both off)"], warnings
