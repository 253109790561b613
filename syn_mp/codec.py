"""Canonical msgpack encoding of names, groups, meta and messages.

This data crosses processes and hosts, so nothing is pickled. Names and groups
are encoded canonically (equal values give equal bytes everywhere) because their
bytes are the keys of the shared-memory tables. msgpack keeps ``1``, ``1.0`` and
``True`` apart; a tuple is the ext type ``TUPLE_EXT`` wrapping a msgpack array of
its items, so a tuple never collides with a list and comes back a tuple.
"""

from __future__ import annotations

import functools
import struct
from typing import Any, Callable

import msgpack
from msgpack import ExtType

from .errors import EncodingError

__all__ = [
    "MAX_NAME",
    "MAX_META",
    "MAX_MESSAGE",
    "MAX_DEPTH",
    "TUPLE_EXT",
    "encode_name",
    "decode_name",
    "encode_meta",
    "encode_message",
    "decode",
]

MAX_NAME = 1024
MAX_META = 16384
MAX_MESSAGE = 65536
# Containers nested deeper than this are refused: it keeps both our recursion and
# msgpack's (packer limit 511, one Python frame pair per tuple level on decode) far
# from RecursionError, and no real name or meta comes close.
MAX_DEPTH = 100
TUPLE_EXT = 1

# Given exact built-in types and ExtTypes (the walkers below normalise first, and
# refuse bytearray/memoryview that msgpack would pack as bin), or, on register's and
# join's hot path, the caller's meta as it is, whose bytes C then checks
# (csrc/plain.c). strict_types packs exact built-in types only and raises for any
# other (a tuple included, never packed as a list), so no Python code runs inside
# a pack() and sharing one Packer is safe under the GIL; a pack that raises leaves
# the Packer empty. Floats are always 64-bit doubles (use_single_float is off), ints
# always in their shortest form.
_pack: Callable[[Any], bytes] = msgpack.Packer(
    use_bin_type=True, strict_types=True, autoreset=True
).pack

_NONE = b"\xc0"
# The one NaN every name NaN is encoded as (the quiet NaN float("nan") has on IEEE).
_CANONICAL_NAN: float = struct.unpack(">d", b"\x7f\xf8\x00\x00\x00\x00\x00\x00")[0]
# The ext header msgpack writes before n bytes of tuple data, for every n a name
# can have: lets the hot path build a tuple's bytes without an ExtType object,
# byte-identical to what msgpack itself writes on the slow path.
# Up to _FAST_TUPLE_MAX data bytes the header is at most 4 bytes (ext 16), so the
# name is within MAX_NAME without a further check; longer ones take the slow path.
_FAST_TUPLE_MAX = MAX_NAME - 4


def _tuple_header(n: int) -> bytes:
    packed = _pack(ExtType(TUPLE_EXT, bytes(n)))
    return packed[: len(packed) - n]


_TUPLE_HEADERS: list[bytes] = [_tuple_header(n) for n in range(_FAST_TUPLE_MAX + 1)]

_META_SCALARS = frozenset({type(None), bool, int, float, str, bytes})


def _type_name(value: object) -> str:
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _too_deep(what: str) -> EncodingError:
    return EncodingError(f"{what} is nested more than {MAX_DEPTH} levels deep")


# ---------------------------------------------------------------- names


def _canonical_float(x: float) -> float:
    if x != x:
        return _CANONICAL_NAN
    return x + 0.0  # -0.0 + 0.0 == +0.0; every other float is unchanged


def _name_item(v: Any, depth: int) -> Any:
    """Return `v` as exact built-in types, tuples as packed ExtTypes; else raise."""
    t = type(v)
    if t is str or t is int or t is bytes or t is bool or v is None:
        return v
    if t is float:
        return _canonical_float(v)
    if isinstance(v, tuple):  # NamedTuples included: a name is its values
        if depth >= MAX_DEPTH:
            raise _too_deep("name")
        return ExtType(TUPLE_EXT, _pack([_name_item(x, depth + 1) for x in v]))
    # Subclasses (IntEnum, StrEnum, ...) count as their base type; the unbound
    # base methods return exact base objects without calling any override.
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, bytes):
        return bytes.__getitem__(v, slice(None))  # bytes.__bytes__ is new in Python 3.11
    if isinstance(v, int):
        return int.__int__(v)
    if isinstance(v, float):
        return _canonical_float(float.__float__(v))
    raise EncodingError(
        f"a name can't be of type {_type_name(v)}: use str, bytes, int, float, "
        "bool, None or tuples of these"
    )


def _check_name_size(data: bytes) -> bytes:
    if len(data) > MAX_NAME:
        raise EncodingError(
            f"name is {len(data)} bytes encoded; the limit is {MAX_NAME}"
        )
    return data


# Packs a flat tuple of exact str and int as the msgpack array its ext wraps, without building a
# list first; only ever given such tuples (strict_types would refuse a tuple).
_pack_flat_tuple: Callable[[tuple], bytes] = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def encode_name(value: Any) -> bytes:
    """Encode a registry name or group name canonically.

    Raises EncodingError for other types, out-of-range ints, unencodable str
    (lone surrogates) and encodings over MAX_NAME bytes.
    """
    t = type(value)
    try:
        # Hot path (every write): exact str/int/bytes pack directly, and a flat
        # tuple of str/int needs no normalising, only its ext header.
        if t is str or t is int or t is bytes:
            data = _pack(value)
            if len(data) <= MAX_NAME:
                return data
            return _check_name_size(data)  # raises
        if t is tuple:
            for x in value:
                tx = type(x)
                if tx is not str and tx is not int:
                    break
            else:
                inner = _pack_flat_tuple(value)
                if len(inner) <= _FAST_TUPLE_MAX:
                    return _TUPLE_HEADERS[len(inner)] + inner
        return _check_name_size(_pack(_name_item(value, 0)))
    except OverflowError:
        raise EncodingError(
            "a name can't hold an int outside -2**63 .. 2**64-1"
        ) from None
    except UnicodeEncodeError as exc:
        raise EncodingError(f"a name can't hold this str: {exc.reason}") from None


