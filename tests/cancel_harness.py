"""The cancellation harness: drive one stream through a plan of awaits, cancel one of them with
one of the event loop's own mechanisms, and check what the caller got against what the
emulator synthesized.

A :class:`Plan` is plain data (hypothesis draws it, a failure prints it, and
``run_plan(plan, backend)`` replays it). Its points are ``enter``, each op, and ``exit``; the
target point is cancelled:

* with scope ``"op"``, by a timeout or cancel scope around that one await, after which the
  caller goes on (keeps pushing, keeps reading until ``EndOfAudio`` or a ``RimeError``);
* with scope ``"block"``, by cancelling what encloses the whole ``async with client.stream()``
  block (a cancel scope's deadline set, or the task cancelled, when that point is reached):
  the block is left by the cancellation.

``poll`` ops are receives bounded by the plan's poll mechanism (a caller watching for
barge-in), so they are cancellations too. What is checked (:func:`run_plan` raises
``AssertionError`` naming each rule broken):

1. the audio taken in each ``clear()`` epoch is a prefix of the server's audio for the text
   of that epoch (exactly all of it for a stream read to ``EndOfAudio``);
2. so nothing is duplicated, lost in the middle, or mixed;
3. no socket, task or buffered byte is left: the pool holds only idle sockets the emulator
   still sees open, no client task runs once the stream and its teardowns are done, the
   emulator sees no socket once the client is closed, and only the test's own task is left
   once the emulator is gone;
4. the server got exactly the text of the pushes that returned (a ``push_text`` that raised
   must not have queued its text);
5. (:func:`run_error_plan`) the caller's own exception leaves the block as that very object.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import os
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import anyio.abc
import sniffio
import trio
from hypothesis import strategies as st

from rime_trio import (
    AudioChunk,
    EmptyTextError,
    EndOfAudio,
    RimeClient,
    RimeError,
    ServerError,
    SpeechStream,
    StreamSettings,
)
from rime_trio._protocol import StreamState, TextMessage
from rime_trio.testing import EmulatorConfig, Fault, RimeEmulator, open_emulator, render_speech

RATE = 8000
API_KEY = "emulator-key"
#: a hang guard, never a timing assertion: only a stream that hangs gets anywhere near it
HANG = 30.0

SENTENCES = (
    "Hello there.",
    "How are you today?",
    "It is two p.m. now.",
    "Fine, thanks!",
    "No end here",
)

# Mechanisms, by backend. "op" scope: around one await; "block": around the stream's block.
TRIO_MECHANISMS = (
    "trio.move_on_after",
    "trio.fail_after",
    "anyio.move_on_after",
    "anyio.CancelScope.cancel",
)
ASYNCIO_MECHANISMS = (
    "Task.cancel",
    "asyncio.timeout",
    "asyncio.wait_for",
    "anyio.move_on_after",
    "anyio.CancelScope.cancel",
)
MECHANISMS = {"trio": TRIO_MECHANISMS, "asyncio": ASYNCIO_MECHANISMS}
#: mechanisms that only exist as a cancellation of the block's task
BLOCK_ONLY = frozenset({"Task.cancel"})
#: mechanisms whose block-scope cancellation is timed from the block's start (the point is
#: wherever the stream is then), not set when a given point is reached
TIMED_FROM_START = frozenset({"asyncio.wait_for"})

#: ("push", text) | ("flush",) | ("clear",) | ("end_input",) | ("poll",) | ("receive",)
Op = tuple[str, ...]


@dataclass(frozen=True)
class Server:
    """How the emulator behaves for the target stream (armed just before it opens)."""

    kind: Literal["normal", "stall", "close", "drop", "error_event"] = "normal"
    after: int = 0  # chunks (stall, drop) or client messages (close)
    seconds: float = 0.0  # stall
    code: int = 1011  # close
    reason: str = ""  # close
    which: Literal["first", "all"] = "all"  # the stream's first socket only, or every socket

    @property
    def ends_streams_early(self) -> bool:
        """A normal close (1000) once the server has the ``eos`` is the stream's end: the
        client believes it (every reading of the docs agrees), so the stream completes
        with the audio sent so far. Only a prefix can be asked for then."""
        return self.kind == "close" and self.code == 1000

    def fault(self, first_connection: int) -> Fault | None:
        connections = frozenset({first_connection}) if self.which == "first" else None
        if self.kind == "stall":
            return Fault("stall", connections, seconds=self.seconds, after_chunks=self.after)
        if self.kind == "close":
            return Fault(
                "close", connections, code=self.code, reason=self.reason, after_messages=self.after
            )
        if self.kind == "drop":
            return Fault("drop", connections, after_chunks=self.after)
        if self.kind == "error_event":
            return Fault("error_event", connections, body="no such voice")
        return None


@dataclass(frozen=True)
class Plan:
    ops: tuple[Op, ...]
    target: int  # 0: enter, 1..len(ops): ops[target - 1], len(ops) + 1: exit
    mechanism: str
    scope: Literal["op", "block"] = "op"
    delay: float = 0.0
    poll_mechanism: str = "anyio.move_on_after"
    poll_delay: float = 0.003
    socket: Literal["fresh", "prewarmed", "second"] = "fresh"
    server: Server = field(default_factory=Server)
    chunk_bytes: int = 1600
    real_time_factor: float = 0.0
    text_buffer: int = 256
    audio_buffer: int = 64
    max_buffered_audio_bytes: int = 2 * 1024 * 1024
    retry_cancelled_push: bool = False
    #: read the rest as a caller polling for barge-in: each receive under the poll mechanism
    drain_poll: bool = False

    @property
    def points(self) -> int:
        return len(self.ops) + 2

    def point_name(self, point: int) -> str:
        if point == 0:
            return "enter"
        if point == len(self.ops) + 1:
            return "exit"
        return f"{point}:{self.ops[point - 1][0]}"


@dataclass
class Push:
    epoch: int
    text: str
    returned: bool
    error: BaseException | None = None


@dataclass
class Run:
    """What happened while a plan ran."""

    plan: Plan
    trace: list[str] = field(default_factory=list)
    stream: SpeechStream | None = None
    entered: bool = False
    epoch: int = 0
    clear_effective: bool = False
    audio: dict[int, bytearray] = field(default_factory=dict)  # per epoch, in order taken
    pushes: list[Push] = field(default_factory=list)
    ended: bool = False  # receive() raised EndOfAudio
    failure: RimeError | None = None  # receive() raised it
    input_ended: bool = False
    armed: bool = False  # the block-scope cancellation was set off
    left_with: BaseException | None = None  # what left the block's mechanism
    errors: list[str] = field(default_factory=list)
    kinds: list[type[HarnessFailure]] = field(default_factory=list)

    def note(self, line: str) -> None:
        self.trace.append(line)

    def violated(self, rule: str, kind: type[HarnessFailure] | None = None) -> None:
        """Record a broken rule; *kind* (default: guessed from the text) decides which
        exception reports it, so hypothesis keeps distinct failures apart."""
        self.errors.append(rule)
        self.kinds.append(kind or _kind_of(rule))

    @property
    def read_to_the_end(self) -> bool:
        return self.ended or self.failure is not None

    def report(self) -> str:
        trace = self.trace if len(self.trace) < 60 else [*self.trace[:30], "...", *self.trace[-25:]]
        return "\n".join(
            [
                "rules broken:",
                *(f"  - {e}" for e in self.errors),
                "trace:",
                *(f"  {t}" for t in trace),
            ]
        )


class HarnessFailure(AssertionError):
    """A broken rule; the subclass says which (the first broken rule picks it)."""


class StreamHung(HarnessFailure):
    """The stream (or its teardown) was still running after HANG seconds."""


class WrongExceptionLeft(HarnessFailure):
    """Rule 5 / clean ends: something else than the caller's own error, the mechanism's own
    outcome or one RimeError left the block (an ExceptionGroup, a flattened group...)."""


class TextOfARaisedPushSent(HarnessFailure):
    """Rule 4: the server got text that a push_text which raised had queued."""


class TextNotExact(HarnessFailure):
    """Rule 4: the server's text is not the text of the pushes that returned (some of it
    never reached the server of a completed stream, or text nobody pushed arrived)."""


class AudioNotExact(HarnessFailure):
    """Rules 1 and 2: audio lost, duplicated or not the server's."""


