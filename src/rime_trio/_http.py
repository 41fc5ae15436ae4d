"""HTTP synthesis over ``/v1/rime-tts`` with one shared ``httpx.AsyncClient``.

The only module that touches httpx; its exceptions are mapped to the RimeError tree here.
"""

from __future__ import annotations

import dataclasses
import math
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import AsyncExitStack, aclosing, asynccontextmanager, contextmanager
from typing import Final, cast

import anyio
import httpx

from ._audio import AudioClock
from ._concurrency import TaskGroup, open_task_group
from ._errors import (
    APIStatusError,
    ConfigurationError,
    ConnectError,
    ConnectionLost,
    ProtocolError,
    RimeConnectionError,
    RimeError,
    RimeTimeoutError,
    redact,
    server_name,
)
from ._events import AudioChunk
from ._metrics import SynthesisRecord
from ._options import RimeOptions, accept_header, http_body
from ._segment import MAX_TEXT_CHARS, sentence_ends, split_text
from ._text import check_text
from ._voices import Voice, parse_voices

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


def status_error(response: httpx.Response, url: str, api_key: str | None) -> APIStatusError:
    """The error for *response* (to a request to *url*), whose status is not 2xx and whose
    body has been read: the server's explanation, or for a redirect where it points."""
    status = response.status_code
    if 300 <= status < 400:
        location = response.headers.get("location")
        where = f"to {location}" if location else "without a Location"
        # The page a redirect carries only repeats that; where it points is what matters.
        message = (
            f"{response.reason_phrase or 'redirect'} {where}; redirects are not followed "
            "(the request carries the API key): if the service has moved, set base_url "
            "to its new address"
        )
    else:
        message = response.text.strip() or response.reason_phrase or "(no explanation)"
    return APIStatusError(status, redact(message, api_key), server=server_name(url))


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

    async def voices(self, url: str, *, model: str | None = None) -> list[Voice]:
        """Read the voice list at *url* (public: no key is sent).

        :raises APIStatusError: when the server answers with a non-2xx status.
        :raises ProtocolError: when the answer is not a voice list.
        :raises RimeConnectionError, RimeTimeoutError: as for synthesis.
        """
        with map_http_errors(None):
            response = await self._client.get(url, headers={"Accept": "application/json"})
        if not response.is_success:
            raise status_error(response, url, None)
        try:
            document = response.json()
        except ValueError:
            raise ProtocolError(f"{url} did not answer with JSON") from None
        return parse_voices(document, model=model)

    @asynccontextmanager
    async def stream(
        self, options: RimeOptions, text: str, record: SynthesisRecord
    ) -> AsyncIterator[AsyncIterator[AudioChunk]]:
        """Synthesize *text*; yield an iterator over its audio as the body arrives, noting
        in *record* when the first byte came, the audio's duration, and a complete body.

        A text longer than one request takes (:data:`MAX_TEXT_CHARS`) is cut at sentence
        ends into requests within the limit, sent one ahead of the audio being delivered,
        their audio delivered in order on one clock (raw ``pcm`` and ``mulaw`` only: the
        pieces of those join exactly).

        :raises InvalidTextError: for text UTF-8 cannot carry (a lone surrogate), before
            anything is sent.
        :raises ConfigurationError: for a long text in ``wav`` or ``mp3`` (each body of
            those has a header or frames of its own, so the pieces would not join).
        :raises APIStatusError: when the server answers with a status other than 2xx
            (redirects included: they are not followed).
        :raises ProtocolError: when a ``pcm`` or ``wav`` body ends in half a sample.
        :raises RimeConnectionError: when the connection fails.
        :raises RimeTimeoutError: when the server is too slow.
        """
        # Here, not where the body is encoded: that would raise a bare UnicodeEncodeError,
        # and for a long text only after the pieces before the surrogate had been spoken.
        check_text(text)
        limit = text_limit(options.model)
        if len(text) <= limit:
            async with self._request(options, text, record) as chunks:
                yield chunks
            return
        if options.audio_format not in _JOINABLE_FORMATS:
            raise ConfigurationError(
                f"the text has {len(text):,} characters and one HTTP request takes at most "
                f"{limit:,} ({options.model}); the pieces of longer text are joined only in "
                f"raw audio, and {options.audio_format} bodies do not join: use "
                "audio_format='pcm' "
                "(rime_trio.write_wav adds a WAV header) or 'mulaw', or client.stream()"
            )
        # A piece of whitespace only (after a cut at the limit) has no audio, and a server
        # refuses an empty text: it is not a request.
        pieces = http_pieces(text, options.model)
        joined: _JoinedPieces | None = None
        try:
            # Leaving the block cancels the requests still running: they are not wanted.
            async with open_task_group() as task_group:
                joined = _JoinedPieces(self, options, pieces, record, task_group)
                yield joined
        finally:
            if joined is not None:
                joined.close()  # after the tasks have ended: none may write to a closed queue

    @asynccontextmanager
    async def _request(
        self, options: RimeOptions, text: str, record: SynthesisRecord
    ) -> AsyncIterator[AsyncIterator[AudioChunk]]:
        """One request of at most :data:`MAX_TEXT_CHARS` characters (see :meth:`stream`).

        :raises APIStatusError: when the server answers with a status other than 2xx.
        :raises RimeConnectionError, RimeTimeoutError: as :meth:`stream` (the body's audio
            raises those and :class:`ProtocolError` as it is read).
        """
        key = options.api_key
        headers = {
            "Authorization": f"Bearer {key}",
            "Accept": accept_header(options.audio_format),
        }
        async with AsyncExitStack() as stack:
            # Only the request is inside the boundary: the caller's block runs at the yield,
            # and its own errors (writing a file, say) must reach it as they are.
            with map_http_errors(key):
                response = await stack.enter_async_context(
                    self._client.stream(
                        "POST",
                        options.endpoint,
                        json=http_body(options, text),
                        headers=headers,
                        # Even on an injected client that follows them: a redirect would
                        # carry the request, key and all, to wherever the answer points.
                        follow_redirects=False,
                    )
                )
                # Only a 2xx body is audio: a redirect's or an odd status's is a page.
                if not response.is_success:
                    await response.aread()
                    raise status_error(response, options.endpoint, key)
            # Closed on exit, so a caller that stops early leaves no generator for the GC.
            # The body is read inside _chunks, behind the boundary of its own.
            yield await stack.enter_async_context(aclosing(self._chunks(response, options, record)))

    async def _chunks(
        self, response: httpx.Response, options: RimeOptions, record: SynthesisRecord
    ) -> AsyncGenerator[AudioChunk, None]:
        """The body's audio as it arrives, each chunk whole samples.

        :raises ProtocolError: when a ``pcm`` or ``wav`` body ends in half a sample (after
            every whole sample before it was yielded).
        :raises RimeConnectionError, RimeTimeoutError: when the body cannot be read.
        """
        clock = AudioClock(options.audio_format, options.sample_rate)
        record.clock = clock  # its seconds are the audio delivered: nothing to write per chunk
        header_left = _WAV_HEADER_BYTES if options.audio_format == "wav" else 0
        body_size = 0
        with map_http_errors(options.api_key):
            # aiter_bytes() is an async generator, typed more loosely by httpx.
            body_bytes = cast("AsyncGenerator[bytes, None]", response.aiter_bytes())
            async with aclosing(body_bytes) as body:
                async for read in body:
                    if not read:
                        continue
                    if record.first_byte_at is None:
                        record.first_byte_at = anyio.current_time()
                    body_size += len(read)
                    # Reads end anywhere (a chunked body's pieces, TCP segments), so a 16-bit
                    # sample can straddle two: the clock holds an odd byte back for the next
                    # read, and every chunk (and its offset) counts whole samples.
                    data = clock.align(read)
                    if not data:
                        continue
                    # A WAV body starts with its header, which is not audio time. Its size is
                    # even (RIFF pads every chunk to an even size), so samples after it are
                    # still aligned.
                    audio_part = data[header_left:]
                    header_left = max(0, header_left - len(data))
                    offset = clock.seconds
                    duration = clock.advance(audio_part) if audio_part else 0.0
                    yield AudioChunk(
                        data, options.audio_format, options.sample_rate, None, offset, duration
                    )
        if clock.take_carry():
            # Not yielded: a one-byte chunk is what numpy.frombuffer(data, "<i2") fails on,
            # and half a sample is no audio. A body cut short is a server's fault to report.
            raise ProtocolError(
                f"the {options.audio_format} body ended in half a 16-bit sample ({body_size:,} "
                "bytes, an odd number); every whole sample before it was delivered"
            )
        record.complete = True


