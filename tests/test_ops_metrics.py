"""Prometheus metrics (docs/operations.md): /metrics after a real session, its values, its bounds.

Every scrape here is a real HTTP request to a real server, parsed with
prometheus_client's own parser; the session is python-socketio's client over
a real socket (or the in-process client for the cardinality bounds).
"""
import sys

import gevent
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

import sbio
from sbio.config import load_sbio_config
from sbio.ops.access import is_loopback_request
from sbio.tasks import DaemonTask, Lifecycle
from sbio.testing import CallError

TOKEN = "a-test-token-of-32-characters-xx"


def config(**overrides):
    values = {"server.host": "127.0.0.1", "server.port": 0, "server.secret_key": "ops-tests",
              "metrics.enabled": True}
    values.update({key.replace("__", "."): value for key, value in overrides.items()})
    return load_sbio_config(overrides=values)


def scrape(server, **kwargs):
    """``{(name, frozenset(labels.items())): value}`` of one scrape of *server*'s /metrics."""
    answer = requests.get(server.url + "/metrics", timeout=10, **kwargs)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def wait_for(predicate, timeout=15.0, what="condition"):
    """Poll *predicate* (count-based waits: no timing assertion) until it is true."""
    with gevent.Timeout(timeout, AssertionError(f"{what} not reached within {timeout}s")):
        while True:
            result = predicate()
            if result:
                return result
            gevent.sleep(0.02)


def shop_namespace():
    stock = {"n": 10}

    class Shop(sbio.Namespace):
        """A shop."""

        name = "/shop"

        def on_connect(self, auth):
            if auth == "refuse":
                raise sbio.ConnectionRefused("closed today")

        def on_echo(self, x):
            return x

        def on_fail(self):
            raise sbio.RpcError("out_of_stock", "none left")

        def on_crash(self):
            raise RuntimeError("boom")

        @sbio.rate_limit(0.001, 1)
        def on_limited(self):
            return "once"

        @sbio.subscribes("stock")
        def on_stock(self):
            return stock["n"]

        @sbio.notifies("stock")
        def on_buy(self):
            stock["n"] -= 1
            return stock["n"]

    return Shop


