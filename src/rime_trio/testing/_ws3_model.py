"""Sans-IO model of a Rime ``/ws3`` server: client messages in, synthesis runs and events out.

No sockets, no tasks, no clock: the emulator's I/O layer (``_ws3_socket``) feeds it decoded
client messages and asks it what to synthesize next, and tests drive it with plain synchronous
calls. What it does where Rime's docs are open is set by :class:`Ws3Readings`.

The speaker loop it is built for::

    model = Ws3ServerModel("bySentence", Ws3Readings())
    model.receive(TextMessage("Hello there. ", "a"))
    action = model.next_action()          # Run("Hello there.", "a", ...)
    ...send run_events(action, ...) unless model.is_abandoned(action)...
    events = model.finish_run(action)     # [DoneEvent("a")] or []
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from .._options import Segment
from .._protocol import (
    AudioEvent,
    Clear,
    ClientMessage,
    DoneEvent,
    EndOfStream,
    Flush,
    ServerEvent,
    TextMessage,
    TimestampsEvent,
)
from ._synth import SpeechAudio
from ._ws3_readings import TimestampPlacement, Ws3Readings, sentence_ends

__all__ = ["CloseAction", "Run", "Ws3ServerModel", "run_events"]

_DEFAULT: Final = Ws3Readings()

# Buffered text with the contextId it carries (a message's own id, or the one it inherited).
_Piece = tuple[str, str | None]


@dataclass(frozen=True, slots=True)
class Run:
    """One synthesis run: the text it speaks and the contextId on all its events.

    An empty run (``text == ""``) synthesizes nothing and only answers with a ``done``
    (``flush_empty_done`` / ``eos_empty_done``).

    :ivar number: 1-based, in the order the model handed runs out on its connection.
    :ivar generation: the clear generation it belongs to (see :meth:`Ws3ServerModel.is_abandoned`).
    :ivar always_done: under ``segment=never``, ``never_flushes="each"`` (one ``done`` per
        flush): True, answered by a ``done`` whatever is buffered (the flush's last run);
        False, by none (a sentence of the flush before its last); None: by the done rule.
    """

    text: str
    context_id: str | None
    number: int
    generation: int
    always_done: bool | None = None

    @property
    def empty(self) -> bool:
        return not self.text


@dataclass(frozen=True, slots=True)
class CloseAction:
    """Close the socket (after ``eos``, once every run is out)."""

    code: int = 1000
    reason: str = ""


@dataclass(slots=True)
class _Batch:
    """Text taken from the buffer, waiting to run."""

    pieces: list[_Piece]
    # Queued by flush/eos: later flushes add their text to it until it starts.
    coalesces: bool = False
    # segment=never, one done per flush: True, answered by a done whatever is buffered;
    # False, by none (a sentence of the flush before its last); None, by the done rule.
    always_done: bool | None = None


@dataclass(slots=True)
class _State:
    buffer: list[_Piece] = field(default_factory=list)
    queue: deque[_Batch] = field(default_factory=deque)
    running: Run | None = None
    context_id: str | None = None  # ids persist over messages that omit one
    generation: int = 0
    runs: int = 0
    eos: bool = False
    closed: bool = False


class Ws3ServerModel:
    """What one ``/ws3`` connection's server does, in *segment* mode under *readings*.

    Call :meth:`receive` for each client message, and :meth:`next_action` whenever the speaker
    is idle; a returned :class:`Run` makes the model busy until :meth:`finish_run`.
    """

    def __init__(self, segment: Segment, readings: Ws3Readings = _DEFAULT) -> None:
        self.segment: Segment = segment
        self.readings = readings
        self._s = _State()

    # ----------------------------------------------------------------- inspection

    @property
    def buffered(self) -> str:
        """Text received and not yet taken into a run."""
        return "".join(text for text, _ in self._s.buffer)

    @property
    def busy(self) -> bool:
        """True while a run is running or queued."""
        return self._s.running is not None or bool(self._s.queue)

    @property
    def ended(self) -> bool:
        """True once ``eos`` arrived: further messages are ignored."""
        return self._s.eos

    # ----------------------------------------------------------------- input

    def receive(self, message: ClientMessage) -> None:
        """Take one client message. After ``eos`` the server takes no more; they are ignored."""
        s = self._s
        if s.eos:
            return
        if isinstance(message, TextMessage):
            if message.context_id is not None:
                s.context_id = message.context_id
            if message.text:
                s.buffer.append((message.text, s.context_id))
            self._schedule()
        elif isinstance(message, Flush):
            self._flush(empty_done=self.readings.flush_empty_done)
        elif isinstance(message, Clear):
            s.buffer.clear()
            if self.readings.clear_stops_synthesis:
                s.queue.clear()
                s.generation += 1  # the running run (if any) is abandoned
            elif s.queue:
                # A clear is a barrier: text flushed after it never joins a run queued before
                # it, or that run's audio would carry the new contextId.
                s.queue[-1].coalesces = False
        elif isinstance(message, EndOfStream):
            self._flush(empty_done=self.readings.eos_empty_done)
            s.eos = True

    def _take(self, upto: int) -> list[_Piece]:
        """Remove the first *upto* characters of the buffer, as pieces with their ids."""
        taken, rest = _split_pieces(self._s.buffer, upto)
        self._s.buffer = rest
        return taken

    def _schedule(self) -> None:
        """When idle, queue the run the segment mode takes from the buffer, if any."""
        if self.busy:
            return  # text piles up until the running run finishes
        text = self.buffered
        upto = 0
        if self.segment == "immediate":
            upto = len(text) if text.strip() else 0
        elif self.segment == "bySentence":
            ends = sentence_ends(text, self.readings)
            if ends:
                upto = ends[0] if self.readings.run_sentences == "first" else ends[-1]
        if upto:
            self._s.queue.append(_Batch(self._take(upto)))

    def _flush(self, *, empty_done: bool) -> None:
        s = self._s
        if not self.buffered.strip():
            # Whitespace only counts as empty. It stays buffered (it makes no run), so the runs'
            # texts joined are exactly the text sent, up to trailing whitespace.
            if empty_done and not s.queue:
                s.queue.append(_Batch([("", s.context_id)]))  # an empty run: only a done
            return
        pieces = self._take(len(self.buffered))
        if self.segment == "never" and self.readings.never_flushes == "each":
            s.queue.append(_Batch(pieces, always_done=True))  # one utterance, one done
        elif s.queue and s.queue[-1].coalesces:
            s.queue[-1].pieces.extend(pieces)  # flushes before it starts make one run
        else:
            s.queue.append(_Batch(pieces, coalesces=True))

    # ----------------------------------------------------------------- output

    def next_action(self) -> Run | CloseAction | None:
        """What the idle speaker does next: a run to synthesize (the model is busy until
        :meth:`finish_run`), the close after ``eos``, or None (wait for a message).

        :raises RuntimeError: if a run is still running.
        """
        s = self._s
        if s.running is not None:
            raise RuntimeError(f"run {s.running.number} is still running: finish_run() it first")
        if s.queue:
            batch = s.queue.popleft()
            pieces = batch.pieces
            always_done = batch.always_done
            if self.readings.tagging == "per_sentence":
                first, *rest = self._sentences(pieces)
                if rest:
                    # Still one done per flush (never_flushes="each"): after its last run.
                    s.queue.extendleft(_Batch(p) for p in reversed(rest))
                    if always_done:
                        for index in range(len(rest)):
                            s.queue[index].always_done = index == len(rest) - 1
                        always_done = False
                pieces = first
            s.runs += 1
            s.running = Run(_text(pieces), self._tag(pieces), s.runs, s.generation, always_done)
            return s.running
        if s.eos and not s.closed:
            s.closed = True
            return CloseAction()
        return None

    def is_abandoned(self, run: Run) -> bool:
        """True when a ``clear`` stopped *run* (``clear_stops_synthesis``): send no more of it."""
        return run.generation != self._s.generation

    def finish_run(self, run: Run) -> list[ServerEvent]:
        """Mark *run* finished; return the events that follow it (its ``done``, or nothing).

        :raises RuntimeError: if *run* is not the running run.
        """
        s = self._s
        if run is not s.running:
            raise RuntimeError(f"run {run.number} is not the running run")
        s.running = None
        events: list[ServerEvent] = []
        rule = self.readings.done == "per_run" or not self.buffered.strip()
        answered = rule if run.always_done is None else run.always_done
        if not self.is_abandoned(run) and (run.empty or answered):
            events.append(DoneEvent(run.context_id))
        self._schedule()
        return events

    def _tag(self, pieces: list[_Piece]) -> str | None:
        if self.readings.tagging == "per_sentence":
            for text, context_id in pieces:
                if text.strip():
                    return context_id
        return pieces[-1][1]

    def _sentences(self, pieces: list[_Piece]) -> list[list[_Piece]]:
        """Split a run's pieces into one list per sentence (the server's rule, nothing more to
        come). Whitespace after a sentence end starts the next; trailing whitespace stays
        with the last sentence."""
        text = _text(pieces)
        cuts = [end for end in sentence_ends(text, self.readings, final=True) if text[end:].strip()]
        sentences: list[list[_Piece]] = []
        rest, consumed = pieces, 0
        for cut in cuts:
            sentence, rest = _split_pieces(rest, cut - consumed)
            sentences.append(sentence)
            consumed = cut
        sentences.append(rest)
        return sentences


def _text(pieces: Sequence[_Piece]) -> str:
    return "".join(text for text, _ in pieces)


def _split_pieces(pieces: Sequence[_Piece], upto: int) -> tuple[list[_Piece], list[_Piece]]:
    """The pieces holding the first *upto* characters, and the rest (a piece cut in two keeps
    its id on both sides)."""
    head: list[_Piece] = []
    tail: list[_Piece] = []
    remaining = upto
    for text, context_id in pieces:
        if remaining >= len(text):
            head.append((text, context_id))
            remaining -= len(text)
        elif remaining > 0:
            head.append((text[:remaining], context_id))
            tail.append((text[remaining:], context_id))
            remaining = 0
        else:
            tail.append((text, context_id))
    return head, tail


def run_events(
    run: Run,
    speech: SpeechAudio,
    audio: bytes,
    chunk_sizes: Sequence[int],
    placement: TimestampPlacement,
) -> list[ServerEvent]:
    """A run's ``chunk`` and ``timestamps`` events, tagged with its contextId, in wire order.

    *audio* is *speech* encoded for the connection, cut into *chunk_sizes*. The one
    ``timestamps`` event (times from the run's start) goes where *placement* says. An empty run
    has no events. The ``done`` is not included: it comes from :meth:`Ws3ServerModel.finish_run`.

    :raises ValueError: if *chunk_sizes* do not add up to ``len(audio)``.
    """
    if run.empty:
        return []
    if sum(chunk_sizes) != len(audio):
        raise ValueError(f"chunk sizes add up to {sum(chunk_sizes)}, not {len(audio)}")
    tag = run.context_id
    chunks: list[ServerEvent] = []
    offset = 0
    for size in chunk_sizes:
        chunks.append(AudioEvent(audio[offset : offset + size], tag))
        offset += size
    stamps = TimestampsEvent(speech.words, speech.starts, speech.ends, tag)
    if placement == "before":
        return [stamps, *chunks]
    if placement == "between":
        return [*chunks[:1], stamps, *chunks[1:]]
    return [*chunks, stamps]
