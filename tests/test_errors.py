from __future__ import annotations

import pytest

import rime_trio
from rime_trio import (
    APIStatusError,
    ConfigurationError,
    ConnectError,
    ConnectionLost,
    EmptyTextError,
    ProtocolError,
    RimeConnectionError,
    RimeError,
    RimeTimeoutError,
    ServerError,
    StreamClosed,
)
from rime_trio._errors import redact


@pytest.mark.parametrize(
    "cls",
    [
        APIStatusError,
        ConfigurationError,
        ConnectError,
        ConnectionLost,
        EmptyTextError,
        ProtocolError,
        RimeConnectionError,
        RimeTimeoutError,
        ServerError,
        StreamClosed,
    ],
)
def test_every_error_is_a_rime_error_and_documented(cls: type[Exception]) -> None:
    assert issubclass(cls, RimeError)
    doc = rime_trio._errors.__doc__ or ""
    assert cls.__name__ in doc


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
