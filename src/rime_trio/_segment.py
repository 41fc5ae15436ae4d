"""Turning a trickle of text (an LLM's tokens, a user's typing) into whole sentences, early.

The first sentence must leave the moment its end is seen, not when the next sentence starts:
that is where streaming TTS wins or loses its first-audio latency. But a sentence must not
leave before its end *is* seen: a token that stops at a ``.`` says nothing about what comes
next (``https://rime.`` + ``ai``, ``"Stop.`` + ``"``, ``3.`` + ``5``). So where a sentence ends
is decided by the text alone, never by how it was cut into tokens: the same text gives the
same pieces however it trickles in.

Every sentence end the client knows is defined here, in one table: the splitter's
(:class:`SentenceSplitter`), the ``/ws3`` message cutter's (:class:`MessageCutter`: a message
ends wherever any server reading may end a run) and :func:`split_text`'s (text cut to a
length limit, at sentence ends where it can: messages and HTTP requests).
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Callable, Iterator
from typing import Final

from ._errors import ConfigurationError
from ._text import check_text

__all__ = [
    "MAX_TEXT_CHARS",
    "MessageCutter",
    "SentenceSplitter",
    "Tokenizer",
    "blingfire_sentences",
    "sentence_ends",
    "speakable",
    "split_text",
]

#: Any callable that splits text into sentences can replace the default.
Tokenizer = Callable[[str], list[str]]

#: The longest text message a server takes (it closes with 1011 "400: text is too long"
#: past it): the longest piece :class:`SentenceSplitter` holds back, the longest message
#: :class:`MessageCutter` cuts and :func:`split_text`'s default limit.
MAX_TEXT_CHARS: Final = 1000

# ------------------------------------------------------------------ sentence-final punctuation
# The one table of where a sentence may end, for the splitter, the message cutter and
# split_text. Two tiers:
#
# What Rime's servers end a sentence at, by every reading of their docs: . ? ! and the
# ellipsis before whitespace, and the Chinese and Japanese stops anywhere, each perhaps closed
# by quotes and brackets. The message cutter and split_text use exactly these: the cutter
# must end a message wherever a server may end a run (and need not elsewhere), and HTTP
# requests are cut where the README says.
_SERVER_TERMINALS: Final = ".?!…"
_SERVER_CJK_TERMINALS: Final = "。！？"
_SERVER_CLOSERS: Final = "\"'”’)]"
# What the splitter ends a sentence at: the server's, and those of scripts a server reading
# may not know (so a sentence leaves as soon as its end is seen), all written with a space
# after them: the double exclamation marks, the Devanagari dandas, the Arabic question mark
# and the Urdu, Armenian and Ethiopic full stops. After these a sentence ends only where
# whitespace follows: "rime.ai", "3.5" and "e.g.," go on.
_TERMINALS: Final = _SERVER_TERMINALS + "‼⁇⁈⁉।॥؟۔։።፧"
# Chinese and Japanese put no space after a sentence, so after theirs any character that is
# not more punctuation decides (the fullwidth full stop and the halfwidth ideographic one
# besides the server's).
_CJK_TERMINALS: Final = _SERVER_CJK_TERMINALS + "．｡"
# What may stand between the punctuation and the whitespace and still belong to the sentence:
# closing quotes and brackets, and the invisible format characters (zero-width space and
# joiners, direction marks and isolates, word joiner, byte-order mark) that editors and LLMs
# leave there.
_CLOSERS: Final = (
    _SERVER_CLOSERS
    + "}»›」』）】〕〉》〗〙〛"
    + "\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
    + "\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068\u2069\ufeff"
)
_OPENERS: Final = "(\"'“‘[«‹「『（"
# A run of sentence-final punctuation and closers, in any order.
_RUN: Final = re.compile(f"[{re.escape(_TERMINALS + _CJK_TERMINALS + _CLOSERS)}]+")
# A letter or a digit (str.isalnum(), at the regex engine's speed).
_WORD: Final = re.compile(r"[^\W_]")
# A number as it may end a sentence: "3", "3.50", "$1,000", "10:30", "50%".
_NUMBER: Final = re.compile(r"[$€£¥#]?\d+(?:[.,:]\d+)*%?")
# Whitespace after a word: where the tokenizer may be asked again as a piece grows.
_WORD_END: Final = re.compile(r"(?<=\S)\s")
# The tokenizer is first asked about a piece with no sentence end yet once it is this long,
# then each time it has doubled.
_MIN_WINDOW: Final = 16
# The last whitespace character of what it is searched in.
_LAST_SPACE: Final = re.compile(r"\s\S*\Z")
# A "." after these does not end a sentence ("Dr. Smith"): the next trigger or the tokenizer
# decides.
_ABBREVIATIONS: Final = frozenset(
    (
        "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "inc", "ltd", "co",
        "corp", "no", "fig", "approx", "dept", "est", "mt", "ft",
    )
)  # fmt: skip
# How much of a sentence's end the abbreviation check reads: enough for any last word worth
# recognising, and bounded, so that a sentence's length never multiplies the work.
_TAIL_CHARS: Final = 64
# How far past the end of a sentence the tokenizer returned the sentence is looked for before
# its characters are counted instead (a tokenizer that changed or dropped characters).
_FIND_SLACK: Final = 64


def blingfire_sentences(text: str) -> list[str]:
    """Split *text* into sentences with blingfire (the default tokenizer).

    :raises UnicodeEncodeError: for text UTF-8 cannot carry (a lone surrogate; the splitter
        checks its text before calling a tokenizer, so it never passes one).
    """
    import blingfire  # deferred: it loads numpy and a native library

    joined: str = blingfire.text_to_sentences(text)
    return [s for s in joined.split("\n") if s.strip()]


def speakable(text: str) -> bool:
    """Whether *text* holds something to say: a letter or a digit, in any script.

    Punctuation, emoji, whitespace and invisible marks alone make no word; sent as a
    synthesis run of their own they make a run without speech.
    """
    return _WORD.search(text) is not None


def _looks_final(tail: str) -> bool:
    """Whether a sentence ending in *tail* (its last characters since the piece began,
    ending with its run of sentence-final punctuation and closers) ends there, whitespace
    having followed it.

    A "." after an abbreviation, an initial or a word holding a dot ("Dr.", "J.", "U.S.",
    "e.g.", "...") is not taken as the end, nor one after a number that is all the piece
    holds (a list's "1."): the next sentence end, or the tokenizer seeing both, decides. A
    number after other words ends a sentence ("It costs 3.50. "): the space after it says
    it is not "3.5".
    """
    core = tail.rstrip(_CLOSERS)
    if not core.endswith("."):
        return True  # "?", "!", "…" and the CJK stops end a sentence
    words = core[:-1].split()
    bare = words[-1].lower().lstrip(_OPENERS) if words else ""
    if _NUMBER.fullmatch(bare):
        return len(words) > 1
    return not (bare in _ABBREVIATIONS or (len(bare) == 1 and bare.isalpha()) or "." in bare)


def _visible(c: str) -> bool:
    """Whether a tokenizer is expected to keep *c* as it is: not whitespace, and not a
    control or format character (blingfire turns a NUL into a space, drops a word joiner)."""
    return not c.isspace() and unicodedata.category(c) not in ("Cc", "Cf")


class SentenceSplitter:
    """Incremental sentence splitter that never rewrites the caller's text.

    ``feed(text)`` returns the pieces *text* completed, as exact slices of the text fed so
    far, so joining every returned piece and :meth:`flush` gives back exactly the text fed.
    The pieces are the same however the text is cut into calls of :meth:`feed` (as long as
    :meth:`flush` only comes at the end): ``feed("Hello.")`` then ``feed(" Hi")`` returns what
    ``feed("Hello. Hi")`` returns.

    A piece is a sentence and the one whitespace character after it (more whitespace goes
    with the next piece: the piece had to leave when the first came). A sentence ends at
    sentence-final punctuation (with any closing quotes and brackets) once whitespace follows
    it, so ``"Hello there. "`` leaves at once, while ``"Hello there."`` waits for the next
    character (or :meth:`flush`): it may be ``"rime.ai"``, ``"Stop."`` + a quote, ``"3.5"``.
    A ``.`` after an abbreviation, an initial, a dotted word or a list's number ("Dr.", "J.",
    "U.S.", "1. ") is not taken as an end on its own. Chinese and Japanese stops (``。！？``)
    need no whitespace after them.

    The tokenizer (blingfire by default) is consulted on the text since the last piece at
    each such end, and at a word's end each time that text has doubled since the tokenizer
    last read it (from 16 characters on): it finds the ends the punctuation rule leaves open
    (``"the U.S. It was"``, or any a custom tokenizer knows of, in scripts without these
    stops), all but its last sentence, which may go on. Its output is located in the text,
    so a tokenizer that drops or changes characters cannot change the text returned. A piece
    with no letter or digit (a quote, an emoji, an invisible mark) is never returned on its
    own: it goes with the piece before it, or the next one (what follows the last sentence is
    left for :meth:`flush`, and may hold no word). Text that runs past *max_chars* with no
    sentence end is cut at the last word boundary (or, for a single word that long, at
    *max_chars*), so the text held back and the tokenizer's input stay bounded; such a piece
    is not a sentence end, but it is handed out like one (a server holding it back for a
    sentence end would hold it for ever). Each character is examined a bounded number of
    times and read by the tokenizer at most three times, so the work is proportional to the
    text fed, however it is cut.

    :raises ConfigurationError: if *max_chars* is not positive.
    """

    __slots__ = ("_buffer", "_max_chars", "_run", "_scanned", "_tokenize", "_tokenized", "_words")

    def __init__(self, tokenizer: Tokenizer | None = None, *, max_chars: int = MAX_TEXT_CHARS):
        if max_chars < 1:
            raise ConfigurationError(f"max_chars must be at least 1, not {max_chars}")
        self._tokenize: Tokenizer = tokenizer or blingfire_sentences
        self._max_chars = max_chars
        self._buffer = ""
        # How much of the buffer was examined, and what its examined end leaves open (see
        # _sentence_ends): kept so that no character is looked at twice.
        self._scanned = 0
        self._run = _NO_RUN
        # How much of the buffer the tokenizer has already read (see _Cuts.consult), and what
        # is known of where its words end.
        self._tokenized = 0
        self._words = _WordEnds()

    @property
    def pending(self) -> str:
        """Text received but not yet returned as a piece."""
        return self._buffer

    def feed(self, text: str) -> list[str]:
        """Add *text*; return the pieces it completed (exact slices, in order).

        :raises InvalidTextError: if *text* holds a lone surrogate (it cannot be sent); the
            splitter is then unchanged.
        :raises Exception: whatever the tokenizer raises; the splitter is then unchanged.
        """
        check_text(text)
        buffer = self._buffer + text
        ends, position, run = _sentence_ends(buffer, self._scanned, self._run)
        # Committed only at the end, so a tokenizer that raises leaves the splitter as it was.
        words = self._words.shifted(0)  # a copy: it learns about text not yet taken
        cuts = _Cuts(buffer, self._tokenize, self._max_chars, self._tokenized, words)
        for decided in ends:
            cuts.decide(decided, sentence_end=True)
        cuts.decide(len(buffer), sentence_end=False)  # what the text so far decides
        start = cuts.start
        self._buffer = buffer[start:]
        self._scanned = position - start
        self._run = run
        self._tokenized = max(0, cuts.tokenized_to - start)
        self._words = cuts.words.shifted(start)
        return cuts.pieces

    def flush(self) -> str:
        """Return (and forget) the text not yet returned, exactly as fed."""
        rest = self._buffer
        self.clear()
        return rest

    def clear(self) -> None:
        """Forget the text not yet returned."""
        self._buffer = ""
        self._scanned = 0
        self._run = _NO_RUN
        self._tokenized = 0
        self._words = _WordEnds()


# The run of punctuation and closers the examined text ends in, if any: None when it ends in
# none, else whether the run holds a sentence-final character and whether it holds a CJK one.
_Run = tuple[bool, bool] | None
_NO_RUN: Final[_Run] = None


def _sentence_ends(buffer: str, position: int, run: _Run) -> tuple[list[int], int, _Run]:
    """Where a sentence may end in *buffer* after *position* (up to which it was examined,
    ending in *run*): the index of each character that follows sentence-final punctuation
    and decides it (whitespace, or anything after a CJK stop). Also returns how far it was
    examined and the run it ends in, both for the next text: the run may go on."""
    ends: list[int] = []
    while True:
        if run is None:
            found = _RUN.search(buffer, position)
            if found is None:
                return ends, len(buffer), None
            position, run = found.start(), (False, False)
        final, cjk = run
        match = _RUN.match(buffer, position)
        if match is not None:
            chars = match.group()
            final = final or any(c in _TERMINALS or c in _CJK_TERMINALS for c in chars)
            cjk = cjk or any(c in _CJK_TERMINALS for c in chars)
            position = match.end()
        if position == len(buffer):
            return ends, position, (final, cjk)
        # buffer[position] is the first character after the run: it decides.
        if final and (buffer[position].isspace() or cjk):
            ends.append(position)
        run = None


class _Cuts:
    """The pieces one :meth:`SentenceSplitter.feed` cuts from its buffer, in order.

    Three kinds of event decide cuts, each at the index of the character that decides it: a
    sentence end (the character after sentence-final punctuation), a word end reached as the
    piece grows (the tokenizer is asked again each time the piece has doubled since it last
    read it) and the length limit. They are handled in the order of those indices (at one
    index: the limit, the sentence end, the word end), and each reads only the text up to
    its index and the state the events before it left: so every decision is the same
    whether the text came in one call or in many.
    """

    __slots__ = ("buffer", "limit", "pieces", "start", "tokenize", "tokenized_to", "words")

    def __init__(
        self, buffer: str, tokenize: Tokenizer, limit: int, tokenized: int, words: _WordEnds
    ) -> None:
        self.buffer = buffer
        self.tokenize = tokenize
        self.limit = limit
        self.start = 0
        # Where the tokenizer's last reading of the current piece ended.
        self.tokenized_to = tokenized
        self.words = words
        self.pieces: list[str] = []

    def decide(self, decided: int, *, sentence_end: bool) -> None:
        """Handle the events before index *decided*, then those at it (a sentence end there
        if *sentence_end*); ``decide(len(buffer), sentence_end=False)`` handles all the text
        so far decides.

        :raises Exception: whatever the tokenizer raises.
        """
        while True:
            bound = self.start + self.limit  # a word end is searched for up to it
            word = self._next_word_end()
            if word is not None and word < min(bound, decided):
                self._consult(word)
            elif bound <= decided and bound < len(self.buffer):
                self._cut_long()
            else:
                break
        if sentence_end:
            self._sentence_end(decided)
            if self._next_word_end() == decided:
                self._consult(decided)

    def _next_word_end(self) -> int | None:
        """The index of the whitespace after the first word that ends once the current piece
        has doubled since the tokenizer last read it (and within the length limit)."""
        start = self.start
        grown = max(_MIN_WINDOW, 2 * (self.tokenized_to - start))
        return self.words.first(
            self.buffer, start + grown, min(len(self.buffer), start + self.limit + 1)
        )

    def _consult(self, word_end: int) -> None:
        """Ask the tokenizer about the piece up to *word_end* and cut where it sees sentences
        end (not after its last sentence: that one may go on).

        The piece has at least doubled since the tokenizer last read it, so what it reads
        again is at most what is new: each character is read at most twice this way.
        """
        window = self.buffer[self.start : word_end]
        inner = _inner_ends(window, self.tokenize(window))
        self.tokenized_to = word_end
        self._take([self.start + e for e in inner if 0 < e < len(window)])

    def _sentence_end(self, decided: int) -> None:
        """A run of sentence-final punctuation ends just before *decided*, which is
        whitespace (or anything, after a CJK stop): cut there if it ends a sentence."""
        buffer, start = self.buffer, self.start
        if not _looks_final(buffer[max(start, decided - _TAIL_CHARS) : decided]):
            return
        end = decided + 1 if buffer[decided].isspace() else decided
        if _WORD.search(buffer, start, end) is None:
            return  # nothing to say yet: it goes with the next piece (no tokenizer needed)
        # Every cut below ends at *end* (a piece with no word joins the one before it), so
        # what is read here is never read again.
        window = buffer[start:end]
        inner = _inner_ends(window, self.tokenize(window))
        self._take([start + e for e in inner if 0 < e < len(window)] + [end])
        self.tokenized_to = max(self.tokenized_to, self.start)

    def _cut_long(self) -> None:
        """The current piece has run past the limit with no sentence end: cut it at the last
        word boundary within the limit.

        No tokenizer runs here: that would read the same text again at the sentence end that
        follows, and a tokenizer choosing short first sentences could make the work grow
        with the limit for every character.
        """
        buffer, start, limit = self.buffer, self.start, self.limit
        # The character just past the limit is known (it decided this cut): whitespace there
        # makes the limit itself a word boundary.
        space = _LAST_SPACE.search(buffer, start, start + limit + 1)
        cut = start + limit
        if space is not None and space.start() < cut:
            cut = space.start() + 1  # after the whitespace: it goes with the words before it
        if _WORD.search(buffer, start, cut) is None:
            cut = start + limit  # one enormous word, or no word at all: cut it anyway
        self.pieces.append(buffer[start:cut])
        self.start = cut

    def _take(self, ends: list[int]) -> None:
        """Cut pieces ending at *ends* (increasing positions after the start), joining a
        piece with no letter or digit to the one before it (or, for the first, the one after
        it)."""
        kept: list[int] = []
        previous = self.start
        for end in ends:
            if end <= previous:
                continue
            if _WORD.search(self.buffer, previous, end) is not None:
                kept.append(end)
            elif kept:
                kept[-1] = end  # attached to the piece before it
            else:
                continue  # attached to the piece after it
            previous = end
        for a, b in itertools.pairwise([self.start, *kept]):
            self.pieces.append(self.buffer[a:b])
        if kept:
            self.start = kept[-1]


class _WordEnds:
    """What a search for word ends found: the first at or after ``since`` is ``found``, or
    there is none before ``searched``. Word ends are facts of the text, so what one search
    learnt spares the next one (in this text or, shifted, the next): no stretch of text is
    searched again while the pieces grow over it."""

    __slots__ = ("found", "searched", "since")

    def __init__(self, since: int = 0, found: int | None = None, searched: int = 0) -> None:
        self.since = since
        self.found = found
        self.searched = searched

    def first(self, buffer: str, start: int, stop: int) -> int | None:
        """The index of the first whitespace after a word in ``buffer[start:stop]``."""
        if self.found is not None and self.since <= start <= self.found:
            return self.found if self.found < stop else None
        if self.found is None and self.since <= start <= self.searched:
            begin = self.searched  # none before it: go on from there
        else:
            self.since = begin = start
        match = _WORD_END.search(buffer, begin, stop) if begin < stop else None
        self.found = None if match is None else match.start()
        self.searched = max(begin, stop)
        return self.found

    def shifted(self, offset: int) -> _WordEnds:
        """The same knowledge for the text from *offset* on, indexed from there."""
        if self.found is not None and self.found < offset:
            return _WordEnds()
        return _WordEnds(
            max(0, self.since - offset),
            None if self.found is None else self.found - offset,
            max(0, self.searched - offset),
        )


def _inner_ends(window: str, sentences: list[str]) -> list[int]:
    """Where in *window* each of *sentences* (the tokenizer's, on *window*) but the last
    ends, with the closers and the one whitespace character after it.

    Each sentence is searched for near where the previous one ended; one the tokenizer
    altered (so it is not found) is measured by its count of visible characters.
    """
    ends: list[int] = []
    position = 0
    for sentence in [s for s in sentences if s.strip()][:-1]:
        core = sentence.strip()
        found = window.find(core, position, position + len(core) + _FIND_SLACK)
        if found >= 0:
            position = found + len(core)
        else:
            position = _skip_visible(window, position, sum(map(_visible, core)))
        while position < len(window) and window[position] in _CLOSERS:
            position += 1
        if position < len(window) and window[position].isspace():
            position += 1
        ends.append(position)
    return ends


def _skip_visible(text: str, position: int, count: int) -> int:
    """The index just past the next *count* visible characters of *text* from *position*."""
    while count and position < len(text):
        if _visible(text[position]):
            count -= 1
        position += 1
    return position


# ------------------------------------------------------------------ messages and requests


def _chars(chars: str) -> str:
    """A regex character class matching any one of *chars*."""
    return f"[{re.escape(chars)}]"


# A sentence end as a server sees it: . ? ! or an ellipsis, perhaps closed by quotes or
# brackets, before whitespace or the end of the text (split_text's preferred cut points).
_SERVER_END: Final = re.compile(f"{_chars(_SERVER_TERMINALS)}+{_chars(_SERVER_CLOSERS)}*(?=\\s|$)")
# Every place where some reading of Rime's bySentence rule may end a sentence: a server
# sentence end, the CJK stops (closed the same way) anywhere, and (no docs rule it out) a
# line break. Servers differ on which of these count (a lowercase word after it, "Dr.", a
# stop with no space yet); the cutter cuts its messages at all of them, so wherever a server
# ends a run, a message ends.
_CANDIDATE_END: Final = re.compile(
    f"(?:{_SERVER_END.pattern}|{_chars(_SERVER_CJK_TERMINALS)}+{_chars(_SERVER_CLOSERS)}*|\\n)"
)
# The part of already-cut text that a candidate end may still continue from.
_OPEN_END: Final = re.compile(
    f"{_chars(_SERVER_TERMINALS + _SERVER_CJK_TERMINALS)}+{_chars(_SERVER_CLOSERS)}*$"
)
_WHITESPACE: Final = re.compile(r"\s+")


def _ends(pattern: re.Pattern[str], text: str, stop: int) -> Iterator[int]:
    """The index just past each match of *pattern* in *text* that ends by *stop* (the
    character at *stop* is read: a lookahead may need it)."""
    for match in pattern.finditer(text, 0, stop + 1):
        if match.end() > stop:
            return
        yield match.end()


def sentence_ends(text: str, stop: int) -> Iterator[int]:
    """Where a sentence ends in *text* by index *stop*, as :func:`split_text` cuts: the index
    just past each run of . ? ! or … (perhaps closed by quotes or brackets) that whitespace
    or the end of *text* follows."""
    return _ends(_SERVER_END, text, stop)


def split_text(text: str, limit: int = MAX_TEXT_CHARS) -> list[str]:
    """Split *text* into pieces of at most *limit* characters.

    Cuts fall after a sentence end (see :func:`sentence_ends`) where possible, then after
    whitespace, and only inside a word longer than *limit* as a last resort. Joining the
    pieces gives back *text* exactly.

    :raises ValueError: if *limit* is not positive.
    """
    if limit <= 0:
        raise ValueError("limit must be positive")
    pieces: list[str] = []
    while len(text) > limit:
        cut = max(sentence_ends(text, limit), default=0)
        # A sentence end is only a cut if the whitespace after it fits in the piece too.
        while cut and cut < limit and text[cut].isspace():
            cut += 1
        if not cut:
            cut = max(_ends(_WHITESPACE, text, limit), default=0) or limit
        pieces.append(text[:cut])
        text = text[cut:]
    if text:
        pieces.append(text)
    return pieces


class MessageCutter:
    """Cuts outgoing text into ``/ws3`` messages that a server can never split.

    A server ends a synthesis run at a sentence end by *its* rule, which is not the client's
    and varies between readings of Rime's docs. Cutting after every place any reading could
    end a sentence (and at the per-message limit) makes every run consist of whole messages,
    so the contextId on a run's events tells exactly where one run stops and the next begins.
    A candidate end may straddle two messages (``"Hi.`` then ``" he said"``): the cutter
    remembers the open end of the text it already cut.

    Joining the messages gives back the text exactly; whitespace-only text is held and
    prefixed to the next message (it would make no run, so no event would answer it).
    """

    __slots__ = ("_held", "_open_end")

    def __init__(self) -> None:
        self._open_end = ""
        self._held = ""

    def cut(self, text: str) -> list[str]:
        """Return the messages that carry *text* (possibly none, if it is only whitespace)."""
        text = self._held + text
        if not text.strip():
            self._held = text
            return []
        self._held = ""
        context = self._open_end
        joined = context + text
        cuts = [0]
        for match in _CANDIDATE_END.finditer(joined):
            end = match.end() - len(context)
            if end <= 0:
                continue  # the end is already the last message's end
            while end < len(text) and text[end].isspace():
                end += 1  # the whitespace after an end goes with it
            if end < len(text):
                cuts.append(end)
        cuts.append(len(text))
        messages: list[str] = []
        prefix = ""
        for start, end in itertools.pairwise(cuts):
            piece = prefix + text[start:end]
            if piece.isspace():
                prefix = piece  # a line break on its own goes with what follows
                continue
            prefix = ""
            messages.extend(split_text(piece, MAX_TEXT_CHARS))
        self._held = prefix
        tail = _OPEN_END.search(joined)
        self._open_end = tail.group() if tail else ""
        return messages

    def clear(self) -> None:
        """Forget held whitespace and the open end (after an interruption)."""
        self._held = ""
        self._open_end = ""
