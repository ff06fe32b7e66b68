"""A simulated network that drives many ``Srp`` nodes in one process.

Theory of operation
-------------------
One ``random.Random(seed)`` decides everything: start times, per-packet loss,
duplication and delay, the fault schedule, which node a fault hits, and when
applications multicast.  Time is virtual: a heap of ``(time, counter, ...)``
entries holds packets in flight, armed protocol timers, application sends and
fault events, and the clock jumps to the earliest.  The counter breaks ties in
insertion order, so a seed gives one schedule and a byte-identical trace.

Nodes (spec/totem.md "Test scenarios")
    Node ``i`` (1-based) has id 10.0.0.i; ring order is id order.  Each node is
    an ``Srp`` built with the ring sequence kept on its "disk" (re-read after
    every call into the core), so a restarted node never reuses ring ids.  A
    crash drops the ``Srp`` and everything addressed to that incarnation; a
    restart makes a new incarnation (EVS: a new processor).  A paused node
    holds every event that comes due (packets, timers, its application) and
    runs them, in order, when it resumes.

Timers
    ``StartTimer`` bumps a per-node, per-kind generation number and pushes an
    entry carrying it; ``CancelTimer`` bumps it too.  An entry whose generation
    (or incarnation) is stale when it pops is skipped, so re-arming is O(log n)
    and cancelling O(1).

Network
    ``Send(dest=None)`` reaches every other node, ``Send(dest=X)`` only X, and
    never the sender.  Each copy is dropped with probability ``loss``,
    duplicated with ``dup``, delayed by ``delay`` plus, with probability
    ``reorder``, up to ``reorder_delay`` more.  Partitions split the nodes into
    2 or 3 groups for 1-4 s; a flapping link goes down and up for a few
    seconds.  Crashes hit random nodes at random times, or (``state_crashes``)
    a node just entering gather, commit or recovery.  With ``crypto`` every
    packet is sealed by its sender and opened by its receiver
    (``ais/totem/crypto.py``), and ``corrupt`` flips a byte.
    One faulty link (``fault_link``, else drawn at random) can lose packets in
    one direction only (``oneway_loss``) and drop those over ``size_limit``
    bytes, for the whole fault phase.

Load
    By default each node multicasts ``messages`` at random times.  With
    ``sync_writers`` the first nodes write synchronously instead: the next
    message only once the previous one is acknowledged (delivered back to the
    writer, or with ``sync_ack="all"`` by every node up); ``run_sync`` counts
    acknowledged writes in simulated time (bench/totem_bench.py --sync).

Extra checks
    ``progress``: during a link fault, messages of the nodes the link does
    not lead to must reach each other within that many seconds.
    ``resume_check``: nodes never paused never install a ring without one
    another, and install at most one regular configuration from a resume
    (that leaves no node paused) to the next pause.

Phases
    Faults happen only in the fault phase (``duration`` seconds, extended to
    the end of the last pause/partition).  Then the quiet phase: no loss, no
    partitions, paused nodes resumed, each crashed node restarted or left down
    by a coin toss.  Liveness (spec "guarantees" 12) must then hold within
    ``settle`` seconds: one regular configuration of exactly the live nodes,
    after which every live node multicasts a probe that all must deliver, and
    every live incarnation must have delivered all it submitted.  The run stops
    as soon as that holds, and the recorded histories go through
    ``invariants.check``.

Output
    ``run(seed, options)`` returns a ``RunResult``; ``python -m ais.totem.sim``
    sweeps seeds and prints one line per run, the violations with the replay
    command, and ``N runs, M violations`` (M counts runs with at least one
    violation; the exit status is 1 when M > 0).  ``--seed N`` replays one run
    with the full trace, the core's log lines included.
"""
from __future__ import annotations

import argparse
import heapq
import importlib
import importlib.util
import logging
import random
import struct
import sys
import traceback
import zlib
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from ais.totem.events import (
    CancelTimer, ConfChange, Deliver, RingId, Send, SendQueueFull, Stable, StartTimer, TimerKind,
    TotemConfig, fmt_node, node_of,
)
from ais.totem.invariants import Delivered, History, ProcId, Violation, check, check_liveness

#: application payload header: sender node id, incarnation, counter
MSG_HEADER = struct.Struct("!III")

#: padding source; a message's padding is a slice of it chosen by its counter,
#: so a delivered payload can be compared with what was submitted
_PAD = bytes(range(256))

_MEMBERSHIP_STATES = frozenset({"GATHER", "COMMIT", "RECOVERY"})

_PACKET_NAMES = {1: "mcast", 2: "token", 3: "join", 4: "commit", 5: "merge", 6: "wake", 7: "leave",
                 8: "ack"}

# heap entry kinds
_PKT, _TIMER, _APP, _FAULT, _CHECK = range(5)


class MsgKey(NamedTuple):
    """Identity of one submitted message: (node id, incarnation, counter)."""

    node: int
    inc: int
    n: int

    def __repr__(self) -> str:
        return f"{fmt_node(self.node)}#{self.inc}:{self.n}"


