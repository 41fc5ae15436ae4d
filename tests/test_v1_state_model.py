"""The v1 stream's protocol core against the emulator's v1 server model, with no sockets.

What ``tests/test_fidelity_model.py`` does for ``/ws3``: hypothesis draws a server reading, a
segment mode, a frame encoding, chunk sizes (odd ones split samples), a text with the cases
sentence rules disagree on, a split of it into tokens, flush and clear points, and the
interleaving of everything: when the client writes, when the server reads and speaks, when
the socket's reader routes an event to the stream's inbox, and when the stream takes it.
The client side is :class:`~rime_trio._protocol_v1.V1StreamState` on a
:class:`~rime_trio._protocol_v1.V1Connection`, driven as ``_v1_stream`` drives it; the server
is :class:`~rime_trio.testing._v1_model.V1ServerModel`.

Whatever it draws, the caller gets exactly the audio the server synthesized for the text said
after the last clear, byte for byte and on a contiguous clock (across the contexts flushes
ended), the words of that audio, each context's after its audio, and before each clear a
prefix of what the contexts it left carried. The server holds unfinished text or speaks it on
arrival (``V1Readings.unfinished``).
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rime_trio import AudioChunk, RimeOptions, SpeechEvent, WordTimestamp
from rime_trio._options import Segment
from rime_trio._protocol_v1 import (
    SUBPROTOCOL_BINARY,
    SUBPROTOCOL_JSON,
    Cancelled,
    Done,
    ErrorEvent,
    Event,
    Frame,
    V1Connection,
    V1StreamState,
    decode_request,
    encode_message,
)
from rime_trio._segment import SentenceSplitter, speakable
from rime_trio.testing import V1Readings, render_speech
from rime_trio.testing._config import RunRecord
from rime_trio.testing._faults import chunk_sizes
from rime_trio.testing._v1_model import Outgoing, V1ServerModel

RATE = 8000

# Sentences where a server's rule and the client's tokenizer disagree, or that are hard.
SENTENCES = [
    "Hello there.",
    "Dr. Smith arrived at noon.",
    "It costs 2.5 dollars.",
    "Wait… what happened?",
    'He said "Stop." and left.',
    "it was fine. then it rained.",
    "Is it 5 p.m. already?!",
    "¿Qué tal? Bien.",
    "你好。再见！",
    "The U.S. team won e.g. twice.",
    "No punctuation here",
    "Ends with a quote (really.)",
    "word " * 230 + "end.",
]

readings = st.builds(
    V1Readings,
    timestamps=st.sampled_from(["context", "per_sentence", "none"]),
    cancel_finished=st.sampled_from(["silent", "cancelled"]),
    unfinished=st.sampled_from(["speak", "hold"]),
)


@st.composite
def texts(draw: st.DrawFn) -> str:
    chosen = draw(st.lists(st.sampled_from(SENTENCES), min_size=1, max_size=4))
    separators = draw(st.lists(st.sampled_from([" ", "  ", "\n", " \t", ""]), min_size=4))
    return "".join(s + sep for s, sep in zip(chosen, separators, strict=False))


@st.composite
def tokens(draw: st.DrawFn, text: str) -> list[str]:
    cuts = draw(st.lists(st.integers(min_value=1, max_value=max(1, len(text) - 1)), max_size=12))
    bounds = sorted({0, len(text), *cuts})
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@dataclass
class Simulation:
    """A v1 stream on one connection, a server model, and the queues between them: frames
    each way, and the stream's inbox (what the socket's reader routed to it)."""

    state: V1StreamState
    conn: V1Connection
    server: V1ServerModel
    splitter: SentenceSplitter = field(default_factory=SentenceSplitter)
    to_server: deque[Frame] = field(default_factory=deque)
    to_client: deque[Frame] = field(default_factory=deque)
    inbox: deque[Event] = field(default_factory=deque)
    routes: set[str] = field(default_factory=set)  # the session's routes to this stream
    server_idle: bool = False
    clears: int = 0
    generation_of: dict[str, int] = field(default_factory=dict)  # wire id -> clears then
    delivered: list[tuple[int, SpeechEvent]] = field(default_factory=list)
    delivered_seconds: float = 0.0  # the audio the caller took (all of it, at once)
    offsets: list[float] = field(default_factory=list)  # where each hold put the clock
    said: list[str] = field(default_factory=list)  # text handed to the state since the hold

    # ----------------------------------------------------------------- client

    def write(self, messages: list[str], *, end: bool) -> None:
        """The send task's write (``V1Link.send``): the state's frames, a new context routed."""
        before = self.state.wire_id
        frames = self.state.frames(messages, end=end)
        wire_id = self.state.wire_id
        if wire_id is not None and wire_id != before:
            self.routes.add(wire_id)
            self.generation_of[wire_id] = self.clears
        self.to_server.extend(frames)

    def say(self, text: str) -> list[str]:
        self.said.append(text)
        return self.state.say(text, sentence=False)

    def push(self, token: str) -> None:
        for sentence in self.splitter.feed(token):
            messages = self.say(sentence)
            if messages:
                self.write(messages, end=False)

    def flush(self) -> None:
        rest = self.splitter.flush() if speakable(self.splitter.pending) else ""
        messages = self.say(rest) if rest else []
        messages += self.state.flush()
        if messages:
            self.write(messages, end=False)

    def hold(self) -> None:
        """``SpeechStream.clear()``: the hold at once, the text not yet sent dropped."""
        self.clears += 1
        self.state.hold(self.delivered_seconds)
        self.offsets.append(self.delivered_seconds)
        self.splitter.clear()
        self.said = []

    def interrupt(self) -> None:
        """The send task's turn to act on the clear (``V1Link.switch``)."""
        old = self.state.wire_id
        frames = self.state.interrupt()
        if old is not None:
            self.routes.discard(old)  # its late events are nobody's
        self.to_server.extend(frames)

    def end(self) -> None:
        rest = self.splitter.flush()
        # What follows the last sentence with no word in it is not said (the input task).
        messages = self.say(rest) if speakable(rest) else []
        self.write(messages + self.state.end(), end=True)

    def client_reads(self) -> None:
        """The session's reader: one frame, its events routed by context id."""
        for event in self.conn.receive(self.to_client.popleft()):
            context_id = event.context_id
            if context_id is None or context_id not in self.routes:
                continue
            if isinstance(event, Done | Cancelled | ErrorEvent):
                self.routes.discard(context_id)
            self.inbox.append(event)

    def client_takes(self) -> None:
        """The recv task: one event of the inbox through the state, to the caller."""
        for output in self.state.receive(self.inbox.popleft()):
            self.delivered.append((self.clears, output))
            if isinstance(output, AudioChunk):
                self.delivered_seconds = output.offset + output.duration

    # ----------------------------------------------------------------- records

    def runs_of(self, records: list[RunRecord], generation: int) -> list[RunRecord]:
        """The server's runs for the contexts started between clear *generation* and the
        next, context by context in the order they started (each context's in its order)."""
        contexts = [w for w, g in self.generation_of.items() if g == generation]
        return [r for context in contexts for r in records if r.context_id == context]

    # ----------------------------------------------------------------- server

    def server_reads(self) -> None:
        self.server.receive(decode_request(self.to_server.popleft()))
        self.server_idle = False

    def server_speaks(self) -> None:
        item = self.server.next_event()
        if item is None:
            self.server_idle = True
            return
        assert isinstance(item, Outgoing), item  # unpaced, and authenticated by handshake
        if item.record is not None and item.kind == "audio":
            item.record.audio += item.response.audio
        self.to_client.append(encode_message(item.response, self.conn.encoding))


