from __future__ import annotations

import sys
from urllib.parse import parse_qs, urlsplit

import pytest

from rime_trio import DEFAULT_HTTP_URL, DEFAULT_WS_URL, ConfigurationError, RimeError, RimeOptions
from rime_trio._options import (
    accept_header,
    format_for_accept,
    http_body,
    model_params,
    streaming_url,
    websocket_url,
)
from rime_trio.testing._params import options_from_params

KEY = "sk-secret-123"


def opts(**kw: object) -> RimeOptions:
    kw.setdefault("api_key", KEY)
    return RimeOptions(**kw)  # type: ignore[arg-type]


def test_defaults_select_http() -> None:
    o = opts()
    assert o.endpoint == DEFAULT_HTTP_URL
    assert not o.streaming
    assert (o.model, o.speaker, o.segment, o.audio_format, o.sample_rate) == (
        "coda",
        "astra",
        "never",  # Rime's advice for voice agents: the client cuts and flushes sentences
        "pcm",
        24_000,
    )


def test_streams_of_the_default_options_go_to_rime_streaming_host() -> None:
    o = opts()
    assert streaming_url(o) == DEFAULT_WS_URL == "wss://users-ws.rime.ai/ws3"
    assert not o.streaming


def test_api_key_falls_back_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIME_API_KEY", "from-env")
    assert RimeOptions().api_key == "from-env"


def test_missing_api_key_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="RIME_API_KEY"):
        RimeOptions()


def test_api_key_is_not_in_repr_or_str() -> None:
    o = opts()
    assert KEY not in repr(o)
    assert KEY not in str(o)


@pytest.mark.parametrize(
    ("base_url", "endpoint", "streams_at"),
    [
        ("ws://127.0.0.1:8080", "ws://127.0.0.1:8080/ws3", None),
        ("ws://127.0.0.1:8080/", "ws://127.0.0.1:8080/ws3", None),
        ("wss://users-ws.rime.ai/ws3", "wss://users-ws.rime.ai/ws3", None),
        ("wss://example.test/custom", "wss://example.test/custom", None),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/v1/rime-tts", "ws://127.0.0.1:8080/ws3"),
        # Rime's HTTP host streams from another host: scheme, host and path all switch.
        ("https://users.rime.ai", "https://users.rime.ai/v1/rime-tts", DEFAULT_WS_URL),
        ("https://users.rime.ai/v1/rime-tts", "https://users.rime.ai/v1/rime-tts", DEFAULT_WS_URL),
        ("https://example.test/tts", "https://example.test/tts", ConfigurationError),
    ],
)
def test_the_scheme_is_the_one_switch_and_http_streams_at_its_servers_websocket(
    base_url: str, endpoint: str, streams_at: str | type[Exception] | None
) -> None:
    o = opts(base_url=base_url)
    assert o.endpoint == endpoint
    assert o.streaming == endpoint.startswith("ws")
    if streams_at is ConfigurationError:
        with pytest.raises(ConfigurationError, match="custom path"):
            streaming_url(o)
    else:
        assert streaming_url(o) == (streams_at or endpoint)


@pytest.mark.parametrize(
    "base_url",
    [
        # The URL that broke the reviewed integration, in every way one might spell it.
        "https://users.rime.ai/v1/rime-tts/ws3",
        "https://users.rime.ai/ws3",
        "wss://users.rime.ai/v1/rime-tts",
        "ftp://users.rime.ai",
        "users.rime.ai/ws3",
        "wss://users-ws.rime.ai/ws3?modelId=coda",
        "https://user:pw@users.rime.ai",
    ],
)
def test_invalid_urls_are_refused(base_url: str) -> None:
    with pytest.raises(ConfigurationError):
        opts(base_url=base_url)


@pytest.mark.parametrize("model", ["coda", "arcana", "mistv3", "mistv2", "mist"])
def test_no_option_combination_builds_the_broken_url(model: str) -> None:
    for base in (None, "https://users.rime.ai", "https://users.rime.ai/v1/rime-tts"):
        o = opts(model=model, base_url=base)
        for url in (o.endpoint, streaming_url(o)):
            assert "rime-tts/ws" not in url
        assert urlsplit(streaming_url(o)).hostname == "users-ws.rime.ai"


@pytest.mark.parametrize(
    "changes",
    [
        {"model": "mistv9"},
        {"audio_format": "flac"},
        {"segment": "byWord"},
        {"sample_rate": 0},
        {"sample_rate": -8000},
        {"sample_rate": 22050.5},
        {"sample_rate": True},
        {"speaker": ""},
        {"lang": ""},
        {"model": "arcana", "temperature": -1.0},
        {"model": "arcana", "top_p": 1.5},
        {"model": "arcana", "max_tokens": 0},
        {"model": "mistv3", "speed_alpha": float("nan")},
        {"model": "mistv3", "temperature": 0.5},  # arcana-only option on a mist model
        {"model": "mistv3", "reduce_latency": True},  # mist/mistv2 only
        {"model": "mistv3", "phonemize_between_brackets": True},  # mist/mistv2 only
        {"model": "coda", "inline_speed_alpha": "1.0"},  # mist family only
        {"model": "mistv2", "time_scale_factor": 1.1},  # coda and mistv3 only
    ],
)
def test_invalid_values_raise_configuration_error(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError) as info:
        opts(**changes)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, RimeError)
    assert KEY not in str(info.value)


def test_replace_validates_and_rejects_unknown_names() -> None:
    o = opts()
    assert o.replace(speaker="luna").speaker == "luna"
    with pytest.raises(ConfigurationError, match="unknown option"):
        o.replace(voice="luna")
    with pytest.raises(ConfigurationError):
        o.replace(model="nope")


