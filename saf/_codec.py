"""One declarative way to describe a byte layout; encoders and decoders are generated.

A ``Layout`` names a class (a frozen dataclass, a NamedTuple-like class, or
None for a plain tuple) and lists its fields in wire order, network byte
order.  From that list it generates, once, at import time:

* ``encode(obj) -> bytes`` and ``pack(*fields) -> bytes`` (the same bytes
  from the values of the class's fields, in class order: no object built on
  hot paths);
* ``decode(data) -> obj``: exactly one message, for untrusted bytes;
* ``decode_from(data, offset) -> (obj, end)``: one message at ``offset``,
  bytes after it are the caller's.

Consecutive fixed-size fields, nested fixed layouts included, become one
precompiled ``struct.Struct``, so a generated codec does what a careful
hand-written one does: one ``pack``/``unpack_from`` per fixed run, then the
variable parts.  ``Layout.source`` shows the generated code.

Untrusted input: decoders raise only the layout's ``error`` class
(``saf.errors.IpcProtocolError`` by default; the Totem wire passes its own),
with the layout, the field and the byte offset in the message: truncation,
trailing bytes, a length or count beyond the data or its ``max``, a flag
byte other than 0/1, a value outside ``only(...)`` or its enum, a constant
that does not match, an unsorted ``sorted=True`` array, and what the
layout's ``check`` hook reports.  Encoders trust their caller: a value that
does not fit its field raises ``ValueError`` naming the field.

Field types (entries are ``(name, type)``; ``pad`` and ``Const`` stand alone):

====================  ==========================================================
``u8 u16 u32 u64``    unsigned integers; ``i8 i16 i32 i64`` signed
``flag``              u8 that is 0 or 1, decoded as bool
``u8.only(1, 2)``     an integer restricted to these values on decode
``u8.as_enum(E)``     an integer decoded as the IntEnum ``E`` (unknown value: error)
``pad(n)``            n zero bytes, ignored on decode
``raw(n)``            exactly n bytes, as they are (a key, a digest); an encoded
                      value of another length is a ValueError
``Const(u8, 1)``      a constant (a version, a packet type): checked on decode
``padded(64, u8)``    a u8 used length, then 64 bytes zero-padded (SaNameT style;
                      ``SA_NAME`` is ``padded(256, u16)``)
``blob(u16)``         a u16 length, then that many bytes
``blob("id_len")``    bytes whose length is the earlier field ``id_len``
``rest(max=None)``    every byte up to the end (last field only)
``array(L, u32)``     a u32 count, then that many items (L a Layout, an integer
                      type or a ``blob``); ``array(L, "n")``: count in field n
``optional(L, "f")``  a fixed layout L, zeros when the value is None; flag field f
                      says whether it is present
a ``Layout``          a nested layout (flattened into the parent when fixed)
====================  ==========================================================

A field that another field refers to (``"id_len"``, ``"n"``, ``"f"`` above) is
*computed*: the encoder writes the length, count or presence of the field
referring to it, the decoder uses it and does not hand it out; it is not an
attribute of the class.

Layout options: ``error=`` the exception class of its decoders; ``check=`` a
function of the decoded object returning an error message or None (rules
across fields); ``order=`` for a tuple layout, the tuple's order when it is
not the wire order.  ``layout.size`` is the size of a fixed layout (None
when variable) and ``layout.struct`` its one ``struct.Struct``, for code
that must stay on a bare Struct.

Worked example (a request body: 10 bytes, then the section id and the data)::

    @dataclass(frozen=True, slots=True)
    class Write:
        now: int
        section_id: bytes
        data: bytes

    #  0          8         10
    #  | now i64  | id_len  | section id ... | data ... |
    WRITE = Layout(Write, "WRITE",
                   ("now", i64),
                   ("id_len", u16),
                   ("section_id", blob("id_len")),
                   ("data", rest()))

    body = WRITE.encode(Write(5, b"s", b"xy"))   # == WRITE.pack(5, b"s", b"xy")
    assert body == bytes.fromhex("0000000000000005 0001") + b"sxy"
    assert WRITE.decode(body) == Write(5, b"s", b"xy")
    try:
        WRITE.decode(body[:9])
    except IpcProtocolError as exc:
        print(exc)  # WRITE: truncated at id_len (byte 8): 2 bytes needed, 1 left

Keep the byte-layout comment above each declaration: the declaration says
how to read the bytes, the comment shows them.
"""
from __future__ import annotations

import dataclasses
import enum
import struct
from typing import Any
from collections.abc import Callable, Iterable, Sequence

from saf.errors import IpcProtocolError

__all__ = [
    "Const", "Int", "Layout", "SA_NAME", "array", "blob", "flag", "i8", "i16", "i32", "i64",
    "optional", "pad", "padded", "raw", "rest", "u8", "u16", "u32", "u64",
]


