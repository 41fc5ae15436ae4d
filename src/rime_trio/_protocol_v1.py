"""Sans-IO core of Rime's WebSocket v1 protocol (``/ws``): many contexts on one socket.

Frames in, frozen events out; no sockets, no tasks, no clock. The messages are the ``rime-api``
package's protobuf envelopes (``rime.WebSocketRequest`` / ``rime.WebSocketResponse``), sent as
protobuf binary frames (subprotocol ``rime.v1.binary``, the default here) or as canonical proto3
JSON text frames with base64 audio (``rime.v1.json``, also what a client offering no subprotocol
gets). The bundled emulator shares the frame codec (:func:`encode_message`,
:func:`decode_request`, :func:`decode_response`), so the two cannot drift apart; what a server
*does* with the frames is the emulator's own model (``testing._v1_model``).

* :func:`synthesis_request`: a context's settings (``start``), built from the same
  :class:`~rime_trio.RimeOptions` and :func:`~rime_trio._options.model_params` table the
  ``/ws3`` query string and the HTTP body come from.
* :class:`V1Connection`: one socket's client state. It turns actions (:meth:`~V1Connection.start`,
  :meth:`~V1Connection.send_text`, :meth:`~V1Connection.end`, :meth:`~V1Connection.cancel`)
  into frames, and server frames (:meth:`~V1Connection.receive`) into events routed by context
  id: :class:`Ready`, :class:`Started`, :class:`Audio`, :class:`Done`, :class:`Cancelled`,
  :class:`ErrorEvent`.
* :class:`V1StreamState`: one speech stream's state on a shared connection (the counterpart
  of ``/ws3``'s :class:`~._protocol.StreamState`): what to say and when (cutting, the
  ``segment="never"`` hold), its contexts (one after another: a flush ends one) and the
  frames that start, feed, end and cancel them, the order and clock of their events, which
  events are stale after a ``clear()``, completion, and whether audio is owed.

How a stream layer drives it::

    conn = V1Connection(ws.subprotocol)        # the subprotocol the server accepted
    for event in conn.receive(await ws.get_message()): ...   # until conn.ready
    cid = conn.next_context_id()
    await ws.send(conn.start(cid, options, label="stream-1"))
    await ws.send(conn.send_text(cid, "Hello there. "))
    await ws.send(conn.end(cid))
    for event in conn.receive(frame):          # the one reader, for every context
        route(event.context_id, event)         # Audio, then exactly one terminal event

Differences from ``/ws3`` that the stream layer must know: completion is unambiguous (every
context ends in exactly one of :class:`Done`, :class:`Cancelled`, :class:`ErrorEvent` with its
id), ``cancel`` is per context, word timestamps come once, inside :class:`Done`, after the
audio (times on the context's own clock, shifted by the ``offset`` its ``start`` was given),
and there is no ``flush``: only a context's ``end`` surely makes a server speak what it holds,
so a stream's flush ends its context and goes on in a fresh one (:data:`FLUSH_MESSAGE`).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Final, Literal, TypeVar

from google.protobuf import duration_pb2, json_format
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage
from rime_api import text_to_speech_pb2 as tts

from ._audio import AudioClock
from ._errors import ConfigurationError, ConnectionLost, ProtocolError, ServerError
from ._events import AudioChunk, SpeechEvent, WordTimestamp
from ._options import AudioFormat, RimeOptions, Segment, model_params
from ._segment import MessageCutter

__all__ = [
    "DEFAULT_SUBPROTOCOLS",
    "FLUSH_MESSAGE",
    "MAX_CONTEXT_ID_BYTES",
    "MIME_NAMES",
    "SUBPROTOCOL_BINARY",
    "SUBPROTOCOL_JSON",
    "Audio",
    "Cancelled",
    "ContextMixUp",
    "Done",
    "Encoding",
    "ErrorEvent",
    "Event",
    "Frame",
    "Ready",
    "Split",
    "Started",
    "V1Connection",
    "V1StreamState",
    "decode_request",
    "decode_response",
    "encode_message",
    "encoding_for",
    "language_tag",
    "mime_type",
    "split_for",
    "synthesis_request",
]

logger = logging.getLogger("rime_trio")

_M = TypeVar("_M", bound=ProtoMessage)

SUBPROTOCOL_BINARY: Final = "rime.v1.binary"
SUBPROTOCOL_JSON: Final = "rime.v1.json"
#: What a client offers, in order of preference: the server picks the first it knows.
DEFAULT_SUBPROTOCOLS: Final = (SUBPROTOCOL_BINARY, SUBPROTOCOL_JSON)
#: The longest context id the server accepts, in UTF-8 bytes.
MAX_CONTEXT_ID_BYTES: Final = 128

Encoding = Literal["binary", "json"]
#: A WebSocket message: bytes for a binary frame, str for a text frame.
Frame = bytes | str
#: How the server cuts a context's text into synthesis units (``splitStrategy``): the
#: strategies this client uses (see :func:`split_for`).
Split = Literal["sentence", "none"]

_SPLITS: Final[dict[str, tts.SplitStrategy]] = {
    "sentence": tts.SPLIT_STRATEGY_SENTENCE,
    "none": tts.SPLIT_STRATEGY_NONE,
}
# ws3's segment modes, read as v1 split strategies. The client cuts sentences itself before
# sending (every sentence is a whole ``text``), so ``bySentence`` is SENTENCE: the server
# speaks each message at once instead of waiting to see what follows its last ".". ``never``
# (on /ws3: the client flushes each sentence it cuts) has no v1 strategy: each whole
# sentence goes in a context of its own, ended at once (which forces it on every reading).
_SPLIT_FOR_SEGMENT: Final[dict[Segment, Split]] = {
    "bySentence": "sentence",
    "immediate": "none",
    "never": "sentence",
}
# Audio formats as v1 names them, in the order a socket tries them. The first is what the
# integrations send (livekit's v1 client, Rime's asyncapi; MIME types compare case-blind, so
# vocode's ``audio/PCMU`` is the same name). Which names Rime's v1 takes is open
# (PROTOCOL.md): a mu-law name the server refuses is followed by the HTTP ``Accept`` table's
# old name (see V1Connection).
MIME_NAMES: Final[dict[str, tuple[str, ...]]] = {
    "pcm": ("audio/pcm",),
    "mulaw": ("audio/pcmu", "audio/x-mulaw"),
    "mp3": ("audio/mpeg",),
}

# ISO 639-2/3 codes the other endpoints take (``lang``) -> the BCP-47 tags v1 takes
# (``language``). A value not listed (already BCP-47, or unknown) is passed on unchanged.
_LANGUAGE_TAGS: Final = {
    "eng": "en",
    "spa": "es",
    "fra": "fr",
    "fre": "fr",
    "ger": "de",
    "deu": "de",
    "por": "pt",
    "ita": "it",
    "nld": "nl",
    "dut": "nl",
    "jpn": "ja",
    "kor": "ko",
    "zho": "zh",
    "chi": "zh",
    "cmn": "zh",
    "hin": "hi",
    "ara": "ar",
    "heb": "he",
    "rus": "ru",
    "tam": "ta",
}


def language_tag(lang: str) -> str:
    """The BCP-47 tag v1 expects for a ``lang`` value of the other endpoints (``eng`` -> ``en``)."""
    return _LANGUAGE_TAGS.get(lang.lower(), lang)


def mime_type(audio_format: AudioFormat) -> str:
    """The MIME type v1's ``audio_parameters.audio_format`` names *audio_format* by.

    :raises ConfigurationError: for a format v1 cannot stream (``wav``).
    """
    try:
        return MIME_NAMES[audio_format][0]
    except KeyError:
        raise ConfigurationError(
            f"audio_format {audio_format!r} cannot be streamed over v1; "
            "use 'pcm' (rime_trio.write_wav adds the header) or 'mulaw' or 'mp3'"
        ) from None


def split_for(segment: Segment) -> Split:
    """The split strategy that plays the role of a ``/ws3`` segment mode."""
    return _SPLIT_FOR_SEGMENT[segment]


def _inline_factors(value: object) -> list[float]:
    try:
        return [float(part) for part in str(value).split(",") if part.strip()]
    except ValueError:
        raise ConfigurationError(
            f"inline_speed_alpha must be comma-separated numbers for v1, got {value!r}"
        ) from None


def synthesis_request(
    options: RimeOptions, *, timestamps: bool = True, mime: str | None = None
) -> tts.SynthesisRequest:
    """A streaming context's settings, as its ``start`` carries them (no text: that comes in
    ``text`` messages).

    Speaker, language (as a BCP-47 tag), audio format (as *mime*, by default its first
    v1 MIME type, see :func:`mime_type`), sampling rate, split strategy (:func:`split_for`
    of the options' segment mode), word timestamps when *timestamps*, and the model parameters of
    :func:`~rime_trio._options.model_params` in their v1 places. The model itself is not
    sent: on v1 the path picks the model (``wss://api.rime.ai/coda/ws``). Coda's
    ``text_lookahead_tokens`` goes in its ``coda_parameters``.

    :raises ConfigurationError: for ``wav`` audio (not streamable), a model parameter v1 has no
        field for (arcana's sampling options, ``no_text_normalization``), or an unparsable
        ``inline_speed_alpha``.
    """
    mime = mime or mime_type(options.audio_format)
    audio = tts.AudioParameters(audio_format=mime, sampling_rate=options.sample_rate)
    request = tts.SynthesisRequest(
        language=language_tag(options.lang),
        speaker=options.speaker,
        split_strategy=_SPLITS[split_for(options.segment)],
    )
    mist = tts.MistParameters()
    # Wire names of the shared table -> v1 fields. A name missing here fails loudly, so an
    # option added to _options later cannot be silently dropped on v1.
    for wire_name, value in model_params(options).items():
        if wire_name == "timeScaleFactor":
            audio.time_scale_factor = float(value)  # above 1 is slower, as on v1
        elif wire_name == "speedAlpha":
            # v1 has only the time scale (above 1 slower): map by meaning. speedAlpha runs the
            # same way on mist and mistv2 (below 1 faster), the other way on coda and mistv3
            # (above 1 faster) (rimelabs/docs, docs/speed.mdx).
            alpha = float(value)
            same_way = options.model in ("mist", "mistv2")
            audio.time_scale_factor = alpha if same_way else 1.0 / alpha
        elif wire_name == "pauseBetweenBrackets":
            mist.pause_between_brackets = bool(value)
        elif wire_name == "phonemizeBetweenBrackets":
            mist.phonemize_between_brackets = bool(value)
        elif wire_name == "inlineSpeedAlpha":
            mist.inline_time_scale_factors.extend(_inline_factors(value))
        elif wire_name == "saveOovs":
            mist.save_oovs = bool(value)
        else:
            # noTextNormalization and arcana's sampling options: no field in rime-api's
            # SynthesisRequest (MistParameters has save_oovs, not text normalization).
            raise ConfigurationError(f"model parameter {wire_name!r} has no v1 equivalent")
    request.audio_parameters.CopyFrom(audio)
    if mist.ListFields():
        request.mist_parameters.CopyFrom(mist)
    if options.text_lookahead_tokens is not None:
        request.coda_parameters.text_lookahead_tokens = options.text_lookahead_tokens
    if timestamps:
        request.timestamps.enable = True
    return request


# --------------------------------------------------------------------------- frame codec


def encoding_for(subprotocol: str | None) -> Encoding:
    """The frame encoding a server that accepted *subprotocol* answers in.

    No subprotocol means JSON (the documented default for a client that offered none).

    :raises ProtocolError: for a subprotocol that is not v1's.
    """
    if subprotocol == SUBPROTOCOL_BINARY:
        return "binary"
    if subprotocol is None or subprotocol == SUBPROTOCOL_JSON:
        return "json"
    raise ProtocolError(f"the server chose an unknown subprotocol {subprotocol!r}")


def encode_message(
    message: tts.WebSocketRequest | tts.WebSocketResponse, encoding: Encoding
) -> Frame:
    """One envelope as a frame: protobuf bytes (``binary``) or canonical proto3 JSON (``json``)."""
    if encoding == "binary":
        return message.SerializeToString()
    # MessageToDict gives the canonical mapping (camelCase names, base64 bytes, "1.5s"
    # durations); dumping it compactly keeps frames small.
    return json.dumps(json_format.MessageToDict(message), separators=(",", ":"))


def _preview(frame: Frame, limit: int = 80) -> str:
    text = frame if isinstance(frame, str) else frame[:limit].hex()
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def _decode(frame: Frame, message: _M) -> _M:
    """Parse *frame* by its type (text: JSON, bytes: protobuf) into *message*.

    Fields this version does not know are skipped in both encodings, so that a newer server
    does not break an older client.
    """
    try:
        if isinstance(frame, str):
            json_format.Parse(frame, message, ignore_unknown_fields=True)
        else:
            message.ParseFromString(frame)
    except (json_format.ParseError, DecodeError, ValueError, RecursionError) as exc:
        kind = "JSON" if isinstance(frame, str) else "protobuf"
        raise ProtocolError(f"frame is not a v1 {kind} envelope: {_preview(frame)}") from exc
    return message


def decode_request(frame: Frame) -> tts.WebSocketRequest:
    """Decode a frame a client sent (used by the emulator), by frame type.

    :raises ProtocolError: if the frame is not a valid envelope.
    """
    return _decode(frame, tts.WebSocketRequest())


def decode_response(frame: Frame) -> tts.WebSocketResponse:
    """Decode a frame the server sent, by frame type (the server's encoding is fixed by the
    subprotocol, but reading by type costs nothing and cannot get it wrong).

    :raises ProtocolError: if the frame is not a valid envelope.
    """
    return _decode(frame, tts.WebSocketResponse())


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Ready:
    """``ready``: the server can synthesize; contexts may start. Once per connection."""

    protocol: int
    languages: tuple[str, ...] = ()
    default_language: str | None = None
    context_id: None = None  # connection-scoped; here so that every event can be routed


@dataclass(frozen=True, slots=True)
class Started:
    """``started``: the server accepted the context (*request_id* is its log correlation id)."""

    context_id: str
    request_id: str


@dataclass(frozen=True, slots=True)
class Audio:
    """Audio of one context, as whole samples on the stream's clock (see ``start(offset=)``)."""

    context_id: str
    chunk: AudioChunk


@dataclass(frozen=True, slots=True)
class Done:
    """``done`` (terminal): all audio of the context has been delivered.

    :ivar words: word timestamps on the stream's clock, if the context asked for them and the
        server's aligner settled; empty otherwise (and after a ``cancel``).
    :ivar audio_seconds: seconds of audio the context delivered.
    :ivar timestamps_error: why no words came although they were asked for (the server's
        alignment status), or None.
    :ivar restarts: times the server's word times started over within the context (a
        server that measures each synthesis run from its own start), unambiguously: a word
        that begins more than 50 ms before the previous word began, or near 0 (within
        0.25 s) and no later than it. The times after a restart were shifted to start where
        the word before ended, so they can be early by up to the silence between the runs.
        Words that overlap (one beginning before the previous one ended) are no restart:
        their times are passed through, scaled only by the time scale.
    """

    context_id: str
    words: tuple[WordTimestamp, ...] = ()
    audio_seconds: float = 0.0
    timestamps_error: str | None = None
    restarts: int = 0


@dataclass(frozen=True, slots=True)
class Cancelled:
    """``cancelled`` (terminal): the server aborted the context after a ``cancel``."""

    context_id: str


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """``error``: terminal for the context it names; with ``context_id`` None it concerns the
    connection, and open contexts keep running.

    :ivar kind: the server's machine-readable kind (``invalid_input``, ``unavailable``, ...).
    """

    context_id: str | None
    kind: str
    message: str
    request_id: str | None = None
    #: the server refused the context's audio format name, and the connection will name the
    #: format otherwise in the next ``start``: say it again on a fresh context
    format_refused: bool = False

    def exception(self) -> ServerError:
        """The error to raise in the stream it concerns."""
        kind = f"{self.kind}: " if self.kind else ""
        return ServerError(f"{kind}{self.message}")


Event = Ready | Started | Audio | Done | Cancelled | ErrorEvent


class ContextMixUp(ProtocolError):
    """An event for a context never started on the connection: the server mixed contexts
    up. Unlike a frame that cannot be read, another socket may well be sane."""


# --------------------------------------------------------------------------- connection state

# Finished context ids remembered so that late events for them (audio in flight when a cancel
# went out, a duplicated done, a stray error for a text that crossed the terminal event) are
# dropped rather than taken for a server mixing contexts. A bound keeps a socket that lives for
# millions of contexts from growing without end; an event for a context finished this long ago
# is a server fault anyway.
_REMEMBERED_FINISHED: Final = 4096
#: The protocol version of ``ready`` this client speaks.
PROTOCOL_VERSION: Final = 1


@dataclass(slots=True)
class _Context:
    context_id: str
    label: str | None
    offset: float
    audio_format: AudioFormat
    sample_rate: int
    clock: AudioClock
    timestamps: bool
    time_scale: float  # span times are before time_scale_factor (the proto): scaled by it
    mime: str  # the audio format's name in its start
    answered: bool = False  # audio came
    accepts_text: bool = True  # its input has not ended (no end, no cancel sent)
    cancelling: bool = False  # cancel sent: its audio is no longer wanted


class V1Connection:
    """One v1 socket's client protocol state, independent of any socket or task.

    *subprotocol* is what the server accepted in the handshake (None: it accepted none, and
    answers in JSON). Frames this object returns are in that encoding.

    Contexts (all streaming: the text comes after the ``start``): :meth:`start` opens one
    under a client-chosen id (:meth:`next_context_id` makes fresh ones), :meth:`send_text`
    feeds it, :meth:`end` ends its input, :meth:`cancel` aborts it. :meth:`receive` turns each
    server frame into events; every started context gets exactly one terminal event
    (:class:`Done`, :class:`Cancelled` or :class:`ErrorEvent` with its id). Its id is not
    used again while it is remembered as finished (the last 4,096): a late ``error`` for a
    ``text`` that crossed the terminal event on the wire, or a ``cancelled`` for a cancel that
    did, would otherwise end the new context that reused it. Use :meth:`next_context_id`,
    whose ids never repeat.

    :raises ProtocolError: (constructing) for a subprotocol that is not v1's.

    Decisions where the protocol leaves room:

    * Events for a context the client cancelled, or that already finished, are dropped and
      counted in :attr:`dropped_events`, not errors: audio already in flight races every
      cancel, and a server may answer a cancel that crossed a ``done`` with a ``cancelled``.
      Events for a context never started on this connection raise :class:`ProtocolError`
      (a server mixing up contexts must not feed one stream another's audio).
    * After a cancel, the terminal event still comes through (whichever the server sent), but
      no more audio or words.
    * ``ready`` must say protocol 1: another version is a :class:`ProtocolError`.
    * The empty id (the server's "default" context) is refused: errors for it would be
      indistinguishable from connection-level ones.
    * An audio format with more than one v1 name (:data:`MIME_NAMES`: mu-law) is named by the
      first until the server refuses it: an ``error`` for a context that got no audio, naming
      the name sent (or a "format"). The connection then names it by the next one, and the
      :class:`ErrorEvent` says :attr:`~ErrorEvent.format_refused` so that the stream says its
      text again. Learnt per socket: a server refuses or takes a name for all its contexts.
    """

    def __init__(self, subprotocol: str | None = SUBPROTOCOL_BINARY) -> None:
        self.subprotocol = subprotocol
        self.encoding: Encoding = encoding_for(subprotocol)
        self.ready: Ready | None = None
        self._contexts: dict[str, _Context] = {}
        # Finished ids, oldest first (an ordered set, bounded by _REMEMBERED_FINISHED).
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._ids = itertools.count(1)
        # The name each audio format goes by once the server refused the first.
        self._mime_names: dict[str, str] = {}
        #: events dropped: for cancelled or finished contexts, a duplicate ``ready``.
        self.dropped_events = 0
        #: frames skipped: payload kinds this version does not know.
        self.skipped_frames = 0

    # ----------------------------------------------------------------- status

    @property
    def open_contexts(self) -> int:
        """Contexts started and not yet answered by a terminal event."""
        return len(self._contexts)

    @property
    def open_context_ids(self) -> list[str]:
        """The ids of the contexts started and not yet answered by a terminal event."""
        return list(self._contexts)

    def is_open(self, context_id: str) -> bool:
        """True while *context_id* is started and has had no terminal event."""
        return context_id in self._contexts

    def accepts_text(self, context_id: str) -> bool:
        """True while *context_id* is open and its input has not ended (no end, no cancel)."""
        context = self._contexts.get(context_id)
        return context is not None and context.accepts_text

    def next_context_id(self) -> str:
        """A context id never used on this connection by this method (short: it is in every
        frame). Callers mixing their own ids must keep them apart (e.g. not ``c<digits>``)."""
        while True:
            context_id = f"c{next(self._ids)}"
            if context_id not in self._contexts and context_id not in self._finished:
                return context_id

    # ----------------------------------------------------------------- outgoing

    def _frame(self, request: tts.WebSocketRequest) -> Frame:
        return encode_message(request, self.encoding)

    def start(
        self,
        context_id: str,
        options: RimeOptions,
        *,
        timestamps: bool = True,
        label: str | None = None,
        offset: float = 0.0,
    ) -> Frame:
        """The frame that opens streaming context *context_id* with *options*' settings (feed
        it with :meth:`send_text`, close its input with :meth:`end`). The context's
        :class:`Audio` chunks and :class:`Done` words carry *label* as their ``context_id``
        (the caller's stream label) and times from *offset* seconds (where the stream's clock
        stands when the context begins, e.g. after an interruption).

        :raises RuntimeError: before ``ready``.
        :raises ValueError: for an empty id, one longer than 128 UTF-8 bytes, one still open,
            or one still remembered as finished (late events for it may still come).
        :raises ConfigurationError: for settings v1 cannot carry (see :func:`synthesis_request`).
        """
        if self.ready is None:
            raise RuntimeError("the server has not sent 'ready' yet: gate start on it")
        if not context_id:
            raise ValueError("the empty context id is the server's default context: pick one")
        if len(context_id.encode()) > MAX_CONTEXT_ID_BYTES:
            raise ValueError(f"context id longer than {MAX_CONTEXT_ID_BYTES} bytes")
        if context_id in self._contexts:
            raise ValueError(f"context {context_id!r} is still open")
        if context_id in self._finished:
            raise ValueError(
                f"context {context_id!r} finished recently, and late events for it may still "
                "come: use a fresh id (next_context_id())"
            )
        mime = self._mime_names.get(options.audio_format) or mime_type(options.audio_format)
        request = synthesis_request(options, timestamps=timestamps, mime=mime)
        self._contexts[context_id] = _Context(
            context_id,
            label,
            offset,
            options.audio_format,
            options.sample_rate,
            AudioClock(options.audio_format, options.sample_rate),
            timestamps,
            time_scale=request.audio_parameters.time_scale_factor or 1.0,
            mime=mime,
        )
        return self._frame(tts.WebSocketRequest(context_id=context_id, start=request))

    def _streaming(self, context_id: str, action: str) -> _Context:
        context = self._contexts.get(context_id)
        if context is None:
            raise RuntimeError(f"cannot {action}: context {context_id!r} is not open")
        if not context.accepts_text:
            raise RuntimeError(f"cannot {action}: the input of context {context_id!r} ended")
        return context

    def send_text(self, context_id: str, text: str) -> Frame:
        """The frame that appends *text* to streaming context *context_id*. With the
        ``sentence`` strategy each text should be whole sentences: the server speaks it on
        arrival.

        :raises RuntimeError: if the context is not open for input (never started, ended,
            cancelled or finished).
        """
        self._streaming(context_id, "send text")
        return self._frame(tts.WebSocketRequest(context_id=context_id, text=text))

    def end(self, context_id: str) -> Frame:
        """The frame that ends the input of streaming context *context_id*: the server sends
        the remaining audio, then :class:`Done`.

        :raises RuntimeError: if the context is not open for input.
        """
        self._streaming(context_id, "end").accepts_text = False
        return self._frame(tts.WebSocketRequest(context_id=context_id, end=tts.WebSocketEnd()))

    def cancel(self, context_id: str) -> Frame | None:
        """The frame that aborts *context_id*, or None when there is nothing to abort (never
        started, already finished, or already cancelled): cancelling is idempotent. From now
        on the context's audio and words are dropped; its terminal event still comes."""
        context = self._contexts.get(context_id)
        if context is None or context.cancelling:
            return None
        context.cancelling = True
        context.accepts_text = False
        return self._frame(
            tts.WebSocketRequest(context_id=context_id, cancel=tts.WebSocketCancel())
        )

    # ----------------------------------------------------------------- incoming

    def receive(self, frame: Frame) -> list[Event]:
        """Apply one server frame; return its events, in order (usually one; a :class:`Done`
        after a chunk that ended mid-sample is preceded by the odd byte as an :class:`Audio`).

        :raises ProtocolError: for a frame that is not a v1 envelope, or an event for a
            context never started on this connection (or, without id, one that needs one).
        """
        response = decode_response(frame)
        kind = response.WhichOneof("payload")
        context_id: str = response.context_id
        if kind == "ready":
            return self._on_ready(response.ready)
        if kind == "error" and not context_id:
            error = response.error
            return [ErrorEvent(None, error.kind, error.message, _optional(error, "request_id"))]
        if kind is None:
            # A payload kind newer than this client (unknown fields are skipped when parsing).
            logger.debug("skipping a v1 frame with no payload this client knows")
            self.skipped_frames += 1
            return []
        context = self._contexts.get(context_id)
        if context is None:
            if context_id in self._finished:
                self.dropped_events += 1
                return []
            raise ContextMixUp(f"server sent {kind!r} for unknown context {context_id!r}")
        if kind == "started":
            return [Started(context_id, response.started.request_id)]
        if kind == "audio":
            return self._on_audio(context, response.audio)
        if kind == "done":
            return self._on_done(context, response.done)
        if kind == "cancelled":
            self._finish(context)
            return [Cancelled(context_id)]
        # A context error: terminal for it.
        error = response.error
        self._finish(context)
        refused = self._renames(context, error.message)
        request_id = _optional(error, "request_id")
        return [ErrorEvent(context_id, error.kind, error.message, request_id, refused)]

    def _renames(self, context: _Context, message: str) -> bool:
        """Whether *message* (the error that ended *context*) refuses the name its audio
        format went by, and the format has another: from now on it goes by that one."""
        said = message.lower()
        if context.answered or not (context.mime.lower() in said or "format" in said):
            return False
        names = MIME_NAMES.get(context.audio_format, ())
        following = names[names.index(context.mime) + 1 :] if context.mime in names else ()
        if not following:
            return False
        if self._mime_names.get(context.audio_format, names[0]) == context.mime:
            # (Not the server's words: they may quote the request, and this module never
            # holds the key to take it out.)
            logger.info(
                "the v1 server refused %s audio named %r; trying %r",
                context.audio_format,
                context.mime,
                following[0],
            )
            self._mime_names[context.audio_format] = following[0]
        return True

    def _on_ready(self, ready: tts.WebSocketReady) -> list[Event]:
        if self.ready is not None:
            self.dropped_events += 1  # sent once per connection; a repeat changes nothing
            return []
        if ready.protocol != PROTOCOL_VERSION:
            raise ProtocolError(
                f"the server speaks v1 protocol version {ready.protocol}, this client "
                f"{PROTOCOL_VERSION}"
            )
        default = _optional(ready, "default_language")
        self.ready = Ready(int(ready.protocol), tuple(ready.languages), default)
        return [self.ready]

    def _on_audio(self, context: _Context, data: bytes) -> list[Event]:
        context.answered = True
        if context.cancelling:
            self.dropped_events += 1  # in flight when the cancel went out
            return []
        aligned = context.clock.align(data)
        if not aligned:
            return []
        return [Audio(context.context_id, self._chunk(context, aligned))]

    def _chunk(self, context: _Context, data: bytes) -> AudioChunk:
        offset = context.offset + context.clock.seconds
        duration = context.clock.advance(data)
        return AudioChunk(
            data, context.audio_format, context.sample_rate, context.label, offset, duration
        )

    def _on_done(self, context: _Context, done: tts.WebSocketDone) -> list[Event]:
        self._finish(context)
        if context.cancelling:
            return [Done(context.context_id, audio_seconds=context.clock.seconds)]
        events: list[Event] = []
        carry = context.clock.take_carry()
        if carry:
            # Never silently dropped: the caller sees exactly the bytes the server sent.
            events.append(Audio(context.context_id, self._chunk(context, carry)))
        words: tuple[WordTimestamp, ...] = ()
        error: str | None = None
        restarts = 0
        if context.timestamps:
            if not done.HasField("timestamps"):
                error = "the server sent no timestamps"
            elif done.timestamps.status.code != 0:
                status = done.timestamps.status
                error = f"timestamps status {int(status.code)}: {status.message}"
            else:
                words, restarts = _words(done.timestamps.spans, context)
        events.append(Done(context.context_id, words, context.clock.seconds, error, restarts))
        return events

    def _finish(self, context: _Context) -> None:
        del self._contexts[context.context_id]
        # Never there already: start() refuses an id that is still remembered.
        self._finished[context.context_id] = None
        if len(self._finished) > _REMEMBERED_FINISHED:
            self._finished.popitem(last=False)


def _optional(message: ProtoMessage, field: str) -> str | None:
    value: str = getattr(message, field)
    return value if message.HasField(field) else None


# Word times of one synthesis run never run backwards: an aligner may let a word begin before
# the previous one *ended* (overlapping spans, left as they are), not well before it *began*.
# A span beginning earlier than the previous span began, by more than this, is the times
# starting over (a server timing each run from its own start): a restart.
_RESTART_MARGIN: Final = 0.05
# A run's first word begins within its lead-in silence. A span that close to 0 and beginning
# no later than the previous span began is a restart too, however little earlier: a one-word
# run after a one-word run (both words begin at the lead-in).
_NEAR_ZERO: Final = 0.25


def _seconds(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def _restarts(start: float, previous_start: float) -> bool:
    """Whether a span beginning at *start* after one that began at *previous_start* (the
    server's seconds, before the time scale) is the times starting over, unambiguously (see
    the constants above)."""
    return start < previous_start - _RESTART_MARGIN or (
        start < _NEAR_ZERO and start <= previous_start
    )


def _words(
    spans: Iterable[tts.SpanTimestamp], context: _Context
) -> tuple[tuple[WordTimestamp, ...], int]:
    """Spans -> words on the stream's clock.

    Span times are from the start of the context's audio and before ``time_scale_factor``
    (the proto): they are scaled by it and shifted by the context's offset, nothing else.
    Only an unambiguous restart re-bases them (a server timing each run from its own start):
    a span beginning more than 50 ms before the previous span began, or near 0 (within the
    lead-in, 0.25 s) and no later than it, in the server's times (before the scale). The
    times from there on are shifted to begin where the previous word ended, and the restart
    is counted. Spans that overlap (a word beginning before the previous one ended, ``I``
    0.02-0.12 then ``am`` 0.10-0.30) are not a restart: times of one run only ever overlap
    forward.
    """
    words: list[WordTimestamp] = []
    base = context.offset
    scale = context.time_scale
    previous_start = 0.0
    restarts = 0
    for span in spans:
        # Restarts are read off the server's own times, before the scale.
        given = _seconds(span.start)
        if words and _restarts(given, previous_start):
            restarts += 1
            base = words[-1].end
        previous_start = given
        start = given * scale
        end = max(start, _seconds(span.end) * scale)
        words.append(WordTimestamp(span.text, base + start, base + end, context.label))
    return tuple(words), restarts


# --------------------------------------------------------------------------- stream state

#: The message :meth:`V1StreamState.flush` adds after the text it forces: there
#: :meth:`V1StreamState.frames` ends the current context (v1 has no flush; a context's
#: ``end`` makes the server synthesize all it holds). Empty, so it is never text (the cutter
#: never makes an empty message), and a link that re-sends the messages re-sends it in place.
FLUSH_MESSAGE: Final = ""


@dataclass(slots=True, eq=False)
class _Flight:
    """A context of the stream not yet answered by its terminal event."""

    wire_id: str
    #: where its times begin on the stream's clock as its ``start`` was told (the clock as
    #: far as it was known: the audio of contexts still speaking ahead of it not counted)
    told: float
    #: where they do begin: known once every context ahead of it is done
    offset: float
    has_text: bool = False
    ended: bool = False  # its end went out (a flush, or the input's end)
    trimmed: float = 0.0  # seconds of its audio dropped (half a sample at its end)
    #: its events, kept while a context ahead of it still speaks
    waiting: list[Audio | Done] = field(default_factory=list)


def _shifted(event: Audio | Done, shift: float) -> Audio | Done:
    if isinstance(event, Audio):
        chunk = event.chunk
        return Audio(event.context_id, replace(chunk, offset=chunk.offset + shift))
    words = tuple(replace(w, start=w.start + shift, end=w.end + shift) for w in event.words)
    return replace(event, words=words)


class V1StreamState:
    """One speech stream's v1 protocol state, independent of any socket or task (the
    counterpart of ``/ws3``'s :class:`~._protocol.StreamState`).

    A stream speaks on contexts of the :class:`V1Connection` of the socket it is attached
    to (:meth:`attach`; a socket many streams share, so the connection, not the stream, gives
    context ids), one after another. *options* give each context's settings (``start``) and
    the segment mode; *context_id* is the caller's label, on every chunk and word.

    Outgoing, in two steps. What to say is decided when the text comes
    (:meth:`say`, :meth:`flush`, :meth:`end`): sentences cut by
    the same :class:`~._segment.MessageCutter` as on ``/ws3``; with ``segment="never"`` each
    whole sentence is said and forced at once (a flush after it, as on ``/ws3``), and part
    of one waits for the rest, a flush or the end. Frames are made when that is
    written (:meth:`frames`): a context starts there, on whatever socket the stream is on by
    then, so a write that never happens (a ``clear()`` came first) leaves no context open on
    the connection.

    A flush forces synthesis. v1 has no ``flush``, and a server may hold what it cannot yet
    tell is a finished sentence ("Hello there." with nothing after it, a partial sentence;
    everything under ``NONE``) until more text comes or the context ends. So a flush with text
    said since the last one (:data:`FLUSH_MESSAGE` among the messages) ends the context with
    that text, and the next text starts a fresh one, whose times begin where the ended one's
    audio ends. Completion is the ``done`` of the context that got the input's end; the done
    of a context a flush ended only moves the clock on.

    Order: contexts of one socket interleave on the wire, and the next context starts at
    once, without waiting for the ``done`` of the one a flush ended. Waiting would hold the
    next text back with nothing to send it when the done comes (frames are made only when
    the stream writes, and its last write may be the end), and cost the next sentence a
    round trip. So the events of a context are handed on only once every context before it
    is done: until then they are kept here (the audio of text sent after a flush, which the
    server is making already). Its clock place, unknown at its ``start``, is known by then:
    its chunks and words are shifted to it as they are handed on. A write starts at most one
    context (the link routes the context a write leaves current, :attr:`wire_id`): messages
    that would need a second wait for the next write, unless the write ends the input, which
    forces everything, so its flushes are dropped and it needs one context at most.

    On the wire a clear epoch is its contexts: :meth:`hold` stops delivery at once (and
    bumps :attr:`epoch`, the stream's own mark of what is stale), :meth:`interrupt` leaves the
    stream's contexts (returning their ``cancel``), and the next frames start a fresh one whose
    times begin where :meth:`hold` put the clock. Events of any context but the stream's
    current ones, and every event between :meth:`hold` and :meth:`interrupt`, are stale:
    dropped.

    Incoming (:meth:`receive`): the contexts' audio and words in order; the ``done`` of the
    context that got the input's end completes the stream. An ``error``, an unasked
    ``cancelled``, or a ``done`` for a context whose input had not ended raises.
    """

    __slots__ = (
        "_by_id",
        "_cutter",
        "_flights",
        "_held",
        "_holding",
        "_pending",
        "_said",
        "_unanswered",
        "complete",
        "context_id",
        "end_sent",
        "epoch",
        "foreign_events",
        "offset",
        "options",
        "protocol",
        "wire_id",
    )

    def __init__(self, context_id: str, options: RimeOptions) -> None:
        self.context_id = context_id
        #: the stream's options (what each context's ``start`` carries)
        self.options = options
        self.complete = False
        #: always 0: an event for a context never started fails the socket (ProtocolError)
        self.foreign_events = 0
        #: bumped by :meth:`hold`: the caller's text and events stamped with an older one
        #: are stale
        self.epoch = 0
        #: the stream's clock where the next context begins, as far as known (the audio of
        #: contexts not yet done is not counted)
        self.offset = 0.0
        self.end_sent = False
        #: the connection of the socket the stream speaks on (None: none yet)
        self.protocol: V1Connection | None = None
        #: the id of the stream's newest context on the wire (None: none started since the
        #: last :meth:`attach` or :meth:`interrupt`)
        self.wire_id: str | None = None
        self._holding = False  # a clear() began: deliver nothing until interrupt()
        # Text went out that the server speaks on arrival, and no audio came since.
        self._unanswered = False
        self._cutter = MessageCutter()
        self._held = ""  # segment="never": text waiting for a flush or the end
        self._said = False  # text said since the last flush: a flush has something to force
        # The stream's contexts not yet done, oldest first: every one but the newest ended.
        self._flights: deque[_Flight] = deque()
        self._by_id: dict[str, _Flight] = {}
        self._pending: list[str] = []  # messages a write could not start a context for

    # ----------------------------------------------------------------- outgoing

    def attach(self, protocol: V1Connection) -> None:
        """Speak on *protocol*'s socket from now on: the next frames start a fresh context
        there (with a fresh id), times from the clock's current place. The contexts on the
        socket before are forgotten (it failed: the link re-sends their text)."""
        self.protocol = protocol
        self._forget()

    def say(self, text: str, *, sentence: bool) -> list[str]:
        """The messages that say *text* (a sentence, part of one, or several: the same on
        v1, where the context's split strategy decides), cut so that no server splits one;
        none yet while ``segment="never"`` holds text back."""
        if self.options.segment == "never":
            # The client cuts sentences, and each is spoken as soon as it is whole (as on
            # /ws3, where it is flushed): its context ends with it. Part of one waits for
            # the rest, a flush or the end.
            self._held += text
            if not sentence:
                return []
            held, self._held = self._held, ""
            messages = self._cutter.cut(held)
            return [*messages, FLUSH_MESSAGE] if messages else []
        messages = self._cutter.cut(text)
        self._said = self._said or bool(messages)
        return messages

    def flush(self) -> list[str]:
        """The messages that force synthesis of the text said since the last flush: the text
        held back (``segment="never"``), if any, then :data:`FLUSH_MESSAGE`, which ends the
        context in :meth:`frames`. None when nothing was said since."""
        held, self._held = self._held, ""
        messages = self._cutter.cut(held) if held else []
        if not (messages or self._said):
            return []
        self._said = False
        return [*messages, FLUSH_MESSAGE]

    def end(self) -> list[str]:
        """The messages still to say when the input ends (the text held back, if any): the
        end itself forces everything."""
        held, self._held = self._held, ""
        self._said = False
        return self._cutter.cut(held) if held else []

    def give_up_on_done(self) -> list[str]:
        """Nothing: a context's end is unambiguous on v1 (it always ends in one terminal
        event), so there is no other way to wait for."""
        return []

    def frames(self, messages: list[str], *, end: bool) -> list[Frame]:
        """The frames that say *messages* on the current context (starting one first, if
        there is none or a flush ended it), ending it at each :data:`FLUSH_MESSAGE`, and
        ending the input if *end*. Make them right before the write: a context's ``done`` may
        come before the writer runs again, and must find its input ended.

        At most one context starts per write (see the class docstring): messages after one
        that would need a second are kept for the next write. With *end*, flushes are dropped
        (the end forces everything), so nothing is kept. An end with no context open and none
        still speaking opens one and ends it, so that a ``done`` completes the stream.

        No frames when the current context ended without being asked (an error, an unasked
        cancel): that end is on its way to :meth:`receive`, which raises it. Nothing more is
        said on it, and no new context is opened behind its back (that would hide the error,
        and the audio it cost, under a stream that looks complete).

        :raises RuntimeError: before :meth:`attach`.
        """
        protocol = self.protocol
        if protocol is None:
            raise RuntimeError("the stream is not attached to a socket")
        self.end_sent = self.end_sent or end
        if self._pending:
            messages, self._pending = self._pending + messages, []
        if end:
            messages = [message for message in messages if message != FLUSH_MESSAGE]
        flights = self._flights
        current = flights[-1] if flights else None
        if current is not None and not current.ended and not protocol.is_open(current.wire_id):
            return []
        # Under NONE a server may say nothing until the end: only an end (a flush's, or the
        # input's) makes audio owed then.
        spoken_on_arrival = split_for(self.options.segment) == "sentence"
        frames: list[Frame] = []
        started = False
        for index, message in enumerate(messages):
            if message == FLUSH_MESSAGE:
                if current is not None and not current.ended and current.has_text:
                    frames.append(protocol.end(current.wire_id))
                    current.ended = True
                continue
            if current is None or current.ended:
                if started:
                    self._pending = messages[index:]
                    break
                current = self._start(protocol, frames)
                started = True
            frames.append(protocol.send_text(current.wire_id, message))
            current.has_text = True
            self._unanswered = self._unanswered or spoken_on_arrival
        if end:
            if current is None:
                current = self._start(protocol, frames)
            if not current.ended:
                frames.append(protocol.end(current.wire_id))
                current.ended = True
        return frames

    def _start(self, protocol: V1Connection, frames: list[Frame]) -> _Flight:
        """A fresh context (its ``start`` appended to *frames*), the stream's current one."""
        options = self.options
        wire_id = protocol.next_context_id()
        frames.append(
            protocol.start(
                wire_id,
                options,
                # Asked for only where Rime has them (English, Spanish): never waited for.
                timestamps=options.word_timestamps and options.timestamps_available,
                label=self.context_id,
                offset=self.offset,
            )
        )
        flight = _Flight(wire_id, told=self.offset, offset=self.offset)
        self._flights.append(flight)
        self._by_id[wire_id] = flight
        self.wire_id = wire_id
        return flight

    def hold(self, delivered_seconds: float) -> None:
        """Start an interruption now: deliver nothing until :meth:`interrupt`. The next
        context's times begin at *delivered_seconds* (the audio the caller took)."""
        self.epoch += 1
        self._holding = True
        self.offset = delivered_seconds

    def interrupt(self) -> list[Frame]:
        """End the interruption started by :meth:`hold`: leave the stream's contexts (the
        frames that cancel those still running) and forget the text held or half-cut. The
        next frames start a fresh context on the same socket."""
        frames = self._cancel()
        self._holding = False
        self._unanswered = False
        self._said = False
        self._cutter.clear()
        self._held = ""
        return frames

    def leave(self) -> list[Frame]:
        """The stream leaves its socket: the frames that cancel its contexts that still run,
        if its audio is not complete. Events of them are stale from now on."""
        frames = [] if self.complete else self._cancel()
        self._forget()
        return frames

    def _cancel(self) -> list[Frame]:
        protocol = self.protocol
        frames: list[Frame] = []
        if protocol is not None:
            for flight in self._flights:
                frame = protocol.cancel(flight.wire_id)  # None: it ended, or was cancelled
                if frame is not None:
                    frames.append(frame)
        self._forget()
        return frames

    def _forget(self) -> None:
        self._flights.clear()
        self._by_id.clear()
        self._pending = []
        self.wire_id = None

    # ----------------------------------------------------------------- status

    @property
    def pending(self) -> bool:
        """Whether messages wait for a context the last write could not start (the next
        :meth:`frames` call, with no new messages, says them)."""
        return bool(self._pending)

    def speaks_on(self, context_id: str | None) -> bool:
        """Whether *context_id* is one of the stream's contexts not yet done."""
        return context_id in self._by_id

    @property
    def audio_owed(self) -> bool:
        """True after the input ended (until the last ``done``), while a context a flush
        ended has not answered with its ``done``, and while text went out that the server
        speaks on arrival (``SENTENCE``: whole sentences) and no audio answered it. Not while
        the caller has simply not sent more (v1 has no per-sentence ``done``: a stall mid-way
        is caught at the next flush, or once the input ends)."""
        if self.complete:
            return False
        flights = self._flights
        return self.end_sent or self._unanswered or (bool(flights) and flights[0].ended)

    # ----------------------------------------------------------------- incoming

    def receive(self, event: Event) -> list[SpeechEvent]:
        """Apply an event routed to this stream; return what the caller should get, in
        order (nothing for a stale event, or one of a context whose turn has not come: see
        the class docstring).

        :raises ProtocolError: for a ``done`` that came before the context's input ended.
        :raises ServerError: for an ``error``, or a ``cancelled`` the stream did not ask for.
        """
        if self._holding or event.context_id is None:
            return []
        flight = self._by_id.get(event.context_id)
        if flight is None:
            return []  # stale: a context the stream left
        if isinstance(event, Audio):
            self._unanswered = False
        elif isinstance(event, Done):
            if not flight.ended:
                raise ProtocolError("the server ended the context before its input ended")
        elif isinstance(event, Started):
            return []
        elif isinstance(event, Cancelled):
            raise ServerError("the server cancelled the stream's context")
        else:
            raise event.exception()
        if flight is not self._flights[0]:
            flight.waiting.append(event)  # a context before it still speaks
            return []
        return self._hand_on(event)

    def _hand_on(self, event: Audio | Done) -> list[SpeechEvent]:
        """What the caller gets for *event* of the oldest context, and for the events kept
        for the contexts after it once it is done, in order, on the stream's clock."""
        outputs: list[SpeechEvent] = []
        due = deque([event])
        while due:
            item = due.popleft()
            head = self._flights[0]
            shift = head.offset - head.told
            if shift:
                item = _shifted(item, shift)
            if isinstance(item, Audio):
                chunk = item.chunk
                if (
                    chunk.audio_format == "pcm"
                    and len(chunk.data) % 2
                    and not (self.end_sent and len(self._flights) == 1)
                ):
                    # A context ended on half a sample (a server fault). At the stream's end
                    # the byte is handed on, as on /ws3; mid-stream it would shift every
                    # sample after it by a byte, so it goes.
                    logger.warning(
                        "stream %s: a v1 context's audio ended on half a sample; dropped",
                        self.context_id,
                    )
                    head.trimmed += chunk.duration
                    continue
                outputs.append(chunk)
                continue
            if item.timestamps_error is not None:
                logger.debug("stream %s: %s", self.context_id, item.timestamps_error)
            outputs.extend(item.words)
            self._flights.popleft()
            del self._by_id[head.wire_id]
            self.offset = head.offset + item.audio_seconds - head.trimmed
            if not self._flights:
                self._unanswered = False  # all text sent is answered
                self.complete = self.end_sent
                continue
            after = self._flights[0]
            after.offset = self.offset
            due.extend(after.waiting)
            after.waiting.clear()
        return outputs

    def finish(self) -> list[SpeechEvent]:
        """No more events will come for the stream: nothing is carried over on v1 (the
        connection hands a context's odd byte on before its ``done``).

        :raises ConnectionLost: if the ``done`` of the context that got the input's end had
            not come.
        """
        if not self.complete:
            raise ConnectionLost("the v1 context's events ended before its done")
        return []