def test_a_scripted_session_shows_in_the_counters(sbio_server, sbio_live_client):
    server = sbio_server(shop_namespace(), config=config())
    ann = sbio_live_client(server, "/shop")
    bob = sbio_live_client(server, "/shop")
    with pytest.raises(sbio.ConnectionRefused):
        sbio_live_client(server, "/shop", auth="refuse")

    for x in range(3):
        assert ann.call("echo", x) == x
    assert bob.call("echo", "b") == "b"
    for _ in range(2):
        with pytest.raises(CallError, match="out_of_stock"):
            ann.call("fail")
    with pytest.raises(CallError, match="internal"):
        ann.call("crash")
    with pytest.raises(CallError, match="not_found"):
        ann.call("nosuch")
    with pytest.raises(CallError, match="bad_request"):
        ann.call("sbio:nope")  # sbio's own prefix, not one of its events
    assert ann.call("limited") == "once"
    with pytest.raises(CallError, match="rate_limited"):
        ann.call("limited")

    ann_stock = ann.subscribe("stock")
    bob_stock = bob.subscribe("stock")
    assert ann_stock.data == bob_stock.data == 10
    assert bob.call("buy") == 9
    assert ann_stock.wait_update() == 9
    assert bob_stock.wait_update() == 9
    bob.unsubscribe(bob_stock)
    bob.disconnect()

    samples = wait_for(lambda: (lambda s: value(s, "sbio_connections", namespace="/shop") == 1
                                and s)(scrape(server)), what="bob's disconnect in the metrics")
    shop = {"namespace": "/shop"}
    assert value(samples, "sbio_connects_total", **shop) == 2
    assert value(samples, "sbio_connects_refused_total", **shop) == 1
    reasons = {dict(labels)["reason"]: count for (name, labels), count in samples.items()
               if name == "sbio_disconnects_total" and dict(labels)["namespace"] == "/shop"}
    # python-socketio's client closes its transport as it leaves: either reason is
    # right (python-socketio 5.16, the floor, names that close "server disconnect")
    assert sum(reasons.values()) == 1
    assert set(reasons) <= {"client disconnect", "transport close", "server disconnect"}
    events = {(labels["event"], labels["code"]): count
              for (name, label_set), count in samples.items()
              if name == "sbio_events_total"
              and (labels := dict(label_set))["namespace"] == "/shop"}
    assert events == {
        ("echo", "ok"): 4, ("fail", "out_of_stock"): 2, ("crash", "internal"): 1,
        ("unknown", "not_found"): 1, ("unknown", "bad_request"): 1,
        ("limited", "ok"): 1, ("limited", "rate_limited"): 1,
        ("sbio:subscribe", "ok"): 2, ("buy", "ok"): 1, ("sbio:unsubscribe", "ok"): 1,
    }
    # the histogram counts what ran (the rate_limited call never reached dispatch)
    assert value(samples, "sbio_handler_seconds_count", event="echo", **shop) == 4
    assert value(samples, "sbio_handler_seconds_bucket", event="echo", le="+Inf", **shop) == 4
    assert value(samples, "sbio_handler_seconds_count", event="limited", **shop) == 1
    assert value(samples, "sbio_handler_seconds_sum", event="echo", **shop) > 0
    buckets = [value(samples, "sbio_handler_seconds_bucket", event="fail", le=le, **shop)
               for le in ("0.001", "0.01", "0.1", "1.0", "10.0", "+Inf")]
    assert buckets == sorted(buckets) and buckets[-1] == 2  # cumulative
    assert value(samples, "sbio_subscriptions", **shop) == 1
    assert value(samples, "sbio_broadcaster_notifications_total", **shop) == 1
    assert value(samples, "sbio_broadcaster_reruns_total", **shop) == 2
    assert value(samples, "sbio_broadcaster_pushes_total", **shop) == 2
    assert value(samples, "sbio_broadcaster_coalesced_total", **shop) == 0
    assert value(samples, "sbio_broadcaster_queue_depth", **shop) == 0
    assert value(samples, "sbio_outbound_queue_bytes") == 0
    assert value(samples, "sbio_info", version=sbio.__version__) == 1
    assert value(samples, "process_cpu_seconds_total") is not None  # the process collector
    assert value(samples, "sbio_redis_up") is None  # no message queue
    assert value(samples, "sbio_bus_published_total") is None


def test_two_servers_of_one_process_keep_their_own_registries(sbio_server, sbio_live_client):
    import prometheus_client

    first = sbio_server(shop_namespace(), config=config())
    second = sbio_server(shop_namespace(), config=config())
    assert first.ops.metrics.registry is not second.ops.metrics.registry
    client = sbio_live_client(first, "/shop")
    client.call("echo", 1)
    one, two = scrape(first), scrape(second)
    key = {"namespace": "/shop", "event": "echo", "code": "ok"}
    assert value(one, "sbio_events_total", **key) == 1
    assert value(two, "sbio_events_total", **key) is None
    assert value(one, "sbio_connections", namespace="/shop") == 1
    assert value(two, "sbio_connections", namespace="/shop") == 0
    # nothing of sbio's lands in prometheus_client's process-wide registry
    assert prometheus_client.REGISTRY.get_sample_value("sbio_connections",
                                                       {"namespace": "/shop"}) is None


@pytest.fixture
def cardinality_config():
    return config(metrics__max_codes=3)


