"""The emulator's fault modes: misbehaviours a test arms for all or some connections.

Plain data and pure functions; the emulator's I/O layer (``_ws3_socket``, ``_emulator``) looks
faults up here and applies them. Where Rime's docs allow two behaviours, that is not a fault but
a reading (:class:`~rime_trio.testing.Ws3Readings`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal, get_args

__all__ = ["GARBAGE_TEXT", "Fault", "FaultKind", "chunk_sizes", "find_fault"]

#: How a ``garbage`` fault's frame begins: not JSON (nor, as a text frame, protobuf).
GARBAGE_TEXT: Final = "}{ not a frame: "

FaultKind = Literal[
    "reject",
    "close",
    "idle_close",
    "drop",
    "stall",
    "garbage",
    "error_event",
    "missing_done",
    "extra_done",
    "odd_chunks",
    "foreign_audio",
    "no_close",
]

_KINDS: Final = frozenset(get_args(FaultKind))


@dataclass(frozen=True, slots=True)
class Fault:
    """A misbehaviour of the emulator, for the connections it names.

    :ivar kind: what goes wrong:

        * ``reject``: refuse the handshake with *status* and *body*;
        * ``close``: close with *code* and *reason* once *after_messages* client messages
          have arrived on the socket (0: right after accepting);
        * ``idle_close``: close with *code* and *reason* after *seconds* without a client
          message (what servers and proxies do to idle sockets);
        * ``drop``: drop the TCP connection without a close frame when a run reaches chunk
          number *after_chunks* (0: before any audio); needs ``open_emulator(tcp_faults=True)``;
        * ``stall``: send nothing for *seconds* when a run reaches chunk *after_chunks*;
        * ``garbage``: send a text frame no client can parse (neither JSON nor a
          protobuf message), ending in *body*, when a run reaches chunk *after_chunks*,
          then carry on;
        * ``error_event``: answer every run with an ``error`` event (*body*) instead of audio;
        * ``missing_done`` / ``extra_done``: no ``done`` where one is due, or two of them;
        * ``odd_chunks``: audio in odd-sized chunks, some of one byte (samples split);
        * ``foreign_audio``: before each run's audio, send a chunk tagged with another
          stream's contextId (stale audio on a reused socket);
        * ``no_close``: after ``eos`` and the last run, never close the socket.

        A very slow server is ``EmulatorConfig.real_time_factor`` above 1; where a run's
        timestamps go is ``Ws3Readings.timestamps``.

    :ivar connections: 1-based WebSocket connection numbers it applies to (None: all).
    :raises ValueError: for an unknown *kind* (``timestamps`` is now a reading).
    """

    kind: FaultKind
    connections: frozenset[int] | None = None
    status: int = 500
    body: str = "Internal server error"
    code: int = 1011
    reason: str = ""
    after_messages: int = 0
    seconds: float = 0.0
    after_chunks: int = 0

    def __post_init__(self) -> None:
        # Literal types are not checked at runtime; a stale kind would otherwise do nothing.
        kind: str = self.kind
        if kind not in _KINDS:
            hint = " (use EmulatorConfig(readings=Ws3Readings(timestamps=...)))"
            raise ValueError(f"unknown fault kind {kind!r}{hint if kind == 'timestamps' else ''}")

    def applies_to(self, connection: int) -> bool:
        """True when this fault is armed for WebSocket connection number *connection*."""
        return self.connections is None or connection in self.connections


def find_fault(faults: Iterable[Fault], kind: FaultKind, connection: int) -> Fault | None:
    """The first fault of *kind* armed for *connection*, or None."""
    for fault in faults:
        if fault.kind == kind and fault.applies_to(connection):
            return fault
    return None


def chunk_sizes(total: int, chunk_bytes: int, *, odd: bool = False) -> list[int]:
    """Sizes of the chunks that carry *total* audio bytes: *chunk_bytes* each (the last may be
    shorter) or, with *odd*, a cycle of odd sizes, some of a single byte, so that 16-bit
    samples are split across chunks. The sizes always add up to *total*."""
    step = max(1, chunk_bytes)
    if not odd:
        return [min(step, total - offset) for offset in range(0, total, step)]
    pattern = [1, step // 3 | 1, 3, step + 1, 7]
    sizes: list[int] = []
    sent = 0
    while sent < total:
        size = min(pattern[len(sizes) % len(pattern)], total - sent)
        sizes.append(size)
        sent += size
    return sizes
