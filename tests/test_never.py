"""``segment="never"`` (the default) over ``/ws3``: each sentence flushed as it is whole, the
stream ended by the ``done`` of its last flush, and its socket carrying the next stream.

Every reading the emulator plays for ``never`` (one ``done`` per flush, the docs; held flushes
coalesced; runs tagged by their last or first message) and the faults around ``done``
(missing, doubled): each stream gets exactly its own audio, never waits for a ``done`` that
does not come for longer than a quiet spell, and no stream sees another's audio.
"""

from __future__ import annotations

import anyio
import pytest

from rime_trio import RimeClient, SpeechStream, StreamSettings, WordTimestamp
from rime_trio._protocol import EndOfStream
from rime_trio.testing import (
    EmulatorConfig,
    Fault,
    RimeEmulator,
    Ws3Readings,
    open_emulator,
    render_speech,
)

from .speech import RATE, client_for, read_all, synthesized

pytestmark = pytest.mark.anyio

TEXTS = [
    "Hello there. Dr. Smith arrived at noon.",
    "A second utterance, on the same socket.",
    "And a third one. It has two sentences",
]
QUICK = StreamSettings(retries=2, retry_backoff=0.01, audio_timeout=2.0)
# A long audio timeout, a short probe: a stream that ends in time was saved by the probe.
PROBING = StreamSettings(retries=2, retry_backoff=0.01, audio_timeout=30, probe_timeout=0.5)


async def say(
    client: RimeClient, text: str, **overrides: object
) -> tuple[SpeechStream, bytes, list[WordTimestamp]]:
    """One stream saying *text* whole: the stream, its audio and its words."""
    async with client.stream(**overrides) as stream:
        await stream.push_text(text)
        await stream.end_input()
        with anyio.fail_after(20):
            audio, words = await read_all(stream)
    return stream, audio, words


async def speak_all(emulator: RimeEmulator, *, foreign_dones: bool = False) -> list[bytes]:
    """Speak TEXTS one after another on one client; check each got exactly the audio the
    emulator synthesized for it, and no event of another stream (but the doubled dones of
    the one before, with *foreign_dones*)."""
    audios = []
    async with client_for(emulator, stream_settings=QUICK) as client:
        for text in TEXTS:
            stream, audio, words = await say(client, text)
            assert audio == synthesized(emulator, stream)
            assert audio
            assert words
            assert stream.metrics.outcome == "completed"
            assert stream._state.foreign_events <= (1 if foreign_dones else 0)
            audios.append(audio)
    return audios


async def test_back_to_back_streams_share_one_socket_under_the_docs_reading() -> None:
    async with open_emulator(EmulatorConfig()) as emulator:
        await speak_all(emulator)
    # One socket for the three streams, and the spare opened after the first one's audio.
    assert emulator.stats.handshakes <= 2
    messages = [m for sent in emulator.stats.received.values() for m in sent]
    assert not any(isinstance(m, EndOfStream) for m in messages)  # no eos: no close


@pytest.mark.parametrize("never_flushes", ["each", "coalesce"])
@pytest.mark.parametrize("tagging", ["later", "per_sentence"])
@pytest.mark.parametrize("done", ["when_empty", "per_run"])
async def test_every_never_reading_gives_each_stream_exactly_its_audio(
    never_flushes: str, tagging: str, done: str
) -> None:
    readings = Ws3Readings(never_flushes=never_flushes, tagging=tagging, done=done)  # type: ignore[arg-type]
    async with open_emulator(EmulatorConfig(readings=readings)) as emulator:
        await speak_all(emulator)


@pytest.mark.parametrize("kind", ["missing_done", "extra_done"])
async def test_dones_missing_or_doubled_never_hang_or_lose_audio(kind: str) -> None:
    async with open_emulator(EmulatorConfig(faults=[Fault(kind)])) as emulator:  # type: ignore[arg-type]
        await speak_all(emulator, foreign_dones=kind == "extra_done")
    if kind == "missing_done":
        # The first stream gave up on its done (eos and the close); the next ones end that
        # way from the start: a socket each, and no wait.
        assert emulator.stats.handshakes >= len(TEXTS)


async def test_a_stream_that_leaves_early_never_hands_its_socket_on() -> None:
    """Audio still owed when a stream leaves: its socket is closed, and the next stream gets
    only its own audio (on another socket)."""
    config = EmulatorConfig(real_time_factor=0.5)
    async with open_emulator(config) as emulator:
        async with client_for(emulator, stream_settings=QUICK) as client:
            async with client.stream() as left:
                await left.push_text("This one is abandoned half way. It has more to say.")
                await left.end_input()
                with anyio.fail_after(20):
                    await left.receive()
            stream, audio, _ = await say(client, "The next one speaks alone.")
            assert audio == synthesized(emulator, stream)
            assert stream._state.foreign_events == 0


