"""The `rime-trio` command as a newcomer meets it: a real process, its exit status, what it
prints on stderr (issue 12)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import socket
import struct
import subprocess
import sys
import termios
import wave
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from rime_trio._http import http_pieces
from rime_trio.cli import _parser, _Progress
from rime_trio.testing import render_speech

from .processes import rime_trio_process

TEXT = "One sentence here. Another one there. And a third."


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "RIME_API_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "rime_trio.cli", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        env={**environment, **(env or {})},
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"rime-trio {metadata.version('rime-trio')}"


def test_top_level_help_names_every_command_in_plain_text() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("speak", "serve", "emulator"):
        assert re.search(rf"^\s+{command}\s+\S", result.stdout, re.MULTILINE), command
    assert "``" not in result.stdout
    assert ":func:" not in result.stdout
    assert "RIME_API_KEY" in result.stdout


def test_every_option_has_help_and_shows_its_default() -> None:
    parser = _parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    for name, command in commands.choices.items():  # type: ignore[union-attr]
        help_text = command.format_help()
        for action in command._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings[0]} has no help"
            default = action.default
            if default not in (None, False):
                assert f"default: {default}" in " ".join(help_text.split()) or (
                    "default" in action.help
                ), f"{name} {action.option_strings[0]} hides its default {default!r}"


def test_missing_key_names_the_cli_flag_and_the_variable(tmp_path: Path) -> None:
    result = run("speak", "Hi.", "-o", str(tmp_path / "x.wav"))
    assert result.returncode == 1
    assert "pass --api-key or set RIME_API_KEY" in result.stderr
    assert "api_key=" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [("emulator",), ("serve", "--emulator")])
def test_a_busy_port_is_named_with_the_way_out(busy_port: int, command: tuple[str, ...]) -> None:
    result = run(*command, "--port", str(busy_port))
    assert result.returncode == 1
    assert f"127.0.0.1:{busy_port}" in result.stderr
    assert "port in use" in result.stderr
    assert "--port" in result.stderr
    assert "Traceback" not in result.stderr


def test_timestamps_without_stream_streams_and_exits_0(tmp_path: Path) -> None:
    stamps = tmp_path / "t.json"
    result = run(
        "speak", "--emulator", TEXT, "-o", str(tmp_path / "x.wav"), "--timestamps", str(stamps)
    )
    assert result.returncode == 0, result.stderr
    assert stamps.read_text().count('"word"') == len(TEXT.split())


def test_progress_when_asked_and_quiet_silences_everything(tmp_path: Path) -> None:
    out = tmp_path / "x.wav"
    shown = run("speak", "--emulator", "--stream", "--progress", TEXT, "-o", str(out))
    assert shown.returncode == 0, shown.stderr
    assert "3/3 sentences" in shown.stderr
    assert re.search(r"\d+\.\d s of audio, [\d.]+x real time", shown.stderr)
    quiet = run("speak", "--emulator", "--stream", "--progress", "-q", TEXT, "-o", str(out))
    assert quiet.returncode == 0
    assert quiet.stderr == ""
    assert len(out.read_bytes()) > 44


def test_no_progress_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    result = run("speak", "--emulator", TEXT, "-o", str(tmp_path / "x.wav"))
    assert result.returncode == 0
    assert "sentences" not in result.stderr
    assert "time to first audio" in result.stderr


def test_progress_on_a_terminal_by_default(tmp_path: Path) -> None:
    controller, terminal = pty.openpty()
    # A real terminal has a size; a fresh pty's is 0x0.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    environment = {k: v for k, v in os.environ.items() if k != "RIME_API_KEY"}
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "rime_trio.cli", "speak", "--emulator", "--stream", TEXT,
             "-o", str(tmp_path / "x.wav")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=terminal,
            env=environment,
        )  # fmt: skip
        os.close(terminal)
        terminal = -1
        seen = b""
        while True:
            try:
                data = os.read(controller, 4096)
            except OSError:  # EIO: the process closed its end
                break
            if not data:
                break
            seen += data
        assert process.wait(timeout=60) == 0
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert b"3/3 sentences" in seen


def test_the_api_error_names_the_server_that_refused(tmp_path: Path) -> None:
    # The emulator is not Rime: an error must not blame Rime's API for what it refused.
    result = run("speak", "--emulator", "--stream", "Hi.", "-o", str(tmp_path / "x.mp3"),
                 "--format", "mp3")  # fmt: skip
    assert result.returncode == 1
    assert "Rime API" not in result.stderr
    assert re.search(r"the server at 127\.0\.0\.1:\d+ returned status 400", result.stderr), (
        result.stderr
    )
    assert "the emulator streams pcm, mulaw" in result.stderr


def test_mp3_from_the_emulator_over_http_says_the_emulator_lacks_it(tmp_path: Path) -> None:
    result = run("speak", "--emulator", "Hi.", "-o", str(tmp_path / "x.mp3"), "--format", "mp3")
    assert result.returncode == 1
    assert "Rime API" not in result.stderr
    assert re.search(
        r"the server at 127\.0\.0\.1:\d+ returned status 400: Bad request: the emulator does "
        r"not produce mp3 \(only mulaw, pcm, wav\)",
        result.stderr,
    ), result.stderr


def test_output_bytes_are_the_speech(tmp_path: Path) -> None:
    out = tmp_path / "x.raw"
    result = run(
        "speak", "--emulator", "--stream", "-q", "Hi.", "-o", str(out), "--sample-rate", "8000"
    )
    assert result.returncode == 0
    assert out.read_bytes() == render_speech("Hi. ", 8000).pcm


@pytest.mark.parametrize("stream", [[], ["--stream"]])
def test_an_output_path_that_cannot_be_written_is_named_not_blamed_on_the_network(
    tmp_path: Path, stream: list[str]
) -> None:
    missing = run("speak", "--emulator", *stream, "Hi.", "-o", str(tmp_path / "missing" / "x.wav"))
    assert missing.returncode == 1
    assert f"there is no directory {tmp_path / 'missing'}" in missing.stderr
    directory = run("speak", "--emulator", *stream, "Hi.", "-o", str(tmp_path))
    assert directory.returncode == 1
    assert "it is a directory" in directory.stderr
    for result in (missing, directory):
        assert "connect" not in result.stderr
        assert "Traceback" not in result.stderr


def test_long_text_over_http_is_spoken_whole(tmp_path: Path) -> None:
    # The CLI's default mode is HTTP, where one request takes 1,000 characters at most.
    text = "A sentence that goes on for a while, to make the text long. " * 60
    out = tmp_path / "long.raw"
    result = run("speak", "--emulator", "-q", text, "-o", str(out), "--sample-rate", "8000")
    assert result.returncode == 0, result.stderr
    pieces = http_pieces(text, "coda")
    assert len(pieces) > 3
    assert out.read_bytes() == b"".join(render_speech(p, 8000).pcm for p in pieces)


def test_voices_lists_the_emulators_speakers_without_a_key() -> None:
    table = run("voices", "--emulator", "--model", "coda")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines() == [
        "coda     eng  albion, astra, celeste, cove, luna, orion",
        "coda     spa  aurelio, celestino",
    ]
    listed = run("voices", "--emulator", "--json")
    assert {"model": "mist", "speaker": "astra", "language": "eng"} in json.loads(listed.stdout)


@pytest.mark.parametrize("stream", [[], ["--stream"]])
def test_metrics_are_printed_as_json_on_stderr(tmp_path: Path, stream: list[str]) -> None:
    out = tmp_path / "m.wav"
    result = run("speak", "--emulator", *stream, "-q", "--metrics", TEXT, "-o", str(out))
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.splitlines()
    metrics = json.loads(line)
    assert metrics["outcome"] == "completed"
    with wave.open(str(out)) as wav:  # the audio written is the audio measured
        assert metrics["audio_seconds"] == pytest.approx(wav.getnframes() / wav.getframerate())
    assert (metrics["time_to_first_audio"] if stream else metrics["time_to_first_byte"]) > 0
    failed = run(
        "speak", "--emulator", *stream, "-q", "--metrics", "Hi.", "-o", str(tmp_path / "f.wav"),
        "--speaker", "nobody",
    )  # fmt: skip
    assert failed.returncode == 1
    assert json.loads(failed.stderr.splitlines()[0])["error_type"] == "APIStatusError"


def test_speak_streams_over_v1_by_url_or_flag(tmp_path: Path) -> None:
    stamps = tmp_path / "words.json"
    by_url_out, by_flag_out = tmp_path / "url.raw", tmp_path / "flag.raw"
    with rime_trio_process("emulator", "--port", "0", lines=3) as (_, lines):
        v1_url = lines[2].split()[-1]
        assert v1_url.endswith("/ws")
        key = ["--api-key", "emulator-key", "--sample-rate", "8000"]
        by_url = run("speak", "--base-url", v1_url, *key, TEXT, "-o", str(by_url_out),
                     "--timestamps", str(stamps))  # fmt: skip
        base = v1_url.removesuffix("/ws")
        by_flag = run("speak", "--base-url", base, "--protocol", "v1", *key, TEXT,
                      "-o", str(by_flag_out))  # fmt: skip
    for result in (by_url, by_flag):
        assert result.returncode == 0, result.stderr
        assert "streaming (v1)" in result.stderr
    assert by_url_out.read_bytes() == by_flag_out.read_bytes()
    assert by_url_out.read_bytes() == b"".join(
        render_speech(s, 8000).pcm
        for s in ["One sentence here. ", "Another one there. ", "And a third."]
    )
    assert [w["word"] for w in json.loads(stamps.read_text())] == [
        w.strip(".") for w in TEXT.split()
    ]


def test_a_timestamps_path_that_cannot_be_written_fails_before_any_synthesis(
    tmp_path: Path,
) -> None:
    out = tmp_path / "x.wav"
    result = run("speak", "--emulator", "--metrics", "Hi.", "-o", str(out),
                 "--timestamps", str(tmp_path / "missing" / "t.json"))  # fmt: skip
    assert result.returncode == 1
    assert f"there is no directory {tmp_path / 'missing'}" in result.stderr
    assert "{" not in result.stderr  # no synthesis ran, so no metrics were reported
    assert not out.exists()


def test_progress_counts_sentences_from_the_word_timestamps() -> None:
    progress = _Progress("One two three. Four five. Six seven eight nine.", enabled=True)
    bar = progress._bar
    assert bar is not None
    assert bar.total == 3
    progress.words(2)
    assert bar.n == 0
    progress.words(1)  # "three": the first sentence is done
    assert bar.n == 1
    progress.words(3)  # "four five six": the second
    assert bar.n == 2
    progress.close(completed=True)
    assert bar.n == 3


# ----------------------------------------------------------------------------- bad text


def run_bytes(
    *args: str | bytes, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """The command with arguments as raw bytes (what a shell passes from a Latin-1 file)."""
    environment = {k: v for k, v in os.environ.items() if k != "RIME_API_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "rime_trio.cli", *args],
        capture_output=True,
        input=stdin,
        timeout=60,
        env={**environment, **(env or {})},
    )


@pytest.mark.parametrize(
    ("how", "stream"),
    [("argument", []), ("argument", ["--stream"]), ("stdin", []), ("stdin", ["--stream"])],
)
@pytest.mark.parametrize("stdin_errors", ["surrogateescape", "strict"])
def test_text_that_is_not_utf8_is_one_line_of_error(
    tmp_path: Path, how: str, stream: list[str], stdin_errors: str
) -> None:
    """Issue 20, defect 6: Latin-1 bytes in argv (or on stdin) gave a 53-line traceback."""
    out = tmp_path / "x.wav"
    text = b"caf\xe9 au lait. Bien."
    result = run_bytes(
        "speak", "--emulator", *stream, text if how == "argument" else "-", "-o", str(out),
        stdin=text if how == "stdin" else b"",
        # how this Python decodes stdin when not told otherwise depends on the locale
        env={"PYTHONIOENCODING": f"utf-8:{stdin_errors}"},
    )  # fmt: skip
    assert result.returncode == 1
    source = "TEXT" if how == "argument" else "standard input"
    assert result.stderr.decode().splitlines() == [
        f"rime-trio: error: {source} is not valid utf-8: byte 0xE9 at character 3 cannot be "
        "decoded; convert it to utf-8 first (for example with iconv -f latin1 -t utf-8)"
    ]
    assert not out.exists()  # refused before anything was synthesized


@pytest.mark.parametrize("flag", ["--speaker", "--base-url", "--api-key"])
def test_an_option_that_is_not_utf8_is_one_line_of_error(tmp_path: Path, flag: str) -> None:
    # They are sent too: in a URL, a JSON body, a header.
    result = run_bytes("speak", "--emulator", "Hi.", "-o", str(tmp_path / "x.wav"),
                       flag, b"caf\xe9")  # fmt: skip
    assert result.returncode == 1
    (line,) = result.stderr.decode().splitlines()
    assert "is not valid utf-8" in line
    assert "at character 3" in line
    if flag == "--api-key":
        assert "0xE9" not in line  # not even a byte of a key is printed
        assert line.startswith("rime-trio: error: the API key ")
    else:
        assert line.startswith(f"rime-trio: error: {flag} ")
