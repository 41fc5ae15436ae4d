"""HTTP synthesis of text longer than one request takes, and the caller's own errors inside
a synthesis block (issue 12).

How a text is cut, and how the pieces' audio is joined, ordered and failed, is the client's
own logic: those tests talk to :class:`~tests.test_http_mock.MockRime` (no socket, a
synthesis in a millisecond), whose audio for a request is :func:`audio_for` its text. Two
tests run the same against the emulator, over real sockets: the pieces' speech joined in
order while two requests stream at once, and leaving a long synthesis early."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rime_trio import APIStatusError, AudioChunk, ConfigurationError, RimeClient
from rime_trio._http import http_pieces, text_limit
from rime_trio._segment import MAX_TEXT_CHARS
from rime_trio.testing import RimeEmulator, render_speech

from .conftest import API_KEY
from .test_http_mock import MockRime, audio_for

pytestmark = pytest.mark.anyio

RATE = 8000
SENTENCES = [
    "The first sentence is short.",
    "A second one runs on a little longer than the first did.",
    "Then a question?",
    "And an exclamation!",
]


def long_text(n: int) -> str:
    return " ".join(SENTENCES[i % len(SENTENCES)] for i in range(n))


# Where a sentence ends, as the README and split_text say: . ? ! or … (perhaps closed by
# quotes or brackets) before whitespace or the end of the text.
SENTENCE_END = re.compile(r"""[.?!…]+["'”’)\]]*(?=\s|$)""")


def pieces_of(text: str, model: str = "coda") -> list[str]:
    """The client's requests for *text*, checked against what any cut must satisfy: they are
    *text* in order, but for stretches of whitespace only (no request); each within the
    limit; each ends at a sentence end (and the whitespace after it) unless no sentence end
    fits in its limit; the first is at most 200 characters (the first audio comes as early
    as for a short text) unless it is one sentence longer than that."""
    limit = text_limit(model)
    pieces = http_pieces(text, model)
    assert all(piece.strip() and len(piece) <= limit for piece in pieces)
    spans = []
    position = 0
    for piece in pieces:
        while not text.startswith(piece, position):
            assert text[position].isspace(), (position, pieces)  # only whitespace left out
            position += 1
        spans.append((position, position + len(piece)))
        position += len(piece)
    assert not text[position:].strip()
    ends = [match.end() for match in SENTENCE_END.finditer(text)]
    for start, end in spans[:-1]:
        spoken_end = len(text[:end].rstrip())  # a cut after a sentence end takes its spaces
        if spoken_end not in ends:
            assert not [e for e in ends if start < e <= start + limit], (start, end, pieces)
    if len(pieces) > 1 and len(pieces[0]) > 200:
        first_end = len(pieces[0].rstrip())
        assert [e for e in ends if e <= first_end] == [first_end]  # one sentence
    return pieces


def expected_audio(text: str, model: str = "coda") -> bytes:
    """The mock's audio for *text*: each piece's, in order."""
    return b"".join(audio_for(piece) for piece in pieces_of(text, model))


def expected_speech(text: str) -> bytes:
    """The emulator's audio for *text*: each piece's speech, in order."""
    return b"".join(render_speech(piece, RATE).pcm for piece in pieces_of(text))


async def collect(client: RimeClient, text: str, **kw: object) -> list[AudioChunk]:
    async with client.synthesize_chunks(text, **kw) as chunks:
        return [chunk async for chunk in chunks]


async def test_long_text_is_split_into_requests_and_joined_in_order() -> None:
    text = long_text(120)
    assert len(text) > 3 * MAX_TEXT_CHARS
    server = MockRime(sizes=(333, 1, 2000))  # two bodies at a time, read piece by piece
    async with server.client(sample_rate=RATE) as client:
        received = await collect(client, text)
        result = await client.synthesize(text)
    assert b"".join(c.data for c in received) == expected_audio(text)
    assert result.audio == expected_audio(text)
    position = 0.0
    for chunk in received:  # one clock across the requests
        assert chunk.offset == pytest.approx(position)
        position += chunk.duration
    assert result.duration == pytest.approx(position)
    pieces = pieces_of(text)
    # each within the limit (two requests run at a time, so in either order)
    assert sorted(server.texts[: len(pieces)]) == sorted(pieces)
    assert result.metrics is not None
    assert result.metrics.characters == len(text)  # type: ignore[union-attr]
    assert result.metrics.audio_seconds == pytest.approx(position)