# --- field types --------------------------------------------------------------------------


class Int:
    """A fixed-size integer field (``struct`` code ``code``)."""

    __slots__ = ("code", "size", "lo", "hi", "choices", "enum", "is_flag", "label")

    def __init__(self, code: str, *, choices: frozenset[int] | None = None,
                 enum_cls: type[enum.IntEnum] | None = None, is_flag: bool = False,
                 label: str | None = None) -> None:
        self.code = code
        self.size = struct.calcsize("!" + code)
        signed = code.islower()
        bits = 8 * self.size
        self.lo = -(1 << (bits - 1)) if signed else 0
        self.hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
        self.choices = choices
        self.enum = enum_cls
        self.is_flag = is_flag
        self.label = label or ("flag" if is_flag else ("i" if signed else "u") + str(bits))

    def only(self, *values: int) -> Int:
        """The same integer, restricted to ``values`` when decoded."""
        return Int(self.code, choices=frozenset(values), label=self.label)

    def as_enum(self, enum_cls: type[enum.IntEnum]) -> Int:
        """The same integer, decoded as ``enum_cls`` (other values are an error)."""
        return Int(self.code, enum_cls=enum_cls, label=self.label)

    def __repr__(self) -> str:
        return self.label


u8, u16, u32, u64 = Int("B"), Int("H"), Int("I"), Int("Q")
i8, i16, i32, i64 = Int("b"), Int("h"), Int("i"), Int("q")
flag = Int("B", is_flag=True)


@dataclasses.dataclass(frozen=True)
class pad:  # noqa: N801  (reads as a field type, like u8)
    """``n`` zero bytes; ignored on decode."""

    n: int


@dataclasses.dataclass(frozen=True)
class raw:  # noqa: N801
    """Exactly ``n`` bytes, kept as they are (no length on the wire: it is fixed)."""

    n: int

    def __post_init__(self) -> None:
        if self.n < 1:
            raise TypeError(f"raw({self.n}): the size is at least 1")


@dataclasses.dataclass(frozen=True)
class Const:
    """A constant integer: written by the encoder, checked by the decoder."""

    type: Int
    value: int


@dataclasses.dataclass(frozen=True)
class padded:  # noqa: N801
    """A used length (``len_type``), then ``size`` bytes, zero-padded."""

    size: int
    len_type: Int


SA_NAME = padded(256, u16)


@dataclasses.dataclass(frozen=True)
class blob:  # noqa: N801
    """Bytes with a length: an integer type (a prefix right here) or an earlier field's name."""

    length: Int | str
    max: int | None = None


@dataclasses.dataclass(frozen=True)
class rest:  # noqa: N801
    """Every byte up to the end of the message (the last field)."""

    max: int | None = None


@dataclasses.dataclass(frozen=True)
class array:  # noqa: N801
    """A counted sequence of ``item`` (a Layout, an Int, a raw or a blob).

    ``count`` is an integer type (the count right before the items) or an
    earlier field's name.  ``container`` builds the decoded value (tuple,
    list, frozenset...).  ``sorted``: the encoder writes the items sorted
    and the decoder requires them strictly increasing.
    """

    item: Layout | Int | raw | blob
    count: Int | str
    max: int | None = None
    container: Callable[[Iterable[Any]], Any] = tuple
    sorted: bool = False


@dataclasses.dataclass(frozen=True)
class optional:  # noqa: N801
    """A fixed layout that may be absent (None): zeros on the wire, flag field ``present``."""

    layout: Layout
    present: str


FieldType = Any  # Int | pad | raw | Const | padded | blob | rest | array | optional | Layout


# --- generation helpers -----------------------------------------------------------------------


class _Ns:
    """The namespace a generated function runs in, with fresh names for its constants."""

    def __init__(self) -> None:
        self.names: dict[str, Any] = {"struct": struct}
        self.n = 0

    def fresh(self, hint: str) -> str:
        self.n += 1
        return f"{hint}{self.n}"

    def const(self, value: Any, hint: str = "_k") -> str:
        name = self.fresh(hint)
        self.names[name] = value
        return name


class _Run:
    """Consecutive fixed fields, packed or unpacked by one Struct."""

    def __init__(self) -> None:
        self.codes: list[str] = []
        self.exprs: list[str] = []      # encode: one per value
        self.targets: list[str] = []    # decode: one per value
        self.post: list[str] = []       # decode: checks and conversions after unpack
        self.fields: list[tuple[str, int, int]] = []  # (field, offset in run, size)
        self.size = 0

    def add(self, field: str, code: str, expr: str | None, target: str | None) -> int:
        """Add one value; returns its offset in the run."""
        size = struct.calcsize("!" + code)
        rel = self.size
        self.fields.append((field, rel, size))
        self.size += size
        self.codes.append(code)
        if expr is not None:
            self.exprs.append(expr)
        if target is not None:
            self.targets.append(target)
        return rel


