"""Sans-IO model of a Rime WebSocket v1 server (``/ws``): requests in, interleaved events out.

No sockets, no tasks, no clock of its own: the emulator's I/O layer (``_v1_socket``) feeds it
decoded envelopes with the current time and asks it for the next envelope to send; tests drive
it with plain synchronous calls. Speech is rendered by ``_synth`` exactly as for ``/ws3``, so a
sentence sounds the same byte for byte on either protocol.

What it does (PROTOCOL.md, "Rime's WebSocket v1", and the ``rime-api`` proto):

* ``ready`` first, once; then any number of contexts at once, each ``started``, its audio, and
  exactly one terminal event (``done``, ``cancelled`` or ``error``);
* the audio of concurrent contexts goes out interleaved, a chunk of each in turn, so a client
  that mixes contexts up is caught;
* split strategies: ``SENTENCE`` speaks each sentence of each text at once, ``NONE`` each text
  whole, ``ACCUMULATE_SENTENCE`` gathers streamed text until a sentence ends (the rest at
  ``end``); under ``V1Readings(unfinished="hold")`` ``SENTENCE`` holds what follows the last
  sentence end it has seen until more text or ``end``, and ``NONE`` speaks only at ``end``;
* word timestamps (if asked for) once, inside ``done``;
* an ``error`` without context id for requests that concern the connection (the socket stays);
* authentication by the handshake's ``Authorization`` header (checked by the I/O layer) or, for
  a browser that cannot set one, by ``config.authorization`` as the first message: missing or
  wrong, an ``unauthenticated`` error and then the close (:class:`Close`).

Where the docs leave a point open it plays the reading chosen in :class:`V1Readings`.

Not modelled yet (TODO): ``config.defaults`` (defaults merged under every later ``start``; the
emulator accepts a config carrying them but does not merge them), and the language checks
(``start.language`` against ``ready.languages``: any language is spoken).

The speaker loop it is built for::

    model = V1ServerModel(V1Readings())
    model.receive(request, now)            # for each client envelope
    item = model.next_event(now)           # WebSocketResponse, Wait(until) or None (idle)
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from google.protobuf import duration_pb2
from rime_api import text_to_speech_pb2 as tts

from .._options import AudioFormat
from .._protocol_v1 import MAX_CONTEXT_ID_BYTES, SUBPROTOCOL_BINARY, SUBPROTOCOL_JSON, Encoding
from .._segment import MAX_TEXT_CHARS
from ._config import RunRecord
from ._faults import chunk_sizes
from ._synth import encode_audio, render_speech
from ._v1_readings import V1Readings
from ._ws3_readings import Ws3Readings, sentence_ends

__all__ = ["Close", "Outgoing", "V1Readings", "V1ServerModel", "Wait", "select_subprotocol"]

_DEFAULT_RATE: Final = 24_000
_DEFAULT_SPEAKER: Final = "astra"
# The formats the emulator can render (it has no mp3 encoder).
_FORMATS: Final = ("pcm", "mulaw")
# The emulator's own reading of v1's MIME types (never the client's tables, or a client bug
# would be mirrored instead of caught); mu-law's name is a reading (V1Readings.mulaw_mime).
_MIME_FORMATS: Final[dict[str, AudioFormat]] = {"audio/pcm": "pcm", "audio/mpeg": "mp3"}
# The close after a failed authentication (1008: policy violation).
_UNAUTHENTICATED_CLOSE: Final = 1008
# The server's sentence rule for gathered text: an end with nothing after it yet waits ("2."
# may go on with "5ml") under V1Readings.accumulate_holds_final_stop; everything else as for
# /ws3's broad default.
_HOLDING: Final = Ws3Readings(hold_unspaced_end=True)
_ACCUMULATING: Final = {True: _HOLDING, False: Ws3Readings()}
_BROAD: Final = Ws3Readings()
_DEFAULT_READINGS: Final = V1Readings()


def select_subprotocol(
    offered: Sequence[str], readings: V1Readings = _DEFAULT_READINGS
) -> tuple[str | None, Encoding]:
    """The subprotocol to answer a handshake offering *offered* with (None: answer with none),
    and the encoding of the server's frames: the first v1 value offered wins."""
    for subprotocol in offered:
        if subprotocol == SUBPROTOCOL_BINARY:
            return subprotocol, "binary"
        if subprotocol == SUBPROTOCOL_JSON:
            return subprotocol, "json"
    if not offered:
        return None, readings.no_subprotocol
    return None, "json"


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing is due yet: ask again at *until* (or when a request arrives)."""

    until: float


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection now with *code* and *reason* (after a failed authentication)."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An envelope to send now, and the synthesis run its audio belongs to (None otherwise)."""

    response: tts.WebSocketResponse
    record: RunRecord | None = None

    @property
    def kind(self) -> str | None:
        kind: str | None = self.response.WhichOneof("payload")
        return kind


