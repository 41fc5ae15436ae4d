"""Who may use the app: Host, Origin and token checks on every ASGI request.

Browsers do not apply CORS to WebSockets, so without these checks any page a user visits
could open ``ws://127.0.0.1:8000/ws`` and speak on the server's API key (cross-site
WebSocket hijacking). The checks are plain functions over the ASGI scope (no I/O, no event
loop), so they run the same under trio, asyncio or any ASGI server; :class:`AccessGuard` is
the thin ASGI middleware that applies them.

What is checked, in this order:

1. **Host** (every request): the ``Host`` header must name the address the connection
   actually arrived at (``scope["server"]``, which the client cannot choose), or
   ``localhost`` when that address is loopback, or a host the app was told about. This
   defeats DNS rebinding: a page at ``http://evil.example:8000`` whose name was re-pointed
   to 127.0.0.1 is same-origin with itself, so its Origin would match its Host; its Host
   does not name this server.
2. **Origin** (WebSocket handshakes): the page's own origin (the request's scheme and its
   checked Host) or one of the allowed origins. ``null`` (sandboxed frames, ``file:`` and
   ``data:`` pages, which any site can create) is never accepted. A handshake *without* an
   Origin header is accepted: browsers always send one on WebSocket handshakes, so a
   missing Origin is a non-browser client, and such a client can send any Origin it likes,
   so refusing it would protect nothing and would only break scripts.
3. **Token** (WebSocket handshakes, when one is set): in the ``Sec-WebSocket-Protocol``
   header as ``rime-trio.token.<token>`` (browsers cannot set other headers on a
   WebSocket; the server answers with the plain ``rime-trio`` protocol, never echoing the
   token) or as ``Authorization: Bearer <token>``. Compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "PROTOCOL",
    "TOKEN_PROTOCOL_PREFIX",
    "AccessGuard",
    "AccessPolicy",
    "Refusal",
    "generate_token",
    "is_loopback_host",
    "normalize_origin",
    "select_subprotocol",
]

logger = logging.getLogger("rime_trio.web")

#: The WebSocket subprotocol the page offers and the server selects.
PROTOCOL = "rime-trio"
#: A page passes the token as the subprotocol ``rime-trio.token.<token>``.
TOKEN_PROTOCOL_PREFIX = "rime-trio.token."

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# A host (name, IPv4 or bracketed IPv6) and an optional port; nothing else (no userinfo,
# path or whitespace), so there is no room for parser disagreements.
_HOSTPORT = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::(\d{1,5}))?"
_HOST_RE = re.compile(_HOSTPORT)
_ORIGIN_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://" + _HOSTPORT + r"/?")
# RFC 7230 token characters that are also URL-safe: usable in a subprotocol and a fragment.
_TOKEN_RE = re.compile(r"[A-Za-z0-9._~-]{16,256}")

Origin = tuple[str, str, int | None]
"""A normalized origin: lower-case scheme, lower-case host (IPv6 without brackets), port."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was refused, and the HTTP status its handshake gets."""

    status: int
    reason: str


def generate_token() -> str:
    """A fresh random token (256 bits, URL-safe), for ``rime-trio serve --token``."""
    return secrets.token_urlsafe(32)


def is_loopback_host(host: str) -> bool:
    """Whether binding to *host* only listens on this machine.

    ``localhost`` and loopback addresses count; ``0.0.0.0``, ``::`` (every interface) and
    any other name do not (a name could resolve anywhere, so it is treated as public).
    """
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_hostport(value: str, scheme: str) -> tuple[str, int | None] | None:
    match = _HOST_RE.fullmatch(value)
    if match is None:
        return None
    return _host_and_port(match.group(1), match.group(2), scheme)


def _host_and_port(host: str, port: str | None, scheme: str) -> tuple[str, int | None] | None:
    host = host.lower()
    if host.startswith("["):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    number = int(port) if port is not None else _DEFAULT_PORTS.get(scheme)
    if number is not None and not 0 < number < 65536:
        return None
    return host, number


def _parse_origin(value: str) -> Origin | None:
    match = _ORIGIN_RE.fullmatch(value)
    if match is None:
        return None
    scheme = match.group(1).lower()
    parsed = _host_and_port(match.group(2), match.group(3), scheme)
    if parsed is None:
        return None
    return scheme, parsed[0], parsed[1]