def connected(subprotocol: str, model: V1ServerModel) -> V1Connection:
    conn = V1Connection(subprotocol)
    ready = model.next_event()
    assert isinstance(ready, Outgoing)
    assert ready.kind == "ready"
    conn.receive(encode_message(ready.response, conn.encoding))
    assert conn.ready is not None
    return conn


SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(
    readings,
    st.sampled_from(["bySentence", "immediate", "never"]),
    st.sampled_from([SUBPROTOCOL_BINARY, SUBPROTOCOL_JSON]),
    st.tuples(st.sampled_from([701, 1200, 4801]), st.booleans()),
    texts().flatmap(lambda text: st.tuples(st.just(text), tokens(text))),
    st.data(),
)
def test_the_caller_gets_exactly_the_audio_the_server_made_for_its_text(
    reading: V1Readings,
    segment: Segment,
    subprotocol: str,
    chunking: tuple[int, bool],
    text_and_tokens: tuple[str, list[str]],
    data: st.DataObject,
) -> None:
    text, pieces = text_and_tokens
    size, odd = chunking
    records: list[RunRecord] = []
    model = V1ServerModel(
        reading, chunk_sizes=lambda total: chunk_sizes(total, size, odd=odd), records=records
    )
    conn = connected(subprotocol, model)
    options = RimeOptions(api_key="k", sample_rate=RATE, segment=segment)
    state = V1StreamState("s", options)
    state.attach(conn)
    sim = Simulation(state, conn, model)

    # Client operations, in order: tokens, with flushes and up to two clears among them (a
    # clear is the hold at once, and the interruption when the send task gets to it).
    ops: list[tuple[str, str]] = [("push", p) for p in pieces]
    for _ in range(data.draw(st.integers(0, 2), label="flushes")):
        ops.insert(data.draw(st.integers(0, len(ops)), label="flush at"), ("flush", ""))
    for _ in range(data.draw(st.integers(0, 2), label="clears")):
        at = data.draw(st.integers(0, len(ops)), label="clear at")
        ops[at:at] = [("hold", ""), ("interrupt", "")]
    ops.append(("end", ""))
    last_clear = max((i for i, (op, _) in enumerate(ops) if op == "hold"), default=0)
    spoken_after_clear = "".join(p for op, p in ops[last_clear:] if op == "push")

    steps = 0
    while True:
        steps += 1
        assert steps < 50_000, "no progress: the stream would hang"
        choices = []
        if ops:
            choices.append("client")
        if sim.to_server:
            choices.append("server reads")
        if not sim.server_idle:
            choices.append("server speaks")
        if sim.to_client:
            choices.append("client reads")
        if sim.inbox:
            choices.append("client takes")
        if not choices:
            break
        choice = data.draw(st.sampled_from(choices)) if len(choices) > 1 else choices[0]
        if choice == "client":
            op, arg = ops.pop(0)
            getattr(sim, op)(*([arg] if op == "push" else []))
        elif choice == "server reads":
            sim.server_reads()
        elif choice == "server speaks":
            sim.server_speaks()
        elif choice == "client reads":
            sim.client_reads()
        else:
            sim.client_takes()

    # Everything settled: the stream completed, every context got its terminal event.
    assert state.complete, "the stream would hang: its context never completed"
    assert not state.audio_owed
    assert state.foreign_events == 0
    assert conn.open_contexts == 0
    assert model.open_contexts == []

    # After the last clear: exactly the audio of the contexts started after it (one, and one
    # more after each flush that had text to force), in the order they started, which is the
    # model's speech of the text said after it, whole.
    current = state.wire_id
    assert current is not None
    assert sim.generation_of[current] == sim.clears
    runs = sim.runs_of(records, sim.clears)
    after = [event for clears, event in sim.delivered if clears == sim.clears]
    chunks = [e for e in after if isinstance(e, AudioChunk)]
    got = b"".join(c.data for c in chunks)
    assert got == b"".join(bytes(r.audio) for r in runs)
    assert got == b"".join(render_speech(r.text, RATE).pcm for r in runs)
    # All of the text pushed since, but a wordless tail the input task does not send.
    spoken = _visible(text if not sim.clears else spoken_after_clear)
    said = _visible("".join(sim.said))
    assert spoken.startswith(said)
    assert not speakable(spoken[len(said) :])
    assert _visible("".join(r.text for r in runs)) == said
    # On one clock: from where the last hold put it, with no gap and no overlap.
    position = sim.offsets[-1] if sim.offsets else 0.0
    for chunk in chunks:
        assert abs(chunk.offset - position) < 1e-9
        position = chunk.offset + chunk.duration

    # Before each clear: a prefix of what the context of that time carried.
    for generation in range(sim.clears):
        got_then = b"".join(
            e.data
            for clears, e in sim.delivered
            if clears == generation
            if isinstance(e, AudioChunk)
        )
        carried = b"".join(bytes(r.audio) for r in sim.runs_of(records, generation))
        assert carried.startswith(got_then)

    # The words of that audio, once, each context's after its audio and before the next
    # context's: on the audio exactly where the server times them from the context's start
    # (the docs); in order where it restarts per sentence.
    words = [w for w in after if isinstance(w, WordTimestamp)]
    if reading.timestamps == "none":
        assert words == []  # the server gave none: the stream completed all the same
        return
    expected: list[tuple[str, float, float]] = []
    audio_before: list[int] = []  # per word: the audio of its context and those before
    start = sim.offsets[-1] if sim.offsets else 0.0
    through = 0
    for context in [w for w, g in sim.generation_of.items() if g == sim.clears]:
        context_runs = [r for r in records if r.context_id == context]
        through += sum(len(r.audio) for r in context_runs)
        for run in context_runs:
            speech = render_speech(run.text, RATE)
            expected += [
                (word, start + s, start + e)
                for word, s, e in zip(speech.words, speech.starts, speech.ends, strict=True)
            ]
            audio_before += [through] * len(speech.words)
            start += speech.duration
    assert [w.word for w in words] == [word for word, _, _ in expected]
    if reading.timestamps == "context":
        for got_word, (_, start_want, end_want) in zip(words, expected, strict=True):
            assert abs(got_word.start - start_want) < 1e-6
            assert abs(got_word.end - end_want) < 1e-6
    seen = 0
    word_index = 0
    for event in after:
        if isinstance(event, AudioChunk):
            seen += len(event.data)
        elif isinstance(event, WordTimestamp):
            assert seen == audio_before[word_index]  # v1: words come at the context's end
            word_index += 1


