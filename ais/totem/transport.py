"""The gevent shell around the Totem state machine: one UDP socket, greenlets, timers.

Theory of operation (STYLE P1, P2):

* ``Srp`` is sans-IO.  Every entry point here -- a datagram arrived, a timer
  fired, the application multicasts -- calls into it once with ``now`` from
  ``clock``; the returned actions join one FIFO and are *performed* from it,
  in order.
* One greenlet waits for the socket to become readable and reads what is
  there: every datagram waiting (up to ``RECV_BATCH`` reads) goes to the core
  first, and the answers are performed together, so the sends among them (a
  token read behind a run of frames) leave before that run's deliveries.
  Each armed timer kind has one event-loop timer watcher, whose callback
  runs in the hub like the ``mcast`` callback below (both perform sends and
  timers there, and hand anything for the callbacks, which may block, to a
  greenlet); ``StartTimer`` replaces it (or, for a later time, keeps it and
  re-arms it for the rest when it fires), ``CancelTimer`` stops it.  (A
  greenlet per timer, as before,
  cost a spawn and a kill per token visit and several switches: about a tenth
  of a token's handling.)  Everything runs in one thread and the
  core never yields, so there are no locks.
* ``mcast`` only queues: the actions of ``Srp.mcast`` (in a ring of one, the
  delivery of the message itself; elsewhere the release of a resting token
  or a wake-up request) are performed from an event-loop callback armed for
  the purpose, after the caller has returned.  So no callback ever runs
  inside ``mcast``: the caller, typically a service handler, is never
  re-entered by its own ring, and the host needs no guard against it.  (Only
  sends happen inside it: a resting token released there streams its frames
  and itself at once, see "Streaming".)  The
  receiver and the timers perform their own actions at once (they are the
  ring's own greenlets).  The price: a synchronous sender in a ring of one
  waits one event-loop iteration more per message (about 10 us;
  ``bench/transport_bench.py``); a greenlet spawned per burst instead of the
  callback cost twice that.
* Performing never yields: the socket is non-blocking and a send that would
  block is dropped (the ring retransmits).  So the callbacks must not block
  either (the service host never does; one that blocks while performing for
  ``mcast`` is a ring failure).  Should one yield anyway in a ring greenlet,
  whoever finds the FIFO idle drains it, and anyone arriving meanwhile only
  adds to it.  Deliveries and configuration changes therefore reach the
  callbacks exactly in the order the core produced them, and never
  re-entrantly.  Only sends move: within one call's actions they go out
  before the deliveries and Stables beside them (never across a ConfChange),
  so a forwarded token does not wait for the services' delivery work.
* A timer callback detaches its watcher from the timer table before it calls
  the core, and a callback whose watcher is no longer in the table (replaced
  or cancelled meanwhile) does nothing.
* Untrusted input costs one packet: ``InvalidDigest`` is counted and logged
  ("invalid digest", rate-limited); other ``BadPacket`` is counted at debug.
  Any other exception in a ring greenlet or timer callback is a bug: it
  reaches ``on_fatal`` (default: log and exit the process non-zero), the
  receiver's through ``link_exception``, because gevent's own default only
  prints it and carries on.
* Send errors (ENOBUFS, EAGAIN, EMSGSIZE, ECONNREFUSED...) are counted and
  logged at debug: UDP may lose packets and the protocol recovers.
* Busy polling (``busy_poll`` seconds, 0: off): after each read of the ring's
  socket that brings work (``Srp.quiet_read`` is false: more than an idle
  ring's token or merge probe), and each ``kick`` (the IPC server's client
  requests), the event
  loop polls instead of sleeping for that long (an idle watcher keeps libev
  from blocking), yielding the processor to anything else runnable on each
  turn.  A process that sleeps between the hops of a synchronous write pays
  for waking up: on virtual machines whose idle processors halt, a round trip
  through the hypervisor (50-100 us a wake-up, four wake-ups a write); a
  polling one sees the next packet or request at once.  ``BusyPoll``.

Segmentation offload (Linux): the datagrams of one burst of actions that go
to the same addresses -- a token visit's new frames, all of one size, and
whatever shorter packet follows them -- leave in one ``sendmsg`` with
``UDP_SEGMENT``: the kernel cuts the buffer into the same datagrams the
per-packet path would send (each sealed on its own, so nothing changes on the
wire), at one system call and one trip through the stack for up to
``GSO_MAX_SEGMENTS``.  A send is never delayed for it: the batch is flushed
before any other action is performed and when the burst ends.

Streaming: the core hands a token visit's new frames and its token to
``Srp.frame_sink`` (``_stream``) as it makes them, not in its returned
actions.  The first ``STREAM_FIRST`` leave at once, later runs of up to
``STREAM_MAX``, the token right behind the last: the receivers work on the
first frames while the visit frames and seals the rest, and the sender's own
delivery of what it sent is done after the token has left.  Only sends go
through the sink, and only on an installed ring (the configuration change
that installs a ring, with its ring seq saved, is performed first).  The socket
also asks for ``UDP_GRO``: a run of datagrams from one sender may then arrive
in one read, with the segment size in a control message, and is cut apart
here before each piece is opened.  Where the kernel refuses either option
(older kernels, other systems), the transport falls back to one ``sendto``
per datagram, resp. plain reads, for good, after one debug line.

Modes: ``udp`` multicasts a ``Send(dest=None)`` to the group (TTL 1, no
loopback, on the interface of ``bind_addr``); ``udpu`` sends it to every
configured member except this node.  The node id is ``bind_addr``; it must be
a full local address (the configuration layer resolves ``bindnetaddr``).

Persistence: whenever a regular configuration is performed, ``srp.max_ring_seq``
is written to ``state_file`` (write, fsync, rename), so a restarted node never
reuses a ring id; ``load_ring_seq`` reads it back.  A value that no honest ring
can have reached (above ``guard.RING_SEQ_LIMIT``, 2**62), a damaged, unreadable
or binary file, or a directory in its place is refused with one log line and
the node starts from 0: until it has been in a ring with another node it
accepts the ring sequence the cluster tells it (``guard.py``), so it catches
up without reusing a ring id the others know.  A state file that cannot be
saved (disk full, no descriptors, a directory in the way) is logged, rate
limited, and the ring carries on.

Leave: ``leave`` (SIGTERM) performs ``Srp.leave`` and stops.  A LEAVE
counts only as its sender's own packet: one that authenticates but comes
from another address than the node it names is dropped (``leave_refused``),
so a node holding the key cannot make another one leave from its address.

Peers: with ``udpu`` a datagram whose source address is not a configured
member is dropped before decryption, counted (``unknown_peer``) and logged,
rate limited.
"""
from __future__ import annotations

