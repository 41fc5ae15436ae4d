"""A Rime HTTP server as an ``httpx.MockTransport``, for tests of the client's own logic over
HTTP (cutting long text and joining its pieces, statuses, leaving early, cancelled reads)
that need no socket: a synthesis takes a millisecond, and a body comes in pieces of any size,
with pauses if a test wants them.

Its audio is not speech: a request's body is bytes made from its text (:func:`audio_for`),
different for every text, so a piece lost, repeated, reordered or cut short shows. Where the
client can tell, it answers as the emulator does, which the tests below check: a wrong key
is a 401, a text over the limit a 400, and every text it synthesized is recorded in order.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest

from rime_trio import RimeClient
from rime_trio._options import accept_header, http_body
from rime_trio._segment import MAX_TEXT_CHARS
from rime_trio.testing import RimeEmulator

from .conftest import API_KEY

#: the mock's base_url (nothing listens there: the transport answers)
MOCK_URL = "http://rime.mock"


def audio_for(text: str) -> bytes:
    """The mock's audio for a request's text: two bytes (a 16-bit sample) per character."""
    seed = hashlib.sha256(text.encode()).digest()
    return (seed * (len(text) // 16 + 1))[: 2 * len(text)]


async def streamed(
    pieces: Iterable[bytes],
    pauses: Iterable[float] = itertools.repeat(0.0),
    budget: float = 0.0,
    before_piece: Callable[[], None] = lambda: None,
) -> AsyncIterator[bytes]:
    """*pieces* as a response body, one read each for the client; before each, *pauses*
    seconds (while the pauses so far stay within *budget*: then at once) or else one
    scheduling round, so that the client's tasks interleave with the body."""
    for piece, pause in zip(pieces, pauses, strict=False):
        before_piece()
        if 0 < pause <= budget:
            budget -= pause
            await anyio.sleep(pause)
        else:
            await anyio.lowlevel.checkpoint()
        yield piece


@dataclass
class MockRime:
    """Answers ``POST /v1/rime-tts`` with :func:`audio_for` the text, in pieces of *sizes*
    bytes (cycled), *pauses* seconds before each (cycled, up to *budget* seconds of pauses a
    body); refuses a key other than *api_key* (401) and a text over the limit (400)."""

    sizes: Sequence[int] = (256,)
    pauses: Sequence[float] = (0.0,)
    budget: float = 0.01
    api_key: str = API_KEY
    #: called as the client asks for the next piece of a body (having taken the one before)
    before_piece: Callable[[], None] = lambda: None
    #: every request that came, refused or not
    requests: int = 0
    #: the text of every request answered with audio, in the order they came
    texts: list[str] = field(default_factory=list)
    #: pieces of body handed to the client so far, over every request
    sent: int = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._answer)

    @asynccontextmanager
    async def client(self, **options: Any) -> AsyncIterator[RimeClient]:
        """A client of this server (an httpx client of its own, injected)."""
        chosen = {"api_key": API_KEY, **options}
        async with (
            httpx.AsyncClient(transport=self.transport()) as shared,
            RimeClient(base_url=MOCK_URL, http_client=shared, **chosen) as client,
        ):
            yield client

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return httpx.Response(401, text="Unauthorized: invalid or missing API key")
        text = json.loads(request.content)["text"]
        if len(text) > MAX_TEXT_CHARS:
            return httpx.Response(400, text="Bad request: text is too long")
        self.texts.append(text)
        return httpx.Response(200, content=self._body(audio_for(text)))

    def _body(self, audio: bytes) -> AsyncIterator[bytes]:
        def pieces() -> Iterable[bytes]:
            position = 0
            for size in itertools.cycle(self.sizes):
                if position >= len(audio):
                    return
                self.sent += 1
                yield audio[position : position + size]
                position += size

        return streamed(pieces(), itertools.cycle(self.pauses), self.budget, self.before_piece)


# ----------------------------------------------------------------------------- the contract


pytestmark = pytest.mark.anyio


async def test_the_mock_answers_as_the_emulator_does(rime_emulator: RimeEmulator) -> None:
    mock = MockRime()
    options = RimeClient(api_key=API_KEY, sample_rate=8000).options
    texts = ["Hello there.", "A second one.", "x" * (MAX_TEXT_CHARS + 1)]

    async def statuses(http: httpx.AsyncClient, url: str) -> list[int]:
        found = []
        for key in (API_KEY, "wrong-key"):
            for text in texts:
                response = await http.post(
                    f"{url}/v1/rime-tts",
                    json=http_body(options, text),
                    headers={"Authorization": f"Bearer {key}", "Accept": accept_header("pcm")},
                )
                found.append(response.status_code)
        return found

    async with httpx.AsyncClient() as real, httpx.AsyncClient(transport=mock.transport()) as fake:
        expected = [200, 200, 400, 401, 401, 401]
        assert await statuses(real, rime_emulator.http_url) == expected
        assert await statuses(fake, MOCK_URL) == expected
    assert mock.texts == rime_emulator.stats.texts[None] == texts[:2]
    assert mock.requests == rime_emulator.stats.http_requests == 6


async def test_the_body_comes_in_pieces_of_the_sizes_asked() -> None:
    text = "Hello there, how are you?"
    mock = MockRime(sizes=(3, 10))
    async with mock.client(sample_rate=8000) as client, client.synthesize_chunks(text) as chunks:
        sizes = [len(chunk.data) async for chunk in chunks]
    # 3, 10, 3, 10, 3, 10, 3 and 8 bytes, in whole samples: an odd byte waits for the next
    assert sizes == [2, 10, 4, 10, 2, 10, 4, 8]
    assert mock.sent == 8
