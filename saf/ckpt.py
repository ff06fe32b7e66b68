"""SAF AIS CKPT (checkpoint service) client library, A.01.01.

Mapping from the C API to this module (``h`` a library handle, ``c`` a
checkpoint handle, ``it`` a section iterator):

=========================================  =====================================================
C                                          Python
=========================================  =====================================================
saCkptInitialize(&h, &cb, &ver)            ``h = saf.ckpt.initialize(callbacks=cb, version=ver)``
saCkptSelectionObjectGet(h, &fd)           ``fd = h.selection_object()``
saCkptDispatch(h, flags)                   ``h.dispatch(flags)``
saCkptFinalize(h)                          ``h.finalize()`` (or leave ``with h:``); closes its
                                           checkpoints
saCkptCheckpointOpen(h, name, attrs,       ``c = h.checkpoint_open(name, flags, attributes=None,
  flags, timeout, &c)                      timeout=SA_TIME_END)``
saCkptCheckpointOpenAsync(h, inv, name,    ``h.checkpoint_open_async(invocation, name, flags,
  attrs, flags)                            attributes=None)`` -> ``checkpoint_open_callback``
saCkptCheckpointClose(c)                   ``c.close()`` (or leave ``with c:``)
saCkptCheckpointUnlink(h, name)            ``h.checkpoint_unlink(name)``
saCkptCheckpointRetentionDurationSet(c,t)  ``c.retention_duration_set(t)``
saCkptActiveCheckpointSet(c)               ``c.active_checkpoint_set()``
saCkptCheckpointStatusGet(c, &st)          ``st = c.status_get()`` -> ``CheckpointStatus``
saCkptSectionCreate(c, &attrs, data, n)    ``c.section_create(section_id, initial_data=b"",
                                           expiration_time=SA_TIME_END)``
saCkptSectionDelete(c, id)                 ``c.section_delete(section_id)``
saCkptSectionExpirationTimeSet(c, id, t)   ``c.section_expiration_time_set(section_id, t)``
saCkptSectionIteratorInitialize(c, chosen, ``it = c.section_iterator_initialize(chosen,
  t, &it)                                  expiration_time=0)``; also ``c.sections(...)``
saCkptSectionIteratorNext(it, &desc)       ``desc = it.next()`` (NotExist at the end), or
                                           ``for desc in it:``
saCkptSectionIteratorFinalize(it)          ``it.finalize()`` (or leave ``with it:``)
saCkptCheckpointWrite(c, vec, n, &idx)     ``c.write([IOVector(id, data, offset), ...])``; a
                                           failure raises with ``.erroneous_vector_index``
saCkptSectionOverwrite(c, id, data, n)     ``c.section_overwrite(section_id, data)``
saCkptCheckpointRead(c, vec, n, &idx)      ``datas = c.read([IOVector(id, offset=o, size=n),
                                           ...])`` -> list of bytes (readSize = len);
                                           a failure raises with ``.erroneous_vector_index``
saCkptCheckpointSynchronize(c, timeout)    ``c.synchronize(timeout=SA_TIME_END)``
saCkptCheckpointSynchronizeAsync(h, inv,   ``c.synchronize_async(invocation)`` ->
  c)                                       ``checkpoint_synchronize_callback``
SaCkptCallbacksT                           ``saf.ckpt.Callbacks(checkpoint_open_callback=...,
                                           checkpoint_synchronize_callback=...)``
SaCkptCheckpointCreationAttributesT        ``saf.ckpt.CreationAttributes``
SaCkptCheckpointStatusT                    ``saf.ckpt.CheckpointStatus``
SaCkptSectionDescriptorT                   ``saf.ckpt.SectionDescriptor``
SaCkptIOVectorElementT                     ``saf.ckpt.IOVector``
SaErrorT != SA_OK                          raised as ``saf.errors.<Name>`` (``.code``)
=========================================  =====================================================

Callbacks keep the C argument order: ``checkpoint_open_callback(invocation,
checkpoint_handle, error)`` (``checkpoint_handle`` None unless ``error`` is
SA_OK) and ``checkpoint_synchronize_callback(invocation, error)``.

Names are ``str`` (UTF-8) or ``bytes``, at most 256 bytes; section ids are
``bytes``; the default section is ``SA_CKPT_DEFAULT_SECTION_ID`` (``b""``),
present when ``max_sections`` is 1.  Times are SaTimeT nanoseconds: retention
durations are relative, expiration times absolute (``time.time_ns()`` scale,
``SA_TIME_END`` never).  Open flags: ``SA_CKPT_CHECKPOINT_READ``, ``_WRITE``,
``_COLLOCATED`` (accepted; every node holds a replica) and ``_CREATE``
(requires attributes).  As in A.01.01, giving attributes also creates the
checkpoint when it does not exist; opening an existing one with other
attributes raises Exist.

Every call returns after the executive applied it in the cluster's agreed
order, so another process on any node that asks afterwards sees its effect.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Iterable, Iterator

from saf import _ckpt_wire as cw
from saf import _conn
from saf._ckpt_wire import (  # noqa: F401  (re-exported SAF names)
    MAX_IO_BYTES, SA_CKPT_CHECKPOINT_COLLOCATED, SA_CKPT_CHECKPOINT_CREATE,
    SA_CKPT_CHECKPOINT_READ, SA_CKPT_CHECKPOINT_WRITE, SA_CKPT_DEFAULT_SECTION_ID,
    SA_CKPT_SECTION_CORRUPTED, SA_CKPT_SECTION_VALID, SA_CKPT_SECTIONS_ANY,
    SA_CKPT_SECTIONS_CORRUPTED, SA_CKPT_SECTIONS_FOREVER, SA_CKPT_SECTIONS_GEQ_EXPIRATION_TIME,
    SA_CKPT_SECTIONS_LEQ_EXPIRATION_TIME, SA_CKPT_WR_ACTIVE_REPLICA,
    SA_CKPT_WR_ACTIVE_REPLICA_WEAK, SA_CKPT_WR_ALL_REPLICAS, CheckpointStatus,
    CreationAttributes, IOVector, SectionDescriptor,
)
from saf._conn import REQUEST_GUARD, Connection, on_callback
from saf.errors import SA_OK, BadHandle, InvalidParam, Library, NameTooLong, NotExist, SaError
from saf.types import SA_MAX_NAME_LENGTH, SA_TIME_END, Version

OpenCallback = Callable[[int, "CheckpointHandle | None", int], None]
SynchronizeCallback = Callable[[int, int], None]

#: the version this library implements
DEFAULT_VERSION = Version("A", 1, 1)


@dataclass(frozen=True)
class Callbacks:
    """SaCkptCallbacksT; None means "no such callback" (the message is dropped)."""

    checkpoint_open_callback: OpenCallback | None = None
    checkpoint_synchronize_callback: SynchronizeCallback | None = None


def _name(name: str | bytes) -> bytes:
    raw = name.encode() if isinstance(name, str) else bytes(name)
    if len(raw) > SA_MAX_NAME_LENGTH:
        raise NameTooLong(f"checkpoint name of {len(raw)} bytes")
    if not raw:
        raise InvalidParam("empty checkpoint name")
    return raw


def _remaining(expiration: int) -> int:
    return SA_TIME_END if expiration >= SA_TIME_END else expiration - time.time_ns()


_encode = _conn.encode
_guard = _conn.timeout_guard


def _io_error(code: int, index: int) -> SaError:
    try:
        err = SaError.from_code(code, f"IO vector {index}")
    except ValueError:
        err = Library(f"unknown error code {code}")
    err.erroneous_vector_index = index  # type: ignore[attr-defined]
    return err


class CkptHandle(Connection):
    """An initialized CKPT library handle (SaCkptHandleT)."""

    service_id = cw.CKPT_SERVICE_ID

    def __init__(self, callbacks: Callbacks | None) -> None:
        super().__init__()
        self.callbacks = callbacks or Callbacks()
        self._async_opens: dict[int, tuple[bytes, int]] = {}
        self._checkpoints: dict[int, CheckpointHandle] = {}

    def checkpoint_open(self, name: str | bytes, flags: int,
                        attributes: CreationAttributes | None = None,
                        timeout: int = SA_TIME_END) -> CheckpointHandle:
        """Open (and with ``attributes``, create if absent) the checkpoint ``name``.

        Args:
            flags: SA_CKPT_CHECKPOINT_READ | _WRITE | _COLLOCATED | _CREATE.
            attributes: creation attributes; must equal an existing checkpoint's.
            timeout: SaTimeT ns to wait for the cluster (<= 0 or SA_TIME_END: no limit).

        Raises:
            NotExist, Exist, InvalidParam, BadFlags, NameTooLong, Timeout,
            TryAgain, BadHandle, Library.
        """
        raw = _name(name)
        body = _encode(cw.encode_open, cw.OpenReq(raw, flags, attributes, timeout))
        handle = self.request(cw.REQ_OPEN, body, timeout=_guard(timeout),
                              decode=cw.decode_handle_untrusted)
        return self._new_checkpoint(handle, raw, flags)

    def checkpoint_open_async(self, invocation: int, name: str | bytes, flags: int,
                              attributes: CreationAttributes | None = None) -> None:
        """Like ``checkpoint_open``; the handle comes in ``checkpoint_open_callback``."""
        if self.callbacks.checkpoint_open_callback is None:
            raise InvalidParam("no checkpoint_open_callback was given to initialize")
        raw = _name(name)
        body = _encode(cw.encode_open, cw.OpenReq(raw, flags, attributes, SA_TIME_END,
                                                  invocation, True))
        self._async_opens[invocation] = (raw, flags)
        self.request(cw.REQ_OPEN_ASYNC, body)

    def checkpoint_unlink(self, name: str | bytes) -> None:
        """Remove the name now; the data goes when the last opener closes.

        Raises:
            NotExist: no checkpoint of that name.
        """
        self.request(cw.REQ_UNLINK, _name(name))

    def _new_checkpoint(self, handle: int, name: bytes, flags: int) -> CheckpointHandle:
        ck = CheckpointHandle(self, handle, name, flags)
        self._checkpoints[handle] = ck
        return ck

    @on_callback(cw.CB_OPEN, cw.decode_open_callback_untrusted)
    def _opened(self, cb: tuple[int, int], error: int) -> None:
        inv, handle = cb
        name, flags = self._async_opens.pop(inv, (b"", 0))
        ck = self._new_checkpoint(handle, name, flags) if error == SA_OK else None
        fn = self.callbacks.checkpoint_open_callback
        if fn is not None:
            fn(inv, ck, error)

    @on_callback(cw.CB_SYNCHRONIZE, cw.decode_sync_callback_untrusted)
    def _synchronized(self, inv: int, error: int) -> None:
        fn = self.callbacks.checkpoint_synchronize_callback
        if fn is not None:
            fn(inv, error)

    def finalize(self) -> None:
        """saCkptFinalize: the executive closes every checkpoint this handle opened."""
        super().finalize()
        for ck in self._checkpoints.values():
            ck._closed = True
        self._checkpoints.clear()

    def __enter__(self) -> CkptHandle:
        return self


class CheckpointHandle:
    """An open checkpoint (SaCkptCheckpointHandleT); a context manager that closes it."""

    def __init__(self, owner: CkptHandle, handle: int, name: bytes, flags: int) -> None:
        self._owner = owner
        self.handle = handle
        self.name = name
        self.flags = flags
        self._closed = False

    def __repr__(self) -> str:
        return f"<CheckpointHandle {self.handle} {self.name!r}{' closed' if self._closed else ''}>"

    def _request(self, msg_id: int, rest: bytes = b"", timeout: float | None = REQUEST_GUARD,
                 decode: Callable[[bytes], Any] | None = None) -> Any:
        if self._closed:
            raise BadHandle("checkpoint handle is closed")
        return self._owner.request(msg_id, cw.HANDLE.pack(self.handle) + rest, timeout=timeout,
                                   decode=decode)

    # --- life cycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """saCkptCheckpointClose.  Raises BadHandle when already closed."""
        self._request(cw.REQ_CLOSE)
        self._closed = True
        self._owner._checkpoints.pop(self.handle, None)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> CheckpointHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._closed and not self._owner.finalized:
            self.close()

    def retention_duration_set(self, retention_duration: int) -> None:
        """Set how long (ns) the checkpoint outlives its last close.

        Raises:
            BadOperation: the checkpoint is unlinked.  InvalidParam.
        """
        self._request(cw.REQ_RETENTION_SET, _encode(cw.encode_retention, retention_duration))

    def active_checkpoint_set(self) -> None:
        """Make this node's replica the active one (WR_ACTIVE_REPLICA* checkpoints).

        Raises:
            BadOperation: an SA_CKPT_WR_ALL_REPLICAS checkpoint.  Access: not WRITE.
        """
        self._request(cw.REQ_ACTIVE_SET)

    def status_get(self) -> CheckpointStatus:
        """Creation attributes, number of sections, bytes used."""
        return self._request(cw.REQ_STATUS_GET, decode=cw.decode_status_untrusted)

    # --- sections -------------------------------------------------------------------------------

    def section_create(self, section_id: bytes, initial_data: bytes = b"",
                       expiration_time: int = SA_TIME_END) -> None:
        """Create a section.

        Raises:
            Exist: already there.  NoSpace: maxSections or checkpointSize reached.
            InvalidParam: id longer than maxSectionIdSize, the default id, data
            larger than maxSectionSize.  Access: not opened for writing.
        """
        req = cw.SectionCreateReq(bytes(section_id), expiration_time,
                                  _remaining(expiration_time), time.time_ns(),
                                  bytes(initial_data))
        self._request(cw.REQ_SECTION_CREATE, _encode(cw.encode_section_create, req))

    def section_delete(self, section_id: bytes) -> None:
        """Delete a section.  Raises NotExist; InvalidParam for the default section."""
        self._request(cw.REQ_SECTION_DELETE, bytes(section_id))

    def section_expiration_time_set(self, section_id: bytes, expiration_time: int) -> None:
        """Set a section's absolute expiration time (SA_TIME_END: never)."""
        self._request(cw.REQ_SECTION_EXPIRATION_SET,
                      _encode(cw.encode_section_expiration, bytes(section_id), expiration_time,
                              _remaining(expiration_time)))

    def section_iterator_initialize(self, sections_chosen: int = SA_CKPT_SECTIONS_ANY,
                                    expiration_time: int = 0) -> SectionIterator:
        """An iterator over the sections chosen now (SA_CKPT_SECTIONS_*)."""
        iter_id = self._request(cw.REQ_ITER_INIT,
                                _encode(cw.encode_iter_init, sections_chosen, expiration_time),
                                decode=cw.decode_iter_id_untrusted)
        return SectionIterator(self._owner, iter_id)

    def sections(self, sections_chosen: int = SA_CKPT_SECTIONS_ANY,
                 expiration_time: int = 0) -> SectionIterator:
        """Same as ``section_iterator_initialize``: ``for d in c.sections(): ...``."""
        return self.section_iterator_initialize(sections_chosen, expiration_time)

    # --- data -------------------------------------------------------------------------------------

    def write(self, vectors: IOVector | Iterable[IOVector]) -> None:
        """Write several vectors in one agreed step (all or none are applied).

        Raises:
            NotExist (no such section), InvalidParam (beyond maxSectionSize),
            NoSpace (checkpointSize), Access: each with ``erroneous_vector_index``
            when it concerns one vector.
        """
        vecs = [vectors] if isinstance(vectors, IOVector) else list(vectors)
        req = cw.WriteReq(time.time_ns(), tuple((bytes(v.section_id), v.offset, bytes(v.data))
                                                for v in vecs))
        body = _encode(cw.encode_write, req)
        if len(body) > MAX_IO_BYTES:
            raise InvalidParam(f"one write carries at most {MAX_IO_BYTES} bytes")
        code, index = self._request(cw.REQ_WRITE, body, decode=cw.decode_write_reply_untrusted)
        if code != SA_OK:
            raise _io_error(code, index)

    def section_overwrite(self, section_id: bytes, data: bytes) -> None:
        """Replace a section's whole content."""
        body = _encode(cw.encode_overwrite, time.time_ns(), bytes(section_id), bytes(data))
        if len(body) > MAX_IO_BYTES:
            raise InvalidParam(f"one write carries at most {MAX_IO_BYTES} bytes")
        self._request(cw.REQ_OVERWRITE, body)

    def read(self, vectors: IOVector | Iterable[IOVector]) -> list[bytes]:
        """Read several vectors; ``size`` None reads to the end of the section.

        Returns:
            the bytes read for each vector (its readSize is their length).

        Raises:
            NotExist, InvalidParam, NoSpace (more than one call carries), Access:
            with ``erroneous_vector_index`` when it concerns one vector.
        """
        vecs = [vectors] if isinstance(vectors, IOVector) else list(vectors)
        items = [(bytes(v.section_id), v.offset, cw.READ_ALL if v.size is None else v.size)
                 for v in vecs]
        code, index, datas = self._request(cw.REQ_READ, _encode(cw.encode_read, items),
                                           decode=cw.decode_read_reply_untrusted)
        if code != SA_OK:
            raise _io_error(code, index)
        return datas

    def synchronize(self, timeout: int = SA_TIME_END) -> None:
        """Wait until every replica holds every write made so far.

        Raises:
            BadOperation: an SA_CKPT_WR_ALL_REPLICAS checkpoint.  Access.  Timeout.
        """
        self._request(cw.REQ_SYNCHRONIZE, _encode(cw.encode_synchronize, 0, False, timeout),
                      timeout=_guard(timeout))

    def synchronize_async(self, invocation: int) -> None:
        """Like ``synchronize``; the outcome comes in ``checkpoint_synchronize_callback``."""
        if self._owner.callbacks.checkpoint_synchronize_callback is None:
            raise InvalidParam("no checkpoint_synchronize_callback was given to initialize")
        self._request(cw.REQ_SYNCHRONIZE_ASYNC,
                      _encode(cw.encode_synchronize, invocation, True, SA_TIME_END))


