"""CKPT client IPC layouts and value types, declared once; shared by ``saf.ckpt`` and
``ais.services.ckpt``.

Conventions (as in ``saf/_wire.py``): every fixed part is a module-level
``struct.Struct`` in network order with its byte layout drawn above it;
each message has an ``encode_x`` / ``decode_x_untrusted`` pair; decoded
messages are frozen dataclasses; ``*_untrusted`` functions raise only
``saf.errors.IpcProtocolError``.  Variable parts (names, section ids, data)
follow their fixed part, with their lengths given in it.

One connection per library handle carries every CKPT request (service id
CKPT = 3).  Requests about an open checkpoint start with the checkpoint
handle (``HANDLE``, u32, chosen by the executive); the executive forwards
the rest of such a body unchanged in its ring message, with the
checkpoint's cluster-wide id (``CKPT_ID``) in place of the handle.  So the
bodies below are the part *after* the handle or id.  The ids 4
(CKPT_CHECKPOINT) and 5 (CKPT_SECTIONITERATOR) of the 2004 handshake are
reserved: checkpoint and iterator handles live inside the CKPT connection.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from saf.errors import IpcProtocolError
from saf.types import SA_MAX_NAME_LENGTH, SA_TIME_END

CKPT_SERVICE_ID = 3
CKPT_CHECKPOINT_SERVICE_ID = 4  #: reserved (2004 handshake id); unused
CKPT_SECTIONITERATOR_SERVICE_ID = 5  #: reserved (2004 handshake id); unused

# --- SAF constants (A.01.01 ais_ckpt.h; CREATE as noted) ----------------------------

# SaCkptCheckpointCreationFlagsT: exactly one of these
SA_CKPT_WR_ALL_REPLICAS = 0x1
SA_CKPT_WR_ACTIVE_REPLICA = 0x2
SA_CKPT_WR_ACTIVE_REPLICA_WEAK = 0x4
CREATION_FLAGS = (SA_CKPT_WR_ALL_REPLICAS, SA_CKPT_WR_ACTIVE_REPLICA,
                  SA_CKPT_WR_ACTIVE_REPLICA_WEAK)

# SaCkptCheckpointOpenFlagsT (bit mask).  A.01.01 has READ, WRITE, COLLOCATED
# and creates the checkpoint whenever creation attributes are given; CREATE
# (from the later specs, where its value 0x4 is A.01.01's COLLOCATED) is
# accepted here as 0x8 and then requires attributes.
SA_CKPT_CHECKPOINT_READ = 0x1
SA_CKPT_CHECKPOINT_WRITE = 0x2
SA_CKPT_CHECKPOINT_COLLOCATED = 0x4
SA_CKPT_CHECKPOINT_CREATE = 0x8
OPEN_FLAGS_MASK = 0xF

# SaCkptSectionsChosenT (iterator filters)
SA_CKPT_SECTIONS_FOREVER = 1
SA_CKPT_SECTIONS_LEQ_EXPIRATION_TIME = 2
SA_CKPT_SECTIONS_GEQ_EXPIRATION_TIME = 3
SA_CKPT_SECTIONS_CORRUPTED = 4
SA_CKPT_SECTIONS_ANY = 5
SECTION_FILTERS = range(1, 6)

# SaCkptSectionStateT
SA_CKPT_SECTION_VALID = 1
SA_CKPT_SECTION_CORRUPTED = 2

#: the default section's id (exists when maxSections == 1)
SA_CKPT_DEFAULT_SECTION_ID = b""

#: largest section, and largest total of one write or read call: one IPC frame
#: must carry it (saf._wire.MAX_FRAME is 8 MiB), with room for headers
MAX_IO_BYTES = 7 * 1024 * 1024
#: largest section id
MAX_SECTION_ID = 0xFFFF
#: read ``size`` meaning "up to the end of the section"
READ_ALL = 0xFFFFFFFF

# --- request and callback ids -------------------------------------------------------

REQ_OPEN = 1
REQ_OPEN_ASYNC = 2
REQ_CLOSE = 3
REQ_UNLINK = 4
REQ_RETENTION_SET = 5
REQ_ACTIVE_SET = 6
REQ_STATUS_GET = 7
REQ_SECTION_CREATE = 8
REQ_SECTION_DELETE = 9
REQ_SECTION_EXPIRATION_SET = 10
REQ_ITER_INIT = 11
REQ_ITER_NEXT = 12
REQ_ITER_FINALIZE = 13
REQ_WRITE = 14
REQ_OVERWRITE = 15
REQ_READ = 16
REQ_SYNCHRONIZE = 17
REQ_SYNCHRONIZE_ASYNC = 18

CB_OPEN = 1
CB_SYNCHRONIZE = 2


# --- value types ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreationAttributes:
    """SaCkptCheckpointCreationAttributesT (sizes in bytes, times SaTimeT ns)."""

    creation_flags: int = SA_CKPT_WR_ALL_REPLICAS
    checkpoint_size: int = 0
    retention_duration: int = SA_TIME_END
    max_sections: int = 1
    max_section_size: int = 0
    max_section_id_size: int = 0


@dataclass(frozen=True, slots=True)
class CheckpointStatus:
    """SaCkptCheckpointStatusT."""

    checkpoint_creation_attributes: CreationAttributes
    number_of_sections: int
    memory_used: int


@dataclass(frozen=True, slots=True)
class SectionDescriptor:
    """SaCkptSectionDescriptorT."""

    section_id: bytes
    expiration_time: int
    section_size: int
    section_state: int
    last_update: int


@dataclass(frozen=True, slots=True)
class IOVector:
    """SaCkptIOVectorElementT.

    For writes: ``data`` goes to ``section_id`` at ``offset``.  For reads:
    up to ``size`` bytes from ``offset`` (None: to the end of the section).
    """

    section_id: bytes = SA_CKPT_DEFAULT_SECTION_ID
    data: bytes = b""
    offset: int = 0
    size: int | None = None


# --- a bounds-checked reader for untrusted bodies ----------------------------------------


class Reader:
    """Walks an untrusted body; every shortfall raises IpcProtocolError."""

    __slots__ = ("data", "off", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.off = 0
        self.what = what

    def take(self, layout: struct.Struct) -> tuple:
        if len(self.data) - self.off < layout.size:
            raise IpcProtocolError(f"{self.what}: truncated at byte {self.off}")
        vals = layout.unpack_from(self.data, self.off)
        self.off += layout.size
        return vals

    def raw(self, n: int) -> bytes:
        if n < 0 or len(self.data) - self.off < n:
            raise IpcProtocolError(f"{self.what}: {n} bytes announced, "
                                   f"{len(self.data) - self.off} left")
        out = bytes(self.data[self.off:self.off + n])
        self.off += n
        return out

    def rest(self) -> bytes:
        out = bytes(self.data[self.off:])
        self.off = len(self.data)
        return out

    def end(self) -> None:
        if self.off != len(self.data):
            raise IpcProtocolError(f"{self.what}: {len(self.data) - self.off} trailing bytes")


def _pack(layout: struct.Struct, *vals: object) -> bytes:
    try:
        return layout.pack(*vals)
    except struct.error as exc:
        # Values come from the program using the library: a range error is its bug.
        raise ValueError(f"field out of range: {exc}") from None


# --- prefixes ---------------------------------------------------------------------------

# Checkpoint handle, first in requests about an open checkpoint (4 bytes): | handle u32 |
HANDLE = struct.Struct("!I")

# Cluster-wide checkpoint id (16 bytes), first in ring messages about a checkpoint:
#  0                 8           12          16
#  | ring seq u64    | ring rep  | counter   |
#  the ring in which the creating OPEN was delivered, and how many checkpoints
#  that ring had created before it: unique across partitions and restarts.
CKPT_ID = struct.Struct("!QII")

CkptId = tuple[int, int, int]


def split_handle_untrusted(body: bytes) -> tuple[int, bytes]:
    """(checkpoint handle, the rest) of a request body."""
    r = Reader(body, "checkpoint request")
    (handle,) = r.take(HANDLE)
    return handle, r.rest()


def split_ckpt_id_untrusted(body: bytes) -> tuple[CkptId, bytes]:
    """(checkpoint id, the rest) of a ring payload."""
    r = Reader(body, "checkpoint message")
    return r.take(CKPT_ID), r.rest()


# --- creation attributes ------------------------------------------------------------------

# SaCkptCheckpointCreationAttributesT (36 bytes):
#  0       4                 12                  20        24                  32
#  | flags | checkpoint_size | retention (i64)   | max_sec | max_section_size  | max_id_size |
CREATION_ATTRS = struct.Struct("!IQqIQI")


def encode_attrs(a: CreationAttributes) -> bytes:
    return _pack(CREATION_ATTRS, a.creation_flags, a.checkpoint_size, a.retention_duration,
                 a.max_sections, a.max_section_size, a.max_section_id_size)


def _read_attrs(r: Reader) -> CreationAttributes:
    return CreationAttributes(*r.take(CREATION_ATTRS))


# --- OPEN / OPEN_ASYNC ------------------------------------------------------------------------

# OPEN request (22 bytes), then CREATION_ATTRS (zero when has_attrs is 0), then the name:
#  0             8       12          13         14
#  | invocation  | flags | has_attrs | is_async | timeout i64 (ns) |
OPEN_REQ = struct.Struct("!QIBBq")


@dataclass(frozen=True, slots=True)
class OpenReq:
    name: bytes
    flags: int
    attributes: CreationAttributes | None
    timeout: int = SA_TIME_END
    invocation: int = 0
    is_async: bool = False


def encode_open(req: OpenReq) -> bytes:
    attrs = req.attributes or CreationAttributes(0, 0, 0, 0, 0, 0)
    return (_pack(OPEN_REQ, req.invocation, req.flags, req.attributes is not None,
                  req.is_async, req.timeout) + encode_attrs(attrs) + req.name)


def decode_open_untrusted(body: bytes) -> OpenReq:
    r = Reader(body, "OPEN")
    invocation, flags, has_attrs, is_async, timeout = r.take(OPEN_REQ)
    attrs = _read_attrs(r)
    name = r.rest()
    if has_attrs > 1 or is_async > 1:
        raise IpcProtocolError("OPEN: flag byte out of range")
    if len(name) > SA_MAX_NAME_LENGTH + 1:
        # One byte over is let through so the service answers NAME_TOO_LONG.
        raise IpcProtocolError("OPEN: name too long for the wire")
    return OpenReq(name, flags, attrs if has_attrs else None, timeout, invocation,
                   bool(is_async))


# OPEN reply (4 bytes): | checkpoint handle u32 |  (= HANDLE)
# OPEN callback (12 bytes): | invocation u64 | handle u32 |  (error in the frame header)
OPEN_CB = struct.Struct("!QI")


def encode_open_callback(invocation: int, handle: int) -> bytes:
    return OPEN_CB.pack(invocation, handle)


def decode_open_callback_untrusted(body: bytes) -> tuple[int, int]:
    r = Reader(body, "OPEN callback")
    inv, handle = r.take(OPEN_CB)
    r.end()
    return inv, handle


def decode_handle_untrusted(body: bytes) -> int:
    r = Reader(body, "handle")
    (h,) = r.take(HANDLE)
    r.end()
    return h


# --- UNLINK: the body is the name --------------------------------------------------------------


def decode_name_untrusted(body: bytes) -> bytes:
    if len(body) > SA_MAX_NAME_LENGTH + 1:
        raise IpcProtocolError("name too long for the wire")
    return bytes(body)


# --- RETENTION_SET (after the handle) (8 bytes): | duration i64 (ns) | --------------------------
RETENTION_REQ = struct.Struct("!q")


def encode_retention(duration: int) -> bytes:
    return _pack(RETENTION_REQ, duration)


def decode_retention_untrusted(body: bytes) -> int:
    r = Reader(body, "RETENTION_SET")
    (d,) = r.take(RETENTION_REQ)
    r.end()
    return d


# --- STATUS_GET reply (48 bytes): CREATION_ATTRS | sections u32 | memory_used u64 | --------------
STATUS_TAIL = struct.Struct("!IQ")


def encode_status(st: CheckpointStatus) -> bytes:
    return encode_attrs(st.checkpoint_creation_attributes) + \
        _pack(STATUS_TAIL, st.number_of_sections, st.memory_used)


def decode_status_untrusted(body: bytes) -> CheckpointStatus:
    r = Reader(body, "status")
    attrs = _read_attrs(r)
    n, used = r.take(STATUS_TAIL)
    r.end()
    return CheckpointStatus(attrs, n, used)


# --- SECTION_CREATE (after the handle), then the section id, then the initial data: ----------
#  0                 8                   16             24
#  | expiration i64  | remaining i64     | now i64      | id_len u16 |
#  expiration: absolute SaTimeT (SA_TIME_END: never); remaining: expiration
#  minus the client's clock when it asked (what the executive's timers use);
#  now: the client's clock, recorded as the section's lastUpdate
SECTION_CREATE_REQ = struct.Struct("!qqqH")


@dataclass(frozen=True, slots=True)
class SectionCreateReq:
    section_id: bytes
    expiration: int
    remaining: int
    now: int
    data: bytes


def encode_section_create(req: SectionCreateReq) -> bytes:
    return _pack(SECTION_CREATE_REQ, req.expiration, req.remaining, req.now,
                 len(req.section_id)) + req.section_id + req.data


def decode_section_create_untrusted(body: bytes) -> SectionCreateReq:
    r = Reader(body, "SECTION_CREATE")
    exp, rem, now, n = r.take(SECTION_CREATE_REQ)
    sid = r.raw(n)
    return SectionCreateReq(sid, exp, rem, now, r.rest())


# --- SECTION_DELETE (after the handle): the section id -----------------------------------------

# --- SECTION_EXPIRATION_SET (after the handle), then the section id (16 bytes):
#  | expiration i64 | remaining i64 |
SECTION_EXP_REQ = struct.Struct("!qq")


def encode_section_expiration(section_id: bytes, expiration: int, remaining: int) -> bytes:
    return _pack(SECTION_EXP_REQ, expiration, remaining) + section_id


def decode_section_expiration_untrusted(body: bytes) -> tuple[bytes, int, int]:
    r = Reader(body, "SECTION_EXPIRATION_SET")
    exp, rem = r.take(SECTION_EXP_REQ)
    return r.rest(), exp, rem


# --- ITER_INIT (after the handle) (12 bytes): | filter u32 | expiration i64 | ------------------
ITER_INIT_REQ = struct.Struct("!Iq")
# ITER_INIT reply, ITER_NEXT and ITER_FINALIZE requests (4 bytes): | iterator id u32 |
ITER_ID = struct.Struct("!I")


def encode_iter_init(filt: int, expiration: int) -> bytes:
    return _pack(ITER_INIT_REQ, filt, expiration)


def decode_iter_init_untrusted(body: bytes) -> tuple[int, int]:
    r = Reader(body, "ITER_INIT")
    vals = r.take(ITER_INIT_REQ)
    r.end()
    return vals


def encode_iter_id(iter_id: int) -> bytes:
    return ITER_ID.pack(iter_id)


def decode_iter_id_untrusted(body: bytes) -> int:
    r = Reader(body, "iterator id")
    (i,) = r.take(ITER_ID)
    r.end()
    return i


# ITER_NEXT reply (5 bytes), then count x (SECTION_DESC, id):
#  | done u8 (no more after these) | count u32 |
ITER_NEXT_RES = struct.Struct("!BI")
#  0          2                  10             18      19
#  | id_len   | expiration i64   | size u64     | state | last_update i64 |
SECTION_DESC = struct.Struct("!HqQBq")


def encode_iter_next_reply(done: bool, descs: list[SectionDescriptor]) -> bytes:
    parts = [ITER_NEXT_RES.pack(done, len(descs))]
    for d in descs:
        parts.append(SECTION_DESC.pack(len(d.section_id), d.expiration_time, d.section_size,
                                       d.section_state, d.last_update))
        parts.append(d.section_id)
    return b"".join(parts)


def decode_iter_next_reply_untrusted(body: bytes) -> tuple[bool, list[SectionDescriptor]]:
    r = Reader(body, "ITER_NEXT reply")
    done, count = r.take(ITER_NEXT_RES)
    out = []
    for _ in range(count):
        n, exp, size, state, last = r.take(SECTION_DESC)
        out.append(SectionDescriptor(r.raw(n), exp, size, state, last))
    r.end()
    return bool(done), out


# --- WRITE (after the handle) (12 bytes), then count x (IOVEC, id, data):
#  | now i64 (client clock: lastUpdate) | count u32 |
WRITE_REQ = struct.Struct("!qI")
#  one vector (14 bytes): | id_len u16 | offset u64 | data_len u32 |   (READ: data_len is the size)
IOVEC = struct.Struct("!HQI")


@dataclass(frozen=True, slots=True)
class WriteReq:
    now: int
    vectors: tuple[tuple[bytes, int, bytes], ...]  #: (section id, offset, data)


def encode_write(req: WriteReq) -> bytes:
    parts = [_pack(WRITE_REQ, req.now, len(req.vectors))]
    for sid, off, data in req.vectors:
        parts.append(_pack(IOVEC, len(sid), off, len(data)))
        parts.append(sid)
        parts.append(data)
    return b"".join(parts)


def decode_write_untrusted(body: bytes) -> WriteReq:
    r = Reader(body, "WRITE")
    now, count = r.take(WRITE_REQ)
    vecs = []
    for _ in range(count):
        n, off, size = r.take(IOVEC)
        sid = r.raw(n)
        vecs.append((sid, off, r.raw(size)))
    r.end()
    return WriteReq(now, tuple(vecs))


# --- OVERWRITE (after the handle) (10 bytes), then the id, then the data:
#  | now i64 | id_len u16 |
OVERWRITE_REQ = struct.Struct("!qH")


def encode_overwrite(now: int, section_id: bytes, data: bytes) -> bytes:
    return _pack(OVERWRITE_REQ, now, len(section_id)) + section_id + data


def decode_overwrite_untrusted(body: bytes) -> tuple[int, bytes, bytes]:
    r = Reader(body, "OVERWRITE")
    now, n = r.take(OVERWRITE_REQ)
    sid = r.raw(n)
    return now, sid, r.rest()


# --- READ (after the handle) (4 bytes), then count x (IOVEC, id): | count u32 | -----------------
READ_REQ = struct.Struct("!I")


def encode_read(vectors: list[tuple[bytes, int, int]]) -> bytes:
    parts = [_pack(READ_REQ, len(vectors))]
    for sid, off, size in vectors:
        parts.append(_pack(IOVEC, len(sid), off, size))
        parts.append(sid)
    return b"".join(parts)


def decode_read_untrusted(body: bytes) -> list[tuple[bytes, int, int]]:
    r = Reader(body, "READ")
    (count,) = r.take(READ_REQ)
    out = []
    for _ in range(count):
        n, off, size = r.take(IOVEC)
        out.append((r.raw(n), off, size))
    r.end()
    return out


# WRITE and READ replies start with the outcome (8 bytes), since a failing
# call must also say which vector failed (the frame's error stays SA_OK):
#  | error i32 (SaErrorT, SA_OK = 1) | index u32 (the failing vector) |
# READ then adds | count u32 | and count x (| len u32 | data |).
IO_STATUS = struct.Struct("!iI")
READ_COUNT = struct.Struct("!I")
READ_ITEM = struct.Struct("!I")


def encode_io_status(error: int, index: int) -> bytes:
    return IO_STATUS.pack(error, index)


def decode_write_reply_untrusted(body: bytes) -> tuple[int, int]:
    r = Reader(body, "WRITE reply")
    vals = r.take(IO_STATUS)
    r.end()
    return vals


def encode_read_reply(error: int, index: int, datas: list[bytes]) -> bytes:
    parts = [IO_STATUS.pack(error, index), READ_COUNT.pack(len(datas))]
    for d in datas:
        parts.append(READ_ITEM.pack(len(d)))
        parts.append(d)
    return b"".join(parts)


def decode_read_reply_untrusted(body: bytes) -> tuple[int, int, list[bytes]]:
    r = Reader(body, "READ reply")
    err, idx = r.take(IO_STATUS)
    (count,) = r.take(READ_COUNT)
    out = []
    for _ in range(count):
        (n,) = r.take(READ_ITEM)
        out.append(r.raw(n))
    r.end()
    return err, idx, out


# --- SYNCHRONIZE / SYNCHRONIZE_ASYNC (after the handle) (17 bytes):
#  | invocation u64 | is_async u8 | timeout i64 |
SYNC_REQ = struct.Struct("!QBq")
# SYNCHRONIZE callback (8 bytes): | invocation u64 |  (error in the frame header)
SYNC_CB = struct.Struct("!Q")


def encode_synchronize(invocation: int, is_async: bool, timeout: int) -> bytes:
    return _pack(SYNC_REQ, invocation, is_async, timeout)


def decode_synchronize_untrusted(body: bytes) -> tuple[int, bool, int]:
    r = Reader(body, "SYNCHRONIZE")
    inv, is_async, timeout = r.take(SYNC_REQ)
    r.end()
    if is_async > 1:
        raise IpcProtocolError("SYNCHRONIZE: flag byte out of range")
    return inv, bool(is_async), timeout


def encode_sync_callback(invocation: int) -> bytes:
    return SYNC_CB.pack(invocation)


def decode_sync_callback_untrusted(body: bytes) -> int:
    r = Reader(body, "SYNCHRONIZE callback")
    (inv,) = r.take(SYNC_CB)
    r.end()
    return inv


__all__ = [n for n in dir() if n.isupper() or n in (
    "CheckpointStatus", "CkptId", "CreationAttributes", "IOVector", "OpenReq", "Reader",
    "SectionCreateReq", "SectionDescriptor", "WriteReq")] + [
    n for n in dir() if n.startswith(("encode_", "decode_", "split_"))]