def normalize_origin(origin: str) -> str:
    """*origin* (``scheme://host[:port]``) in canonical form: lower case, default port left out.

    :raises ValueError: if it is not an origin (a path, query, user name, ``*`` or ``null``).
        ``null`` is refused because any site can produce it (a sandboxed frame), so allowing
        it would allow every site.
    """
    parsed = _parse_origin(origin.strip())
    if parsed is None:
        hint = " (any site can send it from a sandboxed frame)" if origin == "null" else ""
        raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}{hint}")
    scheme, host, port = parsed
    shown = f"[{host}]" if ":" in host else host
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{shown}"
    return f"{scheme}://{shown}:{port}"


def _headers(scope: Mapping[str, Any]) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for name, value in scope.get("headers", ()):
        headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return headers


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return None
    # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d; compare the IPv4 form.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Which hosts, origins and token the app accepts; see the module docstring.

    *allowed_origins* admit pages served elsewhere (an embedder's site); their hosts are
    also accepted in the ``Host`` header, so ``--allow-origin http://myhost.lan:8000``
    lets the page be opened under that name. *allowed_hosts* are further names the
    server answers to (``"*"``: any, when a proxy in front already checks Host). *token*,
    if set, is required on every WebSocket handshake and for ``/stats``.

    :raises ValueError: for an allowed origin that is not ``scheme://host[:port]`` (``null``
        included), or a token shorter than 16 characters or with characters a subprotocol
        cannot carry.
    """

    allowed_origins: frozenset[str] = frozenset()
    allowed_hosts: frozenset[str] = frozenset()
    token: str | None = field(default=None, repr=False)
    _origins: frozenset[Origin] = field(init=False, repr=False, compare=False)
    _hosts: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Canonical forms, so that "HTTP://Example.com:80/" and "http://example.com" agree.
        origins = frozenset(normalize_origin(origin) for origin in self.allowed_origins)
        parsed = frozenset(o for o in map(_parse_origin, origins) if o is not None)
        hosts = {host.strip().strip("[]").lower() for host in self.allowed_hosts}
        hosts |= {origin[1] for origin in parsed}
        object.__setattr__(self, "allowed_origins", origins)
        object.__setattr__(self, "_origins", parsed)
        object.__setattr__(self, "_hosts", frozenset(hosts))
        if self.token is not None and not _TOKEN_RE.fullmatch(self.token):
            raise ValueError(
                "a token is 16 to 256 characters of A-Z, a-z, 0-9 and . _ ~ - "
                "(it travels in a WebSocket subprotocol and a URL fragment)"
            )

    def check_host(self, scope: Mapping[str, Any]) -> Refusal | None:
        """``None`` if the request's ``Host`` names this server, else why not (403)."""
        values = _headers(scope).get("host", [])
        if len(values) != 1:
            return Refusal(403, "exactly one Host header is required")
        scheme = str(scope.get("scheme", "http"))
        parsed = _split_hostport(values[0], scheme)
        if parsed is None:
            return Refusal(403, f"malformed Host header {values[0]!r}")
        if self._host_allowed(*parsed, scope.get("server")):
            return None
        return Refusal(
            403,
            f"host {values[0]!r} is not an address of this server; "
            f"allow its origin to serve under that name",
        )

    def _host_allowed(self, host: str, port: int | None, server: Any) -> bool:
        if "*" in self._hosts or host in self._hosts:
            return True
        if not (isinstance(server, (tuple, list)) and len(server) == 2):
            return False  # a Unix socket or an unknown address: only named hosts
        server_ip = _ip(str(server[0]))
        if server_ip is None or port != server[1]:
            return False
        if host == "localhost":
            return server_ip.is_loopback
        return _ip(host) == server_ip

    def check_origin(self, scope: Mapping[str, Any]) -> Refusal | None:
        """``None`` if the handshake's Origin is absent, the page's own or allowed.

        Call it after :meth:`check_host`: the page's own origin is built from the Host
        header, which is only trustworthy once checked.
        """
        values = _headers(scope).get("origin", [])
        if not values:
            return None  # not a browser (see the module docstring)
        if len(values) > 1:
            return Refusal(403, "more than one Origin header")
        origin = _parse_origin(values[0])
        if origin is None:
            return Refusal(403, f"origin {values[0]!r} is never allowed")
        if origin in self._origins:
            return None
        http_scheme = "https" if scope.get("scheme") in ("wss", "https") else "http"
        hosts = _headers(scope).get("host", [])
        own = _split_hostport(hosts[0], http_scheme) if len(hosts) == 1 else None
        if own is not None and origin == (http_scheme, *own):
            return None
        return Refusal(403, f"origin {values[0]!r} is not allowed")

    def token_matches(self, scope: Mapping[str, Any]) -> bool:
        """Whether the request carries the token (always true without one).

        Every candidate (subprotocol, bearer header) is compared in constant time.
        """
        if self.token is None:
            return True
        candidates = [
            p.removeprefix(TOKEN_PROTOCOL_PREFIX)
            for p in scope.get("subprotocols", ())
            if isinstance(p, str) and p.startswith(TOKEN_PROTOCOL_PREFIX)
        ]
        for value in _headers(scope).get("authorization", []):
            scheme, _, credential = value.partition(" ")
            if scheme.lower() == "bearer":
                candidates.append(credential.strip())
        expected = self.token.encode()
        matched = False
        for candidate in candidates:
            matched |= hmac.compare_digest(candidate.encode("utf-8", "replace"), expected)
        return matched

    def check_websocket(self, scope: Mapping[str, Any]) -> Refusal | None:
        """``None`` if a WebSocket handshake may proceed: Host, then Origin, then token."""
        refusal = self.check_host(scope) or self.check_origin(scope)
        if refusal is None and not self.token_matches(scope):
            # Never say which part was wrong or echo what was sent: it may be a secret.
            return Refusal(401, "missing or wrong token")
        return refusal


