"""Turning a trickle of text (an LLM's tokens, a user's typing) into whole sentences, early.

The first sentence must leave the moment its end is seen, not when the next sentence starts:
that is where streaming TTS wins or loses its first-audio latency.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Final

__all__ = ["SentenceSplitter", "Tokenizer", "blingfire_sentences"]

#: Any callable that splits text into sentences can replace the default.
Tokenizer = Callable[[str], list[str]]

# Terminal punctuation, optionally followed by closing quotes or brackets.
_TERMINAL = re.compile(r"""[.?!…。！？]+["'”’)\]]*$""")
# A "." after these does not end a sentence; waiting for the next character decides.
_ABBREVIATIONS: Final = frozenset(
    (
        "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "inc", "ltd", "co",
        "corp", "no", "fig", "approx", "dept", "est", "mt", "ft",
    )
)  # fmt: skip


def blingfire_sentences(text: str) -> list[str]:
    """Split *text* into sentences with blingfire (the default tokenizer)."""
    import blingfire  # deferred: it loads numpy and a native library

    joined: str = blingfire.text_to_sentences(text)
    return [s for s in joined.split("\n") if s.strip()]


def _looks_final(sentence: str) -> bool:
    """Whether *sentence*, seen with nothing after it yet, certainly ends here."""
    stripped = sentence.rstrip()
    if not _TERMINAL.search(stripped):
        return False
    core = stripped.rstrip("\"'”’)]")
    if core.endswith("."):
        last_word = core[:-1].rsplit(None, 1)[-1] if core[:-1].split() else ""
        bare = last_word.lower().lstrip("(\"'“‘")
        if bare in _ABBREVIATIONS or (len(bare) == 1 and bare.isalpha()) or "." in bare:
            return False  # "Dr.", an initial or "U.S.": the sentence probably goes on
        if bare[-1:].isdigit():
            return False  # "3." may be "3.5"
    return True


class SentenceSplitter:
    """Incremental sentence splitter that never rewrites the caller's text.

    ``feed(text)`` returns the sentences that *text* completed, as exact slices of the text
    fed so far: whitespace stays where the caller put it (after a sentence, it goes with
    that sentence), so joining every returned piece and :meth:`flush` gives back exactly the
    text fed. A sentence counts as complete when the tokenizer sees another one after it, or
    when the buffered text ends with sentence-final punctuation that is not an abbreviation,
    an initial or a number (so "Hello there." goes out at once, "Dr." waits).

    The tokenizer only decides *where* sentences end; its output is located in the buffer
    (a tokenizer that drops or changes characters still cannot change the text sent).
    """

    __slots__ = ("_buffer", "_tokenize")

    def __init__(self, tokenizer: Tokenizer | None = None) -> None:
        self._tokenize: Tokenizer = tokenizer or blingfire_sentences
        self._buffer = ""

    @property
    def pending(self) -> str:
        """Text received but not yet returned as a sentence."""
        return self._buffer

    def feed(self, text: str) -> list[str]:
        """Add *text*; return the sentences it completed (exact slices, in order)."""
        self._buffer += text
        buffer = self._buffer
        if not buffer.strip():
            return []
        sentences = [s for s in self._tokenize(buffer) if s.strip()]
        if not sentences:
            return []
        ends = _locate(buffer, sentences)
        if _looks_final(sentences[-1]):
            ends[-1] = len(buffer)  # everything, with any whitespace already typed
        else:
            ends.pop()  # the last sentence is not finished yet
        if not ends:
            return []
        pieces = [buffer[start:end] for start, end in itertools.pairwise([0, *ends])]
        self._buffer = buffer[ends[-1] :]
        return [piece for piece in pieces if piece]

    def flush(self) -> str:
        """Return (and forget) the text not yet returned, exactly as fed."""
        rest, self._buffer = self._buffer, ""
        return rest

    def clear(self) -> None:
        self._buffer = ""


def _locate(buffer: str, sentences: list[str]) -> list[int]:
    """Where each of *sentences* ends in *buffer*, counting the whitespace that follows it.

    Each sentence is searched for from where the previous one ended; one the tokenizer
    altered (so it cannot be found) is measured by its count of non-space characters.
    """
    ends: list[int] = []
    position = 0
    for sentence in sentences:
        core = sentence.strip()
        found = buffer.find(core, position)
        if found >= 0:
            position = found + len(core)
        else:
            position = _skip_visible(buffer, position, sum(not c.isspace() for c in core))
        while position < len(buffer) and buffer[position].isspace():
            position += 1
        ends.append(position)
    return ends


def _skip_visible(buffer: str, position: int, count: int) -> int:
    """The index just past the next *count* non-space characters from *position*."""
    while count and position < len(buffer):
        if not buffer[position].isspace():
            count -= 1
        position += 1
    return position