class SocketLeft(HarnessFailure):
    """Rule 3: a socket (or a teardown) outlived its stream or its client."""


class TaskLeft(HarnessFailure):
    """Rule 3: a client task outlived its stream or its client."""


class BytesCountedAfterTheEnd(HarnessFailure):
    """Rule 3: buffered_audio_bytes is not 0 after the caller read to EndOfAudio."""


class BytesCountedAfterLeavingEarly(HarnessFailure):
    """Rule 3: buffered_audio_bytes is not 0 once a stream the caller left early finished."""


_KIND_WORDS: tuple[tuple[str, type[HarnessFailure]], ...] = (
    ("rule 4", TextOfARaisedPushSent),
    ("EmptyTextError", TextNotExact),
    ("rule 1", AudioNotExact),
    ("sent twice", AudioNotExact),
    ("read to the end", BytesCountedAfterTheEnd),
    ("left early", BytesCountedAfterLeavingEarly),
    ("socket", SocketLeft),
    ("pool", SocketLeft),
    ("task", TaskLeft),
)


#: the order in which a run's broken rules pick the exception that reports them
PRIORITY: tuple[type[HarnessFailure], ...] = (
    StreamHung,
    WrongExceptionLeft,
    TextOfARaisedPushSent,
    TextNotExact,
    AudioNotExact,
    SocketLeft,
    TaskLeft,
    BytesCountedAfterTheEnd,
    BytesCountedAfterLeavingEarly,
)


def _kind_of(rule: str) -> type[HarnessFailure]:
    for words, kind in _KIND_WORDS:
        if words in rule:
            return kind
    return WrongExceptionLeft


def expected_pcm(text: str) -> bytes:
    return _render(text)


@functools.lru_cache(maxsize=512)
def _render(text: str) -> bytes:
    return render_speech(text, RATE).pcm


# ----------------------------------------------------------------------------- mechanisms