def _truncated(error: type[Exception], what: str, fields: Sequence[tuple[str, int, int]],
               data_len: int, start: int) -> Exception:
    left = data_len - start
    for name, rel, size in fields:
        if rel + size > left:
            return error(f"{what}: truncated at {name} (byte {start + rel}): "
                         f"{size} bytes needed, {max(0, left - rel)} left")
    return error(f"{what}: truncated at byte {start}")  # pragma: no cover


def _increasing(items: Sequence[Any]) -> bool:
    return all(a < b for a, b in zip(items, items[1:]))


def _class_fields(cls: Any) -> tuple[list[str], set[str]] | None:
    """(field names in order, names with defaults) of ``cls``; None for a plain tuple."""
    if cls is None:
        return None
    if dataclasses.is_dataclass(cls):
        fs = [f for f in dataclasses.fields(cls) if f.init]
        return ([f.name for f in fs],
                {f.name for f in fs if f.default is not dataclasses.MISSING
                 or f.default_factory is not dataclasses.MISSING})
    if hasattr(cls, "_fields"):
        return list(cls._fields), set(getattr(cls, "_field_defaults", {}))
    raise TypeError(f"{cls!r}: a layout's class must be a dataclass, a NamedTuple or None")


# --- the layout ------------------------------------------------------------------------------


