from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rime_trio._segment import SentenceSplitter, Tokenizer, blingfire_sentences


def feed_all(splitter: SentenceSplitter, pieces: list[str]) -> list[list[str]]:
    return [splitter.feed(piece) for piece in pieces]


def test_blingfire_splits_sentences() -> None:
    assert blingfire_sentences("Hello there. How are you? Fine") == [
        "Hello there.",
        "How are you?",
        "Fine",
    ]
    assert blingfire_sentences("   ") == []


def test_first_sentence_leaves_as_soon_as_its_end_is_seen() -> None:
    splitter = SentenceSplitter()
    tokens = ["Hello", " there", ".", " How", " are", " you", "?"]
    assert feed_all(splitter, tokens) == [[], [], ["Hello there."], [], [], [], [" How are you?"]]
    assert splitter.flush() == ""


def test_abbreviations_initials_and_numbers_wait_for_more_text() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("Please ask Dr.") == []
    assert splitter.feed(" Smith about it. ") == ["Please ask Dr. Smith about it. "]
    assert splitter.feed("It costs 3.") == []
    assert splitter.feed("5 dollars!") == ["It costs 3.5 dollars!"]
    assert splitter.feed("Written by J.") == []
    assert splitter.feed(" R. R. Tolkien.") == ["Written by J. R. R. Tolkien."]
    assert splitter.feed("They saw the U.S.") == []
    assert splitter.feed(" Capitol.") == ["They saw the U.S. Capitol."]


def test_several_sentences_in_one_piece() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("One. Two! Three? Four") == ["One. ", "Two! ", "Three? "]
    assert splitter.pending == "Four"
    assert splitter.flush() == "Four"


def test_quotes_after_the_stop() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed('He said "stop."') == ['He said "stop."']


def test_whitespace_only_never_produces_sentences() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("   \n ") == []
    assert splitter.flush() == "   \n "  # handed back as fed; the caller decides


def test_custom_tokenizer_replaces_blingfire() -> None:
    calls: list[str] = []

    def by_line(text: str) -> list[str]:
        calls.append(text)
        return text.split("|")

    splitter = SentenceSplitter(by_line)
    # The tokenizer drops the bars; the text sent keeps them (with the next sentence).
    assert splitter.feed("a|b|c") == ["a", "|b"]
    assert splitter.flush() == "|c"
    assert calls == ["a|b|c"]


def test_clear_drops_pending_text() -> None:
    splitter = SentenceSplitter()
    splitter.feed("Half a sent")
    splitter.clear()
    assert splitter.flush() == ""


def test_a_tokenizer_that_alters_text_cannot_change_what_is_sent() -> None:
    def shouting(text: str) -> list[str]:
        return [part.upper().replace(" ", "") for part in text.split("|")]

    splitter = SentenceSplitter(shouting)
    pieces = splitter.feed("one two|three four|five")
    assert len(pieces) == 2  # cut where the tokenizer's counts say, never rewritten
    assert "".join(pieces) + splitter.flush() == "one two|three four|five"


def test_whitespace_stays_where_the_caller_put_it() -> None:
    splitter = SentenceSplitter()
    text = 'He said "Stop."  Then\tleft.\n\nAgain…  ok.'
    pieces = splitter.feed(text)
    assert "".join(pieces) + splitter.flush() == text
    assert pieces[0] == 'He said "Stop."  '


@pytest.mark.parametrize(
    "text",
    [
        "Hello there. How are you today? I am fine, thanks. And you",
        "Mr. and Mrs. Smith went to Washington. They saw the U.S. Capitol.",
        "Numbers like 3.14 and 2.5 stay whole. Good.",
        "\u200b hi. there.  Two  spaces.\n\nNew paragraph!",
    ],
)
def test_any_chunking_gives_back_exactly_the_text(text: str) -> None:
    for size in (1, 2, 5, len(text)):
        splitter = SentenceSplitter()
        out: list[str] = []
        for i in range(0, len(text), size):
            out += splitter.feed(text[i : i + size])
        assert "".join(out) + splitter.flush() == text


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(["Hello", " there", ".", " ", "Dr.", " Smith", "?", "!", "\n", "3.5", "é"]),
        max_size=30,
    ),
    st.sampled_from([None, lambda t: t.split(".")]),
)
def test_any_tokens_and_tokenizer_give_back_exactly_the_text(
    tokens: list[str], tokenizer: Tokenizer | None
) -> None:
    splitter = SentenceSplitter(tokenizer)
    out: list[str] = []
    for token in tokens:
        out += splitter.feed(token)
    assert "".join(out) + splitter.flush() == "".join(tokens)
