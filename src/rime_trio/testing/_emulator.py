"""A Rime-compatible server for tests, benchmarks and offline demos.

It serves ``/ws3`` and ``/ws`` (Rime's WebSocket v1) and ``/v1/rime-tts`` (HTTP) on one port of
127.0.0.1 through a real ASGI server: hypercorn's trio worker under Trio, its asyncio worker
under asyncio (AnyIO on either backend included); everything else is written once against
AnyIO. This module holds the ASGI application (handshake and request validation, with the
client's own option rules so the two cannot drift apart, and the HTTP endpoint) and
:func:`open_emulator`, which serves it. Each accepted ``/ws3`` socket is served by
``_ws3_socket``, which drives the sans-IO server model in ``_ws3_model``; each ``/ws`` socket by
``_v1_socket`` and ``_v1_model``; fault modes are in ``_faults``.

Behaviour follows ``PROTOCOL.md``; where Rime's docs leave a point open, the emulator plays the
reading chosen in :class:`Ws3Readings` (``EmulatorConfig.readings``) or :class:`V1Readings`
(``EmulatorConfig.v1_readings``).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, Final, cast
from urllib.parse import parse_qsl

import anyio

from .._concurrency import single_exception
from .._errors import ConfigurationError
from .._options import AudioFormat, RimeOptions, format_for_accept
from .._segment import MAX_TEXT_CHARS
from .._serving import BoundConfig, hypercorn_serve, listen, quiet_tls_client_errors
from .._voices import VOICES_PATH
from ._asgi_socket import Receive, Send
from ._catalog import language_code, model_languages
from ._config import EmulatorConfig, EmulatorStats, RunRecord
from ._faults import Fault, find_fault
from ._params import options_from_params
from ._proxy import TcpFaultProxy
from ._synth import encode_audio, render_speech
from ._v1_model import select_subprotocol
from ._v1_socket import V1Socket
from ._ws3_socket import Pacer, Ws3Socket

__all__ = [
    "EmulatorConfig",
    "EmulatorStats",
    "Fault",
    "RimeEmulator",
    "RunRecord",
    "open_emulator",
]

logger = logging.getLogger("rime_trio.emulator")

Scope = MutableMapping[str, Any]

_STREAMING_FORMATS: Final = ("pcm", "mulaw")
# Rime's v1 routes (the path picks the model: /coda/ws; Mist v3's is written both ways in the
# integrations' READMEs) and the plain /ws a dedicated endpoint has. The emulator's speech
# does not depend on the model, so all of them serve the same.
_V1_PATHS: Final = frozenset({"/ws", "/coda/ws", "/mistv3/ws", "/mist/ws"})
_HTTP_FORMATS: Final = ("pcm", "mulaw", "wav")
# Rime's Accept names (api-reference/coda/http.mdx): the RFC types and, "still accepted", the
# older audio/pcm, audio/x-mulaw, audio/mp3; format_for_accept reads both. No Accept: pcm.
_DEFAULT_ACCEPT: Final = "audio/pcm"


class _Reject(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


class RimeEmulator:
    """The emulator's ASGI application and the handle tests use.

    Start it with :func:`open_emulator` (or ``rime-trio emulator``). ``http_url`` and
    ``ws_url`` are set once it listens; ``stats`` records what it saw.
    """

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config if config is not None else EmulatorConfig()
        self.stats = EmulatorStats()
        self.host = "127.0.0.1"
        self.port = 0
        self.secure = False
        self._connection_counter = itertools.count(1)
        # Set when open_sockets or _calls change. Made on first wait, not here: an AnyIO event
        # needs a running event loop, and a RimeEmulator may be built outside one.
        self._changed: anyio.Event | None = None
        self._calls: set[anyio.CancelScope] = set()  # one per HTTP request or WebSocket
        self._stopping = False
        self._proxy: TcpFaultProxy | None = None

    def _drop_tcp(self, client: tuple[str, int] | None) -> None:
        if self._proxy is None:
            raise RuntimeError("'drop' faults need open_emulator(..., tcp_faults=True)")
        if client is None or not self._proxy.drop(client[1]):
            raise RuntimeError(f"no proxied TCP connection for {client!r}")

    def go_silent(self) -> int:
        """Make every connection open now go silent: nothing the client sends arrives, and
        nothing comes back, not even a close or a pong (a dead pooled socket: a NAT or proxy
        forgot it). Returns how many. Needs ``open_emulator(..., tcp_faults=True)``.

        :raises RuntimeError: without the TCP proxy.
        """
        if self._proxy is None:
            raise RuntimeError("go_silent() needs open_emulator(..., tcp_faults=True)")
        return self._proxy.silence_all()

    async def wait_open_sockets(self, at_most: int = 0) -> None:
        """Wait until no more than *at_most* WebSocket connections are open.

        Call it from the event loop that runs the emulator (trio or asyncio).
        """
        await self._wait_until(lambda: self.stats.open_sockets <= at_most)

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    def _notify(self) -> None:
        # An AnyIO event cannot be cleared: wake every waiter, and the next wait makes a new one.
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _sockets_changed(self, delta: int) -> None:
        self.stats.open_sockets += delta
        self._notify()

    def _end_calls(self) -> None:
        """End every request and WebSocket still being served, and any that starts later."""
        self._stopping = True
        for call in self._calls:
            call.cancel()

    @property
    def http_url(self) -> str:
        """Base URL for HTTP synthesis (``/v1/rime-tts`` is the default path)."""
        return f"{'https' if self.secure else 'http'}://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """Base URL for streaming (``/ws3`` is the default path)."""
        return f"{'wss' if self.secure else 'ws'}://{self.host}:{self.port}"

    @property
    def v1_url(self) -> str:
        """URL of Rime's WebSocket v1 endpoint (``/ws``; ``/coda/ws``, ``/mistv3/ws`` and
        ``/mist/ws`` serve it too, as Rime's routes)."""
        return f"{self.ws_url}/ws"

    def __repr__(self) -> str:
        return f"<RimeEmulator {self.http_url} open_sockets={self.stats.open_sockets}>"

    # ----------------------------------------------------------------- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        # Each call can be ended by open_emulator when the grace period at shutdown is over:
        # the handler then returns (hypercorn closes a WebSocket with 1011) and hypercorn
        # closes the connection itself, instead of cancelling its connection tasks.
        with anyio.CancelScope() as call:
            if self._stopping:
                call.cancel()
            self._calls.add(call)
            try:
                if scope["type"] == "websocket":
                    await self._websocket(scope, receive, send)
                elif scope["type"] == "http":
                    await self._http(scope, receive, send)
            finally:
                self._calls.discard(call)
                self._notify()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _check_key(self, scope: Scope) -> None:
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        if authorization != f"Bearer {self.config.api_key}":
            raise _Reject(401, "Unauthorized: invalid or missing API key")

    def _check_speaker(self, options: RimeOptions) -> None:
        if not self.config.knows_speaker(options.model, options.speaker):
            raise _Reject(400, f"Bad request: {_unknown_speaker(options)}")

    def _options(self, params: dict[str, object], *, http: bool) -> RimeOptions:
        try:
            return options_from_params(params, api_key=self.config.api_key, http=http)
        except ConfigurationError as exc:
            raise _Reject(400, f"Bad request: {exc}") from None

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        index = next(self._connection_counter)
        path = scope["path"].rstrip("/")
        subprotocol: str | None = None
        try:
            v1 = path in _V1_PATHS
            if path != "/ws3" and not v1:
                raise _Reject(404, f"Not found: {scope['path']}")
            # v1 lets a browser (which cannot set headers) authenticate with its first message
            # instead; a header that is there must be right (401 otherwise).
            header_auth = not v1 or b"authorization" in dict(scope["headers"])
            if header_auth:
                self._check_key(scope)
            reject = find_fault(self.config.faults, "reject", index)
            if reject is not None:
                raise _Reject(reject.status, reject.body)
            limit = self.config.max_sockets
            if limit is not None and self.stats.open_sockets >= limit:
                raise _Reject(429, "Currently at websocket limit")
            if v1:
                # v1 takes no query parameters: every setting travels in a context's start.
                if scope["query_string"]:
                    raise _Reject(400, f"Bad request: {path} takes no query parameters")
                readings = self.config.v1_readings
                subprotocol, encoding = select_subprotocol(scope.get("subprotocols", []), readings)
            else:
                query = dict(
                    parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
                )
                options = self._options(dict(query), http=False)
                if options.audio_format not in _STREAMING_FORMATS:
                    raise _Reject(
                        400, f"Bad request: the emulator streams {', '.join(_STREAMING_FORMATS)}"
                    )
                if self.config.unknown_speaker == "reject":
                    self._check_speaker(options)
        except _Reject as reject:
            self.stats.rejected += 1
            await _deny(send, reject)
            return
        # Counted before the answer goes out: a client may use the socket (and a test look at
        # the counts) the moment it reads the 101.
        self.stats.handshakes += 1
        self._sockets_changed(+1)
        try:
            client: tuple[str, int] | None = scope.get("client")
            socket: Ws3Socket | V1Socket
            if v1:
                await send({"type": "websocket.accept", "subprotocol": subprotocol})
                socket = V1Socket(
                    self.config,
                    self.stats,
                    index,
                    encoding,
                    receive,
                    send,
                    lambda: self._drop_tcp(client),
                    authenticated=header_auth,
                )
            else:
                await send({"type": "websocket.accept"})
                socket = Ws3Socket(
                    self.config,
                    self.stats,
                    index,
                    options,
                    receive,
                    send,
                    lambda: self._drop_tcp(client),
                )
            await socket.run()
        finally:
            self._sockets_changed(-1)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.stats.http_requests += 1
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            if scope["path"] == VOICES_PATH and scope["method"] == "GET":
                # Public, as Rime's is: no key.
                await _json_response(send, self.config.voice_list())
                return
            if scope["path"].rstrip("/") != "/v1/rime-tts":
                raise _Reject(404, f"Not found: {scope['path']}")
            if scope["method"] != "POST":
                raise _Reject(405, "Method not allowed: use POST")
            self._check_key(scope)
            headers = dict(scope["headers"])
            accept = headers.get(b"accept", _DEFAULT_ACCEPT.encode()).decode("latin-1")
            audio_format = format_for_accept(accept)
            if audio_format not in _HTTP_FORMATS:
                made = ", ".join(sorted(_HTTP_FORMATS))
                what = audio_format or f"Accept {accept!r}"
                # mp3 and opus are Rime formats the emulator has no encoder for (none is
                # a dependency): refused with a 400 that says so.
                raise _Reject(
                    400,
                    f"Bad request: the emulator does not produce {what} (only {made}); "
                    "Rime's servers do",
                )
            try:
                params = json.loads(body)
            except ValueError:
                raise _Reject(400, "Bad request: body is not JSON") from None
            if not isinstance(params, dict):
                raise _Reject(400, "Bad request: body must be a JSON object")
            text = params.pop("text", None)
            if not isinstance(text, str) or not text.strip():
                raise _Reject(400, "Bad request: 'text' must be a non-empty string")
            if len(text) > MAX_TEXT_CHARS:
                raise _Reject(400, "Bad request: text is too long")
            options = self._options(params, http=True)
            self._check_language(options)
            self._check_speaker(options)
        except _Reject as reject:
            await _plain_response(send, reject.status, reject.body)
            return
        # The answer is labelled with the name the request used (the new or the old one).
        content_type = accept.split(",", 1)[0].strip()
        await self._stream_http_audio(send, text, options, audio_format, content_type)

    def _check_language(self, options: RimeOptions) -> None:
        """A ``lang`` the model has no speakers for in Rime's catalogue is refused, in Rime's
        words (docs/errors.mdx); a speaker of another language is not: Rime says such a
        pairing "can be accepted and synthesized". ``unknown_speaker="accept"`` takes both."""
        if self.config.unknown_speaker == "accept":
            return
        if language_code(options.lang) not in model_languages(options.model):
            raise _Reject(
                400,
                f"Bad request: Language {options.lang} is not supported for model {options.model}",
            )

    async def _stream_http_audio(
        self,
        send: Send,
        text: str,
        options: RimeOptions,
        audio_format: AudioFormat,
        content_type: str,
    ) -> None:
        config = self.config
        speech = render_speech(text, options.sample_rate)
        audio = encode_audio(speech.pcm, audio_format, options.sample_rate)
        self.stats.texts[None].append(text)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type.encode("latin-1")),
                    (b"content-length", str(len(audio)).encode()),
                ],
            }
        )
        if config.time_to_first_chunk > 0:
            await anyio.sleep(config.time_to_first_chunk)
        step = max(1, config.chunk_bytes)
        pacer = Pacer(config.real_time_factor, len(audio), speech.duration)
        for offset in range(0, len(audio), step):
            chunk = audio[offset : offset + step]
            last = offset + step >= len(audio)
            await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            self.stats.audio[None] += chunk
            if not last:
                await pacer.sent(offset + len(chunk))


