"""Sans-IO core of Rime's ``/ws3`` protocol.

Frames in, frozen events out; no sockets, no tasks, no trio. The client (``_stream``) and the
bundled emulator (``rime_trio.testing``) both speak through this module, so they cannot drift
apart silently.

* Client messages: :class:`TextMessage`, :class:`Flush`, :class:`Clear`, :class:`EndOfStream`,
  encoded by :func:`encode_client_message`, decoded (server side) by
  :func:`decode_client_message`.
* Server events: :class:`AudioEvent`, :class:`TimestampsEvent`, :class:`DoneEvent`,
  :class:`ErrorEvent`, encoded (server side) by :func:`encode_server_event`, decoded by
  :func:`decode_server_event`.
* :class:`StreamState`: one speech stream's bookkeeping: which wire context ids belong to it,
  how much audio is still owed, and the re-basing of batch-relative word timestamps onto the
  stream's own clock.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Final

from ._audio import AudioClock
from ._errors import ProtocolError, ServerError
from ._events import AudioChunk, SpeechEvent, WordTimestamp
from ._options import AudioFormat, Segment

__all__ = [
    "MAX_TEXT_CHARS",
    "AudioEvent",
    "Clear",
    "ClientMessage",
    "DoneEvent",
    "EndOfStream",
    "ErrorEvent",
    "Flush",
    "ServerEvent",
    "StreamState",
    "TextMessage",
    "TimestampsEvent",
    "decode_client_message",
    "decode_server_event",
    "encode_client_message",
    "encode_server_event",
    "ends_sentence",
    "sentence_end",
    "split_text",
]

logger = logging.getLogger("rime_trio")

#: The server refuses a single text message longer than this (close 1011 "400: text is too long").
MAX_TEXT_CHARS: Final = 1000

# A sentence ends at . ? ! (optionally followed by closing quotes/brackets) then whitespace or
# the end of the text. This is the server's rule for segment=bySentence.
_SENTENCE_END = re.compile(r"""[.?!…]+["'”’)\]]*(?=\s|$)""")
_WHITESPACE = re.compile(r"\s+")


# --------------------------------------------------------------------------- client messages


@dataclass(frozen=True, slots=True)
class TextMessage:
    """Append *text* to the server's buffer; audio for it is tagged with *context_id*."""

    text: str
    context_id: str | None = None


@dataclass(frozen=True, slots=True)
class Flush:
    """Synthesize whatever is buffered now."""


@dataclass(frozen=True, slots=True)
class Clear:
    """Drop buffered text (barge-in)."""


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """Flush, synthesize the rest, then the server closes the socket."""


ClientMessage = TextMessage | Flush | Clear | EndOfStream

_OPERATIONS: Final[dict[str, ClientMessage]] = {
    "flush": Flush(),
    "clear": Clear(),
    "eos": EndOfStream(),
}
_FLUSH_FRAME: Final = '{"operation": "flush"}'
_CLEAR_FRAME: Final = '{"operation": "clear"}'
_EOS_FRAME: Final = '{"operation": "eos"}'


def encode_client_message(message: ClientMessage) -> str:
    """Encode a client message as a ``/ws3`` text frame."""
    if isinstance(message, TextMessage):
        payload: dict[str, str] = {"text": message.text}
        if message.context_id is not None:
            payload["contextId"] = message.context_id
        return json.dumps(payload, ensure_ascii=False)
    if isinstance(message, Flush):
        return _FLUSH_FRAME
    if isinstance(message, Clear):
        return _CLEAR_FRAME
    return _EOS_FRAME


def _load(frame: str | bytes) -> dict[str, Any]:
    try:
        message = json.loads(frame)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(f"frame is not valid JSON: {_preview(frame)}") from exc
    if not isinstance(message, dict):
        raise ProtocolError(f"frame is not a JSON object: {_preview(frame)}")
    return message


def _preview(frame: str | bytes, limit: int = 80) -> str:
    text = frame if isinstance(frame, str) else frame[:limit].decode("utf-8", "replace")
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def _context_id(message: dict[str, Any]) -> str | None:
    context_id = message.get("contextId")
    if context_id is None or isinstance(context_id, str):
        return context_id
    raise ProtocolError(f"contextId must be a string or null, got {type(context_id).__name__}")


