"""Which reading of each open point of Rime's WebSocket v1 the emulator plays.

Plain data, in a module of its own: the emulator's configuration (``_config``) holds one, and
the v1 server model (``_v1_model``), which reads the configuration's run records, plays it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, get_args

from .._protocol_v1 import Encoding

__all__ = ["CancelFinished", "MulawMime", "Refusal", "TimestampBase", "Unfinished", "V1Readings"]

TimestampBase = Literal["context", "per_sentence", "none"]
Unfinished = Literal["speak", "hold"]
CancelFinished = Literal["silent", "cancelled"]
MulawMime = Literal["audio/pcmu", "audio/x-mulaw"]
Refusal = Literal["abort", "reject"]


@dataclass(frozen=True, slots=True)
class V1Readings:
    """One reading of each point Rime's v1 docs leave open. Defaults follow the docs (the
    ``rime-api`` proto comments) where they say one.

    :ivar no_subprotocol: the encoding a client that offers no subprotocol gets: ``json``
        (the docs) or ``binary``. A client that offers only unknown values gets JSON and no
        subprotocol in the answer, as the docs say.
    :ivar timestamps: word times in ``done`` count from the start of the context's audio
        (``context``, the docs), or restart at 0 with each synthesized sentence
        (``per_sentence``: a server that times each generation on its own), or never come:
        ``none``, a ``done`` with no timestamps even when asked for (livekit's v1 README says
        Rime's v1 gives none).
    :ivar cancel_finished: a ``cancel`` for a context that is unknown or already finished
        (one that crossed its ``done`` on the wire) is ignored (``silent``) or answered with
        a ``cancelled`` all the same (``cancelled``: "acknowledged with cancelled;
        idempotent"). The second is the one that can hit a context id already reused.
    :ivar mulaw_mime: the MIME type that selects mu-law: ``audio/pcmu`` (Rime's asyncapi,
        livekit's v1 client) or ``audio/x-mulaw`` (the HTTP ``Accept`` name). The other is
        refused like any unknown format.
    :ivar text_after_end: ``text`` for a context not open for input (ended, one-shot) is an
        ``error`` that ends the context there, its pending audio dropped (``abort``), or an
        ``error`` naming it while the context carries on to its ``done`` (``reject``: the
        client then sees a second terminal event).
    :ivar duplicate_start: a ``start`` for an id that is open ends the open context with an
        ``error`` (``abort``) or is refused with an ``error`` while the open one carries on
        (``reject``).
    :ivar accumulate_holds_final_stop: with ``ACCUMULATE_SENTENCE``, a sentence end with
        nothing after it yet ("2.") waits for the next text, which may go on with "5ml"
        (True), or counts at once (False).
    :ivar unfinished: when a streaming context speaks text it cannot yet tell is finished
        (the docs do not say; ``flush`` is gone from the proto, so ``end`` is a client's only
        sure way to have text spoken). ``speak``: on arrival; ``SENTENCE`` takes each
        ``text`` as whole sentences, its last piece too ("Hello there." with no space after
        it, or "Hello there" with no end at all), and ``NONE`` speaks each ``text`` whole.
        ``hold``: ``SENTENCE`` speaks the sentences whose end it has seen (an end with
        nothing after it yet waits, as "2." may go on with "5ml") and holds the rest until
        more text or ``end``; ``NONE`` speaks nothing until ``end``, then the context's
        whole text as one unit.
    :raises ValueError: for a value outside a field's choices.
    """

    no_subprotocol: Encoding = "json"
    timestamps: TimestampBase = "context"
    cancel_finished: CancelFinished = "silent"
    mulaw_mime: MulawMime = "audio/pcmu"
    text_after_end: Refusal = "abort"
    duplicate_start: Refusal = "abort"
    accumulate_holds_final_stop: bool = True
    unfinished: Unfinished = "speak"

    def __post_init__(self) -> None:
        # Literal fields are not checked at runtime; a typo would silently pick a branch.
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"V1Readings.{name} must be one of {choices}, not {value!r}")


_CHOICES: Final = {
    "no_subprotocol": get_args(Encoding),
    "timestamps": get_args(TimestampBase),
    "cancel_finished": get_args(CancelFinished),
    "mulaw_mime": get_args(MulawMime),
    "text_after_end": get_args(Refusal),
    "duplicate_start": get_args(Refusal),
    "unfinished": get_args(Unfinished),
}
