"""syn_mp.codec and syn_mp.errors: canonical names, exact meta round-trips, limits."""

from __future__ import annotations

import enum
import math
import struct
import sys
import types
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    import syn_mp  # noqa: F401
except ImportError:
    # The C extension may not be built: load only the pure-Python modules under test.
    _pkg = types.ModuleType("syn_mp")
    _pkg.__path__ = [str(Path(__file__).resolve().parents[1] / "syn_mp")]
    sys.modules["syn_mp"] = _pkg

from syn_mp import codec, errors  # noqa: E402
from syn_mp.codec import (MAX_DEPTH, MAX_MESSAGE, MAX_META, MAX_NAME, decode,  # noqa: E402
                          decode_name, encode_message, encode_meta, encode_name)
from syn_mp.errors import EncodingError, SynError  # noqa: E402


class Point(NamedTuple):
    x: int
    y: str


class Color(enum.IntEnum):
    RED = 1


class Kind(str, enum.Enum):
    WEB = "web"


def _bits(x: float) -> bytes:
    return struct.pack(">d", x)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "cls, reason",
    [
        (errors.TakenError, "taken"),
        (errors.NotAliveError, "not_alive"),
        (errors.NotSelfError, "not_self"),
        (errors.UndefinedError, "undefined"),
        (errors.NotInGroupError, "not_in_group"),
        (errors.InvalidScopeError, "invalid_scope"),
        (errors.RemotePidError, "remote_pid"),
        (errors.CapacityError, "full"),
        (errors.EncodingError, "encoding"),
        (errors.ManagerUnavailableError, "no_manager"),
    ],
)
def test_every_error_is_a_synerror_with_its_reason(cls: type[SynError], reason: str) -> None:
    assert issubclass(cls, SynError)
    assert cls.reason == reason
    exc = cls("something\nwent wrong")
    assert exc.reason == reason
    assert str(exc) == "something went wrong"  # one line
    assert str(cls()) and "\n" not in str(cls())  # a default message
    with pytest.raises(SynError):
        raise exc


def test_encoding_error_is_also_a_type_error() -> None:
    assert issubclass(EncodingError, TypeError)
    with pytest.raises(TypeError):
        encode_name([1])


# ---------------------------------------------------------------- names: canonical


def test_one_float_one_and_true_are_three_different_names() -> None:
    keys = {encode_name(1), encode_name(1.0), encode_name(True)}
    assert len(keys) == 3
    assert decode_name(encode_name(1)) is not True
    assert type(decode_name(encode_name(1.0))) is float
    assert decode_name(encode_name(True)) is True


def test_tuple_and_list_never_collide_and_str_and_bytes_differ() -> None:
    assert encode_name(("a",)) != encode_name("a")
    assert encode_name("a") != encode_name(b"a")
    assert encode_meta(("a", 1)) != encode_meta(["a", 1])


def test_negative_zero_and_zero_are_the_same_name() -> None:
    assert encode_name(-0.0) == encode_name(0.0)
    assert encode_name(("x", -0.0)) == encode_name(("x", 0.0))


def test_every_nan_is_the_same_name() -> None:
    other_nan = struct.unpack(">d", bytes.fromhex("fff8000000000001"))[0]
    assert math.isnan(other_nan)
    assert encode_name(other_nan) == encode_name(float("nan")) == encode_name(-math.nan)
    assert encode_name(other_nan)[1:] == bytes.fromhex("7ff8000000000000")


def test_floats_are_always_64_bit_doubles() -> None:
    assert encode_name(0.5) == b"\xcb" + _bits(0.5)


def test_namedtuple_is_the_same_name_as_its_plain_tuple() -> None:
    assert encode_name(Point(1, "a")) == encode_name((1, "a"))
    assert type(decode_name(encode_name(Point(1, "a")))) is tuple


def test_subclasses_of_name_types_encode_as_their_base_type() -> None:
    assert encode_name(Color.RED) == encode_name(1) != encode_name(True)
    assert encode_name(Kind.WEB) == encode_name("web")
    assert encode_name(("w", Color.RED)) == encode_name(("w", 1))


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 8, 15, 16, 17, 250, 255, 256, 1000, 1013, 1014])
def test_fast_tuple_path_gives_the_bytes_msgpack_writes(n: int) -> None:
    name = ("a" * n, 7)  # inner array is n + 5 bytes: up to 1018 (fast), then the slow path
    slow = codec._pack(codec._name_item(name, 0))
    assert encode_name(name) == slow


def test_nested_tuples_round_trip_as_tuples() -> None:
    for name in [(), ((),), ("a", (1, (2.5, b"x", None, True)), ("b",)), (("k", 1), ("k", 2))]:
        assert decode_name(encode_name(name)) == name
        assert repr(decode_name(encode_name(name))) == repr(name)  # tuples stay tuples