def http_pieces(text: str, model: str) -> list[str]:
    """The requests *text* is cut into for *model* (itself, if it fits in one), each within
    :func:`text_limit`: at sentence ends wherever one fits, at a word boundary only where
    none does (see :func:`split_text`). The first is short where it can be (a server renders
    a request before its first byte, so a short first request brings the first audio as
    early as for a short text): see :func:`_first_piece`. Pieces of whitespace only are
    left out (no audio; a server refuses an empty text); joined, the pieces give back *text*
    but for those."""
    limit = text_limit(model)
    if len(text) <= limit:
        return [text]  # one request
    head = _first_piece(text, limit)
    pieces = [head, *split_text(text[len(head) :], limit)]
    return [piece for piece in pieces if piece.strip()]


def _first_piece(text: str, limit: int) -> str:
    """The first request of *text* (longer than *limit*): its whole sentences up to 200
    characters; else (a first sentence over 200) that sentence, when it fits in *limit*;
    else (no sentence end within *limit*) its words up to 200 characters. A sentence end
    takes the whitespace after it, as in :func:`split_text`."""
    short = min(limit, _FIRST_PIECE_CHARS)
    end = next(sentence_ends(text, limit), 0)
    if end <= short:
        return split_text(text, short)[0]  # its cut within 200 keeps every sentence there
    while end < limit and text[end].isspace():
        end += 1
    return text[:end]


