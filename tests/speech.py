"""Clients of the emulator, reading a whole stream (callers bound the wait with their own
cancel scope), and finding a stream's share of what the emulator did, over /ws3 or v1."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from rime_api import text_to_speech_pb2 as tts

from rime_trio import AudioChunk, RimeClient, SpeechStream, WordTimestamp
from rime_trio._protocol import TextMessage
from rime_trio._protocol_v1 import Frame, V1StreamState
from rime_trio.testing import find_bursts

if TYPE_CHECKING:
    from rime_trio.testing import RimeEmulator, RunRecord

RATE = 8000  # the sample rate the tests ask for: little audio to compare, in whole samples


def client_for(
    emulator: RimeEmulator, protocol: str = "ws3", *, sample_rate: int = RATE, **kwargs: Any
) -> RimeClient:
    """A client of *emulator* with its key, over *protocol*: ``"ws3"`` (``/ws3``), ``"v1"``
    (Rime's WebSocket v1, ``/ws``) or ``"http"``; *kwargs* go to :class:`RimeClient`."""
    base_url = {"ws3": emulator.ws_url, "v1": emulator.v1_url, "http": emulator.http_url}
    return RimeClient(
        base_url=base_url[protocol],
        api_key=emulator.config.api_key,
        sample_rate=sample_rate,
        **kwargs,
    )


async def read_all(stream: SpeechStream) -> tuple[bytes, list[WordTimestamp]]:
    """All audio and word timestamps of *stream*, in order."""
    audio = bytearray()
    words: list[WordTimestamp] = []
    async for event in stream:
        if isinstance(event, AudioChunk):
            audio += event.data
        else:
            words.append(event)
    return bytes(audio), words


def assert_words_on_the_audio(audio: bytes, words: list[WordTimestamp]) -> None:
    """Each word's times are those of its burst of sound in *audio* (at ``RATE``)."""
    bursts = find_bursts(audio, RATE)
    assert len(bursts) == len(words)
    for word, (start, end) in zip(words, bursts, strict=True):
        assert word.start == pytest.approx(start, abs=0.005), word
        assert word.end == pytest.approx(end, abs=0.005), word


def wire_prefix(stream: SpeechStream) -> str:
    """The prefix of every contextId *stream* put on the wire (its per-stream random tag)."""
    return stream._state.tag + "#"


def client_tasks() -> list[str]:
    """The names of the running tasks that belong to rime-trio's client (its streams and its
    pool), on any backend; the emulator's own are left out."""
    import anyio

    return [
        task.name
        for task in anyio.get_running_tasks()
        if task.name.startswith("rime_trio.") and not task.name.startswith("rime_trio.testing")
    ]


def synthesized(emulator: RimeEmulator, stream: SpeechStream) -> bytes:
    """Every byte of audio the emulator sent for *stream* (over /ws3), run by run, in order."""
    return b"".join(bytes(r.audio) for r in Ws3Records(emulator).runs(stream))


def texts_sent(emulator: RimeEmulator, stream: SpeechStream) -> str:
    prefix = wire_prefix(stream)
    return "".join(
        m.text
        for messages in emulator.stats.received.values()
        for m in messages
        if isinstance(m, TextMessage) and (m.context_id or "").startswith(prefix)
    )


class V1Contexts(defaultdict[str, list[str]]):
    """The wire ids of the v1 contexts each stream started, by the stream's ``context_id``
    (a stream has one per ``clear()``, and one more per flush that had text to force), and
    how many of them each had when its last ``clear()`` took effect (:attr:`cleared`)."""

    def __init__(self) -> None:
        super().__init__(list)
        self.cleared: dict[str, int] = {}

    def since_last_clear(self, context_id: str) -> list[str]:
        return self[context_id][self.cleared.get(context_id, 0) :]


@contextmanager
def v1_contexts() -> Iterator[V1Contexts]:
    """While in the block, record the wire id of every v1 context each stream starts, by the
    stream's ``context_id``, and where its clears fell (spying on the state's frames and
    interrupts: the library keeps no such list)."""
    started = V1Contexts()
    frames_of, interrupt_of = V1StreamState.frames, V1StreamState.interrupt

    def frames(self: V1StreamState, messages: list[str], *, end: bool) -> list[Frame]:
        before = self.wire_id
        made = frames_of(self, messages, end=end)
        if self.wire_id is not None and self.wire_id != before:
            started[self.context_id].append(self.wire_id)
        return made

    def interrupt(self: V1StreamState) -> list[Frame]:
        started.cleared[self.context_id] = len(started[self.context_id])
        return interrupt_of(self)

    V1StreamState.frames = frames  # type: ignore[method-assign]
    V1StreamState.interrupt = interrupt  # type: ignore[method-assign]
    try:
        yield started
    finally:
        V1StreamState.frames = frames_of  # type: ignore[method-assign]
        V1StreamState.interrupt = interrupt_of  # type: ignore[method-assign]


@dataclass(frozen=True, slots=True)
class Ws3Records:
    """A stream's share of what the emulator did over /ws3, found by the stream's wire prefix
    (on whichever sockets it spoke)."""

    emulator: RimeEmulator

    def runs(self, stream: SpeechStream) -> list[RunRecord]:
        prefix = wire_prefix(stream)
        runs = itertools.chain.from_iterable(self.emulator.stats.runs.values())
        return [r for r in runs if (r.context_id or "").startswith(prefix)]

    def runs_after_last_clear(self, stream: SpeechStream) -> list[RunRecord]:
        """The runs of the messages sent after the stream's last clear (tagged past it)."""
        cleared = stream._state._cleared_seq
        return [
            r for r in self.runs(stream) if int((r.context_id or "#0").rsplit("#", 1)[1]) > cleared
        ]

    def text_sent(self, stream: SpeechStream) -> str:
        return texts_sent(self.emulator, stream)


@dataclass(frozen=True, slots=True)
class V1Records:
    """A stream's share of what the emulator did over v1, found by the wire ids of the
    contexts it started (*started*, from :func:`v1_contexts`) on the emulator's newest
    socket: the one the streams shared (context ids are per socket)."""

    emulator: RimeEmulator
    started: V1Contexts

    def runs(self, stream: SpeechStream) -> list[RunRecord]:
        return self._runs(self.started[stream.context_id])

    def runs_after_last_clear(self, stream: SpeechStream) -> list[RunRecord]:
        """The runs of the contexts the stream started after its last clear."""
        return self._runs(self.started.since_last_clear(stream.context_id))

    def text_sent(self, stream: SpeechStream) -> str:
        ids = set(self.started[stream.context_id])
        requests = self.emulator.stats.received[max(self.emulator.stats.received)]
        return "".join(
            r.text
            for r in requests
            if isinstance(r, tts.WebSocketRequest) and r.HasField("text") and r.context_id in ids
        )

    def _runs(self, ids: list[str]) -> list[RunRecord]:
        """The runs of the contexts *ids*, context by context in that order (contexts a
        flush ended speak one after another, and their runs may interleave on the wire)."""
        runs = self.emulator.stats.runs[max(self.emulator.stats.received)]
        return [r for context in ids for r in runs if r.context_id == context]


@contextmanager
def stream_records(emulator: RimeEmulator, protocol: str) -> Iterator[Ws3Records | V1Records]:
    """Where to find each stream's runs and text in *emulator*'s records, for the streams
    started over *protocol* (``"ws3"`` or ``"v1"``) in the block; usable after it."""
    if protocol == "ws3":
        yield Ws3Records(emulator)
        return
    with v1_contexts() as started:
        yield V1Records(emulator, started)
