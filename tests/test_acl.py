"""The ACL of sbio.Namespace: gevent-socketio's names, with its traps fixed."""
import pytest

from sbio import Namespace
from sbio.testing import CallError


class Open(Namespace):
    name = "/open"

    def on_a(self):
        return "a"

    def on_b(self):
        return "b"


class Locked(Open):
    name = "/locked"

    def get_initial_acl(self):
        return ["on_login"]  # a list, not a set: any iterable works

    def on_login(self):
        self.lift_acl_restrictions()
        return "in"

    def on_grant(self, method):
        self.add_acl_method(method)

    def on_revoke(self, method):
        self.del_acl_method(method)

    def on_reset(self):
        self.reset_acl()


def make(cls):
    # The ACL is plain bookkeeping: no server is needed to exercise it.
    return cls(server=None, sid="sid-1", environ={})


def test_default_acl_allows_everything():
    ns = make(Open)
    assert ns.allowed_methods is None
    assert ns.is_method_allowed("on_a") and ns.is_method_allowed("on_anything")


@pytest.mark.parametrize("initial", [["on_a"], ("on_a",), {"on_a"}, frozenset({"on_a"}),
                                     "on_a", (n for n in ["on_a"])])
def test_any_iterable_initial_acl(initial):
    class Some(Open):
        name = "/some"

        def get_initial_acl(self):
            return initial

    ns = make(Some)
    assert ns.allowed_methods == {"on_a"}
    assert ns.is_method_allowed("on_a")
    assert not ns.is_method_allowed("on_b")


def test_add_acl_method_on_unrestricted_is_a_noop():
    ns = make(Open)
    ns.add_acl_method("on_a")
    assert ns.allowed_methods is None  # gevent-socketio restricted to {"on_a"} here
    assert ns.is_method_allowed("on_b")


def test_add_acl_method_extends_a_restricted_acl():
    ns = make(Locked)
    ns.add_acl_method("on_a")
    assert ns.allowed_methods == {"on_login", "on_a"}


def test_del_acl_method_on_unrestricted_keeps_the_others():
    ns = make(Open)
    ns.del_acl_method("on_a")
    assert not ns.is_method_allowed("on_a")
    assert ns.is_method_allowed("on_b")


def test_del_acl_method_of_a_missing_name_is_not_an_error():
    ns = make(Locked)
    ns.del_acl_method("on_never_there")
    assert ns.allowed_methods == {"on_login"}


def test_lift_and_reset():
    ns = make(Locked)
    ns.lift_acl_restrictions()
    assert ns.is_method_allowed("on_a")
    ns.reset_acl()
    assert ns.allowed_methods == {"on_login"}


def test_handler_names_excludes_lifecycle_hooks():
    names = Locked.handler_names()
    assert {"on_a", "on_b", "on_login", "on_grant"} <= names
    assert not names & {"on_connect", "on_disconnect"}


def test_acl_enforced_on_every_inbound_event(sbio_client):
    c = sbio_client(Locked)
    for event in ("a", "b", "grant", "revoke", "reset", "does_not_exist"):
        with pytest.raises(CallError) as err:
            c.call(event) if event not in ("grant", "revoke") else c.call(event, "on_a")
        assert err.value.code == "forbidden", event
    c.emit("a")
    assert c.receive("sbio:error") == [{"event": "a", "code": "forbidden",
                                        "message": "not allowed to call 'a'"}]


def test_login_lifts_add_del_reset_over_the_wire(sbio_client):
    c = sbio_client(Locked)
    assert c.call("login") == "in"
    assert c.call("a") == "a"
    c.call("revoke", "on_a")
    with pytest.raises(CallError) as err:
        c.call("a")
    assert err.value.code == "forbidden"
    assert c.call("b") == "b"  # revoking one handler leaves the others allowed
    c.call("grant", "on_a")
    assert c.call("a") == "a"
    c.call("reset")
    with pytest.raises(CallError):
        c.call("b")


def test_one_clients_login_never_unlocks_another(sbio_client):
    ann = sbio_client(Locked)
    bob = sbio_client(Locked)
    ann.call("login")
    assert ann.call("a") == "a"
    with pytest.raises(CallError) as err:
        bob.call("a")
    assert err.value.code == "forbidden"
    assert ann.instance is not bob.instance
    assert bob.instance.allowed_methods == {"on_login"}
