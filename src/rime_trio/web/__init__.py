"""Serve speech to browsers: an ASGI app (Starlette) embedding one shared RimeClient.

Needs the ``web`` extra (``pip install 'rime-trio[web]'``). Run it with
``rime-trio serve --emulator`` or embed :func:`create_app` in your own ASGI server.
"""

from ._app import WebStats, create_app

__all__ = ["WebStats", "create_app"]
