"""v1's shared sockets in the pool, over in-memory connections (``tests/memory_server.py``):
contexts the server never answers a ``cancel`` for, a server that stops reading the socket,
and ``prewarm()`` with no socket to keep. Each on trio and asyncio.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import anyio
import anyio.lowlevel
import pytest
from rime_api import text_to_speech_pb2 as tts

from rime_trio import AudioChunk, RimeTimeoutError, StreamSettings
from rime_trio._options import RimeOptions, websocket_url
from rime_trio._pool import ConnectionPool, PooledSocket
from rime_trio._protocol_v1 import Frame, decode_response
from rime_trio._stream import SpeechStream, open_stream
from rime_trio._transport import Connection
from rime_trio._v1_session import V1Session
from rime_trio.testing import open_emulator
from rime_trio.testing._synth import render_speech

from .memory_server import MemoryConnection, MemoryServer, ServerSocket, open_pool
from .speech import client_for, read_all

pytestmark = pytest.mark.anyio

API_KEY = "memory-key"
RATE = 24_000
V1 = "ws://memory/ws"
WS3 = "ws://memory/ws3"
# No backoff; a watchdog long enough never to fire while a test waits on purpose.
SETTINGS = StreamSettings(retry_backoff=0.0, audio_timeout=30.0)


def options(base_url: str = V1) -> RimeOptions:
    # bySentence: one context per stream, which the counts of contexts below assume
    return RimeOptions(api_key=API_KEY, base_url=base_url, sample_rate=RATE, segment="bySentence")


V1_URL = websocket_url(options())


def pcm(text: str) -> bytes:
    return render_speech(text, RATE).pcm


class Stall:
    """The client's writes on one connection stall while :meth:`stop` holds (a server that
    stopped reading: its TCP window is full, and a write waits for room that never comes)."""

    def __init__(self) -> None:
        self._drained: anyio.Event | None = None

    def stop(self) -> None:
        """From now on, writes wait (until :meth:`resume`)."""
        if self._drained is None:
            self._drained = anyio.Event()

    def resume(self) -> None:
        if self._drained is not None:
            self._drained.set()
            self._drained = None

    async def wait(self) -> None:
        while (drained := self._drained) is not None:
            await drained.wait()


class StallingConnection:
    """A :class:`MemoryConnection` whose sends wait while its :class:`Stall` stops them."""

    def __init__(self, inner: MemoryConnection, stall: Stall) -> None:
        self._inner = inner
        self.stall = stall

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def send(self, *frames: Frame) -> None:
        await self.stall.wait()
        await self._inner.send(*frames)


class StallingServer(MemoryServer):
    """A :class:`MemoryServer` whose connection number *n* stalls with ``stalls[n]``."""

    def __init__(self) -> None:
        super().__init__()
        self.stalls: dict[int, Stall] = {}

    async def connect(self, url: str, **kwargs: Any) -> Connection:
        connection = cast(MemoryConnection, await super().connect(url, **kwargs))
        stall = self.stalls.setdefault(self.connects, Stall())
        return cast(Connection, StallingConnection(connection, stall))


@pytest.fixture
def unanswered_cancels(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-memory v1 server takes a ``cancel`` (the context stops) but never answers it:
    no ``cancelled`` ever comes back."""
    send = ServerSocket._send

    async def send_but_cancelled(self: ServerSocket, frame: Any) -> None:
        if (
            self.encoding is not None
            and isinstance(frame, str | bytes)
            and decode_response(frame).WhichOneof("payload") == "cancelled"
        ):
            return
        await send(self, frame)

    monkeypatch.setattr(ServerSocket, "_send", send_but_cancelled)


def new_stream(pool: ConnectionPool, base_url: str = V1) -> SpeechStream:
    return SpeechStream(options=options(base_url), pool=pool, settings=SETTINGS)


async def speak(pool: ConnectionPool, text: str) -> tuple[SpeechStream, bytes]:
    """Say *text* on a v1 stream of its own: the stream and its audio."""
    stream = new_stream(pool)
    with anyio.fail_after(5):
        async with open_stream(stream):
            await stream.push_text(text)
            await stream.end_input()
            audio, _ = await read_all(stream)
    return stream, audio


async def abandon(pool: ConnectionPool, text: str) -> None:
    """A v1 stream whose caller leaves after its first audio: its context is cancelled."""
    stream = new_stream(pool)
    with anyio.fail_after(5):
        async with open_stream(stream):
            await stream.push_text(text)
            assert isinstance(await stream.receive(), AudioChunk)


