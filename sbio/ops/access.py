"""Who may read the operations endpoints (``/metrics``, ``/sbio/status``): ``[metrics] access``."""
from __future__ import annotations

import hmac
import ipaddress
import logging
import urllib.parse
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigurationError

__all__ = ["Access", "is_loopback_request", "MIN_TOKEN_LENGTH"]

log = logging.getLogger("sbio.ops")

#: Shortest bearer token accepted for ``metrics.access = token``.
MIN_TOKEN_LENGTH = 16

#: Headers a reverse proxy adds: a request carrying one did not come from this host.
_FORWARDED_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


def is_loopback_request(environ: Mapping[str, Any]) -> bool:
    """True when the request comes from this host itself, directly.

    ``REMOTE_ADDR`` is a loopback address (127.0.0.0/8, ``::1``, or an IPv4
    loopback mapped into IPv6) and the request carries no ``X-Forwarded-For``,
    ``Forwarded`` or ``X-Real-IP`` header: a reverse proxy on the same host
    (nginx in front of sbio) connects from 127.0.0.1 for every client, and
    what it forwards is not local.
    """
    if any(environ.get(name) for name in _FORWARDED_HEADERS):
        return False
    address = str(environ.get("REMOTE_ADDR") or "").split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


class Access:
    """The ``[metrics] access`` rule: ``loopback`` or a bearer ``token``.

    :param settings: the ``[metrics]`` section (``access``, ``token``).
    :raises ConfigurationError: ``access = token`` with a token shorter than
        :data:`MIN_TOKEN_LENGTH` characters.
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.mode = str(settings["access"])
        self.token = str(settings["token"] or "")
        if self.mode == "token" and len(self.token) < MIN_TOKEN_LENGTH:
            raise ConfigurationError(
                f"metrics.access is 'token' but metrics.token is "
                f"{'empty' if not self.token else 'too short'}: set it to a secret of at least "
                f"{MIN_TOKEN_LENGTH} characters (e.g. `python -c 'import secrets; "
                f"print(secrets.token_urlsafe(32))'`), or use metrics.access = loopback")

    def refusal(self, environ: Mapping[str, Any], query_token: bool = False
                ) -> tuple[str, list[tuple[str, str]], str] | None:
        """None when the request may read, else ``(status, headers, message)``.

        *query_token*: a ``?token=`` in the query string counts as the bearer
        token (the status page: a browser cannot add a header to a link).
        """
        if self.mode == "loopback":
            if is_loopback_request(environ):
                return None
            return ("403 Forbidden", [], "only readable from this host (metrics.access = "
                    "loopback; a proxied request is not local)")
        given = self.token_of(environ, query_token)
        if given is not None and self.matches(given):
            return None
        return ("401 Unauthorized", [("WWW-Authenticate", 'Bearer realm="sbio"')],
                "a valid bearer token is needed (metrics.access = token)")

    def token_of(self, environ: Mapping[str, Any], query_token: bool = False) -> str | None:
        """The bearer token of the request's ``Authorization`` header (or ``?token=``)."""
        header = str(environ.get("HTTP_AUTHORIZATION") or "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        if query_token:
            values = urllib.parse.parse_qs(str(environ.get("QUERY_STRING") or "")).get("token")
            if values:
                return values[0]
        return None

    def matches(self, given: Any) -> bool:
        """True when *given* is the configured token (compared in constant time)."""
        if self.mode != "token" or not isinstance(given, str):
            return False
        return hmac.compare_digest(given.encode(), self.token.encode())

    def allows_connection(self, environ: Mapping[str, Any], auth: Any) -> bool:
        """The same rule for a socket.io connection (the status page's): *auth* ``{"token"}``."""
        if self.mode == "loopback":
            return is_loopback_request(environ)
        token = auth.get("token") if isinstance(auth, dict) else None
        return self.matches(token)