import enum
import errno
import logging
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import gevent
import gevent.event
from gevent import Greenlet, getcurrent
from gevent.hub import get_hub
from gevent.monkey import get_original

from ais.log import SECURITY, RateLimiter
from ais.totem.crypto import Crypto, InvalidDigest, ReplayedPacket
from ais.totem.events import (
    Action, CancelTimer, ConfChange, Deliver, Send, SendQueueFull, Stable, StartTimer, TimerKind,
    fmt_node, node_of)
from ais.totem.guard import RING_SEQ_LIMIT
from ais.totem.wire import LEAVE, PACKET_HEADER, BadPacket

logger = logging.getLogger(__name__)

#: the unpatched socket class: a monkey-patched one would yield inside sendto,
#: and performing actions must not yield (see "Theory of operation")
_RealSocket: type[socket.socket] = get_original("socket", "socket")

#: largest datagram we read; bigger than any UDP payload
RECV_BYTES = 65536
#: datagrams read per wake-up before letting timers and other greenlets run
RECV_BATCH = 64
#: socket buffer size asked for (best effort; the kernel may cap it)
SOCKET_BUFFER = 4 * 1024 * 1024
#: "invalid digest" lines per window, and the window in seconds
DIGEST_LOG_BURST = 3
DIGEST_LOG_INTERVAL = 10.0
#: bytes of a ring state file read at most (a decimal u64 and a newline fit easily)
STATE_FILE_MAX = 64
#: Linux's IP_MULTICAST_ALL, missing from older ``socket`` modules
_IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)
#: Linux UDP segmentation offload (4.18) and receive coalescing (5.0) options
_UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
_UDP_GRO = getattr(socket, "UDP_GRO", 104)
#: datagrams and bytes one segmented send carries at most (the kernel's limits
#: are 64 segments on older kernels and a 64 KiB skb)
GSO_MAX_SEGMENTS = 64
#: a token visit's first frames leave in a segmented send of this many ...
STREAM_FIRST = 8
#: ... and later ones of twice the last, up to this many: a receiver is then
#: never far behind, so it hands the token on soon after the last frame
#: (sends of up to 64 cost a 2-node ring 10% of its throughput).  Each send
#: costs ~15 us however short (on veth the receiver's kernel side runs in it):
#: 8 and 16 gave 75 KB writes on 2 nodes 7% more than 4 and 8 once the
#: receivers took a read's frames in one call (netns_bench, MTU 1500)
STREAM_MAX = 16
GSO_MAX_BYTES = 65000
#: errors that say the kernel or the route cannot segment: fall back for good.
#: EMSGSIZE: frames larger than the interface's MTU (``frame_size`` set above
#: it), which the kernel only segments if it may fragment them, one by one
_GSO_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EIO,
                              errno.EMSGSIZE})
#: room for the UDP_GRO control message (an int)
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4)


class SrpLike(Protocol):
    """What the transport needs of ``ais.totem.srp.Srp`` (doc/INTERFACES.md)."""

    node_id: int
    max_ring_seq: int
    quiet_read: bool

    @property
    def awaiting(self) -> bool: ...

    def start(self, now: float) -> list[Action]: ...
    def receive(self, data: bytes, now: float) -> list[Action]: ...
    def receive_many(self, datas: Sequence[bytes], now: float) -> list[Action]: ...
    def timer(self, kind: TimerKind, now: float) -> list[Action]: ...
    def mcast(self, payload: bytes, now: float, awaited: bool = False) -> list[Action]: ...
    def requeue_front(self, payloads: Sequence[bytes], now: float) -> list[Action]: ...
    def leave(self, now: float) -> list[Action]: ...