def test_unknown_events_and_many_codes_keep_the_labels_bounded(cardinality_config):
    class Codes(sbio.Namespace):
        name = "/codes"

        def on_code(self, n: int):
            raise sbio.RpcError(f"code_{n}", "an application error code")

    server = sbio.Server([Codes], config=cardinality_config)
    try:
        from sbio.testing import LocalClient

        client = LocalClient(server, "/codes")
        for n in range(50):
            with pytest.raises(CallError):
                client.call(f"random_{n}")
        for n in range(10):
            with pytest.raises(CallError):
                client.call("code", n)
        body, _ = server.ops.metrics.exposition()
        events = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == "sbio_events_total":
                    events[(sample.labels["event"], sample.labels["code"])] = sample.value
        assert events == {("unknown", "not_found"): 50, ("code", "code_0"): 1,
                          ("code", "code_1"): 1, ("code", "code_2"): 1, ("code", "other"): 7}
        assert sorted(server.ops.metrics.stats["/codes"].cells) == ["code", "unknown"]
        client.disconnect()
    finally:
        server.stop()


def test_daemon_tasks_count_their_runs_by_outcome(sbio_server):
    lifecycle = Lifecycle(name="metrics-test")
    calls = []

    def work():
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("the second run fails")
        if len(calls) >= 3:
            task.stopped.wait()  # stays in the third call until the task stops

    task = DaemonTask(work, interval=0.01, name="metrics-test.work", lifecycle=lifecycle)
    server = sbio.Server([shop_namespace()], config=config(), lifecycle=lifecycle).start()
    try:
        wait_for(lambda: len(calls) >= 3, what="the third run")
        samples = scrape(server)
        assert value(samples, "sbio_daemon_task_runs_total", task="metrics-test.work",
                     outcome="ok") == 1
        assert value(samples, "sbio_daemon_task_runs_total", task="metrics-test.work",
                     outcome="error") == 1
    finally:
        server.stop(timeout=5)
    assert task.runs == {"ok": 2, "error": 1}


def test_a_coalesced_rerun_is_counted(sbio_server, sbio_live_client):
    release = gevent.event.Event()
    runs = []

    class Slow(sbio.Namespace):
        name = "/slow"

        @sbio.subscribes("slow")
        def on_value(self):
            runs.append(1)
            if len(runs) == 2:  # the first re-run waits: later notifications coalesce
                release.wait(10)
            return len(runs)

    server = sbio_server(Slow, config=config())
    client = sbio_live_client(server, "/slow")
    sub = client.subscribe("value")
    sbio.notify("slow")
    wait_for(lambda: len(runs) == 2, what="the first re-run")
    # Two notifications before the broadcaster's next cycle: one run for both
    # (one run saved: coalesced), and the subscription runs once more after
    # the run in progress.
    broadcaster = server.live.broadcaster("/slow")
    sbio.notify("slow")
    sbio.notify("slow")
    wait_for(lambda: broadcaster.metrics["coalesced"] == 1, what="the coalesced run")
    release.set()
    assert sub.wait_update() == 2
    assert sub.wait_update() == 3
    samples = scrape(server)
    assert value(samples, "sbio_broadcaster_coalesced_total", namespace="/slow") == 1
    assert value(samples, "sbio_broadcaster_reruns_total", namespace="/slow") == 2


def test_with_a_message_queue_redis_and_the_bus_are_reported(sbio_server, sbio_live_client,
                                                             sbio_redis_url):
    server = sbio_server(shop_namespace(), config=config(server__message_queue=sbio_redis_url,
                                                        cluster__prefix="sbio-ops-metrics"))
    client = sbio_live_client(server, "/shop")
    client.call("buy")
    wait_for(lambda: server.cluster.bus.metrics["published"] == 1, what="the publish")
    samples = scrape(server)
    assert value(samples, "sbio_redis_up") == 1
    assert value(samples, "sbio_bus_published_total") == 1
    assert value(samples, "sbio_bus_received_total") == 0
    assert value(samples, "sbio_redis_outages_total") == 0