async def test_flush_between_sentences_and_a_clear_under_never() -> None:
    async with open_emulator(EmulatorConfig()) as emulator:
        async with client_for(emulator, stream_settings=QUICK) as client:
            async with client.stream() as stream:
                await stream.push_text("Partial thought")
                await stream.flush()  # spoken now, though no sentence end came
                with anyio.fail_after(20):
                    await stream.receive()
                await stream.clear()
                await stream.push_text("After the clear.")
                await stream.end_input()
                with anyio.fail_after(20):
                    audio, _ = await read_all(stream)
            assert audio
            second, again, _ = await say(client, "And the socket still serves.")
            assert again == synthesized(emulator, second)


async def test_a_pooled_socket_gone_silent_is_left_for_a_fresh_one_at_once() -> None:
    """A NAT or proxy may forget an idle connection without a word: no FIN, no pong, nothing.
    Before, the next utterance on that pooled socket was silence until ``audio_timeout``
    ran out (RimeTimeoutError, though a retry was safe). The stream's first text now goes
    with a ping; with no sign of life within ``probe_timeout`` it moves to a fresh socket."""
    async with open_emulator(EmulatorConfig(), tcp_faults=True) as emulator:
        async with client_for(emulator, stream_settings=PROBING) as client:
            await say(client, "Before the silence.")
            await client.pool.wait_teardowns()
            assert client.pool.idle >= 1
            assert emulator.go_silent() >= 1  # every pooled socket is now a dead path
            await anyio.sleep(1.1)  # the user's pause: long enough for a socket to be probed
            with anyio.fail_after(15):  # audio_timeout is 30: only the probe ends it sooner
                async with client.stream() as stream:
                    await stream.push_text("After the silence, whole.")
                    await stream.end_input()
                    audio, _ = await read_all(stream)
    assert audio == synthesized(emulator, stream)
    assert audio
    assert stream.retries == 1


@pytest.mark.parametrize("protocol", ["ws3", "v1"])
@pytest.mark.parametrize("how", ["update_options", "per_stream"])
async def test_a_new_key_opens_sockets_with_it_and_never_takes_one_with_the_old(
    protocol: str, how: str
) -> None:
    """The pool was keyed by URL alone: after the key changed, streams still opened (or took)
    sockets with the first key, and the server answered 401. Each socket now carries its
    stream's key, and a stream never takes a socket that carried another."""
    async with open_emulator(EmulatorConfig(api_key="first-key")) as emulator:
        async with client_for(emulator, protocol, stream_settings=QUICK) as client:
            await say(client, "With the first key.")
            await client.pool.wait_teardowns()
            assert client.pool.idle >= 1  # sockets that carried the first key
            emulator.config.api_key = "second-key"  # the first one is revoked
            if how == "update_options":
                client.update_options(api_key="second-key")
                stream, audio, _ = await say(client, "With the second key.")
            else:
                stream, audio, _ = await say(client, "With the second key.", api_key="second-key")
            assert audio
            assert stream.metrics.connection_reused is False  # a socket of its own key


async def test_after_a_clear_and_a_pause_a_dead_spare_is_left_at_once() -> None:
    """Found in review: clear() moved the stream to a pooled spare; the recv task was already
    reading it, with no deadline, when the ping went out later, so a dead spare meant
    audio_timeout of silence and a RimeTimeoutError."""
    async with open_emulator(EmulatorConfig(), tcp_faults=True) as emulator:
        async with client_for(emulator, stream_settings=PROBING) as client:
            await say(client, "Warm up the pool.")
            await client.pool.wait_teardowns()  # the spare is open, and this socket idle
            async with client.stream() as stream:
                await stream.push_text("First sentence of the turn.")
                await stream.flush()
                with anyio.fail_after(20):
                    await stream.receive()
                assert emulator.go_silent() >= 1  # the spare among them
                await stream.clear()
                await anyio.sleep(1.1)  # the user speaks; the agent waits
                await stream.push_text("After the barge-in.")
                await stream.end_input()
                with anyio.fail_after(15):  # audio_timeout is 30: only the probe ends it sooner
                    audio, _ = await read_all(stream)
    assert audio == render_speech("After the barge-in.", RATE).pcm
    assert stream.retries == 1