class Canceller:
    """The mechanisms, applied to one await (op scope) or to the block (block scope)."""

    def __init__(self, helpers: anyio.abc.TaskGroup) -> None:
        self._helpers = helpers

    def _cancel_later(self, scope: anyio.CancelScope, delay: float) -> None:
        if delay <= 0:
            scope.cancel()
            return

        async def later() -> None:
            await anyio.sleep(delay)
            scope.cancel()

        self._helpers.start_soon(later)

    async def around_op(
        self, mechanism: str, delay: float, call: Callable[[], Awaitable[Any]]
    ) -> tuple[bool, Any]:
        """Run ``await call()`` under *mechanism*; (returned normally, its value).

        A RimeError or EndOfAudio from the call propagates (RimeTimeoutError is also a
        TimeoutError: it is never taken for the mechanism's own)."""
        returned = False
        value: Any = None
        if mechanism in ("trio.move_on_after", "anyio.move_on_after"):
            move_on_after = (
                trio.move_on_after if mechanism.startswith("trio") else anyio.move_on_after
            )
            with move_on_after(delay):
                value = await call()
                returned = True
        elif mechanism == "trio.fail_after":
            try:
                with trio.fail_after(delay):
                    value = await call()
                    returned = True
            except trio.TooSlowError:
                pass
        elif mechanism == "anyio.CancelScope.cancel":
            with anyio.CancelScope() as scope:
                self._cancel_later(scope, delay)
                value = await call()
                returned = True
        elif mechanism == "asyncio.timeout":
            try:
                async with asyncio.timeout(delay):
                    value = await call()
                    returned = True
            except TimeoutError as exc:
                if isinstance(exc, RimeError):
                    raise
        elif mechanism == "asyncio.wait_for":
            try:
                value = await asyncio.wait_for(call(), delay)
                returned = True
            except TimeoutError as exc:
                if isinstance(exc, RimeError):
                    raise
        else:
            raise AssertionError(f"no op-scope form of {mechanism}")
        return returned, value

    async def around_block(
        self,
        mechanism: str,
        delay: float,
        body: Callable[[Callable[[], None]], Coroutine[Any, Any, None]],
    ) -> tuple[BaseException | None, bool]:
        """Run ``await body(arm)`` where ``arm()`` sets the cancellation off (after *delay*).

        Returns what left the mechanism (None, or the exception) and whether the mechanism
        reports having cancelled."""
        if mechanism in ("trio.move_on_after", "trio.fail_after", "anyio.move_on_after"):
            lib: Any = trio if mechanism.startswith("trio") else anyio
            factory = trio.fail_after if mechanism == "trio.fail_after" else lib.move_on_after
            try:
                with factory(math.inf) as scope:

                    def arm() -> None:
                        scope.deadline = lib.current_time() + delay

                    await body(arm)
            except BaseException as exc:
                return exc, scope.cancelled_caught
            return None, scope.cancelled_caught
        if mechanism == "anyio.CancelScope.cancel":
            try:
                with anyio.CancelScope() as cancel_scope:
                    await body(lambda: self._cancel_later(cancel_scope, delay))
            except BaseException as exc:
                return exc, cancel_scope.cancelled_caught
            return None, cancel_scope.cancelled_caught
        loop = asyncio.get_running_loop()
        if mechanism == "asyncio.timeout":
            expired = False
            try:
                async with asyncio.timeout(None) as timeout:

                    def arm_timeout() -> None:
                        timeout.reschedule(loop.time() + delay)

                    try:
                        await body(arm_timeout)
                    finally:
                        expired = timeout.expired()
            except BaseException as exc:
                return exc, expired
            return None, expired
        if mechanism == "asyncio.wait_for":
            try:
                await asyncio.wait_for(body(lambda: None), delay)
            except BaseException as exc:
                return exc, isinstance(exc, TimeoutError) and not isinstance(exc, RimeError)
            return None, False
        if mechanism == "Task.cancel":
            handles: list[asyncio.TimerHandle] = []
            task: asyncio.Task[None]

            def arm_cancel() -> None:
                if delay <= 0:
                    task.cancel()
                else:
                    handles.append(loop.call_later(delay, task.cancel))

            task = asyncio.create_task(body(arm_cancel))
            try:
                await asyncio.wait([task])
            finally:
                for handle in handles:
                    handle.cancel()
            if task.cancelled():
                return asyncio.CancelledError(), True
            return task.exception(), False
        raise AssertionError(f"unknown mechanism {mechanism}")


# ----------------------------------------------------------------------------- leaks


async def _client_sockets_settled(port: int, expected: int) -> int | None:
    """:func:`client_sockets`, once it shows *expected* or a second has passed. asyncio
    closes a transport's file descriptor in a callback of a later loop iteration, so right
    after a socket's close has completed its fd may still be open for a moment (under load,
    for a few iterations): that is not a socket left behind."""
    with anyio.move_on_after(1.0):
        while (count := client_sockets(port)) is not None and count != expected:  # noqa: ASYNC110 - no event for an fd closing
            await anyio.sleep(0.01)
    return client_sockets(port)


def client_sockets(port: int) -> int | None:
    """Open TCP sockets of this process connected to *port* (the client's side of its
    connections to the emulator), from ``/proc``; None where there is no ``/proc``."""
    try:
        inodes = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        count = 0
        for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
            with open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                    if remote_port == port and fields[9] in inodes:
                        count += 1
        return count
    except OSError:
        return None


def library_tasks() -> list[str]:
    """Running tasks of rime-trio's client (not its emulator), on either backend: by task
    name, and on asyncio also by the code of the task's coroutine (finish_shielded's
    teardown task has no name of its own)."""
    found = [
        name
        for task in anyio.get_running_tasks()
        if (name := task.name or "").startswith("rime_trio.")
        and not name.startswith("rime_trio.testing")
    ]
    if sniffio.current_async_library() == "asyncio":
        for task in asyncio.all_tasks():
            code = getattr(task.get_coro(), "cr_code", None)
            filename = code.co_filename if code is not None else ""
            if "/rime_trio/" in filename and "/rime_trio/testing/" not in filename:
                name = f"{task.get_name()} ({code.co_qualname})"  # type: ignore[union-attr]
                if task.get_name() not in found:
                    found.append(name)
    return found


