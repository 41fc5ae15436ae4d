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

import pytest

from rime_trio.cli import main
from rime_trio.testing import render_speech

from .processes import rime_trio_process

TEXT = "Hello from the command line. It writes a WAV."


def read_wav(path: Path) -> tuple[int, int, bytes]:
    with wave.open(str(path)) as wav:
        return wav.getframerate(), wav.getnchannels(), wav.readframes(wav.getnframes())


def test_speak_with_emulator_writes_a_valid_wav(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.wav"
    assert main(["speak", "--emulator", TEXT, "-o", str(out), "--sample-rate", "16000"]) == 0
    rate, channels, frames = read_wav(out)
    assert (rate, channels) == (16000, 1)
    assert frames == render_speech(TEXT, 16000).pcm
    err = capsys.readouterr().err
    assert "http" in err
    assert "time to first audio" in err
    assert f"{render_speech(TEXT, 16000).duration:.2f} s" in err


def test_raw_output_gets_the_format_bytes(tmp_path: Path) -> None:
    out = tmp_path / "out.ulaw"
    assert (
        main(
            [
                "speak",
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


def test_text_dash_reads_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("From standard input."))
    out = tmp_path / "stdin.wav"
    assert main(["speak", "--emulator", "-", "-o", str(out)]) == 0
    assert read_wav(out)[2] == render_speech("From standard input.", 24000).pcm


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert main(["speak", "hi"]) == 2  # missing -o
    assert main(["speak", "hi", "-o", str(tmp_path / "x.wav"), "--model", "nope"]) == 2
    assert main([]) == 2


def test_configuration_errors_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.wav"
    assert (
        main(
            [
                "speak",
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
    assert main(["speak", "hi", "-o", str(out)]) == 1  # no key anywhere
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
    emulator_process: tuple[subprocess.Popen[str], str], tmp_path: Path
) -> None:
    process, url = emulator_process
    out = tmp_path / "a.wav"
    assert main(["speak", TEXT, "-o", str(out), "--base-url", url, "--api-key", "right-key"]) == 0
    assert read_wav(out)[2] == render_speech(TEXT, 24000).pcm
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "Traceback" not in err


def test_wrong_key_exits_1_naming_401(
    emulator_process: tuple[subprocess.Popen[str], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, url = emulator_process
    status = main(
        ["speak", "Hi.", "-o", str(tmp_path / "x.wav"), "--base-url", url, "--api-key", "wrong-key"]
    )
    assert status == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1
    assert "401" in lines[0]
    assert "wrong-key" not in err


def test_timestamps_need_streaming(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stamps = tmp_path / "t.json"
    args = [
        "speak",
        "--emulator",
        "Hi.",
        "-o",
        str(tmp_path / "x.wav"),
        "--timestamps",
        str(stamps),
    ]
    assert main(args) == 0
    assert json.loads(stamps.read_text()) == []  # HTTP mode has no word timestamps
    assert "need streaming" in capsys.readouterr().err


def streamed(sentences: list[str], rate: int) -> bytes:
    """What the emulator sends for a stream: one batch per sentence."""
    return b"".join(render_speech(sentence + " ", rate).pcm for sentence in sentences)


def test_stream_flag_streams_and_writes_timestamps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, stamps = tmp_path / "s.wav", tmp_path / "s.json"
    args = ["speak", "--emulator", "--stream", TEXT, "-o", str(out), "--timestamps", str(stamps)]
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
    assert "streaming ws://" in err
    assert "time to first audio" in err


def test_ws_url_streams(
    emulator_process: tuple[subprocess.Popen[str], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, url = emulator_process
    ws_url = url.replace("http://", "ws://")
    out = tmp_path / "w.wav"
    args = [
        "speak",
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
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, url = emulator_process
    ws_url = url.replace("http://", "ws://")
    args = [
        "speak",
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
