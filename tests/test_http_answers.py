"""What HTTP synthesis makes of a server's answers (issue 20): a status other than 2xx is an
error and never audio, a body read in pieces that split samples still gives whole samples,
and text that cannot be sent is refused before any request.

The server here answers with any status, and sends a body in given pieces, one read each for
the client: an ``httpx.MockTransport`` (no socket: a test takes a millisecond, so properties
get many examples), and for one case of each behaviour a raw HTTP/1.1 listener on 127.0.0.1
(not the emulator), which sends the pieces as the chunks of a chunked transfer coding (h11
hands each chunk on by itself, however TCP groups them)."""

from __future__ import annotations

import itertools
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import httpx
import pytest
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream
from hypothesis import given, settings
from hypothesis import strategies as st

from rime_trio import (
    APIStatusError,
    AudioChunk,
    InvalidTextError,
    ProtocolError,
    RimeClient,
)
from rime_trio.testing import RimeEmulator

from .conftest import API_KEY
from .test_http_mock import MOCK_URL, streamed

pytestmark = pytest.mark.anyio

RATE = 8000
HTML = b"<html><body><h1>Moved</h1><p>The document has moved.</p></body></html>"


@dataclass
class Answer:
    """What the raw server answers to every request."""

    status: int = 200
    reason: str = "OK"
    headers: Sequence[tuple[str, str]] = ()
    #: the body, each piece one chunk of the chunked coding (empty pieces are left out: an
    #: empty chunk would end the body)
    pieces: Sequence[bytes] = ()


@dataclass
class RawServer:
    port: int
    answer: Answer
    requests: list[bytes] = field(default_factory=list)  # each request's head and body

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _response(answer: Answer) -> bytes:
    lines = [f"HTTP/1.1 {answer.status} {answer.reason}", "Transfer-Encoding: chunked"]
    lines += [f"{name}: {value}" for name, value in answer.headers]
    lines.append("Connection: close")  # one request a connection: nothing to keep track of
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@asynccontextmanager
async def raw_server(answer: Answer | None = None) -> AsyncIterator[RawServer]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    server = RawServer(listener.extra(SocketAttribute.local_port), answer or Answer())

    async def handle(stream: SocketStream) -> None:
        async with stream:
            reader = BufferedByteReceiveStream(stream)
            try:
                head = await reader.receive_until(b"\r\n\r\n", 65536)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                server.requests.append(head + b"\r\n\r\n" + await reader.receive_exactly(length))
                answer = server.answer
                await stream.send(_response(answer))
                for piece in answer.pieces:
                    if piece:
                        await stream.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                await stream.send(b"0\r\n\r\n")
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                pass  # the client left early

    async with listener, anyio.create_task_group() as task_group:
        task_group.start_soon(listener.serve, handle)
        try:
            yield server
        finally:
            task_group.cancel_scope.cancel()


def client_for(server: RawServer, **options: object) -> RimeClient:
    chosen = {"api_key": API_KEY, "sample_rate": RATE, **options}
    return RimeClient(base_url=server.url, **chosen)  # type: ignore[arg-type]


@asynccontextmanager
async def answering(
    answer: Answer, over: str = "mock", **options: object
) -> AsyncIterator[tuple[RimeClient, Sequence[object]]]:
    """A client of a server that gives every request *answer*, and the requests it got: an
    ``httpx.MockTransport`` (*over* ``"mock"``), or the raw listener (``"wire"``)."""
    if over == "wire":
        async with raw_server(answer) as server, client_for(server, **options) as client:
            yield client, server.requests
        return
    requests: list[object] = []

    def answer_to(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        pieces = [piece for piece in answer.pieces if piece]
        return httpx.Response(answer.status, headers=answer.headers, content=streamed(pieces))

    chosen = {"api_key": API_KEY, "sample_rate": RATE, **options}
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(answer_to)) as shared,
        RimeClient(base_url=MOCK_URL, http_client=shared, **chosen) as client,  # type: ignore[arg-type]
    ):
        yield client, requests


async def collect(client: RimeClient, text: str) -> list[AudioChunk]:
    async with client.synthesize_chunks(text) as chunks:
        return [chunk async for chunk in chunks]


def split_at(body: bytes, cuts: Sequence[int]) -> list[bytes]:
    edges = [0, *sorted(set(cuts)), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges) if b > a]


def wav_body(pcm: bytes) -> bytes:
    """A 44-byte RIFF header (the size the client counts as no audio) and *pcm*."""
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        *(b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16, 1, 1, RATE, 2 * RATE, 2, 16),
        *(b"data", len(pcm)),
    )
    return header + pcm


# ----------------------------------------------------------------- statuses other than 2xx


REDIRECTS = [
    (301, "Moved Permanently"),
    (302, "Found"),
    (303, "See Other"),
    (307, "Temporary Redirect"),
    (308, "Permanent Redirect"),
]