def text_limit(model: str) -> int:
    """The most characters one HTTP request may carry for *model*. Rime's model pages say
    500 for the mist family and more for the others, where :data:`MAX_TEXT_CHARS` (1,000,
    what the emulator enforces) applies; cutting shorter than needed costs only requests."""
    return _MIST_TEXT_CHARS if model.startswith("mist") else MAX_TEXT_CHARS


_MIST_TEXT_CHARS: Final = 500
_FIRST_PIECE_CHARS: Final = 200
# Raw audio joins byte for byte; a WAV body has a header of its own, and mp3 frames carry
# encoder delay and padding (and perhaps tags) per body.
_JOINABLE_FORMATS: Final = frozenset({"pcm", "mulaw"})
_PieceItem = AudioChunk | RimeError | None  # None: the piece's audio is complete


class _JoinedPieces(AsyncIterator[AudioChunk]):
    """The audio of several requests, in order, on one clock.

    Piece *i* is requested once the caller reads piece *i - 1* (the first two at once), so
    the next piece's audio is on its way while the current one plays, and at most two
    pieces are held in memory. A piece's failure is raised when the caller reaches it,
    after all the audio before it.
    """

    def __init__(
        self,
        http: HttpSynthesizer,
        options: RimeOptions,
        pieces: list[str],
        record: SynthesisRecord,
        task_group: TaskGroup,
    ) -> None:
        self._http = http
        self._options = options
        self._record = record
        self._task_group = task_group
        self._queues = [anyio.create_memory_object_stream[_PieceItem](math.inf) for _ in pieces]
        self._pieces = pieces
        self._index = 0
        self._failure: RimeError | None = None
        self._base = 0.0  # audio seconds of the pieces already delivered
        self._last_end = 0.0
        self._clock = record.clock = AudioClock(options.audio_format, options.sample_rate)
        for index in range(min(2, len(pieces))):
            self._start(index)

    def close(self) -> None:
        """Let go of every piece's queue (the caller is done, or left early)."""
        for send, receive in self._queues:
            send.close()
            receive.close()

    def _start(self, index: int) -> None:
        self._task_group.start_soon(self._fetch, index, name=f"rime-trio HTTP piece {index}")

    async def _fetch(self, index: int) -> None:
        send, _ = self._queues[index]
        piece_record = SynthesisRecord(self._options, len(self._pieces[index]), 0.0)
        with send:
            try:
                async with self._http._request(
                    self._options, self._pieces[index], piece_record
                ) as chunks:
                    async for chunk in chunks:
                        send.send_nowait(chunk)
                send.send_nowait(None)
            except RimeError as exc:
                send.send_nowait(exc)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return  # the caller has left: nobody wants this piece

    async def __anext__(self) -> AudioChunk:
        """The next chunk of the joined audio.

        :raises StopAsyncIteration: after the last piece's audio.
        :raises RimeError: where a piece failed, once the audio before it was delivered.
        """
        if self._failure is not None:
            raise self._failure  # again: the joined audio cannot go on past a failed piece
        while self._index < len(self._pieces):
            _, receive = self._queues[self._index]
            item = await receive.receive()
            if isinstance(item, AudioChunk):
                record = self._record
                if record.first_byte_at is None:
                    record.first_byte_at = anyio.current_time()
                self._last_end = item.offset + item.duration
                self._clock.seconds = self._base + self._last_end
                return dataclasses.replace(item, offset=self._base + item.offset)
            if item is not None:
                self._failure = item
                raise item
            receive.close()
            self._index += 1
            self._base += self._last_end
            self._last_end = 0.0
            if self._index + 1 < len(self._pieces):
                self._start(self._index + 1)
        self._record.complete = True
        raise StopAsyncIteration