def other_tasks() -> list[str]:
    """Every task but the running one and trio's own system tasks."""
    if sniffio.current_async_library() == "asyncio":
        me = asyncio.current_task()
        return [
            f"{t.get_name()} ({getattr(t.get_coro(), '__qualname__', '?')})"
            for t in asyncio.all_tasks()
            if t is not me
        ]
    me_id = id(trio.lowlevel.current_task())
    return [
        t.name or "?"
        for t in anyio.get_running_tasks()
        if t.id != me_id and t.name not in ("<init>", "<TrioToken.run_sync_soon task>")
    ]


async def settle(client: RimeClient, emulator: RimeEmulator, run: Run) -> None:
    """Rule 3 while the client is open: after the stream and the pool's background work,
    only idle sockets are open and no client task runs."""
    stream = run.stream
    try:
        with anyio.fail_after(10):
            if stream is not None and run.entered:
                await stream.finished.wait()
            await client.pool.wait_teardowns()
            await emulator.wait_open_sockets(client.pool.idle)
    except TimeoutError:
        run.violated(
            f"sockets or teardowns left: emulator has {emulator.stats.open_sockets} open, "
            f"pool idle {client.pool.idle}, stream finished "
            f"{stream is not None and stream.finished.is_set()}"
        )
    sockets = await _client_sockets_settled(emulator.port, client.pool.idle)
    if sockets is not None and sockets != client.pool.idle:
        run.violated(
            f"the client holds {sockets} TCP sockets to the server, pool idle {client.pool.idle}"
        )
    if client.pool.idle > client.pool_settings.max_size:
        run.violated(f"pool holds {client.pool.idle} idle sockets, more than its maximum")
    opening = [s for s in client.pool.sockets if not s.ready.is_set()]
    if opening:
        run.violated(f"pool still opening {len(opening)} sockets")
    leftover = library_tasks()
    if leftover:
        run.violated(f"client tasks left after the stream: {leftover}")
    if stream is not None and run.entered:
        buffered = stream.buffered_audio_bytes
        if buffered:
            how = "read to the end" if run.read_to_the_end else "left early"
            run.violated(f"stream.buffered_audio_bytes == {buffered} after the stream ({how})")


# ----------------------------------------------------------------------------- running a plan


