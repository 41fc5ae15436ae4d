"""Serve speech to browsers: an ASGI app (Starlette) embedding one shared RimeClient.

Needs the ``web`` extra (``pip install 'rime-trio[web]'``). Run it with
``rime-trio serve --emulator`` or embed :func:`create_app` in your own ASGI server.
:class:`AccessGuard` (Host, Origin and token checks) and :class:`SessionLimits` are
exported so that apps of your own can apply the same protection.
"""

from ._access import (
    PROTOCOL,
    TOKEN_PROTOCOL_PREFIX,
    AccessGuard,
    AccessPolicy,
    Refusal,
    generate_token,
    is_loopback_host,
    normalize_origin,
    select_subprotocol,
)
from ._app import WebStats, create_app
from ._limits import SessionLimits, SlidingWindow

__all__ = [
    "PROTOCOL",
    "TOKEN_PROTOCOL_PREFIX",
    "AccessGuard",
    "AccessPolicy",
    "Refusal",
    "SessionLimits",
    "SlidingWindow",
    "WebStats",
    "create_app",
    "generate_token",
    "is_loopback_host",
    "normalize_origin",
    "select_subprotocol",
]
