"""Per-stream and per-synthesis metrics, the on_metrics hook, the log line, OpenTelemetry.

Times come from the event loop's clock: on trio these tests run under a MockClock, where the
emulator's delays are virtual seconds and the metrics can be checked exactly; asyncio runs
them in real time, where only bounds that cannot flake are checked.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import trio.testing
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from rime_trio import (
    AudioChunk,
    ConfigurationError,
    RimeClient,
    ServerError,
    StreamMetrics,
    StreamSettings,
    SynthesisMetrics,
)
from rime_trio._metrics import MetricsSink, logfmt, outcome_of
from rime_trio.testing import EmulatorConfig, Fault, RimeEmulator, open_emulator, render_speech

from .conftest import API_KEY
from .speech import RATE, client_for, read_all

TEXT = "Hello there. How are you today?"
PIECES = ["Hello", " there.", " How are", " you today?"]
FAST_RETRIES = StreamSettings(retries=2, retry_backoff=0.01, audio_timeout=2.0)

Metrics = StreamMetrics | SynthesisMetrics

pytestmark = pytest.mark.anyio


async def speak(client: RimeClient, *pieces: str) -> tuple[StreamMetrics, bytes]:
    """One stream of *pieces*, read to its end: its final metrics and its audio."""
    async with client.stream() as stream:
        for piece in pieces:
            await stream.push_text(piece)
        await stream.end_input()
        with anyio.fail_after(30):
            audio, _ = await read_all(stream)
    return stream.metrics, audio


def seconds_of(audio: bytes) -> float:
    return len(audio) / (RATE * 2)  # 16-bit mono PCM


# ----------------------------------------------------------------------------- stream metrics


@pytest.mark.virtual_clock(autojump_threshold=0)
async def test_stream_metrics_are_filled_and_ttfa_is_the_servers_delay(
    virtual_clock: trio.testing.MockClock | None,
) -> None:
    # On trio the emulator's delay is virtual, so the time to first audio is exactly it;
    # on asyncio (real time) it can only be at least the delay.
    delay = 0.5 if virtual_clock is not None else 0.1
    async with (
        open_emulator(EmulatorConfig(time_to_first_chunk=delay)) as emulator,
        client_for(emulator) as client,
    ):
        metrics, audio = await speak(client, *PIECES)
    assert metrics.time_to_first_audio is not None
    if virtual_clock is not None:
        assert metrics.time_to_first_audio == pytest.approx(delay, abs=1e-3)
    else:
        assert metrics.time_to_first_audio >= delay - 1e-3
    assert metrics.stream_open_seconds >= metrics.time_to_first_audio
    assert metrics.outcome == "completed"
    assert metrics.error_type is None
    assert metrics.characters_sent == len(TEXT)
    assert metrics.audio_seconds == pytest.approx(seconds_of(audio))
    assert (
        audio
        == render_speech("Hello there. ", RATE).pcm + render_speech("How are you today? ", RATE).pcm
    )
    assert metrics.connection_reused is False  # no prewarm: the stream made the handshake
    assert metrics.connect_seconds is not None
    assert metrics.connect_seconds <= metrics.time_to_first_audio
    assert (metrics.retries, metrics.foreign_events_dropped) == (0, 0)
    assert (metrics.model, metrics.speaker) == (client.options.model, client.options.speaker)


async def test_metrics_are_a_snapshot_while_the_stream_runs(rime_emulator: RimeEmulator) -> None:
    async with client_for(rime_emulator) as client, client.stream() as stream:
        before = stream.metrics
        assert before.outcome == "running"
        assert before.time_to_first_audio is None
        assert before.characters_sent == 0
        await stream.push_text("One sentence here. ")
        with anyio.fail_after(10):
            while not isinstance(await stream.receive(), AudioChunk):
                pass
        during = stream.metrics
        assert during.outcome == "running"
        assert during.time_to_first_audio is not None
        assert during.audio_seconds > 0
        assert during.characters_sent == len("One sentence here. ")
        await stream.end_input()
        with anyio.fail_after(10):
            await read_all(stream)
    final = stream.metrics
    assert final.outcome == "completed"
    assert stream.metrics is final  # frozen once the stream has ended
    assert final.audio_seconds == pytest.approx(stream.audio_seconds)


async def test_the_second_stream_takes_the_spare_socket(rime_emulator: RimeEmulator) -> None:
    """Reused means the pool had the socket open before the stream asked: no handshake on
    its path. Every stream still has a socket of its own (the spare, opened in the
    background while the first one spoke)."""
    async with client_for(rime_emulator) as client:
        first, _ = await speak(client, TEXT)
        await client.pool.wait_teardowns()  # the spare's handshake is done
        second, _ = await speak(client, TEXT)
    assert first.connection_reused is False
    assert first.connect_seconds is not None
    assert second.connection_reused is True
    assert second.connect_seconds is None
    assert rime_emulator.stats.handshakes >= 2  # a socket each, never shared


async def test_a_prewarmed_socket_counts_as_reused(rime_emulator: RimeEmulator) -> None:
    async with client_for(rime_emulator) as client:
        await client.prewarm()
        metrics, _ = await speak(client, TEXT)
    assert metrics.connection_reused is True
    assert metrics.connect_seconds is None


async def test_retries_are_counted_when_a_connection_drops_before_audio() -> None:
    async with open_emulator(tcp_faults=True) as emulator:
        emulator.config.faults = [Fault("drop", frozenset({1}), after_chunks=0)]
        async with client_for(emulator, stream_settings=FAST_RETRIES) as client:
            metrics, audio = await speak(client, TEXT)
    assert metrics.retries == 1
    assert metrics.outcome == "completed"
    assert metrics.characters_sent == len(TEXT)  # re-sent on the new socket, counted once
    assert metrics.audio_seconds == pytest.approx(seconds_of(audio))


# ----------------------------------------------------------------------------- outcomes


async def test_a_stream_that_fails_reports_the_error_class(rime_emulator: RimeEmulator) -> None:
    seen: list[Metrics] = []
    rime_emulator.config.faults = [Fault("error_event", body="nope")]
    async with client_for(rime_emulator, on_metrics=seen.append) as client:
        with pytest.raises(ServerError):
            await speak(client, TEXT)
    [metrics] = seen
    assert isinstance(metrics, StreamMetrics)
    assert (metrics.outcome, metrics.error_type) == ("failed", "ServerError")
    assert metrics.time_to_first_audio is None
    assert metrics.audio_seconds == 0.0


async def test_the_callers_own_error_fails_the_stream(rime_emulator: RimeEmulator) -> None:
    seen: list[Metrics] = []
    async with client_for(rime_emulator, on_metrics=seen.append) as client:
        with pytest.raises(ZeroDivisionError):
            async with client.stream() as stream:
                await stream.push_text(TEXT)
                with anyio.fail_after(10):
                    await stream.receive()
                _ = 1 / 0
    assert [(m.outcome, m.error_type) for m in seen] == [("failed", "ZeroDivisionError")]


async def test_leaving_early_and_cancelling_are_cancelled(rime_emulator: RimeEmulator) -> None:
    seen: list[Metrics] = []
    async with client_for(rime_emulator, on_metrics=seen.append) as client:
        async with client.stream() as stream:
            await stream.push_text(TEXT)
            with anyio.fail_after(10):
                await stream.receive()  # then leave the block without reading the rest
        with anyio.CancelScope() as scope:
            async with client.stream() as cancelled:
                await cancelled.push_text(TEXT)
                with anyio.fail_after(10):
                    await cancelled.receive()
                scope.cancel()
                await anyio.sleep_forever()
    assert [(m.outcome, m.error_type) for m in seen] == [("cancelled", None)] * 2
    assert seen[0] is stream.metrics
    assert seen[1] is cancelled.metrics
    assert stream.metrics.time_to_first_audio is not None
    assert cancelled.metrics.time_to_first_audio is not None


def test_outcome_rules() -> None:
    failure, mine = ServerError("x"), ValueError("y")
    cancelled = trio.Cancelled._create()
    assert outcome_of(complete=True, failure=None, error=None) == ("completed", None)
    assert outcome_of(complete=True, failure=None, error=mine) == ("completed", None)
    assert outcome_of(complete=False, failure=failure, error=mine) == ("failed", "ServerError")
    assert outcome_of(complete=False, failure=None, error=mine) == ("failed", "ValueError")
    assert outcome_of(complete=False, failure=None, error=cancelled) == ("cancelled", None)
    assert outcome_of(complete=False, failure=None, error=None) == ("cancelled", None)


# ----------------------------------------------------------------------------- HTTP


@pytest.mark.virtual_clock(autojump_threshold=0)
async def test_http_synthesis_metrics_and_time_to_first_byte(
    virtual_clock: trio.testing.MockClock | None,
) -> None:
    delay = 0.5 if virtual_clock is not None else 0.1
    seen: list[Metrics] = []
    async with (
        open_emulator(EmulatorConfig(time_to_first_chunk=delay)) as emulator,
        client_for(emulator, "http", on_metrics=seen.append) as client,
    ):
        result = await client.synthesize(TEXT)
        async with client.synthesize_chunks(TEXT) as chunks:
            running = chunks.metrics
            audio = b"".join([chunk.data async for chunk in chunks])
    assert running.outcome == "running"
    assert len(seen) == 2
    assert result.metrics is seen[0]
    assert chunks.metrics is seen[1]
    for metrics, data in ((result.metrics, result.audio), (chunks.metrics, audio)):
        assert isinstance(metrics, SynthesisMetrics)
        assert metrics.time_to_first_byte is not None
        if virtual_clock is not None:
            assert metrics.time_to_first_byte == pytest.approx(delay, abs=1e-3)
        else:
            assert metrics.time_to_first_byte >= delay - 1e-3
        assert metrics.total_seconds >= metrics.time_to_first_byte
        assert metrics.characters == len(TEXT)
        assert metrics.audio_seconds == pytest.approx(seconds_of(data))
        assert (metrics.outcome, metrics.error_type) == ("completed", None)


async def test_http_synthesis_left_early_is_cancelled(rime_emulator: RimeEmulator) -> None:
    seen: list[Metrics] = []
    rime_emulator.config.chunk_bytes = 100
    async with client_for(rime_emulator, "http", on_metrics=seen.append) as client:
        async with client.synthesize_chunks("Stop after one chunk, please.") as chunks:
            async for _ in chunks:
                break
    assert [(m.outcome, m.error_type) for m in seen] == [("cancelled", None)]
    assert seen[0] is chunks.metrics


async def test_http_refusal_is_a_failed_synthesis(rime_emulator: RimeEmulator) -> None:
    seen: list[Metrics] = []
    async with RimeClient(
        base_url=rime_emulator.http_url, api_key="not-the-key", on_metrics=seen.append
    ) as client:
        with pytest.raises(Exception, match="401"):
            await client.synthesize(TEXT)
    [metrics] = seen
    assert (metrics.outcome, metrics.error_type) == ("failed", "APIStatusError")
    assert isinstance(metrics, SynthesisMetrics)
    assert metrics.time_to_first_byte is None


# ----------------------------------------------------------------------------- the hook


async def test_the_hook_is_called_once_per_stream_and_per_synthesis(
    rime_emulator: RimeEmulator,
) -> None:
    seen: list[Metrics] = []
    async with client_for(rime_emulator, on_metrics=seen.append) as client:
        first, _ = await speak(client, TEXT)
        second, _ = await speak(client, "Another one.")
        result = await client.synthesize("Over the socket.")
        async with client.synthesize_chunks("Chunks over the socket.") as chunks:
            assert chunks.metrics.outcome == "running"
            async for _ in chunks:
                pass
    assert seen == [first, second, result.metrics, chunks.metrics]
    assert seen[0] is first
    assert len({m.context_id for m in seen if isinstance(m, StreamMetrics)}) == 4
    assert all(isinstance(m, StreamMetrics) and m.outcome == "completed" for m in seen)


async def test_a_failing_hook_is_logged_and_never_reaches_the_stream(
    rime_emulator: RimeEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    def broken(metrics: Metrics) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("the dashboard is down")

    with caplog.at_level(logging.WARNING, logger="rime_trio"):
        async with client_for(rime_emulator, on_metrics=broken) as client:
            metrics, audio = await speak(client, TEXT)
            again, _ = await speak(client, TEXT)
    assert calls == 2
    assert (metrics.outcome, again.outcome) == ("completed", "completed")
    assert (
        audio
        == render_speech("Hello there. ", RATE).pcm + render_speech("How are you today? ", RATE).pcm
    )
    failures = [r for r in caplog.records if "on_metrics hook raised" in r.getMessage()]
    assert len(failures) == 2
    assert all(r.name == "rime_trio.metrics" and r.levelno == logging.ERROR for r in failures)


# ----------------------------------------------------------------------------- the log line

SECRET = "sk-metrics-never-log-me-42"
SECRET_TEXT = "Zanzibar quokkas whistle quietly."


async def test_one_info_line_per_stream_and_synthesis_without_text_or_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG):  # every logger, every level
        async with open_emulator(EmulatorConfig(api_key=SECRET)) as emulator:
            async with RimeClient(base_url=emulator.ws_url, api_key=SECRET) as client:
                async with client.stream() as stream:
                    await stream.push_text(SECRET_TEXT)
                    await stream.end_input()
                    with anyio.fail_after(10):
                        await read_all(stream)
            async with RimeClient(base_url=emulator.http_url, api_key=SECRET) as client:
                await client.synthesize(SECRET_TEXT)
    lines = [r for r in caplog.records if r.name == "rime_trio.metrics"]
    assert [r.levelno for r in lines] == [logging.INFO, logging.INFO]
    stream_line, http_line = (r.getMessage() for r in lines)
    assert stream_line.startswith(f"stream context_id={stream.context_id} ")
    assert "outcome=completed" in stream_line
    assert "time_to_first_audio=" in stream_line
    assert "connection_reused=false" in stream_line
    assert http_line.startswith("synthesis ")
    assert "time_to_first_byte=" in http_line
    assert f"characters={len(SECRET_TEXT)}" in http_line
    assert getattr(lines[0], "rime_trio_metrics", None) is stream.metrics  # structured logs
    everything = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert SECRET not in everything
    for word in ("Zanzibar", "quokkas", "whistle"):
        assert word not in everything


def test_logfmt_quotes_values_that_need_it() -> None:
    metrics = StreamMetrics(
        context_id='a "b" c',
        model="arcana",
        speaker="astra",
        time_to_first_audio=None,
        stream_open_seconds=1.5,
        connect_seconds=None,
        connection_reused=True,
        characters_sent=3,
        audio_seconds=0.25,
        retries=0,
        foreign_events_dropped=0,
        outcome="completed",
    )
    line = logfmt(metrics)
    assert line.startswith('context_id="a \\"b\\" c" model=arcana speaker=astra ')
    assert "time_to_first_audio=none" in line
    assert "connection_reused=true" in line
    assert "audio_seconds=0.250000" in line
    # A caller's id cannot break the line or forge another one.
    forged = logfmt(dataclasses.replace(metrics, context_id="x\noutcome=failed\r\\"))
    assert "\n" not in forged
    assert "\r" not in forged
    assert forged.startswith('context_id="x\\noutcome=failed\\r\\\\" model=arcana')


# ----------------------------------------------------------------------------- OpenTelemetry


@pytest.fixture
def otel() -> Iterator[tuple[TracerProvider, InMemorySpanExporter, MeterProvider, Any]]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield tracer_provider, exporter, meter_provider, reader
    tracer_provider.shutdown()
    meter_provider.shutdown()


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Every data point the reader holds, by instrument name."""
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "rime_trio"
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def total(found: dict[str, list[Any]], name: str, **attributes: object) -> int:
    return sum(
        p.value
        for p in found.get(name, [])
        if all(p.attributes.get(k.replace("_", ".")) == v for k, v in attributes.items())
    )


