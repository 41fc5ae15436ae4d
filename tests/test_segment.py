from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rime_trio import ConfigurationError, InvalidTextError
from rime_trio._segment import (
    MAX_TEXT_CHARS,
    MessageCutter,
    SentenceSplitter,
    Tokenizer,
    blingfire_sentences,
    sentence_ends,
    speakable,
    split_text,
)


def feed_all(splitter: SentenceSplitter, pieces: list[str]) -> list[list[str]]:
    return [splitter.feed(piece) for piece in pieces]


def split(
    tokens: list[str], tokenizer: Tokenizer | None = None, max_chars: int = MAX_TEXT_CHARS
) -> list[str]:
    """The pieces of *tokens* fed one by one, then the flushed rest (if any)."""
    splitter = SentenceSplitter(tokenizer, max_chars=max_chars)
    pieces = [piece for token in tokens for piece in splitter.feed(token)]
    rest = splitter.flush()
    return [*pieces, rest] if rest else pieces


class CountingTokenizer:
    """A tokenizer that records the length of every text it is given."""

    def __init__(self, inner: Tokenizer = blingfire_sentences) -> None:
        self.inner = inner
        self.inputs: list[int] = []

    def __call__(self, text: str) -> list[str]:
        self.inputs.append(len(text))
        return self.inner(text)


def test_blingfire_splits_sentences() -> None:
    assert blingfire_sentences("Hello there. How are you? Fine") == [
        "Hello there.",
        "How are you?",
        "Fine",
    ]
    assert blingfire_sentences("   ") == []


def test_a_sentence_leaves_the_moment_whitespace_follows_its_end() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("Hello there. ") == ["Hello there. "]
    # LLM tokens carry the space in front of the next word: that token decides.
    tokens = ["Hello", " there", ".", " How", " are", " you", "?"]
    assert feed_all(splitter, tokens) == [[], [], [], ["Hello there. "], [], [], []]
    assert splitter.flush() == "How are you?"


def test_a_sentence_ending_where_the_text_ends_waits_for_the_next_character() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("Hello there.") == []  # "there.com"? "there.\""? not known yet
    assert splitter.feed("\n") == ["Hello there.\n"]
    assert splitter.feed("Bye.") == []
    assert splitter.flush() == "Bye."  # the end of the input (or a flush) decides


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        # a quote that closes the sentence after the token with its stop
        (['She said "Stop.', '" Then she left.'], ['She said "Stop." ', "Then she left."]),
        # a URL or domain name cut at its dot
        (["Visit https://rime.", "ai/docs today."], ["Visit https://rime.ai/docs today."]),
        (["Go to rime.", "ai now. Then", " wait."], ["Go to rime.ai now. ", "Then wait."]),
        # a NUL inside the sentence (blingfire reads it as a space)
        (["Hello\0 world", ". Next."], ["Hello\0 world. ", "Next."]),
        # invisible characters between the stop and the space belong to the sentence
        (["Done.\u2060", " Next\u200f.", "\u200f Last."],
         ["Done.\u2060 ", "Next\u200f.\u200f ", "Last."]),
    ],
)  # fmt: skip
def test_sentences_end_where_the_text_says_not_where_a_token_ends(
    tokens: list[str], expected: list[str]
) -> None:
    assert split(tokens) == expected
    assert split(["".join(tokens)]) == expected
    assert split(list("".join(tokens))) == expected


@pytest.mark.parametrize(
    "tokens",
    [
        ["Hello there. Next sentence.", " 🌍"],
        ["Hello there. Next sentence. ", "\u2060"],
        ["Hello there. Next sentence. \u200f"],
    ],
)
def test_a_wordless_tail_is_never_returned_by_feed(tokens: list[str]) -> None:
    splitter = SentenceSplitter()
    pieces = [piece for token in tokens for piece in splitter.feed(token)]
    assert pieces == ["Hello there. ", "Next sentence. "]
    # What follows the last sentence has no word: it is the rest, for the caller to judge.
    assert not speakable(splitter.flush())


def test_text_without_a_word_goes_with_its_neighbour() -> None:
    assert split(["Wow! ", "!!! ", "Really? ", "ok"]) == ["Wow! ", "!!! Really? ", "ok"]
    assert split(['" ', "Quoted. "]) == ['" Quoted. ']
    by_bar: Tokenizer = lambda text: text.split("|")  # noqa: E731
    # Within what the tokenizer cuts, a wordless sentence joins the one before it...
    assert split(["One|!!|two. "], by_bar) == ["One|!!", "|two. "]
    # ...or, first, the one after it.
    assert split(["!!|One. "], by_bar) == ["!!|One. "]