def _visible(text: str) -> str:
    return "".join(text.split())


def test_events_of_the_left_context_already_in_the_inbox_are_dropped() -> None:
    """An example the property covers, pinned: the old context's events were routed to the
    stream before the clear; the state drops them, and the fresh context speaks alone."""
    records: list[RunRecord] = []
    model = V1ServerModel(V1Readings(cancel_finished="cancelled"), records=records)
    conn = connected(SUBPROTOCOL_BINARY, model)
    state = V1StreamState("s", RimeOptions(api_key="k", sample_rate=RATE, segment="bySentence"))
    state.attach(conn)
    sim = Simulation(state, conn, model)
    sim.push("Hello there. ")
    while sim.to_server:
        sim.server_reads()
    sim.server_speaks()  # started
    sim.server_speaks()  # the first chunk
    sim.client_reads()
    sim.client_reads()  # both in the stream's inbox, not yet taken
    sim.hold()
    sim.interrupt()
    sim.push("Only this.")
    sim.end()
    while sim.to_server or not sim.server_idle or sim.to_client or sim.inbox:
        if sim.to_server:
            sim.server_reads()
        elif not sim.server_idle:
            sim.server_speaks()
        elif sim.to_client:
            sim.client_reads()
        else:
            sim.client_takes()
    assert state.complete
    audio = b"".join(e.data for _, e in sim.delivered if isinstance(e, AudioChunk))
    assert audio == render_speech("Only this.", RATE).pcm
    assert len(sim.generation_of) == 2  # the old context, and the one after the clear
