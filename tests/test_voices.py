"""The voice list, without I/O: where it lives and both of its published shapes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rime_trio import ProtocolError
from rime_trio._voices import Voice, parse_voices, voices_url

V2 = {
    "coda": {"eng": ["astra", "albion"], "spa": ["aurelio"]},
    "arcana": {"eng": ["luna"]},
}
LEGACY = {"mist": ["allison", "alona"], "mistv2": ["abbie"]}


def test_urls_point_at_the_http_host() -> None:
    rime = "https://users.rime.ai/data/voices/all-v2.json"
    assert voices_url("wss://users-ws.rime.ai/ws3") == rime
    assert voices_url("https://users.rime.ai/v1/rime-tts") == rime
    assert voices_url("ws://127.0.0.1:8080/ws3") == "http://127.0.0.1:8080/data/voices/all-v2.json"


def test_the_current_shape_names_languages() -> None:
    assert parse_voices(V2) == [
        Voice("arcana", "luna", "eng"),
        Voice("coda", "albion", "eng"),
        Voice("coda", "astra", "eng"),
        Voice("coda", "aurelio", "spa"),
    ]
    assert [v.speaker for v in parse_voices(V2, model="arcana")] == ["luna"]
    assert parse_voices(V2, model="mist") == []


def test_the_legacy_shape_has_no_languages() -> None:
    assert parse_voices(LEGACY, model="mist") == [
        Voice("mist", "allison", None),
        Voice("mist", "alona", None),
    ]


@pytest.mark.parametrize(
    "document", [[], "x", {"coda": "astra"}, {"coda": {"eng": "astra"}}, {"coda": [1]}]
)
def test_anything_else_is_a_protocol_error(document: object) -> None:
    with pytest.raises(ProtocolError):
        parse_voices(document)


names = st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)


@given(st.dictionaries(names, st.dictionaries(names, st.lists(names, max_size=5), max_size=3)))
def test_every_listed_speaker_comes_out_once(document: dict[str, dict[str, list[str]]]) -> None:
    voices = parse_voices(document)
    expected = {
        (m, s, lang) for m, langs in document.items() for lang, ss in langs.items() for s in ss
    }
    assert {(v.model, v.speaker, v.language) for v in voices} == expected
    assert len(voices) == len(expected)
