"""Inputs and outputs of the Totem state machine (``srp.Srp``).

The core never performs I/O.  Every entry point (``start``, ``receive``,
``timer``, ``mcast``) returns a list of the action objects below, which the
caller -- the gevent transport or the simulator -- carries out in order.

Node identities are 32-bit unsigned integers: the node's IPv4 address in
network order read as a big-endian integer (``int(ipaddress.IPv4Address(a))``),
so ring order by id is ring order by address.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class TimerKind(enum.Enum):
    """The protocol's timers.  At most one of each kind is armed at a time."""

    TOKEN_LOSS = "token_loss"  #: no token for ``token`` ms: the ring is gone
    TOKEN_RETRANSMIT = "token_retransmit"  #: successor silent: send the token again
    TOKEN_HOLD = "token_hold"  #: idle ring: the resting token moves on
    JOIN = "join"  #: gather: resend our join message
    CONSENSUS = "consensus"  #: gather: give up on processors that do not agree
    MERGE_DETECT = "merge_detect"  #: representative's probe for other rings
    WAKE = "wake"  #: we have messages and no token: ask the holder to release it

    # Members are singletons compared by identity: hashing them so is exact, and
    # it spares Enum's hash (a Python call) on every timer armed and cancelled.
    __hash__ = object.__hash__


@dataclass(frozen=True, order=True)
class RingId:
    """Identifies a configuration: its representative and a ring sequence number."""

    seq: int
    rep: int

    def __str__(self) -> str:
        return f"{fmt_node(self.rep)}/{self.seq}"


# Send and Deliver are made once per frame and per message, and never changed
# afterwards: not frozen, since building a frozen dataclass costs three times as much.
@dataclass(slots=True)
class Send:
    """Send ``data`` to one node (``dest``) or to every node (``dest is None``).

    ``dest is None`` means multicast; a unicast transport sends it to every
    configured member instead.
    """

    data: bytes
    dest: int | None = None


@dataclass(slots=True)
class Deliver:
    """Deliver one application message, in agreed order."""

    sender: int
    payload: bytes
    ring_id: RingId
    #: seq of the frame that carried (the end of) the message in ``ring_id``, also for
    #: old-ring frames delivered after the transitional configuration; 0: not known
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Stable:
    """Every member of ``ring_id`` has received every frame up to ``seq``.

    A message whose ``Deliver.seq`` is at most ``seq`` is held by every member
    ("safe delivery"); after the transitional configuration that ends
    ``ring_id``, every member of it holds every message delivered in that ring.
    """

    ring_id: RingId
    seq: int


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A configuration change, delivered at the same point in the order everywhere.

    A transitional configuration (``transitional=True``) lists the members of
    the old configuration that move with this node into the new one; its
    ``ring_id`` is the old ring's.  A regular configuration lists all members
    of the new ring with who joined and who left relative to the previous
    regular configuration this node installed.
    """

    transitional: bool
    ring_id: RingId
    members: tuple[int, ...]
    left: tuple[int, ...] = ()
    joined: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Arm (or re-arm) the timer ``kind`` to fire at absolute time ``at`` (seconds)."""

    kind: TimerKind
    at: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    """Disarm the timer ``kind``.  A timer firing after cancellation is ignored anyway."""

    kind: TimerKind


Action = Send | Deliver | ConfChange | StartTimer | CancelTimer | Stable