class Layout:
    """A message layout and its generated codec.

    Args:
        cls: the class decoded messages are (None: a plain tuple).
        name: used in error messages (default: the class name).
        *entries: ``(field name, type)`` in wire order, or a bare ``pad``/``Const``.
        error: the exception class decoders raise (called with one message).
        check: called with each decoded object; a returned string is an error.
        order: with ``cls`` None, the order of the decoded tuple's (and pack's)
            values, when it is not the wire order.
    """

    def __init__(self, cls: Any, name: str | None = None, *entries: Any,
                 error: type[Exception] = IpcProtocolError,
                 check: Callable[[Any], str | None] | None = None,
                 order: Sequence[str] | None = None) -> None:
        self.cls = cls
        self._unwrap = False  # decode to the one field's value (array items that are a value)
        self.name = name or (cls.__name__ if cls is not None else "layout")
        self.error = error
        self.check = check
        self._order = list(order) if order is not None else None
        self.entries: list[tuple[str | None, FieldType]] = []
        for e in entries:
            if isinstance(e, (pad, Const)):
                self.entries.append((None, e))
            else:
                fname, ftype = e
                self.entries.append((fname, ftype))
        self._validate()
        self.size: int | None = self._fixed_size()
        self.min_size = self._min_size()
        self._build()

    # --- declaration checks ------------------------------------------------------------

    def _validate(self) -> None:
        self.computed: dict[str, tuple[str, str]] = {}  # name -> (referring field, kind)
        seen: list[str] = []
        for i, (fname, ftype) in enumerate(self.entries):
            ref, kind = None, ""
            if isinstance(ftype, blob) and isinstance(ftype.length, str):
                ref, kind = ftype.length, "len"
            elif isinstance(ftype, array) and isinstance(ftype.count, str):
                ref, kind = ftype.count, "len"
            elif isinstance(ftype, optional):
                ref, kind = ftype.present, "present"
                if ftype.layout.size is None:
                    raise TypeError(f"{self.name}.{fname}: an optional layout must be fixed")
            if _takes_rest(ftype) and i != len(self.entries) - 1:
                raise TypeError(f"{self.name}.{fname}: rest() must be the last field")
            if isinstance(ftype, array) and _takes_rest(ftype.item):
                raise TypeError(f"{self.name}.{fname}: an array item cannot end with rest()")
            if ref is not None:
                if ref not in seen:
                    raise TypeError(f"{self.name}.{fname}: {ref!r} must be declared before it")
                if ref in self.computed:
                    raise TypeError(f"{self.name}: {ref!r} is referred to twice")
                rtype = dict((n, t) for n, t in self.entries if n)[ref]
                if not isinstance(rtype, Int):
                    raise TypeError(f"{self.name}.{ref}: a length, count or flag is an integer")
                self.computed[ref] = (fname or "", kind)
            if fname is not None:
                if fname in seen:
                    raise TypeError(f"{self.name}: field {fname!r} declared twice")
                seen.append(fname)
        self.data_fields = [n for n, _ in self.entries if n and n not in self.computed]
        cf = _class_fields(self.cls)
        #: the arguments of pack(): the class's fields that are on the wire, in class order
        self.arg_order = list(self.data_fields)
        if cf is None:
            if self._order is not None:
                if sorted(self._order) != sorted(self.data_fields):
                    raise TypeError(f"{self.name}: order {self._order} is not a permutation "
                                    f"of {self.data_fields}")
                self.arg_order = self._order
            self._positional = True
            return
        if self._order is not None:
            raise TypeError(f"{self.name}: order= is for tuple layouts (cls None)")
        names, defaults = cf
        self.arg_order = [n for n in names if n in self.data_fields]
        missing = set(self.data_fields) - set(names)
        if missing:
            raise TypeError(f"{self.name}: {sorted(missing)} not fields of {self.cls.__name__}")
        absent = set(names) - set(self.data_fields) - defaults
        if absent:
            raise TypeError(f"{self.name}: {sorted(absent)} of {self.cls.__name__} not on the "
                            "wire and without a default")
        # construct positionally when the wire's fields are the class's first ones
        self._positional = names[:len(self.arg_order)] == self.arg_order

    def _fixed_size(self) -> int | None:
        total = 0
        for _, t in self.entries:
            s = _type_size(t)
            if s is None:
                return None
            total += s
        return total

    def _min_size(self) -> int:
        return sum(_type_min_size(t) for _, t in self.entries)

    # --- generation ----------------------------------------------------------------------

    def _build(self) -> None:
        ns = _Ns()
        ns.names["_error"] = self.error
        ns.names["_trunc"] = _truncated
        ns.names["_increasing"] = _increasing
        ns.names["_locate"] = self._locate
        args = [f"a_{n}" for n in self.arg_order]
        pack_src = self._gen_encode(ns, "pack", args, lambda n: f"a_{n}")
        enc_src = self._gen_encode(ns, "encode", ["o"], self._item_access("o"))
        body, result = self._gen_decode_body(ns)
        dec_from = ["def decode_from(d, off=0):",
                    "    if d.__class__ is not bytes: d = bytes(d)",
                    "    n = len(d)", *["    " + line for line in body],
                    f"    return {result}, off"]
        dec = ["def decode(d):",
               "    if d.__class__ is not bytes: d = bytes(d)",
               "    n = len(d)", "    off = 0", *["    " + line for line in body],
               *([] if self.entries and isinstance(self.entries[-1][1], rest) else [
                   "    if off != n:",
                   f"        raise _error(f'{_q(self.name)}: {{n - off}} trailing bytes "
                   "after byte {off}')"]),
               f"    return {result}"]
        self.source = "\n".join([pack_src, enc_src, "\n".join(dec_from), "\n".join(dec)])
        exec(compile(self.source, f"<layout {self.name}>", "exec"), ns.names)  # noqa: S102
        self.pack: Callable[..., bytes] = ns.names["pack"]
        self.encode: Callable[[Any], bytes] = ns.names["encode"]
        self.decode: Callable[[bytes], Any] = ns.names["decode"]
        self.decode_from: Callable[..., tuple[Any, int]] = ns.names["decode_from"]
        #: the one Struct of a layout made only of fixed fields (for hand-tuned hot paths)
        self.struct: struct.Struct | None = ns.names.get("_whole")

    # encode ---------------------------------------------------------------------------------

    def _enc_parts(self, ns: _Ns, acc: Callable[[str], str], pre: list[str],
                   parts: list[Any]) -> None:
        """Append to ``parts`` a _Run (fixed values) or a str (a bytes expression)."""

        def run() -> _Run:
            if not parts or not isinstance(parts[-1], _Run):
                parts.append(_Run())
            return parts[-1]

        for entry_name, t in self.entries:
            fname = entry_name or ""  # anonymous: pad and Const
            label = f"{self.name}.{fname}"
            if fname in self.computed:
                target, kind = self.computed[fname]
                if kind == "len":
                    run().add(fname, t.code, f"len({acc(target)})", None)
                else:
                    run().add(fname, t.code, f"(0 if {acc(target)} is None else 1)", None)
                continue
            a = acc(fname) if fname else ""
            if isinstance(t, Int):
                run().add(fname, t.code, f"(1 if {a} else 0)" if t.is_flag else a, None)
            elif isinstance(t, pad):
                run().add("padding", f"{t.n}x", None, None)
            elif isinstance(t, raw):
                # struct's "Ns" would pad or cut silently: a wrong size is the caller's bug
                pre.append(f"if len({a}) != {t.n}: raise ValueError("
                           f"'{_q(label)}: ' + str(len({a})) + ' bytes, not {t.n}')")
                run().add(fname, f"{t.n}s", a, None)
            elif isinstance(t, Const):
                run().add("constant", t.type.code, repr(t.value), None)
            elif isinstance(t, padded):
                pre.append(f"if len({a}) > {t.size}: raise ValueError("
                           f"'{_q(label)}: longer than {t.size} bytes')")
                r = run()
                r.add(fname, t.len_type.code, f"len({a})", None)
                r.add(fname, f"{t.size}s", a, None)
            elif isinstance(t, blob):
                if t.max is not None:
                    pre.append(f"if len({a}) > {t.max}: raise ValueError("
                               f"'{_q(label)}: longer than {t.max} bytes')")
                if isinstance(t.length, Int):
                    run().add(fname, t.length.code, f"len({a})", None)
                parts.append(a)
            elif isinstance(t, rest):
                if t.max is not None:
                    pre.append(f"if len({a}) > {t.max}: raise ValueError("
                               f"'{_q(label)}: longer than {t.max} bytes')")
                parts.append(a)
            elif isinstance(t, Layout):
                if t.size is not None:
                    t._enc_parts(ns, t._item_access(a), pre, parts)
                else:
                    parts.append(f"{ns.const(t.encode, '_enc')}({a})")
            elif isinstance(t, optional):
                enc = ns.const(t.layout.encode, "_enc")
                zeros = ns.const(bytes(t.layout.size or 0), "_zeros")
                parts.append(f"({zeros} if {a} is None else {enc}({a}))")
            elif isinstance(t, array):
                # max is a decoder's bound against hostile counts; the encoder does not
                # check it: the ring must never raise on its own send path
                if isinstance(t.count, Int):
                    run().add(fname, t.count.code, f"len({a})", None)
                seq = f"sorted({a})" if t.sorted else a
                item = t.item
                if isinstance(item, Int):
                    fmt = ns.const("!%d" + item.code, "_fmt")
                    parts.append(f"struct.pack({fmt} % len({a}), *{seq})")
                elif isinstance(item, raw):
                    # joined first: the total length is the whole check for one item, and
                    # with the shortest item for more (all >= n, summing to count * n)
                    j = ns.fresh("joined")
                    pre.append(f"{j} = b''.join({seq})")
                    pre.append(f"if len({j}) != {item.n} * len({a}) or len({a}) > 1 and "
                               f"min(map(len, {a})) != {item.n}: "
                               f"raise ValueError('{_q(label)}: an item is not {item.n} bytes')")
                    parts.append(j)
                else:
                    lay = _item_layout(item, self.error)
                    ev = ns.fresh("e")
                    ipre, iexpr, _ = lay._enc_expr(ns, lay._item_access(ev))
                    if ipre:  # checks are statements: call the item's encoder
                        iexpr = f"{ns.const(lay.encode, '_enc')}({ev})"
                    parts.append(f"b''.join([{iexpr} for {ev} in {seq}])")
            else:
                raise TypeError(f"{label}: unknown field type {t!r}")

    def _item_access(self, obj: str) -> Callable[[str], str]:
        """How encode() reads field ``n`` of ``obj``: by index for tuple classes, so that
        a plain tuple in class order encodes like the class itself."""
        if self.cls is None or (isinstance(self.cls, type) and issubclass(self.cls, tuple)):
            index = {n: i for i, n in enumerate(self.arg_order)}
            return lambda n: f"{obj}[{index[n]}]"
        return lambda n: f"{obj}.{n}"

    def _enc_expr(self, ns: _Ns, acc: Callable[[str], str]) -> tuple[list[str], str, list[Any]]:
        """(checks to run first, the bytes expression, the parts) of this layout's encoding."""
        pre: list[str] = []
        parts: list[Any] = []
        self._enc_parts(ns, acc, pre, parts)
        exprs = []
        for p in parts:
            if isinstance(p, _Run):
                s = struct.Struct("!" + "".join(p.codes))
                if p.exprs:
                    exprs.append(f"{ns.const(s.pack, '_pk')}({', '.join(p.exprs)})")
                else:
                    exprs.append(ns.const(s.pack(), "_fixed"))
            else:
                exprs.append(p)
        if not exprs:
            expr = "b''"
        elif len(exprs) <= 4:
            expr = " + ".join(exprs)
        else:
            expr = "b''.join((" + ", ".join(exprs) + ",))"
        return pre, expr, parts

    def _gen_encode(self, ns: _Ns, fname: str, args: list[str],
                    acc: Callable[[str], str]) -> str:
        pre, expr, parts = self._enc_expr(ns, acc)
        if len(parts) == 1 and isinstance(parts[0], _Run):
            ns.names["_whole"] = struct.Struct("!" + "".join(parts[0].codes))
        values = ", ".join(acc(n) for n in self.data_fields)
        lines = [f"def {fname}({', '.join(args)}):",
                 *["    " + line for line in pre],
                 "    try:",
                 f"        return {expr}",
                 "    except struct.error as e:",
                 f"        raise ValueError(_locate(({values}{',' if values else ''}), e)) "
                 "from None"]
        return "\n".join(lines)

    def _locate(self, values: tuple[Any, ...], exc: Exception) -> str:
        """Which field made struct refuse to pack (the slow path of an encode error)."""
        return self._find_bad(values) or f"{self.name}: a value does not fit its field ({exc})"

    def _find_bad_in(self, obj: Any) -> str | None:
        if self.cls is None or (isinstance(obj, tuple) and not hasattr(obj, "_fields")):
            byname = dict(zip(self.arg_order, obj))
            return self._find_bad(tuple(byname.get(n) for n in self.data_fields))
        return self._find_bad(tuple(getattr(obj, n, None) for n in self.data_fields))

    def _find_bad(self, values: tuple[Any, ...]) -> str | None:
        byname = dict(zip(self.data_fields, values))
        for fname, t in self.entries:
            if fname is None:
                continue
            v: Any = byname.get(fname)
            if fname in self.computed:
                target, kind = self.computed[fname]
                if kind != "len":
                    continue
                try:
                    v = len(byname.get(target) or ())
                except TypeError:
                    continue
            elif isinstance(t, (Layout, optional)) and v is not None:
                found = (t if isinstance(t, Layout) else t.layout)._find_bad_in(v)
                if found:
                    return found
                continue
            elif isinstance(t, array) and isinstance(t.item, Layout) and v is not None:
                for item in v:
                    found = t.item._find_bad_in(item)
                    if found:
                        return found
                continue
            if isinstance(t, Int) and not t.is_flag and isinstance(v, int) \
                    and not t.lo <= v <= t.hi:
                return f"{self.name}.{fname}: {v} out of range for {t.label}"
        return None

    # decode -----------------------------------------------------------------------------------

    def _gen_decode_body(self, ns: _Ns) -> tuple[list[str], str]:
        """Lines that decode this layout at ``off`` (advancing it) and the result expression."""
        lines: list[str] = []
        run: list[_Run | None] = [None]

        def flush() -> None:
            r = run[0]
            if r is None:
                return
            s = struct.Struct("!" + "".join(r.codes))
            fields = ns.const(tuple(r.fields), "_flds")
            lines.append(f"if n - off < {s.size}: raise _trunc(_error, '{_q(self.name)}', "
                         f"{fields}, n, off)")
            if r.targets:
                tgt = ", ".join(r.targets) + ("," if len(r.targets) == 1 else "")
                lines.append(f"{tgt} = {ns.const(s.unpack_from, '_up')}(d, off)")
            lines.extend(r.post)  # before off moves: they name off + their offset in the run
            lines.append(f"off += {s.size}")
            run[0] = None

        def cur() -> _Run:
            r = run[0]
            if r is None:
                r = run[0] = _Run()
            return r

        result = self._dec_fields(ns, lines, cur, flush)
        flush()
        return lines, result

    def _dec_fields(self, ns: _Ns, lines: list[str], cur: Callable[[], _Run],
                    flush: Callable[[], None]) -> str:
        local: dict[str, str] = {}
        what = _q(self.name)

        def bad(field: str, msg: str, rel: int | None = None) -> str:
            # the f-string is evaluated only on the error path; in a run's checks
            # `off` is still the run's start, so the field is at off + rel
            at = "off" if rel is None else f"off + {rel}"
            return f"raise _error(f'{what}: {_q(field)} (byte {{{at}}}) {msg}')"

        def counted(field: str, ref: Int | str, bound: int | None, what: str) -> str:
            """The variable holding a blob's length or an array's count -- a prefix read
            here or an earlier field -- checked against ``bound``; the run ends here."""
            if isinstance(ref, Int):
                var = ns.fresh(what[:3])
                cur().add(field, ref.code, None, var)
            else:
                var = local[ref]
            flush()
            if bound is not None:
                lines.append(f"if {var} > {bound}: "
                             f"{bad(field, f'{what} {{{var}}} exceeds {bound}')}")
            return var

        for entry_name, t in self.entries:
            fname = entry_name or ""  # anonymous: pad and Const, which have no value to keep
            v = ns.fresh(f"v_{fname or 'x'}_")
            if fname:
                local[fname] = v
            if isinstance(t, Int):
                r = cur()
                rel = r.add(fname, t.code, None, v)
                if t.is_flag:
                    r.post.append(f"if {v} > 1: {bad(fname, f'is {{{v}}}, not 0 or 1', rel)}")
                    if fname not in self.computed:
                        r.post.append(f"{v} = {v} == 1")
                elif t.choices is not None:
                    ch = ns.const(t.choices, "_ch")
                    r.post.append(f"if {v} not in {ch}: "
                                  f"{bad(fname, f'{{{v}}} is not a valid value', rel)}")
                elif t.enum is not None:
                    e = ns.const(t.enum, "_enum")
                    vals = ns.const(frozenset(int(m) for m in t.enum), "_vals")
                    r.post.append(f"if {v} not in {vals}: "
                                  f"{bad(fname, f'{{{v}}} is not a {t.enum.__name__}', rel)}")
                    r.post.append(f"{v} = {e}({v})")
            elif isinstance(t, pad):
                cur().add("padding", f"{t.n}x", None, None)
            elif isinstance(t, raw):
                cur().add(fname, f"{t.n}s", None, v)
            elif isinstance(t, Const):
                r = cur()
                rel = r.add("constant", t.type.code, None, v)
                r.post.append(f"if {v} != {t.value!r}: "
                              f"{bad('constant', f'is {{{v}}}, not {t.value}', rel)}")
            elif isinstance(t, padded):
                r = cur()
                ln = ns.fresh("ln")
                rel = r.add(fname, t.len_type.code, None, ln)
                r.add(fname, f"{t.size}s", None, v)
                r.post.append(f"if {ln} > {t.size}: "
                              f"{bad(fname, f'length {{{ln}}} exceeds {t.size}', rel)}")
                r.post.append(f"{v} = {v}[:{ln}]")
            elif isinstance(t, blob):
                ln = counted(fname, t.length, t.max, "length")
                lines.append(f"if n - off < {ln}: "
                             f"{bad(fname, f'{{{ln}}} bytes announced, {{n - off}} left')}")
                lines.append(f"{v} = d[off:off + {ln}]")
                lines.append(f"off += {ln}")
            elif isinstance(t, rest):
                flush()
                if t.max is not None:
                    lines.append(f"if n - off > {t.max}: "
                                 f"{bad(fname, f'of {{n - off}} bytes exceeds {t.max}')}")
                lines.append(f"{v} = d[off:]")
                lines.append("off = n")
            elif isinstance(t, Layout):
                if t.size is not None and t.check is None:
                    # flattened into the current run
                    sub = t._dec_fields(ns, lines, cur, flush)
                    cur().post.append(f"{v} = {sub}")
                else:
                    flush()
                    lines.append(f"{v}, off = {ns.const(t.decode_from, '_dec')}(d, off)")
            elif isinstance(t, optional):
                flush()
                lines.append(f"{v}, off = {ns.const(t.layout.decode_from, '_dec')}(d, off)")
                lines.append(f"if not {local[t.present]}: {v} = None")
            elif isinstance(t, array):
                cnt = counted(fname, t.count, t.max, "count")
                self._dec_array(ns, lines, t, v, cnt, fname, bad)
            else:
                raise TypeError(f"{self.name}.{fname}: unknown field type {t!r}")
        values = [local[n] for n in self.arg_order]
        if self._unwrap:
            obj = values[0]
        elif self.cls is None:
            obj = "(" + ", ".join(values) + ("," if len(values) == 1 else "") + ")"
        elif self._positional:
            obj = f"{ns.const(self.cls, '_cls')}({', '.join(values)})"
        else:
            obj = f"{ns.const(self.cls, '_cls')}(" + ", ".join(
                f"{n}={local[n]}" for n in self.data_fields) + ")"
        if self.check is not None:
            o = ns.fresh("obj")
            msg = ns.fresh("msg")
            flush()
            lines.append(f"{o} = {obj}")
            lines.append(f"{msg} = {ns.const(self.check, '_check')}({o})")
            lines.append(f"if {msg}: raise _error(f'{what}: {{{msg}}}')")
            return o
        return obj

    def _dec_array(self, ns: _Ns, lines: list[str], t: array, v: str, cnt: str,
                   fname: str, bad: Callable[[str, str], str]) -> None:
        item = t.item
        cont = "" if t.container is tuple else ns.const(t.container, "_cont")
        if isinstance(item, Int) and item.choices is None and item.enum is None \
                and not item.is_flag:
            fmt = ns.const("!%d" + item.code, "_fmt")
            need = f"{{{cnt}}} items need {{{cnt} * {item.size}}} bytes, {{n - off}} left"
            lines.append(f"if n - off < {cnt} * {item.size}: {bad(fname, need)}")
            lines.append(f"{v} = struct.unpack_from({fmt} % {cnt}, d, off)")
            lines.append(f"off += {cnt} * {item.size}")
        elif isinstance(item, raw):
            need = f"{{{cnt}}} items need {{{cnt} * {item.n}}} bytes, {{n - off}} left"
            lines.append(f"if n - off < {cnt} * {item.n}: {bad(fname, need)}")
            lines.append(f"{v} = [d[i:i + {item.n}] for i in range(off, off + {cnt} * {item.n}, "
                         f"{item.n})]")
            lines.append(f"off += {cnt} * {item.n}")
        else:
            lay = _item_layout(item, self.error)
            size = lay.min_size
            need = f"{{{cnt}}} items need at least {{{cnt} * {size}}} bytes, {{n - off}} left"
            lines.append(f"if n - off < {cnt} * {size}: {bad(fname, need)}")
            dec = ns.const(lay.decode_from, "_dec")
            if isinstance(item, (Int, blob)):
                lines.append(f"{v} = []")
                lines.append(f"for _ in range({cnt}):")
                lines.append(f"    (x,), off = {dec}(d, off)")
                lines.append(f"    {v}.append(x)")
            elif lay.size is not None and lay._flat_plain():
                up = ns.const(lay.struct.iter_unpack, "_iter")  # type: ignore[union-attr]
                items = f"{up}(d[off:off + {cnt} * {lay.size}])"
                if lay.cls is None:
                    lines.append(f"{v} = list({items})")
                else:
                    c = ns.const(lay.cls, "_cls")
                    lines.append(f"{v} = [{c}(*x) for x in {items}]")
                lines.append(f"off += {cnt} * {lay.size}")
            else:
                # the item's decoding inlined in the loop: no call per item
                body, result = lay._gen_decode_body(ns)
                ap = ns.fresh("append")
                lines.append(f"{v} = []")
                lines.append(f"{ap} = {v}.append")
                lines.append(f"for _ in range({cnt}):")
                lines.extend("    " + line for line in body)
                lines.append(f"    {ap}({result})")
        if t.sorted:
            lines.append(f"if not _increasing({v}): "
                         f"{bad(fname, 'not strictly increasing')}")
        if cont:
            lines.append(f"{v} = {cont}({v})")
        elif not (isinstance(item, Int) and item.choices is None and item.enum is None
                  and not item.is_flag):
            lines.append(f"{v} = tuple({v})")

    def _flat_plain(self) -> bool:
        """Only plain integers and raw bytes, built positionally (a tuple, or the class's
        first fields in wire order): items decode straight from iter_unpack."""
        return self.arg_order == self.data_fields and self._positional and not self._unwrap \
            and self.check is None and not self.computed and all(
            n is not None and (isinstance(t, raw) or isinstance(t, Int) and t.choices is None
                               and t.enum is None and not t.is_flag)
            for n, t in self.entries)

    def __repr__(self) -> str:
        return f"<Layout {self.name} {self.size if self.size is not None else 'variable'}>"


