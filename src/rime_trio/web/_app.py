"""An ASGI app (Starlette) that speaks to browsers: text in, audio and word timestamps out.

One :class:`RimeClient` per app, opened in the ASGI lifespan (its pool prewarmed) and closed
at shutdown; the API key never leaves the server. Each browser WebSocket is one session; each
utterance in it is one ``client.stream()``. Audio goes to the browser as binary frames (raw
16-bit PCM, no base64 on the last hop), word timestamps and status as JSON.

Who may connect is decided before the app runs (:class:`~._access.AccessGuard`: Host, Origin,
token); what a session may do is bounded by :class:`~._limits.SessionLimits`.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from .._client import RimeClient
from .._concurrency import leaf_exceptions
from .._errors import RimeError
from .._events import AudioChunk
from .._metrics import StreamMetrics
from .._stream import SpeechStream
from ._access import AccessGuard, AccessPolicy, Refusal, select_subprotocol
from ._limits import SessionLimits, SlidingWindow

__all__ = ["WebStats", "create_app"]

logger = logging.getLogger("rime_trio.web")

#: What a browser may choose per utterance; everything else stays server-side. Rime's
#: retired model is not offered: coda serves it since 2026-08-15 (Rime's sunset notice).
ALLOWED_OVERRIDES = {"model": {"coda", "mistv3", "mistv2", "mist"}, "speaker": None}


@dataclass
class WebStats:
    """Counters the app exposes at ``/stats`` (for operators and tests)."""

    sessions: int = 0
    utterances: int = 0
    stopped: int = 0
    active: int = 0
    errors: int = 0
    refused: int = 0  # requests refused for their Host, Origin or token
    limited: int = 0  # messages answered with a session-limit error
    extra: dict[str, Callable[[], Any]] = field(default_factory=dict)
    #: time to first audio of the most recent utterances that had audio, seconds
    ttfa: deque[float] = field(default_factory=lambda: deque(maxlen=_TTFA_WINDOW))
    # Made by a waiter (an event needs a running event loop; stats are made before one).
    _idle: anyio.Event | None = field(default=None, repr=False)

    def _utterance_ended(self) -> None:
        self.active -= 1
        if not self.active and self._idle is not None:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until no utterance is running (e.g. after a browser left mid-stream)."""
        while self.active:
            self._idle = anyio.Event()
            await self._idle.wait()

    def snapshot(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "sessions": self.sessions,
            "utterances": self.utterances,
            "stopped": self.stopped,
            "activeStreams": self.active,
            "errors": self.errors,
            "refused": self.refused,
            "limited": self.limited,
            "timeToFirstAudioMs": _percentiles_ms(self.ttfa),
        }
        for name, read in self.extra.items():
            data[name] = read()
        return data


_TTFA_WINDOW = 1000


