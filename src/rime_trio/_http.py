"""HTTP synthesis over ``/v1/rime-tts`` with one shared ``httpx.AsyncClient``.

The only module that touches httpx; its exceptions are mapped to the RimeError tree here.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager
from typing import cast

import anyio
import httpx

from ._audio import AudioClock
from ._errors import (
    APIStatusError,
    ConnectError,
    ConnectionLost,
    RimeConnectionError,
    RimeError,
    RimeTimeoutError,
    redact,
)
from ._events import AudioChunk
from ._metrics import SynthesisRecord
from ._options import RimeOptions, accept_header, http_body

__all__ = ["HttpSynthesizer"]

_WAV_HEADER_BYTES = 44


def _describe(exc: BaseException) -> str:
    """The first non-empty message along the exception's cause chain (httpx often wraps an
    ssl or socket error in an exception whose own message is empty)."""
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen)
        if text:
            return text
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


@contextmanager
def map_http_errors(api_key: str | None) -> Iterator[None]:
    """Translate httpx failures into the RimeError tree (the HTTP transport boundary)."""
    try:
        yield
    except RimeError:
        raise  # already mapped (RimeTimeoutError is an OSError too: keep it from the OSError arm)
    except httpx.TimeoutException as exc:
        raise RimeTimeoutError(redact(f"HTTP request timed out: {exc!r}", api_key)) from None
    except httpx.ConnectError as exc:
        raise ConnectError(redact(f"could not connect: {_describe(exc)}", api_key)) from None
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
        raise ConnectionLost(redact(f"HTTP connection lost: {_describe(exc)}", api_key)) from None
    except httpx.HTTPError as exc:
        message = f"HTTP transport error: {_describe(exc)}"
        raise RimeConnectionError(redact(message, api_key)) from None
    except OSError as exc:
        raise ConnectError(redact(f"could not connect: {_describe(exc)}", api_key)) from None


class HttpSynthesizer:
    """Sends synthesis requests; owns the httpx client unless one was injected."""

    def __init__(
        self,
        http_client: httpx.AsyncClient | None = None,
        *,
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._owns_client = http_client is None
        self._client = http_client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_keepalive_connections=20),
            verify=ssl_context if ssl_context is not None else True,
        )

    async def aclose(self) -> None:
        if self._owns_client and not self._client.is_closed:
            await self._client.aclose()

    @asynccontextmanager
    async def stream(
        self, options: RimeOptions, text: str, record: SynthesisRecord
    ) -> AsyncIterator[AsyncIterator[AudioChunk]]:
        """Send one request; yield an iterator over its audio as the body arrives, noting
        in *record* when the first byte came, the audio's duration, and a complete body.

        :raises APIStatusError: when the server answers with a non-2xx status.
        :raises RimeConnectionError: when the connection fails.
        :raises RimeTimeoutError: when the server is too slow.
        """
        key = options.api_key
        headers = {
            "Authorization": f"Bearer {key}",
            "Accept": accept_header(options.audio_format),
        }
        with map_http_errors(key):
            async with self._client.stream(
                "POST", options.endpoint, json=http_body(options, text), headers=headers
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise APIStatusError(response.status_code, redact(response.text.strip(), key))
                # Closed on exit, so a caller that stops early leaves no generator for the GC.
                async with aclosing(self._chunks(response, options, record)) as chunks:
                    yield chunks

    async def _chunks(
        self, response: httpx.Response, options: RimeOptions, record: SynthesisRecord
    ) -> AsyncGenerator[AudioChunk, None]:
        clock = AudioClock(options.audio_format, options.sample_rate)
        record.clock = clock  # its seconds are the audio delivered: nothing to write per chunk
        header_left = _WAV_HEADER_BYTES if options.audio_format == "wav" else 0
        with map_http_errors(options.api_key):
            # aiter_bytes() is an async generator, typed more loosely by httpx.
            body_bytes = cast("AsyncGenerator[bytes, None]", response.aiter_bytes())
            async with aclosing(body_bytes) as body:
                async for data in body:
                    if not data:
                        continue
                    if record.first_byte_at is None:
                        record.first_byte_at = anyio.current_time()
                    # A WAV body starts with its header, which is not audio time.
                    audio_part = data[header_left:]
                    header_left = max(0, header_left - len(data))
                    offset = clock.seconds
                    duration = clock.advance(audio_part) if audio_part else 0.0
                    yield AudioChunk(
                        data, options.audio_format, options.sample_rate, None, offset, duration
                    )
        record.complete = True
