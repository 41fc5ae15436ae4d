"""The decoder never raises anything but ProtocolError, whatever the server sends, and the
stream state delivers exactly the audio of its own events."""

from __future__ import annotations

import base64
import json
import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rime_trio import AudioChunk, ConnectionLost, ProtocolError
from rime_trio._options import AudioFormat
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

# 400 examples in CI (the decoder is pure and fast); the profile's own budget under
# `nox -s fuzz`, when it is larger.
SETTINGS = settings(
    max_examples=max(400, settings().max_examples),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


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


# The contextIds this stream's state takes as its own after sending two messages (their
# tags), and its prefix with a number it never sent (dropped). Any other tag beginning with
# its prefix ("s#01", "s#1x") is the tagging tests' matter (tests/test_protocol.py), so it
# is left out here; every other event is foreign (dropped).
OURS = ("s#1", "s#2")
KNOWN = (*OURS, "s#0")

# Well-formed audio, tagged for this stream or not, so that most runs carry audio (odd byte
# counts and empty chunks included) among the malformed frames.
audio_like = st.builds(
    lambda data, context_id: json.dumps(
        {"type": "chunk", "data": base64.b64encode(data).decode(), "contextId": context_id}
    ),
    st.binary(max_size=64),
    st.sampled_from([*KNOWN, None, "other"]),
)


@SETTINGS
@given(
    st.lists(audio_like | message_like.map(json.dumps) | timestamps_like(), max_size=20),
    st.sampled_from(["pcm", "mulaw", "mp3"]),
)
def test_stream_state_conserves_audio_whatever_events_arrive(
    frames: list[str], audio_format: AudioFormat
) -> None:
    """Every audio byte of the stream's own events reaches the caller, in order, and nothing
    else does (bytes in == bytes delivered + the odd byte carried to the close); each chunk
    starts where the one before it ended."""
    state = StreamState("s", audio_format=audio_format, sample_rate=8000, tag="s")
    state.say("Hello. Again. ", sentence=False)
    taken = bytearray()
    heard = False
    chunks: list[AudioChunk] = []
    for frame in frames:
        try:
            event = decode_server_event(frame)
        except ProtocolError:
            continue
        if event is None or isinstance(event, ErrorEvent):
            continue
        context_id = event.context_id
        if isinstance(context_id, str) and context_id.startswith("s#") and context_id not in KNOWN:
            continue
        if context_id in OURS:
            heard = True
            if isinstance(event, AudioEvent):
                taken += event.data
        chunks += [e for e in state.receive(event) if isinstance(e, AudioChunk)]
    delivered = b"".join(chunk.data for chunk in chunks)
    carried = len(taken) - len(delivered)
    assert taken.startswith(delivered)
    assert carried == (len(taken) % 2 if audio_format == "pcm" else 0)
    state.end()
    if heard:
        chunks += [e for e in state.finish() if isinstance(e, AudioChunk)]
    else:
        with pytest.raises(ConnectionLost):
            state.finish()
    assert b"".join(chunk.data for chunk in chunks) == taken
    position = 0.0
    for chunk in chunks:
        assert chunk.offset == pytest.approx(position)
        position += chunk.duration
    assert state.audio_seconds == pytest.approx(position)
