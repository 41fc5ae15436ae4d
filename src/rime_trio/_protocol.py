"""Sans-IO core of Rime's ``/ws3`` protocol.

Frames in, frozen events out; no sockets, no tasks, no trio. The client (``_stream``) and the
bundled emulator (``rime_trio.testing``) share its wire encoding, so the frame format cannot
drift apart silently; what a server *does* with the frames is the emulator's own model.

* Client messages: :class:`TextMessage`, :class:`Flush`, :class:`Clear`, :class:`EndOfStream`,
  encoded by :func:`encode_client_message`, decoded (server side) by
  :func:`decode_client_message`.
* Server events: :class:`AudioEvent`, :class:`TimestampsEvent`, :class:`DoneEvent`,
  :class:`ErrorEvent`, encoded (server side) by :func:`encode_server_event`, decoded by
  :func:`decode_server_event`.
* :class:`~._segment.MessageCutter` (in ``_segment``, with every other sentence end): cuts
  outgoing text into messages no server reading splits.
* :class:`StreamState`: one speech stream's bookkeeping: its wire tags, which events are its
  own, when a synthesis run begins (to re-base run-relative word timestamps onto the stream's
  clock), interruptions, and the end of its audio.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import logging
import math
import random
import reprlib
from dataclasses import dataclass
from typing import Any, Final

from ._audio import AudioClock
from ._errors import ConnectionLost, ProtocolError, ServerError
from ._events import AudioChunk, SpeechEvent, WordTimestamp
from ._options import AudioFormat, Segment
from ._segment import MessageCutter

__all__ = [
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
    "random_tag",
]

logger = logging.getLogger("rime_trio")

# Tags need to be unique, not secret: a generator seeded from the OS once, not a system call
# per stream.
_tags = random.Random()


def random_tag() -> str:
    """A fresh random 16-hex-digit tag (a stream's wire contextId prefix, a default label)."""
    return f"{_tags.getrandbits(64):016x}"


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


# Short enough for one line of an error message, whatever a server put in a field.
_short = reprlib.Repr()
_short.maxstring = _short.maxother = _short.maxlong = 40
_short.maxlist = _short.maxdict = 4
_short.maxlevel = 2


def _show(value: object) -> str:
    """*value* (from a server's JSON) as a short repr for an error message."""
    try:
        return _short.repr(value)
    except ValueError:  # an int (maybe nested) with more digits than repr() may print
        return f"a {type(value).__name__} holding an integer too long to print"


def _context_id(message: dict[str, Any]) -> str | None:
    """The message's ``contextId``.

    :raises ProtocolError: if it is neither a string nor null (or absent).
    """
    context_id = message.get("contextId")
    if context_id is None or isinstance(context_id, str):
        return context_id
    raise ProtocolError(
        f"contextId must be a string or null, got {type(context_id).__name__} {_show(context_id)}"
    )


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


def _seconds(value: object, where: str) -> float:
    """One word time from the server, in seconds.

    :raises ProtocolError: unless *value* is a finite, non-negative JSON number that fits a
        float (``json`` reads ``1e400`` as infinity, ``NaN`` as NaN, and ``10**400`` as an int
        that ``float()`` refuses with ``OverflowError``).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{where} is not a number: {_show(value)}")
    try:
        seconds = float(value)
    except OverflowError:
        raise ProtocolError(f"{where} is an integer beyond the range of a float") from None
    if not math.isfinite(seconds):
        raise ProtocolError(f"{where} is not a finite number: {seconds!r}")
    if seconds < 0:
        raise ProtocolError(f"{where} is negative: {seconds!r}")
    return seconds


def _times(stamps: dict[str, Any], key: str, count: int) -> tuple[float, ...]:
    """The ``word_timestamps`` list *key* (``start`` or ``end``): *count* times, in order.

    :raises ProtocolError: if it is not a list of *count* times (see :func:`_seconds`), or a
        time is earlier than the one before it.
    """
    values = stamps.get(key)
    if not isinstance(values, list):
        raise ProtocolError(
            f"word_timestamps.{key} must be a list of numbers, got {type(values).__name__}"
        )
    if len(values) != count:
        raise ProtocolError(f"word_timestamps.{key} holds {len(values)} times for {count} words")
    times = tuple(_seconds(value, f"word_timestamps.{key}[{i}]") for i, value in enumerate(values))
    for i in range(1, count):
        if times[i] < times[i - 1]:
            raise ProtocolError(
                f"word_timestamps.{key} goes back in time at [{i}]: "
                f"{times[i - 1]!r} then {times[i]!r}"
            )
    return times


def _timestamps_event(message: dict[str, Any]) -> TimestampsEvent:
    """A ``timestamps`` message's event.

    :raises ProtocolError: for a missing or mistyped field, a word that is not a string, a
        bad time (see :func:`_times`), or a word that ends before it starts.
    """
    stamps = message.get("word_timestamps")
    if not isinstance(stamps, dict):
        raise ProtocolError(
            f"timestamps message without a 'word_timestamps' object, got {_show(stamps)}"
        )
    words = stamps.get("words")
    if not isinstance(words, list):
        raise ProtocolError(
            f"word_timestamps.words must be a list of strings, got {type(words).__name__}"
        )
    for i, word in enumerate(words):
        if not isinstance(word, str):
            raise ProtocolError(f"word_timestamps.words[{i}] is not a string: {_show(word)}")
    starts = _times(stamps, "start", len(words))
    ends = _times(stamps, "end", len(words))
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        if end < start:
            raise ProtocolError(
                f"word_timestamps: word {i} ({_show(words[i])}) ends at {end!r}, "
                f"before it starts at {start!r}"
            )
    return TimestampsEvent(tuple(words), starts, ends, _context_id(message))


def _audio_event(message: dict[str, Any]) -> AudioEvent:
    """A ``chunk`` message's event.

    :raises ProtocolError: if ``data`` is not a string of valid base64, or ``contextId`` is
        mistyped.
    """
    data = message.get("data")
    if not isinstance(data, str):
        raise ProtocolError(
            f"chunk message without a base64 'data' string, got {type(data).__name__}"
        )
    try:
        # strict_mode validates in C; b64decode(validate=True) runs a regex over the frame.
        audio = binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError) as exc:  # ValueError: a non-ASCII character
        raise ProtocolError(f"chunk 'data' is not valid base64 ({exc})") from None
    return AudioEvent(audio, _context_id(message))


def _server_event(message: dict[str, Any]) -> ServerEvent | None:
    """The event a decoded server message stands for (None: a type this client skips).

    :raises ProtocolError: naming the field that is missing, mistyped or out of range.
    """
    kind = message.get("type")
    if kind == "chunk":
        return _audio_event(message)
    if kind == "timestamps":
        return _timestamps_event(message)
    if kind == "done":
        return DoneEvent(_context_id(message))
    if kind == "error":
        text = message.get("message")
        if not isinstance(text, str):
            raise ProtocolError(
                f"error message without a 'message' string, got {type(text).__name__}"
            )
        return ErrorEvent(text)
    if isinstance(kind, str):
        logger.debug("skipping server message of unknown type %r", kind)
        return None
    raise ProtocolError(f"server message without a string 'type', got {_show(kind)}")


def decode_server_event(frame: str | bytes) -> ServerEvent | None:
    """Decode one frame from the server.

    Returns None for a message type this client does not know (logged at DEBUG and skipped, so
    that new server features do not break old clients).

    Every value taken from the frame is checked before use: audio must be valid base64 and
    word times finite, non-negative numbers that fit a float, one per word, in order, none
    ending before it starts. Nothing but :class:`ProtocolError` (naming the field, and
    quoting the start of the frame) leaves this function for any input.

    :raises ProtocolError: for bad JSON, or a missing, mistyped or out-of-range field.
    """
    message = _load(frame)
    try:
        return _server_event(message)
    except ProtocolError as exc:
        raise ProtocolError(f"{exc}; the frame: {_preview(frame)}") from None


# --------------------------------------------------------------------------- stream state


class StreamState:
    """One speech stream's ``/ws3`` protocol state, independent of any socket.

    Outgoing: each message carries the tag ``"<random>#<seq>"`` (the random part is fresh per
    stream, whatever ``context_id`` label the caller chose). Messages are cut so that no
    server splits one (:class:`MessageCutter`); in ``bySentence`` and ``never`` modes each
    complete sentence is followed by a ``flush``, so no server rule (a held ``.`` without a
    space, a lowercase word or an abbreviation after it) can hold a finished sentence back,
    and under ``never`` (where the server speaks only what a flush asks for) each sentence is
    spoken as soon as it is whole.

    The end. In ``bySentence`` and ``immediate`` modes the input ends with ``eos``: the
    server's close after it is the only end of a stream's audio that holds under every
    reading of the docs, since ``done`` events may come once per run or only when the
    server's buffer is empty. Under ``never`` each flush is answered by exactly one ``done``,
    after all of its audio (``docs/websockets-segment.mdx``, "Each flush produces exactly one
    done"): the input ends with a last flush, and the stream is complete at the ``done``
    tagged with exactly the last message that flush covered (a run tagged otherwise may be
    only part of it: a server may cut a flush into sentences, each tagged by the message it
    begins in, and the cutter starts a message at every place a server may cut). The socket
    is then idle, and the next stream with the same settings
    may take it (:attr:`ended_by_done`). Where that end cannot come (no such ``done``: a
    server that tags a run by its first message, coalesces flushes, or leaves dones out),
    :meth:`give_up_on_done` ends the input with ``eos`` after all, and the close is the end.

    Incoming: events whose tag is not this stream's are foreign (dropped, counted); events of
    text sent before an :meth:`interrupt` are stale (dropped). A synthesis run's word times
    restart at 0; a run begins where the tag changes or after a ``done``, whether a run's
    timestamps come before, between or after its chunks.
    """

    def __init__(
        self,
        context_id: str,
        *,
        audio_format: AudioFormat,
        sample_rate: int,
        segment: Segment = "bySentence",
        tag: str | None = None,
    ) -> None:
        self.context_id = context_id
        self.audio_format: AudioFormat = audio_format
        self.sample_rate = sample_rate
        self.segment: Segment = segment
        self.tag = tag or random_tag()
        self._prefix = self.tag + "#"
        self._cutter = MessageCutter()
        self._clock = AudioClock(audio_format, sample_rate)
        self._sent_seq = 0  # last text message sent
        self._cleared_seq = 0  # events tagged at or below this predate an interruption
        self._holding = False
        self._run_seq: int | None = None  # tag of the run whose events are arriving
        self._run_start = 0.0  # stream seconds where that run's audio began
        # What the server owes (see audio_owed): messages up to _triggered were flushed (or,
        # in immediate mode, sent); an event proves the server took up those to _answered.
        self._triggered = 0
        self._answered = 0
        self._flush_points: list[int] = []  # the last message before each flush
        self._heard = False  # an event of ours arrived since the socket took our text
        self._since = 0.0  # where the clock restarts on a retry (the last interruption)
        # segment=never: the latest flush point a done was tagged with exactly.
        self._done_at = 0
        #: the input ended (``end``): with ``eos``, or (``never``) with a last flush
        self.input_ended = False
        #: ``never``: end on the last flush's ``done`` (False: with ``eos``, as in the other
        #: modes; for a server whose dones did not end a stream before)
        self.trust_done = True
        #: the ``done`` that would have ended the stream never came (:meth:`give_up_on_done`)
        self.gave_up_on_done = False
        self.eos_sent = False
        self.complete = False
        #: bumped by :meth:`hold`: the caller's text and events stamped with an older one
        #: are stale
        self.epoch = 0
        #: events for other contexts (a misbehaving server), dropped.
        self.foreign_events = 0

    # ----------------------------------------------------------------- outgoing

    def _text_frame(self, message: str) -> str:
        self._sent_seq += 1
        return encode_client_message(TextMessage(message, f"{self._prefix}{self._sent_seq}"))

    def say(self, text: str, *, sentence: bool) -> list[str]:
        """Frames that send *text*, cut for the server: a whole *sentence* is flushed too in
        ``bySentence`` mode; part of one (or several) is not."""
        frames = [self._text_frame(message) for message in self._cutter.cut(text)]
        if frames and self.segment == "immediate":
            self._triggered = self._sent_seq  # the server synthesizes on arrival
        if frames and sentence and self.segment != "immediate":
            frames += self.flush()
        return frames

    def flush(self) -> list[str]:
        """Frames that make the server synthesize everything sent so far."""
        if self._sent_seq > self._triggered:
            self._triggered = self._sent_seq
            self._flush_points.append(self._sent_seq)
        return [_FLUSH_FRAME]

    def end(self) -> list[str]:
        """Frames that end the input: ``eos`` (the server synthesizes the rest, then closes),
        or under ``never`` a last flush, whose ``done`` ends the stream (none if everything
        was flushed already; ``eos`` if that ``done`` came already, or nothing was said)."""
        self.input_ended = True
        if self.segment != "never" or not self.trust_done or self._sent_seq == self._cleared_seq:
            self.eos_sent = True
            return [_EOS_FRAME]
        if self._sent_seq > self._triggered:
            return self.flush()
        if self._done_at == self._sent_seq:
            # Its done is here already, and nothing more will come to end on: the close.
            self.eos_sent = True
            return [_EOS_FRAME]
        return []

    @property
    def awaits_done(self) -> bool:
        """Whether the stream's end is the ``done`` of its last flush, still to come."""
        return self.input_ended and not self.eos_sent and not self.complete

    def give_up_on_done(self) -> list[str]:
        """Frames that end the input with ``eos`` after all (the server's close is the end):
        the ``done`` that would end it has not come, and may never."""
        if not self.awaits_done or self._triggered > self._answered:
            # Its audio has not even begun: a slow server, not a missing done (the audio
            # timeout is the bound for that silence).
            return []
        self.eos_sent = self.gave_up_on_done = True
        return [_EOS_FRAME]

    @property
    def done_missed(self) -> bool:
        """Whether the stream gave up on the done of its last flush, and it never came (it
        may still come after the ``eos``, before the close: then it was only slow)."""
        return self.gave_up_on_done and self._done_at != self._sent_seq

    @property
    def ended_by_done(self) -> bool:
        """Whether the stream completed at a ``done``, its socket idle and open (it may carry
        another stream with the same settings)."""
        return self.complete and not self.eos_sent

    def hold(self, delivered_seconds: float) -> None:
        """Start an interruption now: deliver nothing until :meth:`interrupt`.

        *delivered_seconds* is the audio the caller actually took; the stream's clock goes
        back to it, so later offsets and word times line up with what was heard.
        """
        self.epoch += 1
        self._holding = True
        self._clock.reset(delivered_seconds)
        self._run_seq = None
        self._run_start = delivered_seconds

    @property
    def needs_new_socket(self) -> bool:
        """Whether an interruption must move to a fresh socket: text went out since the last.

        ``clear`` cannot be relied on to stop everything: per Rime's docs it leaves a running
        synthesis, and text queued by an earlier flush, to finish (a server may even add
        later flushed text to that queued run, under a later contextId). Closing the socket
        is the one hard stop, and a pooled spare makes the move instant.
        """
        return self._sent_seq > self._cleared_seq

    def interrupt(self) -> None:
        """End the interruption started by :meth:`hold`, on a fresh socket if
        :attr:`needs_new_socket` said so: every event of text sent before is stale."""
        self._holding = False
        self._cleared_seq = self._triggered = self._answered = self._sent_seq
        self._done_at = self._sent_seq
        self._flush_points.clear()
        self._cutter.clear()
        self._heard = False
        self._run_seq = None
        self._since = self._run_start = self._clock.seconds

    def restart(self) -> None:
        """Forget incoming progress before everything since the last interruption (or the
        start) is re-sent on a new socket.

        Callers only do so while nothing has been delivered since: the new socket's server
        synthesizes every run again, and no half sample is carried over.
        """
        self._clock.reset(self._since)
        self._answered = self._done_at = self._cleared_seq
        self._heard = False
        self._run_seq = None
        self._run_start = self._since

    # ----------------------------------------------------------------- status

    @property
    def audio_owed(self) -> bool:
        """True while the server owes audio: after the input ended (until the close), and
        while text that a flush (or, in immediate mode, its arrival) made due has not been
        answered. Never merely because the caller has not finished a sentence, nor after a
        flush with nothing new to say.

        Any event of this stream tagged *t* (audio, timestamps or a ``done``) answers every
        message up to *t*; since a server may tag a run by where its last sentence began, it
        counts up to the next flush after *t* (in immediate mode, everything sent). A
        ``done`` alone cannot be what answers: a server may leave it out, and a caller who
        pauses after a run's audio would then time out for nothing. So this can report
        nothing owed too early (while the rest of an answered run is still coming, or runs
        are pending behind it), never the reverse: a stall is then caught once the input
        ends."""
        if self.complete:
            return False
        return self.input_ended or self._triggered > self._answered

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio delivered so far."""
        return self._clock.seconds

    # ----------------------------------------------------------------- incoming

    def _seq(self, context_id: str | None) -> int | None:
        """This stream's sequence number in *context_id*, or None if it is not ours."""
        if context_id is None or not context_id.startswith(self._prefix):
            return None
        digits = context_id[len(self._prefix) :]
        # No stream sends 10**18 messages: a longer number is not ours (and past 4,300 digits
        # int() itself refuses it).
        if not digits.isdigit() or not digits.isascii() or len(digits) > 18:
            return None
        return int(digits)

    def receive(self, event: ServerEvent) -> list[SpeechEvent]:
        """Apply a decoded server event; return what the caller should get.

        :raises ServerError: for an ``error`` event.
        """
        if isinstance(event, ErrorEvent):
            raise ServerError(event.message)
        seq = self._seq(event.context_id)
        if seq is None or seq > self._sent_seq:
            if isinstance(event, DoneEvent) and event.context_id is None:
                self._end_run()  # a done for nothing in particular (eos or flush on empty)
                return []
            self.foreign_events += 1
            return []
        if seq <= self._cleared_seq or self._holding:
            return []  # stale: text sent before an interruption
        self._heard = True
        # Whatever the event, the server took up this run (see audio_owed).
        self._answer(seq)
        if isinstance(event, DoneEvent):
            self._end_run()
            if self.segment == "never" and seq == self._flush_point(seq) <= self._triggered:
                # Tagged with exactly a flush's last message: the run that ends with it. A
                # done tagged with an earlier message may answer only part of a flush (a
                # server that cuts it into sentences, each tagged by where it begins).
                self._done_at = max(self._done_at, seq)
                if self.awaits_done and self._done_at == self._sent_seq == self._triggered:
                    self.complete = True
            return []
        if seq != self._run_seq:
            self._run_seq = seq
            self._run_start = self._clock.seconds
        if isinstance(event, AudioEvent):
            data = self._clock.align(event.data)
            if not data:
                return []
            return [self._chunk(data)]
        base = self._run_start
        return [
            WordTimestamp(word, base + start, base + end, self.context_id)
            for word, start, end in zip(event.words, event.starts, event.ends, strict=True)
        ]

    def _end_run(self) -> None:
        self._run_seq = None
        self._run_start = self._clock.seconds

    def _flush_point(self, seq: int) -> int:
        """The last message of the flush that covered message *seq* (itself if none did)."""
        points = self._flush_points
        index = bisect.bisect_left(points, seq)
        return points[index] if index < len(points) else seq

    def _answer(self, seq: int) -> None:
        upto = self._sent_seq if self.segment == "immediate" else self._flush_point(seq)
        self._answered = max(self._answered, upto)

    def finish(self) -> list[SpeechEvent]:
        """The server closed the socket normally; return any audio still carried.

        :raises ConnectionLost: if no ``eos`` had gone out: the server hung up early.
        """
        if not self.eos_sent:
            raise ConnectionLost("the server closed the connection before the input ended")
        if self._sent_seq > self._cleared_seq and not self._heard:
            # Text went out and not one event answered it: a server that hung up on it, not
            # the end of its audio (every reading answers text with audio or a done).
            raise ConnectionLost(
                "the server closed the connection (code 1000) without answering the text"
            )
        self.complete = True
        carry = self._clock.take_carry()
        return [self._chunk(carry)] if carry else []

    def _chunk(self, data: bytes) -> AudioChunk:
        offset = self._clock.seconds
        duration = self._clock.advance(data)
        return AudioChunk(
            data, self.audio_format, self.sample_rate, self.context_id, offset, duration
        )