def test_ints_at_the_msgpack_bounds() -> None:
    for i in (-(2**63), 2**64 - 1):
        assert decode_name(encode_name(i)) == i
        assert decode(encode_meta(i)) == i
    for i in (-(2**63) - 1, 2**64):
        with pytest.raises(EncodingError):
            encode_name(i)
        with pytest.raises(EncodingError):
            encode_name(("x", i))
        with pytest.raises(EncodingError):
            encode_meta({"i": [i]})


# ---------------------------------------------------------------- sizes


def _str_of_encoded_size(size: int) -> str:
    # str 32..255 chars: 2-byte header; 256..65535: 3-byte header; 65536+: 5 bytes.
    for header in (2, 3, 5):
        s = "x" * (size - header)
        if len(codec._pack(s)) == size:
            return s
    raise AssertionError(size)


@pytest.mark.parametrize(
    "encode, limit",
    [(encode_name, MAX_NAME), (encode_meta, MAX_META), (encode_message, MAX_MESSAGE)],
)
def test_size_limit_is_inclusive_and_one_byte_more_is_refused(encode, limit: int) -> None:
    assert len(encode(_str_of_encoded_size(limit))) == limit
    with pytest.raises(EncodingError, match=rf"{limit + 1} bytes.*limit is {limit}"):
        encode(_str_of_encoded_size(limit + 1))


def test_tuple_name_at_the_size_limit() -> None:
    # ext16 header (4) + fixarray (1) + str16 header (3) + chars == 1024
    name = ("x" * (MAX_NAME - 8),)
    assert len(encode_name(name)) == MAX_NAME
    with pytest.raises(EncodingError, match="1025 bytes"):
        encode_name(("x" * (MAX_NAME - 7),))


def test_limits_are_the_contract() -> None:
    assert (MAX_NAME, MAX_META, MAX_MESSAGE) == (1024, 16384, 65536)


# ---------------------------------------------------------------- meta / messages


EVERY_META_TYPE = {
    "none": None,
    "bools": [True, False],
    "ints": [0, -1, 2**64 - 1, -(2**63)],
    "floats": [1.5, -0.0, math.inf],
    "str": "héllo",
    "bytes": b"\x00\xff",
    "list": [1, [2, [3]]],
    "tuple": (1, ("a", b"b"), []),
    "empty": ({}, [], (), "", b""),
    (1, "tuple-key"): {("nested", (2, 3)): "v"},
    1: "int key",
    1.5: "float key",
    b"bk": "bytes key",
    None: "none key",
    False: "bool key",
}


def test_meta_round_trips_every_allowed_type_exactly() -> None:
    for encode in (encode_meta, encode_message):
        out = decode(encode(EVERY_META_TYPE))
        assert out == EVERY_META_TYPE
        assert repr(out) == repr(EVERY_META_TYPE)  # tuple vs list, key types, -0.0
        assert type(out[(1, "tuple-key")]) is dict
        assert _bits(out["floats"][1]) == _bits(-0.0)


def test_meta_none_is_one_byte() -> None:
    assert encode_meta(None) == b"\xc0"
    assert decode(b"\xc0") is None


def test_meta_nan_round_trips() -> None:
    assert math.isnan(decode(encode_meta(math.nan)))


def test_meta_subclasses_travel_as_their_base_types() -> None:
    value = OrderedDict(p=Point(1, "a"), c=Color.RED, k=Kind.WEB)
    out = decode(encode_meta(value))
    assert out == {"p": (1, "a"), "c": 1, "k": "web"}
    assert [type(v) for v in out.values()] == [tuple, int, str]


REJECTED = [
    {1, 2},
    frozenset({1}),
    bytearray(b"x"),
    memoryview(b"x"),
    object(),
    1j,
    type,
    print,
    Path("/"),
]


@pytest.mark.parametrize("value", REJECTED, ids=lambda v: type(v).__name__)
def test_every_rejected_type_raises_encoding_error_naming_it(value) -> None:
    tname = type(value).__qualname__
    for encode in (encode_meta, encode_message):
        for wrapped in (value, [value], ("t", value), {"k": value}):
            with pytest.raises(EncodingError, match=tname) as info:
                encode(wrapped)
            assert isinstance(info.value, TypeError)
            assert info.value.reason == "encoding"
    with pytest.raises(EncodingError, match=tname):
        encode_name(value)
    with pytest.raises(EncodingError, match=tname):
        encode_name(("t", value))


@pytest.mark.parametrize("value", [[1], {"a": 1}, ("a", [1]), ("a", {})])
def test_containers_other_than_tuples_are_not_names(value) -> None:
    with pytest.raises(EncodingError):
        encode_name(value)


def test_dict_keys_must_be_name_types() -> None:
    with pytest.raises(EncodingError, match="frozenset"):
        encode_meta({frozenset(): 1})
    with pytest.raises(EncodingError):
        encode_meta({("ok", frozenset()): 1})


