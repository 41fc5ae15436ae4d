"""A server that breaks the WebSocket protocol, or sends a value no event can hold, ends the
stream in one ProtocolError: not reported as the server closing, and never retried.

The server here is a bare TCP listener that answers the HTTP upgrade by hand and writes
hand-built frame bytes, so it can send what no WebSocket library would: invalid UTF-8 in a
text frame, reserved opcodes and bits, bad lengths and close codes.
"""

from __future__ import annotations

import base64
import hashlib
import json
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rime_trio import (
    APIStatusError,
    ConnectionLost,
    ProtocolError,
    RimeClient,
    RimeConnectionError,
    RimeError,
    RimeTimeoutError,
    ServerError,
    StreamSettings,
)
from rime_trio._retry import retryable
from rime_trio._transport import MAX_MESSAGE_SIZE, Connection

from .bad_server import frame, serving, take_client_frame
from .conftest import API_KEY, BACKENDS
from .speech import read_all

pytestmark = pytest.mark.anyio

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Retries as the defaults allow (two), without the backoff's wait: a retry would show.
SETTINGS = StreamSettings(retries=2, retry_backoff=0.001, retry_backoff_max=0.001)

PROTOCOL_ERROR: int = 1002
INVALID_PAYLOAD: int = 1007


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A masked frame, which only a client may send."""
    mask = b"\x01\x02\x03\x04"
    body = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


@dataclass
class RawServer:
    """Writes *reply* on each connection once the client's first text message arrived."""

    reply: bytes
    port: int = 0
    #: connections the client spoke on (a retry re-sends its text on another one)
    spoken_to: int = 0
    #: the code of each close frame the client sent on a connection it spoke on
    close_codes: list[int | None] = field(default_factory=list)
    first_done: anyio.Event = field(default_factory=anyio.Event)

    async def serve(self, client: anyio.abc.SocketStream) -> None:
        spoken = False
        try:
            async with client:
                spoken = await self._converse(client)
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            pass  # the client hung up: that is its business
        finally:
            if spoken:
                self.first_done.set()

    async def _converse(self, client: anyio.abc.SocketStream) -> bool:
        buffer = bytearray()
        while b"\r\n\r\n" not in buffer:
            buffer += await client.receive()
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        }
        accept = base64.b64encode(hashlib.sha1(headers[b"sec-websocket-key"] + _GUID).digest())
        await client.send(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        buffer = bytearray(rest)
        spoken = False
        while True:
            taken = take_client_frame(buffer)
            if taken is None:
                buffer += await client.receive()
                continue
            opcode, payload = taken
            if opcode == 0x1 and not spoken:
                spoken = True
                self.spoken_to += 1
                await client.send(self.reply)
            elif opcode == 0x8:
                if spoken:
                    self.close_codes.append(int.from_bytes(payload[:2], "big") if payload else None)
                await client.send(frame(0x8, payload[:2]))
                return spoken


def raw_server(reply: bytes) -> AbstractAsyncContextManager[RawServer]:
    return serving(RawServer(reply))


async def speak_to(server: RawServer) -> None:
    """One stream, of one sentence, against *server*, to the end of its audio."""
    async with RimeClient(
        api_key=API_KEY, base_url=f"ws://127.0.0.1:{server.port}/ws3", stream_settings=SETTINGS
    ) as client:
        with anyio.fail_after(30):  # a hang guard only
            async with client.stream() as stream:
                await stream.push_text("Hello there.")
                await stream.end_input()
                await read_all(stream)


def text(payload: str | bytes) -> bytes:
    return frame(0x1, payload.encode() if isinstance(payload, str) else payload)


DONE = b'{"type": "done", "contextId": null}'

# Each: the bytes the server writes, and the close code the RFC makes the client answer with.
MALFORMED = {
    "invalid UTF-8 in a text frame": (text(b'{"type": "\xff\xfe"}'), INVALID_PAYLOAD),
    "invalid UTF-8 across fragments": (
        frame(0x1, b'{"type": "\xe2\x82', fin=False) + frame(0x0, b'\xff"}'),
        INVALID_PAYLOAD,
    ),
    "reserved data opcode 0x3": (frame(0x3, DONE), PROTOCOL_ERROR),
    "reserved control opcode 0xB": (frame(0xB), PROTOCOL_ERROR),
    "RSV1 without an extension": (frame(0x1, DONE, rsv=4), PROTOCOL_ERROR),
    "RSV2": (frame(0x1, DONE, rsv=2), PROTOCOL_ERROR),
    "RSV3": (frame(0x1, DONE, rsv=1), PROTOCOL_ERROR),
    "a continuation with nothing to continue": (frame(0x0, DONE), PROTOCOL_ERROR),
    "a new message inside a fragmented one": (
        frame(0x1, b"{", fin=False) + frame(0x1, b"}"),
        PROTOCOL_ERROR,
    ),
    "a fragmented ping": (frame(0x9, b"hi", fin=False), PROTOCOL_ERROR),
    "a ping over 125 bytes": (frame(0x9, b"x" * 126), PROTOCOL_ERROR),
    "a masked frame from the server": (masked_frame(0x1, DONE), PROTOCOL_ERROR),
    "a length in 2 bytes that fits in 1": (bytes([0x81, 126, 0, len(DONE)]) + DONE, PROTOCOL_ERROR),
    "a 64-bit length with its top bit set": (
        bytes([0x82, 127]) + (1 << 63 | 4).to_bytes(8, "big") + b"abcd",
        PROTOCOL_ERROR,
    ),
    "a close with a 1-byte payload": (frame(0x8, b"\x03"), PROTOCOL_ERROR),
    "a close with code 999": (frame(0x8, (999).to_bytes(2, "big")), PROTOCOL_ERROR),
    "a close with the local-only code 1006": (
        frame(0x8, (1006).to_bytes(2, "big")),
        PROTOCOL_ERROR,
    ),
    "a close reason in invalid UTF-8": (
        frame(0x8, (1000).to_bytes(2, "big") + b"\xff"),
        INVALID_PAYLOAD,
    ),
}


@pytest.mark.parametrize(("reply", "close_code"), MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_frame_is_one_protocol_error_never_retried(
    reply: bytes, close_code: int
) -> None:
    async with raw_server(reply) as server:
        with pytest.raises(ProtocolError, match="broke the WebSocket protocol"):
            await speak_to(server)
        with anyio.fail_after(10):
            await server.first_done.wait()
    assert server.spoken_to == 1  # no retry on a fresh socket
    # RFC 6455 7.1.7: the client fails the connection with a close saying why.
    assert server.close_codes == [close_code]


def _huge_time_event() -> bytes:
    stamps = {"words": ["Hello"], "start": [10**400], "end": [10**400]}
    return text(json.dumps({"type": "timestamps", "word_timestamps": stamps, "contextId": None}))


BAD_VALUES = {
    "an integer time beyond float range": (_huge_time_event(), "beyond the range of a float"),
    "a NaN time": (
        text(
            '{"type": "timestamps", "word_timestamps": {"words": ["a"], "start": [NaN], '
            '"end": [1]}}'
        ),
        "not a finite number: nan",
    ),
    "audio data that is not a string": (text('{"type": "chunk", "data": 5}'), "got int"),
    "audio data that is not base64": (text('{"type": "chunk", "data": "@@@"}'), "base64"),
    "a binary frame": (frame(0x2, b"\xff\xfe"), "not valid JSON"),
}


@pytest.mark.parametrize(("reply", "problem"), BAD_VALUES.values(), ids=BAD_VALUES.keys())
async def test_a_value_no_event_can_hold_is_one_protocol_error_never_retried(
    reply: bytes, problem: str
) -> None:
    async with raw_server(reply) as server:
        with pytest.raises(ProtocolError, match=problem):
            await speak_to(server)
    assert server.spoken_to == 1


async def test_a_close_frame_the_server_sends_is_still_the_server_closing() -> None:
    """The contrast: a well-formed close with 1002 is the server hanging up (retried), not
    a frame we could not parse."""
    reply = frame(0x8, PROTOCOL_ERROR.to_bytes(2, "big") + b"you broke it")
    async with raw_server(reply) as server:
        with pytest.raises(ConnectionLost, match=r"code 1002: you broke it"):
            await speak_to(server)
    assert server.spoken_to == 3  # the first try and both retries


@pytest.mark.parametrize(
    "error",
    [
        ProtocolError("the server broke the WebSocket protocol"),
        ServerError("bad speaker"),
    ],
)
def test_protocol_and_server_errors_are_never_retryable(error: RimeError) -> None:
    assert not retryable(error)


@pytest.mark.parametrize(
    "error", [ConnectionLost("gone"), RimeConnectionError("down"), RimeTimeoutError("slow")]
)
def test_network_failures_stay_retryable(error: RimeError) -> None:
    assert retryable(error)


# ----------------------------------------------------------------------------- every frame


class ScriptedServer(anyio.abc.ByteStream):
    """A server as a script, under a client Connection with no socket: it accepts the
    upgrade, then hands over *script* and end-of-file, and keeps what the client wrote."""

    def __init__(self, script: bytes) -> None:
        self.script = script
        self.written = bytearray()
        self._queued: list[bytes] = []

    async def send(self, item: bytes) -> None:
        if not self.written:  # the upgrade request
            key = next(
                line.partition(b":")[2].strip()
                for line in item.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
            self._queued.append(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self._queued.append(self.script)
        self.written += item

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await anyio.lowlevel.checkpoint()
        while self._queued:
            data = self._queued.pop(0)
            if data:
                return data
        raise anyio.EndOfStream

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


Outcome = str | bytes | RimeError | None


async def read_to_the_end(script: bytes) -> tuple[list[Outcome], list[tuple[int, bytes]]]:
    """What ``Connection.receive`` gives for *script*, to the first None or error, and the
    frames the client wrote after the upgrade (a close, once it closed)."""
    server = ScriptedServer(script)
    connection = Connection("ws://127.0.0.1:9/ws3", API_KEY, server)
    await connection._handshake("127.0.0.1:9", "/ws3")
    outcomes: list[Outcome] = []
    while not outcomes or isinstance(outcomes[-1], str | bytes):
        try:
            outcomes.append(await connection.receive())
        except RimeError as exc:
            outcomes.append(exc)
    await connection.aclose(wait_for_close=1.0)
    written = bytearray(server.written.partition(b"\r\n\r\n")[2])
    frames: list[tuple[int, bytes]] = []
    while (taken := take_client_frame(written)) is not None:
        frames.append(taken)
    return outcomes, frames


_RESERVED_OPCODES = frozenset({3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF})

payloads = st.one_of(
    st.binary(max_size=130),
    st.sampled_from([DONE, b'{"type": "chunk", "data": "QUJD"}', b"\xff\xfe", b"\xe2\x82"]),
    st.integers(0, 5000).map(lambda code: code.to_bytes(2, "big")),
)
frames_of_any_kind = st.builds(
    frame,
    st.integers(0, 15),
    payloads,
    fin=st.booleans(),
    rsv=st.integers(0, 7) | st.just(0),
)


def breaks_framing(first: bytes) -> bool:
    """Whether a first frame is malformed by a rule needing no context: an RSV bit, a
    reserved opcode, a continuation of nothing, a fragmented or long control frame."""
    opcode, rsv, fin = first[0] & 0x0F, (first[0] >> 4) & 0x07, first[0] & 0x80
    long = (first[1] & 0x7F) > 125
    return (
        rsv != 0
        or opcode in _RESERVED_OPCODES
        or opcode == 0
        or (opcode >= 8 and (not fin or long))
    )


@pytest.mark.parametrize("backend", BACKENDS)
@given(script=st.lists(frames_of_any_kind, min_size=1, max_size=3))
def test_any_frames_give_messages_then_a_close_or_a_rime_error(
    backend: str, script: list[bytes]
) -> None:
    outcomes, written = anyio.run(read_to_the_end, b"".join(script), backend=backend)
    *messages, last = outcomes
    assert all(isinstance(message, str | bytes) for message in messages)
    assert last is None or isinstance(last, ConnectionLost | ProtocolError | APIStatusError)
    if breaks_framing(script[0]):
        assert messages == []
        assert isinstance(last, ProtocolError)
    if isinstance(last, ProtocolError):
        # the client failed the connection with a close that says why, and nothing after it
        assert written[-1][0] == 0x8
        assert int.from_bytes(written[-1][1][:2], "big") in (PROTOCOL_ERROR, INVALID_PAYLOAD)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_message_past_the_size_limit_fails_the_connection_with_1009(backend: str) -> None:
    script = frame(0x1, b"[", fin=False) + frame(0x0, b" " * MAX_MESSAGE_SIZE)
    outcomes, written = anyio.run(read_to_the_end, script, backend=backend)
    (error,) = outcomes
    assert isinstance(error, ProtocolError)
    assert f"larger than {MAX_MESSAGE_SIZE} bytes" in str(error)
    assert written[-1] == (0x8, (1009).to_bytes(2, "big"))