def test_abbreviations_initials_and_numbers_wait_for_more_text() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("Please ask Dr.") == []
    assert splitter.feed(" Smith about it. ") == ["Please ask Dr. Smith about it. "]
    assert splitter.feed("It costs 3.") == []
    assert splitter.feed("5 dollars! ") == ["It costs 3.5 dollars! "]
    assert splitter.feed("Written by J.") == []
    assert splitter.feed(" R. R. Tolkien. ") == ["Written by J. R. R. Tolkien. "]
    assert splitter.feed("They saw the U.S.") == []
    assert splitter.feed(" Capitol. ") == ["They saw the U.S. Capitol. "]


def test_the_tokenizer_finds_ends_the_punctuation_rule_left_open() -> None:
    # "U.S. " alone is no end (an abbreviation); at the next end, blingfire sees two sentences.
    assert split(["I was born in the U.S. It was cold. Then"]) == [
        "I was born in the U.S. ",
        "It was cold. ",
        "Then",
    ]


def test_several_sentences_in_one_piece() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("One. Two! Three? Four") == ["One. ", "Two! ", "Three? "]
    assert splitter.pending == "Four"
    assert splitter.flush() == "Four"


def test_quotes_after_the_stop() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed('He said "stop."') == []
    assert splitter.feed(" Then (he left.) And") == ['He said "stop." ', "Then (he left.) "]


def test_chinese_and_japanese_stops_need_no_space_after_them() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("你好。") == []  # a closing bracket may follow
    assert splitter.feed("再见！「はい。」") == ["你好。", "再见！"]
    assert splitter.feed("次") == ["「はい。」"]
    assert splitter.flush() == "次"


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
    # Consulted at a sentence end, it cuts further; the text sent keeps the bars (with the
    # next sentence).
    assert splitter.feed("a|b|c. d") == ["a", "|b", "|c. "]
    assert splitter.flush() == "d"
    assert calls == ["a|b|c. "]


def test_clear_drops_pending_text() -> None:
    splitter = SentenceSplitter()
    splitter.feed("Half a sent")
    splitter.clear()
    assert splitter.flush() == ""


def test_a_tokenizer_that_alters_text_cannot_change_what_is_sent() -> None:
    def shouting(text: str) -> list[str]:
        return [part.upper().replace(" ", "") for part in text.split("|")]

    splitter = SentenceSplitter(shouting)
    pieces = splitter.feed("one two|three four|five. six")
    assert len(pieces) == 3  # cut where its counts say, never rewritten
    assert "".join(pieces) + splitter.flush() == "one two|three four|five. six"


def test_whitespace_stays_where_the_caller_put_it() -> None:
    splitter = SentenceSplitter()
    text = 'He said "Stop."  Then\tleft.\n\nAgain…  ok.'
    pieces = splitter.feed(text)
    assert "".join(pieces) + splitter.flush() == text
    # A piece takes the one whitespace character that ended it (it had to leave then, to
    # leave early); more whitespace goes with the next piece, however the text came.
    assert pieces == ['He said "Stop." ', " Then\tleft.\n", "\nAgain… "]


def test_a_lone_surrogate_is_refused_and_the_splitter_is_unchanged() -> None:
    splitter = SentenceSplitter()
    splitter.feed("Half an emoji ")
    with pytest.raises(InvalidTextError, match="position 2"):
        splitter.feed(". \ud83c")
    assert splitter.pending == "Half an emoji "
    assert splitter.feed(". Whole 🌍. ") == ["Half an emoji . ", "Whole 🌍. "]


def test_a_failing_tokenizer_leaves_the_splitter_unchanged() -> None:
    failing = True

    def flaky(text: str) -> list[str]:
        if failing:
            raise RuntimeError("tokenizer failed")
        return [text]

    splitter = SentenceSplitter(flaky)
    splitter.feed("Before")
    with pytest.raises(RuntimeError):
        splitter.feed(" the end and a good many words past sixteen characters. After")
    assert splitter.pending == "Before"
    failing = False
    # Nothing it learnt of the refused text is left: other text is cut as if it never came.
    rest = " it went on, and on, without an end for quite a while. After"
    assert splitter.feed(rest) == split(["Before" + rest], lambda text: [text])[:-1]


def test_the_length_limit_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match="max_chars"):
        SentenceSplitter(max_chars=0)


# ----------------------------------------------------------------------------- work bounds

WORDS = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit"]


