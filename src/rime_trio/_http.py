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
from ._channel import ChannelReceiver, ChannelSender, create_channel
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
    StreamClosed,
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
        in *record* when the first byte came, the audio delivered, and a complete body.

        A task reads each body into a channel, and the iterator only takes from those: a
        read that is cancelled (``asyncio.timeout``, ``wait_for``, ``Task.cancel``, any
        cancel scope) takes nothing, and the next one goes on with the very next chunk (see
        :class:`_Audio`). Leaving the block stops the tasks and closes their responses.

        A text longer than one request takes (:data:`MAX_TEXT_CHARS`) is cut at sentence
        ends into requests within the limit, sent one ahead of the audio being delivered,
        their audio delivered in order on one clock (raw ``pcm`` and ``mulaw`` only: the
        pieces of those join exactly).

        :raises InvalidTextError: for text UTF-8 cannot carry (a lone surrogate), before
            anything is sent.
        :raises ConfigurationError: for a long text in ``wav`` or ``mp3`` (each body of
            those has a header or frames of its own, so the pieces would not join).
        :raises APIStatusError: when the server answers with a status other than 2xx
            (redirects included: they are not followed); for a text of one request, on
            entering the block.
        :raises ProtocolError: when a ``pcm`` or ``wav`` body ends in half a sample.
        :raises RimeConnectionError: when the connection fails.
        :raises RimeTimeoutError: when the server is too slow.
        """
        # Here, not where the body is encoded: that would raise a bare UnicodeEncodeError,
        # and for a long text only after the pieces before the surrogate had been spoken.
        check_text(text)
        limit = text_limit(options.model)
        if len(text) > limit and options.audio_format not in _JOINABLE_FORMATS:
            raise ConfigurationError(
                f"the text has {len(text):,} characters and one HTTP request takes at most "
                f"{limit:,} ({options.model}); the pieces of longer text are joined only in "
                f"raw audio, and {options.audio_format} bodies do not join: use "
                "audio_format='pcm' "
                "(rime_trio.write_wav adds a WAV header) or 'mulaw', or client.stream()"
            )
        audio: _Audio | None = None
        try:
            async with AsyncExitStack() as stack:
                response: httpx.Response | None = None
                if len(text) <= limit:
                    # Sent before the block runs, so that a refusal is raised on entering it.
                    # Closed after the task group below has ended: its task reads the body.
                    response = await stack.enter_async_context(self._request(options, text))
                    pieces = [text]
                else:
                    # A piece of whitespace only (after a cut at the limit) has no audio, and
                    # a server refuses an empty text: it is not a request.
                    pieces = http_pieces(text, options.model)
                # Leaving the block cancels the tasks still reading: their audio is not wanted.
                task_group = await stack.enter_async_context(open_task_group())
                audio = _Audio(self, options, pieces, record, task_group)
                audio.start(response)
                yield audio
        finally:
            if audio is not None:
                audio.close()  # after the tasks have ended: none may write to a closed channel

    @asynccontextmanager
    async def _request(self, options: RimeOptions, text: str) -> AsyncIterator[httpx.Response]:
        """Send one request of at most :data:`MAX_TEXT_CHARS` characters (see :meth:`stream`);
        yield its response once the status says audio follows (read it with :meth:`_chunks`).

        :raises APIStatusError: when the server answers with a status other than 2xx.
        :raises RimeConnectionError, RimeTimeoutError: when the request fails or the
            server does not answer in time.
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
            yield response

    async def _chunks(
        self, response: httpx.Response, options: RimeOptions, record: SynthesisRecord
    ) -> AsyncGenerator[AudioChunk, None]:
        """The body's audio as it arrives, each chunk whole samples.

        :raises ProtocolError: when a ``pcm`` or ``wav`` body ends in half a sample (after
            every whole sample before it was yielded).
        :raises RimeConnectionError, RimeTimeoutError: when the body cannot be read.
        """
        clock = AudioClock(options.audio_format, options.sample_rate)
        record.clock = clock  # the piece's audio read so far: nothing to write per chunk
        header_left = _WAV_HEADER_BYTES if options.audio_format == "wav" else 0
        timed = options.audio_format not in _UNTIMED_FORMATS
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
                    duration = clock.advance(audio_part) if audio_part and timed else 0.0
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
    """The most characters one HTTP request may carry for *model*: :data:`MAX_TEXT_CHARS`
    (1,000) for every model. Rime's pages say 1,000 for each (api-reference/coda/http.mdx,
    api-reference/mistv3/http.mdx, api-reference/mistv2/http.mdx) and answer more with
    400 ``text is too long`` (docs/errors.mdx); no source gives a lower limit."""
    del model  # the same for all: kept so that a model with its own limit needs no new API
    return MAX_TEXT_CHARS


