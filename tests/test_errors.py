from __future__ import annotations

import importlib
import pkgutil
import re
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import rime_trio
from rime_trio import (
    APIStatusError,
    ConfigurationError,
    ConnectError,
    ConnectionLost,
    EmptyTextError,
    RimeConnectionError,
    RimeError,
    RimeTimeoutError,
    ServerError,
    SlowReaderError,
)
from rime_trio._errors import redact


def rime_errors() -> list[type[RimeError]]:
    """Every subclass of RimeError the package defines, at any depth, found by walking the
    class tree after importing every module (so none is missed for not being imported yet).
    The command line's own error (``rime_trio.cli``: a file it cannot write, printed by the
    command and never raised to a caller of the library) is left out, and so is the v1
    session's mark for a server that mixed contexts up (``ContextMixUp``: the session turns it
    into ConnectionLost for its streams, see test_v1_stream)."""
    for module in pkgutil.walk_packages(rime_trio.__path__, "rime_trio."):
        importlib.import_module(module.name)
    found: list[type[RimeError]] = []
    pending = [RimeError]
    while pending:
        for cls in pending.pop().__subclasses__():
            internal = cls.__module__ == "rime_trio.cli" or cls.__name__ == "ContextMixUp"
            if cls.__module__.startswith("rime_trio.") and not internal:
                found.append(cls)
                pending.append(cls)
    return sorted(set(found), key=lambda cls: cls.__name__)


def readme_error_tree() -> str:
    """The error tree in the README's "## Errors" section."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```text\nRimeError\n", 1)[1].split("```", 1)[0]


def test_the_walk_finds_the_whole_tree() -> None:
    found = rime_errors()
    assert len(found) >= 12
    assert {SlowReaderError, ConnectError, ConnectionLost} <= set(found)  # leaves, and deep ones


@pytest.mark.parametrize("cls", rime_errors(), ids=lambda cls: cls.__name__)
def test_every_error_is_exported_and_in_the_readmes_error_tree(cls: type[RimeError]) -> None:
    assert cls.__name__ in rime_trio.__all__
    assert getattr(rime_trio, cls.__name__) is cls
    assert re.search(rf"[├└]── {cls.__name__}\b", readme_error_tree())
    assert re.search(rf"[├└]── {cls.__name__}\b", rime_trio._errors.__doc__ or "")


def test_builtin_bases_for_familiar_handling() -> None:
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(EmptyTextError, ValueError)
    assert issubclass(RimeTimeoutError, TimeoutError)
    assert issubclass(ConnectError, RimeConnectionError)
    assert issubclass(ConnectionLost, RimeConnectionError)


def test_api_status_error_keeps_status_and_message() -> None:
    error = APIStatusError(429, "Currently at websocket limit")
    assert error.status_code == 429
    assert error.message == "Currently at websocket limit"
    assert "429" in str(error)
    assert "websocket limit" in str(error)
    assert error.retryable
    assert not APIStatusError(400, "bad").retryable
    assert APIStatusError(503, "down").retryable


def test_server_error_keeps_message() -> None:
    assert ServerError("oops").message == "oops"


def test_redact_removes_the_key() -> None:
    assert redact("key sk-1 in sk-1 text", "sk-1") == "key [redacted] in [redacted] text"
    assert redact("nothing", None) == "nothing"
    assert redact("nothing", "") == "nothing"


def test_redact_leaves_words_that_merely_contain_a_short_key() -> None:
    # A one-letter key must not turn "not known" into "not [redacted]nown".
    assert redact("name or service not known", "k") == "name or service not known"
    assert redact("Authorization: Bearer k", "k") == "Authorization: Bearer [redacted]"
    assert redact('{"key": "k", "text": "ok"}', "k") == '{"key": "[redacted]", "text": "ok"}'
    assert redact("wss://h/ws3?api_key=k&x=1", "k") == "wss://h/ws3?api_key=[redacted]&x=1"
    assert redact("short-key1 and short-key12", "short-key1") == "[redacted] and short-key12"


@given(
    key=st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=12, max_size=40),
    before=st.text(max_size=20),
    after=st.text(max_size=20),
)
def test_a_real_length_key_is_redacted_wherever_it_appears(
    key: str, before: str, after: str
) -> None:
    redacted = redact(before + key + after, key)
    assert key not in redacted
    assert "[redacted]" in redacted


@given(
    key=st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=11),
    separator=st.sampled_from([" ", "=", '"', ":", "/", "&", "\n"]),
)
def test_a_short_key_standing_alone_is_redacted(key: str, separator: str) -> None:
    redacted = redact(f"Bearer{separator}{key}{separator}end", key)
    assert f"{separator}[redacted]{separator}" in redacted


def test_public_namespace_is_explicit() -> None:
    assert set(rime_trio.__all__) <= set(dir(rime_trio))
    assert "RimeError" in rime_trio.__all__
    assert not [
        name for name in rime_trio.__all__ if name.startswith("_") and name != "__version__"
    ]


def test_partial_audio_is_part_of_the_message() -> None:
    error = ConnectionLost("the server closed the connection")
    assert str(error) == "the server closed the connection"
    error.audio_seconds_delivered = 1.5
    assert "after 1.50 s of audio had been delivered" in str(error)
    assert "not retried" in str(error)


def test_the_readmes_error_tree_is_the_real_hierarchy() -> None:
    block = readme_error_tree()
    parents: list[type[BaseException]] = [rime_trio.RimeError]
    named: set[str] = {"RimeError"}
    for line in block.splitlines():
        match = re.match(r"^((?:│   |    )*)[├└]── (\w+)", line)
        if match is None:
            continue  # a continued description
        depth = len(match.group(1)) // 4
        cls = getattr(rime_trio, match.group(2))
        del parents[depth + 1 :]
        assert cls.__mro__[1] is parents[depth], f"{cls.__name__} is not under {parents[depth]}"
        parents.append(cls)
        named.add(cls.__name__)
    public = {
        name
        for name in rime_trio.__all__
        if isinstance(getattr(rime_trio, name), type)
        and issubclass(getattr(rime_trio, name), rime_trio.RimeError)
    }
    assert named == public  # every public error is in the tree, and nothing else
