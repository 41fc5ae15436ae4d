"""One accepted ``/ws3`` socket of the emulator: the I/O around :class:`Ws3ServerModel`.

A reader task decodes client frames into the model; a speaker task asks the model what to
synthesize, renders and paces the audio, sends the frames and applies the armed faults. What
the server decides (runs, tags, dones, close) is the model's; this module only carries it out.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from .._errors import ProtocolError
from .._options import RimeOptions
from .._protocol import (
    AudioEvent,
    DoneEvent,
    EndOfStream,
    ErrorEvent,
    ServerEvent,
    TextMessage,
    decode_client_message,
    encode_server_event,
)
from ._asgi_socket import AsgiSocket, Receive, Send
from ._config import EmulatorConfig, EmulatorStats, RunRecord
from ._faults import GARBAGE_TEXT, chunk_sizes
from ._synth import encode_audio, render_speech
from ._ws3_model import CloseAction, Run, Ws3ServerModel, run_events

__all__ = ["Pacer", "Ws3Socket"]


class Pacer:
    """Paces a run's audio at ``real_time_factor`` (0: as fast as possible)."""

    def __init__(self, real_time_factor: float, total_bytes: int, seconds: float) -> None:
        self._factor = real_time_factor
        self._seconds_per_byte = seconds / total_bytes if total_bytes else 0.0
        self._start = anyio.current_time()

    async def sent(self, total_sent: int) -> None:
        """Wait until *total_sent* bytes are due."""
        if self._factor > 0:
            due = self._start + total_sent * self._seconds_per_byte * self._factor
            await anyio.sleep_until(due)


class Ws3Socket(AsgiSocket):
    """One accepted ``/ws3`` socket over ASGI *receive* / *send*: a reader and a speaker task.

    *drop_tcp* resets this socket's TCP connection without a close frame (``drop`` faults).
    The readings are fixed when the socket opens; faults are read live, so a test can arm one
    at an exact point of a conversation.
    """

    def __init__(
        self,
        config: EmulatorConfig,
        stats: EmulatorStats,
        index: int,
        options: RimeOptions,
        receive: Receive,
        send: Send,
        drop_tcp: Callable[[], None],
    ) -> None:
        super().__init__(config, stats, index, receive, send, drop_tcp)
        self.options = options
        self.model = Ws3ServerModel(options.segment, config.readings)

    async def _send_frame(self, frame: str) -> None:
        await self._send_message({"type": "websocket.send", "text": frame})

    # ----------------------------------------------------------------- reading

    async def _read(self) -> None:
        if await self._maybe_close():
            return
        idle = self._fault("idle_close")
        while (message := await self._next_message(idle)) is not None:
            frame = message.get("text") or message.get("bytes") or b""
            try:
                client_message = decode_client_message(frame)
            except ProtocolError as exc:
                await self._send_frame(encode_server_event(ErrorEvent(str(exc))))
                continue
            self.stats.received[self.index].append(client_message)
            self._messages += 1
            if await self._maybe_close():
                return
            if (
                isinstance(client_message, TextMessage)
                and len(client_message.text) > self.config.max_text_chars
            ):
                await self._hang_up(1011, "400: text is too long")
                return
            self.model.receive(client_message)
            self._changed.set()
            if isinstance(client_message, EndOfStream):
                # After eos the server takes no more text and closes once the audio is out,
                # but it still notices a client that goes away first.
                while (await self._receive())["type"] != "websocket.disconnect":
                    pass
                self._end()
                return

    # ----------------------------------------------------------------- speaking

    async def _speak(self) -> None:
        while True:
            # A fresh event before asking: a message that lands after next_action() returned
            # None sets it, so no wake-up is lost (nothing awaits in between).
            self._changed = anyio.Event()
            action = self.model.next_action()
            if action is None:
                await self._changed.wait()
            elif isinstance(action, CloseAction):
                if self._fault("no_close") is not None:
                    await anyio.sleep_forever()  # the client's watchdog must notice
                await self._hang_up(action.code, action.reason)
                return
            else:
                record = RunRecord(action.text, action.context_id)
                self.stats.runs[self.index].append(record)
                answered = await self._speak_run(action, record)
                record.abandoned = self.model.is_abandoned(action)
                dones = self.model.finish_run(action)
                if answered:
                    await self._send_dones(dones, record)

    async def _speak_run(self, run: Run, record: RunRecord) -> bool:
        """Send *run*'s audio and timestamps; False when a fault replaced them (no done)."""
        if run.empty:
            return True
        config = self.config
        options = self.options
        speech = render_speech(run.text, options.sample_rate)
        audio = encode_audio(speech.pcm, options.audio_format, options.sample_rate)
        self.stats.texts[run.context_id].append(run.text)
        if config.time_to_first_chunk > 0:
            await anyio.sleep(config.time_to_first_chunk)
        error = self._fault("error_event")
        if error is not None:
            await self._send_frame(encode_server_event(ErrorEvent(error.body)))
            return False
        if not config.knows_speaker(options.model, options.speaker):
            # The "error_event" reading of an unknown speaker (with "reject" the handshake
            # already failed): the socket opened, its synthesis cannot.
            message = f"speaker {options.speaker!r} is not a voice of model {options.model!r}"
            await self._send_frame(encode_server_event(ErrorEvent(message)))
            return False
        if self._fault("foreign_audio") is not None:
            stale = AudioEvent(b"\x11\x22" * 160, f"stale-{self.index}#1")
            await self._send_frame(encode_server_event(stale))
        sizes = chunk_sizes(
            len(audio), config.chunk_bytes, odd=self._fault("odd_chunks") is not None
        )
        events = run_events(run, speech, audio, sizes, self.model.readings.timestamps)
        await self._send_run_events(
            run, record, events, Pacer(config.real_time_factor, len(audio), speech.duration)
        )
        return True

    async def _send_run_events(
        self, run: Run, record: RunRecord, events: list[ServerEvent], pacer: Pacer
    ) -> None:
        """Send a run's events, paced, with ``drop`` / ``stall`` faults at their chunk; stop
        when a clear abandons the run."""
        stall = self._fault("stall")
        drop = self._fault("drop")
        garbage = self._fault("garbage")
        number = sent = 0  # chunks and bytes sent
        for event in events:
            if isinstance(event, AudioEvent):
                if drop is not None and number == drop.after_chunks:
                    self._drop_tcp()
                    self._closed = True  # nothing more goes out on this connection
                    self._end()
                    await anyio.sleep_forever()  # cancelled at once by _end()
                if stall is not None and number == stall.after_chunks:
                    await anyio.sleep(stall.seconds)
                if garbage is not None and number == garbage.after_chunks:
                    await self._send_frame(GARBAGE_TEXT + garbage.body)
            if self.model.is_abandoned(run):
                return  # cleared: the model sends no done for it
            await self._send_frame(encode_server_event(event))
            if isinstance(event, AudioEvent):
                record.audio += event.data
                self.stats.audio[run.context_id] += event.data
                number += 1
                sent += len(event.data)
                await pacer.sent(sent)

    async def _send_dones(self, dones: list[ServerEvent], record: RunRecord) -> None:
        if self._fault("missing_done") is not None:
            return
        copies = 2 if self._fault("extra_done") is not None else 1
        for done in dones:
            assert isinstance(done, DoneEvent)
            for _ in range(copies):
                await self._send_frame(encode_server_event(done))
            record.done = True
