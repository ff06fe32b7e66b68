"""The layout codec (saf/_codec.py): exact bytes, round trips, and every kind of bad input."""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saf._codec import (
    SA_NAME, Const, Layout, array, blob, flag, i8, i16, i32, i64, optional, pad, padded, raw,
    rest, u8, u16, u32, u64,
)
from saf.errors import IpcProtocolError


class Color(enum.IntEnum):
    RED = 1
    GREEN = 2


@dataclass(frozen=True, slots=True)
class Inner:
    a: int
    b: int


@dataclass(frozen=True, slots=True)
class Item:
    name: bytes
    size: int


@dataclass(frozen=True, slots=True)
class Msg:
    version_ok: bool
    color: Color
    inner: Inner
    name: bytes
    small: int
    key: bytes
    items: tuple[Item, ...]
    ids: frozenset[int]
    opt: Inner | None
    tail: bytes


#  0     1      2       3     4               12               270      271        273
#  | 7   | ok   | color | pad | inner (a, b)  | name (SaNameT) | small  | key_len  | nids |
#  274       275       283
#  | has_opt | opt (8) | key | count u16 | items (len u8, name, size u64)... | ids (u32 each) | tail
MSG = Layout(
    Msg, "MSG",
    Const(u8, 7),
    ("version_ok", flag),
    ("color", u8.as_enum(Color)),
    pad(1),
    ("inner", Layout(Inner, None, ("a", u32), ("b", i32))),
    ("name", SA_NAME),
    ("small", i8.only(-1, 0, 1)),
    ("key_len", u16),
    ("nids", u8),
    ("has_opt", flag),
    ("opt", optional(Layout(Inner, "opt", ("a", u32), ("b", i32)), "has_opt")),
    ("key", blob("key_len", max=100)),
    ("items", array(Layout(Item, "item", ("name", blob(u8)), ("size", u64)), u16, max=50)),
    ("ids", array(u32, "nids", sorted=True, container=frozenset)),
    ("tail", rest(max=1000)),
)


def _msg_bytes(m: Msg) -> bytes:
    """The same message written by hand with struct: what the declaration promises."""
    ids = sorted(m.ids)
    out = struct.pack("!BBBxIi", 7, int(m.version_ok), int(m.color), m.inner.a, m.inner.b)
    out += struct.pack("!H256s", len(m.name), m.name)
    out += struct.pack("!bHBB", m.small, len(m.key), len(ids), m.opt is not None)
    out += struct.pack("!Ii", *((m.opt.a, m.opt.b) if m.opt else (0, 0)))
    out += m.key + struct.pack("!H", len(m.items))
    for it in m.items:
        out += struct.pack("!B", len(it.name)) + it.name + struct.pack("!Q", it.size)
    out += struct.pack(f"!{len(ids)}I", *ids) + m.tail
    return out


inner_st = st.builds(Inner, st.integers(0, 2**32 - 1), st.integers(-2**31, 2**31 - 1))
msg_st = st.builds(
    Msg, st.booleans(), st.sampled_from(Color), inner_st, st.binary(max_size=256),
    st.sampled_from([-1, 0, 1]), st.binary(max_size=100),
    st.lists(st.builds(Item, st.binary(max_size=20), st.integers(0, 2**64 - 1)),
             max_size=5).map(tuple),
    st.frozensets(st.integers(0, 2**32 - 1), max_size=20),
    st.none() | inner_st, st.binary(max_size=50))

SAMPLE = Msg(True, Color.GREEN, Inner(1, -2), b"nm", -1, b"k", (Item(b"i", 9),),
             frozenset({5, 3}), Inner(4, 5), b"tail")


@settings(max_examples=200, deadline=None)
@given(msg_st)
def test_round_trip_and_exact_bytes(m):
    data = MSG.encode(m)
    assert data == _msg_bytes(m)
    assert MSG.pack(m.version_ok, m.color, m.inner, m.name, m.small, m.key, m.items, m.ids,
                    m.opt, m.tail) == data
    assert MSG.decode(data) == m
    assert MSG.decode_from(b"xx" + data, 2) == (m, len(data) + 2)


@settings(max_examples=100, deadline=None)
@given(msg_st, st.data())
def test_every_truncation_is_an_error(m, data):
    raw = MSG.encode(m)
    fixed_end = len(raw) - len(m.tail)  # cutting only the tail leaves a valid message
    cut = data.draw(st.integers(0, fixed_end - 1))
    with pytest.raises(IpcProtocolError, match="MSG|item|opt"):
        MSG.decode(raw[:cut])