def decode_client_message(frame: str | bytes) -> ClientMessage:
    """Decode a frame a client sent (used by the emulator).

    :raises ProtocolError: if the frame is not a text message or a known operation.
    """
    message = _load(frame)
    if "text" in message:
        text = message["text"]
        if not isinstance(text, str):
            raise ProtocolError("text must be a string")
        return TextMessage(text, _context_id(message))
    operation = message.get("operation")
    if isinstance(operation, str) and operation in _OPERATIONS:
        return _OPERATIONS[operation]
    raise ProtocolError(f"unknown client message: {_preview(frame)}")


# --------------------------------------------------------------------------- server events


@dataclass(frozen=True, slots=True)
class AudioEvent:
    """A ``chunk`` message: decoded audio bytes."""

    data: bytes
    context_id: str | None = None


@dataclass(frozen=True, slots=True)
class TimestampsEvent:
    """A ``timestamps`` message: word times in seconds from the start of their batch."""

    words: tuple[str, ...]
    starts: tuple[float, ...]
    ends: tuple[float, ...]
    context_id: str | None = None


@dataclass(frozen=True, slots=True)
class DoneEvent:
    """A ``done`` message: one synthesis batch finished."""

    context_id: str | None = None


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """An ``error`` message: a request-level failure; the socket stays open."""

    message: str


ServerEvent = AudioEvent | TimestampsEvent | DoneEvent | ErrorEvent


def encode_server_event(event: ServerEvent) -> str:
    """Encode a server event as a ``/ws3`` text frame (used by the emulator)."""
    if isinstance(event, AudioEvent):
        data = base64.b64encode(event.data).decode("ascii")
        return json.dumps({"type": "chunk", "data": data, "contextId": event.context_id})
    if isinstance(event, TimestampsEvent):
        stamps = {"words": list(event.words), "start": list(event.starts), "end": list(event.ends)}
        return json.dumps(
            {"type": "timestamps", "word_timestamps": stamps, "contextId": event.context_id},
            ensure_ascii=False,
        )
    if isinstance(event, DoneEvent):
        return json.dumps({"type": "done", "contextId": event.context_id})
    return json.dumps({"type": "error", "message": event.message}, ensure_ascii=False)


def _times(stamps: dict[str, Any], key: str, count: int) -> tuple[float, ...]:
    values = stamps.get(key)
    if not isinstance(values, list) or len(values) != count:
        raise ProtocolError(f"word_timestamps.{key} must be a list of {count} numbers")
    for value in values:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ProtocolError(f"word_timestamps.{key} holds a non-number: {value!r}")
    return tuple(float(v) for v in values)