async def test_opentelemetry_spans_and_metrics(
    otel: tuple[TracerProvider, InMemorySpanExporter, MeterProvider, InMemoryMetricReader],
) -> None:
    tracer_provider, exporter, meter_provider, reader = otel
    seen: list[Metrics] = []
    async with open_emulator(tcp_faults=True) as emulator:
        # Stream 1 loses its first socket before any audio (a retry); stream 2 takes the
        # spare; stream 3 gets an error event (a failure) on the next spare.
        emulator.config.faults = [Fault("drop", frozenset({1}), after_chunks=0)]
        async with client_for(
            emulator,
            stream_settings=FAST_RETRIES,
            on_metrics=seen.append,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        ) as client:
            await speak(client, TEXT)
            await client.pool.wait_teardowns()
            await speak(client, TEXT)
            await client.pool.wait_teardowns()
            emulator.config.faults = [Fault("error_event")]
            with pytest.raises(ServerError):
                await speak(client, TEXT)
            await client.pool.wait_teardowns()
            opened = client.pool.stats.opened
        emulator.config.faults = []
        async with client_for(
            emulator,
            "http",
            on_metrics=seen.append,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        ) as client:
            await client.synthesize(TEXT)

    spans: tuple[ReadableSpan, ...] = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["rime.stream"] * 3 + ["rime.synthesis"]
    for span, metrics in zip(spans, seen, strict=True):
        assert span.attributes is not None
        assert span.attributes["rime.outcome"] == metrics.outcome
        if isinstance(metrics, StreamMetrics):
            assert span.attributes["rime.transport"] == "websocket"
            assert span.attributes["rime.context_id"] == metrics.context_id
            assert span.attributes["rime.characters_sent"] == len(TEXT)
            assert span.attributes["rime.connection_reused"] == metrics.connection_reused
            assert span.attributes["rime.retries"] == metrics.retries
            if metrics.time_to_first_audio is not None:
                assert span.attributes["rime.time_to_first_audio"] == metrics.time_to_first_audio
            else:
                assert "rime.time_to_first_audio" not in span.attributes
        else:
            assert span.attributes["rime.transport"] == "http"
            assert span.attributes["rime.time_to_first_byte"] == metrics.time_to_first_byte
    failed = spans[2]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "ServerError"
    assert all(s.status.status_code is StatusCode.UNSET for s in (spans[0], spans[1], spans[3]))

    stream_metrics = [m for m in seen if isinstance(m, StreamMetrics)]
    assert [m.retries for m in stream_metrics] == [1, 0, 0]
    assert [m.connection_reused for m in stream_metrics] == [False, True, True]
    found = points(reader)
    assert total(found, "rime.streams", rime_transport="websocket", rime_outcome="completed") == 2
    assert total(found, "rime.streams", rime_transport="websocket", rime_outcome="failed") == 1
    assert total(found, "rime.streams", rime_transport="http", rime_outcome="completed") == 1
    assert total(found, "rime.retries") == 1
    assert total(found, "rime.failures", error_type="ServerError") == 1
    assert total(found, "rime.sockets.reused") == 2
    assert total(found, "rime.sockets.opened") == opened
    histograms: list[HistogramDataPoint] = found["rime.time_to_first_audio"]
    by_transport = {(p.attributes or {})["rime.transport"]: p for p in histograms}
    websocket, http = by_transport["websocket"], by_transport["http"]
    ttfas = [m.time_to_first_audio for m in stream_metrics if m.time_to_first_audio is not None]
    assert websocket.count == 2  # the failed stream had no audio
    assert websocket.sum == pytest.approx(sum(ttfas))
    assert websocket.explicit_bounds[:3] == (0.001, 0.0025, 0.005)  # seconds, not ms
    assert http.count == 1


