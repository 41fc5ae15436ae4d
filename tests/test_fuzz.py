"""The decoder never raises anything but ProtocolError, whatever the server sends."""

from __future__ import annotations

import base64
import json

from hypothesis import HealthCheck, given, settings
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

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
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

frames = st.one_of(
    st.text(),
    st.binary(),
    json_values.map(json.dumps),
    message_like.map(json.dumps),
)

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(frames)
def test_any_frame_decodes_to_an_event_or_a_protocol_error(frame: str | bytes) -> None:
    try:
        event = decode_server_event(frame)
    except ProtocolError:
        return
    assert event is None or isinstance(event, AudioEvent | TimestampsEvent | DoneEvent | ErrorEvent)


@SETTINGS
@given(frames)
def test_any_client_frame_decodes_or_is_a_protocol_error(frame: str | bytes) -> None:
    try:
        decode_client_message(frame)
    except ProtocolError:
        return


@SETTINGS
@given(st.lists(message_like.map(json.dumps), max_size=20))
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
