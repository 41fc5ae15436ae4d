"""Options rebuilt from what a client put on the wire: how the emulator reads a request.

The reverse of the client's one option table (``rime_trio._options``): wire names and value
types both come from it and from :class:`RimeOptions`' own annotations, so a new option needs
no second entry here.
"""

from __future__ import annotations

import types
import typing
from typing import Final, Literal, get_args, get_origin

from .._errors import ConfigurationError
from .._options import (
    _COMMON_PARAMS,
    _HTTP_ONLY_OPTIONS,
    _MODEL_OPTIONS,
    _WS3_PARAMS,
    TIME_SCALE_RANGE,
    RimeOptions,
    _quiet_deprecations,
)

__all__ = ["options_from_params"]


def _value_types() -> dict[str, type]:
    """Each option's value type, from its annotation (``X | None`` and literals of ``str``
    read as ``X`` and ``str``)."""
    found: dict[str, type] = {}
    for name, hint in typing.get_type_hints(RimeOptions).items():
        args = get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        for arg in args:
            if get_origin(arg) is Literal:
                arg = type(get_args(arg)[0])
            if arg in (bool, int, float, str):
                found[name] = arg
                break
    return found


_TYPES: Final = _value_types()
_WS3_WIRE: Final = {
    wire: name
    for name, wire in (
        _COMMON_PARAMS | _WS3_PARAMS | {n: w for n, (w, _) in _MODEL_OPTIONS.items()}
    ).items()
}
_HTTP_WIRE: Final = {
    wire: name
    for name, wire in (
        _COMMON_PARAMS
        | {n: w for n, (w, _) in _MODEL_OPTIONS.items()}
        | {n: w for n, (w, _) in _HTTP_ONLY_OPTIONS.items()}
    ).items()
}
# Names Rime still takes for an option renamed in its docs: reduceLatency is what
# noTextNormalization was called (api-reference/mistv2/http.mdx), on HTTP only before.
_HTTP_WIRE["reduceLatency"] = "no_text_normalization"


def _parse_value(name: str, value: object) -> object:
    """Coerce a wire value (query-string text or JSON value) to the option's type."""
    kind = _TYPES[name]
    if kind is str:
        if not isinstance(value, str):
            raise ConfigurationError(f"{name} must be a string")
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        if value in ("true", "false"):
            return value == "true"
        raise ConfigurationError(f"{name} must be true or false, got {value!r}")
    try:
        if isinstance(value, bool):
            raise ValueError
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)  # type: ignore[call-overload]
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name} must be a number, got {value!r}") from None


def options_from_params(params: dict[str, object], *, api_key: str, http: bool) -> RimeOptions:
    """Rebuild options from wire parameters (the emulator validates requests with this).

    :raises ConfigurationError: for an unknown parameter or an invalid value, worded with
        the wire names the client sent.
    """
    by_wire = _HTTP_WIRE if http else _WS3_WIRE
    kwargs: dict[str, object] = {}
    for wire, value in params.items():
        name = by_wire.get(wire)
        if name is None:
            raise ConfigurationError(f"unknown parameter {wire!r}")
        kwargs[name] = _parse_value(name, value)
    if not http:
        # Rime's server synthesizes by sentence when the query names no segment mode
        # (docs/websockets-segment.mdx), whatever the client's own default is.
        kwargs.setdefault("segment", "bySentence")
    scale = kwargs.get("time_scale_factor")
    if isinstance(scale, float):
        # Rime clamps it to 0.4..2.5 without an error (docs/speed.mdx); the client refuses.
        kwargs["time_scale_factor"] = min(max(scale, TIME_SCALE_RANGE[0]), TIME_SCALE_RANGE[1])
    # A request naming arcana is read, not asked for: no RimeDeprecationWarning from here.
    token = _quiet_deprecations.set(True)
    try:
        return RimeOptions(api_key=api_key, **kwargs)  # type: ignore[arg-type]
    finally:
        _quiet_deprecations.reset(token)