@dataclass(slots=True)
class _Item:
    """What a context sends next: an envelope; or, with no response yet, a sentence to
    render once the context's turn comes (*unit*), or the ``done`` (built when it is sent,
    after every span is known)."""

    due: float
    response: tts.WebSocketResponse | None
    record: RunRecord | None = None
    unit: str | None = None


@dataclass(slots=True)
class _Context:
    context_id: str
    request_id: str
    audio_format: AudioFormat
    sample_rate: int
    split: int
    timestamps: bool
    accepts_text: bool  # streaming and not ended
    time_scale: float = 1.0  # spans are reported before it (the proto)
    buffer: str = ""  # text gathered and not spoken yet (ACCUMULATE_SENTENCE, or held)
    items: deque[_Item] = field(default_factory=deque)
    seconds: float = 0.0  # audio rendered so far (where the next run's times begin)
    spans: list[tts.SpanTimestamp] = field(default_factory=list)
    next_due: float = 0.0  # when the next run's audio may begin (pacing)
    records: list[RunRecord] = field(default_factory=list)
    done_queued: bool = False


class V1ServerModel:
    """What one v1 connection's server does, under *readings*.

    *chunk_sizes* cuts a run's audio (default: ``chunk_bytes`` each); *real_time_factor* and
    *time_to_first_chunk* pace it as ``EmulatorConfig`` describes (0: as fast as possible).
    *records*, if given, receives a :class:`RunRecord` per synthesized sentence (or text); the
    I/O layer adds each chunk to its record's ``audio`` once the chunk is actually sent.
    """

    def __init__(
        self,
        readings: V1Readings | None = None,
        *,
        chunk_sizes: Callable[[int], Sequence[int]] | None = None,
        chunk_bytes: int = 4800,
        max_text_chars: int = MAX_TEXT_CHARS,
        real_time_factor: float = 0.0,
        time_to_first_chunk: float = 0.0,
        records: list[RunRecord] | None = None,
        connection: int = 1,
        speakers: frozenset[str] | None = None,
        api_key: str | None = None,
    ) -> None:
        self.readings = readings if readings is not None else V1Readings()
        #: the voices a start may name (None: any); the host, not the start, picks the model
        self.speakers = speakers
        self._chunk_sizes = chunk_sizes or (lambda total: _even_chunks(total, chunk_bytes))
        self.max_text_chars = max_text_chars
        self.real_time_factor = real_time_factor
        self.time_to_first_chunk = time_to_first_chunk
        self.records: list[RunRecord] = records if records is not None else []
        self._connection = connection
        self._contexts: dict[str, _Context] = {}
        # Contexts with items, in round-robin order. The context objects, not their ids: an
        # id cancelled and started again would otherwise have a stale turn besides its own,
        # and get two turns a round.
        self._turns: deque[_Context] = deque()
        # None: the handshake carried Authorization (the I/O layer checked it). Otherwise the
        # key the first message, a config, must carry.
        self._api_key = api_key
        self.authenticated = api_key is None
        self._closing: Close | None = None
        ready = tts.WebSocketReady(protocol=1, languages=["en", "es"], default_language="en")
        self._urgent: deque[tts.WebSocketResponse] = deque([tts.WebSocketResponse(ready=ready)])
        self._started = 0
        self._configured = False

    # ----------------------------------------------------------------- inspection

    @property
    def open_contexts(self) -> list[str]:
        """Ids of the contexts started and not yet given their terminal event."""
        return list(self._contexts)

    # ----------------------------------------------------------------- input

    def receive(self, request: tts.WebSocketRequest, now: float = 0.0) -> None:
        """Take one client envelope that arrived at time *now*."""
        kind = request.WhichOneof("payload")
        context_id: str = request.context_id
        if self._closing is not None:
            return  # authentication failed: the close is on its way
        if not self.authenticated:
            self._authenticate(request.config if kind == "config" else None)
            return
        if kind is None:
            self.connection_error("invalid_input", "envelope without a payload")
        elif kind == "config":
            self._config(request.config)
        elif kind == "start":
            self._start(context_id, request.start, now)
        elif kind == "text":
            self._text(context_id, request.text, now)
        elif kind == "end":
            self._end(context_id, now)
        else:
            self._cancel(context_id)

    def connection_error(self, kind: str, message: str) -> None:
        """Queue an ``error`` without context id (open contexts keep running)."""
        error = tts.WebSocketError(kind=kind, message=message)
        self._urgent.append(tts.WebSocketResponse(error=error))

    def fail(self, context_id: str, kind: str, message: str) -> None:
        """End *context_id* with an ``error`` now, its pending audio dropped (also used to
        inject faults). A context that is not open is answered all the same."""
        context = self._contexts.pop(context_id, None)
        if context is not None:
            self._drop(context)
        error = tts.WebSocketError(kind=kind, message=message)
        if context is not None:
            error.request_id = context.request_id
        self._urgent.append(tts.WebSocketResponse(context_id=context_id, error=error))

    def _refuse(self, context_id: str, message: str) -> None:
        """An ``error`` naming *context_id* that leaves its open context running (the
        ``reject`` readings)."""
        error = tts.WebSocketError(kind="invalid_input", message=message)
        self._urgent.append(tts.WebSocketResponse(context_id=context_id, error=error))

    def _drop(self, context: _Context) -> None:
        for item in context.items:
            if item.record is not None:
                item.record.abandoned = True
        context.items.clear()

    def _authenticate(self, config: tts.WebSocketConfig | None) -> None:
        """The first message of a handshake without Authorization: a config carrying it."""
        given = config.authorization if config is not None else ""
        accepted = {f"Bearer {self._api_key}", f"Api-Key {self._api_key}"}
        if config is not None and config.HasField("authorization") and given in accepted:
            self.authenticated = True
            self._configured = True
            return
        why = "wrong API key" if given else "the first message must be config.authorization"
        self.connection_error("unauthenticated", f"Unauthorized: {why}")
        self._closing = Close(_UNAUTHENTICATED_CLOSE, "unauthenticated")

    def _config(self, config: tts.WebSocketConfig) -> None:
        if self._started:
            self.connection_error("invalid_input", "config must come before the first start")
        elif self._configured:
            self.connection_error("invalid_input", "at most one config per connection")
        elif config.HasField("authorization"):
            # The handshake carried Authorization already (the emulator requires it).
            self.connection_error("invalid_input", "the handshake already carried Authorization")
        else:
            self._configured = True

    def _start(self, context_id: str, start: tts.SynthesisRequest, now: float) -> None:
        self._started += 1
        if len(context_id.encode()) > MAX_CONTEXT_ID_BYTES:
            self.fail(context_id, "invalid_input", "context id longer than 128 bytes")
            return
        if context_id in self._contexts:
            if self.readings.duplicate_start == "reject":
                self._refuse(context_id, "context is already open")
                return
            # An error names a context and ends it: the open one ends here, with no more audio,
            # so that it still gets exactly one terminal event.
            self.fail(context_id, "invalid_input", "context is already open")
            return
        audio = start.audio_parameters
        mime = audio.audio_format if audio.HasField("audio_format") else "audio/pcm"
        mime = mime.split(";", 1)[0].strip().lower()
        audio_format = _MIME_FORMATS.get(mime)
        if mime == self.readings.mulaw_mime:
            audio_format = "mulaw"
        rate = audio.sampling_rate if audio.HasField("sampling_rate") else _DEFAULT_RATE
        split = start.split_strategy or tts.SPLIT_STRATEGY_SENTENCE
        problem = None
        if audio_format not in _FORMATS:
            problem = f"the emulator streams audio/pcm and {self.readings.mulaw_mime}, not {mime!r}"
        elif rate <= 0:
            problem = f"sampling_rate must be positive, got {rate}"
        elif split not in tts.SplitStrategy.values():
            problem = f"unknown split strategy {split}"
        elif start.text and split == tts.SPLIT_STRATEGY_ACCUMULATE_SENTENCE:
            problem = "SPLIT_STRATEGY_ACCUMULATE_SENTENCE applies to streaming contexts only"
        elif len(start.text) > self.max_text_chars:
            problem = "text is too long"
        elif start.HasField("speaker") and not start.speaker:
            problem = "speaker must not be empty"
        elif self.speakers is not None and start.speaker and start.speaker not in self.speakers:
            problem = f"speaker {start.speaker!r} is not a voice of this host"
        if problem is not None:
            self.fail(context_id, "invalid_input", problem)
            return
        assert audio_format is not None
        context = _Context(
            context_id,
            f"emu-{self._connection}-{self._started}",
            audio_format,
            rate,
            split,
            start.timestamps.enable,
            accepts_text=not start.text,
            time_scale=audio.time_scale_factor or 1.0,
        )
        self._contexts[context_id] = context
        started = tts.WebSocketStarted(request_id=context.request_id)
        self._urgent.append(tts.WebSocketResponse(context_id=context_id, started=started))
        if start.text:  # one-shot: the whole input, then done
            self._speak(context, self._units(context, start.text, final=True), now)
            self._finish(context, now)

    def _text(self, context_id: str, text: str, now: float) -> None:
        context = self._contexts.get(context_id)
        if context is None or not context.accepts_text:
            if context is not None and self.readings.text_after_end == "reject":
                self._refuse(context_id, "context is not open for input")
                return
            self.fail(context_id, "invalid_input", "context is not open for input")
        elif len(text) > self.max_text_chars:
            self.fail(context_id, "invalid_input", "text is too long")
        else:
            self._speak(context, self._units(context, text, final=False), now)

    def _end(self, context_id: str, now: float) -> None:
        context = self._contexts.get(context_id)
        if context is None:
            self.fail(context_id, "invalid_input", "no open context to end")
        elif context.accepts_text:  # a no-op for a one-shot context (or a second end)
            context.accepts_text = False
            self._speak(context, self._units(context, "", final=True), now)
            self._finish(context, now)

    def _cancel(self, context_id: str) -> None:
        context = self._contexts.pop(context_id, None)
        if context is not None:
            self._drop(context)
        elif self.readings.cancel_finished == "silent":
            return  # idempotent: nothing to abort, nothing to say
        cancelled = tts.WebSocketResponse(context_id=context_id, cancelled=tts.WebSocketCancelled())
        self._urgent.append(cancelled)

    # ----------------------------------------------------------------- synthesis

    def _units(self, context: _Context, text: str, *, final: bool) -> list[str]:
        """The texts *text* is synthesized as, by the context's split strategy and the
        ``unfinished`` reading; *final*: no more text will come (``end``, a one-shot), so
        nothing is held."""
        split = context.split
        speaks = self.readings.unfinished == "speak"
        if split == tts.SPLIT_STRATEGY_SENTENCE and speaks:
            # Each text is whole sentences: speak all of it as soon as it is here.
            return _sentences(text, final=True)
        if split == tts.SPLIT_STRATEGY_NONE and speaks:
            return [text] if text.strip() else []
        # Gathered: ACCUMULATE_SENTENCE, or the "hold" reading of SENTENCE and NONE.
        context.buffer += text
        if final:
            rest, context.buffer = context.buffer, ""
            if split == tts.SPLIT_STRATEGY_NONE:
                return [rest] if rest.strip() else []
            return _sentences(rest, final=True)
        if split == tts.SPLIT_STRATEGY_NONE:
            return []  # nothing until the end
        if split == tts.SPLIT_STRATEGY_ACCUMULATE_SENTENCE:
            rule = _ACCUMULATING[self.readings.accumulate_holds_final_stop]
        else:
            rule = _HOLDING
        ends = sentence_ends(context.buffer, rule)
        if not ends:
            return []
        ready, context.buffer = context.buffer[: ends[-1]], context.buffer[ends[-1] :]
        return _sentences(ready, final=True)

    def _speak(self, context: _Context, units: list[str], now: float) -> None:
        """Queue *units* for rendering. Each is rendered when its context's turn comes, as
        a server synthesizing contexts side by side would: every context's first sentence is
        out before anyone's second, instead of one context's whole text first."""

        for text in units:
            record = RunRecord(text, context.context_id)  # taken on now, rendered in turn
            self.records.append(record)
            context.records.append(record)
            self._queue(context, _Item(now, None, record, unit=text))

    def _render_next(self, context: _Context, now: float) -> None:
        """Render the unit at the front of *context*'s queue into its audio chunks, paced
        from *now*."""
        unit = context.items.popleft()
        text, record = unit.unit, unit.record
        assert text is not None
        factor = self.real_time_factor
        speech = render_speech(text, context.sample_rate)
        audio = encode_audio(speech.pcm, context.audio_format, context.sample_rate)
        base = context.seconds if self.readings.timestamps == "context" else 0.0
        # Spans are "before time_scale_factor" (the proto): the emulator's audio plays the
        # stretched speech, so its spans are the audio's times divided by the factor.
        scale = context.time_scale
        context.spans.extend(
            tts.SpanTimestamp(
                text=word,
                start=_duration((base + a) / scale),
                end=_duration((base + b) / scale),
            )
            for word, a, b in zip(speech.words, speech.starts, speech.ends, strict=True)
        )
        context.seconds += speech.duration
        begin = max(now + self.time_to_first_chunk, context.next_due)
        per_byte = speech.duration * factor / len(audio) if audio else 0.0
        chunks: list[_Item] = []
        offset = 0
        for size in self._chunk_sizes(len(audio)):
            response = tts.WebSocketResponse(
                context_id=context.context_id, audio=audio[offset : offset + size]
            )
            chunks.append(_Item(begin + offset * per_byte, response, record))
            offset += size
        context.items.extendleft(reversed(chunks))
        context.next_due = begin + speech.duration * factor

    def _finish(self, context: _Context, now: float) -> None:
        """Queue the context's ``done`` behind its audio (built when it goes out: by then
        every sentence before it has been rendered, so its spans are all known)."""
        context.done_queued = True
        self._queue(context, _Item(now, None))

    def _done(self, context: _Context) -> tts.WebSocketResponse:
        done = tts.WebSocketDone()
        # "none": a server that gives no word times on v1 (livekit's v1 README says so of
        # Rime's): the done carries no timestamps field at all, asked for or not.
        if context.timestamps and self.readings.timestamps != "none":
            done.timestamps.spans.extend(context.spans)
        return tts.WebSocketResponse(context_id=context.context_id, done=done)

    def _queue(self, context: _Context, item: _Item) -> None:
        if not context.items:
            self._turns.append(context)
        context.items.append(item)

    # ----------------------------------------------------------------- output

    def next_event(self, now: float = 0.0) -> Outgoing | Wait | Close | None:
        """What to send at time *now*: an envelope, a :class:`Wait` until the next is due, a
        :class:`Close` (authentication failed), or None when there is nothing to send until a
        request arrives.

        Replies (``ready``, ``started``, ``cancelled``, errors) go first; then one audio chunk
        (or ``done``) per context in turn, so concurrent contexts interleave on the wire.
        """
        if self._urgent:
            return Outgoing(self._urgent.popleft())
        if self._closing is not None:
            return self._closing
        earliest: float | None = None
        for _ in range(len(self._turns)):
            context = self._turns.popleft()
            context_id = context.context_id
            if self._contexts.get(context_id) is not context or not context.items:
                continue  # ended by cancel or error since it was queued (its id may be reused)
            while context.items and context.items[0].unit is not None:
                self._render_next(context, now)  # its turn: render its next sentence
            if not context.items:
                continue  # a sentence with no audio, and nothing queued behind it
            item = context.items[0]
            if item.due > now:
                self._turns.append(context)
                earliest = item.due if earliest is None else min(earliest, item.due)
                continue
            context.items.popleft()
            if context.items:
                self._turns.append(context)
            if item.response is None:  # the done
                del self._contexts[context_id]
                for record in context.records:
                    record.done = True
                return Outgoing(self._done(context))
            return Outgoing(item.response, item.record)
        return None if earliest is None else Wait(earliest)


def _even_chunks(total: int, chunk_bytes: int) -> list[int]:
    return chunk_sizes(total, chunk_bytes)


def _sentences(text: str, *, final: bool) -> list[str]:
    """*text* cut after each sentence end (the whitespace after an end starts the next piece,
    as on ``/ws3``); pieces of whitespace only are dropped."""
    cuts = [end for end in sentence_ends(text, _BROAD, final=final) if end < len(text)]
    bounds = [0, *cuts, len(text)]
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    return [piece for piece in pieces if piece.strip()]


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    nanos = min(round((seconds - whole) * 1e9), 999_999_999)
    return duration_pb2.Duration(seconds=whole, nanos=nanos)
