"""The emulator's sentence rule and readings, tested synchronously."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rime_trio.testing import Ws3Readings
from rime_trio.testing._ws3_readings import ABBREVIATIONS, sentence_ends

STRICT = Ws3Readings(lowercase_splits=False, abbreviations_split=False, hold_unspaced_end=True)


@pytest.mark.parametrize(
    ("text", "ends"),
    [
        ("Hi. there", [3]),
        ("Hi.", [3]),
        ("Hi. ", [3]),
        ("Wait... what?! ", [7, 14]),
        ('He said "Hi." Then', [13]),
        ("(Really?) Yes", [9]),
        ("3.5 apples", []),
        ("a.b", []),
        ("no end", []),
        ("好！再见。", [2, 5]),
        ("好！！再见", [3]),
        ("好。”再见", [3]),
        ("Dr. Who", [3]),
    ],
)
def test_broad_sentence_ends(text: str, ends: list[int]) -> None:
    assert sentence_ends(text) == ends


@pytest.mark.parametrize(
    ("text", "ends", "final_ends"),
    [
        ("Hi. there", [], []),  # lowercase word after the end
        ("Hi. There", [3], [3]),
        ("Hi. 5 more", [3], [3]),  # only a lowercase letter prevents the split
        ("Hi. ", [], [3]),  # the next letter is not here yet
        ("Hi.", [3], [3]),  # an unspaced end is hold_unspaced_end's business
    ],
)
def test_lowercase_splits_false(text: str, ends: list[int], final_ends: list[int]) -> None:
    readings = Ws3Readings(lowercase_splits=False)
    assert sentence_ends(text, readings) == ends
    assert sentence_ends(text, readings, final=True) == final_ends


@pytest.mark.parametrize(
    ("text", "ends"),
    [
        ("Dr. Who. Yes", [8]),
        ("(Dr. Who) and Mrs. X. Ok", [21]),
        ("See e.g. this. And", [14]),
        ("Done etc. Then", []),
        ("Drive. Now", [6]),  # a word that merely starts like an abbreviation
        ("Dr.. Who", [4]),  # only a single "." after the abbreviation is exempt
        ("Dr? Who", [3]),
    ],
)
def test_abbreviations_split_false(text: str, ends: list[int]) -> None:
    assert sentence_ends(text, Ws3Readings(abbreviations_split=False)) == ends


def test_abbreviation_list_is_the_documented_one() -> None:
    assert {"Mr", "Mrs", "Ms", "Dr", "Prof", "Sr", "Jr", "St", "vs", "etc", "e.g", "i.e"} < (
        ABBREVIATIONS
    )
    assert {"No", "Mt"} < ABBREVIATIONS


def test_hold_unspaced_end_waits_for_the_next_character() -> None:
    readings = Ws3Readings(hold_unspaced_end=True)
    assert sentence_ends("Take 2.", readings) == []
    assert sentence_ends("Take 2.", readings, final=True) == [7]
    assert sentence_ends("Take 2. ", readings) == [7]
    assert sentence_ends("Take 2.5ml. Now", readings) == [11]


def test_full_width_ends_are_never_held() -> None:
    # They need no whitespace after them, so there is nothing to wait for.
    assert sentence_ends("好。", STRICT) == [2]
    assert sentence_ends("好。 then", STRICT) == [2]


_PIECES = st.sampled_from(
    [
        "Hi", "there", "Dr", "e.g", "No", "x", " ", "  ", "\n", ".", "?", "!", "…",
        '"', "”", ")", "。", "！", "5", "(",
    ]
)  # fmt: skip
_READINGS = st.builds(
    Ws3Readings,
    lowercase_splits=st.booleans(),
    abbreviations_split=st.booleans(),
    hold_unspaced_end=st.booleans(),
)


# The broad candidate set as stated in the brief, written independently of the module.
_CANDIDATE = re.compile(r"""[.?!…]+["'”’)\]]*(?=\s|$)|[。！？]+["'”’)\]]*""")


@given(text=st.lists(_PIECES, max_size=30).map("".join))
def test_default_readings_give_the_broad_candidate_set(text: str) -> None:
    assert sentence_ends(text) == [match.end() for match in _CANDIDATE.finditer(text)]


@given(text=st.lists(_PIECES, max_size=30).map("".join), readings=_READINGS, final=st.booleans())
def test_readings_only_remove_candidates(text: str, readings: Ws3Readings, final: bool) -> None:
    broad = {match.end() for match in _CANDIDATE.finditer(text)}
    assert set(sentence_ends(text, readings, final=final)) <= broad


@given(text=st.lists(_PIECES, max_size=30).map("".join))
def test_every_end_follows_sentence_punctuation(text: str) -> None:
    for end in sentence_ends(text):
        assert text[:end].rstrip("\"'”’)]")[-1] in ".?!…。！？"


@pytest.mark.parametrize(
    "field", ["done", "tagging", "run_sentences", "timestamps"], ids=lambda name: name
)
def test_readings_reject_unknown_choices(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(Ws3Readings(), **{field: "nope"})


def test_default_readings_follow_the_current_docs() -> None:
    readings = Ws3Readings()
    assert readings.done == "when_empty"
    assert readings.tagging == "later"
    assert not readings.clear_stops_synthesis
    assert not readings.flush_empty_done
    assert not readings.eos_empty_done
