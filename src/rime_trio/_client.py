"""The public client: options, HTTP synthesis, and (in streaming mode) the socket pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import httpx

from ._errors import EmptyTextError, StreamClosed
from ._events import AudioChunk, WordTimestamp
from ._http import HttpSynthesizer
from ._options import AudioFormat, RimeOptions

__all__ = ["Capabilities", "RimeClient", "SynthesisResult"]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the current mode offers: incremental input, and word timestamps."""

    streaming: bool
    aligned_transcript: bool


@dataclass(frozen=True, slots=True)
class SynthesisResult:
    """The whole audio of one synthesis."""

    audio: bytes
    audio_format: AudioFormat
    sample_rate: int
    duration: float
    word_timestamps: tuple[WordTimestamp, ...] = field(default=())

    def __repr__(self) -> str:
        return (
            f"SynthesisResult({len(self.audio)} bytes {self.audio_format}@{self.sample_rate}, "
            f"{self.duration:.3f}s, {len(self.word_timestamps)} words)"
        )


class RimeClient:
    """A Rime TTS client for Trio (and AnyIO on the trio backend).

    Use it as an async context manager; it owns the HTTP connection pool and, in streaming
    mode, the WebSocket pool and the tasks that keep those sockets alive::

        async with RimeClient(base_url="ws://127.0.0.1:8080", api_key=...) as client:
            result = await client.synthesize("Hello.")

    Options are given either as a :class:`RimeOptions` or as keyword arguments (or both:
    keywords override). ``http_client`` lets an application share its own
    ``httpx.AsyncClient`` (the client then does not close it).

    :raises ConfigurationError: for invalid options.
    """

    def __init__(
        self,
        options: RimeOptions | None = None,
        *,
        http_client: httpx.AsyncClient | None = None,
        timeout: float = 30.0,
        **option_fields: Any,
    ) -> None:
        if options is None:
            options = RimeOptions(**option_fields)
        elif option_fields:
            options = options.replace(**option_fields)
        self._options = options
        self._timeout = timeout
        self._http_client = http_client
        self._http: HttpSynthesizer | None = None
        self._exit_stack: AsyncExitStack | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._exit_stack else "not started"
        mode = "streaming" if self._options.streaming else "http"
        return f"<RimeClient {mode} {self._options.endpoint} {state}>"

    @property
    def options(self) -> RimeOptions:
        return self._options

    @property
    def capabilities(self) -> Capabilities:
        streaming = self._options.streaming
        return Capabilities(streaming=streaming, aligned_transcript=streaming)

    def update_options(self, **changes: Any) -> RimeOptions:
        """Apply *changes* to the client's options and return the new options.

        :raises ConfigurationError: if the result is invalid (the old options stay).
        """
        self._options = self._options.replace(**changes)
        return self._options

    # ----------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Self:
        if self._closed:
            raise StreamClosed("this RimeClient has been closed")
        if self._exit_stack is not None:
            raise RuntimeError("RimeClient is already entered")
        stack = AsyncExitStack()
        self._http = HttpSynthesizer(self._http_client, timeout=self._timeout)
        stack.push_async_callback(self._http.aclose)
        self._exit_stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection. Safe to call twice and under cancellation."""
        self._closed = True
        stack, self._exit_stack = self._exit_stack, None
        if stack is not None:
            await stack.aclose()

    def _require_open(self) -> HttpSynthesizer:
        if self._closed:
            raise StreamClosed("this RimeClient has been closed")
        if self._http is None or self._exit_stack is None:
            raise StreamClosed("use the client inside `async with RimeClient(...) as client:`")
        return self._http

    def _options_for(self, overrides: dict[str, Any]) -> RimeOptions:
        return self._options.replace(**overrides) if overrides else self._options

    # ----------------------------------------------------------------- synthesis

    async def synthesize(self, text: str, **overrides: Any) -> SynthesisResult:
        """Synthesize *text* and return all of its audio.

        Option keywords override the client's options for this call only.

        :raises EmptyTextError: if *text* is empty or whitespace.
        :raises ConfigurationError: for invalid overrides.
        :raises APIStatusError: when the server refuses (status code and message kept).
        :raises RimeConnectionError: when the connection fails.
        :raises RimeTimeoutError: when the server does not answer in time.
        """
        options = self._options_for(overrides)
        audio = bytearray()
        duration = 0.0
        async with self.synthesize_chunks(text, options=options) as chunks:
            async for chunk in chunks:
                audio += chunk.data
                duration += chunk.duration
        return SynthesisResult(bytes(audio), options.audio_format, options.sample_rate, duration)

    @asynccontextmanager
    async def synthesize_chunks(
        self, text: str, *, options: RimeOptions | None = None, **overrides: Any
    ) -> AsyncIterator[AsyncIterator[AudioChunk]]:
        """Synthesize *text*, yielding audio chunks as they arrive (earliest first audio)::

            async with client.synthesize_chunks("Hello.") as chunks:
                async for chunk in chunks:
                    play(chunk.data)

        :raises EmptyTextError: if *text* is empty or whitespace.
        :raises APIStatusError, RimeConnectionError, RimeTimeoutError: as :meth:`synthesize`.
        """
        http = self._require_open()
        if not text or not text.strip():
            raise EmptyTextError("nothing to synthesize: the text is empty")
        options = options or self._options_for(overrides)
        if options.streaming:
            raise NotImplementedError("streaming (ws://, wss://) is not supported yet")
        async with http.stream(options, text) as chunks:
            yield chunks