def decode_name(data: bytes) -> Any:
    """Decode bytes made by :func:`encode_name`."""
    return decode(data)


# ---------------------------------------------------------------- meta / messages


def _meta_item(v: Any, depth: int, what: str) -> Any:
    """Return `v` as exact built-in types, tuples as packed ExtTypes; else raise.

    Every container is rebuilt: that is how types msgpack would otherwise accept
    silently (bytearray, memoryview, subclasses) are refused or normalised.
    """
    t = type(v)
    if t in _META_SCALARS:
        return v
    if depth >= MAX_DEPTH:
        if isinstance(v, (list, tuple, dict)):
            raise _too_deep(what)
    d = depth + 1
    if t is list:
        return [x if type(x) in _META_SCALARS else _meta_item(x, d, what) for x in v]
    if t is dict:
        # Keys: only hashable values get here, so the same walk admits exactly the
        # name types (scalars and tuples of them) and refuses the rest.
        return {
            (k if type(k) in _META_SCALARS else _meta_item(k, d, what)):
            (x if type(x) in _META_SCALARS else _meta_item(x, d, what))
            for k, x in v.items()
        }
    if isinstance(v, tuple):
        return ExtType(
            TUPLE_EXT,
            _pack([x if type(x) in _META_SCALARS else _meta_item(x, d, what) for x in v]),
        )
    # Subclasses of the allowed types travel as their base type.
    if isinstance(v, list):
        return _meta_item(list(v), depth, what)
    if isinstance(v, dict):
        return _meta_item(dict(v), depth, what)
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, bytes):
        return bytes.__getitem__(v, slice(None))  # bytes.__bytes__ is new in Python 3.11
    if isinstance(v, int):
        return int.__int__(v)
    if isinstance(v, float):
        return float.__float__(v)
    raise EncodingError(
        f"{what} can't contain a {_type_name(v)}: use None, bool, int, float, str, "
        "bytes, list, tuple or dict"
    )


def _flat(v: dict | list) -> bool:
    """A dict or list holding only scalars of the exact built-in types (the common meta, such
    as {"port": 8000}): msgpack packs it as it is, so the walk that rebuilds it can be skipped."""
    s = _META_SCALARS
    if type(v) is dict:
        for k, x in v.items():
            if type(k) not in s or type(x) not in s:
                return False
        return True
    for x in v:
        if type(x) not in s:
            return False
    return True


def _encode_value(value: Any, limit: int, what: str) -> bytes:
    if value is None:
        return _NONE
    try:
        tv = type(value)
        if tv in _META_SCALARS or ((tv is dict or tv is list) and _flat(value)):
            data = _pack(value)  # exact types all through: nothing to normalise
        else:
            data = _pack(_meta_item(value, 0, what))
    except OverflowError:
        raise EncodingError(
            f"{what} can't hold an int outside -2**63 .. 2**64-1"
        ) from None
    except UnicodeEncodeError as exc:
        raise EncodingError(f"{what} can't hold this str: {exc.reason}") from None
    except RecursionError:
        # Only reachable when the caller is itself already deep in the stack.
        raise _too_deep(what) from None
    if len(data) > limit:
        raise EncodingError(
            f"{what} is {len(data)} bytes encoded; the limit is {limit}"
        )
    return data


def encode_meta(value: Any) -> bytes:
    """Encode a registration's or membership's meta (at most MAX_META bytes)."""
    if type(value) is dict and _flat(value):
        data = _pack(value)  # the common meta, {"port": 8000}: no walk, no size to fear
        if len(data) <= MAX_META:
            return data
    return _encode_value(value, MAX_META, "meta")


def encode_message(value: Any) -> bytes:
    """Encode a message (at most MAX_MESSAGE bytes)."""
    return _encode_value(value, MAX_MESSAGE, "a message")


# ---------------------------------------------------------------- decoding


def _ext_hook(depth: int, code: int, data: bytes) -> tuple[Any, ...]:
    if code != TUPLE_EXT:
        raise EncodingError(f"unknown msgpack ext type {code}")
    if depth >= MAX_DEPTH:
        raise _too_deep("the data")
    items = msgpack.unpackb(
        data, raw=False, strict_map_key=False, ext_hook=_EXT_HOOKS[depth + 1]
    )
    if type(items) is not list:
        raise EncodingError("a tuple ext must hold a msgpack array")
    return tuple(items)


# One hook per nesting level, made once: the level is how decode bounds recursion.
_EXT_HOOKS = [functools.partial(_ext_hook, d) for d in range(MAX_DEPTH + 1)]


def decode(data: bytes) -> Any:
    """Decode bytes made by any encode_* function; malformed data raises EncodingError."""
    if data == _NONE:
        return None
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=False, ext_hook=_EXT_HOOKS[0]
        )
    except EncodingError:
        raise
    except Exception as exc:  # msgpack raises ValueError, TypeError, ... on bad input
        raise EncodingError(
            f"malformed encoded data ({type(exc).__name__}: {exc})"
        ) from None
