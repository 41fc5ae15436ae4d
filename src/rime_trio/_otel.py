"""OpenTelemetry for rime-trio: a span per stream or synthesis, a time-to-first-audio
histogram, and counters.

Imported only by a client made with ``telemetry=True`` (or an OpenTelemetry provider), so
``import rime_trio`` never needs ``opentelemetry``; it needs ``opentelemetry-api`` alone
(``pip install 'rime-trio[otel]'``). The API does nothing until an SDK is configured, so
with no SDK every call here is a no-op.

What is exported (seconds everywhere, as OpenTelemetry's conventions ask):

* span ``rime.stream`` (a ``/ws3`` stream) or ``rime.synthesis`` (an HTTP synthesis), kind
  CLIENT, from the start to the end of it, with every metrics field as ``rime.<field>``
  (fields that are None are left out), ``error.type`` and an ERROR status when it failed;
* histogram ``rime.time_to_first_audio`` (s): a stream's time to first audio, or an HTTP
  synthesis's time to first byte, by ``rime.transport`` (``websocket`` / ``http``) and
  ``rime.model``;
* counters ``rime.streams`` (by ``rime.transport``, ``rime.model``, ``rime.outcome``),
  ``rime.retries``, ``rime.failures`` (by ``error.type``), ``rime.sockets.opened`` (every
  handshake, the pool's spares included) and ``rime.sockets.reused`` (streams that took a
  socket the pool had already open).
"""

from __future__ import annotations

import logging
from dataclasses import fields
from typing import Final

from opentelemetry import metrics, trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.util.types import AttributeValue

from ._metrics import StreamMetrics, SynthesisMetrics
from ._version import __version__

__all__ = ["Telemetry"]

logger = logging.getLogger("rime_trio.metrics")

_SCOPE: Final = "rime_trio"

# Buckets for time to first audio, in seconds: from a loopback emulator's fraction of a
# millisecond to a struggling server's seconds, finest where voice agents care (50-500 ms).
# OpenTelemetry's default buckets are meant for milliseconds (0, 5, 10, ... 10000) and would
# put every stream in the first two.
TTFA_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
)


class Telemetry:
    """Spans and instruments of one client (see the module docstring).

    :param tracer_provider: the provider for spans (default: the global one).
    :param meter_provider: the provider for metrics (default: the global one).
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(_SCOPE, __version__, tracer_provider)
        meter = metrics.get_meter(_SCOPE, __version__, meter_provider)
        self._ttfa = meter.create_histogram(
            "rime.time_to_first_audio",
            unit="s",
            description="Time to first audio: from the first text pushed to the first audio "
            "delivered (streams), from the request to the first body byte (HTTP)",
            explicit_bucket_boundaries_advisory=TTFA_BUCKETS,
        )
        self._streams = meter.create_counter(
            "rime.streams", unit="{stream}", description="Streams and HTTP syntheses finished"
        )
        self._retries = meter.create_counter(
            "rime.retries", unit="{retry}", description="Failures retried on a new socket"
        )
        self._failures = meter.create_counter(
            "rime.failures", unit="{failure}", description="Streams and syntheses that failed"
        )
        self._opened = meter.create_counter(
            "rime.sockets.opened", unit="{socket}", description="WebSocket handshakes made"
        )
        self._reused = meter.create_counter(
            "rime.sockets.reused",
            unit="{socket}",
            description="Streams that took a socket the pool had already open",
        )

    def start_span(self, name: str) -> Span:
        """Start the span of a stream or synthesis (a child of the caller's current span)."""
        return self._tracer.start_span(name, kind=SpanKind.CLIENT)

    def socket_opened(self) -> None:
        """Count a handshake (the pool calls it; never raises)."""
        try:
            self._opened.add(1)
        except Exception:
            logger.exception("OpenTelemetry: counting a socket failed (ignored)")

    def record(self, metrics: StreamMetrics | SynthesisMetrics, span: Span | None) -> None:
        """Record the final *metrics* of a stream or synthesis, and end its *span*."""
        transport = "websocket" if isinstance(metrics, StreamMetrics) else "http"
        try:
            self._count(metrics, transport)
        finally:
            if span is not None:  # ended whatever happened to the instruments
                _end(span, metrics, transport)

    def _count(self, metrics: StreamMetrics | SynthesisMetrics, transport: str) -> None:
        common: dict[str, AttributeValue] = {
            "rime.transport": transport,
            "rime.model": metrics.model,
        }
        if isinstance(metrics, StreamMetrics):
            first_audio = metrics.time_to_first_audio
            if metrics.retries:
                self._retries.add(metrics.retries, common)
            if metrics.connection_reused:
                self._reused.add(1)
        else:
            first_audio = metrics.time_to_first_byte
        if first_audio is not None:
            self._ttfa.record(first_audio, common)
        self._streams.add(1, {**common, "rime.outcome": metrics.outcome})
        if metrics.error_type is not None:
            self._failures.add(1, {**common, "error.type": metrics.error_type})


def _end(span: Span, metrics: StreamMetrics | SynthesisMetrics, transport: str) -> None:
    attributes: dict[str, AttributeValue] = {"rime.transport": transport}
    for field in fields(metrics):
        value = getattr(metrics, field.name)
        if value is not None:
            attributes[f"rime.{field.name}"] = value
    if metrics.error_type is not None:
        attributes["error.type"] = metrics.error_type
        span.set_status(Status(StatusCode.ERROR, metrics.error_type))
    span.set_attributes(attributes)
    span.end()
