"""What one stream or synthesis measured, and where those numbers go when it ends.

:class:`StreamMetrics` and :class:`SynthesisMetrics` are plain frozen snapshots. The stream
and the HTTP synthesis fill in a few attributes as they run (one clock reading at the first
text, one at the first audio, one around the socket's handshake: nothing per chunk); a
snapshot is built only when someone asks, and once when the stream ends. Every time comes
from the event loop's clock (``anyio.current_time()``), so under Trio's ``MockClock`` the
numbers are virtual seconds and tests can assert them exactly.

When a stream or synthesis ends, :class:`MetricsSink` hands its metrics, exactly once, to
one INFO line on the ``rime_trio.metrics`` logger, to the client's ``on_metrics`` hook and,
when enabled, to OpenTelemetry (:mod:`._otel`, imported only then). None of them sees the
text or the API key, and none can raise into the stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Literal, Protocol

from ._audio import AudioClock
from ._options import RimeOptions

if TYPE_CHECKING:
    from opentelemetry.trace import Span


__all__ = [
    "MetricsHook",
    "MetricsSink",
    "Outcome",
    "StreamMetrics",
    "SynthesisMetrics",
    "SynthesisRecord",
    "logfmt",
    "outcome_of",
]

logger = logging.getLogger("rime_trio.metrics")

#: how a stream or synthesis ended (``running`` while it has not)
Outcome = Literal["running", "completed", "cancelled", "failed"]


@dataclass(frozen=True, slots=True)
class StreamMetrics:
    """What one speech stream measured (``stream.metrics``; the ``on_metrics`` hook gets the
    final one). Times are seconds on the event loop's clock.

    :ivar context_id: the stream's ``context_id`` (a label, not text).
    :ivar model: the model it spoke with.
    :ivar speaker: the voice it spoke with.
    :ivar time_to_first_audio: from the first speakable text pushed to the first audio chunk
        handed to the caller (None while none was). It includes whatever the caller took to
        finish the first sentence, and the handshake if the stream had to make one.
    :ivar stream_open_seconds: from entering ``async with client.stream()`` to the stream's
        end (its socket released); so far, while it runs.
    :ivar connect_seconds: how long the stream waited for its first socket: the handshake (or
        the rest of one the pool had started), and any retries of a refused one. None when the
        pool handed it a socket that was already open, or before it asked for one.
    :ivar connection_reused: the stream took a socket the pool had already open (prewarmed,
        opened in the background after an earlier stream, or, on v1, one other streams
        speak on): no handshake on its path. A v1 stream that joined a socket still opening
        waited for its handshake: not reused.
    :ivar characters_sent: characters of text sent to the server (what you pushed, less text
        a ``clear()`` dropped before it left and whitespace at the very end; a retry re-sends
        but does not count twice).
    :ivar audio_seconds: seconds of audio handed to the caller.
    :ivar retries: failures retried on a new socket before any audio was delivered.
    :ivar foreign_events_dropped: events tagged for another stream, dropped.
    :ivar outcome: ``completed`` (the server closed after the last audio), ``failed`` (an
        error ended it: see *error_type*), ``cancelled`` (stopped before its end: cancellation,
        leaving the block early, closing ``audio_out``, ``clear()`` after the input ended,
        ``client.aclose()``), or ``running``.
    :ivar error_type: the class name of the error when *outcome* is ``failed``.
    """

    context_id: str
    model: str
    speaker: str
    time_to_first_audio: float | None
    stream_open_seconds: float
    connect_seconds: float | None
    connection_reused: bool
    characters_sent: int
    audio_seconds: float
    retries: int
    foreign_events_dropped: int
    outcome: Outcome
    error_type: str | None = None


@dataclass(frozen=True, slots=True)
class SynthesisMetrics:
    """What one HTTP synthesis measured (``SynthesisResult.metrics``, ``chunks.metrics`` of
    ``synthesize_chunks``; the ``on_metrics`` hook gets the final one). Times are seconds on
    the event loop's clock.

    :ivar model: the model it spoke with.
    :ivar speaker: the voice it spoke with.
    :ivar time_to_first_byte: from sending the request to the first byte of the audio body
        (None while none came).
    :ivar total_seconds: from sending the request to the end of the response (so far, while
        it runs).
    :ivar characters: characters of text sent.
    :ivar audio_seconds: seconds of audio handed to the caller.
    :ivar outcome: as :attr:`StreamMetrics.outcome` (``completed``: the whole body was read).
    :ivar error_type: the class name of the error when *outcome* is ``failed``.
    """

    model: str
    speaker: str
    time_to_first_byte: float | None
    total_seconds: float
    characters: int
    audio_seconds: float
    outcome: Outcome
    error_type: str | None = None


#: the ``on_metrics`` hook: called once per finished stream or synthesis
MetricsHook = Callable[[StreamMetrics | SynthesisMetrics], object]


def outcome_of(
    *, complete: bool, failure: BaseException | None, error: BaseException | None
) -> tuple[Outcome, str | None]:
    """How a stream or synthesis ended, and the error's class name if it failed.

    *failure* is the stream's own (a task's error); *error* whatever left the caller's block.
    A stream's own failure comes first; then a complete stream is ``completed`` whatever the
    caller's code did afterwards; then an ``Exception`` out of the block is ``failed`` and
    anything else (cancellation, ``KeyboardInterrupt``, leaving early) ``cancelled``.
    """
    if failure is not None:
        return "failed", type(failure).__name__
    if complete:
        return "completed", None
    if isinstance(error, Exception):
        return "failed", type(error).__name__
    return "cancelled", None


class SynthesisRecord:
    """What an HTTP synthesis has measured so far, filled in as it runs (see module doc)."""

    __slots__ = (
        "characters",
        "clock",
        "complete",
        "final",
        "first_byte_at",
        "model",
        "speaker",
        "started",
    )

    def __init__(self, options: RimeOptions, characters: int, started: float) -> None:
        self.model: str = options.model
        self.speaker: str = options.speaker
        self.characters = characters
        self.started = started
        self.first_byte_at: float | None = None
        #: the response's audio clock, once the body starts (its seconds are those delivered)
        self.clock: AudioClock | None = None
        #: the whole body was read
        self.complete = False
        self.final: SynthesisMetrics | None = None

    def snapshot(self, now: float, outcome: Outcome, error_type: str | None) -> SynthesisMetrics:
        first = self.first_byte_at
        return SynthesisMetrics(
            model=self.model,
            speaker=self.speaker,
            time_to_first_byte=None if first is None else first - self.started,
            total_seconds=now - self.started,
            characters=self.characters,
            audio_seconds=0.0 if self.clock is None else self.clock.seconds,
            outcome=outcome,
            error_type=error_type,
        )

    def finish(self, now: float, error: BaseException | None) -> SynthesisMetrics:
        """Freeze the final metrics (see :func:`outcome_of`)."""
        outcome, error_type = outcome_of(complete=self.complete, failure=None, error=error)
        self.final = self.snapshot(now, outcome, error_type)
        return self.final


def logfmt(metrics: StreamMetrics | SynthesisMetrics) -> str:
    """*metrics* as ``key=value`` pairs (logfmt: greppable, and parsed by log pipelines)."""
    parts = []
    for field in fields(metrics):
        value = getattr(metrics, field.name)
        if value is None:
            text = "none"
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float):
            text = f"{value:.6f}"
        elif isinstance(value, str) and any(c in value for c in ' ="\n\r\\'):
            # Quoted and escaped: a caller's context_id must not break (or forge) a log line.
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            text = '"' + escaped.replace("\n", "\\n").replace("\r", "\\r") + '"'
        else:
            text = str(value)
        parts.append(f"{field.name}={text}")
    return " ".join(parts)


class Telemetry(Protocol):
    """What :class:`MetricsSink` uses of OpenTelemetry (``_otel.Telemetry`` implements it;
    named here so that this module does not import that one, which imports this one)."""

    def start_span(self, name: str) -> Span: ...

    def socket_opened(self) -> None: ...

    def record(self, metrics: StreamMetrics | SynthesisMetrics, span: Span | None) -> None: ...


class MetricsSink:
    """Where a client's finished metrics go: the log line, the hook, OpenTelemetry.

    :meth:`finish` never raises: a failing hook (or exporter) is logged, and the stream that
    ended goes on as if nothing happened.
    """

    __slots__ = ("hook", "telemetry")

    def __init__(self, hook: MetricsHook | None = None, telemetry: Telemetry | None = None) -> None:
        self.hook = hook
        self.telemetry = telemetry

    def start_span(self, name: str) -> Span | None:
        """A span for a stream or synthesis starting now (None without telemetry)."""
        if self.telemetry is None:
            return None
        try:
            return self.telemetry.start_span(name)
        except Exception:
            logger.exception("OpenTelemetry: starting a span failed; no span for this one")
            return None

    def finish(self, metrics: StreamMetrics | SynthesisMetrics, span: Span | None = None) -> None:
        """Report the final *metrics* of a stream or synthesis (call it once for each)."""
        if logger.isEnabledFor(logging.INFO):
            kind = "stream" if isinstance(metrics, StreamMetrics) else "synthesis"
            logger.info("%s %s", kind, logfmt(metrics), extra={"rime_trio_metrics": metrics})
        if self.telemetry is not None:
            try:
                self.telemetry.record(metrics, span)
            except Exception:
                logger.exception("OpenTelemetry: recording metrics failed (ignored)")
        if self.hook is not None:
            try:
                self.hook(metrics)
            except Exception as exc:
                # The hook is the caller's code: its failure must not become the stream's.
                logger.error(
                    "the on_metrics hook raised %s (ignored)", type(exc).__name__, exc_info=True
                )
