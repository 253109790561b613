"""register()'s meta on its hot path: packed as it is, with C (csrc/plain.c) checking that the bytes are
what codec's walk leaves unchanged, and the walk deciding everything else. A registered meta must be
stored as exactly encode_meta's bytes, or refused with encode_meta's EncodingError, whatever it is."""
from __future__ import annotations

import enum
import random
from collections import OrderedDict
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import syn_mp
from syn_mp._table import REG, meta_plain
from syn_mp.codec import MAX_META, encode_meta, encode_name
from syn_mp.errors import EncodingError
from conftest import checked

S = "s"


def plain(data: bytes) -> bool:
    r = meta_plain(data, len(data))
    assert r in (0, 1)
    return bool(r)


def _reference(v: Any, depth: int = 0) -> bool:
    """What synt_meta_plain must say of encode_meta(v), from the Python values themselves: no bytes,
    no tuple (an ext), containers at most 32 deep."""
    t = type(v)
    if t is bytes or t is tuple:
        return False
    if t is list or t is dict:
        if depth >= 32:
            return False
        items = list(v) if t is list else [x for kv in v.items() for x in kv]
        return all(_reference(x, depth + 1) for x in items)
    return True


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=False),
                    st.text(max_size=300), st.binary(max_size=40))
keys = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.text(max_size=20),
                 st.binary(max_size=8), st.tuples(st.integers(0, 9), st.text(max_size=3)))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=20), st.tuples(inner, inner), st.dictionaries(keys, inner, max_size=20)),
    max_leaves=60)


@settings(max_examples=400, deadline=None)
@given(values)
def test_the_c_check_agrees_with_the_walk_on_every_meta(v: Any) -> None:
    assert plain(encode_meta(v)) == _reference(v)


@pytest.mark.parametrize("depth", [1, 31, 32, 33, 99, 100])
def test_the_depth_bound_is_32_containers(depth: int) -> None:
    v: Any = 0
    for _ in range(depth):
        v = [v]
    assert plain(encode_meta(v)) == (depth <= 32)
    e: Any = []
    for _ in range(depth - 1):
        e = {"k": e}
    assert plain(encode_meta(e)) == (depth <= 32)  # an empty container counts as a level too


def test_truncated_padded_and_random_bytes_are_never_plain_and_never_crash() -> None:
    rng = random.Random(11)
    samples = [encode_meta(v) for v in (
        {"port": 8000, "host": "web-1", "tags": ["a", "b"], "w": 0.5},
        [None, True, False, -1, 2**64 - 1, -2**63, "x" * 40, "y" * 300, "z"],
        {str(i): list(range(i)) for i in range(20)}, list(range(300)),
        {"s16": "q" * 70, "a16": list(range(20)), "m16": {i: i for i in range(20)}})]
    for data in samples:
        assert plain(data)
        for cut in range(len(data)):  # every strict prefix of one object is incomplete
            assert not plain(data[:cut])
        assert not plain(data + b"\x00")  # a trailing byte: two objects
        for _ in range(300):  # a flipped byte: a verdict, never a crash or a read past the end
            b = bytearray(data)
            b[rng.randrange(len(b))] = rng.randrange(256)
            plain(bytes(b))
    for _ in range(20000):
        plain(bytes(rng.randrange(256) for _ in range(rng.randrange(12))))
    # headers that claim more than is there: counts and lengths of 2**32 - 1
    for head in (b"\xdd", b"\xdf", b"\xdb"):
        assert not plain(head + b"\xff\xff\xff\xff" + b"\x00" * 16)
    for b in (0xc1, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8):
        assert not plain(bytes([b]) + b"\x00" * 20)


class Color(enum.IntEnum):
    RED = 1


class Text(str):
    pass


def _deep(n: int) -> Any:
    v: Any = None
    for _ in range(n):
        v = [v]
    return v


# Metas that the hot path's pack either refuses (subclasses, tuples, big ints, lone surrogates) or
# packs into bytes the walk would change or refuse (bytearray, memoryview, ExtType, Timestamp, depth)
CORPUS: list[Any] = [
    None, 0, -1, 2**64 - 1, 2**64, -2**63 - 1, 1.5, float("nan"), "", "é", "\ud800", b"", b"raw",
    bytearray(b"ba"), memoryview(b"mv"), msgpack.ExtType(1, b"\x90"), msgpack.ExtType(9, b"x"),
    msgpack.Timestamp(1, 2), (1, "a"), ((),), [b"x"], {"k": (1,)}, {(1, 2): "tuple key"},
    {frozenset(): 1}, {1, 2}, OrderedDict(a=1), {"c": Color.RED}, {Text("t"): Text("u")}, [Color.RED],
    {"port": 8000}, {"port": bytearray(b"x")}, _deep(32), _deep(33), _deep(99), _deep(100), _deep(101),
    "m" * (MAX_META - 3), "m" * (MAX_META - 2), [1] * (MAX_META - 3), object(),
]


def test_register_stores_encode_metas_bytes_or_raises_its_error(node) -> None:
    from syn_mp._client import table_of
    for i, meta in enumerate(CORPUS):
        try:
            want: bytes | None = encode_meta(meta)
            why = ""
        except EncodingError as e:
            want, why = None, str(e)
        name = ("meta", i)
        if want is None:
            with pytest.raises(EncodingError) as got:
                syn_mp.register(S, name, meta=meta)
            assert str(got.value) == why, (i, type(meta))
            assert syn_mp.lookup(S, name) is None, (i, type(meta))
        else:
            syn_mp.register(S, name, meta=meta)
            assert table_of(S).get(REG, encode_name(name)).meta == want, (i, type(meta))
            syn_mp.unregister(S, name)
    checked(S)


def test_a_name_too_long_or_unencodable_is_an_encoding_error_on_both_calls(node) -> None:
    for name in ("n" * 1100, "\udfff", ("t", "\udfff"), b"b" * 1100):
        for call in (lambda: syn_mp.register(S, name), lambda: syn_mp.unregister(S, name)):
            with pytest.raises(EncodingError):
                call()
    syn_mp.register(S, "n" * 1021)  # 1024 bytes encoded: the limit is inclusive
    syn_mp.unregister(S, "n" * 1021)
    checked(S)