@dataclass
class SimOptions:
    """One run's parameters.  Probabilities are per packet copy; times in seconds."""

    #: number of nodes (ids 10.0.0.1 ...)
    nodes: int = 3
    #: probability that a packet copy is lost (fault phase only)
    loss: float = 0.0
    #: probability that a packet copy is delivered twice (fault phase only)
    dup: float = 0.0
    #: probability that a packet copy gets up to ``reorder_delay`` extra delay
    reorder: float = 0.0
    #: largest extra delay of a reordered packet
    reorder_delay: float = 0.005
    #: base one-way delay, uniform in this range
    delay: tuple[float, float] = (0.0001, 0.0005)
    #: partition episodes during the fault phase
    partitions: int = 0
    #: flapping-link episodes during the fault phase
    flaps: int = 0
    #: node crashes during the fault phase
    crashes: int = 0
    #: crashes aimed at nodes entering gather, commit or recovery (each transition
    #: into one of those states triggers one with probability 0.3, until used up)
    state_crashes: int = 0
    #: node pauses (2-5 s each) during the fault phase
    pauses: int = 0
    #: application messages per node, spread over the fault phase
    messages: int = 200
    #: payload bytes per application message (at least the 12-byte header)
    size: int = 100
    #: length of the fault phase
    duration: float = 10.0
    #: liveness bound: time after the fault phase for everything to settle
    settle: float = 30.0
    #: spread of the nodes' start times (0: simultaneous start)
    start_spread: float = 0.05
    #: seal/open every packet with ais/totem/crypto.py
    crypto: bool = False
    #: probability that a packet copy gets one byte flipped (only with crypto)
    corrupt: float = 0.0
    #: protocol parameters (None: TotemConfig defaults)
    config: TotemConfig | None = None
    #: hard bound on processed events
    max_steps: int = 5_000_000
    #: check invariants at the end (the benchmark turns this off)
    check: bool = True
    #: keep the full trace (else only the last ``trace_tail`` lines)
    full_trace: bool = False
    #: lines kept when not keeping the full trace (0: no tracing at all)
    trace_tail: int = 200
    #: stop once the application load is delivered everywhere (benchmark mode:
    #: no quiet phase, no liveness probes)
    stop_when_delivered: bool = False
    #: probability that a packet copy on the faulty link (``fault_link``) is lost,
    #: in that direction only, for the whole fault phase
    oneway_loss: float = 0.0
    #: packets larger than this many bytes on the faulty link are dropped, in that
    #: direction only, for the whole fault phase (0: no size-dependent loss)
    size_limit: int = 0
    #: the faulty link as (source, destination) node numbers, 1-based; 0 picks one
    #: at random (only drawn when ``oneway_loss`` or ``size_limit`` is set)
    fault_link: tuple[int, int] = (0, 0)
    #: the first N nodes write synchronously: each multicasts its next message only
    #: when the previous one is acknowledged (``sync_ack``), up to ``messages``; the
    #: other nodes send nothing
    sync_writers: int = 0
    #: a synchronous write is acknowledged when ``self``: its sender delivers it;
    #: ``all``: every node up delivers it; ``stable``: its sender learns that every
    #: member holds it (a ``Stable`` covering it, or the transitional configuration
    #: after it), as a checkpoint write is answered
    sync_ack: str = "self"
    #: progress during the fault phase (0: not checked): a message that a node
    #: outside the faulty link's destination submits between 2 s (and the first
    #: ring of all nodes) and ``progress`` seconds before the quiet phase must
    #: reach every such node within
    #: ``progress`` seconds (runs without crashes, pauses or partitions)
    progress: float = 0.0
    #: check what pauses cost the nodes never paused (runs without crashes or
    #: partitions): they never install a ring without one another, and install
    #: at most one regular configuration from a resume to the next pause
    resume_check: bool = False

    def to_args(self) -> list[str]:
        """Command-line flags that reproduce these options (non-defaults only)."""
        return options_to_args(self, SimOptions(), _NOT_CLI)


_NOT_CLI = {"config", "max_steps", "check", "full_trace", "trace_tail", "stop_when_delivered",
            "sync_writers", "sync_ack"}


def options_to_args(opts: Any, default: Any, not_cli: set[str]) -> list[str]:
    """Flags that reproduce the dataclass ``opts`` where it differs from ``default``."""
    out: list[str] = []
    for f in fields(opts):
        name = f.name
        if name in not_cli:
            continue
        val = getattr(opts, name)
        if val == getattr(default, name):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(val, bool):
            out.append(flag if val else "--no-" + flag[2:])
        elif isinstance(val, tuple):
            out += [flag, ",".join(repr(v) for v in val)]
        else:
            out += [flag, repr(val) if isinstance(val, float) else str(val)]
    return out


@dataclass
class RunResult:
    """What one run produced."""

    seed: int
    options: SimOptions
    #: virtual time at the end of the run
    time: float = 0.0
    steps: int = 0
    #: packet copies put on the network
    packets: int = 0
    #: Deliver actions, over all nodes
    deliveries: int = 0
    #: distinct messages delivered at least once
    messages_delivered: int = 0
    #: payload bytes of those distinct messages
    bytes_delivered: int = 0
    #: distinct regular ring ids installed
    configurations: int = 0
    #: virtual time at which liveness held (None: it did not, or not checked)
    settled_at: float | None = None
    #: acknowledged synchronous writes (``sync_writers``)
    writes: int = 0
    #: most regular configurations any node installed after its first one of all nodes
    reformations: int = 0
    violations: list[Violation] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    histories: dict[ProcId, History] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def line(self) -> str:
        """One summary line."""
        res = "ok" if self.ok else "VIOLATION " + ",".join(
            sorted({v.invariant for v in self.violations}))
        settled = "-" if self.settled_at is None else f"{self.settled_at:.1f}s"
        return (f"seed {self.seed}: nodes {self.options.nodes} t={self.time:.1f}s "
                f"settled={settled} packets {self.packets} deliveries {self.deliveries} "
                f"confs {self.configurations} steps {self.steps}: {res}")

    def replay(self) -> str:
        """The command that replays this run with a full trace."""
        return " ".join(["python -m ais.totem.sim", "--seed", str(self.seed),
                         *self.options.to_args()])

    def report(self, tail: int = 30) -> str:
        """Violations, the last trace lines and the replay command."""
        out = [f"seed {self.seed}: {len(self.violations)} violation(s)"]
        out += [f"  {v}" for v in self.violations]
        out.append(f"  last {min(tail, len(self.trace))} trace lines:")
        out += [f"    {ln}" for ln in self.trace[-tail:]]
        out.append(f"  replay: {self.replay()}")
        return "\n".join(out)


