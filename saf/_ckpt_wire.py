"""CKPT client IPC layouts and value types, declared once; shared by ``saf.ckpt`` and
``ais.services.ckpt``.

Conventions (as in ``saf/_wire.py``): every layout is declared once with
``saf._codec.Layout``, its bytes drawn above it; each message has an
``encode_x`` / ``decode_x_untrusted`` pair (the generated functions, or thin
wrappers keeping the call shapes the library and the service use); decoded
messages are frozen dataclasses or tuples; ``*_untrusted`` functions raise
only ``saf.errors.IpcProtocolError``; encoders raise ValueError for a value
that does not fit its field.  Variable parts (names, section ids, data)
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

from saf._codec import Layout, array, blob, flag, i32, i64, optional, rest, u8, u16, u32, u64
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


# --- prefixes ---------------------------------------------------------------------------

# Checkpoint handle, first in requests about an open checkpoint (4 bytes): | handle u32 |
HANDLE_LAYOUT = Layout(None, "handle", ("handle", u32))
HANDLE: struct.Struct = HANDLE_LAYOUT.struct  # type: ignore[assignment]

# Cluster-wide checkpoint id (16 bytes), first in ring messages about a checkpoint:
#  0                 8           12          16
#  | ring seq u64    | node      | number    |
#  the ring in which the creating OPEN was delivered, the node that multicast it
#  and that node's number for it (carried in the OPEN): the same on every node
#  that delivers the OPEN, whatever else each one delivered.  (A count of the
#  ring's creations would not be: the sides of a partition deliver different
#  sets of the old ring's last messages.)  A node is in one ring per ring seq.
CKPT_ID_LAYOUT = Layout(None, "checkpoint id", ("ring_seq", u64), ("node", u32),
                        ("number", u32))
CKPT_ID: struct.Struct = CKPT_ID_LAYOUT.struct  # type: ignore[assignment]

CkptId = tuple[int, int, int]

_HANDLE_AND_REST = Layout(None, "checkpoint request", ("handle", u32), ("rest", rest()))
_ID_AND_REST = Layout(None, "checkpoint message", ("ckpt_id", CKPT_ID_LAYOUT), ("rest", rest()))

#: (checkpoint handle, the rest) of a request body
split_handle_untrusted = _HANDLE_AND_REST.decode
#: (checkpoint id, the rest) of a ring payload
split_ckpt_id_untrusted = _ID_AND_REST.decode


def decode_handle_untrusted(body: bytes) -> int:
    return HANDLE_LAYOUT.decode(body)[0]


# --- creation attributes ------------------------------------------------------------------

# SaCkptCheckpointCreationAttributesT (36 bytes):
#  0       4                 12                  20        24                  32
#  | flags | checkpoint_size | retention (i64)   | max_sec | max_section_size  | max_id_size |
ATTRS = Layout(CreationAttributes, "creation attributes", ("creation_flags", u32),
               ("checkpoint_size", u64), ("retention_duration", i64), ("max_sections", u32),
               ("max_section_size", u64), ("max_section_id_size", u32))

encode_attrs = ATTRS.encode


# --- OPEN / OPEN_ASYNC ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenReq:
    name: bytes
    flags: int
    attributes: CreationAttributes | None
    timeout: int = SA_TIME_END
    invocation: int = 0
    is_async: bool = False


# OPEN request (22 bytes), then ATTRS (zero when has_attrs is 0), then the name:
#  0             8       12          13         14                  22
#  | invocation  | flags | has_attrs | is_async | timeout i64 (ns)  | attrs (36) | name ...
#  The name may be one byte over SA_MAX_NAME_LENGTH: the service answers NAME_TOO_LONG.
OPEN_REQ = Layout(OpenReq, "OPEN", ("invocation", u64), ("flags", u32), ("has_attrs", flag),
                  ("is_async", flag), ("timeout", i64),
                  ("attributes", optional(ATTRS, "has_attrs")),
                  ("name", rest(max=SA_MAX_NAME_LENGTH + 1)))

encode_open = OPEN_REQ.encode
decode_open_untrusted = OPEN_REQ.decode

# OPEN reply (4 bytes): | checkpoint handle u32 |  (= HANDLE)
# OPEN callback (12 bytes): | invocation u64 | handle u32 |  (error in the frame header)
OPEN_CB = Layout(None, "OPEN callback", ("invocation", u64), ("handle", u32))

#: (invocation, handle) -> bytes
encode_open_callback = OPEN_CB.pack
#: bytes -> (invocation, handle)
decode_open_callback_untrusted = OPEN_CB.decode


# --- UNLINK: the body is the name --------------------------------------------------------------
_NAME = Layout(None, "name", ("name", rest(max=SA_MAX_NAME_LENGTH + 1)))


def decode_name_untrusted(body: bytes) -> bytes:
    return _NAME.decode(body)[0]


# --- RETENTION_SET (after the handle) (8 bytes): | duration i64 (ns) | --------------------------
RETENTION_REQ = Layout(None, "RETENTION_SET", ("duration", i64))

encode_retention = RETENTION_REQ.pack


def decode_retention_untrusted(body: bytes) -> int:
    return RETENTION_REQ.decode(body)[0]


# --- STATUS_GET reply (48 bytes): ATTRS | sections u32 | memory_used u64 | -----------------------
STATUS = Layout(CheckpointStatus, "status", ("checkpoint_creation_attributes", ATTRS),
                ("number_of_sections", u32), ("memory_used", u64))

encode_status = STATUS.encode
decode_status_untrusted = STATUS.decode


# --- SECTION_CREATE (after the handle), then the section id, then the initial data: ----------
#  0                 8                   16             24
#  | expiration i64  | remaining i64     | now i64      | id_len u16 | id ... | data ... |
#  expiration: absolute SaTimeT (SA_TIME_END: never); remaining: expiration
#  minus the client's clock when it asked (what the executive's timers use);
#  now: the client's clock, recorded as the section's lastUpdate


@dataclass(frozen=True, slots=True)
class SectionCreateReq:
    section_id: bytes
    expiration: int
    remaining: int
    now: int
    data: bytes


SECTION_CREATE_REQ = Layout(SectionCreateReq, "SECTION_CREATE", ("expiration", i64),
                            ("remaining", i64), ("now", i64), ("id_len", u16),
                            ("section_id", blob("id_len")), ("data", rest()))

encode_section_create = SECTION_CREATE_REQ.encode
decode_section_create_untrusted = SECTION_CREATE_REQ.decode


# --- SECTION_DELETE (after the handle): the section id -----------------------------------------

# --- SECTION_EXPIRATION_SET (after the handle) (16 bytes), then the section id:
#  | expiration i64 | remaining i64 | id ... |
SECTION_EXP_REQ = Layout(None, "SECTION_EXPIRATION_SET", ("expiration", i64),
                         ("remaining", i64), ("section_id", rest()))


def encode_section_expiration(section_id: bytes, expiration: int, remaining: int) -> bytes:
    return SECTION_EXP_REQ.pack(expiration, remaining, section_id)


def decode_section_expiration_untrusted(body: bytes) -> tuple[bytes, int, int]:
    """(section id, expiration, remaining)."""
    exp, rem, sid = SECTION_EXP_REQ.decode(body)
    return sid, exp, rem


# --- ITER_INIT (after the handle) (12 bytes): | filter u32 | expiration i64 | ------------------
ITER_INIT_REQ = Layout(None, "ITER_INIT", ("filter", u32), ("expiration", i64))
# ITER_INIT reply, ITER_NEXT and ITER_FINALIZE requests (4 bytes): | iterator id u32 |
ITER_ID = Layout(None, "iterator id", ("iter_id", u32))

#: (filter, expiration) -> bytes, and back
encode_iter_init = ITER_INIT_REQ.pack
decode_iter_init_untrusted = ITER_INIT_REQ.decode
encode_iter_id = ITER_ID.pack


def decode_iter_id_untrusted(body: bytes) -> int:
    return ITER_ID.decode(body)[0]


# ITER_NEXT reply (5 bytes), then count x (SECTION_DESC, id):
#  | done u8 (no more after these) | count u32 |
#  0          2                  10             18      19
#  | id_len   | expiration i64   | size u64     | state | last_update i64 | id ... |
SECTION_DESC = Layout(SectionDescriptor, "section descriptor", ("id_len", u16),
                      ("expiration_time", i64), ("section_size", u64), ("section_state", u8),
                      ("last_update", i64), ("section_id", blob("id_len")))
ITER_NEXT_RES = Layout(None, "ITER_NEXT reply", ("done", flag),
                       ("descs", array(SECTION_DESC, u32, container=list)))

#: (done, [SectionDescriptor]) -> bytes, and back
encode_iter_next_reply = ITER_NEXT_RES.pack
decode_iter_next_reply_untrusted = ITER_NEXT_RES.decode


# --- WRITE (after the handle) (12 bytes), then count x (IOVEC, id, data):
#  | now i64 (client clock: lastUpdate) | count u32 |
#  one vector (14 bytes): | id_len u16 | offset u64 | data_len u32 | id ... | data ... |
#  (READ: data_len is the size, and no data follows)


@dataclass(frozen=True, slots=True)
class WriteReq:
    now: int
    vectors: tuple[tuple[bytes, int, bytes], ...]  #: (section id, offset, data)


WRITE_VEC = Layout(None, "write vector", ("id_len", u16), ("offset", u64),
                   ("data_len", u32), ("section_id", blob("id_len")), ("data", blob("data_len")),
                   order=("section_id", "offset", "data"))
WRITE_REQ = Layout(WriteReq, "WRITE", ("now", i64), ("vectors", array(WRITE_VEC, u32)))

encode_write = WRITE_REQ.encode
decode_write_untrusted = WRITE_REQ.decode


# --- OVERWRITE (after the handle) (10 bytes), then the id, then the data:
#  | now i64 | id_len u16 | id ... | data ... |
OVERWRITE_REQ = Layout(None, "OVERWRITE", ("now", i64), ("id_len", u16),
                       ("section_id", blob("id_len")), ("data", rest()))

#: (now, section id, data) -> bytes, and back
encode_overwrite = OVERWRITE_REQ.pack
decode_overwrite_untrusted = OVERWRITE_REQ.decode


# --- READ (after the handle) (4 bytes), then count x (IOVEC, id): | count u32 | -----------------
READ_VEC = Layout(None, "read vector", ("id_len", u16), ("offset", u64), ("size", u32),
                  ("section_id", blob("id_len")), order=("section_id", "offset", "size"))
READ_REQ = Layout(None, "READ", ("vectors", array(READ_VEC, u32, container=list)))


def encode_read(vectors: list[tuple[bytes, int, int]]) -> bytes:
    """[(section id, offset, size)] -> bytes."""
    return READ_REQ.pack(vectors)


def decode_read_untrusted(body: bytes) -> list[tuple[bytes, int, int]]:
    return READ_REQ.decode(body)[0]


# WRITE and READ replies start with the outcome (8 bytes), since a failing
# call must also say which vector failed (the frame's error stays SA_OK):
#  | error i32 (SaErrorT, SA_OK = 1) | index u32 (the failing vector) |
# READ then adds | count u32 | and count x (| len u32 | data |).
IO_STATUS = Layout(None, "WRITE reply", ("error", i32), ("index", u32))
READ_RES = Layout(None, "READ reply", ("error", i32), ("index", u32),
                  ("datas", array(blob(u32), u32, container=list)))

#: (error, index) -> bytes, and back
encode_io_status = IO_STATUS.pack
decode_write_reply_untrusted = IO_STATUS.decode
#: (error, index, [data]) -> bytes, and back
encode_read_reply = READ_RES.pack
decode_read_reply_untrusted = READ_RES.decode


# --- SYNCHRONIZE / SYNCHRONIZE_ASYNC (after the handle) (17 bytes):
#  | invocation u64 | is_async u8 | timeout i64 |
SYNC_REQ = Layout(None, "SYNCHRONIZE", ("invocation", u64), ("is_async", flag),
                  ("timeout", i64))
# SYNCHRONIZE callback (8 bytes): | invocation u64 |  (error in the frame header)
SYNC_CB = Layout(None, "SYNCHRONIZE callback", ("invocation", u64))

#: (invocation, is_async, timeout) -> bytes, and back
encode_synchronize = SYNC_REQ.pack
decode_synchronize_untrusted = SYNC_REQ.decode
encode_sync_callback = SYNC_CB.pack


def decode_sync_callback_untrusted(body: bytes) -> int:
    return SYNC_CB.decode(body)[0]


__all__ = [n for n in dir() if n.isupper() or n in (
    "CheckpointStatus", "CkptId", "CreationAttributes", "IOVector", "OpenReq",
    "SectionCreateReq", "SectionDescriptor", "WriteReq")] + [
    n for n in dir() if n.startswith(("encode_", "decode_", "split_"))]
