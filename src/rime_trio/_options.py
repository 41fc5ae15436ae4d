"""Synthesis options, endpoint selection and the per-model parameter table.

Everything here is pure and synchronous. Options are validated when they are built, so a bad
model name or URL fails at construction with :class:`ConfigurationError`, not mid-stream.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Final, Literal, get_args
from urllib.parse import urlencode, urlsplit, urlunsplit

from ._errors import ConfigurationError, RimeDeprecationWarning

__all__ = [
    "DEFAULT_HTTP_URL",
    "DEFAULT_WS_URL",
    "AudioFormat",
    "Model",
    "Region",
    "RimeOptions",
    "Segment",
    "StreamProtocol",
    "accept_header",
    "format_for_accept",
    "http_body",
    "model_params",
    "streaming_url",
    "websocket_url",
]

# arcana stays accepted: Rime serves it with coda since 2026-08-15, with no error
# (rimelabs/docs docs/arcana-sunset.mdx); asking for it warns (RimeDeprecationWarning).
Model = Literal["coda", "arcana", "mistv3", "mistv2", "mist"]
#: ``ogg_opus`` and ``webm_opus`` are HTTP only (``Accept: audio/ogg;codecs=opus``,
#: ``audio/webm;codecs=opus``: api-reference/coda/http.mdx, api-reference/mistv3/http.mdx).
AudioFormat = Literal["pcm", "mulaw", "mp3", "wav", "ogg_opus", "webm_opus"]
#: Rime's regions (docs/regional-endpoints.mdx): US West (``users.rime.ai``, an alias of
#: ``users-west.rime.ai``; streaming ``users-ws.rime.ai``) and US East (``users-east.rime.ai``;
#: streaming ``users-east-ws.rime.ai``).
Region = Literal["us-west", "us-east"]
Segment = Literal["bySentence", "immediate", "never"]
#: The streaming protocol: Rime's WebSocket v1 (``/ws``, many streams per socket) or ``/ws3``.
StreamProtocol = Literal["v1", "ws3"]
ParamValue = str | int | float | bool

DEFAULT_HTTP_URL: Final = "https://users.rime.ai/v1/rime-tts"
DEFAULT_WS_URL: Final = "wss://users-ws.rime.ai/ws3"
_HTTP_PATH: Final = "/v1/rime-tts"
_WS_PATH: Final = "/ws3"
_V1_PATH: Final = "/ws"
_PATH_FOR_PROTOCOL: Final[dict[StreamProtocol, str]] = {"v1": _V1_PATH, "ws3": _WS_PATH}
# Rime's public v1 WebSocket is one host where the path picks the model, and `start` names
# none (PROTOCOL.md; Rime's SDK example, livekit-plugins-rime, pipecat and vocode all dial
# /coda/ws). Coda is the one route every source agrees on. Mist v3's is written /mistv3/ws
# in livekit's Python README and /mist/ws in its JS one: /mistv3/ws is chosen because the
# path names the model as `modelId` does everywhere else (/coda/ws, modelId=mistv3);
# base_url takes either. The older hosts coda.api.rime.ai and mist.api.rime.ai are the
# gRPC targets of Rime's SDK, not WebSocket hosts.
_V1_HOST: Final = "api.rime.ai"
_V1_ROUTES: Final = {"coda": "/coda/ws", "mistv3": "/mistv3/ws"}
_RIME_HOSTS: Final = frozenset(
    {"users.rime.ai", "users-west.rime.ai", "users-ws.rime.ai", _V1_HOST}
)
# Rime's US East hosts (docs/regional-endpoints.mdx). No regional host is documented for
# WebSocket v1 (api.rime.ai), so v1 streams of these are refused rather than sent west.
_EAST_HOSTS: Final = frozenset({"users-east.rime.ai", "users-east-ws.rime.ai"})
_PROTOCOLS: Final = frozenset(get_args(StreamProtocol))
# Rime serves HTTP and WebSocket from different hosts; switching a known HTTP host to
# streaming must switch the host too, or the socket lands on a server that answers 400
# (docs/regional-endpoints.mdx: users and users-west stream on users-ws, users-east on
# users-east-ws).
_WS_HOST_FOR_HTTP_HOST: Final = {
    "users.rime.ai": "users-ws.rime.ai",
    "users-west.rime.ai": "users-ws.rime.ai",
    "users-east.rime.ai": "users-east-ws.rime.ai",
}
_HTTP_HOST_FOR_REGION: Final[dict[str, str]] = {
    "us-west": "users-west.rime.ai",
    "us-east": "users-east.rime.ai",
}
_REGIONS: Final = frozenset(get_args(Region))

_MODELS: Final = frozenset(get_args(Model))
_FORMATS: Final = frozenset(get_args(AudioFormat))
_SEGMENTS: Final = frozenset(get_args(Segment))
# /ws3 streams raw frames; a RIFF header only makes sense for a whole HTTP body, and Rime
# serves opus on the HTTP endpoint only (its /ws3 audioFormat: pcm, mulaw, mp3).
_STREAMING_FORMATS: Final = frozenset({"pcm", "mulaw", "mp3"})
_OPUS_FORMATS: Final = frozenset({"ogg_opus", "webm_opus"})

# The Accept names Rime's HTTP docs use now, RFC media types (api-reference/coda/http.mdx,
# "Audio formats"). The older names (audio/pcm, audio/x-mulaw, audio/mp3) are "deprecated
# aliases, still accepted": format_for_accept reads both.
_ACCEPT: Final[dict[AudioFormat, str]] = {
    "pcm": "audio/L16",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "mulaw": "audio/PCMU",
    "ogg_opus": "audio/ogg;codecs=opus",
    "webm_opus": "audio/webm;codecs=opus",
}
_FORMAT_FOR_MIME: Final[dict[str, AudioFormat]] = {
    **{mime.lower(): fmt for fmt, mime in _ACCEPT.items()},
    "audio/pcm": "pcm",
    "audio/mp3": "mp3",
    "audio/x-mulaw": "mulaw",
}

# option attribute -> (wire name, models that accept it)
_MIST = frozenset({"mist", "mistv2", "mistv3"})
_MIST_V1_V2 = frozenset({"mist", "mistv2"})
_ARCANA = frozenset({"arcana"})
_MODEL_OPTIONS: Final[dict[str, tuple[str, frozenset[str]]]] = {
    # docs/speed.mdx: speedAlpha is mistv2's speed (below 1 faster), and coda and mistv3
    # accept it for compatibility, running the other way (above 1 faster).
    "speed_alpha": ("speedAlpha", _MIST | {"coda"}),
    "pause_between_brackets": ("pauseBetweenBrackets", _MIST),
    # Works on mist and mistv2 only; mistv3 and coda accept and ignore it (docs/models.mdx,
    # docs/troubleshooting-api.mdx): refused there, as it would do nothing.
    "phonemize_between_brackets": ("phonemizeBetweenBrackets", _MIST_V1_V2),
    "inline_speed_alpha": ("inlineSpeedAlpha", _MIST),  # docs/speed.mdx: a Mist feature
    # "mist/mistv2 only", HTTP and WebSocket (api-reference/mistv2/http.mdx and
    # websockets.mdx): the docs' name for what was reduceLatency.
    "no_text_normalization": ("noTextNormalization", _MIST_V1_V2),
    # Kept for compatibility on mist and mistv2, HTTP and WebSocket (docs/changelog.mdx).
    "save_oovs": ("saveOovs", _MIST_V1_V2),
    # arcana's sampling options: gone from the docs with arcana (docs/arcana-sunset.mdx);
    # asking for one warns (RimeDeprecationWarning).
    "repetition_penalty": ("repetition_penalty", _ARCANA),
    "temperature": ("temperature", _ARCANA),
    "top_p": ("top_p", _ARCANA),
    "max_tokens": ("max_tokens", _ARCANA),
    # coda and mistv3, HTTP and WebSocket; 0.4 to 2.5, above 1 slower (docs/speed.mdx,
    # api-reference/coda/http.mdx, api-reference/mistv3/http.mdx).
    "time_scale_factor": ("timeScaleFactor", frozenset({"coda", "mistv3"})),
}
# Only v1 carries these (in a context's ``start``: rime-api's CodaParameters).
_V1_ONLY_OPTIONS: Final[dict[str, tuple[str, frozenset[str]]]] = {
    "text_lookahead_tokens": ("text_lookahead_tokens", frozenset({"coda"})),
}
# Only the HTTP endpoint understands these; they never go into the WebSocket query string.
# (None now: reduceLatency, the one there was, became noTextNormalization, which both take.)
_HTTP_ONLY_OPTIONS: Final[dict[str, tuple[str, frozenset[str]]]] = {}
_ARCANA_OPTIONS: Final = ("repetition_penalty", "temperature", "top_p", "max_tokens")

# timeScaleFactor's range; Rime clamps a value outside it without an error (docs/speed.mdx,
# api-reference/coda/http.mdx), so the client refuses one instead of sending it in vain.
TIME_SCALE_RANGE: Final = (0.4, 2.5)
# Sample rates (Hz). Coda on Rime's cloud: this list, above 24000 upsampled (on-prem: any);
# arcana named the same list (api-reference/coda/websockets.mdx, cli-reference/rime-tts.mdx).
# The mist family: 4000 to 44100 (api-reference/mistv2/http.mdx, mistv3/websockets.mdx).
CODA_SAMPLE_RATES: Final = (8000, 16000, 22050, 24000, 44100, 48000, 96000)
MIST_SAMPLE_RATE_RANGE: Final = (4000, 44100)
# lang: the 2- and 3-letter codes Rime lists (api-reference/coda/http.mdx, "lang"), as
# 639-1 -> 639-2/3. Word timestamps exist for en and es only (docs/arcana-sunset.mdx).
LANGUAGES: Final[dict[str, str]] = {
    "en": "eng",
    "es": "spa",
    "fr": "fra",
    "pt": "por",
    "de": "ger",
    "ja": "jpn",
    "ar": "ara",
    "hi": "hin",
}
_LANG_CODES: Final = frozenset(LANGUAGES) | frozenset(LANGUAGES.values())
_TIMESTAMP_LANGUAGES: Final = frozenset({"eng", "spa"})

# What was already said (once per process), and a switch that silences it where options are
# rebuilt from a request rather than asked for (the emulator reading a client's wire).
_warned: set[str] = set()
_quiet_deprecations: ContextVar[bool] = ContextVar("rime_trio_quiet_deprecations", default=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class RimeOptions:
    """Everything that decides what the server synthesizes and where.

    Build with keyword arguments; derive variants with :meth:`replace`. The scheme of
    ``base_url`` is the one switch between the modes: a ``ws://``/``wss://`` URL streams, an
    ``http://``/``https://`` URL (or none: Rime's) synthesizes over ``/v1/rime-tts``; a URL
    without a path gets its mode's default path. Streams of HTTP options speak to the same
    server's WebSocket (:func:`streaming_url`).

    The streaming protocol follows the URL's path: one ending in ``/ws`` (``/coda/ws``,
    ``/mistv3/ws``, ``/ws``) speaks Rime's WebSocket v1 (many streams share a socket), ``/ws3``
    (and any other path) speaks ``/ws3``. ``protocol="v1"`` or ``"ws3"`` overrides it: it
    picks the default path (``/ws`` or ``/ws3``) of a URL given without one, and Rime's own
    endpoint for streams of HTTP options (v1: ``wss://api.rime.ai/coda/ws``, or
    ``/mistv3/ws`` for mistv3), and the protocol spoken on a custom path.
    :attr:`stream_protocol` is the result. ``word_timestamps=False`` stops asking v1 for word
    timestamps (``/ws3`` sends them unasked). Rime has word timestamps for English and
    Spanish only (:attr:`timestamps_available`).

    ``model="arcana"`` and arcana's options (``temperature``, ``top_p``,
    ``repetition_penalty``, ``max_tokens``) still work, as Rime serves them with coda since
    2026-08-15, but warn (:class:`RimeDeprecationWarning`, once per process); so does
    ``reduce_latency``, the old name of ``no_text_normalization``.

    :raises ConfigurationError: for an unknown model, format, segment mode, protocol, region
        or ``lang`` (the codes Rime lists), a sample rate the model does not take (coda on
        Rime's cloud: :data:`CODA_SAMPLE_RATES`; mist models: 4000 to 44100), a
        non-positive model option, ``time_scale_factor`` outside 0.4 to 2.5, an option the
        model does not take, a missing API key, a URL that contradicts ``protocol``
        (``/ws3`` with ``protocol="v1"``) or mixes HTTP and WebSocket paths, or ``region``
        with a ``base_url``.
    """

    api_key: str | None = field(default=None, repr=False)
    speaker: str = "astra"
    model: Model = "coda"
    lang: str = "eng"
    audio_format: AudioFormat = "pcm"
    sample_rate: int = 24_000
    segment: Segment = "never"  # Rime's advice for voice agents (docs/websockets-segment.mdx)
    base_url: str | None = None
    #: Rime's region, for Rime's own endpoints (``base_url`` None): ``"us-west"`` or
    #: ``"us-east"`` (docs/regional-endpoints.mdx). None: ``users.rime.ai`` (US West).
    region: Region | None = None
    # mist family (speed_alpha: coda and mistv3 too, the other way round; see docs/speed.mdx)
    speed_alpha: float | None = None
    no_text_normalization: bool | None = None
    save_oovs: bool | None = None
    #: deprecated alias of ``no_text_normalization`` (Rime's docs renamed reduceLatency)
    reduce_latency: bool | None = None
    pause_between_brackets: bool | None = None
    phonemize_between_brackets: bool | None = None
    inline_speed_alpha: str | None = None
    # arcana (retired: served by coda; each warns)
    repetition_penalty: float | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    # coda and mistv3
    time_scale_factor: float | None = None
    # streaming protocol (None: by the URL's path) and what v1 is asked for
    protocol: StreamProtocol | None = None
    word_timestamps: bool = True
    # v1, coda: input tokens the server collects before audio starts
    text_lookahead_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.api_key is None:
            object.__setattr__(self, "api_key", os.environ.get("RIME_API_KEY") or None)
        if not self.api_key:
            raise ConfigurationError(
                "no API key: pass api_key=... or set the RIME_API_KEY environment variable"
            )
        alias = self.reduce_latency
        if alias is not None:
            _map_alias(self, alias)
        _validate(self)
        _warn_deprecated(self, alias=alias is not None)
        # Computed once: the URL decides pooling, so it must be stable and cheap to read.
        object.__setattr__(self, "_endpoint", _resolve_endpoint(self))
        object.__setattr__(self, "_protocol", _resolve_protocol(self))
        _validate_sample_rate(self)

    _endpoint: str = field(default="", init=False, repr=False, compare=False)
    # Derived once, on the object itself (no module-level cache holding API keys): these
    # settings on the server's WebSocket, for an HTTP-mode client's streams.
    _streaming_twin: RimeOptions | None = field(default=None, init=False, repr=False, compare=False)
    _protocol: StreamProtocol = field(default="ws3", init=False, repr=False, compare=False)
    # The streaming URL, built on first use and kept with these options (replace() makes new
    # options, without it): no module-level cache keeps options, and their key, alive.
    _websocket_url: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def stream_protocol(self) -> StreamProtocol:
        """The protocol streams speak: ``"v1"`` (Rime's WebSocket v1) or ``"ws3"``. For HTTP
        options, the one their streams use (see ``RimeClient.stream``)."""
        return self._protocol

    @property
    def endpoint(self) -> str:
        """The resolved endpoint URL without query string (never contains the API key)."""
        return self._endpoint

    @property
    def timestamps_available(self) -> bool:
        """Whether Rime has word timestamps for :attr:`lang`: English and Spanish only;
        for another language no ``timestamps`` event arrives and no error is raised
        (docs/arcana-sunset.mdx), so nothing should wait for one."""
        return LANGUAGES.get(self.lang, self.lang) in _TIMESTAMP_LANGUAGES

    @property
    def streaming(self) -> bool:
        """True when the endpoint is a WebSocket (``/ws3`` or v1's ``/ws``)."""
        return self._endpoint.startswith(("ws://", "wss://"))

    def replace(self, **changes: object) -> RimeOptions:
        """Return a copy with *changes* applied and validated.

        :raises ConfigurationError: if the result is invalid, or a name is not an option.
        """
        unknown = set(changes) - {f.name for f in dataclasses.fields(self) if f.init}
        if unknown:
            raise ConfigurationError(f"unknown option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _map_alias(o: RimeOptions, value: bool) -> None:
    """``reduce_latency`` -> ``no_text_normalization`` (after this, only the new name holds it)."""
    if o.no_text_normalization is not None and o.no_text_normalization != value:
        raise ConfigurationError(
            "reduce_latency is the old name of no_text_normalization, and the two disagree: "
            "pass no_text_normalization only"
        )
    object.__setattr__(o, "no_text_normalization", value)
    object.__setattr__(o, "reduce_latency", None)


def _deprecated(key: str, message: str) -> None:
    if key in _warned or _quiet_deprecations.get():
        return
    _warned.add(key)
    # user code -> __init__ -> __post_init__ -> _warn_deprecated -> here
    warnings.warn(message, RimeDeprecationWarning, stacklevel=5)


def _warn_deprecated(o: RimeOptions, *, alias: bool) -> None:
    if alias:
        _deprecated(
            "reduce_latency",
            "reduce_latency is deprecated: Rime's docs call it noTextNormalization; pass "
            "no_text_normalization=... instead (the same setting)",
        )
    if o.model == "arcana":
        _deprecated(
            "arcana",
            "model 'arcana' is retired on Rime's cloud: since 2026-08-15 12:00 UTC Rime serves "
            "arcana requests with coda, without an error (a different voice sound, and a "
            "speaker must be one of coda's); ask for model='coda'",
        )
    for name in _ARCANA_OPTIONS:
        if getattr(o, name) is not None:
            _deprecated(
                name,
                f"{name} is an option of arcana, which is retired (Rime serves arcana requests "
                "with coda since 2026-08-15) and gone from Rime's docs; leave it out",
            )


def _validate(o: RimeOptions) -> None:
    for name, allowed in (("model", _MODELS), ("audio_format", _FORMATS), ("segment", _SEGMENTS)):
        value = getattr(o, name)
        if value not in allowed:
            raise ConfigurationError(
                f"unknown {name} {value!r}; expected one of {', '.join(sorted(allowed))}"
            )
    if not isinstance(o.sample_rate, int) or isinstance(o.sample_rate, bool) or o.sample_rate <= 0:
        raise ConfigurationError(f"sample_rate must be a positive integer, got {o.sample_rate!r}")
    if not o.speaker or not isinstance(o.speaker, str):
        raise ConfigurationError("speaker must be a non-empty string")
    if not o.lang or not isinstance(o.lang, str):
        raise ConfigurationError("lang must be a non-empty string")
    if o.lang not in _LANG_CODES:
        codes = ", ".join(f"{two}/{three}" for two, three in LANGUAGES.items())
        raise ConfigurationError(f"unknown lang {o.lang!r}; Rime takes {codes}")
    if o.region is not None and o.region not in _REGIONS:
        raise ConfigurationError(
            f"unknown region {o.region!r}; expected one of {', '.join(sorted(_REGIONS))}"
        )
    for name, (_, models) in (_MODEL_OPTIONS | _HTTP_ONLY_OPTIONS | _V1_ONLY_OPTIONS).items():
        value = getattr(o, name)
        if value is None:
            continue
        if o.model not in models:
            raise ConfigurationError(
                f"{name} applies to model(s) {', '.join(sorted(models))}, not {o.model!r}"
            )
        if isinstance(value, (bool, str)):
            continue
        if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise ConfigurationError(f"{name} must be a positive number, got {value!r}")
    lookahead = o.text_lookahead_tokens
    if lookahead is not None and (not isinstance(lookahead, int) or isinstance(lookahead, bool)):
        raise ConfigurationError(f"text_lookahead_tokens must be an integer, got {lookahead!r}")
    if o.top_p is not None and o.top_p > 1:
        raise ConfigurationError(f"top_p must be in (0, 1], got {o.top_p!r}")
    low, high = TIME_SCALE_RANGE
    if o.time_scale_factor is not None and not low <= o.time_scale_factor <= high:
        raise ConfigurationError(
            f"time_scale_factor must be {low} to {high} (above 1 is slower), got "
            f"{o.time_scale_factor!r}; Rime would clamp it without a word"
        )
    if o.protocol is not None and o.protocol not in _PROTOCOLS:
        raise ConfigurationError(
            f"unknown protocol {o.protocol!r}; expected 'v1' (Rime's WebSocket v1, /ws) or "
            "'ws3' (/ws3), or None to follow the URL's path"
        )
    if not isinstance(o.word_timestamps, bool):
        raise ConfigurationError(
            f"word_timestamps must be True or False, not {o.word_timestamps!r}"
        )


def _validate_sample_rate(o: RimeOptions) -> None:
    rate = o.sample_rate
    if o.model in ("coda", "arcana"):
        # The list is Rime's cloud's; an on-prem coda takes any rate (coda/websockets.mdx).
        host = urlsplit(o.endpoint).hostname or ""
        if rate not in CODA_SAMPLE_RATES and host in _RIME_HOSTS | _EAST_HOSTS:
            allowed = ", ".join(str(r) for r in CODA_SAMPLE_RATES)
            raise ConfigurationError(
                f"sample_rate {rate} is not one {o.model} takes on Rime's cloud: {allowed}"
            )
        return
    low, high = MIST_SAMPLE_RATE_RANGE
    if not low <= rate <= high:
        raise ConfigurationError(
            f"sample_rate {rate} is outside what {o.model} takes: {low} to {high}"
        )


def _v1_route(o: RimeOptions) -> str:
    route = _V1_ROUTES.get(o.model)
    if route is None:
        raise ConfigurationError(
            f"Rime's WebSocket v1 (wss://{_V1_HOST}) serves coda and mistv3, not model "
            f"{o.model!r}: use protocol='ws3', or pass the v1 URL as base_url"
        )
    return route


def _protocol_for_path(path: str) -> StreamProtocol | None:
    """The protocol a WebSocket path says: ``/ws3``; v1's ``/ws`` or ``/<model>/ws``."""
    if path == _WS_PATH:
        return "ws3"
    if path == _V1_PATH or path.endswith(_V1_PATH):
        return "v1"
    return None


def _resolve_protocol(o: RimeOptions) -> StreamProtocol:
    """The protocol of the options' streams: the explicit option, else the URL's path."""
    if o.protocol is not None:
        return o.protocol
    if o._endpoint.startswith(("ws://", "wss://")):
        return _protocol_for_path(urlsplit(o._endpoint).path) or "ws3"
    return "ws3"


def _resolve_endpoint(o: RimeOptions) -> str:
    if o.region is not None:
        if o.base_url is not None:
            raise ConfigurationError(
                "region picks Rime's own host, and base_url names a host already: pass one"
            )
        return f"https://{_HTTP_HOST_FOR_REGION[o.region]}{_HTTP_PATH}"
    if o.base_url is None:
        return DEFAULT_HTTP_URL
    parts = urlsplit(o.base_url)
    scheme = parts.scheme.lower()
    if scheme not in {"ws", "wss", "http", "https"} or not parts.hostname:
        raise ConfigurationError(
            "base_url must be an absolute ws://, wss://, http:// or https:// URL"
        )
    if parts.query or parts.fragment:
        raise ConfigurationError(
            "base_url must not carry a query string or fragment; pass settings as options"
        )
    if parts.username or parts.password:
        raise ConfigurationError("base_url must not carry credentials; use api_key")
    path = parts.path.rstrip("/")
    if scheme in {"ws", "wss"}:
        if "rime-tts" in path:
            raise ConfigurationError(
                "base_url mixes a WebSocket scheme with the HTTP path /v1/rime-tts"
            )
        by_path = _protocol_for_path(path)
        if o.protocol is not None and by_path is not None and by_path != o.protocol:
            raise ConfigurationError(
                f"base_url path {path!r} speaks {by_path}, but protocol={o.protocol!r}; "
                f"use the path {_PATH_FOR_PROTOCOL[o.protocol]!r} or leave protocol out"
            )
        routed = next((m for m, route in _V1_ROUTES.items() if path.endswith(route)), None)
        if routed is not None and routed != o.model:
            # v1's path picks the model and `start` names none: the options' model (which
            # decides the model options allowed) must be the one the server will use.
            raise ConfigurationError(
                f"base_url path {path!r} selects model {routed!r}, but model={o.model!r}; "
                f"pass model={routed!r}"
            )
        if not path:
            path = _PATH_FOR_PROTOCOL[o.protocol or "ws3"]
        return urlunsplit((scheme, parts.netloc, path, "", ""))
    if path.rsplit("/", 1)[-1].startswith("ws"):
        # The URL that broke an earlier integration: /ws3 appended to the HTTP endpoint.
        raise ConfigurationError(
            f"base_url {scheme}:// path {path!r} looks like a WebSocket path; use a ws:// or "
            "wss:// URL (Rime streams from a different host)"
        )
    return urlunsplit((scheme, parts.netloc, path or _HTTP_PATH, "", ""))


def streaming_url(o: RimeOptions) -> str:
    """The WebSocket endpoint where streams of *o* go: *o*'s own in streaming mode; for HTTP
    options, the same server's (for Rime's own HTTP host, or none, Rime's streaming host of
    the protocol), at the protocol's path.

    :raises ConfigurationError: for an HTTP URL with a custom path (its WebSocket cannot be
        guessed), or v1 on Rime's hosts for a model v1 has no host for.
    """
    if o.streaming:
        return o.endpoint
    parts = urlsplit(o.endpoint)
    if parts.path not in {"", _HTTP_PATH}:
        raise ConfigurationError(
            f"the WebSocket of {o.endpoint} cannot be guessed from its custom path; pass "
            "the ws:// or wss:// URL as base_url"
        )
    host = parts.hostname or ""
    if o.stream_protocol == "v1" and host in _EAST_HOSTS:
        raise ConfigurationError(
            f"Rime documents no US East host for WebSocket v1 ({_V1_HOST}): use "
            "protocol='ws3' (users-east-ws.rime.ai), or pass the v1 URL as base_url"
        )
    if o.stream_protocol == "v1" and host in _RIME_HOSTS:
        return f"wss://{_V1_HOST}{_v1_route(o)}"
    ws_host = _WS_HOST_FOR_HTTP_HOST.get(host, host)
    netloc = parts.netloc.replace(host, ws_host, 1)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, netloc, _PATH_FOR_PROTOCOL[o.stream_protocol], "", ""))


def model_params(options: RimeOptions) -> dict[str, ParamValue]:
    """Return the model-specific parameters, by wire name, that *options* sets.

    The same table feeds the WebSocket query string and the HTTP JSON body, so the two can
    never disagree. HTTP-only parameters are not included (see :func:`http_body`).
    """
    params: dict[str, ParamValue] = {}
    for name, (wire_name, _models) in _MODEL_OPTIONS.items():
        value = getattr(options, name)
        if value is not None:
            params[wire_name] = value
    return params


# option attribute -> wire name, for every request; then those /ws3 takes in its query
# string (HTTP chooses the format by Accept header and has no segment mode).
_COMMON_PARAMS: Final[dict[str, str]] = {
    "speaker": "speaker",
    "model": "modelId",
    "lang": "lang",
    "sample_rate": "samplingRate",
}
_WS3_PARAMS: Final[dict[str, str]] = {"audio_format": "audioFormat", "segment": "segment"}


def _common_params(options: RimeOptions) -> dict[str, ParamValue]:
    params: dict[str, ParamValue] = {
        wire: getattr(options, name) for name, wire in _COMMON_PARAMS.items()
    }
    return params


def _query_value(value: ParamValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def websocket_url(options: RimeOptions) -> str:
    """Return the full streaming URL: for ``/ws3`` with the settings in the query string
    (never the API key); for v1 the endpoint alone (its settings travel in each ``start``, so
    streams with any settings share its sockets).

    Built once per options object (every stream asks for it, and options are frozen).

    :raises ConfigurationError: if *options* selects HTTP, or a format that cannot stream.
    """
    url = options._websocket_url
    if url is None:
        url = _build_websocket_url(options)
        object.__setattr__(options, "_websocket_url", url)
    return url


def _build_websocket_url(options: RimeOptions) -> str:
    if not options.streaming:
        raise ConfigurationError(f"{options.endpoint} is not a WebSocket endpoint")
    if options.audio_format in _OPUS_FORMATS:
        raise ConfigurationError(
            f"audio_format {options.audio_format!r} is HTTP only: Rime serves opus from "
            "/v1/rime-tts, and its streaming endpoints take pcm, mulaw or mp3; use an "
            "http(s):// base_url, or one of those"
        )
    if options.audio_format not in _STREAMING_FORMATS:
        where = "v1" if options.stream_protocol == "v1" else "/ws3"
        raise ConfigurationError(
            f"audio_format {options.audio_format!r} cannot be streamed over {where}; "
            "use 'pcm' (rime_trio.write_wav adds the header) or 'mulaw' or 'mp3'"
        )
    if options.stream_protocol == "v1":
        return options.endpoint
    params = _common_params(options)
    params |= {wire: getattr(options, name) for name, wire in _WS3_PARAMS.items()}
    params |= model_params(options)
    query = urlencode({k: _query_value(v) for k, v in params.items()})
    return f"{options.endpoint}?{query}"


def http_body(options: RimeOptions, text: str) -> dict[str, ParamValue]:
    """Return the JSON body of a ``/v1/rime-tts`` request for *text*."""
    body: dict[str, ParamValue] = {"text": text, **_common_params(options)}
    body |= model_params(options)
    for name, (wire_name, _models) in _HTTP_ONLY_OPTIONS.items():
        value = getattr(options, name)
        if value is not None:
            body[wire_name] = value
    return body


def accept_header(audio_format: AudioFormat) -> str:
    """The ``Accept`` value that selects *audio_format* on the HTTP endpoint."""
    return _ACCEPT[audio_format]


def format_for_accept(accept: str) -> AudioFormat | None:
    """Inverse of :func:`accept_header`, reading Rime's older names too (``audio/pcm``,
    ``audio/x-mulaw``, ``audio/mp3``: "deprecated aliases, still accepted") and the first
    media range of a list. Media types compare case-blind; ``audio/ogg`` and ``audio/webm``
    are opus unless their ``codecs`` names another codec (then None)."""
    kind, *params = (part.strip().lower() for part in accept.split(",", 1)[0].split(";"))
    codecs = [p.partition("=")[2].strip('"') for p in params if p.partition("=")[0] == "codecs"]
    if kind in ("audio/ogg", "audio/webm"):
        if codecs and codecs[0] != "opus":
            return None
        return "ogg_opus" if kind == "audio/ogg" else "webm_opus"
    return _FORMAT_FOR_MIME.get(kind)