class PlanRunner:
    def __init__(
        self,
        plan: Plan,
        client: RimeClient,
        emulator: RimeEmulator,
        canceller: Canceller,
        run: Run,
    ) -> None:
        self.plan = plan
        self.client = client
        self.emulator = emulator
        self.canceller = canceller
        self.run = run

    def _op_cancel(self, point: int, kind: str) -> tuple[str, float] | None:
        plan = self.plan
        if point == plan.target and plan.scope == "op":
            return plan.mechanism, plan.delay
        if kind == "poll":
            return plan.poll_mechanism, plan.poll_delay
        return None

    async def _attempt(
        self, cancel: tuple[str, float] | None, call: Callable[[], Awaitable[Any]]
    ) -> tuple[bool, Any]:
        if cancel is None:
            return True, await call()
        return await self.canceller.around_op(cancel[0], cancel[1], call)

    def _took(self, event: object) -> None:
        run = self.run
        if isinstance(event, AudioChunk):
            run.audio.setdefault(run.epoch, bytearray()).extend(event.data)
            run.note(f"  got {len(event.data)} B (epoch {run.epoch})")

    async def _receive(self, point: int, kind: str) -> None:
        run = self.run
        stream = run.stream
        assert stream is not None
        if run.read_to_the_end:
            return
        try:
            returned, event = await self._attempt(self._op_cancel(point, kind), stream.receive)
        except EndOfAudio:
            run.ended = True
            run.note(f"{self.plan.point_name(point)}: EndOfAudio")
            return
        except RimeError as exc:
            run.failure = exc
            run.note(f"{self.plan.point_name(point)}: {type(exc).__name__}: {exc}")
            return
        if returned:
            run.note(f"{self.plan.point_name(point)}: {type(event).__name__}")
            self._took(event)
        else:
            run.note(f"{self.plan.point_name(point)}: cancelled")

    async def _push(self, point: int, text: str, cancel: tuple[str, float] | None) -> bool:
        run = self.run
        stream = run.stream
        assert stream is not None
        push = Push(run.epoch, text, returned=False)
        run.pushes.append(push)
        try:
            push.returned, _ = await self._attempt(cancel, lambda: stream.push_text(text))
        except RimeError as exc:
            push.error = exc
        outcome = (
            "ok"
            if push.returned
            else f"raised {type(push.error).__name__}"
            if push.error
            else "cancelled"
        )
        run.note(f"{self.plan.point_name(point)} {text!r}: {outcome}")
        return push.returned or push.error is not None

    async def _op(self, point: int, op: Op) -> None:
        run = self.run
        stream = run.stream
        assert stream is not None
        kind = op[0]
        cancel = self._op_cancel(point, kind)
        name = self.plan.point_name(point)
        if kind == "push":
            done = await self._push(point, op[1], cancel)
            if not done and self.plan.retry_cancelled_push:
                await self._push(point, op[1], None)  # what a caller does after a timeout
        elif kind in ("flush", "end_input"):
            call = stream.flush if kind == "flush" else stream.end_input
            try:
                returned, _ = await self._attempt(cancel, call)
            except RimeError as exc:
                run.note(f"{name}: raised {type(exc).__name__}")
                return
            run.note(f"{name}: {'ok' if returned else 'cancelled'}")
            if kind == "end_input":
                if not returned:
                    # What a caller does after a timeout here (it is idempotent): without it,
                    # the receives that follow would wait for the input to end.
                    await stream.end_input()
                    run.note(f"{name}: again, ok")
                run.input_ended = True
        elif kind == "clear":
            epoch = stream._state.epoch
            try:
                returned, _ = await self._attempt(cancel, stream.clear)
            except RimeError as exc:
                run.note(f"{name}: raised {type(exc).__name__}")
                returned = False
            effective = stream._state.epoch != epoch
            if effective:
                run.clear_effective = True
                run.epoch += 1
            run.note(f"{name}: {'ok' if returned else 'cancelled'}, took effect: {effective}")
        elif kind in ("poll", "receive"):
            await self._receive(point, kind)
        else:
            raise AssertionError(f"unknown op {op}")

    async def _drain(self) -> None:
        """After the plan: end the input (again, if its end_input was cancelled) and read
        until EndOfAudio or a RimeError, as a caller who keeps going would."""
        run = self.run
        stream = run.stream
        assert stream is not None
        if not run.input_ended:
            await stream.end_input()
            run.input_ended = True
            run.note("drain: end_input")
        # A poll that cancels before it starts never reads (receive() checks for cancellation
        # first, as trio's channels do): a loop of them would never end.
        delay = max(self.plan.poll_delay, 0.0005)
        poll = (self.plan.poll_mechanism, delay) if self.plan.drain_poll else None
        while not run.read_to_the_end:
            try:
                returned, event = await self._attempt(poll, stream.receive)
            except EndOfAudio:
                run.ended = True
                run.note("drain: EndOfAudio")
            except RimeError as exc:
                run.failure = exc
                run.note(f"drain: {type(exc).__name__}: {exc}")
            else:
                if returned:
                    self._took(event)

    async def _body(self, arm: Callable[[], None]) -> None:
        plan = self.plan
        run = self.run
        block = plan.scope == "block"
        exit_point = len(plan.ops) + 1

        def arm_at(point: int) -> None:
            if block and point == plan.target:
                run.armed = True
                where = plan.point_name(point)
                run.note(f"armed {plan.mechanism} (block, {plan.delay * 1000:g} ms) at {where}")
                arm()

        before = set(self.client._streams)
        context = self.client.stream()
        (run.stream,) = set(self.client._streams) - before
        arm_at(0)
        run.note("enter")
        async with context as stream:
            run.entered = True
            for point, op in enumerate(plan.ops, start=1):
                arm_at(point)
                await self._op(point, op)
            await self._drain()
            arm_at(exit_point)
            run.note("exit")
        assert stream is run.stream

    async def run_stream(self) -> None:
        plan = self.plan
        run = self.run
        if plan.scope == "block":
            if plan.mechanism in TIMED_FROM_START:
                run.armed = True  # timed from here, whatever point the stream is at then
            left, cancelled = await self.canceller.around_block(
                plan.mechanism, plan.delay, self._body
            )
        else:
            try:
                await self._body(lambda: None)
                left, cancelled = None, False
            except BaseException as exc:
                left, cancelled = exc, False
        run.left_with = left
        run.note(f"left the block with {left!r} (mechanism cancelled: {cancelled})")
        self._check_what_left(left)

    def _check_what_left(self, left: BaseException | None) -> None:
        """Only the mechanism's own outcome or one RimeError may leave the block."""
        run = self.run
        if left is None or isinstance(left, RimeError):
            if isinstance(left, RimeError) and run.failure is not None and left is not run.failure:
                # The block raises the stream's failure, the one receive() raised.
                run.violated(f"the block raised {left!r}, receive() raised {run.failure!r}")
            return
        if isinstance(left, BaseExceptionGroup):
            run.violated(f"an ExceptionGroup left the block: {left!r}")
            return
        mechanism = self.plan.mechanism
        expected: tuple[type[BaseException], ...] = ()
        if run.armed:
            if mechanism == "trio.fail_after":
                expected = (trio.TooSlowError,)
            elif mechanism in ("asyncio.timeout", "asyncio.wait_for"):
                expected = (TimeoutError,)
            elif mechanism == "Task.cancel":
                expected = (asyncio.CancelledError,)
        if not isinstance(left, expected):
            run.violated(f"{left!r} left the block (expected nothing, a RimeError or {expected})")


# ----------------------------------------------------------------------------- the oracle


def _seq(context_id: str | None, prefix: str) -> int | None:
    if context_id is None or not context_id.startswith(prefix):
        return None
    digits = context_id[len(prefix) :]
    return int(digits) if digits.isdigit() else None