class SectionIterator:
    """A section iterator (SaCkptSectionIterationHandleT); ``for d in it`` or ``it.next()``."""

    def __init__(self, owner: CkptHandle, iter_id: int) -> None:
        self._owner = owner
        self.iter_id = iter_id
        self._buf: list[SectionDescriptor] = []
        self._done = False
        self._finalized = False

    def next(self) -> SectionDescriptor:
        """saCkptSectionIteratorNext.  Raises NotExist after the last section."""
        if self._finalized:
            raise BadHandle("section iterator is finalized")
        while not self._buf:
            if self._done:
                raise NotExist("no more sections")
            done, descs = self._owner.request(cw.REQ_ITER_NEXT, cw.encode_iter_id(self.iter_id),
                                              decode=cw.decode_iter_next_reply_untrusted)
            self._done = done
            self._buf = descs
        return self._buf.pop(0)

    def __iter__(self) -> Iterator[SectionDescriptor]:
        return self

    def __next__(self) -> SectionDescriptor:
        try:
            return self.next()
        except NotExist:
            raise StopIteration from None

    def finalize(self) -> None:
        """saCkptSectionIteratorFinalize."""
        if self._finalized:
            raise BadHandle("section iterator is finalized")
        self._finalized = True
        self._owner.request(cw.REQ_ITER_FINALIZE, cw.encode_iter_id(self.iter_id))

    def __enter__(self) -> SectionIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._finalized and not self._owner.finalized:
            self.finalize()