@dataclass
class TotemConfig:
    """Protocol parameters.  Times in milliseconds, sizes in bytes."""

    #: no token for this long: token loss, the ring is re-formed
    token: float = 1000.0
    #: longest wait before the token is resent (and never more than token/20); the
    #: wait is adaptive: measured rotation time plus four deviations, doubling per resend
    token_retransmit: float = 150.0
    #: floor of the adaptive token retransmit time
    token_retransmit_min: float = 4.0
    #: resend join messages this often while gathering
    join: float = 100.0
    #: give up on processors that have not agreed after this long in gather
    consensus: float = 500.0
    #: how often the representative probes for other rings
    merge_detect: float = 1000.0
    #: how long an idle ring's token rests at the representative per rotation
    token_hold: float = 250.0
    #: ms the token keeps rotating after the last traffic before it may rest: a
    #: synchronous writer's next message then finds it moving (no WAKE, no extra
    #: hops); an idle ring stops rotating this long after its last message.
    #: Off by default: on 2-3 nodes it measured within noise (see bench/netns_bench.py)
    token_linger: float = 0.0
    #: ms a node keeps the token when a message a local client waits for
    #: (``Srp.mcast(awaited=True)``) has just become stable and nothing else
    #: waits: a client answered at stability (a checkpoint write) sends its next
    #: request within a fraction of a ms, and it then goes out on this visit
    #: instead of a rotation later.  As many awaited messages as were answered,
    #: any other message, or a WAKE end the hold; 0: off
    writer_hold: float = 0.5
    #: in rings of three or more, a frame ending a message a local client waits
    #: for asks every member to acknowledge it (``MCAST_ACK``); once all have,
    #: it is stable at once instead of when the token has gone round to its
    #: sender again (two or more hops later)
    stable_acks: bool = True
    #: the token visit that installs a new ring frames none of this node's queued
    #: messages, and a ring of one starts delivering a moment later (a zero-delay
    #: timer): the host first handles the configuration, which may put what an
    #: abandoned sync round held in front of them (``Srp.requeue_front``), so each
    #: sender's order holds.  Off only to replay histories recorded before it
    install_pause: bool = True
    #: minimum gap between two wake-up requests from one node
    wake_interval: float = 20.0
    #: largest frame the ring sends (payload of one UDP datagram before crypto)
    frame_size: int = 1400
    #: frames one node may send per token visit
    max_messages: int = 20
    #: frames the whole ring may send per rotation
    window_size: int = 60
    #: bytes a rotation may carry at least: at small frames ``window_size`` and
    #: ``max_messages`` are scaled up by the same factor to reach it (at 1400-byte
    #: frames 200 and 66), so a ring at Ethernet frame sizes carries about what it
    #: carries at 9000; larger frames are not affected; 0: the two are exact
    window_bytes: int = 280_000
    #: frames one node may have queued before ``mcast`` refuses (flow control)
    send_queue_limit: int = 4096
    #: bytes of application payload one node may have queued before ``mcast`` refuses
    send_queue_bytes: int = 64 * 1024 * 1024
    #: largest application message accepted by ``mcast``
    max_message_size: int = 16 * 1024 * 1024
    #: token visits during which a member's aru holds the ring back without moving
    #: while others hold more, before it declares that it fails to receive and
    #: leaves the ring (a few tenths of a second on a busy ring; at 30% loss a
    #: hole survives this many retransmissions with probability 0.3**50)
    fail_recv_const: int = 50
    #: after failing to receive, how long the member stays apart before merging
    #: again (doubled on each repeat, up to 8 times)
    fail_recv_backoff: float = 2000.0
    #: most processors a ring may have; a packet naming more is refused (``guard.py``)
    max_members: int = 64
    #: the only node ids packets may come from or name (udpu: the configured
    #: members); empty: any
    members: tuple[int, ...] = ()
    #: a frame, probe or join from outside the ring starts a gather at most this often
    foreign_gather_interval: float = 1000.0


class SendQueueFull(Exception):
    """``Srp.mcast`` refuses: the send queue is full.  Try again after the ring drains."""


def fmt_node(node: int) -> str:
    """Dotted-quad text of a node id."""
    return f"{node >> 24 & 255}.{node >> 16 & 255}.{node >> 8 & 255}.{node & 255}"


def node_of(addr: str) -> int:
    """Node id of a dotted-quad IPv4 address."""
    a, b, c, d = (int(x) for x in addr.split("."))
    return a << 24 | b << 16 | c << 8 | d


__all__ = [
    "Action", "CancelTimer", "ConfChange", "Deliver", "RingId", "Send",
    "SendQueueFull", "Stable", "StartTimer", "TimerKind", "TotemConfig", "fmt_node", "node_of",
]