def test_truncation_names_field_and_offset():
    raw = MSG.encode(SAMPLE)
    with pytest.raises(IpcProtocolError,
                       match=r"MSG: truncated at a \(byte 4\): 4 bytes needed, 2 left"):
        MSG.decode(raw[:6])
    with pytest.raises(IpcProtocolError, match=r"MSG: key \(byte 283\) 1 bytes announced, 0 left"):
        MSG.decode(raw[:283])


def test_trailing_bytes():
    lay = Layout(Inner, "inner", ("a", u32), ("b", i32))
    data = lay.encode(Inner(1, 2))
    with pytest.raises(IpcProtocolError, match=r"inner: 1 trailing bytes after byte 8"):
        lay.decode(data + b"\0")
    assert lay.decode_from(data + b"\0") == (Inner(1, 2), 8)


def _patched(offset: int, value: bytes) -> bytes:
    raw = bytearray(MSG.encode(SAMPLE))
    raw[offset:offset + len(value)] = value
    return bytes(raw)


@pytest.mark.parametrize("offset,value,match", [
    (0, b"\x08", r"constant \(byte 0\) is 8, not 7"),
    (1, b"\x02", r"version_ok \(byte 1\) is 2, not 0 or 1"),
    (2, b"\x03", r"color \(byte 2\) 3 is not a Color"),
    (12, b"\x01\x01", r"name \(byte 12\) length 257 exceeds 256"),
    (270, b"\x05", r"small \(byte 270\) 5 is not a valid value"),
    (274, b"\x02", r"has_opt \(byte 274\) is 2, not 0 or 1"),
    (271, b"\x00\x65", r"key \(byte 283\) length 101 exceeds 100"),
    (284, b"\x00\x33", r"items \(byte 286\) count 51 exceeds 50"),
    (284, b"\x00\x09", r"items \(byte 286\) 9 items need at least 81 bytes"),
])
def test_out_of_range_values(offset, value, match):
    with pytest.raises(IpcProtocolError, match=match):
        MSG.decode(_patched(offset, value))


def test_unsorted_array_refused():
    raw = MSG.encode(SAMPLE)
    ids_at = raw.index(struct.pack("!II", 3, 5))
    bad = raw[:ids_at] + struct.pack("!II", 5, 3) + raw[ids_at + 8:]
    with pytest.raises(IpcProtocolError, match="ids .* not strictly increasing"):
        MSG.decode(bad)


def test_absent_optional_is_zeros_and_none():
    m = Msg(False, Color.RED, Inner(0, 0), b"", 0, b"", (), frozenset(), None, b"")
    raw = MSG.encode(m)
    assert raw[274] == 0 and raw[275:283] == bytes(8)
    # a present flag with zeros decodes as a value; garbage under an absent flag is ignored
    assert MSG.decode(raw[:274] + b"\x01" + raw[275:]).opt == Inner(0, 0)
    assert MSG.decode(raw[:275] + b"\xff" * 8 + raw[283:]).opt is None


@pytest.mark.parametrize("kwargs,match", [
    ({"small": 200}, r"MSG.small: 200 out of range for i8"),
    ({"name": b"x" * 257}, r"MSG.name: longer than 256 bytes"),
    ({"key": b"x" * 101}, r"MSG.key: longer than 100 bytes"),
    ({"inner": Inner(-1, 0)}, r"Inner.a: -1 out of range for u32"),
    ({"items": (Item(b"", -5),)}, r"item.size: -5 out of range for u64"),
    ({"ids": frozenset({-3})}, r"MSG: a value does not fit its field"),
])
def test_encode_out_of_range_raises_value_error(kwargs, match):
    from dataclasses import replace
    with pytest.raises(ValueError, match=match):
        MSG.encode(replace(SAMPLE, **kwargs))


def test_custom_error_class_and_check_hook():
    class Bad(Exception):
        pass

    lay = Layout(Inner, "pair", ("a", u16), ("b", u16), error=Bad,
                 check=lambda o: "a above b" if o.a > o.b else None)
    assert lay.decode(b"\x00\x01\x00\x02") == Inner(1, 2)
    with pytest.raises(Bad, match="pair: a above b"):
        lay.decode(b"\x00\x03\x00\x02")
    with pytest.raises(Bad, match="truncated"):
        lay.decode(b"\x00")
    assert lay.size == 4 and lay.struct is not None and lay.struct.format == "!HH"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_raises_only_the_error_class(data):
    for lay in (MSG, TUPLE, KEYS):
        try:
            lay.decode(data)
        except IpcProtocolError:
            pass