def test_unencodable_str_raises_encoding_error() -> None:
    with pytest.raises(EncodingError):
        encode_name("\ud800")
    with pytest.raises(EncodingError):
        encode_name(("a", "\ud800"))
    with pytest.raises(EncodingError):
        encode_meta(["\ud800"])


# ---------------------------------------------------------------- nesting


def _nest(kind, depth: int):
    value = kind()
    for _ in range(depth):
        value = kind([value]) if kind is list else (value,) if kind is tuple else {"k": value}
    return value


@pytest.mark.parametrize("kind", [list, tuple, dict])
def test_pathological_nesting_raises_encoding_error(kind) -> None:
    deep = _nest(kind, 10_000)
    for encode in (encode_meta, encode_message):
        with pytest.raises(EncodingError, match="nested"):
            encode(deep)
    if kind is tuple:
        with pytest.raises(EncodingError, match="nested"):
            encode_name(deep)


@pytest.mark.parametrize("kind", [list, tuple, dict])
def test_nesting_up_to_the_depth_limit_round_trips(kind) -> None:
    value = _nest(kind, MAX_DEPTH - 1)
    assert decode(encode_meta(value)) == value


# ---------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used byte
        b"\x92\x01",  # truncated array
        b"\xa5ab",  # truncated str
        b"\x01\x02",  # extra data
        b"\xc4\x02\xff\xfe\x00",  # extra after bin
        b"\xa2\xff\xfe",  # invalid utf-8
        b"\xd4\x05\x00",  # unknown ext code
        b"\xd5\x01\xa1a",  # tuple ext that holds a str, not an array
        b"\x81\x91\x01\x01",  # map key that is an array (unhashable list)
        b"\x91" * 100_000,  # absurd nesting
        bytes.fromhex("d501") + b"\x91" * 2,  # tuple ext with a truncated array
    ],
)
def test_malformed_bytes_raise_encoding_error(data: bytes) -> None:
    with pytest.raises(EncodingError):
        decode(data)
    with pytest.raises(EncodingError):
        decode_name(data)


def test_deeply_nested_tuple_ext_raises_encoding_error() -> None:
    data = b"\x90"  # []; each round wraps it in a one-item tuple ext
    for _ in range(MAX_DEPTH + 50):
        data = codec._pack(msgpack.ExtType(codec.TUPLE_EXT, b"\x91" + data))
    with pytest.raises(EncodingError):
        decode(data)


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_decode_of_arbitrary_bytes_returns_or_raises_encoding_error(data: bytes) -> None:
    try:
        decode(data)
    except EncodingError:
        pass


# ---------------------------------------------------------------- properties

_name_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
names = st.recursive(
    _name_scalars, lambda inner: st.lists(inner, max_size=4).map(tuple), max_leaves=12
)

_meta_scalars = _name_scalars.filter(lambda v: not (isinstance(v, float) and math.isnan(v)))
_hashable_keys = st.recursive(
    _meta_scalars, lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=6
)
metas = st.recursive(
    _meta_scalars,
    lambda inner: st.lists(inner, max_size=5)
    | st.lists(inner, max_size=5).map(tuple)
    | st.dictionaries(_hashable_keys, inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300)
@given(metas)
def test_meta_and_message_round_trip_exactly(value) -> None:
    for encode in (encode_meta, encode_message):
        out = decode(encode(value))
        assert out == value
        assert repr(out) == repr(value)


@settings(max_examples=300)
@given(names)
def test_names_round_trip_and_equal_names_give_equal_bytes(name) -> None:
    data = encode_name(name)
    back = decode_name(data)
    assert _strict_key(back) == _strict_key(name)
    assert encode_name(back) == data
    # The same name spelt differently (-0.0, another NaN, subclasses) gives the same bytes.
    assert encode_name(_twin(name)) == data


@settings(max_examples=300)
@given(names, names)
def test_different_names_give_different_bytes(a, b) -> None:
    assert (encode_name(a) == encode_name(b)) == (_strict_key(a) == _strict_key(b))


class _Str(str):
    pass


class _Int(int):
    pass


class _Tuple(tuple):
    pass


_OTHER_NAN = struct.unpack(">d", bytes.fromhex("fff8000000000123"))[0]


def _twin(v):
    if isinstance(v, tuple):
        return _Tuple(_twin(x) for x in v)
    if isinstance(v, float):
        return _OTHER_NAN if math.isnan(v) else -0.0 if v == 0 else v
    if type(v) is str:
        return _Str(v)
    if type(v) is int:
        return _Int(v)
    return v


def _strict_key(v):
    """Equality as names see it: types matter (1, 1.0, True differ); -0.0 is 0.0, NaN is NaN."""
    if isinstance(v, tuple):
        return ("t", tuple(_strict_key(x) for x in v))
    if isinstance(v, float):
        return (float, "nan" if math.isnan(v) else v + 0.0)
    return (type(v), v)