def _percentiles_ms(values: Iterable[float]) -> dict[str, float | int | None]:
    """Median, p90 and p99 of *values* (seconds) in milliseconds, nearest-rank, and how many."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, "p50": None, "p90": None, "p99": None}

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1000, 1)

    return {"count": len(ordered), "p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99)}


@dataclass
class _SessionSummary:
    """What one browser session did, for its log line (no text, no key)."""

    utterances: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    audio_seconds: float = 0.0
    ttfa: list[float] = field(default_factory=list)

    def add(self, metrics: StreamMetrics) -> None:
        self.utterances += 1
        self.outcomes[metrics.outcome] = self.outcomes.get(metrics.outcome, 0) + 1
        self.audio_seconds += metrics.audio_seconds
        if metrics.time_to_first_audio is not None:
            self.ttfa.append(metrics.time_to_first_audio)

    def line(self, ended: str) -> str:
        outcomes = ", ".join(f"{n} {k}" for k, n in sorted(self.outcomes.items())) or "none"
        ttfa = _percentiles_ms(self.ttfa)["p50"]
        shown = "n/a" if ttfa is None else f"{ttfa:.1f} ms"
        return (
            f"session ended ({ended}): {self.utterances} utterance(s) ({outcomes}), "
            f"time to first audio median {shown}, {self.audio_seconds:.2f} s of audio"
        )


@dataclass(eq=False)
class _Utterance:
    """One ``speak`` of a session: its number (in JSON events), scope, stream, text so far."""

    number: int
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    stream: SpeechStream | None = None
    chars: int = 0


class _Session:
    """One browser WebSocket: ``speak`` starts an utterance, ``text``/``end`` feed the newest,
    ``stop`` cancels every one still speaking; :class:`SessionLimits` bound all of it."""

    def __init__(
        self, websocket: WebSocket, client: RimeClient, stats: WebStats, limits: SessionLimits
    ) -> None:
        self.websocket = websocket
        self.client = client
        self.stats = stats
        self.limits = limits
        self._send_lock = anyio.Lock()
        #: utterances started and not yet answered with done, error or stopped
        self._speaking: dict[int, _Utterance] = {}
        self._current: _Utterance | None = None
        self._numbers = itertools.count(1)
        self._rate = SlidingWindow(limits.max_utterances_per_minute)
        self.summary = _SessionSummary()

    async def send_json(self, data: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.websocket.send_text(json.dumps(data))

    async def send_bytes(self, data: bytes) -> None:
        async with self._send_lock:
            await self.websocket.send_bytes(data)

    async def send_error(self, code: str, message: str, **extra: Any) -> None:
        await self.send_json({"type": "error", "code": code, "message": message, **extra})

    async def _refuse(self, code: str, message: str, **extra: Any) -> None:
        # A limit was hit: answer it, and keep the connection (the page stays usable).
        self.stats.limited += 1
        logger.info("session limit: %s", code)
        await self.send_error(code, message, **extra)

    async def run(self) -> None:
        ended = "the app stopped"
        try:
            async with anyio.create_task_group() as nursery:
                try:
                    while True:
                        message = await self.websocket.receive()
                        if message["type"] == "websocket.disconnect":
                            ended = "the browser left"
                            break
                        request = await self._parse(message.get("text"))
                        if request is not None:
                            await self._handle(request, nursery)
                finally:
                    # The browser left (or the app is stopping): end whatever is speaking.
                    nursery.cancel_scope.cancel()
        except Exception as exc:
            causes = {type(leaf).__name__ for leaf in leaf_exceptions(exc)}
            ended = f"failed: {', '.join(sorted(causes))}"
            raise
        finally:
            logger.info("%s", self.summary.line(ended))

    async def _parse(self, text: str | None) -> dict[str, Any] | None:
        if text is None:
            await self.send_error("bad_message", "messages are JSON text, not binary")
            return None
        limit = self.limits.max_message_chars
        if len(text) > limit:
            # Checked before parsing: a huge message must not cost a huge parse.
            await self._refuse("message_too_long", f"a message holds at most {limit} characters")
            return None
        try:
            request = json.loads(text)
        except ValueError:
            request = None
        if not isinstance(request, dict):
            await self.send_error("bad_message", "messages are JSON objects")
            return None
        return request

    async def _handle(self, request: dict[str, Any], nursery: TaskGroup) -> None:
        kind = request.get("type")
        current = self._current
        if kind == "speak":
            await self._speak(request, nursery)
        elif kind == "text":
            # Text without an utterance (e.g. still trickling in after a stop) is dropped.
            text = request.get("text")
            if isinstance(text, str) and current is not None and current.stream is not None:
                await self._push(current, current.stream, text)
        elif kind == "end":
            if current is not None and current.stream is not None:
                await current.stream.end_input()
        elif kind == "stop":
            if self._speaking:
                self.stats.stopped += 1
                for utterance in list(self._speaking.values()):
                    self._cancel(utterance)
                # Barge-in retired the socket; have a warm one ready for the next utterance.
                # Only then: a flood of stops must not become a flood of handshakes.
                nursery.start_soon(self._prewarm)
            await self.send_json({"type": "stopped"})
        else:
            await self.send_error("bad_message", f"unknown message type {kind!r}")

    async def _speak(self, request: dict[str, Any], nursery: TaskGroup) -> None:
        limits = self.limits
        if len(self._speaking) >= limits.max_concurrent_utterances:
            await self._refuse(
                "busy",
                f"already speaking {len(self._speaking)} utterance(s), the limit per "
                "connection; send stop first",
            )
            return
        retry_after = self._rate.acquire(anyio.current_time())
        if retry_after:
            await self._refuse(
                "rate_limited",
                f"at most {limits.max_utterances_per_minute} utterances per minute; "
                f"try again in {retry_after:.0f} s",
                retryAfter=round(retry_after, 1),
            )
            return
        overrides = {
            name: request[name]
            for name, allowed in ALLOWED_OVERRIDES.items()
            if isinstance(request.get(name), str)
            and request[name]
            and (allowed is None or request[name] in allowed)
        }
        await nursery.start(self._utterance, overrides)

    async def _push(self, utterance: _Utterance, stream: SpeechStream, text: str) -> None:
        limit = self.limits.max_text_chars
        if utterance.chars + len(text) > limit:
            # Stop it rather than speak a silently truncated text.
            self._cancel(utterance)
            await self._refuse(
                "text_too_long",
                f"an utterance holds at most {limit} characters; it was stopped",
                utterance=utterance.number,
            )
            return
        utterance.chars += len(text)
        await stream.push_text(text)

    def _release(self, utterance: _Utterance) -> None:
        # Called before done/error/stopped reaches the page, so a speak sent right after
        # it never finds the slot still taken.
        self._speaking.pop(utterance.number, None)
        if self._current is utterance:
            self._current = None

    def _cancel(self, utterance: _Utterance) -> None:
        utterance.scope.cancel()
        self._release(utterance)

    async def _prewarm(self) -> None:
        try:
            await self.client.prewarm()
        except RimeError as exc:
            logger.warning("prewarm after stop failed: %s", exc)

    async def _utterance(self, overrides: dict[str, Any], task_status: TaskStatus[None]) -> None:
        utterance = _Utterance(next(self._numbers))
        self._speaking[utterance.number] = self._current = utterance
        self.stats.utterances += 1
        self.stats.active += 1
        started = False
        try:
            with utterance.scope:
                async with self.client.stream(**overrides) as stream:
                    utterance.stream = stream
                    task_status.started()
                    started = True
                    await self._forward(utterance, stream)
        except RimeError as exc:
            self.stats.errors += 1
            if not started:
                task_status.started()
            self._release(utterance)
            await self.send_error("synthesis_failed", str(exc), utterance=utterance.number)
        except WebSocketDisconnect:
            pass  # the browser left; its session cancels everything
        finally:
            self._release(utterance)
            self.stats._utterance_ended()
            if utterance.stream is not None:
                metrics = utterance.stream.metrics  # final: the stream's block has exited
                self.summary.add(metrics)
                if metrics.time_to_first_audio is not None:
                    self.stats.ttfa.append(metrics.time_to_first_audio)

    async def _forward(self, utterance: _Utterance, stream: SpeechStream) -> None:
        options = stream.options
        number = utterance.number
        await self.send_json(
            {
                "type": "started",
                "utterance": number,
                "sampleRate": options.sample_rate,
                "format": options.audio_format,
                "model": options.model,
                "speaker": options.speaker,
            }
        )
        async for event in stream:
            if isinstance(event, AudioChunk):
                await self.send_bytes(event.data)
            else:
                await self.send_json(
                    {
                        "type": "word",
                        "utterance": number,
                        "word": event.word,
                        "start": event.start,
                        "end": event.end,
                    }
                )
        self._release(utterance)
        await self.send_json(
            {"type": "done", "utterance": number, "audioSeconds": stream.audio_seconds}
        )


def _page() -> str:
    return resources.files("rime_trio.web").joinpath("static/index.html").read_text("utf-8")


def create_app(
    client_factory: Callable[[], RimeClient],
    *,
    stats: WebStats | None = None,
    allowed_origins: Iterable[str] = (),
    allowed_hosts: Iterable[str] = (),
    token: str | None = None,
    limits: SessionLimits | None = None,
) -> Starlette:
    """Build the app. *client_factory* makes the one :class:`RimeClient` the app shares; it
    is entered in the lifespan (and prewarmed in streaming mode) and closed at shutdown.

    WebSocket handshakes are accepted only from the page's own origin (the scheme, host and
    port it is served on), from *allowed_origins* (``"https://app.example"``; for pages
    served elsewhere), or without an Origin header (not a browser); every request's Host
    must name this server, or *allowed_hosts* (``"*"`` turns that check off, for a proxy
    that does it). With *token*, handshakes and ``/stats`` also need it (see
    :mod:`rime_trio.web._access`). *limits* bound each session (default
    :class:`SessionLimits`).

    :raises ValueError: for an allowed origin that is not ``scheme://host[:port]`` (``null``
        is refused: any site can send it), or a token shorter than 16 characters or with
        characters other than ``A-Z a-z 0-9 . _ ~ -``.
    :raises TypeError: if *allowed_origins* or *allowed_hosts* is a single string.
    """
    if isinstance(allowed_origins, str) or isinstance(allowed_hosts, str):
        raise TypeError("allowed_origins and allowed_hosts are collections of strings")
    policy = AccessPolicy(
        allowed_origins=frozenset(allowed_origins),
        allowed_hosts=frozenset(allowed_hosts),
        token=token,
    )
    session_limits = limits or SessionLimits()
    app_stats = stats or WebStats()

    def refused(refusal: Refusal) -> None:
        app_stats.refused += 1

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with client_factory() as client:
            if client.capabilities.streaming:
                try:
                    await client.prewarm()
                except RimeError as exc:
                    logger.warning("prewarm at startup failed: %s", exc)
            app.state.client = client
            yield

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(_page())

    async def stats_endpoint(request: Request) -> JSONResponse | PlainTextResponse:
        if not policy.token_matches(request.scope):
            return PlainTextResponse(
                "missing or wrong token\n", 401, headers={"WWW-Authenticate": "Bearer"}
            )
        client: RimeClient = request.app.state.client
        data = app_stats.snapshot()
        data["pool"] = {"idle": client.pool.idle, "opened": client.pool.stats.opened}
        return JSONResponse(data)

    async def speak(websocket: WebSocket) -> None:
        # AccessGuard has checked Host, Origin and token before this runs.
        await websocket.accept(subprotocol=select_subprotocol(websocket.scope))
        app_stats.sessions += 1
        client: RimeClient = websocket.app.state.client
        await _Session(websocket, client, app_stats, session_limits).run()

    return Starlette(
        routes=[
            Route("/", page),
            Route("/stats", stats_endpoint),
            WebSocketRoute("/ws", speak),
        ],
        middleware=[Middleware(AccessGuard, policy=policy, on_refused=refused)],
        lifespan=lifespan,
    )
