"""The caller's text through a real stream: where the runs are cut does not depend on how the
text was tokenized, no run is without a word, and unpunctuated text streams in bounded runs
with bounded work (issue 20, defects 8 and 9), on trio and asyncio."""

from __future__ import annotations

import itertools

import anyio
import pytest

from rime_trio import AudioChunk, RimeClient, SpeechStream
from rime_trio._protocol import TextMessage
from rime_trio._segment import MAX_TEXT_CHARS, Tokenizer, blingfire_sentences, speakable
from rime_trio.testing import RimeEmulator, open_emulator

from .conftest import API_KEY
from .speech import read_all, wire_prefix

RATE = 8000

pytestmark = pytest.mark.anyio


def sent_runs(emulator: RimeEmulator, stream: SpeechStream) -> list[str]:
    """The text *stream* asked the server to synthesize, run by run: the text of its messages
    between one flush (or the end of the input) and the next. A socket may carry several
    streams one after another (segment="never"): a flush is the stream's whose text came
    before it."""
    prefix = wire_prefix(stream)
    runs: list[str] = []
    for messages in emulator.stats.received.values():
        current = ""
        ours = False
        for message in messages:
            if isinstance(message, TextMessage):
                ours = (message.context_id or "").startswith(prefix)
                if ours:
                    current += message.text
            elif ours and current:  # a flush, or the end of the input
                runs.append(current)
                current = ""
        if current:
            runs.append(current)
    return runs


async def speak(
    client: RimeClient, tokens: list[str], tokenizer: Tokenizer | None = None
) -> tuple[SpeechStream, bytes]:
    async with client.stream(tokenizer=tokenizer) as stream:
        for token in tokens:
            await stream.push_text(token)
        await stream.end_input()
        with anyio.fail_after(30):
            audio, _ = await read_all(stream)
    return stream, audio


@pytest.mark.parametrize(
    "tokens",
    [
        pytest.param(['She said "Stop.', '" Then she left.'], id="closing-quote"),
        pytest.param(["Visit https://rime.", "ai/docs today."], id="url"),
        pytest.param(["Hello\0 world", ". Next."], id="nul"),
        pytest.param(["It was fine. I think.", "\u200f So", " it goes."], id="direction-mark"),
        pytest.param(["First one. Next sentence.", " 🌍"], id="emoji-tail"),
        pytest.param(["First one. Next one. ", "\u2060"], id="joiner-tail"),
    ],
)
async def test_runs_are_the_same_however_the_text_was_tokenized(tokens: list[str]) -> None:
    """Issue 20, defect 9: a sentence was declared final the moment a token ended in ".", so
    `She said "Stop.` + `" Then...` made a run holding only the quote."""
    async with (
        open_emulator() as emulator,
        RimeClient(base_url=emulator.ws_url, api_key=API_KEY, sample_rate=RATE) as client,
    ):
        by_token, by_token_audio = await speak(client, tokens)
        whole, whole_audio = await speak(client, ["".join(tokens)])
        one_by_one, _ = await speak(client, list("".join(tokens)))
    runs = sent_runs(emulator, by_token)
    assert runs == sent_runs(emulator, whole) == sent_runs(emulator, one_by_one)
    assert all(speakable(run) for run in runs), runs  # no run without a word
    assert by_token_audio == whole_audio


async def test_unpunctuated_text_streams_in_bounded_runs_with_bounded_work() -> None:
    """Issue 20, defect 8: text with no sentence end was re-tokenized whole on every push
    (quadratic work that blocked the loop) and held back until the input ended."""
    words = itertools.cycle(["lorem", "ipsum", "dolor", "sit", "amet", "consectetur"])
    text = ""
    while len(text) < 6000:
        text += next(words) + " "
    tokenized: list[int] = []

    def counting(chunk: str) -> list[str]:
        tokenized.append(len(chunk))
        return blingfire_sentences(chunk)

    async with (
        open_emulator() as emulator,
        RimeClient(base_url=emulator.ws_url, api_key=API_KEY, sample_rate=RATE) as client,
        client.stream(tokenizer=counting) as stream,
    ):
        for i in range(0, len(text), 4):
            await stream.push_text(text[i : i + 4])
        # The first audio comes before the input ends: the run was cut at a word boundary
        # within the message limit, not held for a sentence end that never comes.
        with anyio.fail_after(30):  # a hang guard only
            while not isinstance(await stream.receive(), AudioChunk):
                pass
        await stream.end_input()
        with anyio.fail_after(30):
            await read_all(stream)
    runs = sent_runs(emulator, stream)
    sent = "".join(runs)
    assert text.startswith(sent)  # the text, exactly (less any whitespace at its very end)
    assert not speakable(text[len(sent) :])
    assert len(runs) >= len(text) // MAX_TEXT_CHARS
    assert all(len(run) <= MAX_TEXT_CHARS for run in runs)
    assert all(run.endswith(" ") for run in runs[:-1])  # cut between words
    assert sum(tokenized) <= 3 * len(text)  # each character read a bounded number of times
    assert max(tokenized) <= MAX_TEXT_CHARS