def _q(text: str) -> str:
    """``text`` safe inside a generated single-quoted f-string."""
    return text.replace("\\", "\\\\").replace("'", "\\'").replace("{", "{{").replace("}", "}}")


def _takes_rest(t: FieldType) -> bool:
    """``t`` reads to the end of the message (rest(), or a layout ending with it)."""
    if isinstance(t, rest):
        return True
    return isinstance(t, Layout) and bool(t.entries) and _takes_rest(t.entries[-1][1])


def _type_size(t: FieldType) -> int | None:
    if isinstance(t, Int):
        return t.size
    if isinstance(t, (pad, raw)):
        return t.n
    if isinstance(t, Const):
        return t.type.size
    if isinstance(t, padded):
        return t.len_type.size + t.size
    if isinstance(t, Layout):
        return t.size
    return None


def _type_min_size(t: FieldType) -> int:
    s = _type_size(t)
    if s is not None:
        return s
    if isinstance(t, blob):
        return t.length.size if isinstance(t.length, Int) else 0
    if isinstance(t, array):
        return t.count.size if isinstance(t.count, Int) else 0
    if isinstance(t, optional):
        return t.layout.size or 0
    if isinstance(t, Layout):
        return t.min_size
    return 0


_ITEM_LAYOUTS: dict[tuple[Any, type[Exception]], Layout] = {}


def _item_layout(item: Layout | Int | raw | blob, error: type[Exception]) -> Layout:
    """A Layout for an array item; a bare Int or blob becomes a one-field tuple layout."""
    if isinstance(item, Layout):
        return item
    key = (item, error)  # the key keeps the item alive: no identity reused
    lay = _ITEM_LAYOUTS.get(key)
    if lay is None:
        lay = _ItemLayout(item, error)
        _ITEM_LAYOUTS[key] = lay
    return lay


class _ItemLayout(Layout):
    """An array item that is one value: encodes the value itself, decodes to ``(value,)``."""

    def __init__(self, item: Any, error: type[Exception]) -> None:
        super().__init__(None, "item", ("item", item), error=error)
        self._unwrap = True  # only read by array decoders, which inline this layout

    def _item_access(self, obj: str) -> Callable[[str], str]:
        # encode(v) takes the value itself, not a one-element tuple
        return lambda n: obj
