"""The `rime-trio` command, run in-process and as a real subprocess."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from rime_trio import RimeError, cli
from rime_trio.cli import _parser, _serve_access, main
from rime_trio.testing import render_speech

from .conftest import BACKENDS
from .processes import rime_trio_process
from .ws_client import ConnectionRejected, open_websocket

TEXT = "Hello from the command line. It writes a WAV."


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The event loop `rime-trio speak --backend` runs the client on, in this process."""
    return str(request.param)


def read_wav(path: Path) -> tuple[int, int, bytes]:
    with wave.open(str(path)) as wav:
        return wav.getframerate(), wav.getnchannels(), wav.readframes(wav.getnframes())


def test_speak_with_emulator_writes_a_valid_wav(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.wav"
    args = ["speak", "--backend", backend, "--emulator", TEXT, "-o", str(out)]
    assert main([*args, "--sample-rate", "16000"]) == 0
    rate, channels, frames = read_wav(out)
    assert (rate, channels) == (16000, 1)
    assert frames == render_speech(TEXT, 16000).pcm
    err = capsys.readouterr().err
    assert "http" in err
    assert "time to first audio" in err
    assert f"{render_speech(TEXT, 16000).duration:.2f} s" in err


def test_raw_output_gets_the_format_bytes(backend: str, tmp_path: Path) -> None:
    out = tmp_path / "out.ulaw"
    assert (
        main(
            [
                "speak",
                "--backend",
                backend,
                "--emulator",
                "Hi.",
                "-o",
                str(out),
                "--format",
                "mulaw",
                "--sample-rate",
                "8000",
            ]
        )
        == 0
    )
    assert len(out.read_bytes()) == len(render_speech("Hi.", 8000).pcm) // 2


def test_text_dash_reads_stdin(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("From standard input."))
    out = tmp_path / "stdin.wav"
    assert main(["speak", "--backend", backend, "--emulator", "-", "-o", str(out)]) == 0
    assert read_wav(out)[2] == render_speech("From standard input.", 24000).pcm


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert main(["speak", "hi"]) == 2  # missing -o
    assert main(["speak", "hi", "-o", str(tmp_path / "x.wav"), "--model", "nope"]) == 2
    assert main([]) == 2


def test_configuration_errors_exit_1(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.wav"
    assert (
        main(
            [
                "speak",
                "--backend",
                backend,
                "hi",
                "-o",
                str(out),
                "--api-key",
                "k",
                "--base-url",
                "https://users.rime.ai/v1/rime-tts/ws3",
            ]
        )
        == 1
    )
    assert "WebSocket path" in capsys.readouterr().err
    assert main(["speak", "--backend", backend, "hi", "-o", str(out)]) == 1  # no key anywhere
    assert "RIME_API_KEY" in capsys.readouterr().err


@pytest.fixture
def emulator_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`rime-trio emulator` as a real process on a free port."""
    with rime_trio_process("emulator", "--port", "0", "--api-key", "right-key", lines=2) as (
        process,
        (first, second),
    ):
        assert "/ws3" in first
        assert "/v1/rime-tts" in second
        yield process, second.split()[-1].removesuffix("/v1/rime-tts")


def test_emulator_command_serves_and_stops_cleanly_on_ctrl_c(
    emulator_process: tuple[subprocess.Popen[str], str], backend: str, tmp_path: Path
) -> None:
    process, url = emulator_process
    out = tmp_path / "a.wav"
    args = ["speak", "--backend", backend, TEXT, "-o", str(out)]
    assert main([*args, "--base-url", url, "--api-key", "right-key"]) == 0
    assert read_wav(out)[2] == render_speech(TEXT, 24000).pcm
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "Traceback" not in err


def test_wrong_key_exits_1_naming_401(
    emulator_process: tuple[subprocess.Popen[str], str],
    backend: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, url = emulator_process
    args = ["speak", "--backend", backend, "Hi.", "-o", str(tmp_path / "x.wav")]
    status = main([*args, "--base-url", url, "--api-key", "wrong-key"])
    assert status == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1
    assert "401" in lines[0]
    assert "wrong-key" not in err


def test_timestamps_switch_to_streaming(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stamps = tmp_path / "t.json"
    args = [
        "speak",
        "--backend",
        backend,
        "--emulator",
        "Hi there.",
        "-o",
        str(tmp_path / "x.wav"),
        "--timestamps",
        str(stamps),
    ]
    assert main(args) == 0
    assert [w["word"] for w in json.loads(stamps.read_text())] == ["Hi", "there"]
    assert "rime-trio: streaming (ws3) ws://" in capsys.readouterr().err


def streamed(sentences: list[str], rate: int) -> bytes:
    """What the emulator sends for a stream: one batch per sentence."""
    return b"".join(render_speech(sentence + " ", rate).pcm for sentence in sentences)


def test_stream_flag_streams_and_writes_timestamps(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, stamps = tmp_path / "s.wav", tmp_path / "s.json"
    args = ["speak", "--backend", backend, "--emulator", "--stream", TEXT, "-o", str(out)]
    args += ["--timestamps", str(stamps)]
    assert main(args) == 0
    rate, _, frames = read_wav(out)
    assert frames == streamed(["Hello from the command line.", "It writes a WAV."], rate)
    words = json.loads(stamps.read_text())
    assert [w["word"] for w in words] == [
        "Hello", "from", "the", "command", "line", "It", "writes", "a", "WAV",
    ]  # fmt: skip
    starts = [w["start"] for w in words]
    assert starts == sorted(starts)
    assert starts[5] > 1.0  # the second sentence is re-based onto the stream's clock
    err = capsys.readouterr().err
    assert "streaming (ws3) ws://" in err
    assert "time to first audio" in err


def test_ws_url_streams(
    emulator_process: tuple[subprocess.Popen[str], str],
    backend: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, url = emulator_process
    ws_url = url.replace("http://", "ws://")
    out = tmp_path / "w.wav"
    args = [
        "speak",
        "--backend",
        backend,
        "One sentence.",
        "-o",
        str(out),
        "--base-url",
        ws_url,
        "--api-key",
        "right-key",
    ]
    assert main(args) == 0
    assert read_wav(out)[2] == streamed(["One sentence."], 24000)
    assert "streaming" in capsys.readouterr().err


def test_ws_wrong_key_exits_1_naming_401(
    emulator_process: tuple[subprocess.Popen[str], str],
    backend: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, url = emulator_process
    ws_url = url.replace("http://", "ws://")
    args = [
        "speak",
        "--backend",
        backend,
        "Hi.",
        "-o",
        str(tmp_path / "x.wav"),
        "--base-url",
        ws_url,
        "--api-key",
        "nope",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "401" in err
    assert "nope" not in err.split("error:", 1)[1]
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- serve


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "myhost.example"])
def test_serve_refuses_a_non_loopback_bind_without_a_token(host: str) -> None:
    with rime_trio_process("serve", "--host", host, "--port", "0", lines=1) as (process, lines):
        _, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert lines == [""]  # it never served
    assert f"refusing to serve on {host}: it is not a loopback address" in err
    assert "--token" in err
    assert "Traceback" not in err


def test_serve_emulator_mode_needs_no_token_beyond_loopback() -> None:
    parser = _parser()
    args = parser.parse_args(["serve", "--host", "0.0.0.0", "--emulator"])
    assert _serve_access(args, parser) == (None, False)  # no real key: Origin checks only
    args = parser.parse_args(["serve", "--host", "0.0.0.0", "--token"])
    token, generated = _serve_access(args, parser)
    assert generated
    assert token is not None
    assert len(token) >= 32


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--allow-origin", "null"], "--allow-origin: not an origin"),
        (["--allow-origin", "https://app.example/page"], "--allow-origin: not an origin"),
        (["--token", "short"], "--token (or $RIME_TRIO_TOKEN): a token is 16 to 256 characters"),
    ],
)
def test_serve_usage_errors_exit_2(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--emulator", *flags]) == 2
    assert message in capsys.readouterr().err


async def handshake_status(url: str, subprotocols: list[str] | None = None) -> int:
    """The status a WebSocket handshake to *url*/ws gets (101: accepted)."""
    address, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        async with open_websocket(address, int(port), "/ws", subprotocols=subprotocols):
            return 101
    except ConnectionRejected as rejected:
        return rejected.status_code


@pytest.mark.anyio
async def test_serve_generated_token_works_end_to_end_and_is_printed_once(
    anyio_backend_name: str,
) -> None:
    # The page's server runs on the test's backend, as does the client playing the browser.
    with rime_trio_process(
        "serve", "--backend", anyio_backend_name, "--emulator", "--port", "0", "--token", lines=1
    ) as (process, (first,)):
        assert first.startswith("Speak page: http://127.0.0.1:"), first
        link = first.split()[2]
        url, _, fragment = link.partition("/#token=")
        token = fragment
        assert len(token) >= 32
        assert await handshake_status(url) == 401
        assert await handshake_status(url, ["rime-trio", "rime-trio.token.not-the-token!"]) == 401
        protocols = ["rime-trio", f"rime-trio.token.{token}"]
        address, port = url.removeprefix("http://").rsplit(":", 1)
        async with open_websocket(address, int(port), "/ws", subprotocols=protocols) as ws:
            assert ws.subprotocol == "rime-trio"
            await ws.send_message(json.dumps({"type": "speak"}))
            await ws.send_message(json.dumps({"type": "text", "text": "With a token."}))
            await ws.send_message(json.dumps({"type": "end"}))
            audio = bytearray()
            with anyio.fail_after(20):
                while True:
                    message = await ws.get_message()
                    if isinstance(message, bytes):
                        audio += message
                    elif json.loads(message)["type"] in ("done", "error"):
                        break
        assert bytes(audio) == streamed(["With a token."], 24000)
        async with httpx.AsyncClient() as http:
            headers = {"Authorization": f"Bearer {token}"}
            served = (await http.get(url + "/stats", headers=headers)).json()
        assert served["refused"] == 2
        assert served["utterances"] == 1
        assert served["timeToFirstAudioMs"]["count"] == 1
        assert served["timeToFirstAudioMs"]["p50"] > 0
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0
    assert token not in out  # printed once, in the link
    assert token not in err  # and never logged
    # One line for the session, with its numbers and without its text.
    (session,) = [line for line in out.splitlines() if "session ended" in line]
    assert "1 utterance(s) (1 completed)" in session
    assert "time to first audio median" in session
    assert f"{render_speech('With a token.', 24000).duration:.2f} s of audio" in session
    assert "With a token" not in out


@pytest.mark.anyio
async def test_serve_takes_its_token_from_the_environment_out_of_the_process_list(
    anyio_backend_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "from-the-environment-0123456789abcdef"
    monkeypatch.setenv("RIME_TRIO_TOKEN", token)
    args = ("serve", "--backend", anyio_backend_name, "--emulator", "--port", "0")
    with rime_trio_process(*args, lines=2) as (process, (first, second)):
        url = first.split()[2].rstrip("/")
        assert token not in first  # not printed: the operator chose it
        assert "#token=<your token>" in second
        assert token not in " ".join(process.args)  # type: ignore[arg-type]
        assert await handshake_status(url) == 401
        assert await handshake_status(url, ["rime-trio", f"rime-trio.token.{token}"]) == 101
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    assert token not in out + err


def test_a_bad_token_from_the_environment_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RIME_TRIO_TOKEN", "short")
    assert main(["serve", "--emulator"]) == 2
    assert "RIME_TRIO_TOKEN" in capsys.readouterr().err


@pytest.mark.parametrize(
    "error",
    [
        RimeError("the server said:\n  400: bad request\n  (details)"),
        ExceptionGroup("gathered", [RimeError("first\nfailure"), OSError("second")]),
        ExceptionGroup("nested", [ExceptionGroup("inner", [RimeError("first\nfailure")])]),
    ],
    ids=["multi-line", "group", "nested-group"],
)
def test_a_rime_error_reaching_the_top_is_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: BaseException,
) -> None:
    async def failing(args: object) -> int:
        raise error

    monkeypatch.setattr(cli, "_speak", failing)
    assert main(["speak", "Hi.", "-o", str(tmp_path / "x.wav")]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("rime-trio: error: ")
    assert "server said: 400: bad request (details)" in line or "first failure" in line


def test_a_group_holding_anything_else_is_not_swallowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bug = ExceptionGroup("gathered", [RimeError("reported"), KeyError("a bug")])

    async def failing(args: object) -> int:
        raise bug

    monkeypatch.setattr(cli, "_speak", failing)
    with pytest.raises(ExceptionGroup) as info:
        main(["speak", "Hi.", "-o", str(tmp_path / "x.wav")])
    assert info.value is bug  # its traceback is what to read
