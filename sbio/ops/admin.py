"""The socket.io Admin UI (``[admin]``): python-socketio's instrumentation, with sbio's checks."""
from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigurationError

__all__ = ["admin_auth", "instrument"]

log = logging.getLogger("sbio.ops")


def admin_auth(settings: Mapping[str, Any], debug: bool) -> Callable[[Any], bool] | bool:
    """The check of an Admin UI login (``{"username", "password"}``), from ``[admin]``.

    ``False`` (no check) only in debug mode without credentials.

    :raises ConfigurationError: no username, or neither password nor
        password_hash, outside debug mode.
    """
    username = str(settings["username"] or "")
    password = str(settings["password"] or "")
    password_hash = str(settings["password_hash"] or "")
    if not username or not (password or password_hash):
        if debug:
            log.warning("admin.enabled without admin.username and admin.password: the socket.io "
                        "Admin UI is open to anyone who reaches this server (allowed only "
                        "because server.debug is on)")
            return False
        raise ConfigurationError(
            "admin.enabled is true but admin.username and admin.password (or "
            "admin.password_hash) are not both set: the socket.io Admin UI needs credentials "
            "outside debug mode")
    if password_hash:
        from werkzeug.security import check_password_hash

        def check_hash(given: str) -> bool:
            try:
                return check_password_hash(password_hash, given)
            except (ValueError, TypeError):  # not a werkzeug hash
                log.error("admin.password_hash is not a werkzeug.security hash: "
                          "every Admin UI login is refused")
                return False
        check_password = check_hash
    else:
        def check_plain(given: str) -> bool:
            return hmac.compare_digest(given.encode(), password.encode())
        check_password = check_plain

    refusals = _Refusals()

    def check(auth: Any) -> bool:
        given_user = auth.get("username") if isinstance(auth, dict) else None
        given_password = auth.get("password") if isinstance(auth, dict) else None
        if isinstance(given_user, str) and isinstance(given_password, str):
            user_ok = hmac.compare_digest(given_user.encode(), username.encode())
            if check_password(given_password) and user_ok:
                return True
        refusals.log()
        return False

    return check


class _Refusals:
    """Logs refused Admin UI logins: the first at once, then at most one line a minute."""

    period = 60.0

    def __init__(self) -> None:
        self.next = 0.0
        self.suppressed = 0

    def log(self) -> None:
        import time

        now = time.monotonic()
        if now < self.next:
            self.suppressed += 1
            return
        more = f" (and {self.suppressed} more in the last minute)" if self.suppressed else ""
        self.suppressed = 0
        self.next = now + self.period
        log.warning("socket.io Admin UI login refused: wrong username or password%s", more)


def instrument(server: Any, settings: Mapping[str, Any], auth: Callable[[Any], bool] | bool
               ) -> Any:
    """Serve the socket.io Admin UI on *server*; returns the instrumentation (``shutdown()``).

    *auth*: what :func:`admin_auth` made of *settings*.
    """
    from ..adapter import instrument_admin

    namespace = str(settings["namespace"])
    if not namespace.startswith("/"):
        raise ConfigurationError(f"admin.namespace must start with '/', got {namespace!r}")
    if namespace in server.namespaces:
        raise ConfigurationError(f"admin.namespace {namespace} is also an sbio namespace "
                                 f"({server.namespaces[namespace].__name__})")
    instrumentation = instrument_admin(
        server.sio, auth, mode=str(settings["mode"]), read_only=bool(settings["read_only"]),
        namespace=namespace, stats_interval=float(settings["stats_interval"]))
    log.info("socket.io Admin UI on namespace %s (%s mode%s); the hosted UI at "
             "https://admin.socket.io needs that origin in server.cors_allowed_origins",
             namespace, settings["mode"], ", read-only" if settings["read_only"] else "")
    return instrumentation
