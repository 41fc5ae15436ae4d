"""What one browser session may do: limits, and the sans-IO rate window that enforces one.

Nothing here reads a clock or awaits: callers pass the time in (``anyio.current_time()``),
so the logic runs on any backend and is tested synchronously.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["SessionLimits", "SlidingWindow"]


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Limits per WebSocket session of :func:`rime_trio.web.create_app`.

    Going over one answers with a JSON ``error`` message (its ``code`` says which limit)
    and leaves the connection open and usable:

    - ``max_text_chars``: text per utterance (the sum of its ``text`` messages). The
      message that would go over is refused and the utterance stopped (``text_too_long``),
      rather than speaking a silently truncated text.
    - ``max_utterances_per_minute``: ``speak`` messages accepted in any 60 seconds
      (``rate_limited``, with ``retryAfter`` in seconds).
    - ``max_concurrent_utterances``: utterances speaking at once on one connection; a
      ``speak`` beyond it is refused (``busy``): send ``stop`` first. The bundled page
      runs one at a time. With more, ``text``/``end`` go to the newest utterance, and
      audio frames of overlapping utterances interleave (only JSON events carry the
      utterance number).
    - ``max_message_chars``: the size of one incoming message (``message_too_long``),
      checked before it is parsed.

    :raises ValueError: if a limit is below 1.
    """

    max_text_chars: int = 5_000
    max_utterances_per_minute: int = 30
    max_concurrent_utterances: int = 1
    max_message_chars: int = 65_536

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if getattr(self, name) < 1:
                raise ValueError(f"SessionLimits.{name} must be at least 1")


class SlidingWindow:
    """At most *limit* events in any *window* seconds (a sliding log of admitted times)."""

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._times: deque[float] = deque()

    def acquire(self, now: float) -> float:
        """Admit an event at time *now* and return 0.0, or return how many seconds remain
        until one would be admitted (nothing is recorded then)."""
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()
        if len(self._times) < self.limit:
            self._times.append(now)
            return 0.0
        return self._times[0] + self.window - now
