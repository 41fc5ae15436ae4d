"""The emulator's settings and the record of what it saw and sent (plain data, no I/O)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

from .._segment import MAX_TEXT_CHARS
from ._faults import Fault
from ._v1_readings import V1Readings
from ._ws3_readings import Ws3Readings

__all__ = ["DEFAULT_VOICES", "EmulatorConfig", "EmulatorStats", "RunRecord"]

_ENGLISH = ["albion", "astra", "celeste", "cove", "luna", "orion"]
#: The emulator's own small voice list (not Rime's catalog), served at
#: ``/data/voices/all-v2.json`` in Rime's shape: model, then ISO 639-2 language, then speakers.
DEFAULT_VOICES: dict[str, dict[str, list[str]]] = {
    model: {"eng": _ENGLISH, "spa": ["aurelio", "celestino"]}
    for model in ("coda", "arcana", "mistv3", "mistv2", "mist")
}


@dataclass(slots=True)
class EmulatorConfig:
    """How the emulator behaves. Mutable: a test may change it while the server runs; each
    new connection or request reads it afresh (faults are also read live, mid-connection).

    :ivar api_key: the bearer key it accepts.
    :ivar time_to_first_chunk: seconds between a run being ready and its first chunk.
    :ivar real_time_factor: 0 sends audio as fast as possible; 1.0 paces it in real time;
        above 1 is a server slower than real time.
    :ivar chunk_bytes: size of each audio chunk (the last of a run may be shorter).
    :ivar readings: which reading of each open point of Rime's ``/ws3`` docs the server plays
        (see :class:`Ws3Readings`); fixed per connection when it opens.
    :ivar max_sockets: concurrent WebSocket limit; past it handshakes get 429
        ``Currently at websocket limit`` (None: no limit).
    :ivar max_text_chars: longest text message accepted before closing with 1011
        ``400: text is too long`` (on v1: an ``invalid_input`` error ends the context).
    :ivar faults: misbehaviours to inject, each for all or some connections.
    :ivar v1_readings: which reading of each open point of Rime's WebSocket v1 (``/ws``) the
        server plays (see :class:`V1Readings`); fixed per connection when it opens.
    :ivar voices: the speakers it knows, per model and language (served at
        ``/data/voices/all-v2.json``, no key needed).
    :ivar voice_list_shape: ``"v2"`` serves the list as Rime does today (model, language,
        speakers); ``"legacy"`` in the older shape (model, speakers).
    :ivar unknown_speaker: what a speaker missing from *voices* gets. Rime's docs do not say
        when it refuses one on ``/ws3``, so both readings: ``"reject"`` refuses the handshake
        with 400, ``"error_event"`` accepts the socket and answers its first synthesis with
        an ``error`` event. HTTP refuses with 400 either way; ``"accept"`` speaks any name.
    """

    api_key: str = "emulator-key"
    time_to_first_chunk: float = 0.0
    real_time_factor: float = 0.0
    chunk_bytes: int = 4800
    readings: Ws3Readings = field(default_factory=Ws3Readings)
    max_sockets: int | None = None
    max_text_chars: int = MAX_TEXT_CHARS
    faults: list[Fault] = field(default_factory=list)
    v1_readings: V1Readings = field(default_factory=V1Readings)
    voices: dict[str, dict[str, list[str]]] = field(default_factory=lambda: DEFAULT_VOICES)
    voice_list_shape: Literal["v2", "legacy"] = "v2"
    unknown_speaker: Literal["reject", "error_event", "accept"] = "reject"

    def knows_speaker(self, model: str, speaker: str) -> bool:
        """Whether *speaker* is a voice of *model* here (always, with ``"accept"``)."""
        if self.unknown_speaker == "accept":
            return True
        return any(speaker in names for names in self.voices.get(model, {}).values())

    def voice_list(self) -> object:
        """The voice list document in :attr:`voice_list_shape`."""
        if self.voice_list_shape == "legacy":
            return {
                model: sorted({s for names in languages.values() for s in names})
                for model, languages in self.voices.items()
            }
        return self.voices


@dataclass(slots=True)
class RunRecord:
    """One synthesis run on a ``/ws3`` connection, as the emulator carried it out. Filled in
    while the run goes out, so a test that looks mid-run sees the audio sent so far.

    :ivar text: the text synthesized ("" for a run that only answers with a ``done``).
    :ivar context_id: the contextId on its events.
    :ivar audio: audio bytes actually sent for it.
    :ivar abandoned: a ``clear`` stopped it (``Ws3Readings.clear_stops_synthesis``).
    :ivar done: a ``done`` was sent after it.
    """

    text: str
    context_id: str | None
    audio: bytearray = field(default_factory=bytearray)
    abandoned: bool = False
    done: bool = False


@dataclass(slots=True)
class EmulatorStats:
    """What the emulator saw and sent; tests assert on it. WebSocket connections are numbered
    from 1 in the order their handshakes arrived (the numbers ``Fault.connections`` uses)."""

    handshakes: int = 0  # WebSocket connections accepted
    rejected: int = 0  # WebSocket handshakes refused
    open_sockets: int = 0  # WebSocket connections open right now
    http_requests: int = 0
    #: every client message received, per connection number, in order
    received: dict[int, list[object]] = field(default_factory=lambda: defaultdict(list))
    #: audio bytes sent, per wire contextId, in order
    audio: dict[str | None, bytearray] = field(default_factory=lambda: defaultdict(bytearray))
    #: texts synthesized, per wire contextId
    texts: dict[str | None, list[str]] = field(default_factory=lambda: defaultdict(list))
    #: synthesis runs, per connection number, in order
    runs: dict[int, list[RunRecord]] = field(default_factory=lambda: defaultdict(list))

    def audio_for(self, context_prefix: str) -> bytes:
        """All audio sent for wire context ids starting with *context_prefix*, in order of
        their sequence numbers (one client stream)."""
        keys = [k for k in self.audio if k is not None and k.startswith(context_prefix)]
        keys.sort(key=lambda k: (len(k), k))
        return b"".join(bytes(self.audio[k]) for k in keys)

    def connection_audio(self, connection: int) -> bytes:
        """All audio sent on WebSocket connection number *connection*, in the order sent."""
        return b"".join(bytes(run.audio) for run in self.runs.get(connection, []))
