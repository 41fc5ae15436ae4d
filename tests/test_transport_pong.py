"""A ping from the server never stalls the reader behind a write the server is slow to take.

Found in review (issue 22): the reader answered a ping by writing the pong under the send
lock, which a stalled write held; on a shared v1 socket every stream then stopped getting
audio until the writer gave up. The pong now waits for the write in progress, and goes
out right after it.
"""

from __future__ import annotations

import anyio
import anyio.abc
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Ping, Pong, Request, TextMessage

from rime_trio._transport import Connection

pytestmark = pytest.mark.anyio


class GatedPipe(anyio.abc.ByteStream):
    """The client's end of an in-memory byte pipe whose writes wait while *gate* is shut."""

    def __init__(
        self,
        tx: anyio.abc.ObjectSendStream[bytes],
        rx: anyio.abc.ObjectReceiveStream[bytes],
    ) -> None:
        self.tx, self.rx = tx, rx
        self.gate: anyio.Event | None = None

    async def send(self, item: bytes) -> None:
        if self.gate is not None:
            await self.gate.wait()
        await self.tx.send(bytes(item))

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            return await self.rx.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise anyio.EndOfStream from None

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        self.tx.close()
        self.rx.close()


async def test_a_ping_during_a_stalled_write_never_blocks_the_reader() -> None:
    c2s_tx, c2s_rx = anyio.create_memory_object_stream[bytes](100)
    s2c_tx, s2c_rx = anyio.create_memory_object_stream[bytes](100)
    pipe = GatedPipe(c2s_tx, s2c_rx)
    server = WSConnection(ConnectionType.SERVER)
    pongs: list[bytes] = []
    ponged = anyio.Event()

    async def serve() -> None:
        async for data in c2s_rx:
            server.receive_data(data)
            for event in server.events():
                if isinstance(event, Request):
                    await s2c_tx.send(server.send(AcceptConnection()))
                elif isinstance(event, Pong):
                    pongs.append(bytes(event.payload))
                    ponged.set()

    with c2s_tx, c2s_rx, s2c_tx, s2c_rx:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(serve)
            await talk(pipe, server, s2c_tx, pongs, ponged)
            task_group.cancel_scope.cancel()


async def talk(
    pipe: GatedPipe,
    server: WSConnection,
    s2c_tx: anyio.abc.ObjectSendStream[bytes],
    pongs: list[bytes],
    ponged: anyio.Event,
) -> None:
    async with anyio.create_task_group() as task_group:
        connection = Connection("ws://memory/ws3", "key", pipe)
        await connection._handshake("memory", "/ws3", None)
        pipe.gate = gate = anyio.Event()  # the server stops reading
        task_group.start_soon(connection.send, "a write the server does not take yet")
        await anyio.wait_all_tasks_blocked()
        await s2c_tx.send(server.send(Ping(b"hi")) + server.send(TextMessage("audio")))
        with anyio.fail_after(5):  # before: stuck on the pong until the write went through
            assert await connection.receive() == "audio"
        assert pongs == []
        gate.set()  # the server reads again: the write goes, then the pong
        with anyio.fail_after(5):
            await ponged.wait()
        assert pongs == [b"hi"]
