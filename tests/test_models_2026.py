"""Rime's models and options as its docs describe them in 2026 (issue 23, part 3).

Each fact comes from rimelabs/docs at 2026-08-07; the file is named beside the test.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

import rime_trio
from rime_trio import (
    APIStatusError,
    ConfigurationError,
    RimeClient,
    RimeDeprecationWarning,
    RimeOptions,
    _options,
)
from rime_trio._options import (
    CODA_SAMPLE_RATES,
    LANGUAGES,
    accept_header,
    format_for_accept,
    http_body,
    model_params,
    streaming_url,
    websocket_url,
)
from rime_trio._protocol_v1 import synthesis_request
from rime_trio._voices import VOICES_PATH, parse_voices, voices_url
from rime_trio.cli import _parser, main
from rime_trio.testing import EmulatorConfig, RimeEmulator, open_emulator, render_speech
from rime_trio.testing._catalog import RIME_VOICES_DATE, model_languages, rime_voices
from rime_trio.testing._params import options_from_params

pytestmark = pytest.mark.anyio

KEY = "test-key-0123456789"
ROOT = Path(__file__).resolve().parent.parent


def opts(**kwargs: object) -> RimeOptions:
    return RimeOptions(api_key=KEY, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def fresh_warnings() -> Iterator[None]:
    """Forget which deprecations this process has said (each is said once per process)."""
    saved = set(_options._warned)
    _options._warned.clear()
    yield
    _options._warned.clear()
    _options._warned.update(saved)


# ----------------------------------------------------------------------------- arcana
# docs/arcana-sunset.mdx: since 2026-08-15 12:00 UTC arcana requests are served by coda.


def test_the_warning_is_a_public_deprecation_warning() -> None:
    assert "RimeDeprecationWarning" in rime_trio.__all__
    assert issubclass(RimeDeprecationWarning, DeprecationWarning)


def test_arcana_warns_once_per_process_naming_coda(fresh_warnings: None) -> None:
    def ask_three_times() -> RimeOptions:
        arcana = opts(model="arcana")
        opts(model="arcana", speaker="luna")
        return arcana.replace(lang="es")

    with pytest.warns(RimeDeprecationWarning, match="coda") as record:
        arcana = ask_three_times()
    assert len(record) == 1
    assert "arcana" in str(record[0].message)
    assert record[0].filename == __file__  # said where the options were built
    assert arcana.model == "arcana"  # still sent: Rime still answers it (with coda)


@pytest.mark.parametrize(
    ("name", "value"),
    [("temperature", 0.5), ("top_p", 0.9), ("repetition_penalty", 1.2), ("max_tokens", 800)],
)
def test_each_arcana_option_warns_too(fresh_warnings: None, name: str, value: object) -> None:
    opts(model="arcana")  # the model's own warning, said first
    with pytest.warns(RimeDeprecationWarning, match=name):
        options = opts(model="arcana", **{name: value})
    assert model_params(options) == {name: value}


def test_coda_and_mist_options_say_nothing(fresh_warnings: None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opts()
        opts(model="mistv3", time_scale_factor=1.2)
        opts(model="mistv2", no_text_normalization=True, save_oovs=True)


def test_the_emulator_reads_arcana_without_warning(fresh_warnings: None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        options = options_from_params(
            {"modelId": "arcana", "temperature": "0.5"}, api_key="k", http=False
        )
    assert options.model == "arcana"
    with pytest.warns(RimeDeprecationWarning):  # and the user's own request still warns
        opts(model="arcana")


def test_nothing_defaults_to_arcana() -> None:
    assert RimeOptions(api_key=KEY).model == "coda"
    parser = _parser()
    for argv in (["speak", "hi", "-o", "hi.wav"], ["serve"]):
        assert parser.parse_args(argv).model == "coda"
    page = [ROOT / "src/rime_trio/web/static/index.html", ROOT / "src/rime_trio/web/_app.py"]
    for path in [*ROOT.glob("examples/*.py"), ROOT / "src/rime_trio/cli.py", *page]:
        assert "arcana" not in path.read_text(encoding="utf-8"), path


# ----------------------------------------------------------------------------- options
# docs/speed.mdx; api-reference/coda/http.mdx and mistv3/http.mdx (timeScaleFactor);
# api-reference/mistv2/http.mdx (noTextNormalization, phonemizeBetweenBrackets);
# docs/models.mdx (phonemizeBetweenBrackets on mist and mistv2 only); docs/changelog.mdx (saveOovs).

MODELS = ["coda", "mistv3", "mistv2", "mist"]


@pytest.mark.parametrize(
    ("option", "models"),
    [
        ("time_scale_factor", {"coda", "mistv3"}),
        ("speed_alpha", {"coda", "mistv3", "mistv2", "mist"}),
        ("phonemize_between_brackets", {"mist", "mistv2"}),
        ("no_text_normalization", {"mist", "mistv2"}),
        ("save_oovs", {"mist", "mistv2"}),
        ("pause_between_brackets", {"mist", "mistv2", "mistv3"}),
    ],
)
def test_each_option_belongs_to_the_models_the_docs_name(option: str, models: set[str]) -> None:
    value: object = True if option not in ("time_scale_factor", "speed_alpha") else 1.2
    for model in MODELS:
        if model in models:
            assert opts(model=model, **{option: value})
        else:
            with pytest.raises(ConfigurationError, match=option):
                opts(model=model, **{option: value})


@given(st.floats(min_value=0.01, max_value=10, allow_nan=False))
def test_time_scale_factor_is_taken_from_0_4_to_2_5(value: float) -> None:
    for model in ("coda", "mistv3"):
        if 0.4 <= value <= 2.5:
            assert model_params(opts(model=model, time_scale_factor=value)) == {
                "timeScaleFactor": value
            }
        else:
            with pytest.raises(ConfigurationError, match=r"0\.4 to 2\.5"):
                opts(model=model, time_scale_factor=value)


def test_time_scale_factor_goes_on_the_mistv3_socket_and_body() -> None:
    o = opts(model="mistv3", time_scale_factor=1.5, base_url="wss://h.test")
    assert parse_qs(urlsplit(websocket_url(o)).query)["timeScaleFactor"] == ["1.5"]
    assert http_body(o.replace(base_url=None), "Hi.")["timeScaleFactor"] == 1.5


def test_the_emulator_clamps_time_scale_factor_as_rime_does() -> None:
    for sent, read in (("5", 2.5), ("0.1", 0.4), ("1.25", 1.25)):
        options = options_from_params(
            {"modelId": "mistv3", "timeScaleFactor": sent}, api_key="k", http=False
        )
        assert options.time_scale_factor == read


def test_reduce_latency_is_a_deprecated_alias(fresh_warnings: None) -> None:
    with pytest.warns(RimeDeprecationWarning, match="no_text_normalization"):
        old = opts(model="mistv2", reduce_latency=True)
    new = opts(model="mistv2", no_text_normalization=True)
    assert old == new
    assert old.reduce_latency is None
    assert http_body(old, "Hi.")["noTextNormalization"] is True
    assert "reduceLatency" not in http_body(old, "Hi.")
    assert opts(model="mistv2", reduce_latency=True, no_text_normalization=True) == new
    with pytest.raises(ConfigurationError, match="disagree"):
        opts(model="mistv2", reduce_latency=True, no_text_normalization=False)
    with pytest.raises(ConfigurationError, match="no_text_normalization"):
        opts(model="coda", reduce_latency=True)  # mist and mistv2 only, under either name


def test_the_emulator_takes_the_old_wire_name_too() -> None:
    options = options_from_params(
        {"modelId": "mist", "reduceLatency": True}, api_key="k", http=True
    )
    assert options.no_text_normalization is True
    with pytest.raises(ConfigurationError, match="unknown parameter"):
        options_from_params({"modelId": "mist", "reduceLatency": "true"}, api_key="k", http=False)


def test_v1_carries_save_oovs_and_refuses_what_it_has_no_field_for() -> None:
    request = synthesis_request(opts(model="mistv2", save_oovs=True))
    assert request.mist_parameters.save_oovs is True
    with pytest.raises(ConfigurationError, match=r"noTextNormalization.*no v1 equivalent"):
        synthesis_request(opts(model="mistv2", no_text_normalization=True))


# ----------------------------------------------------------------------------- text limit
# api-reference/*/http.mdx: 1,000 characters per request for every model; docs/errors.mdx:
# HTTP 400 "text is too long", /ws3 close 1011 "400: text is too long".


@pytest.mark.parametrize("model", MODELS)
async def test_the_emulator_refuses_1001_characters_over_http(
    rime_emulator: RimeEmulator, model: str
) -> None:
    speaker = {"mist": "cove"}.get(model, "astra")
    body = {"speaker": speaker, "modelId": model, "samplingRate": 8000}
    async with httpx.AsyncClient() as http:
        url = f"{rime_emulator.http_url}/v1/rime-tts"
        headers = {
            "Authorization": f"Bearer {rime_emulator.config.api_key}",
            "Accept": "audio/L16",
        }
        ok = await http.post(url, json={**body, "text": "a" * 1000}, headers=headers)
        refused = await http.post(url, json={**body, "text": "a" * 1001}, headers=headers)
    assert ok.status_code == 200
    assert (refused.status_code, refused.text) == (400, "Bad request: text is too long")


async def test_ws3_text_over_the_limit_is_a_400_from_the_close() -> None:
    # The 1011 close "400: text is too long" (here at a lower limit than Rime's 1,000, which
    # the client's own cutting never passes) reaches the caller as that status.
    async with (
        open_emulator(EmulatorConfig(max_text_chars=20)) as emulator,
        RimeClient(base_url=emulator.ws_url, api_key=emulator.config.api_key) as client,
    ):
        with pytest.raises(APIStatusError) as info:
            await client.synthesize("This sentence is longer than twenty characters.")
    assert info.value.status_code == 400
    assert "text is too long" in info.value.message


# ----------------------------------------------------------------------------- sample rates
# api-reference/coda/websockets.mdx (cloud list; on-prem any), mistv2/http.mdx (4000..44100).


@given(st.integers(min_value=1, max_value=200_000))
def test_sample_rates_per_model(rate: int) -> None:
    for model in ("coda", "mistv3", "mistv2", "mist"):
        fits = rate in CODA_SAMPLE_RATES if model == "coda" else 4000 <= rate <= 44100
        if fits:
            assert opts(model=model, sample_rate=rate).sample_rate == rate
        else:
            with pytest.raises(ConfigurationError) as info:
                opts(model=model, sample_rate=rate)
            named = "96000" if model == "coda" else "4000 to 44100"
            assert named in str(info.value)
    # An on-prem coda takes any rate: only Rime's cloud has the list.
    assert opts(sample_rate=rate, base_url="ws://onprem.test").sample_rate == rate


def test_coda_rates_on_every_rime_host() -> None:
    for base in (None, "https://users-east.rime.ai", "wss://users-ws.rime.ai"):
        with pytest.raises(ConfigurationError, match="22050, 24000, 44100"):
            opts(sample_rate=12_000, base_url=base)
    with pytest.raises(ConfigurationError):
        opts(sample_rate=12_000, region="us-east")


async def test_the_emulator_refuses_a_rate_rime_refuses(rime_emulator: RimeEmulator) -> None:
    async with RimeClient(base_url=rime_emulator.http_url, api_key=KEY) as client:
        client.update_options(api_key=rime_emulator.config.api_key)
        with pytest.raises(APIStatusError, match="sample_rate 12000"):
            await client.synthesize("Hello.", sample_rate=12_000)
        assert (await client.synthesize("Hello.", sample_rate=8000)).audio


# ----------------------------------------------------------------------------- Accept
# api-reference/coda/http.mdx "Audio formats": RFC types, the old names deprecated aliases.


def test_http_asks_by_the_rfc_names() -> None:
    assert {fmt: accept_header(fmt) for fmt in ("pcm", "mulaw", "mp3", "wav")} == {
        "pcm": "audio/L16",
        "mulaw": "audio/PCMU",
        "mp3": "audio/mpeg",
        "wav": "audio/wav",
    }
    assert accept_header("ogg_opus") == "audio/ogg;codecs=opus"
    assert accept_header("webm_opus") == "audio/webm;codecs=opus"


@pytest.mark.parametrize(
    ("accept", "fmt"),
    [
        ("audio/pcm", "pcm"),
        ("audio/l16", "pcm"),
        ("audio/x-mulaw", "mulaw"),
        ("audio/pcmu", "mulaw"),
        ("audio/mp3", "mp3"),
        ("audio/mpeg", "mp3"),
        ("audio/wav", "wav"),
        ("audio/ogg; codecs=opus", "ogg_opus"),
        ('audio/webm;codecs="opus"', "webm_opus"),
        ("audio/ogg;codecs=vorbis", None),
        ("audio/L16, audio/wav", "pcm"),
        ("text/html", None),
    ],
)
def test_both_names_are_read(accept: str, fmt: str | None) -> None:
    assert format_for_accept(accept) == fmt


@pytest.mark.parametrize("accept", ["audio/L16", "audio/pcm", "audio/PCMU", "audio/x-mulaw"])
async def test_the_emulator_answers_old_and_new_names(
    rime_emulator: RimeEmulator, accept: str
) -> None:
    body = {"text": "Hello world.", "speaker": "astra", "modelId": "coda", "samplingRate": 8000}
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{rime_emulator.http_url}/v1/rime-tts",
            json=body,
            headers={"Authorization": f"Bearer {rime_emulator.config.api_key}", "Accept": accept},
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == accept
    pcm = render_speech("Hello world.", 8000).pcm
    assert len(response.content) == (
        len(pcm) if "16" in accept or "pcm" in accept else len(pcm) // 2
    )


@pytest.mark.parametrize(
    ("fmt", "accept"),
    [("ogg_opus", "audio/ogg;codecs=opus"), ("webm_opus", "audio/webm;codecs=opus")],
)
async def test_opus_comes_over_http_whole(fmt: str, accept: str) -> None:
    seen: list[httpx.Request] = []
    payload = b"OggS" + bytes(range(256)) * 8 if fmt == "ogg_opus" else b"\x1aE\xdf\xa3" * 300

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=payload, headers={"content-type": accept})

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http,
        RimeClient(
            base_url="https://rime.test", api_key=KEY, http_client=http, audio_format=fmt
        ) as client,
    ):
        result = await client.synthesize("Hello.")
    assert seen[0].headers["accept"] == accept
    assert result.audio == payload
    assert result.duration == 0.0  # the container is not parsed: no duration is made up


async def test_the_emulator_refuses_opus_saying_why(rime_emulator: RimeEmulator) -> None:
    async with RimeClient(
        base_url=rime_emulator.http_url, api_key=rime_emulator.config.api_key
    ) as client:
        with pytest.raises(APIStatusError) as info:
            await client.synthesize("Hello.", audio_format="webm_opus")
    assert info.value.status_code == 400
    assert "does not produce webm_opus" in info.value.message


@pytest.mark.parametrize("fmt", ["ogg_opus", "webm_opus"])
@pytest.mark.parametrize("base_url", ["wss://h.test/ws3", "wss://h.test/ws"])
def test_opus_cannot_stream(fmt: str, base_url: str) -> None:
    with pytest.raises(ConfigurationError, match="HTTP only"):
        websocket_url(opts(audio_format=fmt, base_url=base_url))


# ----------------------------------------------------------------------------- lang
# api-reference/coda/http.mdx "lang": 2- and 3-letter codes; docs/arcana-sunset.mdx: word
# timestamps for English and Spanish only.

CODES = set(LANGUAGES) | set(LANGUAGES.values())


def test_the_listed_codes_are_the_docs() -> None:
    docs = {
        *("en", "eng", "es", "spa", "fr", "fra", "pt", "por"),
        *("de", "ger", "ja", "jpn", "ar", "ara", "hi", "hin"),
    }
    assert docs == CODES


@given(st.text("abcdefghijklmnopqrstuvwxyzABC", min_size=1, max_size=4))
def test_lang_is_one_of_the_listed_codes(lang: str) -> None:
    if lang in CODES:
        assert opts(lang=lang).lang == lang
    else:
        with pytest.raises(ConfigurationError, match="en/eng, es/spa, fr/fra") as info:
            opts(lang=lang)
        assert repr(lang) in str(info.value)


def test_timestamps_exist_for_english_and_spanish_only() -> None:
    available = {code for code in CODES if opts(lang=code).timestamps_available}
    assert available == {"en", "eng", "es", "spa"}


async def test_the_emulator_refuses_a_language_the_model_has_no_voices_for(
    rime_emulator: RimeEmulator,
) -> None:
    # docs/errors.mdx: "Language <lang> is not supported for model <model>"; mist is English
    # only in Rime's catalogue.
    async with RimeClient(
        base_url=rime_emulator.http_url, api_key=rime_emulator.config.api_key
    ) as client:
        with pytest.raises(APIStatusError, match="Language fr is not supported for model mist"):
            await client.synthesize("Bonjour.", model="mist", speaker="cove", lang="fr")
        assert (await client.synthesize("Hola.", model="mistv2", lang="es")).audio


# ----------------------------------------------------------------------------- regions
# docs/regional-endpoints.mdx


def test_us_east_streams_from_its_own_host() -> None:
    east = opts(base_url="https://users-east.rime.ai")
    assert streaming_url(east) == "wss://users-east-ws.rime.ai/ws3"
    assert streaming_url(opts(base_url="https://users-west.rime.ai")).startswith(
        "wss://users-ws.rime.ai/"
    )
    assert voices_url("wss://users-east-ws.rime.ai/ws3") == (
        "https://users-east.rime.ai" + VOICES_PATH
    )


def test_the_region_option_picks_rimes_host() -> None:
    east = opts(region="us-east")
    assert east.endpoint == "https://users-east.rime.ai/v1/rime-tts"
    assert streaming_url(east) == "wss://users-east-ws.rime.ai/ws3"
    west = opts(region="us-west")
    assert west.endpoint == "https://users-west.rime.ai/v1/rime-tts"
    assert streaming_url(west) == "wss://users-ws.rime.ai/ws3"
    assert streaming_url(opts(region="us-west", protocol="v1")) == "wss://api.rime.ai/coda/ws"
    with pytest.raises(ConfigurationError, match="region"):
        opts(region="eu-central")
    with pytest.raises(ConfigurationError, match="pass one"):
        opts(region="us-east", base_url="https://users.rime.ai")
    with pytest.raises(ConfigurationError, match="no US East host for WebSocket v1"):
        streaming_url(opts(region="us-east", protocol="v1"))


# ----------------------------------------------------------------------------- voices
# rimelabs/docs data/voices/all-v2.snapshot.json, retrieved 2026-08-04 (snapshot.json).


def test_the_catalogue_is_rimes_snapshot() -> None:
    voices = rime_voices()
    assert RIME_VOICES_DATE == "2026-08-04"
    assert set(voices) == {"coda", "arcana", "mistv3", "mistv2", "mist"}
    assert set(voices["coda"]) == {"eng", "spa", "fra", "por", "ger", "jpn", "ara", "hin"}
    assert set(voices["mist"]) == {"eng"}
    assert "astra" in voices["coda"]["eng"]
    assert "cove" not in voices["coda"]["eng"]
    assert model_languages("arcana") == model_languages("coda")  # served by coda
    # every language the catalogue names is one a client may ask for, but arcana's Hebrew
    assert {lang for langs in voices.values() for lang in langs} - CODES == {"heb"}
    voices["coda"]["eng"].clear()
    assert rime_voices()["coda"]["eng"]  # each call is a fresh copy
    data = json.loads((ROOT / "src/rime_trio/testing/rime_voices.json").read_text("utf-8"))
    assert data["retrieved"] == RIME_VOICES_DATE


async def test_an_emulator_with_rimes_voices_behaves_like_rime() -> None:
    config = EmulatorConfig(voices=rime_voices())
    async with (
        open_emulator(config) as emulator,
        httpx.AsyncClient() as http,
        RimeClient(base_url=emulator.http_url, api_key=config.api_key) as client,
    ):
        listed = parse_voices((await http.get(emulator.http_url + VOICES_PATH)).json())
        assert (await client.synthesize("Hola.", speaker="celestino", lang="es")).audio
        with pytest.raises(APIStatusError, match="'cove' is not a voice of model 'coda'"):
            await client.synthesize("Hello.", speaker="cove")
        assert (await client.synthesize("Hello.", speaker="cove", model="mist")).audio
    assert len(listed) == sum(len(s) for langs in rime_voices().values() for s in langs.values())


# ----------------------------------------------------------------------------- the CLI


def test_the_cli_will_not_put_opus_in_a_wav_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.wav"
    argv = ["speak", "hi", "-o", str(out), "--emulator", "--format", "ogg_opus"]
    assert main(argv) == 1
    assert "cannot write ogg_opus audio into a .wav file" in capsys.readouterr().err
    assert not out.exists()
