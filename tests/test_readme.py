"""The README's examples run as written (against the bundled emulator)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
TEXT = README.read_text(encoding="utf-8")
EXAMPLES = re.findall(r"```python\n(.*?)```", TEXT, re.DOTALL)


def test_readme_has_examples() -> None:
    assert len(EXAMPLES) >= 2


# Each example ends by running main(); the same main() must run under every runner.
RUNNERS = {
    "trio.run": "import trio\ntrio.run(main)\n",
    "anyio.run(trio)": "import anyio\nanyio.run(main, backend='trio')\n",
    "anyio.run(asyncio)": "import anyio\nanyio.run(main, backend='asyncio')\n",
    "asyncio.run": "import asyncio\nasyncio.run(main())\n",
}
_LAST_LINE = re.compile(
    r"\n(?:trio\.run\(main\)|anyio\.run\(main.*\)|asyncio\.run\(main\(\)\))\n*$"
)


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_python_example_runs_under_every_runner(index: int, runner: str, tmp_path: Path) -> None:
    example = EXAMPLES[index]
    assert _LAST_LINE.search(example), "an example ends by running main()"
    script = tmp_path / "example.py"
    script.write_text(_LAST_LINE.sub("\n", example) + RUNNERS[runner], encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_python_example_runs_as_written(index: int, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(EXAMPLES[index], encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_quick_start_speak_command_runs(tmp_path: Path) -> None:
    """The set-up's first command, minus the install (the test run is already installed)."""
    line = next(line for line in TEXT.splitlines() if "rime-trio speak --emulator" in line)
    command = shlex.split(line.split("&&")[-1].strip())
    assert command[0].endswith("rime-trio")
    rime_trio = Path(sys.executable).with_name("rime-trio")
    result = subprocess.run(
        [str(rime_trio), *command[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "hello.wav").read_bytes()[:4] == b"RIFF"
