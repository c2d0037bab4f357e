"""The live status page (docs/operations.md): its namespace over a real socket, and in Chromium."""
import pytest
import requests

import sbio

from test_ops_metrics import TOKEN, config, shop_namespace, wait_for


def latest(sub):
    samples = (sub.data or {}).get("samples") or []
    return samples[-1] if samples else None


def test_the_status_subscription_follows_connections_and_events(sbio_server, sbio_live_client):
    server = sbio_server(shop_namespace(), config=config(metrics__status_interval=0.1,
                                                        metrics__status_window=10))
    viewer = sbio_live_client(server, "/sbio/status")
    sub = viewer.subscribe("status")
    assert sub.data["interval"] == 0.1 and sub.data["window"] == 10
    # the viewer itself is a connection of /sbio/status
    wait_for(lambda: latest(sub) and latest(sub)["connections"] == {"/shop": 0, "/sbio/status": 1},
             what="a sample with the viewer")

    ann = sbio_live_client(server, "/shop")
    bob = sbio_live_client(server, "/shop")
    wait_for(lambda: latest(sub)["connections"]["/shop"] == 2, what="two connections")
    for n in range(5):
        ann.call("echo", n)
    with pytest.raises(sbio.RpcError):
        ann.call("fail")
    # the status page's own namespace (the viewer's sbio:subscribe, its pushes) is left out
    wait_for(lambda: latest(sub)["totals"] == {"events": 6, "errors": 1},
             what="the events in the totals")
    assert any(sample["events"] > 0 for sample in sub.data["samples"])
    assert any(sample["errors"] > 0 for sample in sub.data["samples"])
    assert all(sample["reruns"] == 0 and sample["subscriptions"] == 0
               for sample in sub.data["samples"])
    bob.disconnect()
    wait_for(lambda: latest(sub)["connections"]["/shop"] == 1, what="bob leaving")
    assert len(sub.data["samples"]) <= 101  # bounded: window / interval (+1)
    assert sub.data["namespaces"] == ["/sbio/status", "/shop"]


def test_the_status_namespace_is_protected_like_metrics(sbio_server, sbio_live_client):
    server = sbio_server(shop_namespace(), config=config(metrics__access="token",
                                                        metrics__token=TOKEN))
    with pytest.raises(sbio.ConnectionRefused, match=r"metrics\.access"):
        sbio_live_client(server, "/sbio/status")
    with pytest.raises(sbio.ConnectionRefused):
        sbio_live_client(server, "/sbio/status", auth={"token": "x" * 32})
    viewer = sbio_live_client(server, "/sbio/status", auth={"token": TOKEN})
    assert "samples" in viewer.subscribe("status").data


def test_loopback_access_refuses_a_forwarded_status_connection(sbio_server, sbio_live_client):
    server = sbio_server(shop_namespace(), config=config())
    with pytest.raises(sbio.ConnectionRefused):
        sbio_live_client(server, "/sbio/status", headers={"X-Forwarded-For": "203.0.113.7"})


def test_an_application_namespace_cannot_take_the_status_pages_name():
    class Mine(sbio.Namespace):
        name = "/sbio/status"

    with pytest.raises(sbio.ConfigurationError, match="status page"):
        sbio.Server([Mine], config=config())
    sbio.Server([Mine], config=config(metrics__enabled=False)).stop()  # free without metrics


def test_stopping_the_server_stops_the_sampler(sbio_server):
    server = sbio_server(shop_namespace(), config=config(metrics__status_interval=0.1))
    sampler = server.ops.sampler
    wait_for(lambda: len(sampler.samples) >= 2, what="two samples")
    greenlet = sampler._greenlet
    server.stop(timeout=5)
    assert greenlet.dead and sampler._greenlet is None


# -- in Chromium -------------------------------------------------------------------------------


def test_the_status_page_in_chromium_follows_clients(tmp_path, static_node_modules,
                                                      sbio_chromium):
    from playwright.sync_api import sync_playwright

    from sbio.testing import LiveClient

    from test_browser import CHROMIUM_ARGS, WAIT_MS
    from test_demo import free_port, start_demo, stop_demo

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_demo(tmp_path, port, SBIO_METRICS__ENABLED="true",
                      SBIO_METRICS__STATUS_INTERVAL="0.3")
    clients, problems, output = [], [], ""
    try:
        assert '<a href="/sbio/status">' in requests.get(url + "/", timeout=5).text
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=sbio_chromium,
                                                 args=CHROMIUM_ARGS, timeout=30_000)
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 800})
                page.set_default_timeout(WAIT_MS)
                page.on("console", lambda msg: msg.type == "error" and problems.append(msg.text))
                page.on("pageerror", lambda exc: problems.append(str(exc)))
                page.goto(url + "/sbio/status")
                count = page.locator('tr[data-namespace="/chat"] td.count')
                badge = page.locator("#conn-status")

                def shows(n):
                    page.wait_for_function(
                        "n => { const cell = document.querySelector("
                        "'tr[data-namespace=\"/chat\"] td.count');"
                        " return cell !== null && cell.textContent === String(n); }", arg=n)

                shows(0)
                assert badge.text_content() == "open"
                first_path = page.locator("#charts svg polyline").first.get_attribute("points")
                clients.append(LiveClient(url, "/chat", timeout=10))
                clients.append(LiveClient(url, "/chat", timeout=10))
                shows(2)
                page.screenshot(path=str(tmp_path / "status-two-clients.png"), full_page=True)
                clients.pop().disconnect()
                shows(1)
                clients.pop().disconnect()
                shows(0)
                page.screenshot(path=str(tmp_path / "status-no-client.png"), full_page=True)
                assert count.count() == 1
                # the charts were redrawn without a reload
                assert page.locator("#charts svg polyline").first.get_attribute("points") \
                    != first_path
                assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
            finally:
                browser.close()
    finally:
        for client in clients:
            client.disconnect()
        output = stop_demo(proc)
    assert not problems, problems
    assert "Traceback" not in output, output