def unpunctuated(size: int) -> str:
    words = itertools.cycle(WORDS)
    text = ""
    while len(text) < size:
        text += next(words) + " "
    return text[:size]


def test_unpunctuated_text_is_cut_at_word_boundaries_with_bounded_work() -> None:
    """Issue 20, defect 8: 40,000 characters with no sentence end, pushed 4 at a time,
    re-tokenized the whole buffer on every push (6.6 to 7.4 s of CPU)."""
    text = unpunctuated(40_000)
    tokenizer = CountingTokenizer()
    splitter = SentenceSplitter(tokenizer)
    pieces: list[str] = []
    for i in range(0, len(text), 4):
        pieces += splitter.feed(text[i : i + 4])
        assert len(splitter.pending) <= MAX_TEXT_CHARS  # memory stays bounded
    pieces.append(splitter.flush())
    assert "".join(pieces) == text
    # Asked again each time the piece doubled, up to the limit: each character is read at
    # most twice (the whole buffer was read on every push: 200 million characters).
    assert sum(tokenizer.inputs) <= 2 * len(text)
    assert max(tokenizer.inputs) <= MAX_TEXT_CHARS
    for piece, after in itertools.pairwise(pieces):
        assert len(piece) <= MAX_TEXT_CHARS
        assert piece[-1] == " " or after[0] == " "  # never inside a word
    assert len(pieces) < 2 * len(text) / MAX_TEXT_CHARS  # and near the limit, not tiny


@pytest.mark.parametrize(
    "text",
    [
        "Some words that make a sentence. " * 1300,
        "Ask Dr. Who or Mr. Smith about it. " * 1200,  # abbreviations: ends refused
        "Really? !!! ... " * 2600,  # ends with no word to say
        "I went to the U.S. It was the U.K. Then e.g. this. " * 800,
        ("word " * 150 + "end. ") * 50,
    ],
    ids=["sentences", "abbreviations", "wordless", "tokenizer-decides", "long-sentences"],
)
@pytest.mark.parametrize("size", [1, 4, 37])
def test_each_character_is_tokenized_at_most_three_times(text: str, size: int) -> None:
    """Twice as the piece grows (each reading at least doubles it), once at its end."""
    tokenizer = CountingTokenizer()
    splitter = SentenceSplitter(tokenizer)
    pieces = [
        piece for i in range(0, len(text), size) for piece in splitter.feed(text[i : i + size])
    ]
    assert "".join(pieces) + splitter.flush() == text
    assert sum(tokenizer.inputs) <= 3 * len(text)
    assert max(tokenizer.inputs) <= MAX_TEXT_CHARS


def test_an_enormous_word_is_still_cut_at_the_limit() -> None:
    text = "x" * 100_000
    tokenizer = CountingTokenizer()
    splitter = SentenceSplitter(tokenizer)
    pieces: list[str] = []
    for i in range(0, len(text), 4):
        pieces += splitter.feed(text[i : i + 4])
        assert len(splitter.pending) <= MAX_TEXT_CHARS
    assert pieces == ["x" * MAX_TEXT_CHARS] * 99
    assert splitter.flush() == "x" * MAX_TEXT_CHARS
    assert tokenizer.inputs == []


# ----------------------------------------------------------------------------- properties

# Fragments where tokenization and sentence ends disagree: quotes and brackets after a stop,
# URLs and numbers with dots, abbreviations, emoji and invisible characters, NUL, CJK.
FRAGMENTS = [
    "Hello", "there", "word", "it", "The", "é", "x", "3.5", "3", "Dr.", "U.S.", "e.g.",
    "https://rime.ai/docs", "rime.", "ai", " ", " ", " ", "  ", "\n", "\t", ".", ".", "!", "?",
    "…", "...", '"', "'", "“", "”", "(", ")", "[", "]", "🌍", "👍🏽", "\u2060", "\u200f",
    "\u200b", "\0", "你好", "。", "！", "「", "」", "-", ",", ";",
]  # fmt: skip


@st.composite
def texts(draw: st.DrawFn) -> str:
    parts = draw(
        st.lists(
            st.one_of(
                st.sampled_from(FRAGMENTS),
                st.text(st.characters(exclude_categories=["Cs"]), max_size=3),
            ),
            max_size=40,
        )
    )
    return "".join(parts)


def cut_at(text: str, cuts: list[int]) -> list[str]:
    """*text* cut into tokens at *cuts* (taken modulo its length)."""
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def by_period(text: str) -> list[str]:
    return re.split(r"(?<=\.)", text)