async def test_long_text_over_real_sockets_is_its_pieces_speech_in_order(
    rime_emulator: RimeEmulator,
) -> None:
    # End to end: two requests stream at once over connections of their own.
    rime_emulator.config.chunk_bytes = 1000
    text = long_text(40)
    assert len(pieces_of(text)) == 3
    async with RimeClient(
        base_url=rime_emulator.http_url, api_key=API_KEY, sample_rate=RATE
    ) as client:
        received = await collect(client, text)
    assert b"".join(c.data for c in received) == expected_speech(text)
    position = 0.0
    for chunk in received:  # one clock across the requests
        assert chunk.offset == pytest.approx(position)
        position += chunk.duration
    assert sorted(rime_emulator.stats.texts[None]) == sorted(pieces_of(text))


@given(
    words=st.lists(
        st.sampled_from(["alpha", "beta.", "gamma,", "delta?", "epsilon", "zeta!", "Dr."]),
        min_size=150,
        max_size=500,
    ),
    audio_format=st.sampled_from(["mulaw", "pcm"]),
    sizes=st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=4),
)
async def test_any_long_text_gives_exactly_its_pieces_audio(
    words: list[str], audio_format: str, sizes: list[int]
) -> None:
    text = " ".join(words)
    server = MockRime(sizes)
    async with server.client(sample_rate=RATE, audio_format=audio_format) as client:
        audio = b"".join(c.data for c in await collect(client, text))
    assert audio == expected_audio(text)


