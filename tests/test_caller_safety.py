"""What callers do that the library must survive: native cancellation of any await (asyncio's
``Task.cancel``, ``asyncio.timeout``, ``asyncio.wait_for``; trio's deadlines), and their own
exceptions raised inside the blocks (issue 20, defects 1 to 3)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import pytest
import trio
import trio.testing

from rime_trio import (
    AudioChunk,
    EndOfAudio,
    RimeClient,
    ServerError,
    StreamSettings,
)
from rime_trio._channel import ChannelReceiver, ChannelSender, create_channel
from rime_trio.testing import EmulatorConfig, Fault, open_emulator

from .conftest import API_KEY
from .speech import synthesized, texts_sent

RATE = 8000
TEXT = (
    "The first sentence is here. And the second one follows it! A third comes after, "
    "with a few more words to speak. Then the fourth and last one ends the stream."
)

pytestmark = pytest.mark.anyio


class MyAppError(Exception):
    pass


def _on_trio() -> bool:
    import sniffio

    return sniffio.current_async_library() == "trio"


# ----------------------------------------------------------------------------- the channel


async def test_a_receive_cancelled_after_the_item_was_handed_over_loses_nothing() -> None:
    """The race of defect 1, made deterministic on asyncio: the sender wakes a waiting
    receiver, and asyncio cancels it before it resumes. The item is the next receive's."""
    tx: ChannelSender[int]
    rx: ChannelReceiver[int]
    tx, rx = create_channel(4)
    if _on_trio():
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:

                async def receiver() -> None:
                    await rx.receive()  # cancelled by the scope below, after the send

                nursery.start_soon(receiver)
                await trio.testing.wait_all_tasks_blocked()
                tx.send_nowait(1)
                scope.cancel()
        # On trio a woken task cannot be cancelled before it resumes: it took the item.
        tx.send_nowait(2)
        assert rx.receive_nowait() == 2
        return
    task = asyncio.get_running_loop().create_task(rx.receive())
    await asyncio.sleep(0)  # the receiver now waits
    tx.send_nowait(1)  # wakes it...
    task.cancel()  # ...and asyncio cancels it before it resumes
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rx.receive_nowait() == 1


async def test_a_send_cancelled_while_waiting_for_room_has_not_queued_its_item() -> None:
    """The race of defect 2: room frees up, the waiting sender is woken and cancelled before
    it resumes. It raised, so its item must not be in the channel."""
    if _on_trio():
        pytest.skip("trio cannot cancel a woken task before it resumes")
    tx: ChannelSender[str]
    rx: ChannelReceiver[str]
    tx, rx = create_channel(1)
    tx.send_nowait("first")
    task = asyncio.get_running_loop().create_task(tx.send("second"))
    await asyncio.sleep(0)  # the sender now waits for room
    assert rx.receive_nowait() == "first"  # room: the sender is woken...
    task.cancel()  # ...and cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(anyio.WouldBlock):
        rx.receive_nowait()  # raised, so not queued


# ----------------------------------------------------------------------------- end to end


async def _with_timeout(
    backend_seconds: float, call: Callable[[], Coroutine[Any, Any, Any]], how: str
) -> tuple[bool, Any]:
    """Run *call* under a native deadline of the running backend; (finished, result)."""
    if how == "trio":
        with trio.move_on_after(backend_seconds):
            return True, await call()
        return False, None
    try:
        if how == "asyncio.timeout":
            async with asyncio.timeout(backend_seconds):
                return True, await call()
        elif how == "asyncio.wait_for":
            return True, await asyncio.wait_for(call(), backend_seconds)
        else:  # Task.cancel() of the awaiting task itself (as a framework cancels a request)
            task = asyncio.current_task()
            assert task is not None
            handle = asyncio.get_running_loop().call_later(backend_seconds, task.cancel)
            try:
                return True, await call()
            except asyncio.CancelledError:
                if task.uncancel() > 0:
                    raise  # not ours
                return False, None
            finally:
                handle.cancel()
    except TimeoutError:
        return False, None


def _mechanisms(backend: str) -> list[str]:
    if backend == "trio":
        return ["trio"]
    return ["asyncio.timeout", "asyncio.wait_for", "Task.cancel"]