#: actions the hub may perform itself: they call no callback
_HUB_SAFE = (Send, StartTimer, CancelTimer)


def _sends_first(actions: list[Action]) -> list[Action]:
    """``actions`` with each run of sends, deliveries and timers reordered sends first.

    The core has already done everything its actions report; a send's bytes
    do not depend on the local deliveries beside it.  Sending first takes the
    services' delivery work (a checkpoint write applied, replies queued) off the
    token's path: the next member works while this one delivers.  Deliveries,
    Stables and configuration changes keep their order, and no send moves
    across a ConfChange (it may change who the ring's packets go to).
    """
    out: list[Action] = []
    later: list[Action] = []
    for a in actions:
        if isinstance(a, Send):
            out.append(a)
        elif isinstance(a, ConfChange):
            out.extend(later)
            later.clear()
            out.append(a)
        else:
            later.append(a)
    out.extend(later)
    return out


class TransportState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


def load_ring_seq(path: str) -> int:
    """The ring sequence saved in ``path``; 0 if there is none or it is refused.

    A missing file is normal (first start).  An unreadable or damaged one, or
    one holding a value beyond ``RING_SEQ_LIMIT``, is logged in one line and
    treated as 0: the node then takes the cluster's ring sequence when it
    joins (see the module docstring).  Never raises.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(STATE_FILE_MAX + 1)
    except FileNotFoundError:
        return 0
    except OSError as e:
        logger.warning("cannot read ring state %s: %s; starting from ring sequence 0",
                       path, e.strerror or e)
        return 0
    try:
        if len(raw) > STATE_FILE_MAX:
            raise ValueError("too long")
        value = int(raw.decode("ascii").strip())
        if value < 0:
            raise ValueError("negative")
    except ValueError:
        logger.warning("ignoring damaged ring state %s; starting from ring sequence 0", path)
        return 0
    if value > RING_SEQ_LIMIT:
        logger.error("ring state %s holds %d, beyond any ring sequence a cluster can reach "
                     "(2**62): refused, starting from 0 and taking the cluster's", path, value)
        return 0
    return value


def save_ring_seq(path: str, seq: int) -> None:
    """Write ``seq`` to ``path`` atomically (temporary file, fsync, rename).

    Raises:
        OSError: the file could not be written.
    """
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="ascii") as f:
            f.write(f"{seq}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass  # nothing was created, or a directory is in the way
        raise


def _exit_process(exc: BaseException) -> None:
    """Default ``on_fatal``: the ring is dead, so is the executive."""
    logger.critical("totem transport failed, exiting: %r", exc)
    logging.shutdown()
    os._exit(1)  # from a hub callback, SystemExit would only reach the main greenlet


#: a busy-poll window stretches to this many windows after the last kick
#: while the node's own messages wait for the token or for stability
AWAIT_POLL = 8

#: gives the processor to whatever else is runnable (Linux); None where missing
_SCHED_YIELD: Callable[[], object] | None = getattr(os, "sched_yield", None)


class BusyPoll:
    """Keep the event loop polling for ``window`` seconds after each ``kick``.

    While its idle watcher is active, libev polls its descriptors without
    blocking; each turn of the loop with nothing to do calls ``_turn``, which
    yields the processor (``sched_yield``: whatever else is runnable there
    runs first) until the window has passed, then stops the watcher.
    Counts windows and the time spent polling into ``stats``
    (``busy_polls``, ``busy_poll_us``).

    ``awaiting`` (optional): while it answers true past the window, the loop
    goes on polling, up to ``await_window`` s after the last kick.  The
    writer's node uses it to stay awake until the token brings its write's
    stability: on a ring of three the token comes back about a millisecond
    after the visit that sent a large write, past the usual window, and the
    wake-up it would pay then is on the client's critical path.  A ring with
    nothing of ours in flight never asks.
    """

    def __init__(self, window: float, stats: dict[str, int], *,
                 clock: Callable[[], float] = time.monotonic,
                 yield_cpu: Callable[[], object] | None = _SCHED_YIELD,
                 awaiting: Callable[[], bool] | None = None,
                 await_window: float = 0.0) -> None:
        self.window = window
        self.stats = stats
        self.clock = clock
        self.yield_cpu = yield_cpu
        self.awaiting = awaiting
        self.await_window = await_window
        self._watcher: Any = None
        self._until = 0.0
        self._since = 0.0
        self._kicked = 0.0

    def kick(self) -> None:
        """Activity: poll for the next ``window`` seconds."""
        now = self.clock()
        self._kicked = now
        self._until = now + self.window
        w = self._watcher
        if w is None:
            w = self._watcher = get_hub().loop.idle()
        if not w.active:
            self._since = now
            self.stats["busy_polls"] += 1
            w.start(self._turn)

    def _turn(self) -> None:
        now = self.clock()
        if now >= self._until and not (self.awaiting is not None
                                       and now < self._kicked + self.await_window
                                       and self.awaiting()):
            self.stop(now)
        elif self.yield_cpu is not None:
            self.yield_cpu()

    def stop(self, now: float | None = None) -> None:
        """End the current window (if any) now."""
        w = self._watcher
        if w is not None and w.active:
            w.stop()
            end = self.clock() if now is None else now
            self.stats["busy_poll_us"] += int((end - self._since) * 1e6)

    @property
    def polling(self) -> bool:
        """A window is open: the loop does not sleep."""
        return self._watcher is not None and bool(self._watcher.active)


class Transport:
    """Drives one ``Srp`` over a UDP socket with gevent.

    Args:
        srp: the state machine; the transport is its only caller.
        crypto: seals every packet sent, opens every packet received.
        bind_addr: this node's IPv4 address (its node id).
        port: the ring's UDP port, the same on every node.
        mode: ``"udp"`` (multicast) or ``"udpu"`` (unicast to each member).
        mcast_addr: the multicast group (``udp`` only).
        members: every node's address, this one included or not (``udpu`` only).
        on_deliver: called with each ``Deliver``, in order.
        on_confchg: called with each ``ConfChange``, in order.
        on_stable: called with each ``Stable`` (safe-delivery progress), in order.
        clock: monotonic seconds; the time base of ``StartTimer.at``.
        log: logger (a ``NodeAdapter`` when several nodes share a process).
        state_file: where ``max_ring_seq`` is kept across restarts, or None.
        on_fatal: called with the exception when a ring greenlet dies of a
            bug; the default logs it and exits the process with status 1.
        busy_poll: seconds the event loop polls instead of sleeping after
            each read that brings work and each ``kick`` (see "Busy
            polling"); 0: off.
    Raises:
        ValueError: inconsistent mode/addresses.
    """

    def __init__(self, srp: SrpLike, crypto: Crypto, *, bind_addr: str, port: int,
                 mode: str = "udp", mcast_addr: str | None = None,
                 members: Iterable[str] = (),
                 on_deliver: Callable[[Deliver], None],
                 on_confchg: Callable[[ConfChange], None],
                 on_stable: Callable[[Stable], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 log: logging.Logger | logging.LoggerAdapter = logger,
                 state_file: str | None = None,
                 on_fatal: Callable[[BaseException], None] = _exit_process,
                 busy_poll: float = 0.0) -> None:
        if mode not in ("udp", "udpu"):
            raise ValueError(f"transport mode must be udp or udpu, not {mode!r}")
        if mode == "udp" and not mcast_addr:
            raise ValueError("udp transport needs a multicast address")
        members = list(members)
        if mode == "udpu" and not members:
            raise ValueError("udpu transport needs the list of members")
        self.srp = srp
        self.crypto = crypto
        self.bind_addr = bind_addr
        self.node_id = node_of(bind_addr)
        self.port = port
        self.mode = mode
        self.mcast_addr = mcast_addr
        self.members = members
        self.on_deliver = on_deliver
        self.on_confchg = on_confchg
        self.on_stable = on_stable
        self.clock = clock
        self.log = log
        self.state_file = state_file
        self.on_fatal = on_fatal
        self.state = TransportState.NEW
        #: counters, for status output and tests
        self.stats: dict[str, int] = dict.fromkeys((
            "rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "send_errors",
            "invalid_digest", "replayed", "bad_packet", "own_dropped", "unknown_peer",
            "state_errors",
            "deliveries", "confchanges", "timers_fired",
            "deliver_bytes", "leave_refused", "gso_sends", "gro_reads",
            "busy_polls", "busy_poll_us"), 0)
        #: polls the loop for ``busy_poll`` s after each read and ``kick``, longer
        #: while our own messages wait (``Srp.awaiting``); None: off
        self.busy: BusyPoll | None = BusyPoll(
            busy_poll, self.stats, awaiting=lambda: srp.awaiting,
            await_window=AWAIT_POLL * busy_poll) if busy_poll > 0 else None
        if mode == "udp":
            assert mcast_addr is not None
            self._everyone: list[tuple[str, int]] = [(mcast_addr, port)]
        else:
            # Never send a node its own packets (doc/INTERFACES.md).
            self._everyone = [(m, port) for m in dict.fromkeys(members) if m != bind_addr]
        self._everyone_t = tuple(self._everyone)
        #: segmentation offload still believed to work (see the module docstring)
        self._gso = sys.platform.startswith("linux")
        #: the socket coalesces received runs (UDP_GRO accepted)
        self._gro = False
        #: sealed datagrams waiting for one segmented send, all to ``_batch_addrs``:
        #: every one ``_batch_seg`` bytes, but the last may be shorter (then closed)
        self._batch: list[bytes] = []
        self._batch_addrs: tuple[tuple[str, int], ...] = ()
        self._batch_seg = 0
        self._batch_bytes = 0
        self._batch_closed = False
        #: segments after which a streamed visit's batch leaves (see ``_stream``)
        self._stream_limit = STREAM_FIRST
        self._unicast: dict[int, tuple[tuple[str, int], ...]] = {}
        #: udpu: the only source addresses accepted; None: any (multicast)
        self._peers: frozenset[str] | None = frozenset(members) if mode == "udpu" else None
        self._sock: socket.socket | None = None
        self._receiver: Greenlet | None = None
        #: performs, in order, what timers and ``mcast`` queued for the callbacks
        self._performer: Greenlet | None = None
        self._performer_wake = gevent.event.Event()
        self._watcher: Any = None  # the receiver's io watcher while it exists
        #: armed kind -> (its loop timer watcher, when that fires)
        self._timers: dict[TimerKind, tuple[Any, float]] = {}
        self._timer_at: dict[TimerKind, float] = {}  # armed kind -> when it is due
        self._pending: deque[Action] = deque()
        self._performing = False
        #: an event-loop callback will perform what ``mcast`` queued
        self._drain_armed = False
        self._saved_seq: int | None = None
        self._digest_limit = RateLimiter(DIGEST_LOG_BURST, DIGEST_LOG_INTERVAL, clock)
        self._bad_limit = RateLimiter(DIGEST_LOG_BURST, DIGEST_LOG_INTERVAL, clock)
        self._peer_limit = RateLimiter(DIGEST_LOG_BURST, DIGEST_LOG_INTERVAL, clock)
        self._state_limit = RateLimiter(DIGEST_LOG_BURST, DIGEST_LOG_INTERVAL, clock)

    # -- public entry points -------------------------------------------------

    def start(self) -> None:
        """Open and bind the socket, start receiving, and start the ring.

        Raises:
            OSError: the socket could not be bound or the group joined.
            RuntimeError: already started.
        """
        if self.state is not TransportState.NEW:
            raise RuntimeError(f"transport is {self.state.value}, cannot start")
        self._sock = self._open_socket()
        self.state = TransportState.RUNNING
        if hasattr(self.srp, "frame_sink"):  # ``Srp`` streams a visit's frames
            self.srp.frame_sink = self._stream  # type: ignore[attr-defined]
        self._receiver = gevent.spawn(self._receive_loop)
        self._receiver.link_exception(self._died)
        self._performer = gevent.spawn(self._perform_loop)
        self._performer.link_exception(self._died)
        self.log.debug("totem transport %s on %s:%d started", self.mode, self.bind_addr,
                       self.port)
        self._perform(self.srp.start(self.clock()))

    def mcast(self, payload: bytes, awaited: bool = False) -> None:
        """Queue an application message on the ring (``awaited``: see ``Srp.mcast``).

        Never calls ``on_deliver``, ``on_confchg`` or ``on_stable``: what the
        core answers is performed after this returns (see the module docstring).

        Raises:
            SendQueueFull: from ``Srp.mcast``; retry when the ring has drained.
            ValueError: from ``Srp.mcast``; the message is too large.
            RuntimeError: the transport is not running.
            Anything else is a ring failure: ``on_fatal`` is called first.
        """
        if self.state is not TransportState.RUNNING:
            raise RuntimeError(f"transport is {self.state.value}")
        try:
            actions = self.srp.mcast(payload, self.clock(), awaited)
        except (SendQueueFull, ValueError):
            raise  # the documented refusals: the caller's business
        except Exception as e:
            self._fatal(e)
            raise
        self._answer_later(actions)

    def requeue_front(self, payloads: Sequence[bytes]) -> None:
        """``Srp.requeue_front``; performed like ``mcast``'s answer."""
        if self.state is not TransportState.RUNNING:
            return
        try:
            actions = self.srp.requeue_front(payloads, self.clock())
        except Exception as e:
            self._fatal(e)
            raise
        self._answer_later(actions)

    def _answer_later(self, actions: list[Action]) -> None:
        """The core's answer to a call from outside the ring, performed after the
        caller returned (and a pending batch flushed)."""
        if actions or self._batch:
            self._pending.extend(actions)
            if not self._performing and not self._drain_armed:
                self._drain_armed = True
                get_hub().loop.run_callback(self._drain_queued)

    def kick(self) -> None:
        """Activity outside the ring (a client request): poll for ``busy_poll`` s."""
        if self.busy is not None and self.state is TransportState.RUNNING:
            self.busy.kick()

    def leave(self) -> None:
        """Tell the ring this node leaves it (``Srp.leave``), then ``stop``.  Idempotent."""
        if self.state is TransportState.RUNNING:
            # Sent here and now, not through the action queue: a greenlet
            # paused inside a callback may hold that queue, and ``stop``
            # drops what is in it.  (The rest of the actions only cancel timers.)
            for action in self.srp.leave(self.clock()):
                if isinstance(action, Send):
                    self._send(action)
            self._flush()
        self.stop()

    def stop(self) -> None:
        """Stop receiving, disarm all timers and close the socket.  Idempotent."""
        if self.state is TransportState.STOPPED:
            return
        self.state = TransportState.STOPPED
        me = getcurrent()
        for g in (self._receiver, self._performer):
            if g is not None and g is not me:
                g.kill(block=False)
        for w, _ in self._timers.values():
            w.stop()
        self._timers.clear()
        self._pending.clear()
        if self.busy is not None:
            self.busy.stop()
        if self._watcher is not None:
            # The receiver may still sit in hub.wait on this descriptor until
            # the GreenletExit reaches it; the event loop must not watch a
            # closed descriptor meanwhile.
            self._watcher.stop()
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> Transport:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- sockets --------------------------------------------------------------

    def _open_socket(self) -> socket.socket:
        sock = _RealSocket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
                                 (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF)):
                self._set_buffer(sock, force, plain)
            if self.mode == "udp":
                group = socket.inet_aton(self.mcast_addr)  # type: ignore[arg-type]
                iface = socket.inet_aton(self.bind_addr)
                if sys.platform.startswith("linux"):
                    # Otherwise a wildcard-bound socket also gets every other
                    # group joined on this host for the same port.
                    sock.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)
                # Wildcard address: both the group's packets and unicast to us.
                sock.bind(("", self.port))
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group + iface)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, iface)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            else:
                sock.bind((self.bind_addr, self.port))
            if sys.platform.startswith("linux"):
                try:
                    sock.setsockopt(socket.IPPROTO_UDP, _UDP_GRO, 1)
                    self._gro = True
                except OSError as e:
                    self.log.debug("UDP_GRO refused (%s): one datagram per read", e)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _set_buffer(self, sock: socket.socket, force: int | None, plain: int) -> None:
        # As root, the FORCE variants pass the kernel's rmem_max/wmem_max cap.
        for opt in (force, plain):
            if opt is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
                return
            except OSError:
                continue
        self.log.debug("could not enlarge socket buffer (option %d)", plain)

    def _flush(self) -> None:
        """Send what ``_send`` batched: one segmented send per address, or plain sends."""
        batch = self._batch
        if not batch:
            return
        try:
            if len(batch) == 1:
                for addr in self._batch_addrs:
                    self._sendto(batch[0], addr)
                return
            seg = self._batch_seg.to_bytes(2, sys.byteorder)  # the kernel reads a u16
            for addr in self._batch_addrs:
                if self._gso:
                    self._send_segmented(batch, seg, addr)
                else:
                    for packet in batch:
                        self._sendto(packet, addr)
        finally:
            batch.clear()

    def _send_segmented(self, batch: list[bytes], seg: bytes, addr: tuple[str, int]) -> None:
        try:
            self._sock.sendmsg(batch, [(socket.IPPROTO_UDP, _UDP_SEGMENT, seg)],  # type: ignore[union-attr]
                               0, addr)
        except OSError as e:
            if e.errno in _GSO_UNSUPPORTED:
                # The kernel, the route or the frame size (over the path MTU)
                # rules segmentation out: the plain path works everywhere.
                self._gso = False
                self.log.debug("UDP segmentation offload refused (%s): one send per datagram",
                               errno.errorcode.get(e.errno or 0, e))
                for packet in batch:
                    self._sendto(packet, addr)
                return
            self.stats["send_errors"] += 1
            self.log.debug("segmented send of %d datagrams to %s:%d failed: %s", len(batch),
                           addr[0], addr[1], errno.errorcode.get(e.errno or 0, e))
            return
        self.stats["gso_sends"] += 1
        self.stats["tx_packets"] += len(batch)
        self.stats["tx_bytes"] += self._batch_bytes

    def _sendto(self, packet: bytes, addr: tuple[str, int]) -> None:
        try:
            self._sock.sendto(packet, addr)  # type: ignore[union-attr]
        except OSError as e:
            self.stats["send_errors"] += 1
            self.log.debug("send to %s:%d failed: %s", addr[0], addr[1],
                           errno.errorcode.get(e.errno or 0, e))
            return
        self.stats["tx_packets"] += 1
        self.stats["tx_bytes"] += len(packet)

    # -- receiving -------------------------------------------------------------

    def _receive_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        hub = get_hub()
        watcher = self._watcher = hub.loop.io(sock.fileno(), 1)  # 1 = readable
        try:
            busy = self.busy
            srp = self.srp
            while self.state is TransportState.RUNNING:
                hub.wait(watcher)
                # What is waiting is read and given to the core first, and the
                # answers performed together: the sends (a token behind a run
                # of frames) leave before the deliveries of that run.
                actions: list[Action] = []
                try:
                    self._read_batch(sock, actions)
                finally:
                    if busy is not None and not srp.quiet_read:
                        # (an idle ring's token passing by is no reason to
                        # poll: its next visit is a rotation away)
                        busy.kick()
                    if actions and self.state is TransportState.RUNNING:
                        self._perform(actions)
        finally:
            self._watcher = None
            watcher.close()

    def _read_batch(self, sock: socket.socket, actions: list[Action]) -> None:
        """Read up to ``RECV_BATCH`` times; the core's answers join ``actions``.

        Every datagram read is opened first; the core then takes them all in
        one ``receive_many`` call (per-call costs once per read, not per frame).
        """
        plains: list[bytes] = []
        self._read_into(sock, plains)
        if plains and self.state is TransportState.RUNNING:
            try:
                actions.extend(self.srp.receive_many(plains, self.clock()))
            except BadPacket as e:  # the core counts garbage and never raises: a bug
                self.stats["bad_packet"] += 1
                self._bad_limit.log(self.log, logging.DEBUG, "bad packet: %s", e)

    def _read_into(self, sock: socket.socket, plains: list[bytes]) -> None:
        """Up to ``RECV_BATCH`` reads; each authentic datagram joins ``plains``."""
        for _ in range(RECV_BATCH):
            if self.state is not TransportState.RUNNING:
                return
            seg = 0
            try:
                if self._gro:
                    data, anc, _flags, src = sock.recvmsg(RECV_BYTES, _GRO_CMSG_SPACE)
                    for level, kind, value in anc:
                        if level == socket.IPPROTO_UDP and kind == _UDP_GRO \
                                and len(value) in (2, 4):
                            seg = int.from_bytes(value, sys.byteorder)
                else:
                    data, src = sock.recvfrom(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # e.g. a queued ICMP error; not about the next datagram
                self.log.debug("recvfrom: %s", e)
                continue
            if 0 < seg < len(data):
                # a coalesced run of datagrams from one sender, cut apart
                self.stats["gro_reads"] += 1
                if self._admit(src[0], len(data), -(-len(data) // seg)):
                    host = src[0]
                    run = self.crypto.open_run(data, seg)
                    if run is None:  # (not one clean run: each on its own)
                        for i in range(0, len(data), seg):
                            self._open(data[i:i + seg], host, plains)
                    else:
                        for plain in run:
                            self._accept(plain, host, plains)
            elif self._admit(src[0], len(data), 1):
                self._open(data, src[0], plains)

    def _admit(self, host: str, size: int, count: int) -> bool:
        """Count ``count`` datagrams (``size`` bytes) from ``host``; False: drop them."""
        if host == self.bind_addr:
            self.stats["own_dropped"] += count  # multicast loop is off; belt and braces
            return False
        self.stats["rx_packets"] += count
        self.stats["rx_bytes"] += size
        if self._peers is not None and host not in self._peers:
            self.stats["unknown_peer"] += count
            self._peer_limit.log(self.log, SECURITY, "dropped %d-byte packet from %s: "
                                 "not a configured member", size, host)
            return False
        return True

    def _open(self, data: bytes, host: str, plains: list[bytes]) -> None:
        """Authenticate and decrypt one datagram; what passes joins ``plains``."""
        try:
            plain = self.crypto.open_untrusted(data)
        except ReplayedPacket:
            self.stats["replayed"] += 1
            return
        except InvalidDigest:
            self.stats["invalid_digest"] += 1
            self._digest_limit.log(self.log, SECURITY,
                                   "invalid digest: dropped %d-byte packet from %s "
                                   "(another key?)", len(data), host)
            return
        self._accept(plain, host, plains)

    def _accept(self, plain: bytes, host: str, plains: list[bytes]) -> None:
        """An authentic datagram's plaintext joins ``plains`` unless it is a
        LEAVE naming another node than its sender."""
        if len(plain) >= PACKET_HEADER.size and plain[1] == LEAVE and \
                PACKET_HEADER.unpack_from(plain)[2] != node_of(host):
            self.stats["leave_refused"] += 1
            self._peer_limit.log(self.log, SECURITY, "dropped a leave message from %s naming "
                                 "another node", host)
            return
        plains.append(plain)

    # -- timers ----------------------------------------------------------------

    def _arm(self, kind: TimerKind, at: float) -> None:
        self._timer_at[kind] = at
        armed = self._timers.get(kind)
        if armed is not None:
            if armed[1] <= at:
                # The loop timer already armed comes first: it re-arms for the
                # rest when it fires (a ring's token-loss timer moves later on
                # every visit; this spares a loop timer each time).
                return
            armed[0].stop()
        w = get_hub().loop.timer(max(0.0, at - self.clock()))
        self._timers[kind] = (w, at)
        w.start(self._fire, kind, w)

    def _disarm(self, kind: TimerKind) -> None:
        armed = self._timers.pop(kind, None)
        if armed is not None:
            armed[0].stop()

    def _fire(self, kind: TimerKind, w: Any) -> None:
        armed = self._timers.get(kind)
        if armed is None or armed[0] is not w or self.state is not TransportState.RUNNING:
            return  # replaced or cancelled after it fell due
        at = self._timer_at[kind]
        if at - self.clock() > 0:
            # Moved later since it was armed; or the event loop's cached time
            # runs a hair ahead of ``clock``: the core must never see a timer
            # before its time.
            del self._timers[kind]
            self._arm(kind, at)
            return
        del self._timers[kind]
        self.stats["timers_fired"] += 1
        try:
            actions = self.srp.timer(kind, self.clock())
        except Exception as e:
            # In the hub, nobody else would hear of it: gevent only prints it.
            self._fatal(e)
            return
        self._perform_from_hub(actions)

    # -- performing actions ----------------------------------------------------

    def _drain_queued(self) -> None:
        self._drain_armed = False
        self._perform_from_hub([])

    def _perform_from_hub(self, actions: list[Action]) -> None:
        """Perform what a timer or ``mcast`` brought; we run in the hub, where
        nothing may block.  Sends and timers are performed at once; anything
        for the callbacks (they reach the services, which may block: AMF starts
        component processes) by the performer greenlet, in the same order.
        (A long-lived greenlet: spawning one costs ~15 us, waking one ~2.)"""
        if any(not isinstance(a, _HUB_SAFE) for a in self._pending) or \
                any(not isinstance(a, _HUB_SAFE) for a in actions):
            self._pending.extend(_sends_first(actions) if len(actions) > 1 else actions)
            if not self._performing:  # else the greenlet draining the queue does them
                self._performer_wake.set()
        else:
            self._perform_guarded(actions)

    def _perform_loop(self) -> None:
        wake = self._performer_wake
        while self.state is TransportState.RUNNING:
            wake.wait()
            wake.clear()
            self._perform_guarded([])

    def _perform_guarded(self, actions: list[Action]) -> None:
        if self.state is not TransportState.RUNNING:
            return
        try:
            self._perform(actions)
        except Exception as e:
            # Nobody else would hear of it: gevent only prints it.
            self._fatal(e)

    def _perform(self, actions: list[Action]) -> None:
        self._pending.extend(_sends_first(actions) if len(actions) > 1 else actions)
        if self._performing:
            return  # the greenlet already draining the queue will do these, in order
        self._performing = True
        try:
            while self._pending and self.state is TransportState.RUNNING:
                action = self._pending.popleft()
                if isinstance(action, Send):
                    self._send(action)
                    continue
                if self._batch:
                    self._flush()  # sends are never held back behind other actions
                if isinstance(action, Deliver):
                    self.stats["deliveries"] += 1
                    self.stats["deliver_bytes"] += len(action.payload)
                    self.on_deliver(action)
                elif isinstance(action, StartTimer):
                    self._arm(action.kind, action.at)
                elif isinstance(action, CancelTimer):
                    self._disarm(action.kind)
                elif isinstance(action, ConfChange):
                    self._confchg(action)
                elif isinstance(action, Stable):
                    if self.on_stable is not None:
                        self.on_stable(action)
                else:
                    raise TypeError(f"unknown action {action!r}")
            if self._batch and self.state is TransportState.RUNNING:
                self._flush()
            self._stream_limit = STREAM_FIRST
        finally:
            self._performing = False
            if self._batch and self.state is not TransportState.RUNNING:
                self._batch.clear()

    def _stream(self, action: Send) -> None:
        """``Srp.frame_sink``: a visit's new frames leave as they are framed.

        The first ``STREAM_FIRST`` go out at once, so the receivers start on
        them while the rest are framed and sealed; each later segmented send
        is twice as long, so a full visit still costs only a few system calls.
        """
        if self.state is not TransportState.RUNNING:
            return
        self._send(action)
        if action.dest is not None:
            self._flush()  # the token: it ends the visit
        elif len(self._batch) >= self._stream_limit:
            self._flush()
            self._stream_limit = min(2 * self._stream_limit, STREAM_MAX)

    def _send(self, action: Send) -> None:
        """Seal one packet and send it, or add it to the batch of a segmented send."""
        dest = action.dest
        if dest is None:
            addrs = self._everyone_t
        elif dest == self.node_id:
            return
        else:
            addrs = self._unicast.get(dest)  # type: ignore[assignment]
            if addrs is None:
                addrs = self._unicast[dest] = ((fmt_node(dest), self.port),)
        packet = self.crypto.seal(action.data)
        if not self._gso:
            for addr in addrs:
                self._sendto(packet, addr)
            return
        batch = self._batch
        size = len(packet)
        if batch and (addrs != self._batch_addrs or self._batch_closed or size > self._batch_seg
                      or len(batch) >= GSO_MAX_SEGMENTS
                      or self._batch_bytes + size > GSO_MAX_BYTES):
            self._flush()
        if not batch:
            self._batch_addrs, self._batch_seg = addrs, size
            self._batch_bytes, self._batch_closed = 0, False
        batch.append(packet)
        self._batch_bytes += size
        if size < self._batch_seg:
            self._batch_closed = True  # a segmented send may end with a shorter datagram only

    def _confchg(self, conf: ConfChange) -> None:
        self.stats["confchanges"] += 1
        if not conf.transitional and self.state_file is not None:
            seq = self.srp.max_ring_seq
            if seq != self._saved_seq:
                try:
                    save_ring_seq(self.state_file, seq)
                    self._saved_seq = seq
                except OSError as e:
                    self.stats["state_errors"] += 1
                    self._state_limit.log(self.log, logging.ERROR,
                                          "cannot save ring state to %s: %s",
                                          self.state_file, e.strerror or e)
        self.on_confchg(conf)

    # -- supervision -------------------------------------------------------------

    def _died(self, g: Greenlet) -> None:
        exc = g.exception
        assert exc is not None
        self._fatal(exc)

    def _fatal(self, exc: BaseException) -> None:
        self.log.error("totem transport failed: %r", exc,
                       exc_info=(type(exc), exc, exc.__traceback__))
        self.stop()
        self.on_fatal(exc)


__all__ = ["SrpLike", "Transport", "TransportState", "load_ring_seq", "save_ring_seq"]