def decode_server_event(frame: str | bytes) -> ServerEvent | None:
    """Decode one frame from the server.

    Returns None for a message type this client does not know (logged at DEBUG and skipped, so
    that new server features do not break old clients).

    :raises ProtocolError: for bad JSON, a missing or mistyped field, or bad base64.
    """
    message = _load(frame)
    kind = message.get("type")
    if kind == "chunk":
        data = message.get("data")
        if not isinstance(data, str):
            raise ProtocolError("chunk message without a base64 'data' string")
        try:
            # strict_mode validates in C; b64decode(validate=True) runs a regex over the frame.
            audio = binascii.a2b_base64(data, strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError("chunk 'data' is not valid base64") from exc
        return AudioEvent(audio, _context_id(message))
    if kind == "timestamps":
        stamps = message.get("word_timestamps")
        if not isinstance(stamps, dict):
            raise ProtocolError("timestamps message without a 'word_timestamps' object")
        words = stamps.get("words")
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ProtocolError("word_timestamps.words must be a list of strings")
        return TimestampsEvent(
            tuple(words),
            _times(stamps, "start", len(words)),
            _times(stamps, "end", len(words)),
            _context_id(message),
        )
    if kind == "done":
        return DoneEvent(_context_id(message))
    if kind == "error":
        text = message.get("message")
        if not isinstance(text, str):
            raise ProtocolError("error message without a 'message' string")
        return ErrorEvent(text)
    if isinstance(kind, str):
        logger.debug("skipping server message of unknown type %r", kind)
        return None
    raise ProtocolError(f"server message without a string 'type': {_preview(frame)}")


# --------------------------------------------------------------------------- text handling


def sentence_end(text: str) -> int:
    """Index just past the last sentence end in *text* (server's bySentence rule), or 0."""
    end = 0
    for match in _SENTENCE_END.finditer(text):
        end = match.end()
    return end


def ends_sentence(text: str) -> bool:
    """True when *text*, ignoring trailing whitespace, ends a sentence."""
    stripped = text.rstrip()
    return bool(stripped) and sentence_end(stripped) == len(stripped)


def _cut(text: str, limit: int, pattern: re.Pattern[str]) -> int:
    """The largest cut point <= limit just after a match of *pattern*, or 0."""
    cut = 0
    for match in pattern.finditer(text, 0, limit + 1):
        if match.end() > limit:
            break
        cut = match.end()
    return cut


def split_text(text: str, limit: int = MAX_TEXT_CHARS) -> list[str]:
    """Split *text* into pieces of at most *limit* characters.

    Cuts fall after a sentence end where possible, then after whitespace, and only inside a
    word longer than *limit* as a last resort. Joining the pieces gives back *text* exactly.
    """
    if limit <= 0:
        raise ValueError("limit must be positive")
    pieces: list[str] = []
    while len(text) > limit:
        cut = _cut(text, limit, _SENTENCE_END)
        # A sentence end is only a cut if the whitespace after it fits in the piece too.
        while cut and cut < limit and text[cut].isspace():
            cut += 1
        if not cut:
            cut = _cut(text, limit, _WHITESPACE) or limit
        pieces.append(text[:cut])
        text = text[cut:]
    if text:
        pieces.append(text)
    return pieces


# --------------------------------------------------------------------------- stream state


class StreamState:
    """One speech stream's protocol state, independent of any socket.

    Each text message goes out tagged ``"<context_id>#<seq>"``; the server echoes the tag on
    the audio, timestamps and ``done`` of the batch that text completed. That tag tells this
    stream's events from stale ones of an earlier stream on a reused socket, tells which
    batches are finished, and after :meth:`clear` which audio predates the interruption.

    Word timestamps restart at 0 for each batch; they are shifted by the audio duration that
    had been delivered when the batch began (at the previous ``done`` of this stream), which
    holds whether timestamps arrive before, between or after the batch's chunks.
    """

    def __init__(
        self,
        context_id: str,
        *,
        audio_format: AudioFormat,
        sample_rate: int,
        segment: Segment = "bySentence",
    ) -> None:
        self.context_id = context_id
        self.audio_format: AudioFormat = audio_format
        self.sample_rate = sample_rate
        self.segment: Segment = segment
        self._prefix = context_id + "#"
        self._clock = AudioClock(audio_format, sample_rate)
        self._sent_seq = 0  # last text message sent
        self._expected_seq = 0  # last message the server will synthesize without further ado
        self._settled_seq = 0  # every message up to here is done, or cleared
        self._cleared_seq = 0  # audio tagged at or below this predates an interruption
        self._batch_offset = 0.0
        self._separate_next = False  # the last piece sent ended without whitespace
        self._holding = False
        self.input_ended = False
        #: events for other contexts (stale audio of an earlier stream), dropped.
        self.foreign_events = 0
        #: events of this stream that predate a clear(), dropped.
        self.discarded_events = 0
        self.audio_bytes = 0

    # ----------------------------------------------------------------- outgoing

    def text_frames(self, text: str) -> list[str]:
        """Frames that send *text*, split to the server's per-message limit.

        A piece with nothing to speak (whitespace only) is never sent: the server makes no
        batch of it, so no ``done`` would ever answer it. Instead, the next piece starts with
        the separating space, so sentences on either side of a message boundary never merge.
        """
        frames = []
        # One character of room for that separator.
        for piece in split_text(text, MAX_TEXT_CHARS - 1):
            if not piece.strip():
                self._separate_next = self._sent_seq > 0
                continue
            if self._separate_next and not piece[0].isspace():
                piece = " " + piece
            self._separate_next = not piece[-1].isspace()
            self._sent_seq += 1
            if self.segment == "immediate" or (
                self.segment == "bySentence" and ends_sentence(piece)
            ):
                self._expected_seq = self._sent_seq
            frames.append(
                encode_client_message(TextMessage(piece, f"{self._prefix}{self._sent_seq}"))
            )
        return frames

    def flush_frame(self) -> str:
        """Frame that makes the server synthesize everything sent so far."""
        self._expected_seq = self._sent_seq
        return _FLUSH_FRAME

    def end_input_frames(self) -> list[str]:
        """Frames that end this stream's input without closing the socket."""
        self.input_ended = True
        if self._sent_seq > self._settled_seq:
            return [self.flush_frame()]
        return []

    def hold(self) -> None:
        """Start an interruption now: deliver nothing until :meth:`clear_frame` is sent.

        The caller's ``clear()`` reaches the socket through queues; holding from the moment
        it is called means no audio from before it is delivered after it.
        """
        self._holding = True

    def release_hold(self) -> None:
        """Undo :meth:`hold` when the clear could not be queued."""
        self._holding = False

    def clear_frame(self) -> str:
        """Frame that interrupts: audio of everything sent so far is no longer wanted."""
        self._holding = False
        self._cleared_seq = self._sent_seq
        self._settled_seq = max(self._settled_seq, self._sent_seq)
        self._expected_seq = self._settled_seq
        # Timestamps of later batches are re-based on the audio actually delivered.
        self._batch_offset = self._clock.seconds
        return _CLEAR_FRAME

    def restart(self) -> None:
        """Forget incoming progress before everything is re-sent on a new socket.

        Only valid while nothing has been delivered: the new server synthesizes every batch
        again, so no batch counts as done and no half sample is carried over.
        """
        if self.audio_bytes:
            raise RuntimeError("cannot restart a stream that has delivered audio")
        self._settled_seq = self._cleared_seq
        self._clock.take_carry()
        self._batch_offset = 0.0

    # ----------------------------------------------------------------- status

    @property
    def sent_any(self) -> bool:
        return self._sent_seq > 0

    @property
    def audio_owed(self) -> bool:
        """True while the server owes audio for text it was asked to synthesize."""
        return self._expected_seq > self._settled_seq

    @property
    def complete(self) -> bool:
        """True once input has ended and every batch of this stream is done."""
        return self.input_ended and self._settled_seq >= self._sent_seq

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio delivered so far."""
        return self._clock.seconds

    # ----------------------------------------------------------------- incoming

    def _seq(self, context_id: str | None) -> int | None:
        """This stream's sequence number in *context_id*, or None if it is not ours."""
        if context_id is None or not context_id.startswith(self._prefix):
            return None
        try:
            return int(context_id[len(self._prefix) :])
        except ValueError:
            return None

    def receive(self, event: ServerEvent) -> list[SpeechEvent]:
        """Apply a decoded server event; return what the caller should get.

        :raises ServerError: for an ``error`` event.
        """
        if isinstance(event, ErrorEvent):
            raise ServerError(event.message)
        seq = self._seq(event.context_id)
        if seq is None or seq > self._sent_seq:
            self.foreign_events += 1
            return []
        if seq <= self._cleared_seq or self._holding:
            self.discarded_events += 1
            return []
        if isinstance(event, AudioEvent):
            data = self._clock.align(event.data)
            if not data:
                return []
            return [self._chunk(data)]
        if isinstance(event, TimestampsEvent):
            base = self._batch_offset
            return [
                WordTimestamp(word, base + start, base + end, self.context_id)
                for word, start, end in zip(event.words, event.starts, event.ends, strict=True)
            ]
        # DoneEvent: batches finish in order, so everything up to seq is done.
        if seq > self._settled_seq:
            self._settled_seq = seq
        self._batch_offset = self._clock.seconds
        if self.complete:
            carry = self._clock.take_carry()
            if carry:
                return [self._chunk(carry)]
        return []

    def _chunk(self, data: bytes) -> AudioChunk:
        offset = self._clock.seconds
        duration = self._clock.advance(data)
        self.audio_bytes += len(data)
        return AudioChunk(
            data, self.audio_format, self.sample_rate, self.context_id, offset, duration
        )
