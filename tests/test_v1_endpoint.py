"""Rime's public WebSocket v1 endpoint (issue 22): the host, the route per model, the
settings a context's ``start`` carries for it, and the emulator serving every route."""

from __future__ import annotations

import anyio
import pytest
from rime_api import text_to_speech_pb2 as tts

from rime_trio import ConfigurationError, RimeClient, RimeOptions
from rime_trio._options import streaming_url
from rime_trio._protocol_v1 import synthesis_request
from rime_trio.testing import RimeEmulator, render_speech

from .speech import RATE, read_all

KEY = "k"


@pytest.mark.parametrize(
    ("model", "url"),
    [("coda", "wss://api.rime.ai/coda/ws"), ("mistv3", "wss://api.rime.ai/mistv3/ws")],
)
@pytest.mark.parametrize("base_url", [None, "https://users.rime.ai", "https://api.rime.ai"])
def test_v1_on_rimes_hosts_dials_the_public_route_of_the_model(
    model: str, url: str, base_url: str | None
) -> None:
    options = RimeOptions(api_key=KEY, protocol="v1", model=model, base_url=base_url)  # type: ignore[arg-type]
    assert streaming_url(options) == url


@pytest.mark.parametrize("model", ["mist", "mistv2", "arcana"])
def test_a_model_without_a_public_v1_route_says_so(model: str) -> None:
    options = RimeOptions(api_key=KEY, protocol="v1", model=model)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="serves coda and mistv3"):
        streaming_url(options)


@pytest.mark.parametrize("path", ["/coda/ws", "/mistv3/ws", "/mist/ws", "/ws", "/proxy/rime/ws"])
def test_a_path_ending_in_ws_speaks_v1(path: str) -> None:
    model = "mistv3" if "mist" in path else "coda"
    options = RimeOptions(api_key=KEY, base_url=f"wss://rime.example{path}", model=model)  # type: ignore[arg-type]
    assert (options.streaming, options.stream_protocol) == (True, "v1")
    assert options.endpoint == f"wss://rime.example{path}"


def test_the_route_and_the_model_must_agree() -> None:
    # The path picks the model and `start` names none: the options must say the same model,
    # since it decides which model options are accepted.
    with pytest.raises(ConfigurationError, match="selects model 'coda'"):
        RimeOptions(api_key=KEY, base_url="wss://api.rime.ai/coda/ws", model="mistv3")
    with pytest.raises(ConfigurationError, match="selects model 'mistv3'"):
        RimeOptions(api_key=KEY, base_url="wss://api.rime.ai/mistv3/ws")
    RimeOptions(api_key=KEY, base_url="wss://api.rime.ai/mistv3/ws", model="mistv3")


@pytest.mark.parametrize(
    ("model", "speed_alpha", "time_scale"),
    [
        # coda and mistv3: speedAlpha above 1 is faster; timeScaleFactor above 1 is slower
        ("mistv3", 2.0, 0.5),
        ("mistv3", 0.5, 2.0),
        # mist and mistv2: speedAlpha below 1 is faster, as a time scale below 1 is
        ("mistv2", 0.8, 0.8),
        ("mist", 1.25, 1.25),
    ],
)
def test_speed_alpha_maps_to_the_time_scale_by_meaning(
    model: str, speed_alpha: float, time_scale: float
) -> None:
    options = RimeOptions(api_key=KEY, model=model, speed_alpha=speed_alpha)  # type: ignore[arg-type]
    request = synthesis_request(options)
    assert request.audio_parameters.time_scale_factor == pytest.approx(time_scale)


def test_a_time_scale_factor_is_sent_as_it_is() -> None:
    request = synthesis_request(RimeOptions(api_key=KEY, time_scale_factor=1.5))
    assert request.audio_parameters.time_scale_factor == 1.5


def test_text_lookahead_tokens_go_in_coda_parameters_and_only_coda_takes_them() -> None:
    request = synthesis_request(RimeOptions(api_key=KEY, text_lookahead_tokens=4))
    assert request.coda_parameters.text_lookahead_tokens == 4
    assert not synthesis_request(RimeOptions(api_key=KEY)).HasField("coda_parameters")
    with pytest.raises(ConfigurationError, match="applies to model"):
        RimeOptions(api_key=KEY, model="mistv3", text_lookahead_tokens=4)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigurationError, match="text_lookahead_tokens"):
            RimeOptions(api_key=KEY, text_lookahead_tokens=bad)  # type: ignore[arg-type]
    # Never on /ws3 or HTTP: it is a v1 setting only.
    ws3 = RimeOptions(api_key=KEY, base_url="ws://h:1/ws3", text_lookahead_tokens=4)
    assert "lookahead" not in streaming_url(ws3)
    assert tts.CodaParameters(text_lookahead_tokens=4).text_lookahead_tokens == 4


@pytest.mark.parametrize("route", ["/coda/ws", "/mistv3/ws", "/mist/ws", "/ws"])
async def test_the_emulator_serves_every_v1_route(route: str, rime_emulator: RimeEmulator) -> None:
    model = "mistv3" if "mist" in route else "coda"
    text = "Every route speaks."
    async with RimeClient(
        base_url=f"{rime_emulator.ws_url}{route}",
        api_key=rime_emulator.config.api_key,
        sample_rate=RATE,
        model=model,
    ) as client:
        assert client.options.stream_protocol == "v1"
        async with client.stream() as stream:
            await stream.push_text(text)
            await stream.end_input()
            with anyio.fail_after(10):
                audio, _ = await read_all(stream)
    assert audio == render_speech(text, RATE).pcm
