"""A server that never sends ``done`` (the emulator's ``missing_done``) changes nothing: a
caller who pauses between sentences once their audio has come is not timed out."""

from __future__ import annotations

import anyio
import pytest
import trio.testing

from rime_trio import AudioChunk, RimeClient, StreamSettings
from rime_trio.testing import EmulatorConfig, Fault, open_emulator, render_speech

from .conftest import API_KEY
from .speech import read_all

pytestmark = pytest.mark.anyio

RATE = 8000


# On trio, virtual time that jumps only after 50 ms of real idleness (loopback I/O is real);
# on asyncio, real time with a short timeout. Either way the pause is three timeouts long.
@pytest.mark.virtual_clock(autojump_threshold=0.05)
@pytest.mark.parametrize("segment", ["bySentence", "never", "immediate"])
async def test_a_pause_after_the_audio_is_no_timeout_when_the_server_sends_no_done(
    virtual_clock: trio.testing.MockClock | None, segment: str
) -> None:
    unit = 1.0 if virtual_clock is not None else 0.4
    settings = StreamSettings(audio_timeout=unit, retries=0)
    # The space after the first sentence shows that it ended (a "." alone may go on).
    first, second = "The first sentence. ", "And the second one."
    async with (
        open_emulator(EmulatorConfig(faults=[Fault("missing_done")])) as emulator,
        RimeClient(
            base_url=emulator.ws_url,
            api_key=API_KEY,
            sample_rate=RATE,
            segment=segment,
            stream_settings=settings,
        ) as client,
    ):
        async with client.stream() as stream:
            await stream.push_text(first)
            if segment == "never":
                await stream.flush()
            expected = len(render_speech(first, RATE).pcm)
            head = bytearray()
            with anyio.fail_after(30):  # a hang guard only
                while len(head) < expected:
                    event = await stream.receive()
                    if isinstance(event, AudioChunk):
                        head += event.data
            await anyio.sleep(3 * unit)  # the caller thinks; no done came, yet nothing is owed
            await stream.push_text(second)
            await stream.end_input()
            with anyio.fail_after(30):
                tail, _ = await read_all(stream)
    assert bytes(head) == render_speech(first, RATE).pcm
    assert tail == render_speech(second, RATE).pcm
    assert len(emulator.stats.received) == 1  # all on one socket (retries=0 anyway)
