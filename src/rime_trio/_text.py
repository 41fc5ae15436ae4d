"""Checks on the caller's text before any of it is sent."""

from __future__ import annotations

import re
from typing import Final

from ._errors import InvalidTextError

__all__ = ["check_text"]

# A surrogate code point on its own: what a str built from UTF-16 halves, or from bytes
# decoded with errors="surrogateescape" (argv and stdin holding non-UTF-8 bytes), carries.
# UTF-8 cannot encode it, so no server can be sent it.
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def check_text(text: str) -> str:
    """Return *text* if it can be sent as UTF-8.

    :raises InvalidTextError: naming the position of the first lone surrogate (half of a
        character split across two pieces of text, or an undecodable byte).
    """
    if text.isascii():
        return text  # the common case, without a regex scan
    found = _SURROGATE.search(text)
    if found is not None:
        position = found.start()
        raise InvalidTextError(
            f"the text holds a lone surrogate U+{ord(found.group()):04X} at position "
            f"{position} (half of a character: text built from UTF-16 halves or undecodable "
            "bytes); join the halves, or decode the bytes, before sending it"
        )
    return text
