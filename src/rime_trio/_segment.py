"""Turning a trickle of text (an LLM's tokens, a user's typing) into whole sentences, early.

The first sentence must leave the moment its end is seen, not when the next sentence starts:
that is where streaming TTS wins or loses its first-audio latency.
"""

from __future__ import annotations

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
    """Incremental sentence splitter.

    ``feed(text)`` returns the sentences that *text* completed. A sentence counts as complete
    when the tokenizer sees another one after it, or when the buffered text ends with
    sentence-final punctuation that is not an abbreviation, an initial or a number (so
    "Hello there." goes out at once, "Dr." waits). ``flush()`` returns what is left.
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
        self._buffer += text
        if not self._buffer.strip():
            return []
        sentences = [s for s in self._tokenize(self._buffer) if s.strip()]
        if not sentences:
            return []
        if _looks_final(sentences[-1]):
            self._buffer = ""
            return sentences
        *complete, last = sentences
        if complete:
            # Keep the unfinished tail as the tokenizer returned it, with the whitespace
            # that followed it in the input (it separates it from what comes next).
            trailing = self._buffer[len(self._buffer.rstrip()) :]
            self._buffer = last + trailing
        return complete

    def flush(self) -> str:
        rest, self._buffer = self._buffer.strip(), ""
        return rest

    def clear(self) -> None:
        self._buffer = ""
