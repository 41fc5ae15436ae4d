"""A bare trio-websocket /ws3 client for checking the emulator independently of rime-trio's."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

from rime_trio.testing import RimeEmulator

KEY = "emulator-key"
AUTH = [(b"authorization", f"Bearer {KEY}".encode())]
QUERY = "speaker=astra&modelId=coda&lang=eng&samplingRate=8000&audioFormat=pcm"
RATE = 8000

Frame = dict[str, Any]


@asynccontextmanager
async def raw_socket(
    emulator: RimeEmulator, query: str = QUERY, headers: list[tuple[bytes, bytes]] | None = None
) -> AsyncIterator[WebSocketConnection]:
    """A bare trio-websocket client. It owns the TCP stream and always closes it:
    trio-websocket's own client leaves the socket open after a server close or rejection."""
    stream = await trio.open_tcp_stream(emulator.host, emulator.port)
    try:
        async with trio.open_nursery() as nursery:
            # A rejection is raised by the reader task, so it leaves the nursery in a group.
            ws = await wrap_client_stream(
                nursery,
                stream,
                f"{emulator.host}:{emulator.port}",
                f"/ws3?{query}",
                extra_headers=AUTH if headers is None else headers,
            )
            try:
                yield ws
            finally:
                with trio.move_on_after(2):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        rejected = group.subgroup(ConnectionRejected)
        if rejected is None:
            raise
        raise rejected.exceptions[0] from None
    finally:
        await trio.aclose_forcefully(stream)


async def send(ws: WebSocketConnection, *messages: Frame | str) -> None:
    """Send text messages (a str is a text without contextId) and operations (dicts)."""
    for message in messages:
        await ws.send_message(
            json.dumps({"text": message} if isinstance(message, str) else message)
        )


def text(value: str, context_id: str | None = None) -> Frame:
    return {"text": value, "contextId": context_id}


FLUSH: Frame = {"operation": "flush"}
CLEAR: Frame = {"operation": "clear"}
EOS: Frame = {"operation": "eos"}


async def read_until_done(ws: WebSocketConnection, count: int = 1) -> list[Frame]:
    """Server messages up to and including the *count*-th ``done``."""
    messages: list[Frame] = []
    with trio.fail_after(5):
        while sum(m["type"] == "done" for m in messages) < count:
            messages.append(json.loads(await ws.get_message()))
    return messages


async def read_audio(ws: WebSocketConnection, size: int) -> list[Frame]:
    """Server messages until *size* bytes of audio have arrived."""
    messages: list[Frame] = []
    with trio.fail_after(5):
        while len(audio_of(messages)) < size:
            messages.append(json.loads(await ws.get_message()))
    return messages


async def read_until_close(ws: WebSocketConnection) -> tuple[list[Frame], ConnectionClosed]:
    """Server messages up to the close, and the close."""
    messages: list[Frame] = []
    with trio.fail_after(5):
        while True:
            try:
                messages.append(json.loads(await ws.get_message()))
            except ConnectionClosed as closed:
                return messages, closed


async def read_for(ws: WebSocketConnection, seconds: float) -> list[Frame]:
    """Whatever the server sends within *seconds*."""
    messages: list[Frame] = []
    with trio.move_on_after(seconds):
        while True:
            messages.append(json.loads(await ws.get_message()))
    return messages


def audio_of(messages: list[Frame]) -> bytes:
    return b"".join(base64.b64decode(str(m["data"])) for m in messages if m["type"] == "chunk")


def kinds(messages: list[Frame]) -> list[str]:
    """Message types in order, with consecutive chunks folded into one ``chunk``."""
    folded: list[str] = []
    for message in messages:
        if not (message["type"] == "chunk" and folded and folded[-1] == "chunk"):
            folded.append(message["type"])
    return folded
