"""The namespace static/test/*.test.js (the sbio.js tests) run against.

Started by the node tests as
``python -m sbio run --host 127.0.0.1 --port P --namespaces static/test/namespaces``.
"""
import gevent

from sbio import ConnectionRefused, Namespace, RpcError

try:  # live data lands after the core runtime; the subscription tests skip without it
    from sbio import notifies, subscribes
except ImportError:  # pragma: no cover - only before the live-data commit
    def subscribes(*channels, **kwargs):
        return lambda func: func

    def notifies(*channels, **kwargs):
        return lambda func: func

#: In-memory on purpose: a restarted server starts again from 0, which lets
#: the reconnect test tell a fresh result from a stale one.
COUNTER = {"n": 0}
#: The deck of delta.test.js: a list of cards the test replaces with set_deck.
DECK = {"cards": []}


class JsDemo(Namespace):
    name = "/jsdemo"

    def get_initial_acl(self):
        return ["on_login", "on_echo"]

    def on_connect(self, auth):
        token = auth.get("token") if isinstance(auth, dict) else None
        if token == "bad":
            raise ConnectionRefused("bad token", {"code": 401})
        if token == "false":
            return False
        if token == "crash":
            raise RuntimeError("secret internals that must not reach the client")

    def on_login(self, username, password):
        if password != "secret":
            raise RpcError("bad_credentials", "wrong password")
        self.session["user"] = username
        self.lift_acl_restrictions()
        return {"user": username}

    def on_echo(self, x):
        return x

    def on_whoami(self):
        return self.session.get("user")

    def on_slow(self, seconds):
        gevent.sleep(seconds)
        return "done"

    def on_boom(self):
        raise ValueError("secret internals that must not reach the client")

    @subscribes("counter")
    def on_counter(self):
        return COUNTER["n"]

    @subscribes("counter")
    def on_counter_parity(self):
        return COUNTER["n"] % 2

    @notifies("counter")
    def on_bump(self):
        COUNTER["n"] += 1
        return COUNTER["n"]

    # -- delta pushes (delta.test.js) ------------------------------------------------

    @subscribes("deck")
    def on_deck(self):
        return DECK["cards"]

    @subscribes("deck", shared=True)
    def on_shared_deck(self):
        return DECK["cards"]

    @notifies("deck")
    def on_set_deck(self, cards):
        DECK["cards"] = cards
