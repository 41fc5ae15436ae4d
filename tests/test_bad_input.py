"""The bad-input harness (issue 20, "Make them hard to bring back"): whatever a caller passes
and whatever a server sends, a stream ends in one of its documented outcomes, on trio and on
asyncio: the audio, or one exception from the ``RimeError`` tree. Never a raw
``ExceptionGroup``, a transport exception, ``UnicodeError``, ``OverflowError``, ``KeyError``,
``TypeError``..., and never a hang: each example runs under a hang guard, and reaching it
fails the example.

The caller's side runs real streams, and ``client.synthesize`` (over HTTP and over the
WebSocket), against one emulator that lives in a thread of its own for the whole module, with
any ``str`` hypothesis can build (lone surrogates, NUL, emoji, direction marks, word joiners;
100 KB words as explicit examples), cut into tokens down to one character, with flushes
between them, pushed by ``push_text``, ``text_in.send`` or ``text_in.send_nowait``, through
blingfire or tokenizers that split anywhere, change, drop or repeat text. A push is refused
(``InvalidTextError``) exactly when it holds a lone surrogate, and then nothing of it is sent;
the text the emulator receives is the accepted text, "less anything at the very end with no
letter or digit" (README, "Your text, exactly"), and exactly the audio the emulator made for
it comes back; input with no letter or digit ends in ``EmptyTextError``, and nothing else may
go wrong against a healthy server.

The server's side runs a real stream against a scripted ``/ws3`` server (``bad_server.py``)
that answers the client's text with events drawn by hypothesis: well-formed ``chunk``,
``timestamps`` and ``done`` events (tagged for the stream, for another, or for nothing; in
one frame or in fragments with pings between them), with up to two faults among them (an
``error`` event, or an event with one field of another type, out of range, out of order or
missing: huge integers, NaN and infinities as non-standard JSON, negative or decreasing
times; or a whole frame of any bytes, opcode and flags); and an end (a close with any code,
a dropped connection, or a stall that the stream's ``audio_timeout`` must catch). The first
fault decides the outcome: ``ProtocolError`` (never retried) for a value no event can hold,
``ServerError`` for an error event; with none, a stream the server closed normally has
exactly the audio of the chunks tagged for it. Answers to the upgrade that are not a
WebSocket's are checked one by one.

The example budget is the hypothesis profile's (``ci`` in CI, ``fuzz`` under ``nox -s
fuzz``). The defects the harness found are pinned at the end as regression tests (each
failed before its fix), and folded into the strategies.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import anyio
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rime_trio import (
    APIStatusError,
    AudioChunk,
    EmptyTextError,
    InvalidTextError,
    ProtocolError,
    RimeClient,
    RimeConnectionError,
    RimeError,
    RimeTimeoutError,
    ServerError,
    SpeechStream,
    StreamSettings,
    Tokenizer,
    WordTimestamp,
)
from rime_trio._protocol import TextMessage
from rime_trio.testing import EmulatorConfig, RimeEmulator, render_speech

from .bad_server import ServerScript, close_payload, frame, scripted_server
from .conftest import API_KEY, BACKENDS
from .emulator_thread import emulator_in_thread
from .speech import wire_prefix

RATE = 8000
# A hang guard only (the machine may be busy): reaching it fails the example.
HANG_GUARD = 60.0


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def _speakable(text: str) -> bool:
    """Whether *text* holds a letter or a digit (what a stream counts as text to speak)."""
    return any(c.isalnum() for c in text)


def _short(value: object) -> str:
    """repr() for a failing example, with the 100 KB texts abbreviated."""
    if isinstance(value, str) and len(value) > 60:
        return f"{value[:25]!r} + ... ({len(value):,} characters) + {value[-25:]!r}"
    if isinstance(value, list):
        if len(value) > 12:
            shown = ", ".join(map(_short, value[:6]))
            return f"[{shown}, ... ({len(value)} items) ..., {_short(value[-1])}]"
        return "[" + ", ".join(map(_short, value)) + "]"
    return getattr(value, "__name__", None) or repr(value)


# ============================================================================= the caller

# What LLM tokens and pasted text hold that plain words do not.
SPECIALS = [
    "\ud83c",  # the first half of 🌍, as a str built from UTF-16 halves carries it
    "\udf0d",  # ...and the second half, on its own
    "\ud83c\udf0d",  # both halves, but as two code points: still not UTF-8
    "\udcff",  # a byte decoded with errors="surrogateescape"
    "\x00",
    "🌍",
    "👩‍👩‍👧",  # a ZWJ sequence
    "🇫🇷",
    "\u200f",  # RIGHT-TO-LEFT MARK
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "\u2066\u2069",  # an isolate, opened and closed
    "\u2060",  # WORD JOINER
    "\u200b",  # ZERO WIDTH SPACE
    "\ufeff",  # BOM
    "\u00a0",  # NO-BREAK SPACE
    "\u3000",
    "\u2028",  # LINE SEPARATOR
    "\u0085",  # NEXT LINE
    "\x1c",  # str.isspace() says yes
    "\r\n",
    "\t",
    "\x1b[31m",
    "\ufffd",
    "\U0010ffff",
    "e\u0301",  # a combining accent
    "مرحبا",
    "שָׁלוֹם",
    "你好。",
    "Dr.",
    "3.5",
    "https://rime.",
    "ai/docs",
    '"Stop.',
    '"',
    "…",
    "?!",
]
WORDS = ["Hello", "there", "world", " ", " ", ". ", ".", "\n", "! ", ", "]

fragments = st.one_of(
    st.sampled_from(WORDS),
    st.sampled_from(SPECIALS),
    st.text(st.characters(codec=None), max_size=6),  # every category, surrogates included
)
caller_texts = st.lists(fragments, max_size=14).map("".join)

FLUSH = None  # in a list of pushes: a flush() between them


@st.composite
def pushes(draw: st.DrawFn) -> list[str | None]:
    """What a caller pushes: a text cut into tokens (at random places, or one character
    each), with flushes between them."""
    text = draw(caller_texts)
    if draw(st.booleans()):
        tokens = list(text)
    else:
        cuts = draw(st.lists(st.integers(0, len(text)), max_size=10))
        bounds = sorted({0, len(text), *cuts})
        tokens = [text[a:b] for a, b in itertools.pairwise(bounds)]
    items: list[str | None] = list(tokens)
    for _ in range(draw(st.integers(0, 3))):
        items.insert(draw(st.integers(0, len(items))), FLUSH)
    return items


# The huge ones, written out: 100 KB each (in UTF-8). The emulator speaks a word longer the
# more characters it has, so the ones of letters make hundreds of seconds of audio: those run
# on one backend each (test_a_huge_word_of_letters_is_sent_exactly and its HTTP twin).
HUGE_DASH = "-" * 100_000  # a 100 KB "word" with no letter or digit (no audio)
HUGE_EMOJI = "🌍" * 25_000  # 100 KB of 4-byte characters, no letter or digit
HUGE_LETTERS = "a" * 100_000  # a 100 KB word of letters
HUGE_DASH_TOKENS = [HUGE_DASH[i : i + 997] for i in range(0, len(HUGE_DASH), 997)]
HUGE_SURROGATE = "a" * 50_000 + "\ud83c" + "b" * 50_000


@pytest.fixture(scope="module")
def shared_emulator() -> Iterator[RimeEmulator]:
    # Large chunks: the huge texts make hundreds of seconds of audio.
    with emulator_in_thread(EmulatorConfig(chunk_bytes=256 * 1024)) as emulator:
        yield emulator


def _forget(emulator: RimeEmulator, connections: list[int], prefix: str) -> None:
    """Drop what the emulator kept of one finished example (its audio, mostly)."""
    stats = emulator.stats
    for number in connections:
        stats.received.pop(number, None)
        stats.runs.pop(number, None)
    for key in [k for k in stats.audio if k is not None and k.startswith(prefix)]:
        stats.audio.pop(key, None)
    for key in [k for k in stats.texts if k is not None and k.startswith(prefix)]:
        stats.texts.pop(key, None)


def _our_connections(emulator: RimeEmulator, prefix: str) -> list[int]:
    return [
        number
        for number, messages in list(emulator.stats.received.items())
        if any(
            isinstance(m, TextMessage) and (m.context_id or "").startswith(prefix) for m in messages
        )
    ]


def _whole(text: str) -> list[str]:
    return [text]


def _characters(text: str) -> list[str]:
    return list(text)


def _words(text: str) -> list[str]:
    return text.split()


def _shouting(text: str) -> list[str]:
    return [text.upper()]  # "ß" becomes "SS": not the text's length


def _normalized(text: str) -> list[str]:
    return [unicodedata.normalize("NFKC", text)]


def _nothing(text: str) -> list[str]:
    return []


def _twice(text: str) -> list[str]:
    return [text, text]


def _blanks(text: str) -> list[str]:
    return ["", " ", text, "\n"]


#: the default (blingfire), and tokenizers that split anywhere, change, drop or repeat text
TOKENIZERS: list[Tokenizer | None] = [
    None,
    _whole,
    _characters,
    _words,
    _shouting,
    _normalized,
    _nothing,
    _twice,
    _blanks,
]
PUSHES = ["push_text", "text_in.send", "text_in.send_nowait"]


@dataclass(frozen=True)
class Caller:
    items: list[str | None]  # text to push, or FLUSH
    segment: str = "bySentence"
    tokenizer: Tokenizer | None = None
    push: str = "push_text"
    context_id: str | None = None

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={_short(v)}" for k, v in vars(self).items())
        return f"Caller({fields})"


callers = st.builds(
    Caller,
    pushes(),
    st.sampled_from(["bySentence", "immediate", "never"]),
    st.sampled_from(TOKENIZERS),
    st.sampled_from(PUSHES),
    st.none() | caller_texts,
)


@dataclass
class Spoken:
    stream: SpeechStream | None
    accepted: list[str]
    refused: list[str]
    audio: bytes
    error: RimeError | None


async def _speak(emulator: RimeEmulator, caller: Caller) -> Spoken:
    accepted: list[str] = []
    refused: list[str] = []
    audio = bytearray()
    error: RimeError | None = None
    stream: SpeechStream | None = None
    with anyio.CancelScope(deadline=anyio.current_time() + HANG_GUARD) as guard:
        try:
            async with (
                RimeClient(
                    base_url=emulator.ws_url,
                    api_key=API_KEY,
                    sample_rate=RATE,
                    segment=caller.segment,
                ) as client,
                client.stream(tokenizer=caller.tokenizer, context_id=caller.context_id) as stream,
            ):
                for item in caller.items:
                    if item is FLUSH:
                        await stream.flush()
                        continue
                    try:
                        if caller.push == "push_text":
                            await stream.push_text(item)
                        elif caller.push == "text_in.send":
                            await stream.text_in.send(item)
                        else:
                            # text_in is typed as anyio's ObjectSendStream, which has no
                            # send_nowait; the object has one (documented on it)
                            stream.text_in.send_nowait(item)  # type: ignore[attr-defined]
                    except InvalidTextError:
                        refused.append(item)
                    else:
                        accepted.append(item)
                await stream.end_input()
                async for event in stream:
                    if isinstance(event, AudioChunk):
                        audio += event.data
        except RimeError as exc:
            error = exc
    assert not guard.cancel_called, f"the stream hung ({len(audio)} bytes of audio so far)"
    return Spoken(stream, accepted, refused, bytes(audio), error)


def _check_spoken(emulator: RimeEmulator, spoken: Spoken) -> None:
    # A push is refused exactly when its text holds a lone surrogate, and then is not sent.
    assert all(_has_surrogate(t) for t in spoken.refused)
    assert not any(_has_surrogate(t) for t in spoken.accepted)
    text = "".join(spoken.accepted)
    stream = spoken.stream
    assert stream is not None
    prefix = wire_prefix(stream)
    connections = _our_connections(emulator, prefix)
    try:
        if spoken.error is not None:
            # The only error a healthy server leaves room for: nothing to say.
            assert isinstance(spoken.error, EmptyTextError), repr(spoken.error)
            assert not _speakable(text)
            assert connections == []  # opened no connection: nothing was sent
            return
        assert _speakable(text), "input with no letter or digit must end in EmptyTextError"
        # Each socket the stream spoke on carries its text (a retry sends it all again);
        # joined, the messages give back the text, "less anything at the very end with no
        # letter or digit: whitespace, a trailing emoji or mark" (README).
        assert connections
        for number in connections:
            sent = "".join(
                m.text
                for m in emulator.stats.received[number]
                if isinstance(m, TextMessage) and (m.context_id or "").startswith(prefix)
            )
            assert text.startswith(sent), (_short(sent), _short(text))
            assert not _speakable(text[len(sent) :]), _short(text[len(sent) :])
        # Exactly the audio the server synthesized for it, on its last socket.
        runs = emulator.stats.runs.get(connections[-1], [])
        assert spoken.audio == b"".join(bytes(r.audio) for r in runs)
    finally:
        _forget(emulator, connections, prefix)


@pytest.mark.parametrize("backend", BACKENDS)
@given(caller=callers)
@example(Caller(["Hello \ud83c", "\udf0d world. ", FLUSH, "Bye."]))
@example(Caller(["\x00", "Hello\x00 world", ". Next."]))
@example(Caller(["Hi. 🌍", "\u2060", "\u200f", " ", FLUSH, "\u202e"]))
@example(Caller([" ", "\n", FLUSH, "\t"]))
@example(Caller(["\u200f\u2060\u202e"], segment="never"))
@example(Caller(["Stra\u00dfe. \ufb01ne. ", "x"], tokenizer=_shouting, context_id="\ud83c"))
@example(Caller(["Start: ", HUGE_DASH, " end."]))
@example(Caller(["One. ", HUGE_EMOJI, " Two."], segment="immediate", tokenizer=_characters))
@example(Caller([HUGE_SURROGATE, "Fine."], push="text_in.send"))
@example(Caller(["x", *HUGE_DASH_TOKENS, "."], segment="never", push="text_in.send_nowait"))
@example(Caller([HUGE_DASH, "Hello there."]))
@example(Caller([HUGE_EMOJI, "Hello there."], push="text_in.send"))
def test_any_text_pushed_is_sent_exactly_or_refused_with_a_rime_error(
    backend: str, shared_emulator: RimeEmulator, caller: Caller
) -> None:
    spoken = anyio.run(_speak, shared_emulator, caller, backend=backend)
    _check_spoken(shared_emulator, spoken)


@pytest.mark.parametrize(
    ("backend", "text"),
    [("trio", HUGE_LETTERS), ("asyncio", "\u200f" + HUGE_LETTERS[:60_000] + "\u202e. Done.")],
    ids=["trio-100KB-letters", "asyncio-60KB-letters-in-marks"],
)
def test_a_huge_word_of_letters_is_sent_exactly(
    backend: str, shared_emulator: RimeEmulator, text: str
) -> None:
    """A word far past the per-message limit, of letters (hundreds of seconds of audio, so
    one backend each)."""
    spoken = anyio.run(_speak, shared_emulator, Caller([text]), backend=backend)
    _check_spoken(shared_emulator, spoken)


async def _synthesize(
    emulator: RimeEmulator, text: str, mode: str
) -> tuple[bytes | None, RimeError | None]:
    url = emulator.http_url if mode == "http" else emulator.ws_url
    with anyio.CancelScope(deadline=anyio.current_time() + HANG_GUARD) as guard:
        try:
            async with RimeClient(
                base_url=url, api_key=API_KEY, sample_rate=RATE, audio_format="pcm"
            ) as client:
                result = await client.synthesize(text)
        except RimeError as exc:
            return None, exc
    assert not guard.cancel_called, "synthesize hung"
    return result.audio, None


def _spoken_in_text_order(text: str, pieces: list[str], audio: bytes) -> bool:
    """Whether *audio* is each of *pieces* rendered, in an order in which they make up
    *text* with only whitespace between and after them. The server may get the pieces in
    another order (a long text's requests run one ahead of the audio), and a text that
    repeats itself (a run of one emoji) can be made up in more than one order: each step
    tries every piece that fits the text there and whose audio comes next."""
    rendered: dict[str, bytes] = {}

    def fits(position: int, offset: int, left: list[str]) -> bool:
        if not left:
            return not text[position:].strip() and offset == len(audio)
        tried: set[str] = set()
        for i, piece in enumerate(left):
            if piece in tried:
                continue
            tried.add(piece)
            found = text.find(piece, position)
            if found < 0 or text[position:found].strip():
                continue
            sound = rendered.setdefault(piece, render_speech(piece, RATE).pcm)
            if audio[offset : offset + len(sound)] != sound:
                continue
            if fits(found + len(piece), offset + len(sound), left[:i] + left[i + 1 :]):
                return True
        return False

    return fits(0, 0, pieces)


def _forget_everything(emulator: RimeEmulator) -> None:
    stats = emulator.stats
    for kept in (stats.received, stats.runs, stats.audio, stats.texts):
        kept.clear()


@pytest.mark.parametrize("backend", BACKENDS)
@given(text=caller_texts, mode=st.sampled_from(["http", "ws"]))
@example(text="Hello \ud83c\udf0d", mode="http")
@example(text="\x00", mode="http")
@example(text="\u200f\u2060\u202e", mode="http")
@example(text="\u200f\u2060\u202e", mode="ws")
@example(text=" \n\t\u3000", mode="http")
@example(text=HUGE_DASH, mode="http")
@example(text=HUGE_EMOJI, mode="http")
@example(text=HUGE_SURROGATE, mode="http")
@example(text=HUGE_SURROGATE, mode="ws")
@example(text="a" + " " * 3000 + "b", mode="http")
@example(text="Hi. " + "🌍" * 2000 + " Bye.", mode="ws")
def test_synthesize_of_any_text_gives_audio_or_a_rime_error(
    backend: str, shared_emulator: RimeEmulator, text: str, mode: str
) -> None:
    """``client.synthesize``, over HTTP (the text cut into requests past 1,000 characters)
    and over the WebSocket (a client with a ``ws://`` base_url)."""
    _forget_everything(shared_emulator)
    requests = shared_emulator.stats.texts[None]  # the HTTP requests' texts
    audio, error = anyio.run(_synthesize, shared_emulator, text, mode, backend=backend)
    try:
        if _has_surrogate(text):
            assert isinstance(error, InvalidTextError), repr(error)
            assert requests == []  # refused before anything was sent
            assert not shared_emulator.stats.received
        elif isinstance(error, EmptyTextError):
            assert not _speakable(text)  # no letter or digit (always, if only whitespace)
            assert requests == []
        else:
            assert text.strip()
            assert error is None, repr(error)
            assert audio  # the emulator speaks at least its lead-in silence
            if mode == "http":
                # Each request's audio, in the order of the text, nothing else.
                assert _spoken_in_text_order(text, list(requests), audio), [
                    _short(r) for r in requests
                ]
            else:  # exactly what the server synthesized on the stream's socket
                runs = shared_emulator.stats.runs
                assert len(runs) == 1
                assert audio == b"".join(bytes(r.audio) for r in next(iter(runs.values())))
    finally:
        _forget_everything(shared_emulator)


def test_http_synthesize_of_a_huge_word_of_letters(shared_emulator: RimeEmulator) -> None:
    """A word far past the per-request limit, of letters (hundreds of seconds of audio, so
    on one backend)."""
    _forget_everything(shared_emulator)
    audio, error = anyio.run(_synthesize, shared_emulator, HUGE_LETTERS, "http", backend="asyncio")
    assert error is None, repr(error)
    assert audio
    assert "".join(shared_emulator.stats.texts[None]) == HUGE_LETTERS
    _forget_everything(shared_emulator)


# ============================================================================= the server


class Raw:
    """A JSON token written as it is: NaN, Infinity, 1e400, an integer too long to print."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __repr__(self) -> str:
        return f"Raw({self.token[:20]!r}{'...' if len(self.token) > 20 else ''})"


class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


MISSING = _Sentinel("MISSING")  # the field is left out
OURS = _Sentinel("OURS")  # the contextId of the client's own text


class Tagged:
    """A contextId of the stream's own tag (the part before "#" of its text's contextId)
    with another sequence part: one it never sent, 0, or no number at all."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix

    def __repr__(self) -> str:
        return f"Tagged({_short(self.suffix)})"


def render(value: object, ours: str | None) -> str:
    """*value* as JSON text, with the sentinels and Raw tokens written out."""
    if value is OURS:
        return json.dumps(ours)
    if isinstance(value, Tagged):
        tag = (ours or "x#1").rpartition("#")[0]
        return json.dumps(f"{tag}#{value.suffix}")
    if isinstance(value, Raw):
        return value.token
    if isinstance(value, dict):
        body = ", ".join(
            f"{json.dumps(k)}: {render(v, ours)}" for k, v in value.items() if v is not MISSING
        )
        return "{" + body + "}"
    if isinstance(value, list):
        return "[" + ", ".join(render(v, ours) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return json.dumps(value)  # escaped: a lone surrogate stays valid JSON, valid UTF-8


# What a well-formed stream of events may do with each event, and what a malformed one does.
# The verdict of an event is what the stream must make of it:
#   "ok"      a valid event (it may be foreign, stale or of an unknown type: then skipped)
#   "error"   a valid `error` event: ServerError
#   "either"  an `error` event with a field the decoder may or may not check: ServerError or
#             ProtocolError
#   "bad"     a value no event can hold: ProtocolError
#   "unknown" a frame whose fate this harness does not predict (random frame bytes)
Verdict = Literal["ok", "error", "either", "bad", "unknown"]


@dataclass(frozen=True)
class Event:
    """One server frame of a script, with what the stream must make of it."""

    value: object  # rendered with render(), or bytes for a whole frame
    verdict: Verdict
    audio: bytes = b""  # the audio it adds to the stream if valid and ours
    ours: bool = False  # valid and tagged with the stream's own text

    def frame(self, pieces: int = 1) -> bytes | Callable[[str | None], bytes]:
        """The frame's bytes (for a JSON event, a function of the stream's contextId); in
        *pieces* fragments, a ping between each two (where a UTF-8 character may be cut in
        two: only the whole message must be valid UTF-8)."""
        if isinstance(self.value, bytes):
            return self.value
        value = self.value

        def fragments(ours: str | None) -> bytes:
            payload = render(value, ours).encode("utf-8", "surrogatepass")
            size = -(-len(payload) // pieces)
            parts = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
            return frame(0x9, b"between").join(
                frame(0x1 if n == 0 else 0x0, part, fin=n == len(parts) - 1)
                for n, part in enumerate(parts)
            )

        return fragments


WRONG_TYPES = [None, True, False, 0, 7, -1.5, "text", "", [], [1, "a"], {}, {"a": None}]
BAD_NUMBERS = [
    Raw("NaN"),
    Raw("Infinity"),
    Raw("-Infinity"),
    Raw("1e400"),
    Raw("-1e400"),
    10**400,
    -(10**400),
    Raw("9" * 5000),  # past Python's int-parsing digit limit
    -1,
    -0.001,
    True,
    None,
    "1.0",
    [1.0],
]
BAD_BASE64 = ["@@@", "QUJ", "QU=D", "é", "QUJD\n", " QUJD", "QQ", "=" * 4, "\x00"]


# contextIds a valid event may carry: the stream's own text's mostly, else one the stream
# must drop (another stream's, a message it never sent, none at all).
FOREIGN_TAGS = [
    Tagged(s) for s in ["2", "0", "-1", "+1", "1.0", "1 ", "\u00b9", "\u0661", "", "x", "1" * 5000]
]
VALID_CONTEXTS = [OURS] * 8 + [*FOREIGN_TAGS, None, MISSING, "other#1", "", "x", "\ud83c"]
BAD_CONTEXTS = [5, 1.5, True, [], {}, ["s#1"]]
BAD_TYPES = [MISSING, None, 1, ["chunk"], {"chunk": 1}, True]
UNKNOWN_TYPES = ["chunks", "Chunk", "", "audio", "DONE", "\x00"]


@st.composite
def _type_and_context(
    draw: st.DrawFn, kind: str, broken: str | None
) -> tuple[object, object, Verdict, bool]:
    """An event's ``type`` and ``contextId``, with *broken* naming the field made invalid
    (if either): the two values, the verdict so far, and whether a valid event of *kind* is
    tagged for the stream."""
    if broken == "type":
        kind_value: object = draw(st.sampled_from(BAD_TYPES))
    elif draw(st.integers(0, 9)) == 0:
        kind_value = draw(st.sampled_from(UNKNOWN_TYPES))  # skipped, whatever it holds
    else:
        kind_value = kind
    if broken == "contextId":
        context: object = draw(st.sampled_from(BAD_CONTEXTS))
    else:
        context = draw(st.sampled_from(VALID_CONTEXTS))
    if kind_value in UNKNOWN_TYPES:
        return kind_value, context, "ok", False
    verdict: Verdict = "bad" if broken else "ok"
    return kind_value, context, verdict, verdict == "ok" and context is OURS


@st.composite
def chunk_events(draw: st.DrawFn, broken: bool) -> Event:
    """A ``chunk`` event; *broken*: with one field of another type, invalid or missing."""
    part = draw(st.sampled_from(["type", "contextId", "data"])) if broken else None
    kind, context, verdict, ours = draw(_type_and_context("chunk", part))
    audio = draw(st.binary(max_size=48))
    data: object = base64.b64encode(audio).decode()
    if part == "data":
        data = draw(st.sampled_from([*BAD_BASE64, MISSING, 5, None, [], {"data": "QQ=="}, True]))
    message: dict[str, object] = {"type": kind, "data": data, "contextId": context}
    if draw(st.integers(0, 5)) == 0:
        message["extra"] = draw(st.sampled_from([*WRONG_TYPES, Raw("NaN"), 10**400]))
    return Event(message, verdict, audio if ours else b"", ours)


VALID_TIMES = [0, 0.0, 5e-324, 0.25, 1, 3.75, 2**53 + 1, 1e308]
TIMESTAMP_FAULTS = [
    "a word's type",
    "a time",
    "a list's type",
    "a list missing",
    "a length",
    "back in time",
    "ends before it starts",
    "stamps' type",
    "stamps missing",
]


@st.composite
def timestamps_events(draw: st.DrawFn, broken: bool) -> Event:
    """A ``timestamps`` event; *broken*: with one field of another type, out of range, out
    of order or missing."""
    count = draw(st.integers(1 if broken else 0, 3))
    part = (
        draw(st.sampled_from(["type", "contextId", *TIMESTAMP_FAULTS, *TIMESTAMP_FAULTS]))
        if broken
        else None
    )
    kind, context, verdict, ours = draw(_type_and_context("timestamps", part))
    words: list[object] = draw(
        st.lists(
            st.sampled_from(["Hello", "there", "", "🌍", "\u200f", "a\x00b", "\ud83c"]),
            min_size=count,
            max_size=count,
        )
    )
    chosen = sorted(draw(st.lists(st.sampled_from(VALID_TIMES), min_size=count, max_size=count)))
    lengths = draw(st.lists(st.sampled_from([0, 0.1, 0.5]), min_size=count, max_size=count))
    starts: list[object] = list(chosen)
    # Each end at or after its start, and in order (the k-th smallest of start + length is
    # at least the k-th start).
    ends: list[object] = []
    ends += sorted(s + n for s, n in zip(chosen, lengths, strict=True))
    lists: dict[str, object] = {"words": words, "start": starts, "end": ends}
    stamps: object = lists
    if part == "a word's type":
        words[draw(st.integers(0, count - 1))] = draw(st.sampled_from([5, None, [], {}, True]))
    elif part == "a time":
        times = draw(st.sampled_from([starts, ends]))
        times[draw(st.integers(0, count - 1))] = draw(st.sampled_from(BAD_NUMBERS))
    elif part == "a list's type":
        key = draw(st.sampled_from(["words", "start", "end"]))
        lists[key] = draw(st.sampled_from([None, 5, "1,2", {"0": 1}, True]))
    elif part == "a list missing":
        lists[draw(st.sampled_from(["words", "start", "end"]))] = MISSING
    elif part == "a length":
        times = draw(st.sampled_from([starts, ends]))
        if draw(st.booleans()):
            times.pop()
        else:
            times.append(9.0)
    elif part == "back in time":
        # two words, each ending after it starts, the starts or the ends going back
        words[:] = ["one", "two"]
        starts[:], ends[:] = draw(
            st.sampled_from([([1.0, 0.5], [1.5, 1.0]), ([0.5, 1.0], [2.0, 1.5])])
        )
    elif part == "ends before it starts":
        ends[-1] = 0 if starts[-1] > 0 else -1  # type: ignore[operator]
    elif part == "stamps' type":
        stamps = draw(st.sampled_from([None, [], "words", 3, [lists]]))
    elif part == "stamps missing":
        stamps = MISSING
    message = {"type": kind, "word_timestamps": stamps, "contextId": context}
    return Event(message, verdict, b"", ours)


@st.composite
def done_events(draw: st.DrawFn, broken: bool) -> Event:
    part = draw(st.sampled_from(["type", "contextId"])) if broken else None
    kind, context, verdict, ours = draw(_type_and_context("done", part))
    return Event({"type": kind, "contextId": context}, verdict, b"", ours)


@st.composite
def error_events(draw: st.DrawFn) -> Event:
    """An ``error`` event (which ends the stream in ServerError), or one with a field of
    another type or missing."""
    part = draw(st.sampled_from([None, None, "type", "message", "contextId"]))
    kind, _, verdict, _ = draw(_type_and_context("error", "type" if part == "type" else None))
    text: object = draw(
        st.sampled_from(["bad speaker", "400: text is too long", "", "é\u200f🌍\ud83c", "x" * 3000])
    )
    context: object = draw(st.sampled_from([MISSING, MISSING, None, "x", OURS]))
    if part == "message":
        text = draw(st.sampled_from([MISSING, None, 5, [], {"message": "m"}, True]))
    elif part == "contextId":
        context = draw(st.sampled_from(BAD_CONTEXTS))
    if verdict == "ok" and kind == "error":
        if part == "message":
            verdict = "bad"
        elif part == "contextId":
            verdict = "either"  # the socket's error: whether its contextId is checked is open
        else:
            verdict = "error"
    return Event({"type": kind, "message": text, "contextId": context}, verdict)


def _bad_frame(payload: bytes, *, binary: bool = False) -> Event:
    """A frame that holds no JSON object (or no JSON at all): ProtocolError."""
    try:
        parsed = json.loads(payload)
    except (ValueError, RecursionError):
        parsed = None
    verdict: Verdict = "unknown" if isinstance(parsed, dict) else "bad"
    return Event(frame(0x2 if binary else 0x1, payload), verdict)


raw_events = st.one_of(
    # text frames holding anything (what UTF-8 cannot carry makes them invalid UTF-8)
    st.text(st.characters(codec=None), max_size=30).map(
        lambda t: _bad_frame(t.encode("utf-8", "surrogatepass"))
    ),
    st.sampled_from(["[1, 2]", "null", "{", '"chunk"', "1e400", "[" * 5000 + "]" * 5000]).map(
        lambda t: _bad_frame(t.encode())
    ),
    st.binary(max_size=30).map(lambda b: _bad_frame(b, binary=True)),
    # whole frames of every opcode and flag: their fate is the transport's (and
    # tests/test_bad_server_frames.py's) to pin down; here they only must not escape
    st.builds(
        frame,
        st.integers(0, 15),
        st.binary(max_size=130)
        | st.sampled_from([b'{"type": "done", "contextId": null}', b"\xff\xfe", b"\x03\xe8"]),
        fin=st.booleans(),
        rsv=st.integers(0, 7) | st.just(0),
    ).map(lambda b: Event(b, "unknown")),
)

clean_events = st.one_of(
    chunk_events(broken=False), timestamps_events(broken=False), done_events(broken=False)
)
faulty_events = st.one_of(
    chunk_events(broken=True),
    timestamps_events(broken=True),
    done_events(broken=True),
    error_events(),
    raw_events,
)

CLOSES = [
    close_payload(1000),
    close_payload(1000, "bye"),
    close_payload(None),
    close_payload(1001, "going away"),
    close_payload(1011, "400: text is too long"),
    close_payload(1011, "503: overloaded"),
    close_payload(1011, "no status here"),
    close_payload(1008, "policy"),
    close_payload(4000, "é🌍"),
    close_payload(1002, "you broke it"),
]


Trigger = Literal["text", "eos"]
Ending = Literal["close", "close_hold", "drop", "stall"]


@dataclass(frozen=True)
class Scenario:
    events: list[Event]
    trigger: Trigger
    ending: Ending
    close: bytes
    pieces: int = 1  # fragments per JSON event

    def script(self) -> ServerScript:
        frames = [e.frame(self.pieces) for e in self.events]
        return ServerScript(frames, self.trigger, self.ending, self.close)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """Valid events, with up to two faults (or an error event) among them, and an end."""
    script = draw(st.lists(clean_events, max_size=8))
    for fault in draw(st.lists(faulty_events, max_size=2)):
        script.insert(draw(st.integers(0, len(script))), fault)
    # Mostly a normal close: a stall costs an audio timeout per attempt.
    ending: Ending = draw(st.sampled_from(["close"] * 6 + ["close_hold", "drop", "stall"]))
    close = CLOSES[0] if draw(st.booleans()) else draw(st.sampled_from(CLOSES))
    trigger: Trigger = draw(st.sampled_from(["eos", "text"]))
    # Fragments come with a ping between them, also when the server then hangs up at once.
    pieces = draw(st.sampled_from([1, 1, 2, 3]))
    return Scenario(script, trigger, ending, close, pieces)


# A retry, without the backoff's wait; a short audio timeout, which is how a stall ends (long
# enough that a busy machine never makes one: the script's frames all leave at once).
SERVER_SETTINGS = StreamSettings(
    audio_timeout=1.0, retries=1, retry_backoff=0.001, retry_backoff_max=0.001
)
TEXT = "Hello there."


@dataclass
class Heard:
    audio: bytes
    words: list[WordTimestamp]
    error: RimeError | None
    played: int


async def _listen(scenario: Scenario) -> Heard:
    """Run the stream against *scenario*'s server; anything but a RimeError that leaves the
    stream is re-raised as it is, outside the server's task group (so it is not wrapped)."""
    escaped: list[BaseException] = []
    heard = await _listen_to(scenario, escaped)
    if escaped:
        raise escaped[0]
    assert heard is not None
    return heard


async def _listen_to(scenario: Scenario, escaped: list[BaseException]) -> Heard | None:
    audio = bytearray()
    words: list[WordTimestamp] = []
    error: RimeError | None = None
    async with scripted_server(scenario.script()) as server:
        with anyio.CancelScope(deadline=anyio.current_time() + HANG_GUARD) as guard:
            try:
                async with (
                    RimeClient(
                        api_key=API_KEY,
                        base_url=f"ws://127.0.0.1:{server.port}/ws3",
                        sample_rate=RATE,
                        segment="bySentence",  # the scripts answer eos with the close
                        audio_format="pcm",
                        stream_settings=SERVER_SETTINGS,
                    ) as client,
                    client.stream() as stream,
                ):
                    await stream.push_text(TEXT)
                    await stream.end_input()
                    async for event in stream:
                        if isinstance(event, AudioChunk):
                            audio += event.data
                        else:
                            words.append(event)
            except RimeError as exc:
                error = exc
            except Exception as exc:  # not a documented outcome: the test fails with it
                escaped.append(exc)
                return None
        assert not guard.cancel_called, "the stream hung"
        return Heard(bytes(audio), words, error, server.played)


def _expected(scenario: Scenario) -> tuple[Verdict | None, bytes, bool]:
    """The first event that decides the stream's fate (None: none does), the audio of the
    valid events tagged for the stream, and whether any valid event answered its text."""
    audio = b"".join(e.audio for e in scenario.events)
    heard = any(e.ours for e in scenario.events)
    for event in scenario.events:
        if event.verdict != "ok":
            return event.verdict, audio, heard
    return None, audio, heard


@pytest.mark.parametrize("backend", BACKENDS)
@given(scenario=scenarios())
def test_any_server_script_gives_the_audio_or_one_rime_error(
    backend: str, scenario: Scenario
) -> None:
    heard = anyio.run(_listen, scenario, backend=backend)
    error = heard.error
    # Words delivered are always on the audio's clock: finite, in order, none ending before
    # it starts.
    for word in heard.words:
        assert math.isfinite(word.start), word
        assert math.isfinite(word.end), word
        assert 0 <= word.start <= word.end, word
    decisive, audio, answered = _expected(scenario)
    if decisive == "unknown":
        return  # a raw frame first: audio or a RimeError is all that is promised
    if decisive == "bad":
        assert isinstance(error, ProtocolError), repr(error)
        assert heard.played == 1  # never retried
    elif decisive == "error":
        assert isinstance(error, ServerError), repr(error)
    elif decisive == "either":
        assert isinstance(error, ServerError | ProtocolError), repr(error)
    elif scenario.ending == "stall":
        assert isinstance(error, RimeTimeoutError), repr(error)
    elif scenario.ending == "drop":
        assert isinstance(error, RimeConnectionError), repr(error)
    elif (
        scenario.ending in ("close", "close_hold")
        and scenario.close[:2] == close_payload(1000)
        and scenario.trigger == "eos"
        and answered
    ):
        assert error is None, repr(error)
    if error is None:
        # Completed: exactly the audio of the valid chunks tagged for the stream.
        assert decisive is None
        assert heard.audio == audio


_SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
# Each: what the server answers the upgrade with, and the error that must come of it.
HANDSHAKES: dict[str, tuple[bytes, type[RimeError]]] = {
    "not HTTP": (b"garbage\r\n\r\n", ProtocolError),
    "bytes": (bytes(range(256)), ProtocolError),
    "nothing (the connection closes)": (b"", RimeConnectionError),
    "200 with a body": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", APIStatusError),
    "status 999": (b"HTTP/1.1 999 What\r\nContent-Length: 0\r\n\r\n", APIStatusError),
    "400 without a length": (b"HTTP/1.1 400 Bad\r\n\r\nsome words", APIStatusError),
    "401 with a body in invalid UTF-8": (
        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n\xff\xfe",
        APIStatusError,
    ),
    "100 then 400": (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad\r\nContent-Length: 0\r\n\r\n",
        APIStatusError,
    ),
    "a header in bytes no header holds": (
        b"HTTP/1.1 400 Bad\r\nX: \xff\x00\r\nContent-Length: 3\r\n\r\nabc",
        ProtocolError,
    ),
    "a 200 KB header": (b"HTTP/1.1 400 Bad\r\nX: " + b"a" * 200_000 + b"\r\n\r\n", ProtocolError),
    "a broken chunked body": (
        b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ProtocolError,
    ),
    "101 with a wrong accept key": (_SWITCH + b"Sec-WebSocket-Accept: xxx\r\n\r\n", ProtocolError),
    "101 without Upgrade": (
        b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {accept}\r\n\r\n",
        ProtocolError,
    ),
    "101 with an extension never offered": (
        _SWITCH + b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
        b"Sec-WebSocket-Accept: {accept}\r\n\r\n",
        ProtocolError,
    ),
    "101 with a subprotocol never offered": (
        _SWITCH + b"Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Accept: {accept}\r\n\r\n",
        ProtocolError,
    ),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("answer", "expected"), HANDSHAKES.values(), ids=HANDSHAKES.keys())
def test_any_answer_to_the_upgrade_gives_one_rime_error(
    backend: str, answer: bytes, expected: type[RimeError]
) -> None:
    async def main() -> RimeError | None:
        async with scripted_server(ServerScript([], handshake=answer)) as server:
            with anyio.CancelScope(deadline=anyio.current_time() + HANG_GUARD) as guard:
                try:
                    async with (
                        RimeClient(
                            api_key=API_KEY,
                            base_url=f"ws://127.0.0.1:{server.port}/ws3",
                            stream_settings=SERVER_SETTINGS,
                        ) as client,
                        client.stream() as stream,
                    ):
                        await stream.push_text(TEXT)
                        await stream.end_input()
                        async for _ in stream:
                            pass
                except RimeError as exc:
                    return exc
            assert not guard.cancel_called, "the stream hung"
            return None

    error = anyio.run(main, backend=backend)
    assert isinstance(error, expected), repr(error)


# ============================================================================= defects it found

# Each: a minimal case of a defect this harness found (a raw ValueError from a contextId
# number too long for int(); a hang behind 8,000 characters with no word; a message lost when
# the pong after it could not be sent), fixed, and drawn by the strategies above too.


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_context_id_with_a_sequence_number_too_long_for_int_is_foreign(backend: str) -> None:
    chunk = Event(
        {"type": "chunk", "data": "QUJD", "contextId": Tagged("1" * 5000)}, "ok", b"", False
    )
    done = Event({"type": "done", "contextId": OURS}, "ok", b"", True)
    heard = anyio.run(_listen, Scenario([chunk, done], "eos", "close", CLOSES[0]), backend=backend)
    assert heard.error is None
    assert heard.audio == b""


@pytest.mark.parametrize(
    ("backend", "filler"), [("trio", "-"), ("asyncio", "🌍")], ids=["trio-dashes", "asyncio-emoji"]
)
def test_a_long_run_without_a_word_before_the_first_word_does_not_hang(
    backend: str, filler: str, shared_emulator: RimeEmulator
) -> None:
    async def speak() -> Spoken:
        # A stream that works takes milliseconds.
        with anyio.fail_after(2):
            return await _speak(shared_emulator, Caller([filler * 9001, "Hello there."]))

    try:
        spoken = anyio.run(speak, backend=backend)
    except TimeoutError:
        pytest.fail("the stream hung")
    _check_spoken(shared_emulator, spoken)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_pong_the_server_cannot_take_loses_nothing(backend: str) -> None:
    ping = Event(frame(0x9, b"ping"), "unknown")
    chunk = Event(
        {"type": "chunk", "data": base64.b64encode(b"\x01\x00" * 50).decode(), "contextId": OURS},
        "ok",
        b"\x01\x00" * 50,
        True,
    )
    done = Event({"type": "done", "contextId": OURS}, "ok", b"", True)
    close = Event(frame(0x8, close_payload(1000)), "ok")
    # The server streams with a ping before each chunk, closes normally and hangs up at once.
    events = [ping, chunk, ping, chunk, ping, chunk, done, close]
    heard = anyio.run(_listen, Scenario(events, "eos", "drop", b""), backend=backend)
    assert heard.error is None, repr(heard.error)
    assert heard.audio == chunk.audio * 3