#  | count u8 | count x (len u16 | bytes) | flags u16 (1 or 2) | nums: count u8, u64 each |
TUPLE = Layout(None, "tuple", ("blobs", array(blob(u16), u8)), ("f", u16.only(1, 2)),
               ("nums", array(u64, u8, container=list)))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=30), max_size=10).map(tuple), st.sampled_from([1, 2]),
       st.lists(st.integers(0, 2**64 - 1), max_size=10))
def test_plain_tuple_layout_round_trip(blobs, f, nums):
    data = TUPLE.pack(blobs, f, nums)
    assert TUPLE.decode(data) == (blobs, f, nums)
    assert data[0] == len(blobs)


@dataclass
class Defaults:
    a: int
    extra: list[int] = field(default_factory=list)


def test_declaration_errors():
    with pytest.raises(TypeError, match="must be declared before"):
        Layout(None, "x", ("b", blob("n")), ("n", u8))
    with pytest.raises(TypeError, match="rest.. must be the last"):
        Layout(None, "x", ("a", rest()), ("b", u8))
    with pytest.raises(TypeError, match="not fields of"):
        Layout(Inner, "x", ("a", u8), ("c", u8))
    with pytest.raises(TypeError, match="not on the wire and without a default"):
        Layout(Inner, "x", ("a", u8))
    with pytest.raises(TypeError, match="optional layout must be fixed"):
        Layout(None, "x", ("f", flag), ("o", optional(TUPLE, "f")))
    # fields with a default may stay off the wire
    assert Layout(Defaults, "d", ("a", u16)).decode(b"\x00\x05") == Defaults(5)


def test_every_integer_type_range():
    for t, lo, hi in ((u8, 0, 255), (u16, 0, 65535), (u32, 0, 2**32 - 1), (u64, 0, 2**64 - 1),
                      (i8, -128, 127), (i16, -2**15, 2**15 - 1), (i32, -2**31, 2**31 - 1),
                      (i64, -2**63, 2**63 - 1)):
        lay = Layout(None, "n", ("v", t))
        for v in (lo, hi):
            assert lay.decode(lay.pack(v)) == (v,)
        for v in (lo - 1, hi + 1):
            with pytest.raises(ValueError, match=f"n.v: {v} out of range"):
                lay.pack(v)


def test_padded_field_ignores_padding_content():
    lay = Layout(None, "p", ("s", padded(8, u8)))
    assert lay.pack(b"ab") == b"\x02ab" + bytes(6)
    assert lay.decode(b"\x02abXXXXXX") == (b"ab",)


def test_module_docstring_example_runs(capsys):
    import dataclasses as dc
    import textwrap

    import saf._codec as codec
    doc = codec.__doc__
    block = doc[doc.index("Worked example"):doc.index("Keep the byte-layout")]
    code = textwrap.dedent(block.split("::", 1)[1])
    env = {"dataclass": dc.dataclass, "IpcProtocolError": IpcProtocolError,
           **{n: getattr(codec, n) for n in codec.__all__}}
    exec(compile(code, "<docstring>", "exec"), env)  # noqa: S102
    assert capsys.readouterr().out == \
        "WRITE: truncated at id_len (byte 8): 2 bytes needed, 1 left\n"


def test_rest_only_at_the_end_even_nested():
    tail = Layout(None, "tail", ("a", u8), ("r", rest()))
    with pytest.raises(TypeError, match="rest.. must be the last"):
        Layout(None, "x", ("t", tail), ("b", u8))
    with pytest.raises(TypeError, match="cannot end with rest"):
        Layout(None, "x", ("items", array(tail, u8)))
    outer = Layout(None, "x", ("b", u8), ("t", tail))
    assert outer.decode(b"\x01\x02xyz") == (1, (2, b"xyz"))



# --- raw(n): fixed-size bytes ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Keyed:
    key: bytes
    n: int
    digest: bytes
    groups: tuple[bytes, ...]
    data: bytes


#  0          4     6          22        24
#  | key (4)  | n   | digest   | count   | count x group (3) | data ... |
KEYS = Layout(Keyed, "KEYS", ("key", raw(4)), ("n", u16),
              ("digest", Layout(None, "digest", ("d", raw(16)))),
              ("groups", array(raw(3), u16, max=100)), ("data", rest()))


def _keyed_bytes(m: Keyed) -> bytes:
    return (struct.pack("!4sH16sH", m.key, m.n, m.digest, len(m.groups))
            + b"".join(m.groups) + m.data)


keyed_st = st.builds(Keyed, st.binary(min_size=4, max_size=4), st.integers(0, 65535),
                     st.binary(min_size=16, max_size=16),
                     st.lists(st.binary(min_size=3, max_size=3), max_size=100).map(tuple),
                     st.binary(max_size=20))


