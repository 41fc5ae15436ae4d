"""The decoder never raises anything but ProtocolError, whatever the server sends."""

from __future__ import annotations

import base64
import json
import math

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rime_trio import ProtocolError
from rime_trio._protocol import (
    AudioEvent,
    DoneEvent,
    ErrorEvent,
    StreamState,
    TimestampsEvent,
    decode_client_message,
    decode_server_event,
)

# Every number JSON can carry, including what no float holds: integers past 1.8e308 (json
# reads 10**400 as an int, and float() of it raises OverflowError), and what json reads as
# infinities or NaN.
numbers = st.one_of(
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=2**1024, max_value=10**1000),
    st.integers(min_value=-(10**1000), max_value=-(2**1024)),
    st.sampled_from([0, 0.0, -0.0, 2**1023, 2**1024, 10**400, -(10**400), 1e308, 5e-324]),
)

json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)

# Frames shaped like the real messages, with every field free to be wrong.
message_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["chunk", "timestamps", "done", "error", "other"]) | json_values},
    optional={
        "data": st.one_of(json_values, st.binary().map(lambda b: base64.b64encode(b).decode())),
        "contextId": json_values | st.sampled_from(["s#1", "s#2", "s#0"]),
        "message": json_values,
        "word_timestamps": st.fixed_dictionaries(
            {}, optional={"words": json_values, "start": json_values, "end": json_values}
        )
        | json_values,
    },
)


@st.composite
def timestamps_like(draw: st.DrawFn) -> str:
    """A ``timestamps`` frame mostly of the right shape (one time per word), so the checks
    behind the type and length checks run too: every number in the times (huge, infinite,
    NaN, negative, out of order), nested values, an array of another length now and then."""
    count = draw(st.integers(0, 4))
    words: object = draw(
        st.lists(st.text(max_size=4), min_size=count, max_size=count) | json_values
    )
    times = st.lists(numbers | json_values, min_size=count, max_size=count)
    stamps = {
        "words": words,
        "start": draw(times | st.lists(numbers, max_size=5)),
        "end": draw(times | st.lists(numbers, max_size=5)),
    }
    message: dict[str, object] = {"type": "timestamps", "word_timestamps": stamps}
    if draw(st.booleans()):
        message["contextId"] = draw(json_values | st.sampled_from(["s#1", "s#2"]))
    return json.dumps(message)


frames = st.one_of(
    st.text(),
    st.binary(),
    json_values.map(json.dumps),
    message_like.map(json.dumps),
    timestamps_like(),
)

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


HUGE_TIME = json.dumps(
    {"type": "timestamps", "word_timestamps": {"words": ["a"], "start": [10**400], "end": [1]}}
)


@SETTINGS
@given(frames)
@example(HUGE_TIME)
def test_any_frame_decodes_to_an_event_or_a_protocol_error(frame: str | bytes) -> None:
    try:
        event = decode_server_event(frame)
    except ProtocolError:
        return
    assert event is None or isinstance(event, AudioEvent | TimestampsEvent | DoneEvent | ErrorEvent)
    if isinstance(event, TimestampsEvent):
        # What the decoder promises the stream: one time per word, each a finite number of
        # seconds, in order, no word ending before it starts.
        assert len(event.words) == len(event.starts) == len(event.ends)
        for times in (event.starts, event.ends):
            assert all(math.isfinite(t) and t >= 0 for t in times)
            assert list(times) == sorted(times)
        assert all(start <= end for start, end in zip(event.starts, event.ends, strict=True))


@SETTINGS
@given(frames)
def test_any_client_frame_decodes_or_is_a_protocol_error(frame: str | bytes) -> None:
    try:
        decode_client_message(frame)
    except ProtocolError:
        return


@SETTINGS
@given(st.lists(message_like.map(json.dumps) | timestamps_like(), max_size=20))
def test_stream_state_survives_any_sequence_of_decodable_events(frames: list[str]) -> None:
    state = StreamState("s", audio_format="pcm", sample_rate=8000, tag="s")
    state.text_frames("Hello. Again. ")
    for frame in frames:
        try:
            event = decode_server_event(frame)
        except ProtocolError:
            continue
        if event is None or isinstance(event, ErrorEvent):
            continue
        for output in state.receive(event):
            assert output.context_id == "s"