def initialize(callbacks: Callbacks | None = None,
               version: Version | None = DEFAULT_VERSION) -> CkptHandle:
    """saCkptInitialize: connect to the local executive's CKPT service.

    Raises:
        VersionError: not A.01.01.  TryAgain: no executive.  Security: not allowed.
    """
    return _conn.initialize(CkptHandle, callbacks, version)


__all__ = [
    "Callbacks", "CheckpointHandle", "CheckpointStatus", "CkptHandle", "CreationAttributes",
    "DEFAULT_VERSION", "IOVector", "MAX_IO_BYTES", "SectionDescriptor", "SectionIterator",
    "initialize", "SA_CKPT_CHECKPOINT_COLLOCATED", "SA_CKPT_CHECKPOINT_CREATE",
    "SA_CKPT_CHECKPOINT_READ", "SA_CKPT_CHECKPOINT_WRITE", "SA_CKPT_DEFAULT_SECTION_ID",
    "SA_CKPT_SECTION_CORRUPTED", "SA_CKPT_SECTION_VALID", "SA_CKPT_SECTIONS_ANY",
    "SA_CKPT_SECTIONS_CORRUPTED", "SA_CKPT_SECTIONS_FOREVER",
    "SA_CKPT_SECTIONS_GEQ_EXPIRATION_TIME", "SA_CKPT_SECTIONS_LEQ_EXPIRATION_TIME",
    "SA_CKPT_WR_ACTIVE_REPLICA", "SA_CKPT_WR_ACTIVE_REPLICA_WEAK", "SA_CKPT_WR_ALL_REPLICAS",
    "SA_TIME_END",
]