@pytest.mark.parametrize("protocol", ["ws3", "v1"])
async def test_receives_under_native_timeouts_deliver_every_byte_exactly_once(
    anyio_backend_name: str, protocol: str
) -> None:
    """Polling ``receive()`` under short native timeouts (a barge-in watcher) must deliver
    exactly the server's audio: no chunk lost to a cancelled receive, none twice. On v1 the
    streams share a socket, and the same audio channel."""
    config = EmulatorConfig(real_time_factor=0.0, chunk_bytes=480)
    async with open_emulator(config) as emulator:
        url = emulator.ws_url if protocol == "ws3" else emulator.v1_url
        async with RimeClient(base_url=url, api_key=API_KEY, sample_rate=RATE) as c:
            async with c.stream() as reference:
                await reference.push_text(TEXT)
                await reference.end_input()
                with anyio.fail_after(30):
                    expected = b"".join(
                        [e.data async for e in reference if isinstance(e, AudioChunk)]
                    )
            assert expected
            for how, delay in itertools.product(
                _mechanisms(anyio_backend_name), (0.00005, 0.0002, 0.001)
            ):
                timeouts = 0
                audio = bytearray()
                async with c.stream() as stream:
                    await stream.push_text(TEXT)
                    await stream.end_input()
                    with anyio.fail_after(30):
                        while True:
                            try:
                                finished, event = await _with_timeout(delay, stream.receive, how)
                            except EndOfAudio:
                                break
                            if not finished:
                                timeouts += 1
                            elif isinstance(event, AudioChunk):
                                audio += event.data
                assert timeouts > 0, "the deadline never fired: the test tested nothing"
                assert bytes(audio) == expected, (how, delay)
                if protocol == "ws3":
                    assert expected == synthesized(emulator, stream)
                assert stream.buffered_audio_bytes == 0


async def test_a_push_text_that_raised_under_a_native_timeout_did_not_send_its_text(
    anyio_backend_name: str,
) -> None:
    """Defect 2: every push either raised (and its text was not sent) or returned (and was).
    The text buffer holds one item, so pushes wait for room and deadlines land there."""
    settings = StreamSettings(text_buffer=1)
    async with open_emulator(EmulatorConfig(real_time_factor=0.0)) as emulator:
        async with RimeClient(
            base_url=emulator.ws_url, api_key=API_KEY, sample_rate=RATE, stream_settings=settings
        ) as client:
            for how in _mechanisms(anyio_backend_name):
                accepted: list[str] = []
                raised = 0
                async with client.stream() as stream:
                    for n, delay in zip(range(60), itertools.cycle((0.0, 0.00005, 0.0002))):
                        word = f"w{n} "
                        finished, _ = await _with_timeout(
                            delay, lambda w=word: stream.push_text(w), how
                        )
                        if finished:
                            accepted.append(word)
                        else:
                            raised += 1
                    await stream.end_input()
                    with anyio.fail_after(30):
                        async for _ in stream:
                            pass
                assert raised > 0, "no push was ever cut short: the test tested nothing"
                assert texts_sent(emulator, stream) == "".join(accepted), how


# ----------------------------------------------------------------------------- own errors


async def test_the_callers_own_error_raised_from_a_server_error_leaves_unchanged() -> None:
    """Defect 3: a ServerError caught in the block and re-raised as the caller's own error
    comes out as the caller's error, on trio as on asyncio."""
    config = EmulatorConfig(faults=[Fault("error_event", body="bad speaker")])
    async with open_emulator(config) as emulator:
        async with RimeClient(base_url=emulator.ws_url, api_key=API_KEY) as client:
            mine = MyAppError("the app's own words")
            with pytest.raises(MyAppError) as raised:
                async with client.stream() as stream:
                    await stream.push_text("Hello there. ")
                    await stream.end_input()
                    try:
                        with anyio.fail_after(10):
                            async for _ in stream:
                                pass
                    except ServerError as exc:
                        raise mine from exc
            assert raised.value is mine
            assert isinstance(mine.__cause__, ServerError)


