"""Live data against a real server: python-socketio clients over a real socket.

The scenarios of ``test_live.py`` run here again with ``env`` giving
:class:`sbio.testing.LiveClient`\\ s of a started server (websocket
transport), plus tests that only make sense on the wire.
"""

import pytest

from sbio import notify
from sbio.testing import LiveClient

from test_live import (  # noqa: F401  (fixtures and scenarios, run again here)
    NS,
    Board,
    Env,
    S,
    _bus_listeners_of,
    _live_subscription_objects,
    spy,
    state,
    test_acl_revocation_drops_the_subscription,
    test_burst_of_notifies_is_coalesced,
    test_delay_true_fires_after_success_only,
    test_disconnect_cleans_every_registry,
    test_failed_first_call_leaves_no_subscription,
    test_failing_rerun_pushes_an_error_and_a_later_rerun_recovers,
    test_first_result_in_ack,
    test_no_push_when_unchanged,
    test_notifies_does_not_fire_on_an_exception,
    test_notifies_during_a_run_coalesce_into_one_more_run,
    test_notify_while_the_first_result_is_computed_is_not_lost,
    test_reruns_never_notify,
    test_resubscribe_with_the_same_id_replaces,
    test_shared_handler_is_computed_once_per_cycle,
    test_slow_rerun_times_out_without_delaying_other_subscribers,
    test_subscribe_rejects_bad_payloads,
    test_subscription_data_is_kept_per_subscription,
    test_template_channels_rerun_only_matching_subscriptions,
    test_unjsonable_rerun_result_pushes_an_internal_error,
    test_unsubscribe_all_ends_every_subscription_of_the_connection_only,
    test_unsubscribe_one_and_many,
    test_unsubscribe_rejects_bad_payloads,
    test_update_on_notify_from_a_greenlet,
    test_update_on_notify_from_another_client,
    test_update_on_notify_from_os_threads,
    wait_for,
)


class ServerEnv(Env):
    """A started server hosting Board on a free port, and LiveClients of it."""

    kind = "server"

    def __init__(self, sbio_server, sbio_live_client, transports=("websocket",)):
        self._make_server = sbio_server
        self._live_client = sbio_live_client
        self.transports = transports
        self.server = None

    def client(self, **kwargs):
        if self.server is None:
            self.server = self._make_server(Board)
        kwargs.setdefault("transports", self.transports)
        return self._live_client(self.server, NS, **kwargs)


@pytest.fixture
def env(sbio_server, sbio_live_client):
    return ServerEnv(sbio_server, sbio_live_client)


def test_updates_over_long_polling(sbio_server, sbio_live_client):
    env = ServerEnv(sbio_server, sbio_live_client, transports=("polling",))
    a, b = env.client(), env.client()
    sub = a.subscribe("top_cards", 10)
    b.call("add_card", "c")
    assert sub.wait_update() == ["a", "b", "c"]
    assert sub.pushes[-1] == {"id": sub.id, "data": ["a", "b", "c"], "trigger": "add_card"}


def test_shared_pushes_are_valid_packets_for_every_subscriber(env):
    """The spliced sbio:update text decodes to the right id and data on each client."""
    clients = [env.client() for _ in range(5)]
    subs = [c.subscribe("top_cards", 10, id=f"id-{i}" if i % 2 else i)
            for i, c in enumerate(clients)]
    S.cards.append({"nested": ["é", 1.5, None, True]})
    notify("cards", trigger="spliced")
    for i, sub in enumerate(subs):
        assert sub.wait_update() == ["a", "b", {"nested": ["é", 1.5, None, True]}]
        assert sub.pushes[-1]["id"] == (f"id-{i}" if i % 2 else i)
        assert sub.pushes[-1]["trigger"] == "spliced"


def test_no_leak_after_1000_connect_subscribe_disconnect_cycles_over_websockets(env):
    keeper = env.client()
    keeper.subscribe("cards")
    server, b = env.server, env.broadcaster
    dispatcher = server.dispatcher(NS)
    assert _bus_listeners_of(server) == 1
    for i in range(1000):
        with LiveClient(server.url, NS) as c:
            c.subscribe("cards")
            c.subscribe("messages", f"room{i}")
            c.subscribe("top_cards", 2)
            if i % 100 == 0:
                notify(["cards", f"room:room{i}"])
    wait_for(lambda: list(dispatcher.instances) == [keeper.sid], "the last disconnects")
    notify("cards")
    env.quiet()
    assert b.registry_sizes() == {"connections": 1, "subscriptions": 1, "channels": 1,
                                  "groups": 0, "pending": 0, "requests": 0, "running": 0}
    assert _live_subscription_objects(server) == 1  # the keeper's
    assert _bus_listeners_of(server) == 1