def check_stream(run: Run, emulator: RimeEmulator) -> None:
    """Rules 1, 2 and 4: audio and text, epoch by epoch (a clear() starts a new epoch)."""
    stream = run.stream
    if stream is None:
        return
    state = stream._state
    assert isinstance(state, StreamState)  # /ws3: v1 has its own issue
    prefix = state.tag + "#"
    stats = emulator.stats
    # The boundary between the epochs: the last message sent before the clear.
    boundary = math.inf
    if run.clear_effective and not state._holding:
        boundary = state._cleared_seq

    def epoch(seq: int) -> int:
        return 0 if seq <= boundary else 1

    texts: dict[int, str] = {}
    connections_of: dict[int, set[int]] = {}
    for connection, messages in stats.received.items():
        for message in messages:
            if not isinstance(message, TextMessage):
                continue
            seq = _seq(message.context_id, prefix)
            if seq is None:
                continue
            if seq in texts and texts[seq] != message.text:
                run.violated(f"message #{seq} sent twice with different text")
            texts[seq] = message.text
            connections_of.setdefault(epoch(seq), set()).add(connection)
    final_epoch = run.epoch
    complete = run.ended and not run.plan.server.ends_streams_early
    for e in range(final_epoch + 1):
        sent = "".join(texts[s] for s in sorted(texts) if epoch(s) == e)
        strict = "".join(p.text for p in run.pushes if p.epoch == e and p.returned)
        loose = "".join(
            p.text for p in run.pushes if p.epoch == e and (p.returned or p.error is None)
        )
        _check_text(run, e, sent, strict, loose, complete and e == final_epoch)
        # Audio: every connection that spoke for this epoch is a candidate (a retry re-sends
        # everything since the last clear on a new one); the last one is the complete answer.
        candidates: dict[int, bytes] = {}
        for connection in sorted(connections_of.get(e, ())):
            candidates[connection] = b"".join(
                _render(r.text)
                for r in stats.runs.get(connection, [])
                if r.text and (seq := _seq(r.context_id, prefix)) is not None and epoch(seq) == e
            )
        taken = bytes(run.audio.get(e, b""))
        if complete and e == final_epoch:
            want = candidates[max(candidates)] if candidates else b""
            if taken != want:
                run.violated(f"rule 1, epoch {e}: completed stream {_compare(taken, want)}")
        elif taken and not any(c.startswith(taken) for c in candidates.values()):
            best = max(candidates.values(), key=lambda c: _common(taken, c), default=b"")
            run.violated(f"rule 1, epoch {e}: audio taken is not a prefix: {_compare(taken, best)}")
    empty = isinstance(run.failure, EmptyTextError) or isinstance(run.left_with, EmptyTextError)
    words = any(p.returned and any(c.isalnum() for c in p.text) for p in run.pushes)
    if empty and not run.clear_effective and words:
        run.violated("EmptyTextError although a push_text of words returned normally")


def _check_text(run: Run, e: int, sent: str, strict: str, loose: str, complete: bool) -> None:
    """Rule 4 for epoch *e*: the server's text is a prefix of the text of the pushes that
    returned (*strict*), and all of it (but a tail with no letter or digit) once the stream
    completed; *loose* adds the pushes that were cancelled (raised ⇒ must not have queued)."""
    if not strict.startswith(sent):
        if loose.startswith(sent):
            run.violated(
                f"rule 4, epoch {e}: the server got {sent!r}, but the pushes that returned "
                f"say {strict!r}: a push_text that raised had queued its text"
            )
        else:
            run.violated(
                f"rule 4, epoch {e}: the server got {sent!r}, pushed {strict!r}", TextNotExact
            )
    elif complete and any(c.isalnum() for c in strict[len(sent) :]):
        # The README: "joining what was sent gives back your text, less anything at the very
        # end with no letter or digit" (whitespace, a trailing emoji or mark).
        run.violated(
            f"rule 4, epoch {e}: the stream completed, but {strict[len(sent) :]!r} "
            f"of the pushed text never reached the server",
            TextNotExact,
        )


def _common(a: bytes, b: bytes) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _compare(taken: bytes, want: bytes) -> str:
    common = _common(taken, want)
    return (
        f"took {len(taken)} B, the server's audio is {len(want)} B; "
        f"they agree for the first {common} B"
        + (
            " (taken is shorter: audio lost)"
            if common == len(taken) and len(taken) < len(want)
            else ""
        )
    )


async def _run_plan(plan: Plan) -> Run:
    server = plan.server
    config = EmulatorConfig(chunk_bytes=plan.chunk_bytes, real_time_factor=plan.real_time_factor)
    settings = StreamSettings(
        retries=2,
        retry_backoff=0.002,
        audio_timeout=0.3 if server.kind == "stall" and server.seconds > 1 else 5.0,
        text_buffer=plan.text_buffer,
        audio_buffer=plan.audio_buffer,
        max_buffered_audio_bytes=plan.max_buffered_audio_bytes,
    )
    run = Run(plan)
    async with open_emulator(config, tcp_faults=server.kind == "drop") as emulator:
        with anyio.move_on_after(HANG) as hang_guard:
            async with anyio.create_task_group() as helpers:
                async with RimeClient(
                    base_url=emulator.ws_url,
                    api_key=API_KEY,
                    sample_rate=RATE,
                    teardown_timeout=0.25,
                    stream_settings=settings,
                ) as client:
                    runner = PlanRunner(plan, client, emulator, Canceller(helpers), run)
                    await prepare_socket(plan.socket, client, emulator)
                    first = emulator.stats.handshakes + (1 if plan.socket == "fresh" else 0)
                    fault = server.fault(first)
                    emulator.config.faults = [fault] if fault is not None else []
                    await runner.run_stream()
                    await settle(client, emulator, run)
                helpers.cancel_scope.cancel()
        if hang_guard.cancelled_caught:
            run.violated(f"the stream hung: still running after {HANG:g} s", StreamHung)
        try:
            with anyio.fail_after(10):
                await emulator.wait_open_sockets(0)
        except TimeoutError:
            run.violated(f"{emulator.stats.open_sockets} sockets open after the client closed")
        if library_tasks():
            run.violated(f"client tasks left after the client closed: {library_tasks()}")
        sockets = client_sockets(emulator.port)
        if sockets:
            run.violated(f"the client holds {sockets} TCP sockets after it closed")
    left = other_tasks()
    if left:
        run.violated(f"tasks left after the emulator stopped: {left}")
    check_stream(run, emulator)
    return run