_FIRST_PIECE_CHARS: Final = 200
# Raw audio joins byte for byte; a WAV body has a header of its own, and mp3 frames carry
# encoder delay and padding (and perhaps tags) per body.
_JOINABLE_FORMATS: Final = frozenset({"pcm", "mulaw"})
# Opus in an Ogg or WebM container: the client does not parse the container, so its chunks
# carry no duration (0.0; offsets stay 0). Their bytes are the whole file, in order.
_UNTIMED_FORMATS: Final = frozenset({"ogg_opus", "webm_opus"})
_PieceItem = AudioChunk | RimeError | None  # None: the piece's audio is complete
# Chunks of a one-request body read ahead of a caller slower than the body, at most: then
# the reading task waits, and so do the server's writes, as when the caller read the body.
_BODY_BUFFER: Final = 16


class _Audio(AsyncIterator[AudioChunk]):
    """The audio of one request, or of several in order on one clock, as tasks read it.

    Each request has a task that reads its body into a channel of its own (see
    :mod:`._channel`), and :meth:`__anext__` only takes from those channels, in order. A
    channel's ``receive()`` cancelled, on any backend and by any mechanism, has taken
    nothing, so neither has a cancelled ``__anext__``: the next one goes on with the very
    next chunk, and a caller who times reads out gets the same audio as one who does not.

    One request (a short text) was sent before: :meth:`start` gets its response, and its
    channel holds at most :data:`_BODY_BUFFER` chunks (the reading task waits for room). For
    several, piece *i* is requested once the caller reads piece *i - 1* (the first two at
    once), so the next piece's audio is on its way while the current one plays; their
    channels are unbounded, and at most two pieces' audio is held in memory (a piece is at
    most :data:`MAX_TEXT_CHARS` characters). A piece's failure is raised when the caller
    reaches it, after all the audio before it, and again on every later read.
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
        self._pieces = pieces
        self._record = record
        self._task_group = task_group
        buffer = _BODY_BUFFER if len(pieces) == 1 else math.inf
        self._channels: list[tuple[ChannelSender[_PieceItem], ChannelReceiver[_PieceItem]]]
        self._channels = [create_channel(buffer) for _ in pieces]
        self._records = [SynthesisRecord(options, len(piece), 0.0) for piece in pieces]
        self._index = 0
        self._failure: RimeError | None = None
        self._base = 0.0  # audio seconds of the pieces already delivered
        self._last_end = 0.0
        self._clock = record.clock = AudioClock(options.audio_format, options.sample_rate)

    def start(self, response: httpx.Response | None) -> None:
        """Start reading: the body of *response* (the one request, sent already), or else
        the first two requests."""
        if response is not None:
            self._task_group.start_soon(self._read, 0, response)
            return
        for index in range(min(2, len(self._pieces))):
            self._task_group.start_soon(self._fetch, index)

    def close(self) -> None:
        """Let go of every piece's channel (once the tasks have ended): a read after this
        raises :class:`StreamClosed`, unless the audio was complete or failed."""
        for send, receive in self._channels:
            send.close()
            receive.close()

    async def _fetch(self, index: int) -> None:
        """Request piece *index* and read its audio (see :meth:`_read`)."""
        try:
            async with self._http._request(self._options, self._pieces[index]) as response:
                await self._read(index, response)
        except RimeError as exc:  # refused, or no connection: before any audio
            with self._channels[index][0] as send:
                await send.send(exc)

    async def _read(self, index: int, response: httpx.Response) -> None:
        """Read piece *index*'s body into its channel, chunk by chunk (waiting for room),
        then ``None`` (the audio is complete) or the failure that ended it."""
        with self._channels[index][0] as send:
            chunks = self._http._chunks(response, self._options, self._records[index])
            try:
                async with aclosing(chunks):
                    async for chunk in chunks:
                        await send.send(chunk)
            except RimeError as exc:
                await send.send(exc)
            else:
                await send.send(None)

    async def __anext__(self) -> AudioChunk:
        """The next chunk of the audio. Safe to cancel: a cancelled call has taken nothing.

        :raises StopAsyncIteration: after the last piece's audio.
        :raises RimeError: where a piece failed, once the audio before it was delivered.
        :raises StreamClosed: when the synthesis block was left before the audio's end.
        """
        if self._failure is not None:
            raise self._failure  # again: the audio cannot go on past a failed piece
        while self._index < len(self._pieces):
            index = self._index
            try:
                # The only await: everything below runs at once with what it took.
                item = await self._channels[index][1].receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                if self._index != index:
                    continue  # a reader in another task took the end of that piece
                raise StreamClosed("the synthesis was left before the end of its audio") from None
            if isinstance(item, AudioChunk):
                record = self._record
                if record.first_byte_at is None:
                    record.first_byte_at = self._records[index].first_byte_at
                self._last_end = item.offset + item.duration
                self._clock.seconds = self._base + self._last_end
                if self._base:
                    item = dataclasses.replace(item, offset=self._base + item.offset)
                return item
            if item is not None:
                self._failure = item
                raise item
            self._channels[index][1].close()
            self._index += 1
            self._base += self._last_end
            self._last_end = 0.0
            if self._index + 1 < len(self._pieces):
                self._task_group.start_soon(self._fetch, self._index + 1)
        self._record.complete = True
        raise StopAsyncIteration
