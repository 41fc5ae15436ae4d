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


@contextmanager
def v1_contexts() -> Iterator[dict[str, list[str]]]:
    """While in the block, record the wire id of every v1 context each stream starts, by the
    stream's ``context_id`` (spying on the state's frames: the library keeps no such list)."""
    started: dict[str, list[str]] = defaultdict(list)
    original = V1StreamState.frames

    def frames(self: V1StreamState, messages: list[str], *, end: bool) -> list[Frame]:
        before = self.wire_id
        made = original(self, messages, end=end)
        if self.wire_id is not None and self.wire_id != before:
            started[self.context_id].append(self.wire_id)
        return made

    V1StreamState.frames = frames  # type: ignore[method-assign]
    try:
        yield started
    finally:
        V1StreamState.frames = original  # type: ignore[method-assign]


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
    started: dict[str, list[str]]

    def runs(self, stream: SpeechStream) -> list[RunRecord]:
        return self._runs(set(self.started[stream.context_id]))

    def runs_after_last_clear(self, stream: SpeechStream) -> list[RunRecord]:
        """The runs of the context the stream started after its last clear: its last one."""
        return self._runs(set(self.started[stream.context_id][-1:]))

    def text_sent(self, stream: SpeechStream) -> str:
        ids = set(self.started[stream.context_id])
        requests = self.emulator.stats.received[max(self.emulator.stats.received)]
        return "".join(
            r.text
            for r in requests
            if isinstance(r, tts.WebSocketRequest) and r.HasField("text") and r.context_id in ids
        )

    def _runs(self, ids: set[str]) -> list[RunRecord]:
        runs = self.emulator.stats.runs[max(self.emulator.stats.received)]
        return [r for r in runs if r.context_id in ids]


@contextmanager
def stream_records(emulator: RimeEmulator, protocol: str) -> Iterator[Ws3Records | V1Records]:
    """Where to find each stream's runs and text in *emulator*'s records, for the streams
    started over *protocol* (``"ws3"`` or ``"v1"``) in the block; usable after it."""
    if protocol == "ws3":
        yield Ws3Records(emulator)
        return
    with v1_contexts() as started:
        yield V1Records(emulator, started)
