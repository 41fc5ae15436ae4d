"""The readings of Rime's ``/ws3`` docs the emulator can play, and the server's sentence rule.

Every point PROTOCOL.md marks open is a field of :class:`Ws3Readings`. The sentence rule
(:func:`sentence_ends`) is deliberately separate from the client's in ``_protocol``: the emulator
must be able to disagree with the client the way Rime's server can.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal, get_args

__all__ = ["ABBREVIATIONS", "TimestampPlacement", "Ws3Readings", "sentence_ends"]

DoneRule = Literal["when_empty", "per_run"]
Tagging = Literal["later", "per_sentence"]
RunSentences = Literal["all", "first"]
NeverFlushes = Literal["each", "coalesce"]
TimestampPlacement = Literal["before", "between", "after"]


@dataclass(frozen=True, slots=True)
class Ws3Readings:
    """One reading of each point Rime's ``/ws3`` docs leave open (PROTOCOL.md, "open").

    Defaults follow Rime's current docs where they say one.

    :ivar done: ``when_empty``: a run is followed by ``done`` only if the text buffer is empty
        (or whitespace) afterwards; ``per_run``: every run is followed by ``done``.
    :ivar tagging: which contextId tags a run whose text came in messages with different ids.
        ``later``: the id of the last message any of whose text is in the run;
        ``per_sentence``: each sentence is its own run, tagged by the message holding its
        first non-whitespace character.
    :ivar run_sentences: in bySentence mode a run takes text up to the ``all`` (last) or the
        ``first`` sentence end in the buffer.
    :ivar timestamps: a run's ``timestamps`` message goes ``before`` its first chunk,
        ``between`` (after its first chunk) or ``after`` its last chunk.
    :ivar lowercase_splits: False: a sentence end followed by whitespace and a lowercase letter
        does not count, and one followed only by whitespace at the end of the buffer waits.
    :ivar abbreviations_split: False: a ``.`` right after one of :data:`ABBREVIATIONS` does
        not end a sentence.
    :ivar hold_unspaced_end: True: a sentence end at the very end of the buffer, with no
        whitespace after it, waits for more text (a flush or eos still synthesizes it).
    :ivar flush_empty_done: True: a flush with nothing buffered or queued is answered by a
        ``done``, in order after the runs before it.
    :ivar eos_empty_done: True: the same for ``eos``, before the close.
    :ivar clear_stops_synthesis: True: ``clear`` also stops the running run after its current
        chunk (no more audio, no ``done``) and drops queued runs; False (the docs): it drops
        the buffered text only.
    :ivar never_flushes: under ``segment=never``, ``each`` (the docs,
        ``docs/websockets-segment.mdx``): every flush is one utterance, synthesized after the
        ones before it, and answered by exactly one ``done`` after its audio, whatever else is
        buffered; ``coalesce`` (an older reading): flushes held while a run is busy join one
        run, whose ``done`` follows the :attr:`done` rule. (``tagging="per_sentence"`` still
        cuts a flush's text into a run per sentence, each tagged by its first message; under
        ``each`` only the last of them is answered by the flush's ``done``.)
    :raises ValueError: for a value outside a field's choices.
    """

    done: DoneRule = "when_empty"
    tagging: Tagging = "later"
    run_sentences: RunSentences = "all"
    timestamps: TimestampPlacement = "between"
    lowercase_splits: bool = True
    abbreviations_split: bool = True
    hold_unspaced_end: bool = False
    flush_empty_done: bool = False
    eos_empty_done: bool = False
    clear_stops_synthesis: bool = False
    never_flushes: NeverFlushes = "each"

    def __post_init__(self) -> None:
        # Literal fields are not checked at runtime; a typo would silently pick a branch.
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"Ws3Readings.{name} must be one of {choices}, not {value!r}")


_CHOICES: Final = {
    "done": get_args(DoneRule),
    "tagging": get_args(Tagging),
    "run_sentences": get_args(RunSentences),
    "timestamps": get_args(TimestampPlacement),
    "never_flushes": get_args(NeverFlushes),
}

# --------------------------------------------------------------------------- sentence rule

#: Words after which a "." does not end a sentence when ``abbreviations_split`` is False.
ABBREVIATIONS: Final = frozenset(
    {"Mr", "Mrs", "Ms", "Dr", "Prof", "Sr", "Jr", "St", "vs", "etc", "e.g", "i.e", "No", "Mt"}
)
# The broad candidate set: Latin ends need whitespace (or the end of the buffer) after them;
# full-width ends do not. The client cuts its messages at every position of this set (its own
# copy in _protocol), which is why the readings may only remove positions from it.
_END: Final = re.compile(r"""(?P<latin>[.?!…]+["'”’)\]]*)(?=\s|$)|[。！？]+["'”’)\]]*""")
_OPENERS: Final = "\"'“‘([{"
_BROAD: Final = Ws3Readings()


def sentence_ends(text: str, readings: Ws3Readings = _BROAD, *, final: bool = False) -> list[int]:
    """Positions just past each sentence end in *text*, by the server's rule under *readings*
    (the default readings give the broad candidate set).

    *final* means no more text can follow (a flush or eos): ends that would wait to see the
    next character count then.
    """
    return [
        match.end()
        for match in _END.finditer(text)
        if match.group("latin") is None or _latin_end_counts(text, match, readings, final)
    ]


def _latin_end_counts(text: str, match: re.Match[str], readings: Ws3Readings, final: bool) -> bool:
    """Whether a ``. ? ! …`` end survives the readings that remove candidates. (Full-width ends
    do not depend on what follows them, so nothing ever holds them.)"""
    if not readings.abbreviations_split and _after_abbreviation(text, match):
        return False
    after = text[match.end() :]
    if not after:
        # "2." may go on with "5ml": a cautious server waits for the next character.
        return final or not readings.hold_unspaced_end
    if readings.lowercase_splits:
        return True
    following = after.lstrip()
    if not following:
        return final  # the next letter is not here yet: it may be lowercase
    return not following[0].islower()


def _after_abbreviation(text: str, match: re.Match[str]) -> bool:
    if match.group("latin").rstrip("\"'”’)]") != ".":
        return False
    start = match.start()
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return text[start : match.start()].lstrip(_OPENERS) in ABBREVIATIONS