WORDS = st.one_of(
    st.sampled_from(["alpha", "beta.", "gamma,", "delta?", "zeta!", "Dr.", "3.5", "e.g.x"]),
    st.sampled_from(['"Stop."', "(aside.)", "wait…", "end.)", "Why?!", "...", "U.S.A."]),
    st.text(alphabet="abc.", min_size=1, max_size=40),
    st.integers(min_value=100, max_value=1100).map(lambda n: "w" * n),  # a very long word
)
SPACES = st.sampled_from([" ", " ", " ", "  ", "\n", " \n\n", "\t"])


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.tuples(WORDS, SPACES), min_size=1, max_size=600),
    model=st.sampled_from(["coda", "mistv2"]),
    sentence=st.integers(min_value=0, max_value=2000),
)
def test_pieces_end_inside_a_sentence_only_where_no_sentence_end_fits(
    parts: list[tuple[str, str]], model: str, sentence: int
) -> None:
    # A long unpunctuated first sentence of *sentence* characters, as LLM answers have.
    opening = " ".join(["word"] * (sentence // 5)) + "."
    text = (opening + " " if sentence else "") + "".join(w + s for w, s in parts)
    pieces_of(text, model)


@pytest.mark.parametrize("first", [201, 350, 600, 995])
def test_a_first_sentence_over_200_characters_is_the_first_piece_whole(first: int) -> None:
    # Issue 20: the first request ended at a space inside it, though its end fits.
    words = ("abcd " * first)[: first - 1]
    sentence = words[:-1] + "e." if words.endswith(" ") else words + "."
    assert len(sentence) == first
    text = sentence + " " + long_text(60)
    pieces = pieces_of(text)
    assert pieces[0] == sentence + " "


async def test_the_server_gets_a_long_first_sentence_whole() -> None:
    first = "This opening sentence " + "runs on and on " * 25 + "before it ends."
    assert 200 < len(first) < MAX_TEXT_CHARS
    text = first + " " + long_text(60)
    server = MockRime()
    async with server.client(sample_rate=RATE) as client:
        result = await client.synthesize(text)
    assert first + " " in server.texts
    assert result.audio == expected_audio(text)


async def test_a_failing_piece_fails_after_the_audio_before_it() -> None:
    text = long_text(80)
    pieces = pieces_of(text)
    assert len(pieces) >= 3
    server = MockRime()
    async with server.client(sample_rate=RATE) as client:
        audio = bytearray()
        with pytest.raises(APIStatusError) as info:
            async with client.synthesize_chunks(text) as chunks:
                async for chunk in chunks:
                    if not audio:
                        server.api_key = "rotated"  # later requests are refused
                    audio += chunk.data
    assert info.value.status_code == 401
    # Whole pieces, in order, and nothing after the failure.
    whole = [b"".join(audio_for(p) for p in pieces[:n]) for n in (1, 2)]
    assert bytes(audio) in whole


@pytest.mark.parametrize("audio_format", ["wav", "mp3"])
async def test_long_text_in_a_format_that_does_not_join_says_why(audio_format: str) -> None:
    server = MockRime()
    async with server.client(audio_format=audio_format) as client:
        with pytest.raises(ConfigurationError, match="1,000") as info:
            await client.synthesize(long_text(60))
    assert "audio_format='pcm'" in str(info.value)
    assert server.requests == 0


async def test_the_callers_own_os_error_is_not_a_network_error() -> None:
    async with MockRime().client() as client:
        for text in ("Short.", long_text(60)):
            with pytest.raises(FileNotFoundError):
                async with client.synthesize_chunks(text) as chunks:
                    async for _ in chunks:
                        raise FileNotFoundError("missing-dir/x.wav")


async def leave_early(client: RimeClient, text: str, rounds: int) -> None:
    """Leave the synthesis of *text* after its first chunk, then its second, ... (up to 40)."""
    for i in range(rounds):
        taken = 0
        async with client.synthesize_chunks(text) as chunks:
            async for _ in chunks:
                taken += 1
                if taken == 1 + i % 40:
                    break
        assert chunks.metrics.outcome == "cancelled"
        assert chunks.metrics.error_type is None


async def test_leaving_a_long_synthesis_early_raises_nothing() -> None:
    # Found in review: the queues were closed while a piece's task could still write to one.
    async with MockRime(sizes=(256,)).client(sample_rate=RATE) as client:
        await leave_early(client, long_text(200), 60)


async def test_leaving_a_long_synthesis_over_real_sockets_early_raises_nothing(
    rime_emulator: RimeEmulator,
) -> None:
    # End to end: the pieces' tasks are stopped while they read from sockets.
    rime_emulator.config.chunk_bytes = 256
    async with RimeClient(
        base_url=rime_emulator.http_url, api_key=API_KEY, sample_rate=RATE
    ) as client:
        await leave_early(client, long_text(40), 4)
        assert (await client.synthesize("The client still works.")).audio


async def test_whitespace_left_after_a_cut_is_not_a_request() -> None:
    text = ("word " * 200)[:998] + ".  \n\n\n"  # the cut at 1,000 leaves whitespace behind
    server = MockRime()
    async with server.client(sample_rate=RATE) as client:
        result = await client.synthesize(text)
    assert result.audio == expected_audio(text)
    assert all(t.strip() for t in server.texts)
    assert server.requests == len(pieces_of(text))


@pytest.mark.parametrize("model", ["mist", "mistv2", "mistv3", "coda"])
async def test_every_model_is_cut_at_1000_characters(model: str) -> None:
    # One request is 1,000 characters for every model (rimelabs/docs api-reference/*/http.mdx);
    # the mist family's former 500 had no source.
    assert text_limit(model) == 1000
    text = long_text(30)
    server = MockRime()
    async with server.client(sample_rate=RATE, model=model) as client:
        result = await client.synthesize(text)
    pieces = pieces_of(text, model)
    assert max(len(p) for p in pieces) > 500  # the later pieces use the whole limit
    assert sorted(server.texts) == sorted(pieces)  # two requests at a time
    assert result.audio == expected_audio(text, model)


async def test_reading_on_after_a_failed_piece_raises_that_failure_again() -> None:
    text = long_text(80)
    server = MockRime()
    async with server.client(sample_rate=RATE) as client:
        server.api_key = "rotated"  # every request fails
        with pytest.raises(APIStatusError):
            async with client.synthesize_chunks(text) as chunks:
                with pytest.raises(APIStatusError) as first:
                    await chunks.__anext__()
                with pytest.raises(APIStatusError) as again:
                    await chunks.__anext__()
                assert again.value is first.value
                raise first.value