async def test_telemetry_without_an_sdk_is_a_no_op(rime_emulator: RimeEmulator) -> None:
    async with client_for(rime_emulator, telemetry=True) as client:
        metrics, _ = await speak(client, TEXT)
    assert metrics.outcome == "completed"


def test_telemetry_without_opentelemetry_installed_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "rime_trio._otel", None)  # as if it could not import
    with pytest.raises(ConfigurationError, match=r"rime-trio\[otel\]"):
        RimeClient(base_url="ws://127.0.0.1:1", api_key=API_KEY, telemetry=True)
    RimeClient(base_url="ws://127.0.0.1:1", api_key=API_KEY)  # off: nothing to import


def test_importing_rime_trio_does_not_import_opentelemetry() -> None:
    code = "import sys, rime_trio; sys.exit('opentelemetry' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_a_failing_exporter_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def record(self, metrics: Metrics, span: object) -> None:
            raise RuntimeError("exporter down")

    seen: list[Metrics] = []
    sink = MetricsSink(seen.append, Broken())  # type: ignore[arg-type]
    metrics = SynthesisMetrics("arcana", "astra", 0.1, 0.2, 3, 0.5, "completed")
    with caplog.at_level(logging.ERROR, logger="rime_trio"):
        sink.finish(metrics)
    assert seen == [metrics]  # the hook still ran
    assert "recording metrics failed" in caplog.text
