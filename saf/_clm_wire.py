"""CLM client IPC layouts (service id 1), declared once; shared by ``saf.clm`` and
``ais.services.clm``.

Conventions as in ``saf/_wire.py``: each layout is a ``saf._codec.Layout``
with its bytes drawn above it; ``encode_x`` / ``decode_x_untrusted`` are the
layouts' generated functions (``*_untrusted`` raise only IpcProtocolError).
The node record is also the CLM ring message that announces a node.
"""
from __future__ import annotations

from dataclasses import dataclass

from saf._codec import SA_NAME, Layout, array, flag, i64, pad, padded, u8, u32, u64
from saf.errors import SA_OK
from saf.types import (
    SA_CLM_MAX_ADDRESS_LENGTH, ClusterChange, ClusterNode, ClusterNotification,
)

CLM_SERVICE_ID = 1

CLM_REQ_TRACK_START = 1
CLM_REQ_TRACK_STOP = 2
CLM_REQ_NODE_GET = 3
CLM_REQ_NODE_GET_ASYNC = 4

CLM_CB_TRACK = 1
CLM_CB_NODE_GET = 2


@dataclass(frozen=True, slots=True)
class ClmTrackStart:
    flags: int
    number_of_items: int


@dataclass(frozen=True, slots=True)
class ClmNodeGet:
    node_id: int
    timeout: int


@dataclass(frozen=True, slots=True)
class ClmNodeGetAsync:
    invocation: int
    node_id: int


@dataclass(frozen=True, slots=True)
class ClmTrackCallback:
    view_number: int
    number_of_members: int
    items: tuple[ClusterNotification, ...]


@dataclass(frozen=True, slots=True)
class ClmNodeGetCallback:
    invocation: int
    node: ClusterNode | None  #: None when the callback carries an error


# SaClmClusterNodeT (594 bytes):
#  0         4        5           69         71            327         329
#  | node_id | addr_n | addr[64]  | name_n   | name[256]   | cluster_n | cluster[256]   |
#  585      586
#  | member | boot_ts (i64) |
#  *_n give the used length of the zero-padded field that follows.
CLUSTER_NODE = Layout(
    ClusterNode, "cluster node",
    ("node_id", u32),
    ("node_address", padded(SA_CLM_MAX_ADDRESS_LENGTH, u8)),
    ("node_name", SA_NAME),
    ("cluster_name", SA_NAME),
    ("member", flag),
    ("boot_timestamp", i64))

# TRACK_START request (8 bytes): | flags u8 | pad 3 | number_of_items u32 (0: no limit) |
CLM_TRACK_START_REQ = Layout(ClmTrackStart, "TRACK_START", ("flags", u8), pad(3),
                             ("number_of_items", u32))

# NODE_GET request (12 bytes): | node_id u32 | timeout i64 (ns, SaTimeT) |
CLM_NODE_GET_REQ = Layout(ClmNodeGet, "NODE_GET", ("node_id", u32), ("timeout", i64))

# NODE_GET_ASYNC request (12 bytes): | invocation u64 | node_id u32 |
CLM_NODE_GET_ASYNC_REQ = Layout(ClmNodeGetAsync, "NODE_GET_ASYNC", ("invocation", u64),
                                ("node_id", u32))

# Track callback (16 bytes), then count x (CLUSTER_NODE, change u8):
#  0             8                   12       16
#  | view u64    | number_of_members | count  | items ...
CLM_TRACK_ITEM = Layout(ClusterNotification, "track item", ("cluster_node", CLUSTER_NODE),
                        ("cluster_change", u8.as_enum(ClusterChange)))
CLM_TRACK_CB = Layout(ClmTrackCallback, "track callback", ("view_number", u64),
                      ("number_of_members", u32), ("items", array(CLM_TRACK_ITEM, u32)))

# Node-get callback: | invocation u64 | CLUSTER_NODE |  (node all zero when error != SA_OK)
CLM_NODE_GET_CB = Layout(None, "node-get callback", ("invocation", u64), ("node", CLUSTER_NODE))

_EMPTY_NODE = ClusterNode(0, b"", b"", b"", False, 0)

#: Raises ValueError: an address or name too long, a number out of range.
encode_cluster_node = CLUSTER_NODE.encode
decode_cluster_node_untrusted = CLUSTER_NODE.decode
encode_clm_track_start = CLM_TRACK_START_REQ.encode
decode_clm_track_start_untrusted = CLM_TRACK_START_REQ.decode
encode_clm_node_get = CLM_NODE_GET_REQ.encode
decode_clm_node_get_untrusted = CLM_NODE_GET_REQ.decode
encode_clm_node_get_async = CLM_NODE_GET_ASYNC_REQ.encode
decode_clm_node_get_async_untrusted = CLM_NODE_GET_ASYNC_REQ.decode
encode_clm_track_callback = CLM_TRACK_CB.encode
decode_clm_track_callback_untrusted = CLM_TRACK_CB.decode


def encode_clm_node_get_callback(cb: ClmNodeGetCallback) -> bytes:
    return CLM_NODE_GET_CB.pack(cb.invocation, cb.node or _EMPTY_NODE)


def decode_clm_node_get_callback_untrusted(body: bytes, error: int) -> ClmNodeGetCallback:
    """The callback; its node is None unless the frame's ``error`` is SA_OK."""
    invocation, node = CLM_NODE_GET_CB.decode(body)
    return ClmNodeGetCallback(invocation, node if error == SA_OK else None)