async def test_an_exception_group_raised_in_the_stream_block_is_not_flattened() -> None:
    async with open_emulator() as emulator:
        async with RimeClient(base_url=emulator.ws_url, api_key=API_KEY) as client:
            group = ExceptionGroup("the app's", [KeyError("k"), MyAppError("m")])
            caught: list[BaseException] = []
            try:
                async with client.stream() as stream:
                    await stream.push_text("Hello there. ")
                    raise group
            except* KeyError as keys:
                caught.append(keys)
            except* MyAppError as mine:
                caught.append(mine)
            assert len(caught) == 2
            assert [type(e) for g in caught for e in g.exceptions] == [KeyError, MyAppError]


async def test_an_exception_group_raised_in_the_client_block_is_not_flattened() -> None:
    async with open_emulator() as emulator:
        group = ExceptionGroup("the app's", [KeyError("k")])
        with pytest.raises(ExceptionGroup) as raised:
            async with RimeClient(base_url=emulator.ws_url, api_key=API_KEY) as client:
                await client.prewarm()
                raise group
        assert raised.value is group


async def test_the_callers_own_error_leaves_the_client_block_unchanged() -> None:
    async with open_emulator() as emulator:
        mine = MyAppError("mine")
        with pytest.raises(MyAppError) as raised:
            async with RimeClient(base_url=emulator.ws_url, api_key=API_KEY) as client:
                async with client.stream() as stream:
                    await stream.push_text("Hello. ")
                    raise mine
        assert raised.value is mine


async def test_an_exception_group_raised_over_long_http_text_is_not_flattened() -> None:
    """The long-text HTTP path runs its requests in a task group beside the caller's code."""
    async with open_emulator() as emulator:
        async with RimeClient(
            base_url=emulator.http_url, api_key=API_KEY, audio_format="pcm"
        ) as client:
            group = ExceptionGroup("the app's", [KeyError("k")])
            with pytest.raises(ExceptionGroup) as raised:
                async with client.synthesize_chunks("A sentence to say. " * 120) as chunks:
                    async for _ in chunks:
                        raise group
            assert raised.value is group


# ----------------------------------------------------------------------------- bad text


@pytest.mark.parametrize(
    "tokenizer", [None, lambda text: [text]], ids=["blingfire", "custom tokenizer"]
)
async def test_a_lone_surrogate_is_refused_before_anything_is_sent(
    tokenizer: Callable[[str], list[str]] | None,
) -> None:
    """Defect 6: half an emoji (one UTF-16 surrogate, as a str built from UTF-16 LLM tokens
    carries) is an InvalidTextError naming its position, raised by push_text, text_in.send
    and text_in.send_nowait, with nothing of it queued; the stream goes on."""
    from rime_trio import InvalidTextError

    async with open_emulator() as emulator:
        async with RimeClient(base_url=emulator.ws_url, api_key=API_KEY) as client:
            async with client.stream(tokenizer=tokenizer) as stream:
                await stream.push_text("Hello there. ")
                with pytest.raises(InvalidTextError, match="U\\+D83C at position 5"):
                    await stream.push_text("Look \ud83c")
                with pytest.raises(InvalidTextError, match="U\\+DF0D at position 0"):
                    await stream.text_in.send("\udf0d and more.")
                with pytest.raises(InvalidTextError):
                    stream.text_in.send_nowait("x\udcff")
                await stream.push_text("Goodbye. ")
                await stream.end_input()
                with anyio.fail_after(10):
                    async for _ in stream:
                        pass
            assert texts_sent(emulator, stream) == "Hello there. Goodbye. "


async def test_synthesize_chunks_in_streaming_mode_keeps_the_word_timestamps() -> None:
    """One path for one-shot synthesis: synthesize() collects what synthesize_chunks()
    yields, and in streaming mode the words that came between the chunks are kept."""
    async with open_emulator() as emulator:
        async with RimeClient(base_url=emulator.ws_url, api_key=API_KEY) as client:
            async with client.synthesize_chunks("Hello there, friend.") as chunks:
                audio = b"".join([chunk.data async for chunk in chunks])
            assert [w.word for w in chunks.words] == ["Hello", "there", "friend"]
            whole = await client.synthesize("Hello there, friend.")
            assert whole.audio == audio
            words = [(w.word, w.start, w.end) for w in chunks.words]
            assert [(w.word, w.start, w.end) for w in whole.word_timestamps] == words