def altering(text: str) -> list[str]:
    # Drops whitespace and NUL, upper-cases: what an unusual tokenizer might hand back.
    return [s.upper().replace(" ", "").replace("\0", "") for s in re.split(r"(?<=[.!?])\s", text)]


def by_comma(text: str) -> list[str]:
    # Sentences where no punctuation rule sees one: only the tokenizer finds these ends.
    return re.split(r"(?<=,)", text)


TOKENIZERS: list[Tokenizer | None] = [None, by_period, by_comma, altering, lambda text: [text]]


ONE_BY_ONE = list(range(200))


@settings(max_examples=300)
@given(
    texts(),
    st.lists(st.integers(0, 200), max_size=40),
    st.sampled_from(TOKENIZERS),
    st.sampled_from([MAX_TEXT_CHARS, 8, 20]),
)
@example('She said "Stop." Then she left.', ONE_BY_ONE, None, MAX_TEXT_CHARS)
@example("Visit https://rime.ai/docs today. Next sentence. 🌍", ONE_BY_ONE, None, MAX_TEXT_CHARS)
@example("Hello\0 world. Next.\u2060 Then\u200f. ", ONE_BY_ONE, None, MAX_TEXT_CHARS)
def test_the_pieces_do_not_depend_on_how_the_text_was_tokenized(
    text: str, cuts: list[int], tokenizer: Tokenizer | None, max_chars: int
) -> None:
    """Issue 20, defect 9: whatever the text and however it is cut into tokens, the pieces
    are those of the whole text pushed at once; none but the flushed rest lacks a word (the
    rest may: it is what followed the last sentence, which left before it was seen)."""
    whole = SentenceSplitter(tokenizer, max_chars=max_chars)
    expected = whole.feed(text)
    expected_rest = whole.flush()
    splitter = SentenceSplitter(tokenizer, max_chars=max_chars)
    pieces: list[str] = []
    for token in cut_at(text, cuts):
        pieces += splitter.feed(token)
        assert len(splitter.pending) <= max_chars
    rest = splitter.flush()
    assert (pieces, rest) == (expected, expected_rest)
    assert "".join(pieces) + rest == text
    for piece in pieces:
        assert 0 < len(piece) <= max_chars
        # A piece with no word is only ever a word longer than the limit, cut at it.
        assert speakable(piece) or len(piece) == max_chars


LATENCY_TOKENS = ["Hello", " there", ".", " ", "Dr.", " Smith", "?", "!", "\n", "3.5", "é"]


@settings(max_examples=100)
@given(st.lists(st.sampled_from(LATENCY_TOKENS), max_size=30))
def test_a_finished_sentence_never_waits_for_more_than_the_next_character(
    tokens: list[str],
) -> None:
    """First-audio latency: once a sentence end is followed by whitespace, everything up to
    it has left (unless the end is an abbreviation, an initial or a number)."""
    splitter = SentenceSplitter()
    for token in tokens:
        splitter.feed(token)
        pending = splitter.pending
        for match in re.finditer(r"[?!]\s", pending):
            assert not speakable(pending[: match.end()]), pending


# ----------------------------------------------------------------------------- splitting


def test_short_text_is_not_split() -> None:
    assert split_text("Hello there.") == ["Hello there."]
    assert split_text("") == []


def test_long_text_splits_at_sentence_ends() -> None:
    sentence = "This sentence is exactly fifty characters long ok. "
    assert len(sentence) == 51
    text = sentence * 40
    pieces = split_text(text)
    assert "".join(pieces) == text
    assert all(len(p) <= MAX_TEXT_CHARS for p in pieces)
    assert all(p.endswith("ok. ") for p in pieces)


def test_a_sentence_longer_than_the_limit_splits_at_words() -> None:
    text = "word " * 500  # 2,500 characters, no sentence end
    pieces = split_text(text)
    assert "".join(pieces) == text
    assert all(len(p) <= MAX_TEXT_CHARS for p in pieces)
    assert all(p.endswith(" ") for p in pieces)


def test_a_giant_word_is_cut_as_a_last_resort() -> None:
    text = "x" * 2500
    pieces = split_text(text)
    assert [len(p) for p in pieces] == [1000, 1000, 500]


def test_split_respects_a_custom_limit_and_mixed_boundaries() -> None:
    text = "Short one. " + "averyveryverylongword " * 3 + "End!"
    pieces = split_text(text, limit=30)
    assert "".join(pieces) == text
    assert all(len(p) <= 30 for p in pieces)
    assert pieces[0] == "Short one. "


