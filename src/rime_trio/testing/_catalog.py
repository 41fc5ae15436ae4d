"""Rime's voice catalogue as Rime published it: which speakers each model has, per language.

The data (``rime_voices.json``, beside this module) is Rime's own snapshot of its public list
``https://users.rime.ai/data/voices/all-v2.json``, taken on :data:`RIME_VOICES_DATE` and kept
in rimelabs/docs (``data/voices/all-v2.snapshot.json``; ``data/voices/snapshot.json`` gives
the date; ``voice-details.snapshot.json`` agrees with it on every model, language and count).
Facts, not code: refresh the file from there when Rime's catalogue changes.

The emulator serves it with ``EmulatorConfig(voices=rime_voices())`` (``rime-trio emulator
--rime-voices``); its HTTP endpoint refuses a ``lang`` a model does not speak in it either way
(:func:`model_languages`), as Rime answers ``Language <lang> is not supported for model
<model>`` (docs/errors.mdx).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Final

from .._options import LANGUAGES

__all__ = ["RIME_VOICES_DATE", "language_code", "model_languages", "rime_voices"]

_DATA: Final = "rime_voices.json"
#: The day Rime took the snapshot the catalogue comes from.
RIME_VOICES_DATE: Final = "2026-08-04"


@functools.cache
def _document() -> dict[str, dict[str, list[str]]]:
    text = resources.files(__package__).joinpath(_DATA).read_text(encoding="utf-8")
    document = json.loads(text)
    if document["retrieved"] != RIME_VOICES_DATE:
        raise RuntimeError(f"{_DATA} is from {document['retrieved']}, not {RIME_VOICES_DATE}")
    voices: dict[str, dict[str, list[str]]] = document["voices"]
    return voices


def rime_voices() -> dict[str, dict[str, list[str]]]:
    """Rime's catalogue, ``{model: {ISO 639-2 language: [speaker, ...]}}``: a fresh copy (an
    emulator's config may change it)."""
    return {
        model: {lang: list(speakers) for lang, speakers in languages.items()}
        for model, languages in _document().items()
    }


def model_languages(model: str) -> frozenset[str]:
    """The languages (ISO 639-2, as the catalogue writes them) *model* has speakers for.
    ``arcana`` speaks coda's: Rime serves arcana requests with coda since 2026-08-15
    (docs/arcana-sunset.mdx)."""
    served_by = "coda" if model == "arcana" else model
    return frozenset(_document().get(served_by, {}))


def language_code(lang: str) -> str:
    """*lang* as the catalogue writes it: the 3-letter form of a 2-letter code Rime lists
    (``en`` -> ``eng``); anything else as it is."""
    return LANGUAGES.get(lang, lang)