@pytest.mark.parametrize(
    ("status", "reason", "over"),
    [(status, reason, "mock") for status, reason in REDIRECTS]
    + [pytest.param(301, "Moved Permanently", "wire", id="301-over-the-wire")],
)
async def test_a_redirect_is_a_status_error_naming_where_it_points(
    status: int, reason: str, over: str
) -> None:
    location = "https://elsewhere.example/v1/rime-tts"
    answer = Answer(status, reason, [("Location", location)], [HTML])
    async with answering(answer, over) as (client, requests):
        with pytest.raises(APIStatusError) as info:
            await client.synthesize("Hello there.")
        with pytest.raises(APIStatusError) as chunked:
            await collect(client, "Hello there.")
    for error in (info.value, chunked.value):
        assert error.status_code == status
        assert f"status {status}" in str(error)
        assert location in error.message
        assert "not followed" in error.message
        assert "<html>" not in str(error)  # the page is no explanation
        assert not error.retryable
    assert len(requests) == 2  # asked once each, and not redirected anywhere


async def test_a_redirect_without_a_location_says_so() -> None:
    async with (
        raw_server(Answer(307, "Temporary Redirect", pieces=[HTML])) as server,
        client_for(server) as client,
    ):
        with pytest.raises(APIStatusError) as info:
            await client.synthesize("Hello there.")
    assert info.value.status_code == 307
    assert "without a Location" in info.value.message


async def test_a_redirect_is_not_followed_even_by_a_client_that_follows_them() -> None:
    # An injected httpx client may follow redirects; the synthesis request still must not,
    # or the request (and the key, to a same-origin target) goes where the answer says.
    async with raw_server(Answer(pieces=[b"\x00\x01" * 100])) as target:
        redirect = Answer(307, "Temporary Redirect", [("Location", target.url + "/v1/rime-tts")])
        async with (
            raw_server(redirect) as server,
            httpx.AsyncClient(follow_redirects=True) as shared,
            client_for(server, http_client=shared) as client,
        ):
            with pytest.raises(APIStatusError) as info:
                await client.synthesize("Hello there.")
    assert info.value.status_code == 307
    assert target.requests == []


@pytest.mark.parametrize(
    ("status", "over"),
    [(600, "mock"), (999, "mock"), pytest.param(999, "wire", id="999-over-the-wire")],
)
async def test_a_status_beyond_5xx_is_a_status_error(status: int, over: str) -> None:
    answer = Answer(status, "Odd", pieces=[b"not audio"])
    async with answering(answer, over) as (client, _):
        with pytest.raises(APIStatusError) as info:
            await client.synthesize("Hello there.")
    assert info.value.status_code == status
    assert info.value.message == "not audio"


@pytest.mark.parametrize("status", [100, 101, 199, 304])
async def test_an_informational_or_bodiless_status_is_a_status_error(status: int) -> None:
    # h11 never hands a 1xx to httpx as the answer over HTTP/1.1; another transport (HTTP/2,
    # a mock, a proxy's own) can. Its body, if any, is not audio either.
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=b"odd")

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(answer)) as shared,
        RimeClient(base_url="http://127.0.0.1:9", api_key=API_KEY, http_client=shared) as client,
    ):
        with pytest.raises(APIStatusError) as info:
            await client.synthesize("Hello there.")
    assert info.value.status_code == status


async def test_a_redirected_voice_list_is_a_status_error() -> None:
    answer = Answer(302, "Found", [("Location", "https://elsewhere.example/")], [HTML])
    async with raw_server(answer) as server, client_for(server) as client:
        with pytest.raises(APIStatusError) as info:
            await client.voices()
    assert info.value.status_code == 302


# ----------------------------------------------------------------- bodies read in pieces


@settings(max_examples=100, deadline=None)
@given(
    audio_format=st.sampled_from(["pcm", "wav", "mulaw"]),
    samples=st.binary(min_size=0, max_size=600),
    cuts=st.lists(st.integers(min_value=1, max_value=700), max_size=40),
)
async def test_body_split_anywhere_gives_whole_samples_and_exactly_the_body(
    audio_format: str, samples: bytes, cuts: list[int]
) -> None:
    if audio_format == "pcm":
        body = samples[: len(samples) & ~1]
    elif audio_format == "wav":
        body = wav_body(samples[: len(samples) & ~1])
    else:
        body = samples  # one byte a sample: any length, any split
    pieces = split_at(body, [cut for cut in cuts if cut < len(body)])
    async with (
        answering(Answer(pieces=pieces), audio_format=audio_format) as (client, _),
        client.synthesize_chunks("Hello there.") as chunks,
    ):
        received = [chunk async for chunk in chunks]
    assert chunks.metrics.outcome == "completed"
    assert b"".join(chunk.data for chunk in received) == body
    bytes_per_second = RATE if audio_format == "mulaw" else 2 * RATE
    header = 44 if audio_format == "wav" else 0
    delivered = 0
    for chunk in received:
        assert chunk.data  # no empty chunks
        if audio_format != "mulaw":
            assert len(chunk.data) % 2 == 0, [len(piece) for piece in pieces]
        # Offsets and durations count whole samples: the bytes before, and in, the chunk.
        audio_before = max(0, delivered - header)
        assert chunk.offset == pytest.approx(audio_before / bytes_per_second)
        delivered += len(chunk.data)
        audio_in = max(0, delivered - header) - audio_before
        assert chunk.duration == pytest.approx(audio_in / bytes_per_second)


