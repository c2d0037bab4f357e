"""The namespace tests/test_client.py runs ``sbio run`` with (sbio.Client, the CLI client).

In memory on purpose: a restarted server counts from 0 again, which tells a
fresh result after a reconnect from a stale one.
"""
import gevent

from sbio import ConnectionRefused, Namespace, RpcError, notifies, subscribes

COUNTER = {"n": 0}


class ClientDemo(Namespace):
    name = "/demo"

    def get_initial_acl(self):
        return ["on_login", "on_echo", "on_counter", "on_bump", "on_slow"]

    def on_connect(self, auth):
        token = auth.get("token") if isinstance(auth, dict) else None
        if token == "bad":
            raise ConnectionRefused("bad token", {"code": 401})
        if token == "greet":
            self.emit("welcome", "hello")

    def on_login(self, username, password):
        if password != "secret":
            raise RpcError("bad_credentials", "wrong password")
        self.session["user"] = username
        self.lift_acl_restrictions()
        return {"user": username}

    def on_whoami(self):
        return self.session.get("user")

    def on_echo(self, *values):
        return list(values)

    def on_slow(self, seconds):
        gevent.sleep(seconds)
        return "done"

    def on_crash(self):
        raise ValueError("internals that must not reach the client")

    @subscribes("counter")
    def on_counter(self):
        return COUNTER["n"]

    @subscribes("counter")
    def on_fragile(self):
        if COUNTER["n"] == 2:
            raise RpcError("two", "two is not allowed")
        return COUNTER["n"]

    @subscribes("counter")
    def on_secret_counter(self):
        return {"user": self.session.get("user"), "n": COUNTER["n"]}

    @notifies("counter")
    def on_bump(self, times=1):
        COUNTER["n"] += times
        return COUNTER["n"]

    def on_ask(self, question):
        """Calls the client back (Namespace.call) and returns its answer."""
        return {"answer": self.call("confirm", question, timeout=5)}

    def on_news(self, text):
        """Emits an event to this connection."""
        self.emit("news", {"text": text})

    def on_kick(self):
        self.spawn(self.disconnect)
        return "bye"


class Prices(Namespace):
    """The upstream of the server-to-server example of docs/python-client.md."""

    name = "/prices"

    @subscribes("counter")
    def on_prices(self):
        return {"n": COUNTER["n"]}