def test_redis_down_is_reported(sbio_server):
    pytest.importorskip("redis")
    from test_demo import free_port

    server = sbio_server(shop_namespace(), config=config(
        server__message_queue=f"redis://127.0.0.1:{free_port()}/0",
        cluster__socket_timeout=0.2, cluster__reconnect_max_delay=0.5))
    samples = scrape(server)
    assert value(samples, "sbio_redis_up") == 0


# -- who may read /metrics ------------------------------------------------------------------


def test_loopback_access_refuses_what_a_proxy_forwards(sbio_server):
    server = sbio_server(shop_namespace(), config=config())
    assert requests.get(server.url + "/metrics", timeout=5).status_code == 200
    for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
        answer = requests.get(server.url + "/metrics", headers={header: "203.0.113.7"},
                              timeout=5)
        assert answer.status_code == 403, header
        assert "metrics.access" in answer.text
        answer = requests.get(server.url + "/sbio/status", headers={header: "203.0.113.7"},
                              timeout=5)
        assert answer.status_code == 403, header
    assert requests.post(server.url + "/metrics", timeout=5).status_code == 405


@pytest.mark.parametrize(("address", "local"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.0.0.5", False), ("192.168.1.1", False), ("::ffff:10.0.0.1", False), ("2001:db8::1", False),
    ("", False), ("localhost", False), ("unix:/tmp/socket", False),
])
def test_what_counts_as_a_loopback_request(address, local):
    assert is_loopback_request({"REMOTE_ADDR": address}) is local


def test_token_access(sbio_server):
    server = sbio_server(shop_namespace(), config=config(metrics__access="token",
                                                        metrics__token=TOKEN))
    url = server.url + "/metrics"
    missing = requests.get(url, timeout=5)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = requests.get(url, headers={"Authorization": "Bearer " + "x" * 32}, timeout=5)
    assert wrong.status_code == 401
    assert requests.get(url + "?token=" + TOKEN, timeout=5).status_code == 401  # header only
    good = scrape(server, headers={"Authorization": "Bearer " + TOKEN})
    assert value(good, "sbio_connections", namespace="/shop") == 0
    # from anywhere: a forwarded request with the token is served
    assert requests.get(url, headers={"Authorization": "Bearer " + TOKEN,
                                      "X-Forwarded-For": "203.0.113.7"},
                        timeout=5).status_code == 200
    # the status page also takes ?token= (a browser cannot add the header to a link)
    assert requests.get(server.url + "/sbio/status", timeout=5).status_code == 401
    page = requests.get(server.url + "/sbio/status?token=" + TOKEN, timeout=5)
    assert page.status_code == 200 and "sbio status" in page.text


@pytest.mark.parametrize("token", ["", "short"])
def test_token_access_needs_a_real_token(token):
    with pytest.raises(sbio.ConfigurationError, match=r"metrics\.token"):
        sbio.Server([], config=config(metrics__access="token", metrics__token=token))


def test_metrics_are_off_by_default(sbio_server):
    server = sbio_server(shop_namespace())  # the default configuration
    assert server.ops.metrics is None
    assert requests.get(server.url + "/metrics", timeout=5).status_code == 404
    assert requests.get(server.url + "/sbio/status", timeout=5).status_code == 404
    assert "/sbio/status" not in server.sio.dispatchers
    assert "/sbio/status" not in requests.get(server.url + "/", timeout=5).text
    dispatcher = server.dispatcher("/shop")
    assert "handle_event" not in vars(dispatcher)  # nothing wrapped: no per-event cost


def test_the_index_page_links_the_status_page(sbio_server):
    server = sbio_server(shop_namespace(), config=config())
    index = requests.get(server.url + "/", timeout=5).text
    assert '<a href="/sbio/status">' in index
    assert "<code>/sbio/status</code>" not in index  # an internal namespace, not listed


def test_without_prometheus_client_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(sbio.ConfigurationError, match=r"sbio\[metrics\]"):
        sbio.Server([], config=config())