async def prepare_socket(socket: str, client: RimeClient, emulator: RimeEmulator) -> None:
    """``fresh``: nothing open; ``prewarmed``: ``prewarm()``; ``second``: one whole stream
    first, and its replacement spare open in the pool (the stream takes a pooled socket)."""
    if socket == "prewarmed":
        await client.prewarm()
    elif socket == "second":
        async with client.stream() as stream:
            await stream.push_text("A stream before.")
            await stream.end_input()
            async for _ in stream:
                pass
        await client.pool.wait_teardowns()  # and opens: the spare, opened after its first audio
        assert client.pool.idle >= 1  # the spare, and (segment="never") the socket itself


def run_plan(plan: Plan, backend: str) -> Run:
    """Run *plan* on *backend* (its own event loop and emulator); raise AssertionError with
    every rule broken and the trace."""
    run = anyio.run(_run_plan, plan, backend=backend)
    if run.errors:
        raise min(run.kinds, key=PRIORITY.index)(f"{plan!r} on {backend}\n{run.report()}")
    return run


# ----------------------------------------------------------------------------- rule 5


class MyAppError(Exception):
    """The caller's own error."""


@dataclass(frozen=True)
class ErrorPlan:
    """Raise the caller's error at step *at* of a small stream body (push, flush, receive,
    end_input, receive...), or (``server_to_app``) when receive() raises the ServerError of
    an ``error_event`` server, from that ServerError.

    *where*: ``stream`` checks what leaves ``async with client.stream()``; ``through_client``
    lets it go on through ``async with RimeClient()`` and checks what leaves that;
    ``client_only`` raises inside the client's block after a whole stream.
    """

    kind: Literal["app", "group", "server_to_app"]
    at: int = 0
    where: Literal["stream", "through_client", "client_only"] = "stream"
    socket: Literal["fresh", "prewarmed", "second"] = "fresh"
    cancel_pending: bool = False  # a cancel scope around the block was cancelled just before


STEPS = ("push", "flush", "receive", "end_input", "receive", "receive", "receive")


async def _run_error_plan(plan: ErrorPlan) -> tuple[BaseException | None, BaseException, Run]:
    raised: list[BaseException] = []

    def make() -> BaseException:
        error: BaseException = (
            ExceptionGroup("mine", [KeyError("k")]) if plan.kind == "group" else MyAppError("mine")
        )
        raised.append(error)
        return error

    fault = [Fault("error_event", body="no such voice")] if plan.kind == "server_to_app" else []
    left: BaseException | None = None
    run = Run(Plan((), 0, "none"))
    with anyio.fail_after(HANG):
        async with open_emulator(EmulatorConfig(chunk_bytes=1600)) as emulator:
            try:
                async with RimeClient(
                    base_url=emulator.ws_url,
                    api_key=API_KEY,
                    sample_rate=RATE,
                    teardown_timeout=0.25,
                    stream_settings=StreamSettings(retries=0, audio_timeout=5.0),
                ) as client:
                    await prepare_socket(plan.socket, client, emulator)
                    emulator.config.faults = list(fault)
                    try:
                        with anyio.CancelScope() as outer:
                            async with client.stream() as stream:
                                run.stream = stream
                                run.entered = True
                                if plan.where == "client_only":
                                    await stream.push_text("Hello there.")
                                    await stream.end_input()
                                    async for _ in stream:
                                        pass
                                else:
                                    await _error_body(plan, stream, outer, make, run)
                    except BaseException as exc:
                        if plan.where == "stream":
                            left = exc
                        else:
                            raise
                    if plan.where == "client_only":
                        raise make()
                    await settle(client, emulator, run)
            except BaseException as exc:
                if plan.where == "stream":
                    run.violated(f"the client block raised {exc!r}")
                else:
                    left = exc
            try:
                with anyio.fail_after(10):
                    await emulator.wait_open_sockets(0)
            except TimeoutError:
                run.violated(f"{emulator.stats.open_sockets} sockets open after the client closed")
    return left, raised[-1] if raised else MyAppError("never raised"), run


async def _error_body(
    plan: ErrorPlan,
    stream: SpeechStream,
    outer: anyio.CancelScope,
    make: Callable[[], BaseException],
    run: Run,
) -> None:
    def fail(cause: BaseException | None = None) -> BaseException:
        if plan.cancel_pending:
            outer.cancel()
        error = make()
        error.__cause__ = cause
        return error

    for index, step in enumerate(STEPS):
        if index == plan.at and plan.kind != "server_to_app":
            raise fail()
        if step == "push":
            await stream.push_text("Hello there. How are you today?")
        elif step == "flush":
            await stream.flush()
        elif step == "end_input":
            await stream.end_input()
        else:
            try:
                await stream.receive()
            except EndOfAudio:
                run.ended = True
                break
            except ServerError as error:
                run.failure = error
                if plan.kind == "server_to_app":
                    raise fail(error) from error
                raise
    if plan.kind == "server_to_app":
        raise AssertionError("no ServerError came from an error_event server")
    raise fail()  # the raise point was past the end of the audio


def _trio_split(
    plan: ErrorPlan, backend: str, left: BaseException | None, raised: BaseException
) -> bool:
    """Whether *left* is what trio itself makes of the caller's group *raised* leaving a
    cancelled scope: a trio CancelScope splits the Cancelled out of any group leaving it once
    cancelled, and ``split`` returns a new group (same message, the very same leaves) even
    when nothing matched, so a bare ``with trio.CancelScope() as s: s.cancel(); raise group``
    gives a copy too. Not the library's doing: same message, same leaf objects, accepted."""
    return (
        backend == "trio"
        and plan.cancel_pending
        and isinstance(left, BaseExceptionGroup)
        and isinstance(raised, BaseExceptionGroup)
        and type(left) is type(raised)
        and left.message == raised.message
        and len(left.exceptions) == len(raised.exceptions)
        and all(a is b for a, b in zip(left.exceptions, raised.exceptions, strict=True))
    )