@settings(max_examples=200, deadline=None)
@given(keyed_st)
def test_raw_round_trip_and_exact_bytes(m):
    data = KEYS.pack(m.key, m.n, (m.digest,), m.groups, m.data)
    assert data == _keyed_bytes(m)
    assert KEYS.decode(data) == Keyed(m.key, m.n, (m.digest,), m.groups, m.data)
    assert KEYS.size is None and KEYS.min_size == 24


@settings(max_examples=100, deadline=None)
@given(keyed_st, st.data())
def test_raw_truncation_is_an_error(m, data):
    raw_ = _keyed_bytes(m)
    cut = data.draw(st.integers(0, 24 + 3 * len(m.groups) - 1))
    with pytest.raises(IpcProtocolError, match="KEYS"):
        KEYS.decode(raw_[:cut])


def test_raw_errors_name_the_field():
    good = _keyed_bytes(Keyed(b"abcd", 1, bytes(16), (b"xyz",), b""))
    with pytest.raises(IpcProtocolError, match=r"KEYS: truncated at key \(byte 0\): 4 bytes "
                                               r"needed, 3 left"):
        KEYS.decode(good[:3])
    with pytest.raises(IpcProtocolError, match=r"KEYS: truncated at d \(byte 6\)"):
        KEYS.decode(good[:10])
    with pytest.raises(IpcProtocolError, match=r"KEYS: groups \(byte 24\) 1 items need 3 bytes, "
                                               r"2 left"):
        KEYS.decode(good[:26])
    with pytest.raises(IpcProtocolError, match=r"groups \(byte 24\) count 101 exceeds 100"):
        KEYS.decode(good[:22] + struct.pack("!H", 101) + bytes(303))
    lay = Layout(None, "k", ("k", raw(2)))
    assert lay.size == 2 and lay.struct is not None and lay.struct.format == "!2s"
    with pytest.raises(IpcProtocolError, match=r"k: 1 trailing bytes after byte 2"):
        lay.decode(b"abc")


@pytest.mark.parametrize("args,match", [
    ((b"abc", 1, (bytes(16),), (), b""), r"KEYS.key: 3 bytes, not 4"),
    ((b"abcde", 1, (bytes(16),), (), b""), r"KEYS.key: 5 bytes, not 4"),
    ((b"abcd", 1, (bytes(15),), (), b""), r"digest.d: 15 bytes, not 16"),
    ((b"abcd", 1, (bytes(16),), (b"xyz", b"xy"), b""), r"KEYS.groups: an item is not 3 bytes"),
    ((b"abcd", 1, (bytes(16),), (b"xy", b"xyzw"), b""), r"KEYS.groups: an item is not 3 bytes"),
    ((b"abcd", 1, (bytes(16),), (b"xyzw",), b""), r"KEYS.groups: an item is not 3 bytes"),
])
def test_raw_encode_of_another_size_is_a_value_error(args, match):
    # struct's "4s" would pad or cut without a word
    with pytest.raises(ValueError, match=match):
        KEYS.pack(*args)


def test_raw_sorted_array_and_size_check():
    lay = Layout(None, "s", ("ks", array(raw(2), u8, sorted=True)))
    assert lay.pack([b"bb", b"aa"]) == b"\x02aabb"
    assert lay.decode(b"\x02aabb") == ((b"aa", b"bb"),)
    with pytest.raises(IpcProtocolError, match="not strictly increasing"):
        lay.decode(b"\x02bbaa")
    with pytest.raises(TypeError, match="at least 1"):
        raw(0)


@dataclass(frozen=True, slots=True)
class Later:
    note: str = ""
    a: int = 0
    b: bytes = b""


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=2, max_size=2), st.integers(0, 2**32 - 1)),
                max_size=20))
def test_arrays_of_fixed_items_with_raw_and_tuples(items):
    # fixed items of plain fields decode in one sweep; a class whose wire fields are not
    # its first ones must still get them by name
    tup = Layout(None, "t", ("items", array(Layout(None, "it", ("k", raw(2)), ("v", u32)), u8)))
    data = tup.pack(items)
    assert data == bytes([len(items)]) + b"".join(struct.pack("!2sI", k, v) for k, v in items)
    assert tup.decode(data) == (tuple(items),)
    later = Layout(None, "l", ("items", array(Layout(Later, "later", ("a", u32), ("b", raw(2))),
                                              u8)))
    objs = tuple(Later(a=v, b=k) for k, v in items)
    assert later.decode(later.pack(objs)) == (objs,)
