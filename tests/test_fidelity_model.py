"""The client's protocol core against the emulator's server model, with no sockets.

Hypothesis draws a server reading (every open point of PROTOCOL.md), a segment mode, a text
with the cases the server's sentence rule and blingfire disagree on, a split of it into
tokens, flush and clear points, and the interleaving of everything: when the client sends,
when the server reads, synthesizes, and when the client receives. Whatever it draws, the
caller gets exactly the audio the server synthesized for its text, in order, word times on
that audio, and nothing from before a clear.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rime_trio import AudioChunk, SpeechEvent, WordTimestamp
from rime_trio._options import Segment
from rime_trio._protocol import (
    AudioEvent,
    DoneEvent,
    ServerEvent,
    StreamState,
    decode_client_message,
    decode_server_event,
    encode_server_event,
)
from rime_trio._segment import SentenceSplitter
from rime_trio.testing import Ws3Readings, render_speech
from rime_trio.testing._ws3_model import CloseAction, Run, Ws3ServerModel, run_events

RATE = 8000
CHUNK = 700

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
    Ws3Readings,
    done=st.sampled_from(["when_empty", "per_run"]),
    tagging=st.sampled_from(["later", "per_sentence"]),
    run_sentences=st.sampled_from(["all", "first"]),
    timestamps=st.sampled_from(["before", "between", "after"]),
    lowercase_splits=st.booleans(),
    abbreviations_split=st.booleans(),
    hold_unspaced_end=st.booleans(),
    flush_empty_done=st.booleans(),
    eos_empty_done=st.booleans(),
    clear_stops_synthesis=st.booleans(),
    never_flushes=st.sampled_from(["each", "coalesce"]),
)


@st.composite
def texts(draw: st.DrawFn) -> str:
    chosen = draw(st.lists(st.sampled_from(SENTENCES), min_size=1, max_size=5))
    separators = draw(st.lists(st.sampled_from([" ", "  ", "\n", " \t", ""]), min_size=5))
    return "".join(s + sep for s, sep in zip(chosen, separators, strict=False))


@st.composite
def tokens(draw: st.DrawFn, text: str) -> list[str]:
    cuts = draw(st.lists(st.integers(min_value=1, max_value=max(1, len(text) - 1)), max_size=12))
    bounds = sorted({0, len(text), *cuts})
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@dataclass
class Simulation:
    """A client stream and a server connection with two queues between them."""

    state: StreamState
    server: Ws3ServerModel
    readings: Ws3Readings
    splitter: SentenceSplitter = field(default_factory=SentenceSplitter)
    to_server: deque[str] = field(default_factory=deque)
    to_client: deque[ServerEvent | None] = field(default_factory=deque)  # None: the close
    speaking: deque[ServerEvent] = field(default_factory=deque)
    run: Run | None = None
    runs: list[tuple[Run, bytes, int]] = field(default_factory=list)  # with its connection
    connection: int = 1
    delivered: list[tuple[int, int, SpeechEvent]] = field(default_factory=list)
    clears: int = 0
    closed: bool = False
    dones: str = "all"  # "all", "none" (missing_done) or "twice" (extra_done)

    # ----------------------------------------------------------------- client

    def push(self, token: str) -> None:
        for sentence in self.splitter.feed(token):
            self.to_server.extend(self.state.say(sentence, sentence=True))

    def flush(self) -> None:
        rest = self.splitter.flush()
        if rest:
            self.to_server.extend(self.state.say(rest, sentence=False))
        self.to_server.extend(self.state.flush())

    def clear(self) -> None:
        # What SpeechStream.clear() does, with a caller who took every event at once: the
        # stream moves to a fresh socket (the old one is closed with whatever was on it).
        self.clears += 1
        self.state.hold(self.state.audio_seconds)
        self.splitter.clear()
        if self.state.needs_new_socket:
            self.server = Ws3ServerModel(self.server.segment, self.readings)
            self.to_server.clear()
            self.to_client.clear()
            self.speaking.clear()
            self.run = None
            self.connection += 1
        self.state.interrupt()

    def end(self) -> None:
        rest = self.splitter.flush()
        if rest:
            self.to_server.extend(self.state.say(rest, sentence=False))
        self.to_server.extend(self.state.end())

    def client_receives(self) -> None:
        event = self.to_client.popleft()
        outputs = self.state.finish() if event is None else self.state.receive(event)
        if event is None:
            self.closed = True
        self.delivered += [(self.clears, self.connection, output) for output in outputs]

    # ----------------------------------------------------------------- server

    def server_reads(self) -> None:
        self.server.receive(decode_client_message(self.to_server.popleft()))

    def server_speaks(self) -> None:
        """One step of the speaker: start a run, send one event of it, or finish it."""
        if self.run is None:
            action = self.server.next_action()
            if isinstance(action, CloseAction):
                self.to_client.append(None)
            elif action is not None:
                self.run = action
                speech = render_speech(action.text, RATE)
                sizes = [CHUNK] * (len(speech.pcm) // CHUNK)
                if len(speech.pcm) % CHUNK:
                    sizes.append(len(speech.pcm) % CHUNK)
                events = run_events(action, speech, speech.pcm, sizes, self.readings.timestamps)
                self.speaking.extend(events)
                self.runs.append((action, b"", self.connection))
            return
        if self.speaking and not self.server.is_abandoned(self.run):
            event = self.speaking.popleft()
            # Through the wire format, as a real server would send it.
            decoded = decode_server_event(encode_server_event(event))
            assert decoded is not None
            self.to_client.append(decoded)
            if isinstance(event, AudioEvent):
                run, audio, connection = self.runs[-1]
                self.runs[-1] = (run, audio + event.data, connection)
            return
        self.speaking.clear()
        events = self.server.finish_run(self.run)
        if self.dones == "none":
            events = [e for e in events if not isinstance(e, DoneEvent)]
        elif self.dones == "twice":
            events = [copy for e in events for copy in [e] * (2 if isinstance(e, DoneEvent) else 1)]
        self.to_client.extend(events)
        self.run = None

    def server_can_speak(self) -> bool:
        return self.run is not None or not self.server_idle()

    def server_idle(self) -> bool:
        return not self.server.busy and not (self.server.ended and not self._close_sent())

    def _close_sent(self) -> bool:
        return None in self.to_client or self.closed


SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(
    readings,
    st.sampled_from(["bySentence", "immediate", "never"]),
    texts().flatmap(lambda text: st.tuples(st.just(text), tokens(text))),
    st.sampled_from(["all", "none", "twice"]),
    st.data(),
)
def test_any_server_reading_gives_the_caller_exactly_its_audio(
    reading: Ws3Readings,
    segment: Segment,
    text_and_tokens: tuple[str, list[str]],
    dones: str,
    data: st.DataObject,
) -> None:
    """Under ``never`` the stream may end at a ``done`` with its socket still open: then the
    server, left to run, must owe it nothing more (that audio would be lost, and reach the
    socket's next stream). A client whose ``done`` does not come gives up on it (what the
    watchdog does after a quiet spell), at any point: ``eos`` and the close end it then."""
    text, pieces = text_and_tokens
    sim = Simulation(
        StreamState("s", audio_format="pcm", sample_rate=RATE, segment=segment, tag="t"),
        Ws3ServerModel(segment, reading),
        reading,
        dones=dones,
    )
    # Client operations, in order: tokens, with flushes and at most one clear among them.
    ops: list[tuple[str, str]] = [("push", p) for p in pieces]
    for _ in range(data.draw(st.integers(0, 2), label="flushes")):
        ops.insert(data.draw(st.integers(0, len(ops)), label="flush at"), ("flush", ""))
    clear_at = data.draw(st.none() | st.integers(0, len(ops)), label="clear at")
    if clear_at is not None:
        ops.insert(clear_at, ("clear", ""))
    ops.append(("end", ""))
    spoken_after_clear = "".join(p for op, p in ops[(clear_at or 0) :] if op == "push")

    steps = 0
    while not (sim.closed or sim.state.complete):
        steps += 1
        assert steps < 20_000, "no progress: the stream would hang"
        choices = []
        if ops:
            choices.append("client")
        if sim.to_server:
            choices.append("server reads")
        if sim.server_can_speak():
            choices.append("server speaks")
        if sim.to_client:
            choices.append("client receives")
        if sim.state.awaits_done and (not choices or data.draw(st.booleans(), label="quiet")):
            choices = ["client gives up"]  # the watchdog, after a quiet spell
        assert choices, "deadlock: nobody can move"
        choice = data.draw(st.sampled_from(choices)) if len(choices) > 1 else choices[0]
        if choice == "client":
            op, arg = ops.pop(0)
            getattr(sim, op)(*([arg] if op == "push" else []))
        elif choice == "client gives up":
            sim.to_server.extend(sim.state.give_up_on_done())
        elif choice == "server reads":
            sim.server_reads()
        elif choice == "server speaks":
            sim.server_speaks()
        else:
            sim.client_receives()

    if not sim.closed:
        # Ended at a done, the socket open: the server owes the stream nothing more.
        assert segment == "never"
        assert sim.state.ended_by_done
        while sim.to_server or sim.server_can_speak():
            if sim.to_server:
                sim.server_reads()
            else:
                sim.server_speaks()
        late = [e for e in sim.to_client if e is not None and not isinstance(e, DoneEvent)]
        assert late == [], "audio came after the stream ended: lost, or another stream's"

    assert sim.state.foreign_events == 0
    # After the (last) clear the caller gets exactly the runs of the text sent after it; with
    # no clear, exactly every run. Text sent before a clear never reaches the caller after it.
    fresh_runs = [(run, audio) for run, audio, conn in sim.runs if conn == sim.connection]
    after = [event for clears, _, event in sim.delivered if clears == sim.clears]
    # Before a clear, the caller got a prefix of what its socket then carried.
    for generation in range(sim.clears):
        events = [(conn, e) for clears, conn, e in sim.delivered if clears == generation]
        got = b"".join(e.data for _, e in events if isinstance(e, AudioChunk))
        connections = {conn for conn, _ in events}
        assert len(connections) <= 1
        carried = b"".join(a for _, a, conn in sim.runs if conn in connections)
        assert carried.startswith(got)
    got_audio = b"".join(e.data for e in after if isinstance(e, AudioChunk))
    assert got_audio == b"".join(audio for _, audio in fresh_runs)
    spoken = text if not sim.clears else spoken_after_clear
    # (Whitespace between runs stays in the server's buffer, so compare without it.)
    assert _visible("".join(run.text for run, _ in fresh_runs)) == _visible(spoken)
    # Word times: each run's words, shifted by the audio delivered before that run began.
    # The stream's clock after a clear continues from the audio taken before it (this caller
    # took every event at once), counted here from the bytes, not from the client's offsets.
    start = (
        sum(
            len(e.data)
            for clears, _, e in sim.delivered
            if clears < sim.clears
            if isinstance(e, AudioChunk)
        )
        / 2
        / RATE
    )
    expected: list[tuple[str, float, float]] = []
    for run, audio in fresh_runs:
        speech = render_speech(run.text, RATE)
        expected += [
            (word, start + s, start + e)
            for word, s, e in zip(speech.words, speech.starts, speech.ends, strict=True)
        ]
        start += len(audio) / 2 / RATE
    words = [(w.word, w.start, w.end) for w in after if isinstance(w, WordTimestamp)]
    assert [w for w, _, _ in words] == [w for w, _, _ in expected]
    for (_, start_got, end_got), (_, start_want, end_want) in zip(words, expected, strict=True):
        assert abs(start_got - start_want) < 1e-9
        assert abs(end_got - end_want) < 1e-9


def _visible(text: str) -> str:
    return "".join(text.split())