def select_subprotocol(scope: Mapping[str, Any]) -> str | None:
    """The subprotocol to accept a handshake with: ``rime-trio`` if offered.

    Browsers fail a handshake whose offered subprotocols get no answer, so the page's
    ``rime-trio`` is always selected; the token protocol never is (that would echo it).
    """
    return PROTOCOL if PROTOCOL in scope.get("subprotocols", ()) else None


class AccessGuard:
    """ASGI middleware applying an :class:`AccessPolicy` before the app sees a request.

    HTTP requests are checked for Host; WebSocket handshakes for Host, Origin and token,
    and refused with 403 (401 for the token) before the app runs, so nothing is
    synthesized. Refusals are logged at WARNING with the reason and the client address,
    never a token or key. Lifespan events pass through.
    """

    def __init__(
        self,
        app: ASGIApp,
        policy: AccessPolicy,
        on_refused: Callable[[Refusal], None] | None = None,
    ) -> None:
        self.app = app
        self.policy = policy
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.policy.check_host(scope)
        elif scope["type"] == "websocket":
            refusal = self.policy.check_websocket(scope)
        else:
            refusal = None
        if refusal is None:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        where = f"{client[0]}:{client[1]}" if client else "unknown client"
        logger.warning(
            "refused %s %s from %s: %s", scope["type"], scope.get("path"), where, refusal.reason
        )
        if self.on_refused is not None:
            self.on_refused(refusal)
        if scope["type"] == "websocket":
            await _deny_websocket(scope, receive, send, refusal)
        else:
            await _respond(send, refusal, "http.response")


async def _respond(send: Send, refusal: Refusal, prefix: str) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    if refusal.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": f"{prefix}.start", "status": refusal.status, "headers": headers})
    await send({"type": f"{prefix}.body", "body": refusal.reason.encode() + b"\n"})


async def _deny_websocket(scope: Scope, receive: Receive, send: Send, refusal: Refusal) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return  # the client already left
    if "websocket.http.response" in scope.get("extensions", {}):
        # The denial-response extension lets non-browser clients read why.
        await _respond(send, refusal, "websocket.http.response")
    else:
        # Closing before accepting makes the server answer the handshake with 403.
        await send({"type": "websocket.close", "code": 1008, "reason": refusal.reason})