class _Node:
    """Simulator-side state of one node id across its incarnations."""

    __slots__ = ("id", "name", "srp", "inc", "paused", "held", "gens", "hist", "crypto",
                 "disk", "state")

    def __init__(self, node_id: int, name: str) -> None:
        self.id = node_id
        self.name = name
        self.srp: Any = None  # the live Srp, None while down
        self.inc = -1  # incarnation number; -1 before the first start
        self.paused = False
        self.held: list[tuple] = []
        self.gens: dict[TimerKind, int] = {}
        #: the current incarnation's history (this placeholder is never recorded)
        self.hist = History(node_id, -1)
        self.crypto: Any = None
        self.disk = 0  # srp.max_ring_seq survives crashes
        self.state = ""


class _TraceLog:
    """Stands in for the core's logger in full-trace runs: its lines join the trace."""

    def __init__(self, sim: Simulation, node: _Node) -> None:
        self._sim, self._node = sim, node

    def _log(self, level: str, msg: str, *args: Any, **_: Any) -> None:
        self._sim.tr(self._node, f"{level}: {msg % args if args else msg}")

    def debug(self, msg: str, *args: Any, **kw: Any) -> None:
        self._log("debug", msg, *args)

    def info(self, msg: str, *args: Any, **kw: Any) -> None:
        self._log("info", msg, *args)

    def warning(self, msg: str, *args: Any, **kw: Any) -> None:
        self._log("warning", msg, *args)

    def error(self, msg: str, *args: Any, **kw: Any) -> None:
        self._log("error", msg, *args)

    exception = error

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 (logging's name)
        return True


def _load_srp() -> type:
    from ais.totem.srp import Srp  # imported late: the simulator's tests run without it
    return Srp


def crypto_available() -> bool:
    """Whether ais/totem/crypto.py is present (and its dependencies import)."""
    if importlib.util.find_spec("ais.totem.crypto") is None:
        return False
    try:
        importlib.import_module("ais.totem.crypto")
    except ImportError:
        return False
    return True


def payload_of(key: MsgKey, size: int) -> bytes:
    """The bytes submitted for message ``key``: header, then padding up to ``size``."""
    pad = max(size, MSG_HEADER.size) - MSG_HEADER.size
    start = key.n & 255
    reps = (start + pad) // 256 + 1
    body = (_PAD * reps)[start:start + pad] if pad else b""
    return MSG_HEADER.pack(key.node, key.inc, key.n) + body


class Simulation:
    """One seeded run.  Use ``run()`` unless you need to poke at the internals."""

    def __init__(self, seed: int, options: SimOptions,
                 srp_factory: Callable[..., Any] | None = None) -> None:
        self.seed = seed
        self.o = options
        self.rng = random.Random(seed)
        self.config = options.config or TotemConfig()
        self.factory = srp_factory or _load_srp()
        self.heap: list[tuple] = []
        self.counter = 0
        self.now = 0.0
        self.steps = 0
        self.nodes: dict[int, _Node] = {}
        for i in range(1, options.nodes + 1):
            nid = node_of(f"10.0.0.{i}") if i < 255 else node_of(f"10.0.{i // 250}.{i % 250 + 1}")
            self.nodes[nid] = _Node(nid, f"n{i}")
        self.ids = sorted(self.nodes)
        self.histories: dict[ProcId, History] = {}
        self.result = RunResult(seed, options)
        # network state
        self.loss, self.dup, self.reorder = options.loss, options.dup, options.reorder
        self.corrupt = options.corrupt if options.crypto else 0.0
        self.group: dict[int, int] = {n: 0 for n in self.ids}
        self.cut: set[tuple[int, int]] = set()
        self.faults_on = True
        self.quiet_at = 0.0
        self.deadline = 0.0
        self.probes: list[MsgKey] = []
        self.probes_sent = False
        self.done = False
        self.violations: list[Violation] = []
        self.crypto_mod: Any = None
        if options.crypto:
            from ais.totem import crypto as crypto_mod
            self.crypto_mod = crypto_mod
            self.authkey = bytes(self.rng.getrandbits(8) for _ in range(128))
        if options.full_trace:
            self.trace: list[str] | deque[str] | None = []
        elif options.trace_tail:
            self.trace = deque(maxlen=options.trace_tail)
        else:
            self.trace = None
        self.packets = 0
        self.deliveries = 0
        self.delivered_once: set[Hashable] = set()
        self.bytes_once = 0
        self.rings: set[RingId] = set()
        self.state_crashes = options.state_crashes
        #: nodes with a restart scheduled for the quiet phase
        self.restarting: set[int] = set()
        #: the faulty link (src, dst) of one-way and size-dependent loss, or None
        self.link: tuple[int, int] | None = None
        #: synchronous writers: node id -> key of the write awaiting its acknowledgement
        self.writers: dict[int, MsgKey | None] = {}
        self.acks: dict[MsgKey, set[int]] = {}
        #: sync_ack "stable": writer -> (its write delivered there, that ring, Deliver.seq)
        self.unstable: dict[int, tuple[MsgKey, RingId, int]] = {}
        #: acknowledged synchronous writes
        self.writes = 0
        #: (progress check) submission time per message, first delivery time per (node, msg)
        self.sub_time: dict[Hashable, float] = {}
        self.dlv_time: dict[tuple[int, Hashable], float] = {}
        #: (resume check) regular configurations as (time, node id, members), pause
        #: and resume times, nodes ever paused
        self.confs: list[tuple[float, int, tuple[int, ...]]] = []
        self.pause_log: list[tuple[float, str]] = []
        self.paused_ever: set[int] = set()

    # -- plumbing ------------------------------------------------------------

    def push(self, at: float, *entry: Any) -> None:
        self.counter += 1
        heapq.heappush(self.heap, (at, self.counter, *entry))

    def tr(self, node: _Node | None, text: str) -> None:
        if self.trace is not None:
            who = node.name if node is not None else "--"
            self.trace.append(f"{self.now:11.6f} {who:>4} {text}")

    def describe(self, data: bytes) -> str:
        kind = _PACKET_NAMES.get(data[1], "?") if len(data) > 1 else "?"
        if self.o.full_trace:
            return f"{kind} {len(data)}B crc {zlib.crc32(data):08x}"
        return f"{kind} {len(data)}B"

    # -- building the schedule -----------------------------------------------

    def schedule(self) -> None:
        o, rng = self.o, self.rng
        self.tr(None, "nodes " + " ".join(f"{self.nodes[i].name}={fmt_node(i)}"
                                          for i in self.ids))
        for nid in self.ids:
            self.push(rng.uniform(0, o.start_spread), _FAULT, "start", nid)
        window = max(o.duration * 0.9, 0.001)
        if o.oneway_loss or o.size_limit:
            a, b = o.fault_link
            if not a or not b or a == b or max(a, b) > len(self.ids):
                a, b = (i + 1 for i in rng.sample(range(len(self.ids)), 2))
            self.link = (self.ids[a - 1], self.ids[b - 1])
            self.tr(None, f"faulty link {self.names(self.link)}: one-way loss {o.oneway_loss} "
                    f"size limit {o.size_limit or '-'}")
        if o.sync_writers:
            for nid in self.ids[:o.sync_writers]:
                self.writers[nid] = None
                self.push(0.05, _APP, nid)
        else:
            for nid in self.ids:
                for _ in range(o.messages):
                    self.push(rng.uniform(0.05, window), _APP, nid)
        ends = [o.duration]
        t = 0.0
        for _ in range(o.partitions):
            t += rng.uniform(0.2, max(0.3, o.duration / max(o.partitions, 1)))
            if t >= o.duration:
                break
            heal = t + rng.uniform(1.0, 4.0)
            self.push(t, _FAULT, "partition", 0)
            self.push(heal, _FAULT, "heal", 0)
            ends.append(heal)
            t = heal
        for _ in range(o.flaps):
            t0 = rng.uniform(0, o.duration)
            a, b = rng.sample(self.ids, 2) if len(self.ids) > 1 else (self.ids[0],) * 2
            t1 = t0
            end = t0 + rng.uniform(2.0, 5.0)
            down = True
            while t1 < end:
                self.push(t1, _FAULT, "cut" if down else "uncut", (a, b))
                down = not down
                t1 += rng.uniform(0.05, 0.8)
            self.push(end, _FAULT, "uncut", (a, b))
            ends.append(end)
        for _ in range(o.crashes):
            self.push(rng.uniform(0.1, o.duration), _FAULT, "crash", None)
        for _ in range(o.pauses):
            t0 = rng.uniform(0.1, o.duration)
            length = rng.uniform(2.0, 5.0)
            self.push(t0, _FAULT, "pause", length)
            ends.append(t0 + length)
        self.quiet_at = max(ends)
        if not o.stop_when_delivered:
            self.push(self.quiet_at, _FAULT, "quiet", 0)
        self.deadline = self.quiet_at + o.settle

    # -- the event loop ------------------------------------------------------

    def run(self) -> RunResult:
        self.schedule()
        heap, nodes = self.heap, self.nodes
        pop = heapq.heappop
        max_steps = self.o.max_steps
        deadline = self.deadline
        try:
            while heap and not self.done:
                entry = pop(heap)
                t = entry[0]
                if t > deadline:
                    break
                self.steps += 1
                if self.steps > max_steps:
                    self.violations.append(Violation(
                        "liveness", f"step bound {max_steps} reached at t={self.now:.3f}"))
                    break
                self.now = t
                kind = entry[2]
                if kind == _PKT or kind == _TIMER or kind == _APP:
                    node = nodes[entry[3]]
                    if node.srp is None:
                        continue
                    if kind == _TIMER and (entry[4] != node.inc
                                           or node.gens.get(entry[5]) != entry[6]):
                        continue  # an older incarnation's, or re-armed / cancelled since
                    if node.paused:
                        node.held.append(entry)
                        continue
                    if kind == _PKT:
                        self.on_packet(node, entry[4], entry[5])
                    elif kind == _TIMER:
                        node.gens[entry[5]] = entry[6] + 1  # fired: no longer armed
                        self.tr(node, f"timer {entry[5].value}")
                        self.call(node, node.srp.timer, entry[5])
                    else:
                        self.on_app(node)
                elif kind == _FAULT:
                    getattr(self, "f_" + entry[3])(entry[4])
                elif kind == _CHECK:
                    self.on_check()
            else:
                if not self.done and not self.o.stop_when_delivered and not self.violations:
                    self.violations.append(Violation("liveness", "event queue ran dry"))
        except Exception:  # a bug in the core (or here): report it as this run's failure
            tb = traceback.format_exc().rstrip().splitlines()
            self.tr(None, "EXCEPTION " + tb[-1])
            self.violations.append(Violation("exception", " | ".join(tb[-6:])))
        return self.finish()

    def call(self, node: _Node, fn: Callable[..., list], *args: Any) -> None:
        """Call into the core and carry out its actions."""
        acts = fn(*args, self.now)
        srp = node.srp
        node.disk = srp.max_ring_seq
        self.perform(node, acts)
        st = getattr(srp.state, "name", None) or str(srp.state)
        if st != node.state:
            self.tr(node, f"state {node.state or '-'} -> {st} ring {srp.ring_id}")
            node.state = st
            if (self.state_crashes and self.faults_on and st in _MEMBERSHIP_STATES
                    and self.rng.random() < 0.3):
                # a crash in the middle of a membership change (spec: "a crash
                # during gather, commit and recovery")
                self.state_crashes -= 1
                self.push(self.now + self.rng.uniform(0.0, 0.003), _FAULT, "crash",
                          (node.id, node.inc))

    def perform(self, node: _Node, acts: Iterable[Any]) -> None:
        for a in acts:
            t = type(a)
            if t is Send:
                self.send(node, a.data, a.dest)
            elif t is StartTimer:
                gen = node.gens.get(a.kind, 0) + 1
                node.gens[a.kind] = gen
                self.push(a.at if a.at > self.now else self.now, _TIMER, node.id, node.inc,
                          a.kind, gen)
            elif t is CancelTimer:
                node.gens[a.kind] = node.gens.get(a.kind, 0) + 1
            elif t is Deliver:
                self.on_deliver(node, a)
            elif t is Stable:
                self._check_stable(node, a)
                # safe-delivery progress: acknowledges "stable" synchronous writes
                w = self.unstable.get(node.id)
                if w is not None and w[1] == a.ring_id and w[2] <= a.seq:
                    del self.unstable[node.id]
                    self._ack(node, w[0])
            elif t is ConfChange:
                w = self.unstable.pop(node.id, None) if a.transitional else None
                if w is not None:
                    self._ack(node, w[0])  # recovery gave its members all of the old ring
                node.hist.events.append(a)
                if not a.transitional:
                    self.rings.add(a.ring_id)
                    self.confs.append((self.now, node.id, a.members))
                self.tr(node, f"{'TRANS' if a.transitional else 'CONF'} {a.ring_id} members "
                        f"{self.names(a.members)} left {self.names(a.left)} "
                        f"joined {self.names(a.joined)}")
            else:
                raise TypeError(f"unknown action {a!r}")

    def names(self, ids: Iterable[int]) -> str:
        return "[" + ",".join(self.nodes[i].name if i in self.nodes else fmt_node(i)
                              for i in ids) + "]"

    def send(self, node: _Node, data: bytes, dest: int | None) -> None:
        rng = self.rng
        src = node.id
        if self.trace is not None:
            self.tr(node, f"send {self.describe(data)} to "
                    f"{'all' if dest is None else self.names((dest,))}")
        wire = node.crypto.seal(data) if node.crypto is not None else data
        targets: Sequence[int] = self.ids if dest is None else (dest,)
        lo, hi = self.o.delay
        for dst in targets:
            if dst == src or dst not in self.nodes:
                continue
            self.packets += 1
            if self.group[src] != self.group[dst] or (src, dst) in self.cut:
                continue
            if self.loss and rng.random() < self.loss:
                continue
            if (src, dst) == self.link and self.faults_on and (
                    (self.o.size_limit and len(wire) > self.o.size_limit)
                    or (self.o.oneway_loss and rng.random() < self.o.oneway_loss)):
                continue
            copies = 2 if self.dup and rng.random() < self.dup else 1
            for _ in range(copies):
                delay = rng.uniform(lo, hi)
                if self.reorder and rng.random() < self.reorder:
                    delay += rng.uniform(0, self.o.reorder_delay)
                pkt = wire
                if self.corrupt and rng.random() < self.corrupt:
                    i = rng.randrange(len(pkt))
                    pkt = pkt[:i] + bytes([pkt[i] ^ (1 + rng.randrange(255))]) + pkt[i + 1:]
                self.push(self.now + delay, _PKT, dst, src, pkt)

    def on_packet(self, node: _Node, src: int, data: bytes) -> None:
        if self.group[src] != self.group[node.id] or (src, node.id) in self.cut:
            return  # the partition started while it was in flight
        if node.crypto is not None:
            try:
                data = node.crypto.open_untrusted(data)
            except self.crypto_mod.BadPacket as e:
                self.tr(node, f"drop from {self.nodes[src].name}: {type(e).__name__}")
                return
        if self.trace is not None:
            self.tr(node, f"recv {self.describe(data)} from {self.nodes[src].name}")
        self.call(node, node.srp.receive, data)

    def on_deliver(self, node: _Node, d: Deliver) -> None:
        self.deliveries += 1
        p = d.payload
        key: Hashable
        if len(p) >= MSG_HEADER.size:
            key = MsgKey(*MSG_HEADER.unpack_from(p))
            if key.node != d.sender or p != payload_of(key, self.o.size):
                key = ("garbled", d.sender, zlib.crc32(p), len(p))
        else:
            key = ("garbled", d.sender, zlib.crc32(p), len(p))
        node.hist.events.append(Delivered(d.sender, key, d.ring_id))
        if self.o.progress:
            self.dlv_time.setdefault((node.id, key), self.now)
        if self.writers and isinstance(key, MsgKey) and self.writers.get(key.node) == key:
            self._ack(node, key, d)
        if key not in self.delivered_once:
            self.delivered_once.add(key)
            self.bytes_once += len(p)
        if self.trace is not None:
            self.tr(node, f"deliver {key!r} ring {d.ring_id}")

    def _ack(self, node: _Node, key: MsgKey, d: Deliver | None = None) -> None:
        """A delivery ``d`` of a synchronous write (None: its stability at its
        sender): acknowledge it once its mode is met."""
        mode = self.o.sync_ack
        if mode in ("self", "stable"):
            if node.id != key.node:
                return
            if mode == "stable" and d is not None and d.seq:
                self.unstable[node.id] = (key, d.ring_id, d.seq)  # wait for the Stable
                return
        else:
            got = self.acks.setdefault(key, set())
            got.add(node.id)
            if any(n.id not in got for n in self.up()):
                return
            del self.acks[key]
        self.writers[key.node] = None
        self.writes += 1
        writer = self.nodes[key.node]
        if (writer.srp is not None and writer.inc == key.inc
                and len(writer.hist.submitted) < self.o.messages):
            self.push(self.now, _APP, key.node)

    def on_app(self, node: _Node, probe: bool = False) -> bool:
        """The application on ``node`` multicasts its next message."""
        hist = node.hist
        key = MsgKey(node.id, node.inc, len(hist.submitted))
        if not probe and node.id in self.writers:
            if self.writers[node.id] is not None or len(hist.submitted) >= self.o.messages:
                return False
            self.writers[node.id] = key
        self.tr(node, f"mcast {key!r}{' (probe)' if probe else ''}")
        try:
            # a synchronous writer waits for its message: the core may keep the
            # token for its next one (writer_hold)
            awaited = node.id in self.writers and not probe
            self.call(node, lambda p, now: node.srp.mcast(p, now, awaited),
                      payload_of(key, self.o.size))
        except SendQueueFull:
            self.tr(node, f"mcast {key!r}: queue full, will retry")
            if node.id in self.writers and not probe:
                self.writers[node.id] = None
            if not probe:
                self.push(self.now + self.rng.uniform(0.05, 0.2), _APP, node.id)
            return False
        hist.submitted.append(key)
        if self.o.progress:
            self.sub_time[key] = self.now
        if probe:
            self.probes.append(key)
        return True

    # -- faults --------------------------------------------------------------

    def _check_stable(self, node: _Node, s: Stable) -> None:
        """A ``Stable`` promises that every member of its ring holds every frame up
        to its seq: each running member still on that ring's store must have it."""
        if len(self.violations) > 20:
            return
        for other in self.up():
            rx = getattr(other.srp, "rx", None)
            if other is node or rx is None or rx.ring_id != s.ring_id or rx.aru >= s.seq:
                continue
            self.violations.append(Violation(
                "stable", f"{node.name} reported every frame up to {s.seq} of ring "
                f"{s.ring_id} held by every member at {self.now:.6f}, but {other.name} "
                f"has them only up to {rx.aru}"))

    def up(self) -> list[_Node]:
        return [self.nodes[i] for i in self.ids if self.nodes[i].srp is not None]

    def f_start(self, nid: int) -> None:
        node = self.nodes[nid]
        node.inc += 1
        if self.o.full_trace:
            node.srp = self.factory(nid, self.config, ring_seq=node.disk,
                                    log=_TraceLog(self, node))
        else:
            node.srp = self.factory(nid, self.config, ring_seq=node.disk)
        if nid % 2 and hasattr(node.srp, "frame_sink"):
            # Half the nodes stream their frames like the real transport does.
            node.srp.frame_sink = lambda a, node=node: self.send(node, a.data, a.dest)
        node.gens = {}
        node.held = []
        node.paused = False
        node.state = ""
        node.hist = History(nid, node.inc)
        self.histories[(nid, node.inc)] = node.hist
        if self.o.crypto:
            node.crypto = self.crypto_mod.Crypto(self.authkey)
        self.tr(node, f"start incarnation {node.inc} ring_seq {node.disk}")
        self.call(node, node.srp.start)
        if nid in self.writers and node.inc:
            self.writers[nid] = None
            self.push(self.now + 0.05, _APP, nid)

    def f_crash(self, target: tuple[int, int] | None) -> None:
        """Crash ``target`` (node id, incarnation) if still up, or a random node."""
        if not self.faults_on:
            return
        up = self.up()
        if len(up) < 2:
            return
        if target is None:
            node = self.rng.choice(up)
        else:
            node = self.nodes[target[0]]
            if node.srp is None or node.inc != target[1]:
                return
        node.srp = None
        node.held = []
        node.paused = False
        node.hist.crashed = True
        self.tr(node, f"CRASH incarnation {node.inc}")
        restart = self.now + self.rng.uniform(0.5, 6.0)
        if restart < self.quiet_at:
            self.push(restart, _FAULT, "restart", (node.id, node.inc))

    def f_restart(self, arg: tuple[int, int]) -> None:
        nid, inc = arg
        node = self.nodes[nid]
        self.restarting.discard(nid)
        if node.srp is None and node.inc == inc:
            self.f_start(nid)

    def f_pause(self, length: float) -> None:
        if not self.faults_on:
            return
        cands = [n for n in self.up() if not n.paused]
        if not cands:
            return
        self.pause(self.rng.choice(cands), length)

    def pause(self, node: _Node, length: float) -> None:
        """Stop ``node`` for ``length`` seconds: what reaches it waits (``f_resume``)."""
        node.paused = True
        self.paused_ever.add(node.id)
        self.pause_log.append((self.now, "pause"))
        self.tr(node, f"PAUSE for {length:.2f}s")
        self.push(self.now + length, _FAULT, "resume", (node.id, node.inc))

    def f_resume(self, arg: tuple[int, int]) -> None:
        nid, inc = arg
        node = self.nodes[nid]
        if node.srp is None or node.inc != inc or not node.paused:
            return
        node.paused = False
        self.pause_log.append((self.now, "resume"))
        held, node.held = node.held, []
        self.tr(node, f"RESUME with {len(held)} held events")
        for entry in held:  # in the order they came due
            self.push(self.now, *entry[2:])

    def f_partition(self, _: Any) -> None:
        if not self.faults_on or len(self.ids) < 2:
            return
        rng = self.rng
        k = 3 if len(self.ids) >= 3 and rng.random() < 0.4 else 2
        order = self.ids[:]
        rng.shuffle(order)
        groups = {nid: (i if i < k else rng.randrange(k)) for i, nid in enumerate(order)}
        self.group = groups
        parts = [[n for n in self.ids if groups[n] == g] for g in range(k)]
        self.tr(None, "PARTITION " + " | ".join(self.names(p) for p in parts))

    def f_heal(self, _: Any) -> None:
        self.group = {n: 0 for n in self.ids}
        self.tr(None, "HEAL")

    def f_cut(self, pair: tuple[int, int]) -> None:
        if not self.faults_on:
            return
        a, b = pair
        self.cut |= {(a, b), (b, a)}
        self.tr(None, f"LINK DOWN {self.names(pair)}")

    def f_uncut(self, pair: tuple[int, int]) -> None:
        a, b = pair
        self.cut -= {(a, b), (b, a)}
        self.tr(None, f"LINK UP {self.names(pair)}")

    def f_quiet(self, _: Any) -> None:
        """End of the fault phase: a fair network from now on."""
        self.faults_on = False
        self.loss = self.dup = self.reorder = self.corrupt = 0.0
        self.group = {n: 0 for n in self.ids}
        self.cut = set()
        self.tr(None, "QUIET: faults stop")
        for nid in self.ids:
            node = self.nodes[nid]
            if node.paused:
                self.f_resume((nid, node.inc))
        down = [self.nodes[i] for i in self.ids if self.nodes[i].srp is None]
        for node in down:
            if self.rng.random() < 0.5 or len(down) == len(self.ids):
                self.push(self.now + self.rng.uniform(0.0, 1.0), _FAULT, "restart",
                          (node.id, node.inc))
                self.restarting.add(node.id)
        self.push(self.now + 0.25, _CHECK)

    def on_check(self) -> None:
        up = self.up()
        if self.restarting:
            self.push(self.now + 0.25, _CHECK)
            return
        live = [(n.id, n.inc) for n in up]
        if not self.probes_sent:
            if not self._common_ring(up):
                self.push(self.now + 0.25, _CHECK)
                return
            self.tr(None, "common configuration: sending probes")
            for n in up:
                self.on_app(n, probe=True)
            self.probes_sent = True
            self.push(self.now + 0.25, _CHECK)
            return
        if all(getattr(n.srp, "queued", lambda: 0)() == 0 for n in up):
            vs = check_liveness(self.histories.values(), live, self.probes)
            if not vs:
                self.result.settled_at = self.now
                self.tr(None, "settled")
                self.done = True
                return
        self.push(self.now + 0.25, _CHECK)

    def _common_ring(self, up: list[_Node]) -> bool:
        want = tuple(n.id for n in up)
        ring = None
        for n in up:
            last = next((e for e in reversed(n.hist.events) if isinstance(e, ConfChange)), None)
            if last is None or last.transitional or tuple(sorted(last.members)) != want:
                return False
            if ring is not None and last.ring_id != ring:
                return False
            ring = last.ring_id
            st = getattr(n.srp.state, "name", "OPERATIONAL")
            if st != "OPERATIONAL":
                return False
        return True

    def on_delivered_all(self) -> bool:
        """Benchmark mode: every submitted message delivered by every node."""
        total = sum(len(h.submitted) for h in self.histories.values())
        return total == self.o.messages * len(self.ids) and len(self.delivered_once) == total

    # -- the end -------------------------------------------------------------

    def reformations(self) -> int:
        everyone = tuple(self.ids)
        most = 0
        for h in self.histories.values():
            regs = [e for e in h.events if isinstance(e, ConfChange) and not e.transitional]
            first = next((i for i, e in enumerate(regs) if tuple(sorted(e.members)) == everyone),
                         None)
            if first is not None:
                most = max(most, len(regs) - 1 - first)
        return most

    def _all_joined(self) -> float:
        """When every node had first installed a ring of all nodes (inf: never)."""
        return max((next((t for t, x, m in self.confs if x == nid and len(m) == len(self.ids)),
                         float("inf")) for nid in self.ids), default=0.0)

    def check_resumes(self) -> list[Violation]:
        """What pauses cost the nodes that were never paused (``resume_check``)."""
        healthy = set(self.ids) - self.paused_ever
        out = []
        start = self._all_joined()
        for t, nid, members in self.confs:
            if t > start and nid in healthy and not healthy <= set(members):
                out.append(Violation("resume", f"{fmt_node(nid)} installed {self.names(members)} "
                                     f"at {t:.3f}s without every never-paused node"))
                break
        # windows from a resume that leaves no node paused to the next pause (or the end)
        marks = sorted(self.pause_log)
        paused = 0
        for i, (t0, what) in enumerate(marks):
            paused += 1 if what == "pause" else -1
            if what != "resume" or paused:
                continue
            t1 = next((t for t, w in marks[i + 1:] if w == "pause"), float("inf"))
            for nid in sorted(healthy):
                n = sum(1 for t, x, _ in self.confs if x == nid and t0 <= t < t1)
                if n > 1:
                    out.append(Violation("resume", f"{fmt_node(nid)} installed {n} regular "
                                         f"configurations after the resume at {t0:.3f}s"))
                    break
        return out

    def check_progress(self) -> list[Violation]:
        """Messages of the nodes the faulty link does not lead to keep reaching each other."""
        bound = self.o.progress
        healthy = [n for n in self.ids if self.link is None or n != self.link[1]]
        # from 2 s, and once all nodes were in one ring (a node that never was
        # need not deliver what was sent before it came)
        start = max(2.0, self._all_joined())
        late = []
        for key, t in self.sub_time.items():
            if not (isinstance(key, MsgKey) and key.node in healthy):
                continue
            if not start <= t <= self.quiet_at - bound:
                continue
            for n in healthy:
                got = self.dlv_time.get((n, key))
                if got is None or got > t + bound:
                    late.append((t, key, n, got))
        if not late:
            return []
        t, key, n, got = min(late)
        when = "never" if got is None else f"at {got:.3f}s"
        return [Violation("progress", f"{len(late)} deliveries late by more than {bound}s during "
                          f"the fault phase, first: {key!r} submitted at {t:.3f}s reached "
                          f"{fmt_node(n)} {when}")]

    def finish(self) -> RunResult:
        r = self.result
        r.time, r.steps, r.packets = self.now, self.steps, self.packets
        r.deliveries = self.deliveries
        r.messages_delivered = len(self.delivered_once)
        r.bytes_delivered = self.bytes_once
        r.configurations = len(self.rings)
        r.histories = self.histories
        r.writes = self.writes
        r.reformations = self.reformations()
        vs = list(self.violations)
        if self.o.progress and self.link is not None and self.o.check:
            vs += self.check_progress()
        if self.o.resume_check and self.o.check:
            vs += self.check_resumes()
        if not self.done and not self.o.stop_when_delivered and not vs:
            live = [(n.id, n.inc) for n in self.up()]
            vs += check_liveness(self.histories.values(), live, self.probes) or [
                Violation("liveness", f"not settled {self.o.settle}s after the faults stopped")]
        if self.o.check:
            vs += check(self.histories.values(), complete=self.done)
        r.violations = vs
        for v in vs:
            self.tr(None, f"VIOLATION {v}")
        r.trace = list(self.trace) if self.trace is not None else []
        return r


def run(seed: int, options: SimOptions | None = None,
        srp_factory: Callable[..., Any] | None = None) -> RunResult:
    """Simulate one seeded run and check it.

    Args:
        seed: the only source of randomness.
        options: network, fault and load parameters.
        srp_factory: builds a node's core, ``factory(node_id, config, ring_seq=n)``;
            default ``ais.totem.srp.Srp``.

    Returns:
        The run's counters, violations (``[]`` when every invariant held),
        trace and histories.
    """
    return Simulation(seed, options or SimOptions(), srp_factory).run()


class _Bench(Simulation):
    """Benchmark mode: stop as soon as the whole load is delivered everywhere."""

    def on_deliver(self, node: _Node, d: Deliver) -> None:
        super().on_deliver(node, d)
        if self.deliveries == self.o.messages * len(self.ids) * len(self.ids):
            self.done = True


def run_load(seed: int, options: SimOptions) -> RunResult:
    """Run until all ``options.messages`` per node are delivered at every node.

    No faults beyond packet loss/dup/reorder; used by bench/totem_bench.py.
    """
    o = SimOptions(**{f.name: getattr(options, f.name) for f in fields(options)})
    o.stop_when_delivered = True
    return _Bench(seed, o).run()


def run_sync(seed: int, options: SimOptions) -> RunResult:
    """Synchronous writers (``options.sync_writers``) for ``options.duration`` simulated s.

    No quiet phase and no invariant check; ``RunResult.writes`` counts the
    acknowledged writes.  Used by ``bench/totem_bench.py --sync``.
    """
    o = SimOptions(**{f.name: getattr(options, f.name) for f in fields(options)})
    o.stop_when_delivered = True
    o.settle = 0.0
    o.check = False
    return Simulation(seed, o).run()


# -- command line ----------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    d = SimOptions()
    p = argparse.ArgumentParser(prog="python -m ais.totem.sim",
                                description="Simulate Totem rings under faults and check "
                                            "extended virtual synchrony.")
    p.add_argument("--seed", type=int, help="one run, printing its full trace")
    p.add_argument("--seeds", type=int, default=10, help="number of runs (default 10)")
    p.add_argument("--start", type=int, default=0, help="first seed of a sweep")
    p.add_argument("--jobs", type=int, default=2, help="worker processes for a sweep")
    p.add_argument("-q", "--quiet", action="store_true", help="print only violations and "
                                                               "the total")
    p.add_argument("--nodes", type=int, default=d.nodes)
    for name in ("loss", "dup", "reorder", "reorder_delay", "duration", "settle",
                 "start_spread", "corrupt", "oneway_loss", "progress"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    # Fault counts may be given bare (``--partitions --crashes``): then 2 of each.
    for name in ("partitions", "flaps", "crashes", "state_crashes", "pauses"):
        p.add_argument("--" + name.replace("_", "-"), type=int, nargs="?", const=2,
                       default=getattr(d, name), metavar="N")
    for name in ("messages", "size", "size_limit"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--fault-link", default="0,0",
                   help="faulty link of --oneway-loss/--size-limit as SRC,DST node numbers "
                        "(1-based; default: drawn at random)")
    p.add_argument("--delay", default=",".join(map(repr, d.delay)),
                   help="base delay range in seconds, LO,HI")
    p.add_argument("--crypto", action=argparse.BooleanOptionalAction, default=False,
                   help="seal and open every packet with ais/totem/crypto.py")
    p.add_argument("--token", type=float, help="token timeout (ms)")
    p.add_argument("--resume-check", action="store_true",
                   help="nodes never paused must not split, nor re-form more than once per "
                        "resume")
    p.add_argument("--max-steps", type=int, default=d.max_steps)
    return p


def options_from_args(a: argparse.Namespace) -> SimOptions:
    lo, hi = (float(x) for x in a.delay.split(","))
    cfg = TotemConfig(token=a.token) if a.token else None
    return SimOptions(
        nodes=a.nodes, loss=a.loss, dup=a.dup, reorder=a.reorder,
        reorder_delay=a.reorder_delay, delay=(lo, hi), partitions=a.partitions,
        flaps=a.flaps, crashes=a.crashes, state_crashes=a.state_crashes, pauses=a.pauses,
        messages=a.messages, size=a.size,
        duration=a.duration, settle=a.settle, start_spread=a.start_spread, crypto=a.crypto,
        corrupt=a.corrupt, config=cfg, max_steps=a.max_steps, oneway_loss=a.oneway_loss,
        size_limit=a.size_limit, progress=a.progress, resume_check=a.resume_check,
        fault_link=tuple(int(x) for x in a.fault_link.split(",")))  # type: ignore[arg-type]


def _sweep_one(job: tuple[int, SimOptions]) -> RunResult:
    seed, o = job
    r = run(seed, o)
    r.histories = {}  # keep what crosses the process boundary small
    r.trace = r.trace[-40:] if r.violations else []
    return r


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m ais.totem.sim``; returns the exit status."""
    a = _parser().parse_args(argv)
    o = options_from_args(a)
    # sweeps print results, not the cores' warnings (a --seed replay traces them)
    logging.getLogger("ais.totem").addHandler(logging.NullHandler())
    if o.crypto and not crypto_available():
        print("--crypto: ais/totem/crypto.py is not available", file=sys.stderr)
        return 2
    extra = [] if not a.token else ["--token", repr(a.token)]
    if a.seed is not None:
        o.full_trace = True
        r = run(a.seed, o)
        for ln in r.trace:
            print(ln)
        print(r.line())
        if r.violations:
            print(r.report().replace(r.replay(), r.replay() + " " + " ".join(extra)))
        print(f"1 runs, {int(bool(r.violations))} violations")
        return 1 if r.violations else 0
    jobs = [(s, o) for s in range(a.start, a.start + a.seeds)]
    bad = 0
    if a.jobs > 1 and len(jobs) > 1:
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(a.jobs) as pool:
            results: Iterable[RunResult] = pool.imap(_sweep_one, jobs, chunksize=1)
            bad = _print_results(results, a.quiet, extra)
    else:
        bad = _print_results(map(_sweep_one, jobs), a.quiet, extra)
    print(f"{len(jobs)} runs, {bad} violations")
    return 1 if bad else 0


def _print_results(results: Iterable[RunResult], quiet: bool, extra: list[str]) -> int:
    bad = 0
    for r in results:
        if not quiet or r.violations:
            print(r.line(), flush=True)
        if r.violations:
            bad += 1
            print(r.report().replace(r.replay(), " ".join([r.replay(), *extra])), flush=True)
    return bad


if __name__ == "__main__":
    sys.exit(main())
