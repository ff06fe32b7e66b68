"""SAF constants and small value types (spec/clm.md section 1).

Constants keep their SAF spelling.  Node ids follow the 2004 convention
(spec/clm.md 1.3) so that testclm prints the same ids as the C program on
x86: ``nodeId`` is the IPv4 address bytes read as a *little-endian* integer
(192.168.1.98 -> 0x6201a8c0), fixed to little-endian on every host so ids do
not depend on the machine.  The Totem ring numbers nodes the other way round
(big-endian, ``ais.totem.events.node_of``); ``node_id_from_totem`` and
``totem_from_node_id`` convert.
"""
from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from saf.errors import SA_OK

# SaBoolT
SA_FALSE = 0
SA_TRUE = 1

SA_OK = SA_OK  # re-exported: SaErrorT success (1, not 0)

# SaDispatchFlagsT
SA_DISPATCH_ONE = 1
SA_DISPATCH_ALL = 2
SA_DISPATCH_BLOCKING = 3
DISPATCH_FLAGS = frozenset({SA_DISPATCH_ONE, SA_DISPATCH_ALL, SA_DISPATCH_BLOCKING})

# SaClmTrackFlags (bit mask)
SA_TRACK_CURRENT = 0x01
SA_TRACK_CHANGES = 0x02
SA_TRACK_CHANGES_ONLY = 0x04

#: "the node I am on" for cluster_node_get
SA_CLM_LOCAL_NODE_ID = 0

# SaTimeT: signed 64-bit nanoseconds
SA_TIME_END = 0x7FFFFFFFFFFFFFFF
SA_TIME_ONE_SECOND = 1_000_000_000

SA_MAX_NAME_LENGTH = 256
SA_CLM_MAX_ADDRESS_LENGTH = 64


class ClusterChange(enum.IntEnum):
    """SaClmClusterChangesT."""

    SA_CLM_NODE_NO_CHANGE = 1
    SA_CLM_NODE_JOINED = 2
    SA_CLM_NODE_LEFT = 3


SA_CLM_NODE_NO_CHANGE = ClusterChange.SA_CLM_NODE_NO_CHANGE
SA_CLM_NODE_JOINED = ClusterChange.SA_CLM_NODE_JOINED
SA_CLM_NODE_LEFT = ClusterChange.SA_CLM_NODE_LEFT


@dataclass(frozen=True, slots=True)
class Version:
    """SaVersionT."""

    release_code: str
    major: int
    minor: int


#: the only versions A.01.01 libraries accept
SUPPORTED_VERSIONS = (Version("A", 1, 1), Version("a", 1, 1))


def sa_name(value: str | bytes) -> bytes:
    """An SaNameT value as bytes (UTF-8 for str).

    Raises:
        ValueError: longer than SA_MAX_NAME_LENGTH bytes.
    """
    raw = value.encode() if isinstance(value, str) else bytes(value)
    if len(raw) > SA_MAX_NAME_LENGTH:
        raise ValueError(f"SaNameT longer than {SA_MAX_NAME_LENGTH} bytes")
    return raw


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """SaClmClusterNodeT.  Names and the address are raw bytes, as in SAF."""

    node_id: int
    node_address: bytes  #: up to 64 bytes; IPv4: the 4 address bytes
    node_name: bytes
    cluster_name: bytes
    member: bool
    boot_timestamp: int  #: ns since the epoch (SaTimeT)


@dataclass(frozen=True, slots=True)
class ClusterNotification:
    """SaClmClusterNotificationT."""

    cluster_node: ClusterNode
    cluster_change: ClusterChange


def node_id_of_address(addr: str) -> int:
    """SAF nodeId of a dotted-quad address (little-endian read of its bytes)."""
    return int.from_bytes(ipaddress.IPv4Address(addr).packed, "little")


def node_id_from_totem(totem_id: int) -> int:
    """SAF nodeId of a Totem node id (big-endian address int)."""
    return int.from_bytes(totem_id.to_bytes(4, "big"), "little")


def totem_from_node_id(node_id: int) -> int:
    """Totem node id of a SAF nodeId (the inverse of ``node_id_from_totem``)."""
    return int.from_bytes(node_id.to_bytes(4, "little"), "big")


def address_of_node_id(node_id: int) -> str:
    """Dotted-quad address of a SAF nodeId."""
    return str(ipaddress.IPv4Address(node_id.to_bytes(4, "little")))