async def until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not condition():
            await anyio.lowlevel.checkpoint()


def requests(socket: ServerSocket, kind: str) -> list[str]:
    """The context ids of the *kind* requests the server received on *socket*."""
    return [
        r.context_id
        for r in socket.received
        if isinstance(r, tts.WebSocketRequest) and r.WhichOneof("payload") == kind
    ]


# ----------------------------------------------------------------------------- cancels


@pytest.mark.usefixtures("unanswered_cancels")
async def test_a_socket_full_of_unanswered_cancels_gives_way_to_one_with_room() -> None:
    # Issue 22, defect 3: the full socket was kept as the one idle socket of its URL, so every
    # later stream made a handshake of its own (4 streams, 4 handshakes).
    texts = ["One.", "Two.", "Three.", "Four."]
    async with StallingServer() as server, open_pool(server, max_contexts_per_socket=2) as pool:
        await abandon(pool, "Hello there. How are you")
        await abandon(pool, "Good morning. And you")
        first = server.sockets[0]
        await until(lambda: len(requests(first, "cancel")) == 2)  # sent, and never answered
        [session] = pool.sockets
        assert not session.has_room()  # its two contexts may still run on the server
        results = [await speak(pool, text) for text in texts]
        assert server.connects == 2  # the full socket and one that took all four
        await until(lambda: first.closed_by_client)  # closed once the other could take its place
        [kept] = pool.sockets
        assert kept is not session
        assert kept.has_room()
    assert [audio for _, audio in results] == [pcm(text) for text in texts]
    assert first.texts() == ["Hello there. ", "Good morning. "]
    assert server.sockets[1].texts() == texts


@pytest.mark.usefixtures("unanswered_cancels")
@pytest.mark.virtual_clock
async def test_unanswered_cancels_stop_taking_room_after_the_teardown_timeout(
    jump_clock: Callable[[float], None],
) -> None:
    texts = ["One.", "Two.", "Three.", "Four."]
    async with (
        StallingServer() as server,
        open_pool(server, max_contexts_per_socket=2, teardown_timeout=1.0) as pool,
    ):
        await abandon(pool, "Hello there. How are you")
        await abandon(pool, "Good morning. And you")
        [session] = pool.sockets
        assert session.load == 2
        jump_clock(1.0)  # no cancelled came back in time: the server forgot them, or never says
        assert session.load == 0
        results = [await speak(pool, text) for text in texts]
        assert pool.sockets == [session]
    assert [audio for _, audio in results] == [pcm(text) for text in texts]
    assert server.connects == 1
    assert server.sockets[0].texts() == ["Hello there. ", "Good morning. ", *texts]


async def test_an_answered_cancel_frees_its_room_at_once() -> None:
    async with MemoryServer() as server, open_pool(server, max_contexts_per_socket=1) as pool:
        await abandon(pool, "Hello there. How are you")
        [session] = pool.sockets
        await until(lambda: session.load == 0)  # the cancelled came back
        _, audio = await speak(pool, "Still here.")
    assert audio == pcm("Still here.")
    assert server.connects == 1
    assert requests(server.sockets[0], "cancel") == ["c1"]


# ----------------------------------------------------------------------------- stalled writes


@pytest.mark.virtual_clock(autojump_threshold=0)
async def test_a_cancelled_stream_on_a_stalled_socket_leaves_within_the_teardown_timeout() -> None:
    # Issue 22, defect 6: every write on the shared socket was shielded for teardown_timeout +
    # connect_timeout, so a cancelled stream waited for the stalled write that long.
    teardown, deadline = 0.2, 0.5
    async with (
        StallingServer() as server,
        open_pool(server, teardown_timeout=teardown, connect_timeout=3.0) as pool,
    ):
        await pool.prewarm(V1_URL, V1Session)
        [session] = pool.sockets
        server.stalls[1].stop()  # the server stops reading
        stream = new_stream(pool)
        started = anyio.current_time()
        with anyio.move_on_after(deadline):
            async with open_stream(stream):
                await stream.push_text("Hello there. ")
                await stream.receive()  # no audio comes: the text never got to the server
        late = anyio.current_time() - started - deadline
        # The stream is gone, and the pool closed the socket that stopped draining.
        await until(lambda: server.sockets[0].closed_by_client)
        assert session.error is not None
        assert session not in pool.sockets
        _, audio = await speak(pool, "Hello again.")
    assert late < teardown + 0.8  # it was 2.7 s (connect_timeout + teardown - deadline)
    assert audio == pcm("Hello again.")
    assert server.connects == 2


