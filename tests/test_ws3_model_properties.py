"""Properties of the /ws3 server model over arbitrary conversations (hypothesis, synchronous)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from rime_trio._options import Segment
from rime_trio._protocol import Clear, DoneEvent, EndOfStream, Flush, ServerEvent, TextMessage
from rime_trio.testing import Ws3Readings
from rime_trio.testing._ws3_model import CloseAction, Run, Ws3ServerModel

_TOKENS = st.sampled_from(
    [
        "Hi",
        "there",
        "dr",
        "Dr",
        "e.g",
        "x",
        " ",
        "  ",
        "\n",
        ".",
        "?",
        "!",
        "…",
        '"',
        ")",
        "。",
        "5",
    ]
)
_IDS = st.sampled_from([None, "a", "b", "c"])
_STEP = st.one_of(
    st.tuples(st.just("text"), st.lists(_TOKENS, max_size=6).map("".join), _IDS),
    st.tuples(st.just("flush"), st.just(""), st.none()),
    st.tuples(st.just("speak"), st.just(""), st.none()),
)
_STEPS = st.lists(_STEP, max_size=40)
_READINGS = st.builds(
    Ws3Readings,
    done=st.sampled_from(["when_empty", "per_run"]),
    tagging=st.sampled_from(["later", "per_sentence"]),
    run_sentences=st.sampled_from(["all", "first"]),
    lowercase_splits=st.booleans(),
    abbreviations_split=st.booleans(),
    hold_unspaced_end=st.booleans(),
    flush_empty_done=st.booleans(),
    eos_empty_done=st.booleans(),
)
_SEGMENTS = st.sampled_from(["bySentence", "immediate", "never"])


# The broad candidate set as PROTOCOL.md's brief states it, independent of the model's code.
_CANDIDATE = re.compile(r"""[.?!…]+["'”’)\]]*(?=\s|$)|[。！？]+["'”’)\]]*""")


def is_candidate_end(text: str, end: int) -> bool:
    """Whether a sentence end of the broad set stops at *end*, were the buffer to end there."""
    return any(match.end() == end for match in _CANDIDATE.finditer(text[:end]))


@dataclass
class Trace:
    """One conversation: what was sent, where flushes and message ends fell, what ran."""

    text: str = ""
    flush_points: set[int] = field(default_factory=set)
    message_ends: set[int] = field(default_factory=set)
    messages: list[tuple[int, int, str | None]] = field(default_factory=list)  # span, id
    runs: list[tuple[Run, list[ServerEvent]]] = field(default_factory=list)
    closes: int = 0


def play(
    segment: Segment, readings: Ws3Readings, steps: list[tuple[str, str, str | None]]
) -> Trace:
    server = Ws3ServerModel(segment, readings)
    trace = Trace()
    running: Run | None = None
    current: str | None = None

    def speak() -> None:
        nonlocal running
        if running is not None:
            trace.runs.append((running, server.finish_run(running)))
            running = None
        elif isinstance(action := server.next_action(), Run):
            running = action
        elif isinstance(action, CloseAction):
            trace.closes += 1

    for kind, text, context_id in steps:
        if kind == "text":
            server.receive(TextMessage(text, context_id))
            current = context_id if context_id is not None else current
            trace.messages.append((len(trace.text), len(trace.text) + len(text), current))
            trace.text += text
            trace.message_ends.add(len(trace.text))
        elif kind == "flush":
            server.receive(Flush())
            trace.flush_points.add(len(trace.text))
        elif kind == "clear":
            server.receive(Clear())
        else:
            speak()
    server.receive(EndOfStream())
    trace.flush_points.add(len(trace.text))
    for _ in range(10_000):
        if trace.closes:
            break
        speak()
    assert trace.closes == 1
    return trace


def spans(trace: Trace) -> list[tuple[int, int]]:
    """Where each non-empty run's text sits in the sent text; only whitespace is left out."""
    found: list[tuple[int, int]] = []
    position = 0
    for run, _ in trace.runs:
        if run.empty:
            continue
        start = position
        while not trace.text.startswith(run.text, start):
            assert trace.text[start].isspace(), (trace.text, run.text, position)
            start += 1
        found.append((start, start + len(run.text)))
        position = start + len(run.text)
    assert not trace.text[position:].strip()
    return found


@settings(max_examples=300, deadline=None)
@given(segment=_SEGMENTS, readings=_READINGS, steps=_STEPS)
def test_runs_carry_exactly_the_sent_text_in_order(
    segment: Segment, readings: Ws3Readings, steps: list[tuple[str, str, str | None]]
) -> None:
    trace = play(segment, readings, steps)
    # Whitespace-only text makes no run but stays buffered: only trailing whitespace is lost.
    joined = "".join(run.text for run, _ in trace.runs)
    assert trace.text.startswith(joined)
    assert not trace.text[len(joined) :].strip()
    for run, _ in trace.runs:
        assert run.empty or run.text.strip()


@settings(max_examples=300, deadline=None)
@given(segment=_SEGMENTS, readings=_READINGS, steps=_STEPS)
def test_runs_end_only_at_candidate_ends_flushes_or_the_buffer_end(
    segment: Segment, readings: Ws3Readings, steps: list[tuple[str, str, str | None]]
) -> None:
    trace = play(segment, readings, steps)
    for _, end in spans(trace):
        allowed = end in trace.flush_points or is_candidate_end(trace.text, end)
        if segment == "immediate":
            allowed = allowed or end in trace.message_ends
        assert allowed, (trace.text, end)


@settings(max_examples=300, deadline=None)
@given(segment=_SEGMENTS, readings=_READINGS, steps=_STEPS)
def test_tags_and_dones_follow_the_readings(
    segment: Segment, readings: Ws3Readings, steps: list[tuple[str, str, str | None]]
) -> None:
    trace = play(segment, readings, steps)
    texts = [(run, events) for run, events in trace.runs if not run.empty]
    for (run, events), (start, end) in zip(texts, spans(trace), strict=True):
        if readings.tagging == "later":
            owners = [cid for a, b, cid in trace.messages if a < end and b > start]
        else:
            first = start + len(run.text) - len(run.text.lstrip())
            owners = [cid for a, b, cid in trace.messages if a <= first < b]
        assert run.context_id == owners[-1]
        assert events in ([], [DoneEvent(run.context_id)])
        if readings.done == "per_run":
            assert events == [DoneEvent(run.context_id)]
    for run, events in trace.runs:
        if run.empty:
            assert events == [DoneEvent(run.context_id)]
    if trace.runs:  # after eos the buffer is empty: the last run is always answered
        last, events = trace.runs[-1]
        assert events == [DoneEvent(last.context_id)]


# A marker letter per stretch between clears (Cyrillic: never sentence punctuation).
_MARKERS = [chr(0x410 + n) for n in range(32)]


@settings(max_examples=500, deadline=None)
@given(
    segment=_SEGMENTS,
    readings=_READINGS,
    stops=st.booleans(),
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("text"), st.sampled_from(["One. ", "two", " ", "."]), _IDS),
            st.sampled_from([("flush", "", None), ("speak", "", None), ("clear", "", None)]),
        ),
        max_size=20,
    ),
)
def test_no_run_mixes_text_from_before_and_after_a_clear(
    segment: Segment,
    readings: Ws3Readings,
    stops: bool,
    steps: list[tuple[str, str, str | None]],
) -> None:
    marked: list[tuple[str, str, str | None]] = []
    clears = 0
    for kind, text, context_id in steps:
        clears += kind == "clear"
        marked.append((kind, _MARKERS[clears] + text if kind == "text" else text, context_id))
    readings = dataclasses.replace(readings, clear_stops_synthesis=stops)
    for run, _ in play(segment, readings, marked).runs:
        assert len({c for c in run.text if c in _MARKERS}) <= 1, run.text