def run_error_plan(plan: ErrorPlan, backend: str) -> None:
    left, raised, run = anyio.run(_run_error_plan, plan, backend=backend)
    problems = list(run.errors)
    kind = min(run.kinds, key=PRIORITY.index) if run.kinds else HarnessFailure
    if left is not raised and not _trio_split(plan, backend, left, raised):
        kind = WrongExceptionLeft
        cause = f", caused by {left.__cause__!r}" if left is not None and left.__cause__ else ""
        problems.insert(
            0,
            f"rule 5: the caller raised {raised!r}; {left!r}{cause} left the "
            f"{'stream' if plan.where == 'stream' else 'client'} block",
        )
    if problems:
        raise kind(f"{plan!r} on {backend}\n" + "\n".join(f"  - {p}" for p in problems))


# ----------------------------------------------------------------------------- strategies


def _close_server(after: int, code_reason: tuple[int, str], which: str) -> Server:
    return Server("close", after=after, code=code_reason[0], reason=code_reason[1], which=which)  # type: ignore[arg-type]


servers = st.one_of(
    st.just(Server()),
    st.builds(
        Server,
        kind=st.just("stall"),
        after=st.sampled_from([0, 1, 3]),
        seconds=st.sampled_from([0.005, 0.03, 3600.0]),
    ),
    st.builds(
        _close_server,
        after=st.sampled_from([0, 1, 2, 4]),
        code_reason=st.sampled_from([(1011, "500: boom"), (1000, "")]),
        which=st.sampled_from(["first", "all"]),
    ),
    st.builds(
        Server,
        kind=st.just("drop"),
        after=st.sampled_from([0, 1, 3]),
        which=st.sampled_from(["first", "all"]),
    ),
)


@st.composite
def plans(draw: st.DrawFn, mechanism: str) -> Plan:
    """A stream's life as the caller drives it, with one point to cancel by *mechanism*."""
    chosen = draw(st.lists(st.sampled_from(SENTENCES), min_size=1, max_size=3))
    text = " ".join(chosen) + draw(st.sampled_from([" ", ""]))
    cuts = draw(st.lists(st.integers(1, max(1, len(text) - 1)), max_size=4))
    bounds = sorted({0, len(text), *cuts})
    ops: list[Op] = [("push", text[a:b]) for a, b in itertools.pairwise(bounds)]
    for _ in range(draw(st.integers(0, 1))):
        ops.insert(draw(st.integers(0, len(ops))), ("flush",))
    for _ in range(draw(st.integers(0, 3))):
        ops.insert(draw(st.integers(0, len(ops))), ("poll",))
    clear = draw(st.sampled_from(["none", "before_end", "after_end"]))
    if clear == "before_end":
        ops.insert(draw(st.integers(0, len(ops))), ("clear",))
        if draw(st.booleans()):
            ops.append(("push", " " + draw(st.sampled_from(SENTENCES))))
    ops.append(("end_input",))
    receives = draw(st.integers(0, 5))
    ops += [("receive",)] * receives
    if clear == "after_end":
        ops.insert(draw(st.integers(len(ops) - receives, len(ops))), ("clear",))
    target = draw(st.integers(0, len(ops) + 1))
    edge = target in (0, len(ops) + 1)
    scope = "block" if mechanism in BLOCK_ONLY or edge else draw(st.sampled_from(["op", "block"]))
    if scope == "block" and mechanism in TIMED_FROM_START:
        delay = draw(st.sampled_from([0.0, 0.002, 0.006, 0.02]))
    else:
        delay = draw(st.sampled_from([0.0, 0.001, 0.004]))
    return Plan(
        ops=tuple(ops),
        target=target,
        mechanism=mechanism,
        scope=scope,  # type: ignore[arg-type]
        delay=delay,
        poll_mechanism="asyncio.timeout" if mechanism in BLOCK_ONLY else mechanism,
        # asyncio.wait_for(..., 0) never runs the call on 3.11: as a poll it would never read
        poll_delay=draw(
            st.sampled_from(
                [0.003, 0.001, 0.0005]
                if mechanism == "asyncio.wait_for"
                else [0.003, 0.0, 0.001, 0.0005]
            )
        ),
        socket=draw(st.sampled_from(["fresh", "prewarmed", "second"])),
        server=draw(servers),
        chunk_bytes=draw(st.sampled_from([1600, 400])),
        real_time_factor=draw(st.sampled_from([0.0, 0.02, 0.1])),
        text_buffer=draw(st.sampled_from([256, 1])),
        audio_buffer=draw(st.sampled_from([64, 1])),
        max_buffered_audio_bytes=draw(st.sampled_from([2 * 1024 * 1024, 1000])),
        retry_cancelled_push=draw(st.booleans()),
        drain_poll=draw(st.booleans()),
    )


error_plans = st.builds(
    ErrorPlan,
    kind=st.sampled_from(["app", "group", "server_to_app"]),
    at=st.integers(0, len(STEPS)),
    where=st.sampled_from(["stream", "through_client", "client_only"]),
    socket=st.sampled_from(["fresh", "prewarmed", "second"]),
    cancel_pending=st.booleans(),
).filter(lambda plan: not (plan.where == "client_only" and plan.kind == "server_to_app"))