def _unknown_speaker(options: RimeOptions) -> str:
    return (
        f"speaker {options.speaker!r} is not a voice of model {options.model!r} "
        f"(the voices: GET {VOICES_PATH})"
    )


async def _json_response(send: Send, document: object) -> None:
    body = json.dumps(document).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _plain_response(send: Send, status: int, body: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8")],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


async def _deny(send: Send, reject: _Reject) -> None:
    """Refuse a WebSocket handshake with a status and plain-text body (ASGI denial response)."""
    await send(
        {
            "type": "websocket.http.response.start",
            "status": reject.status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8")],
        }
    )
    await send({"type": "websocket.http.response.body", "body": reject.body.encode()})


# ----------------------------------------------------------------------------- serving

# At shutdown, requests and WebSockets still open may finish for this long; then the emulator
# ends them. Hypercorn's own grace period is longer, a backstop only: when it runs out it
# cancels connection tasks, which on asyncio 3.11 logs an error per connection.
_GRACEFUL_SECONDS: Final = 0.5
_HYPERCORN_GRACEFUL_SECONDS: Final = _GRACEFUL_SECONDS + 1.0
# The bound on the whole shutdown, after which the server task is cancelled: on asyncio
# (3.12+) hypercorn first waits, unbounded, in ``Server.wait_closed()`` for every connection
# to go, so its own timeout alone does not bound it.
_STOP_SECONDS: Final = _HYPERCORN_GRACEFUL_SECONDS + 1.0


@asynccontextmanager
async def open_emulator(
    config: EmulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    certfile: str | None = None,
    keyfile: str | None = None,
    tcp_faults: bool = False,
) -> AsyncIterator[RimeEmulator]:
    """Run the emulator on *host*:*port* (0 picks a free port) for the body of the block.

    Usable from Trio, AnyIO (on trio or asyncio) and plain asyncio code; it runs hypercorn's
    worker for the running backend::

        async with open_emulator() as emulator:
            client = RimeClient(base_url=emulator.ws_url, api_key=emulator.config.api_key)

    *certfile* and *keyfile* serve ``https://`` and ``wss://`` instead. *tcp_faults* puts a TCP
    proxy in front so that ``drop`` faults can reset a connection without a close frame.

    Leaving the block stops the server, also when the block fails or is cancelled: requests
    and WebSockets still open get half a second to finish, then are ended (a WebSocket is
    closed with 1011); the whole shutdown is bounded (a few seconds at most).

    :raises ValueError: when only one of *certfile* and *keyfile* is given.
    :raises OSError: when *host* does not resolve, the port cannot be bound, or *certfile* /
        *keyfile* cannot be read (:class:`ssl.SSLError` for a bad certificate or key).
    :raises RuntimeError: under an async library other than trio and asyncio.
    """
    if (certfile is None) != (keyfile is None):
        raise ValueError("certfile and keyfile go together: give both or neither")
    serve = hypercorn_serve()
    emulator = RimeEmulator(config)
    listening = await listen(host, 0 if tcp_faults else port, BoundConfig.backlog)
    try:
        hyper = BoundConfig(listening)
        hyper.accesslog = None
        hyper.errorlog = logger
        hyper.graceful_timeout = _HYPERCORN_GRACEFUL_SECONDS
        hyper.keep_alive_timeout = 30.0
        if certfile is not None:
            hyper.certfile = certfile
            hyper.keyfile = keyfile
            hyper.create_ssl_context()  # fail here, in the caller, on unreadable files
            emulator.secure = True
        emulator.host = host
        emulator.port = listening.getsockname()[1]
        shutdown = anyio.Event()
        stopped = anyio.Event()

        async def run_server() -> None:
            try:
                # Hypercorn types ASGI messages as TypedDicts; ours are plain mappings.
                await serve(cast(Any, emulator), hyper, shutdown_trigger=shutdown.wait)
            finally:
                stopped.set()

        with quiet_tls_client_errors(emulator.secure), single_exception():
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(run_server)
                try:
                    if tcp_faults:
                        proxy = emulator._proxy = TcpFaultProxy(host, emulator.port)
                        emulator.port = await tasks.start(proxy.serve, host, port)
                    yield emulator
                finally:
                    # Shielded: a cancelled block still stops the server gracefully, but
                    # within a bound; then whatever still runs (the proxy) is cancelled.
                    shutdown.set()  # hypercorn stops accepting and closes idle connections
                    with anyio.move_on_after(_STOP_SECONDS, shield=True):
                        with anyio.move_on_after(_GRACEFUL_SECONDS):
                            await emulator._wait_until(lambda: not emulator._calls)
                        emulator._end_calls()
                        await stopped.wait()
                    tasks.cancel_scope.cancel()
    finally:
        listening.close()  # a no-op when hypercorn already closed it