async def test_reads_of_odd_sizes_give_numpy_ready_chunks() -> None:
    # The shape the issue reports: reads of 1001 and 3 bytes.
    body = bytes(range(256)) * 8
    pieces = split_at(body, [1001, 1004, 1005, 1500])
    async with raw_server(Answer(pieces=pieces)) as server, client_for(server) as client:
        received = await collect(client, "Hello there.")
    assert [len(chunk.data) for chunk in received] == [1000, 4, 496, 548]
    assert b"".join(chunk.data for chunk in received) == body
    assert received[1].offset == pytest.approx(500 / RATE)


@pytest.mark.parametrize("audio_format", ["pcm", "wav"])
async def test_a_body_ending_in_half_a_sample_is_a_protocol_error_after_its_audio(
    audio_format: str,
) -> None:
    pcm = bytes(range(100)) + b"\x07"  # 50 samples and half of one
    body = wav_body(pcm) if audio_format == "wav" else pcm
    pieces = split_at(body, [3, 10, 51])
    received: list[AudioChunk] = []
    async with raw_server(Answer(pieces=pieces)) as server, client_for(server) as client:
        with pytest.raises(ProtocolError, match="half a 16-bit sample") as info:
            async with client.synthesize_chunks("Hello there.") as chunks:
                async for chunk in chunks:
                    received.append(chunk)
        assert chunks.metrics.outcome == "failed"
        assert chunks.metrics.error_type == "ProtocolError"
        with pytest.raises(ProtocolError):
            await client.synthesize("Hello there.")
    assert f"{len(body)} bytes" in str(info.value)
    assert b"".join(chunk.data for chunk in received) == body[:-1]  # every whole sample
    assert all(len(chunk.data) % 2 == 0 for chunk in received)


async def test_an_odd_mulaw_body_is_whole_samples() -> None:
    body = bytes(range(101))
    async with (
        raw_server(Answer(pieces=split_at(body, [1, 4]))) as server,
        client_for(server, audio_format="mulaw") as client,
    ):
        result = await client.synthesize("Hello there.")
    assert result.audio == body
    assert result.duration == pytest.approx(101 / RATE)


async def test_each_piece_of_a_long_text_gives_whole_samples() -> None:
    body = bytes(range(250)) * 4
    pieces = split_at(body, [1, 2, 5, 333, 998, 999])
    text = " ".join(["A sentence that takes some room."] * 100)
    async with raw_server(Answer(pieces=pieces)) as server, client_for(server) as client:
        received = await collect(client, text)
    requests = len(server.requests)
    assert requests > 3
    assert b"".join(chunk.data for chunk in received) == body * requests
    assert all(len(chunk.data) % 2 == 0 for chunk in received)
    position = 0.0
    for chunk in received:  # one clock across the requests, in whole samples
        assert chunk.offset == pytest.approx(position)
        position += chunk.duration
    assert position == pytest.approx(requests * len(body) / (2 * RATE))


# ----------------------------------------------------------------- text that cannot be sent


@pytest.mark.parametrize(
    "text",
    [
        "Hello \ud83c",  # the first half of an emoji, its second in the next token
        "\udc9a undecodable byte",  # what errors="surrogateescape" makes of a byte
        " ".join(["A sentence that takes some room."] * 60) + " Bye \ud83c.",  # a long text
    ],
)
async def test_a_lone_surrogate_is_refused_before_any_request(
    rime_emulator: RimeEmulator, text: str
) -> None:
    position = min(text.find(half) for half in "\ud83c\udc9a" if half in text)
    async with RimeClient(base_url=rime_emulator.http_url, api_key=API_KEY) as client:
        with pytest.raises(InvalidTextError, match=f"at position {position}\\b"):
            await client.synthesize(text)
        with pytest.raises(InvalidTextError, match=f"at position {position}\\b"):
            await collect(client, text)
        assert (await client.synthesize("The client still works.")).audio
    assert rime_emulator.stats.http_requests == 1  # the last call's only


@settings(max_examples=30, deadline=None)
@given(
    text=st.text(max_size=1500),
    surrogate=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    where=st.integers(min_value=0),
    audio_format=st.sampled_from(["pcm", "wav"]),
)
async def test_any_text_holding_a_surrogate_is_invalid_text_and_sends_nothing(
    text: str, surrogate: str, where: int, audio_format: str
) -> None:
    # st.text() holds no surrogates of its own: the one put in is the first.
    position = where % (len(text) + 1)
    bad = text[:position] + surrogate + text[position:]
    async with answering(Answer(), audio_format=audio_format) as (client, requests):
        # A long text in wav would be a ConfigurationError, were the text not checked first.
        with pytest.raises(InvalidTextError) as info:
            await collect(client, bad)
    assert f"at position {position} " in str(info.value)
    assert requests == []
