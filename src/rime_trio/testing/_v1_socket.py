"""One accepted v1 socket (``/ws``) of the emulator: the I/O around :class:`V1ServerModel`.

A reader task decodes client envelopes into the model; a speaker task asks the model what to
send next (it decides order, interleaving and pacing), sends it in the connection's encoding and
applies the armed faults. Written against AnyIO, so it runs under trio and asyncio alike.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from rime_api import text_to_speech_pb2 as tts

from .._errors import ProtocolError
from .._protocol_v1 import Encoding, Frame, decode_request, encode_message
from ._asgi_socket import AsgiSocket, Receive, Send
from ._config import EmulatorConfig, EmulatorStats
from ._faults import GARBAGE_TEXT, chunk_sizes
from ._v1_model import Close, Outgoing, V1ServerModel, Wait

__all__ = ["V1Socket"]

# Close code for a frame that is not an envelope: the one failure the docs call unrecoverable
# besides authentication (1007: invalid frame payload data).
_UNDECODABLE_CLOSE = 1007


class V1Socket(AsgiSocket):
    """One accepted v1 socket over ASGI *receive* / *send*, answering in *encoding*.

    *drop_tcp* resets this socket's TCP connection without a close frame (``drop`` faults).
    *authenticated* False: the handshake carried no Authorization, so the first message must be
    ``config.authorization`` (the browser's way), else ``unauthenticated`` and the close.
    The readings are fixed when the socket opens; faults are read live. The faults that apply
    on v1: ``close``, ``idle_close``, ``drop``, ``stall`` and ``garbage`` (at a context's
    chunk number ``after_chunks``), ``error_event`` (every context ends in an ``error``
    instead of audio), ``missing_done``, ``extra_done``, ``odd_chunks`` and
    ``foreign_audio`` (a chunk for a context the client never started, before each
    context's first audio).
    """

    def __init__(
        self,
        config: EmulatorConfig,
        stats: EmulatorStats,
        index: int,
        encoding: Encoding,
        receive: Receive,
        send: Send,
        drop_tcp: Callable[[], None],
        *,
        authenticated: bool = True,
    ) -> None:
        super().__init__(config, stats, index, receive, send, drop_tcp)
        self.encoding: Encoding = encoding
        self.model = V1ServerModel(
            config.v1_readings,
            chunk_sizes=self._chunk_sizes,
            max_text_chars=config.max_text_chars,
            real_time_factor=config.real_time_factor,
            time_to_first_chunk=config.time_to_first_chunk,
            records=stats.runs[index],
            connection=index,
            api_key=None if authenticated else config.api_key,
            speakers=None
            if config.unknown_speaker == "accept"
            else frozenset(
                s for langs in config.voices.values() for ss in langs.values() for s in ss
            ),
        )
        self._records_seen = 0
        self._chunks: dict[str, int] = {}  # audio chunks sent per context id (for faults)

    def _chunk_sizes(self, total: int) -> list[int]:
        odd = self._fault("odd_chunks") is not None
        return chunk_sizes(total, self.config.chunk_bytes, odd=odd)

    async def _send_response(self, response: tts.WebSocketResponse) -> None:
        frame = encode_message(response, self.encoding)
        if isinstance(frame, bytes):
            message = {"type": "websocket.send", "bytes": frame}
        else:
            message = {"type": "websocket.send", "text": frame}
        await self._send_message(message)

    # ----------------------------------------------------------------- reading

    async def _read(self) -> None:
        if await self._maybe_close():
            return
        idle = self._fault("idle_close")
        while (message := await self._next_message(idle)) is not None:
            # Client frames are decoded by their type: text is JSON, binary is protobuf.
            text = message.get("text")
            frame: Frame = text if text is not None else message.get("bytes") or b""
            try:
                request = decode_request(frame)
            except ProtocolError as exc:
                # Unrecoverable by the docs: say why (no context id), then close.
                error = tts.WebSocketError(kind="invalid_input", message=str(exc))
                await self._send_response(tts.WebSocketResponse(error=error))
                await self._hang_up(_UNDECODABLE_CLOSE, "undecodable frame")
                return
            self.stats.received[self.index].append(request)
            self._messages += 1
            if await self._maybe_close():
                return
            self.model.receive(request, anyio.current_time())
            failing = self._fault("error_event")
            # An accepted context (its started is queued) then fails, as a synthesis failing
            # inside the engine would: its one terminal event is this error, with no audio.
            if (
                failing is not None
                and request.HasField("start")
                and request.context_id in self.model.open_contexts
            ):
                self.model.fail(request.context_id, "internal", failing.body)
            self._note_runs()
            self._changed.set()

    def _note_runs(self) -> None:
        """Record the texts of runs the model took on since the last look."""
        records = self.stats.runs[self.index]
        for record in records[self._records_seen :]:
            self.stats.texts[record.context_id].append(record.text)
        self._records_seen = len(records)

    # ----------------------------------------------------------------- speaking

    async def _speak(self) -> None:
        while True:
            # A fresh event before asking: a request that lands after next_event() returned
            # sets it, so no wake-up is lost (nothing awaits in between).
            self._changed = anyio.Event()
            item = self.model.next_event(anyio.current_time())
            if item is None:
                await self._changed.wait()
            elif isinstance(item, Wait):
                with anyio.move_on_at(item.until):
                    await self._changed.wait()
            elif isinstance(item, Close):
                await self._hang_up(item.code, item.reason)
                return
            else:
                await self._send_item(item)

    async def _send_item(self, item: Outgoing) -> None:
        response = item.response
        kind = item.kind
        if kind == "audio":
            await self._before_chunk(response.context_id)
        elif kind == "done":
            if self._fault("missing_done") is not None:
                return
            if self._fault("extra_done") is not None:
                await self._send_response(response)
        await self._send_response(response)
        if kind == "audio":
            self.stats.audio[response.context_id] += response.audio
            if item.record is not None:
                item.record.audio += response.audio
        elif kind in ("done", "cancelled", "error"):
            self._chunks.pop(response.context_id, None)  # the id may start a new context

    async def _before_chunk(self, context_id: str) -> None:
        """Apply the faults armed at this chunk of the context's audio."""
        number = self._chunks.get(context_id, 0)
        self._chunks[context_id] = number + 1
        if number == 0 and self._fault("foreign_audio") is not None:
            stale = tts.WebSocketResponse(context_id=f"stale-{self.index}", audio=b"\x11\x22" * 160)
            await self._send_response(stale)
        drop = self._fault("drop")
        if drop is not None and number == drop.after_chunks:
            self._drop_tcp()
            self._closed = True  # nothing more goes out on this connection
            self._end()
            await anyio.sleep_forever()  # cancelled at once by _end()
        stall = self._fault("stall")
        if stall is not None and number == stall.after_chunks:
            await anyio.sleep(stall.seconds)
        garbage = self._fault("garbage")
        if garbage is not None and number == garbage.after_chunks:
            await self._send_message(
                {"type": "websocket.send", "text": GARBAGE_TEXT + garbage.body}
            )