def test_model_params_per_model() -> None:
    assert model_params(opts()) == {}
    mist = opts(
        model="mistv2",
        speed_alpha=0.9,
        pause_between_brackets=True,
        phonemize_between_brackets=False,
        inline_speed_alpha="1.0,0.8",
        no_text_normalization=True,
        save_oovs=False,
    )
    assert model_params(mist) == {
        "speedAlpha": 0.9,
        "pauseBetweenBrackets": True,
        "phonemizeBetweenBrackets": False,
        "inlineSpeedAlpha": "1.0,0.8",
        "noTextNormalization": True,
        "saveOovs": False,
    }
    arcana = opts(
        model="arcana", repetition_penalty=1.5, temperature=0.5, top_p=1.0, max_tokens=1200
    )
    assert model_params(arcana) == {
        "repetition_penalty": 1.5,
        "temperature": 0.5,
        "top_p": 1.0,
        "max_tokens": 1200,
    }
    assert model_params(opts(model="coda", time_scale_factor=1.2)) == {"timeScaleFactor": 1.2}
    assert model_params(opts(model="mistv3", time_scale_factor=0.8)) == {"timeScaleFactor": 0.8}


def test_mist_options_go_to_the_http_body_and_the_query_alike() -> None:
    # noTextNormalization and saveOovs are HTTP and WebSocket parameters of mist and mistv2
    # (rimelabs/docs api-reference/mistv2/http.mdx, websockets.mdx; docs/changelog.mdx).
    o = opts(
        model="mistv2",
        speed_alpha=1.1,
        no_text_normalization=True,
        save_oovs=True,
        base_url="wss://h.test",
    )
    body = http_body(o.replace(base_url=None), "Hi.")
    assert (body["noTextNormalization"], body["saveOovs"], body["speedAlpha"]) == (True, True, 1.1)
    assert "reduceLatency" not in body
    query = parse_qs(urlsplit(websocket_url(o)).query)
    assert query["noTextNormalization"] == ["true"]
    assert query["saveOovs"] == ["true"]
    assert query["speedAlpha"] == ["1.1"]


def test_websocket_url_carries_every_setting_but_never_the_key() -> None:
    o = opts(base_url="wss://h.test", model="arcana", temperature=0.7, segment="immediate")
    url = websocket_url(o)
    assert KEY not in url
    query = parse_qs(urlsplit(url).query)
    assert query == {
        "speaker": ["astra"],
        "modelId": ["arcana"],
        "lang": ["eng"],
        "samplingRate": ["24000"],
        "audioFormat": ["pcm"],
        "segment": ["immediate"],
        "temperature": ["0.7"],
    }


def test_websocket_url_refuses_http_options_and_wav() -> None:
    with pytest.raises(ConfigurationError):
        websocket_url(opts())
    with pytest.raises(ConfigurationError, match="wav"):
        websocket_url(opts(base_url="ws://h.test", audio_format="wav"))


def test_http_body_shape() -> None:
    assert http_body(opts(lang="spa", sample_rate=16000), "Hola.") == {
        "text": "Hola.",
        "speaker": "astra",
        "modelId": "coda",
        "lang": "spa",
        "samplingRate": 16000,
    }


def test_accept_headers_round_trip() -> None:
    for fmt in ("pcm", "wav", "mp3", "mulaw", "ogg_opus", "webm_opus"):
        assert format_for_accept(accept_header(fmt)) == fmt  # type: ignore[arg-type]
    assert format_for_accept("audio/mpeg") == "mp3"
    assert format_for_accept("text/html") is None


def test_options_from_params_round_trips_query_strings() -> None:
    o = opts(base_url="ws://h.test", model="mistv3", speed_alpha=0.8, pause_between_brackets=True)
    query = {k: v[0] for k, v in parse_qs(urlsplit(websocket_url(o)).query).items()}
    rebuilt = options_from_params(dict(query), api_key="k", http=False)
    assert model_params(rebuilt) == model_params(o)
    assert (rebuilt.sample_rate, rebuilt.model, rebuilt.segment) == (24000, "mistv3", "never")
    del query["segment"]  # Rime's server reads no segment as bySentence, whatever our default
    absent = options_from_params(dict(query), api_key="k", http=False)
    assert absent.segment == "bySentence"


@pytest.mark.parametrize(
    "params",
    [
        {"speaker": "astra", "bogus": "1"},
        {"samplingRate": "fast"},
        {"samplingRate": "-5"},
        {"modelId": "mistv3", "pauseBetweenBrackets": "yes"},
        {"modelId": "arcana", "max_tokens": 1.5},
    ],
)
def test_options_from_params_rejects_bad_wire_values(params: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        options_from_params(params, api_key="k", http=False)


def test_no_module_level_cache_keeps_options_and_their_key_alive() -> None:
    """The streaming URL is kept with the options it was built from: once the options are
    gone, nothing (a module-level cache) still refers to them and their API key."""
    import gc

    options = RimeOptions(api_key="a-key-nobody-keeps", base_url="ws://127.0.0.1:1/ws3")
    assert websocket_url(options) == websocket_url(options)  # built once, then kept
    changed = options.replace(speaker="cove")
    assert websocket_url(changed) != websocket_url(options)  # replace() builds it afresh
    del changed
    gc.collect()
    # Only this frame refers to the options (slots dataclasses take no weak references).
    assert [r for r in gc.get_referrers(options) if r is not sys._getframe()] == []