@pytest.mark.virtual_clock(autojump_threshold=0)
async def test_a_write_the_server_never_takes_fails_the_socket_and_the_stream_moves_on() -> None:
    async with (
        StallingServer() as server,
        open_pool(server, teardown_timeout=0.2, connect_timeout=0.3) as pool,
    ):
        await pool.prewarm(V1_URL, V1Session)
        [session] = pool.sockets
        server.stalls[1].stop()
        stream, audio = await speak(pool, "Hello there.")
        assert isinstance(session.error, RimeTimeoutError)
        assert "longer than 0.5 s" in str(session.error)
    assert audio == pcm("Hello there.")
    assert stream.retries == 1  # nothing had been delivered: sent again on a new socket
    assert server.connects == 2
    assert server.sockets[0].texts() == []
    assert server.sockets[1].texts() == ["Hello there."]


async def test_frames_of_a_caller_cancelled_while_they_wait_still_go_out_in_order() -> None:
    # A write is never abandoned half-way on a shared socket: the caller leaves, the writer
    # sends its frames once the server reads again.
    async with StallingServer() as server, open_pool(server, teardown_timeout=5.0) as pool:
        lease = await pool.get(V1_URL, V1Session)
        session = lease.socket
        protocol = session.protocol
        assert protocol is not None
        ids = [protocol.next_context_id() for _ in range(4)]
        starts = [protocol.start(i, options()) for i in ids]
        stall = server.stalls[1]
        stall.stop()
        await session.send(starts[0])  # the writer was idle: queued, and the caller goes on
        with anyio.fail_after(1):  # well before teardown_timeout: the caller leaves at once
            with anyio.move_on_after(0.05) as scope:
                await session.send(starts[1])  # behind the stalled write: waits, cancelled
            assert scope.cancelled_caught
        session.send_nowait(starts[2])  # queued without waiting (a stream leaving)
        with anyio.fail_after(1):  # well before teardown_timeout: it returns once written
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(session.send, starts[3])  # waits behind them all
                await anyio.sleep(0.05)
                assert requests(server.sockets[0], "start") == []
                stall.resume()
        await until(lambda: len(requests(server.sockets[0], "start")) == 4)
        assert session.error is None
        pool.release(lease, keep=True)
    assert requests(server.sockets[0], "start") == ids


# ----------------------------------------------------------------------------- prewarm


@pytest.mark.parametrize("kind", [PooledSocket, V1Session], ids=["ws3", "v1"])
async def test_prewarm_opens_nothing_when_the_pool_keeps_no_socket(
    kind: type[PooledSocket],
) -> None:
    # Suspected in issue 22 ("prewarm() ignoring max_pool_size=0"): it does not.
    url = V1_URL if kind is V1Session else websocket_url(options(WS3))
    async with MemoryServer() as server:
        async with open_pool(server, max_size=0) as pool:
            await pool.prewarm(url, kind)
            assert pool.sockets == []
        assert server.connects == 0
        async with open_pool(server, max_size=1) as pool:
            await pool.prewarm(url, kind)
            await pool.prewarm(url, kind)  # one is there already
            assert pool.idle == 1
        assert server.connects == 1


async def test_wait_teardowns_waits_for_opens_and_closes_not_for_an_open_v1_socket() -> None:
    """A v1 socket's task reads it for as long as it is open: that is not background work to
    wait for. Its handshake and its close are."""
    async with open_emulator() as emulator, client_for(emulator, "v1") as client:
        await client.prewarm()
        with anyio.fail_after(10):  # before: never returned while the socket was open
            await client.pool.wait_teardowns()
        (socket,) = client.pool.sockets
        assert socket.ready.is_set()
        assert socket.error is None
        async with client.stream() as stream:
            await stream.push_text("Still open after. ")
            await stream.end_input()
            with anyio.fail_after(10):
                await read_all(stream)
        with anyio.fail_after(10):
            await client.pool.wait_teardowns()
        assert client.pool.sockets == [socket]
        assert socket.running
        client.pool.retire_idle()
        with anyio.fail_after(10):
            await client.pool.wait_teardowns()  # the close is waited for
        assert client.pool.sockets == []
        assert not socket.running