@pytest.mark.parametrize(
    ("text", "stop", "ends"),
    [
        ("Hello.", 6, [6]),
        ("Hello. ", 7, [6]),
        ('He said "hi!"', 13, [13]),
        ("Hello", 5, []),
        ("", 0, []),
        ("3.5", 3, []),
        ("rime.ai. e.g.x Ok… (Dr.) So?! ", 30, [8, 18, 24, 29]),
        ("One. Two. Three.", 9, [4, 9]),
        ("One. Two. Three.", 8, [4]),  # the end at 9 is past the stop
    ],
)
def test_split_text_sees_a_sentence_end_at_punctuation_before_whitespace(
    text: str, stop: int, ends: list[int]
) -> None:
    assert list(sentence_ends(text, stop)) == ends


def test_the_splitter_knows_sentence_ends_no_server_reading_has() -> None:
    # One table, two tiers: the splitter ends a sentence at "‼" (and the dandas, the Arabic
    # question mark...) so it leaves at once; a server reading does not, so neither the
    # message cutter nor split_text cuts there.
    text = "Really‼ Yes. "
    splitter = SentenceSplitter(lambda t: [t])
    assert splitter.feed(text) == ["Really‼ ", "Yes. "]
    assert MessageCutter().cut(text) == ["Really‼ Yes. "]
    assert list(sentence_ends(text, len(text))) == [12]
    assert split_text(text, 10) == ["Really‼ ", "Yes. "]  # a word boundary, not an end


# ----------------------------------------------------------------------------- cutting


def test_messages_are_cut_after_every_possible_server_sentence_end() -> None:
    cutter = MessageCutter()
    text = 'Dr. Smith said "stop." and left… then 2.5 ml. Ok?! 好。再见 Bye'
    assert cutter.cut(text) == [
        "Dr. ",
        'Smith said "stop." ',
        "and left… ",
        "then 2.5 ml. ",
        "Ok?! ",
        "好。",
        "再见 Bye",
    ]


def test_an_end_straddling_two_messages_is_still_a_cut() -> None:
    cutter = MessageCutter()
    assert cutter.cut('He said "Hi.') == ['He said "Hi.']
    # the closing quote and the space after it complete the end the last message opened
    assert cutter.cut('" and left. Then') == ['" ', "and left. ", "Then"]
    assert cutter.cut("..") == [".."]
    assert cutter.cut(". what") == [". ", "what"]


def test_whitespace_alone_waits_for_the_next_message() -> None:
    cutter = MessageCutter()
    assert cutter.cut("   ") == []
    assert cutter.cut("\n") == []
    assert cutter.cut("Next.") == ["   \nNext."]
    cutter.cut("  ")
    cutter.clear()
    assert cutter.cut("Fresh.") == ["Fresh."]


def test_long_sentences_are_cut_to_the_message_limit() -> None:
    cutter = MessageCutter()
    text = "word " * 450 + "end."
    messages = cutter.cut(text)
    assert "".join(messages) == text
    assert len(messages) == 3
    assert all(len(m) <= MAX_TEXT_CHARS for m in messages)


# The broad set of places a server may end a sentence, as the emulator's model states it.
_ANY_END = re.compile(r"""[.?!…]+["'”’)\]]*(?=\s|$)|[。！？]+["'”’)\]]*""")

cutter_texts = st.lists(
    st.sampled_from([*"ab .?!…\"')]。 \n\tXyz2", "Dr", "e.g", "   ", "x" * 300]), max_size=40
).map("".join)


@settings(max_examples=400, deadline=None)
@given(cutter_texts, st.lists(st.integers(min_value=0, max_value=3000), max_size=8))
def test_cutting_keeps_the_text_exact_and_ends_messages_at_every_end(
    text: str, cut_points: list[int]
) -> None:
    cutter = MessageCutter()
    bounds = sorted({0, len(text), *(min(p, len(text)) for p in cut_points)})
    messages: list[str] = []
    for start, stop in itertools.pairwise(bounds):
        messages += cutter.cut(text[start:stop])
    sent = "".join(messages)
    assert text.startswith(sent)
    assert not text[len(sent) :].strip()  # only trailing whitespace may still be held
    assert all(m.strip() for m in messages)
    assert all(len(m) <= MAX_TEXT_CHARS for m in messages)
    boundaries = set(itertools.accumulate(len(m) for m in messages))
    for match in _ANY_END.finditer(sent):
        end = match.end()
        # an end is a message boundary, or the whitespace after it reaches one
        assert any(end <= b and not sent[end:b].strip() for b in boundaries), (sent, end)
