"""Rime's voice list: where it is, and what it says (no I/O here).

Rime publishes its speakers, per model and language, at ``/data/voices/all-v2.json`` on its
HTTP host, with no key. Its current shape is ``{model: {language: [speaker, ...]}}``; the
legacy list (``all.json``, and the v2 URL in older deployments) is ``{model: [speaker,
...]}``. Both are read, so a server serving either works.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from ._errors import ProtocolError

__all__ = ["VOICES_PATH", "Voice", "parse_voices", "voices_url"]

VOICES_PATH: Final = "/data/voices/all-v2.json"
# Rime's streaming hosts -> its HTTP hosts, per region (docs/regional-endpoints.mdx).
_HTTP_HOST_FOR_WS_HOST: Final = {
    "users-ws.rime.ai": "users.rime.ai",
    "users-east-ws.rime.ai": "users-east.rime.ai",
}


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class Voice:
    """One speaker of one model. ``language`` is an ISO 639-2 code such as ``"eng"``, or
    ``None`` when the server's list does not say."""

    model: str
    speaker: str
    language: str | None = None


def voices_url(endpoint: str) -> str:
    """The voice list's URL on the server of *endpoint* (a resolved ws3 or HTTP endpoint):
    Rime's HTTP host for Rime's streaming host, the same host and port otherwise (the
    bundled emulator, a proxy)."""
    parts = urlsplit(endpoint)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    netloc = parts.netloc
    host = parts.hostname or ""
    if host in _HTTP_HOST_FOR_WS_HOST:
        netloc = netloc.replace(host, _HTTP_HOST_FOR_WS_HOST[host], 1)
    return urlunsplit((scheme, netloc, VOICES_PATH, "", ""))


def parse_voices(document: Any, *, model: str | None = None) -> list[Voice]:
    """The voices in a decoded voice list, sorted by model, speaker and language, optionally
    of one *model* only.

    :raises ProtocolError: if *document* is neither of the two shapes.
    """
    if not isinstance(document, Mapping):
        raise ProtocolError("the voice list is not a JSON object keyed by model")
    voices: set[Voice] = set()
    for model_id, entry in document.items():
        if model is not None and model_id != model:
            continue
        if isinstance(entry, Mapping):  # {language: [speakers]}
            for language, speakers in entry.items():
                voices.update(Voice(model_id, s, language) for s in _speakers(speakers))
        else:  # the legacy [speakers]
            voices.update(Voice(model_id, s) for s in _speakers(entry))
    return sorted(voices, key=lambda v: (v.model, v.speaker, v.language or ""))


def _speakers(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ProtocolError("the voice list holds something other than lists of speaker names")
    return value
