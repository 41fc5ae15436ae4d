"""The pool's choice of a socket (``_pool.choose``): a pure function, tested without any
socket, server or event loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from rime_trio._pool import PooledSocket, choose

URL = "ws://rime/ws3"
OTHER = "ws://rime/ws3?speaker=other"
LIMIT = 300.0


class _Ready:
    def __init__(self, ready: bool) -> None:
        self._ready = ready

    def is_set(self) -> bool:
        return self._ready


@dataclass(eq=False)
class FakeSocket:
    """What choose() reads of a socket."""

    url: str = URL
    api_key: str | None = None
    ready_now: bool = True
    users: set[Any] = field(default_factory=set)
    capacity: int = 1
    usable: bool = True
    refreshed_at: float = 0.0
    peeked: bool = False
    orphans: int = 0  # v1: contexts cancelled and not yet answered (for a while)

    @property
    def ready(self) -> _Ready:
        return _Ready(self.ready_now)

    @property
    def load(self) -> int:
        return len(self.users) + self.orphans

    def has_room(self) -> bool:
        return self.usable and self.load < self.capacity


def pick(
    sockets: list[FakeSocket],
    *,
    now: float = 10.0,
    dead: tuple[FakeSocket, ...] = (),
    api_key: str | None = None,
) -> tuple[FakeSocket | None, list[FakeSocket], list[FakeSocket]]:
    """choose() over *sockets*: the one chosen, those retired, those it asked about."""
    asked: list[FakeSocket] = []

    def alive(socket: PooledSocket) -> bool:
        fake = cast(FakeSocket, socket)
        asked.append(fake)
        return fake not in dead

    choice = choose(cast(list[PooledSocket], sockets), URL, now, LIMIT, alive, api_key)
    return (
        cast(FakeSocket | None, choice.socket),
        cast(list[FakeSocket], list(choice.retire)),
        asked,
    )


def test_nothing_to_choose_from() -> None:
    assert pick([]) == (None, [], [])


def test_the_newest_ready_socket_for_the_url_and_only_it_is_peeked() -> None:
    old, new, other = FakeSocket(), FakeSocket(), FakeSocket(url=OTHER)
    chosen, retired, asked = pick([old, new, other])
    assert chosen is new
    assert retired == []
    assert asked == [new]


def test_only_a_socket_opened_with_the_streams_key_is_taken() -> None:
    mine, theirs = FakeSocket(api_key="mine"), FakeSocket(api_key="theirs")
    assert pick([mine, theirs], api_key="mine")[0] is mine
    assert pick([theirs], api_key="mine")[0] is None  # never another key's, not even idle


def test_a_ready_socket_comes_before_one_still_opening() -> None:
    ready, opening = FakeSocket(), FakeSocket(ready_now=False)
    assert pick([ready, opening])[0] is ready
    # Alone, the opening one is joined (its handshake shared), without a peek.
    chosen, _, asked = pick([opening])
    assert chosen is opening
    assert asked == []


def test_a_dead_idle_socket_is_retired_and_the_next_one_taken() -> None:
    old, new = FakeSocket(), FakeSocket()
    chosen, retired, asked = pick([old, new], dead=(new,))
    assert chosen is old
    assert retired == [new]
    assert asked == [new, old]


def test_expired_or_failed_idle_sockets_are_retired_even_for_other_urls() -> None:
    expired = FakeSocket(url=OTHER, refreshed_at=-LIMIT)
    failed = FakeSocket(usable=False)
    fresh = FakeSocket(refreshed_at=5.0)
    chosen, retired, _ = pick([expired, failed, fresh])
    assert chosen is fresh
    assert retired == [expired, failed]


def test_a_socket_in_use_is_never_retired_nor_peeked() -> None:
    busy = FakeSocket(users={object()}, refreshed_at=-LIMIT)  # expired, but a stream holds it
    chosen, retired, asked = pick([busy])
    assert (chosen, retired, asked) == (None, [], [])


def test_shared_sockets_fill_the_fullest_with_room_first() -> None:
    emptier = FakeSocket(capacity=4, users={object()})
    fuller = FakeSocket(capacity=4, users={object(), object(), object()})
    full = FakeSocket(capacity=4, users={object() for _ in range(4)})
    chosen, _, asked = pick([emptier, fuller, full])
    assert chosen is fuller
    assert asked == []  # a socket with streams on it is known alive: its reader reads it


def test_an_opening_socket_already_claimed_by_its_one_stream_has_no_room() -> None:
    claimed = FakeSocket(ready_now=False, users={object()})
    assert pick([claimed])[0] is None


def test_a_socket_without_streams_but_no_room_is_passed_over_not_retired() -> None:
    # v1: contexts whose streams left still run until the server's cancelled (or for the
    # teardown timeout); the socket gets its room back then, so it is not closed for it.
    full = FakeSocket(capacity=2, orphans=2)
    roomy = FakeSocket(capacity=2, orphans=1)
    chosen, retired, asked = pick([roomy, full])
    assert chosen is roomy
    assert retired == []
    assert asked == [roomy]
    assert pick([full]) == (None, [], [])
