"""SAF AIS CLM (cluster membership) client library, A.01.01.

Mapping from the C API (spec/clm.md section 3) to this module:

=================================  ================================================
C                                  Python
=================================  ================================================
saClmInitialize(&h, &cb, &ver)     ``h = saf.clm.initialize(callbacks=cb, version=ver)``
saClmSelectionObjectGet(h, &fd)    ``fd = h.selection_object()``
saClmDispatch(h, flags)            ``h.dispatch(flags)``
saClmFinalize(h)                   ``h.finalize()`` (or leave a ``with h:`` block)
saClmClusterTrackStart(h, f,       ``h.cluster_track_start(flags, number_of_items=None)``
  buf, n)
saClmClusterTrackStop(h)           ``h.cluster_track_stop()``
saClmClusterNodeGet(id, t, &node)  ``node = saf.clm.cluster_node_get(node_id, timeout)``
saClmClusterNodeGetAsync(h, inv,   ``h.cluster_node_get_async(invocation, node_id)``
  id, &node)
SaClmCallbacksT                    ``saf.clm.Callbacks(cluster_node_get_callback=...,
                                   cluster_track_callback=...)``
SaClmClusterNodeT                  ``saf.types.ClusterNode``
SaClmClusterNotificationT          ``saf.types.ClusterNotification``
SaErrorT != SA_OK                  raised as ``saf.errors.<Name>`` (``.code`` is the value)
=================================  ================================================

Callbacks keep the C argument order, with Python values:

* ``cluster_node_get_callback(invocation, cluster_node, error)``: ``cluster_node``
  is None when ``error`` (an SaErrorT int) is not SA_OK, e.g. SA_ERR_NOT_EXIST
  for a node that is not a member.
* ``cluster_track_callback(notification_buffer, number_of_items,
  number_of_members, view_number, error)``: ``notification_buffer`` is a list
  of ``ClusterNotification``.  When it would hold more than the
  ``number_of_items`` given to ``cluster_track_start``, the callback gets an
  empty list, ``number_of_items`` = the count needed, and
  ``error`` = SA_ERR_NO_SPACE.

Node ids are SAF nodeIds (``saf.types.node_id_of_address``); 0 is
``SA_CLM_LOCAL_NODE_ID``.  Times are SaTimeT nanoseconds.
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable

from saf import _clm_wire as cw
from saf import _conn
from saf._conn import Connection, on_callback, one_shot
from saf.errors import SA_OK, InvalidParam, NoSpace
from saf.types import SA_TIME_END, ClusterNode, ClusterNotification, Version

NodeGetCallback = Callable[[int, ClusterNode | None, int], None]
TrackCallback = Callable[[list[ClusterNotification], int, int, int, int], None]

#: the version this library implements
DEFAULT_VERSION = Version("A", 1, 1)


@dataclass(frozen=True)
class Callbacks:
    """SaClmCallbacksT; None means "no such callback" (the message is dropped)."""

    cluster_node_get_callback: NodeGetCallback | None = None
    cluster_track_callback: TrackCallback | None = None


class ClmHandle(Connection):
    """An initialized CLM library handle (SaClmHandleT)."""

    service_id = cw.CLM_SERVICE_ID

    def __init__(self, callbacks: Callbacks | None) -> None:
        super().__init__()
        self.callbacks = callbacks or Callbacks()
        self._track_limit = 0

    def cluster_track_start(self, track_flags: int, number_of_items: int | None = None) -> None:
        """Start (or change) membership tracking; results arrive as track callbacks.

        Args:
            track_flags: SA_TRACK_CURRENT and/or one of SA_TRACK_CHANGES,
                SA_TRACK_CHANGES_ONLY.
            number_of_items: the notification buffer's size (None: unlimited).

        Raises:
            BadFlags, InvalidParam, BadHandle, TryAgain, Library.
        """
        if number_of_items is not None and number_of_items < 0:
            raise InvalidParam("number_of_items must be >= 0")
        limit = number_of_items or 0
        self.request(cw.CLM_REQ_TRACK_START, _conn.encode(
            cw.encode_clm_track_start, cw.ClmTrackStart(track_flags, limit)))
        self._track_limit = limit

    def cluster_track_stop(self) -> None:
        """Stop tracking.  Raises NotExist when this handle is not tracking."""
        self.request(cw.CLM_REQ_TRACK_STOP)

    def cluster_node_get_async(self, invocation: int, node_id: int) -> None:
        """Ask for a node record; it arrives in ``cluster_node_get_callback``."""
        self.request(cw.CLM_REQ_NODE_GET_ASYNC, _conn.encode(
            cw.encode_clm_node_get_async, cw.ClmNodeGetAsync(invocation, node_id)))

    @on_callback(cw.CLM_CB_TRACK, cw.decode_clm_track_callback_untrusted)
    def _track(self, cb: cw.ClmTrackCallback, error: int) -> None:
        fn = self.callbacks.cluster_track_callback
        if fn is None:
            return
        items = list(cb.items)
        if self._track_limit and len(items) > self._track_limit:
            fn([], len(items), cb.number_of_members, cb.view_number, NoSpace.code)
        else:
            fn(items, len(items), cb.number_of_members, cb.view_number, error)

    @on_callback(cw.CLM_CB_NODE_GET, cw.CLM_NODE_GET_CB.decode)
    def _node_get(self, cb: tuple[int, ClusterNode], error: int) -> None:
        fn = self.callbacks.cluster_node_get_callback
        if fn is not None:
            invocation, node = cb
            fn(invocation, node if error == SA_OK else None, error)

    def __enter__(self) -> ClmHandle:
        return self


def initialize(callbacks: Callbacks | None = None,
               version: Version | None = DEFAULT_VERSION) -> ClmHandle:
    """saClmInitialize: connect to the local executive's CLM service.

    Raises:
        VersionError: not A.01.01.  TryAgain: no executive.  Security: not allowed.
    """
    return _conn.initialize(ClmHandle, callbacks, version)


def cluster_node_get(node_id: int, timeout: int) -> ClusterNode:
    """saClmClusterNodeGet: the record of ``node_id`` (0: this node).

    Args:
        timeout: SaTimeT ns.  The local node, and any node while membership is
            settled, is answered at once; while a configuration change is
            being agreed, the executive waits up to ``timeout`` for it to
            finish.  A non-positive timeout never waits on the network.

    Raises:
        NotExist: not a member.  Timeout.  TryAgain: no executive.
    """
    t = max(0, min(timeout, SA_TIME_END))
    body = _conn.encode(cw.encode_clm_node_get, cw.ClmNodeGet(node_id, t))
    return one_shot(cw.CLM_SERVICE_ID, cw.CLM_REQ_NODE_GET, body,
                    _conn.timeout_guard(t, nonpositive_waits=False),
                    cw.decode_cluster_node_untrusted)


__all__ = ["Callbacks", "ClmHandle", "DEFAULT_VERSION", "cluster_node_get", "initialize"]
