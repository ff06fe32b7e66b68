"""The real services on the real Totem core under the seeded network simulator.

Theory of operation
-------------------
``ais.totem.sim`` drives bare ``Srp`` nodes and checks extended virtual
synchrony.  This module drives what runs above the ring: on every node an
``Srp`` (``ais.totem.srp``) carries a ``ServiceHost`` (``ais.executive``)
with the real CLM and CKPT services, and simulated clients issue CKPT
requests through ``host.lib_request`` exactly as ``ais.ipc`` would.  After
every run it checks what a user of a replicated service relies on.

Reuse.  ``ServiceSim`` subclasses ``ais.totem.sim.Simulation``: one
``random.Random(seed)``, the virtual clock and event heap, the network
(loss, duplication, delay, reorder, partitions, flapping links), crashes,
restarts with the persisted ring sequence, pauses and the quiet phase all
come from there.  It adds:

* Hosts.  ``ServiceHost(node, [ClmService, CkptService], clock)`` per
  incarnation.  The clock's ``call_later`` puts the host's timers on the
  simulator's heap (held while the node is paused, dropped when it crashes).
  The host's ring port calls ``srp.mcast`` (``SendQueueFull`` reaches the
  host, which answers TRY_AGAIN).  The core's actions go through one FIFO
  per node, as in ``ais.totem.transport``: a message the host multicasts
  from inside ``on_deliver`` is carried out after the actions already
  queued.  ``Deliver`` goes to ``host.on_deliver``, ``ConfChange`` to
  ``host.on_confchg``, ``Stable`` (when the core has it) to
  ``host.on_stable`` (when the host has it).  What ``srp.mcast`` answers
  is only queued: the FIFO is carried out by a host event at the same
  virtual time (or by whatever drains it first), never inside the host's
  ``mcast`` -- a ring event reaching the host there is a ``reentry``
  violation.  A crash drops the host, its
  clients and its timers; a restart builds an empty host (checkpoints live
  in memory only).
* Faults on top of the base ones: quick restarts (``restarts``: a node
  killed and back after 0.05-0.9 s, often before the others noticed),
  asymmetric loss (``asym``: for 1-4 s one node's packets in one direction
  are dropped, all of them or only those above 800 bytes), and crashes aimed
  at writers (``ack_crashes``: a node is killed right after one of its
  clients got a WR_ALL_REPLICAS write acknowledged), and partitions aimed at
  writes (``split_writes``: a node is cut off from the others as it sends a
  frame carrying client data, so each side may end the old ring with a
  different last write).
* Clients.  ``clients`` per node incarnation, each one request at a time
  (a blocking SAF call), driven by the ``messages`` application events of
  the base schedule.  They open shared "stable" checkpoints (WR_ALL_REPLICAS,
  WR_ACTIVE_REPLICA, WR_ACTIVE_REPLICA_WEAK; never unlinked, retention
  forever), create their own sections and write increasing counters into
  them (``value_of``: header, counter, padding; sizes from 40 bytes to
  several frames), overwrite and read them, and use "churn" checkpoints
  (open, write, close, unlink, short retention).  TRY_AGAIN is retried.
* Sync size.  ``CkptService``'s ``SYNC_BUDGET`` is lowered for the run and
  the ring's send queue is small, so a sync round takes many
  ``sync_process`` calls and retries spread over virtual time, and a new
  configuration can cut it short.

Checks, once the faults have stopped and every live node is in one
regular configuration, synced, with all requests answered and the ring
quiet (``check_convergence``, ``check_acked``, ``check_answered``):

(a) convergence: every live node's ``CkptService.digest()`` is identical,
    and so are CLM's view (number and members) and records; each node's CLM
    tracker (SA_TRACK_CURRENT | SA_TRACK_CHANGES) was last told the live
    nodes;
(b) durability: for every acknowledged write (and section creation, and
    checkpoint creation) that the guarantee requires, every live replica
    holds that checkpoint and section with a counter not older than the
    acknowledged one.  Required (``required_acks``):

    - while some live node holds it.  Holders of a WR_ALL_REPLICAS write,
      and of every checkpoint creation, are at first every member of the
      writer's configuration when it was acknowledged (safe delivery: all
      of them have it then, whatever happens to the writer's node next).
      That is the configuration current when the reply went out: the
      regular one when the token showed every member held the message, but
      only the transitional one when the reply was released by it (the
      host's documented rule: recovery gave every member of the
      transitional configuration every message of the old ring, and
      nothing is known of the members beyond it -- e.g. members that
      delivered the message inside a sync round they never completed, and
      so never applied it);
      of an ACTIVE_REPLICA(_WEAK) write, the acknowledging node (the active
      replica); of an open that found its checkpoint (CKPT answers it at
      agreed delivery, even when the open that created it came just before
      in the same frame and is not safe yet; the simulator notes which opens
      created one), the answering node (a member that delivered it inside a
      sync round it never completed never held the checkpoint).  Then every
      node that delivers it, and every node that completes a sync round with
      a holder (one that held it when it installed that round's ring: not
      for a message delivered in that ring itself), holds it; a
      crash ends a holder.  An acknowledgement whose holders all crashed is
      lost with them (checkpoints live in memory only);
    - except for checkpoints with *conflicting histories*: a sync round
      merged members each holding a change to the checkpoint that the other
      lacked (the simulator follows, per replica, which changes it reflects:
      those it delivered, plus, when a sync round completes, those of every
      member; nothing, on a node that deleted it).  There merge rule 2
      chooses one replica, and losing the other's writes is allowed;
      convergence (a) is still required.
    - and, for checkpoints created with one name on sides that never saw
      each other (members each holding a checkpoint of that name the other
      never had, or creations in concurrent configurations: neither
      descends from the other in the graph of installed configurations),
      only as far as merge rule 3 allows: the one that kept the name (still
      linked) must hold everything; a loser (unlinked, alive for its
      openers only) must hold, while a live client keeps it open, whatever
      was acknowledged on or applied by that opener's node incarnation
      (``loser_keeps``).  A loser nobody holds open may be gone.
(c) every request of a client whose node is alive was answered (an error
    counts) within ``settle`` seconds after the faults stopped.
(d) AMF, once it is quiet as well (no callback unanswered, every unit in
    or out of service, no component process waiting to register or to
    restart; part of settling): every live node holds the same AMF state;
    each component process acts in the HA state that state gives its
    component for each CSI (it takes a state on when the callback arrives)
    and is the registration the state names; no CSI has more processes
    acting active than its group allows; every unit that could serve
    (unlocked, its components registered without errors) is in service, and
    every group (each CSI of an N-way group) has as many active as its units
    allow (``check_amf_service``); no component has a live process on two
    nodes; each node's client tracking every protection group was last told
    the members' readiness and HA states that state gives (``check_pg_trackers``).

(e) reference counts: every live node's count of opens of each checkpoint in
    the replicated state is the number of handles its live clients hold open,
    and no handle names a checkpoint that is gone (``check_refs``; a client
    that crashes on its own, ``client_crashes``, has closed all of its).

A section's bytes must also decode as a value some client wrote (no torn
or mixed data), on every replica and in every read reply.

Scenarios.  ``scenario(n)`` runs a fixed schedule that reproduces finding n
of issue 7: 1, a node restarted before the others noticed, which later is
the lowest member of a sync round and streams its empty state; 2, a
partition where the two sides deliver different last writes of the old
ring (delivery past a gap) and merge with a tie; 3, the writer's node killed
right after a WR_ALL_REPLICAS write was acknowledged, the write's frame lost
on the way to the others.  Scenario 4 (merge rule 3, no finding): each side of
a partition creates a checkpoint of one name and keeps it open; after the
heal both openers write to and read back their own, the loser unlinked.
Scenario 8 (four nodes): a section creation held by a sync round that two
members complete and its sender's node cannot, sent again when they meet
next: a replay (``_replay_scenario``).

Output and replay as in ``ais.totem.sim``: ``python -m ais.servicesim``
prints one line per run and ``N runs, M violations``; ``--seed N`` replays
one run with the full trace (the core's, the host's and the services' log
lines included); ``--scenario N`` runs scenario N.
"""
from __future__ import annotations

import argparse
import heapq
import ipaddress
import logging
import math
import random
import re
import signal
import struct
import sys
import traceback
import zlib
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any
from collections.abc import Callable, Generator, Iterable

from ais.executive import (
    FLAG_RESENT, FLAG_SYNC, HOST_MSG_SYNC_BARRIER, HOST_SERVICE_ID, ORIGIN, RING_HEADER,
    RingMessage, ServiceHost, encode_ring_message,
)
from ais.services import ckpt as ckpt_mod
from ais.services.base import NO_TAG, ExecMessage
from ais.services.ckpt import CkptService
from ais.services.clm import ClmService
from ais.services import amf as amf_mod
from ais.services.amf import AmfService
from ais.services.evs import EvsService
from ais.config import parse_groups_conf
from saf import _amf_wire as aw
from ais.totem.events import (
    CancelTimer, ConfChange, Deliver, RingId, Send, SendQueueFull, StartTimer, TotemConfig,
)
from ais.totem.invariants import History, Violation
from ais.totem.sim import _FAULT, _PKT, _TIMER, _APP, _CHECK, RunResult, SimOptions, Simulation
from ais.totem.sim import options_to_args
from ais.totem.sim import _Node, _TraceLog  # the base simulator's node record and trace logger
from saf import _ckpt_wire as cw
from saf import _clm_wire as w
from saf import _evs_wire as ew
from saf.errors import SA_OK, BadHandle, FailedOperation, NotExist, Timeout, TryAgain
from saf.types import (
    SA_TIME_END, SA_TRACK_CHANGES, SA_TRACK_CURRENT, ClusterChange, node_id_from_totem,
)

# heap entry kinds beyond the base simulator's
_HOST, _CALL = 10, 11

#: boot timestamp of every simulated node (CLM records are then predictable)
BOOT = 1_700_000_000 * 1_000_000_000

RW = cw.SA_CKPT_CHECKPOINT_READ | cw.SA_CKPT_CHECKPOINT_WRITE
CREATE = cw.SA_CKPT_CHECKPOINT_CREATE

#: a written value: magic, writer uid, counter, total length, then padding
VALUE = struct.Struct("!4sIII")
MAGIC = b"SVAL"
_PAD = bytes(range(256))

#: creation flags of the stable checkpoints, by index
STABLE_MODES = (cw.SA_CKPT_WR_ALL_REPLICAS, cw.SA_CKPT_WR_ACTIVE_REPLICA,
                cw.SA_CKPT_WR_ALL_REPLICAS, cw.SA_CKPT_WR_ACTIVE_REPLICA_WEAK)
MAX_SECTION = 16 * 1024
STABLE_SECTIONS = 400
CHURN_NAMES = 2

#: ring messages that change a checkpoint (their payload starts with its id)
_UPDATES = frozenset({
    ckpt_mod.MSG_SECTION_CREATE, ckpt_mod.MSG_SECTION_DELETE, ckpt_mod.MSG_WRITE,
    ckpt_mod.MSG_OVERWRITE, ckpt_mod.MSG_SECTION_EXPIRATION_SET, ckpt_mod.MSG_SECTION_EXPIRE,
    ckpt_mod.MSG_ACTIVE_SET, ckpt_mod.MSG_RETENTION_SET, ckpt_mod.MSG_RETENTION_EXPIRE})


def value_of(uid: int, counter: int, size: int) -> bytes:
    """The bytes client ``uid`` writes as its ``counter``-th value (``size`` >= 16)."""
    size = max(size, VALUE.size)
    pad = size - VALUE.size
    start = counter & 255
    reps = (start + pad) // 256 + 1
    return VALUE.pack(MAGIC, uid, counter, size) + (_PAD * reps)[start:start + pad]


def decode_value(data: bytes) -> tuple[int, int] | None:
    """(uid, counter) of a value written by ``value_of``; None if the bytes are not one."""
    if len(data) < VALUE.size:
        return None
    magic, uid, counter, size = VALUE.unpack_from(data)
    if magic != MAGIC or size > len(data) or size < VALUE.size:
        return None
    if bytes(data[:size]) != value_of(uid, counter, size):
        return None
    return uid, counter


def stable_name(i: int) -> bytes:
    return b"stable-%d" % i


def stable_attrs(i: int) -> cw.CreationAttributes:
    return cw.CreationAttributes(
        creation_flags=STABLE_MODES[i % len(STABLE_MODES)],
        checkpoint_size=STABLE_SECTIONS * MAX_SECTION, retention_duration=SA_TIME_END,
        max_sections=STABLE_SECTIONS, max_section_size=MAX_SECTION, max_section_id_size=32)


def churn_attrs() -> cw.CreationAttributes:
    return cw.CreationAttributes(
        creation_flags=cw.SA_CKPT_WR_ALL_REPLICAS, checkpoint_size=8 * MAX_SECTION,
        retention_duration=500_000_000, max_sections=8, max_section_size=MAX_SECTION,
        max_section_id_size=32)


# --- options and results --------------------------------------------------------------


@dataclass
class SvcOptions(SimOptions):
    """One run's parameters: the base simulator's, plus the services' own.

    ``messages`` counts client steps per node (one request each at most).
    """

    messages: int = 60
    duration: float = 6.0
    settle: float = 40.0
    #: clients per node incarnation
    clients: int = 2
    #: stable checkpoints shared by all clients
    stable: int = 3
    #: quick crash-and-restart episodes (back after 0.05-0.9 s)
    restarts: int = 0
    #: asymmetric loss episodes (one node's packets, in or out, for 1-4 s)
    asym: int = 0
    #: crashes of a writer's node right after a WR_ALL_REPLICAS acknowledgement
    ack_crashes: int = 0
    #: partitions that cut a node off as it sends a frame with client data (healed
    #: after 1-3 s)
    split_writes: int = 0
    #: largest write in bytes (frames are 1400)
    max_write: int = 12000
    #: CkptService.SYNC_BUDGET during the run (bytes per sync_process call)
    sync_budget: int = 2048
    #: the ring's send queue (messages), so big syncs and bursts meet TRY_AGAIN
    send_queue: int = 16
    #: run AMF too (components on every node, state identity checked)
    amf: bool = True
    #: AMF operator actions (lock or shutdown then unlock, error report then cancel) per
    #: node incarnation; non-zero also runs the wider model (spares, an nway group:
    #: SIM_AMF_WIDE)
    amf_admin: int = 0
    #: AMF component processes stopped for 1.5-4 s (SIGSTOP and SIGCONT: their callbacks
    #: wait, then are handled in order), per node incarnation
    amf_hangs: int = 0
    #: the wide model with the raid group's components started by AMF (``instantiate=``)
    #: instead of by the simulator's supervisors
    amf_spawn: bool = False
    #: AMF component processes that fail on their own, per node incarnation: half crash
    #: (the connection closes without a word; a supervisor starts the program again 0.3-1 s
    #: later), a tenth crash for good, some unregister and register again 0.3-1 s later
    #: (testamf2), the rest refuse the next CSI-set callback they get
    #: (SA_AIS_ERR_FAILED_OPERATION) and do not take that state on
    amf_faults: int = 0
    #: EVS handles per node incarnation (0: the host runs no EVS service); each joins
    #: group G, every other one H too (and leaves H half-way), and multicasts numbered
    #: messages to its groups
    evs: int = 0
    #: CKPT clients that crash on their own, a request in flight or not (the connection
    #: closes; another client starts in their place 0.3-1 s later), per node incarnation
    client_crashes: int = 0
    #: EVS processes that crash on their own (the connection closes; another process
    #: starts in their place 0.3-1 s later), per node incarnation
    evs_faults: int = 0

    def to_args(self) -> list[str]:
        """Command-line flags that reproduce these options (non-defaults only)."""
        return options_to_args(self, SvcOptions(), _NOT_CLI)


_NOT_CLI = {"config", "max_steps", "check", "full_trace", "trace_tail", "stop_when_delivered",
            "size", "crypto", "corrupt"}


@dataclass
class SvcResult(RunResult):
    """What one run produced (``RunResult`` plus the services' counters)."""

    #: scenario number, when the run was one
    scenario: int = 0
    requests: int = 0
    answered: int = 0
    acked_writes: int = 0
    sync_rounds: int = 0
    #: re-sent messages some member's state already held (``ServiceHost.replays``), on
    #: the hosts alive at the end
    replays: int = 0

    def line(self) -> str:
        res = "ok" if self.ok else "VIOLATION " + ",".join(
            sorted({v.invariant for v in self.violations}))
        settled = "-" if self.settled_at is None else f"{self.settled_at:.1f}s"
        what = f"scenario {self.scenario}" if self.scenario else f"seed {self.seed}"
        return (f"{what}: nodes {self.options.nodes} t={self.time:.1f}s settled={settled} "
                f"requests {self.requests} acked writes {self.acked_writes} "
                f"confs {self.configurations} syncs {self.sync_rounds} steps {self.steps}: {res}")

    def replay(self) -> str:
        if self.scenario:
            return f"python -m ais.servicesim --scenario {self.scenario}"
        assert isinstance(self.options, SvcOptions)
        return " ".join(["python -m ais.servicesim", "--seed", str(self.seed),
                         *self.options.to_args()])

    def report(self, tail: int = 30) -> str:
        what = f"scenario {self.scenario}" if self.scenario else f"seed {self.seed}"
        out = [f"{what}: {len(self.violations)} violation(s)"]
        out += [f"  {v}" for v in self.violations]
        out.append(f"  last {min(tail, len(self.trace))} trace lines:")
        out += [f"    {ln}" for ln in self.trace[-tail:]]
        out.append(f"  replay: {self.replay()}")
        return "\n".join(out)


# --- the checker (pure functions over what a run observed) ------------------------------


@dataclass(frozen=True)
class Ack:
    """Something a client was told succeeded: a checkpoint open/create (``sid`` None),
    a section creation (counter 0) or a write/overwrite of ``counter``."""

    ckpt: tuple[int, int, int]
    name: bytes
    sid: bytes | None
    counter: int
    mode: int  #: the checkpoint's creation flags
    node: int  #: the node whose client was answered
    inc: int  #: that node's incarnation
    at: float
    client: str


def ring_graph(installs: Iterable[list[RingId]]) -> dict[RingId, set[RingId]]:
    """Descendants of every configuration: ``installs`` lists, per incarnation, the
    regular configurations it installed in order."""
    succ: dict[RingId, set[RingId]] = {}
    for seq in installs:
        for a, b in zip(seq, seq[1:]):
            succ.setdefault(a, set()).add(b)
        for r in seq:
            succ.setdefault(r, set())
    desc: dict[RingId, set[RingId]] = {}
    for r in sorted(succ):
        seen: set[RingId] = set()
        stack = list(succ[r])
        while stack:
            x = stack.pop()
            if x not in seen:
                seen.add(x)
                stack.extend(succ.get(x, ()))
        desc[r] = seen
    return desc


def concurrent(a: RingId, b: RingId, desc: dict[RingId, set[RingId]]) -> bool:
    """Neither configuration descends from the other (they ran on different sides)."""
    return a != b and b not in desc.get(a, ()) and a not in desc.get(b, ())


def diverging(histories: Iterable[dict[Any, frozenset[Any]]]) -> set[Any]:
    """Checkpoints on which the histories meeting in one sync round conflict: two
    members each hold a change to it that the other lacks."""
    hs = list(histories)
    out: set[Any] = set()
    for ck in {k for h in hs for k in h}:
        sets = [h.get(ck, frozenset()) for h in hs]
        for i, a in enumerate(sets):
            if any(not a <= b and not b <= a for b in sets[i + 1:]):
                out.add(ck)
                break
    return out


def name_conflicts(names: dict[tuple[int, int, int], bytes],
                   desc: dict[RingId, set[RingId]]) -> set[tuple[int, int, int]]:
    """Checkpoints sharing a name with one created in a concurrent configuration
    (the merge rule keeps one of them linked)."""
    out: set[tuple[int, int, int]] = set()
    by_name: dict[bytes, list[tuple[int, int, int]]] = {}
    for ck, name in names.items():
        by_name.setdefault(name, []).append(ck)
    for ids in by_name.values():
        for i, a in enumerate(ids):
            for b in ids[i + 1:]:
                if concurrent(RingId(a[0], a[1]), RingId(b[0], b[1]), desc):
                    out |= {a, b}
    return out


def loser_keeps(ack: Ack, applied_by: set[tuple[int, int]],
                openers: set[tuple[int, int]]) -> bool:
    """Whether an acknowledgement on a checkpoint that lost its name (merge rule 3)
    must survive.  The rule keeps the unlinked loser, with its data, for its openers:
    in every configuration a live opener's node is in, it announces its reference, so
    the replica that node holds is never deleted.  So what such a replica reflected
    must stay readable: every acknowledgement made on a live opener's node
    incarnation, or applied there (``applied_by``).  A replica on a side with no
    opener may be deleted (unlinked, no references) even while an opener elsewhere
    keeps an older replica alive, and then what only that side had goes."""
    return bool(openers & ({(ack.node, ack.inc)} | applied_by))


def required_acks(acks: Iterable[tuple[Ack, set[tuple[int, int]]]],
                  conflicted: set[tuple[int, int, int]]) -> list[Ack]:
    """The acknowledgements the guarantees require to survive (module docstring (b)):
    each comes with its live holders at the end."""
    return [a for a, holders in acks if holders and a.ckpt not in conflicted]


class AckTrack:
    """One acknowledgement and the live incarnations that hold (or must hold) it,
    each with the time it became a holder (``since``)."""

    __slots__ = ("ack", "key", "holders", "since")

    def __init__(self, ack: Ack, key: Any, holders: set[tuple[int, int]]) -> None:
        self.ack, self.key, self.holders = ack, key, holders
        self.since = dict.fromkeys(holders, ack.at)

    def add(self, holder: tuple[int, int], at: float) -> None:
        if holder not in self.holders:
            self.holders.add(holder)
            self.since[holder] = at


def _ack_text(a: Ack) -> str:
    if a.sid is None:
        return f"checkpoint {a.name.decode()} {a.ckpt}"
    return f"write #{a.counter} of {a.name.decode()} {a.ckpt} section {a.sid.decode()}"


def _update_key(ring_id: RingId, sender: int, ring_payload: bytes) -> tuple[Any, ...]:
    """How the checker names one delivered CKPT message (its ring, sender and bytes)."""
    return (ring_id, sender, zlib.crc32(ring_payload))


def _capped(vs: list[Violation], limit: int = 6) -> list[Violation]:
    if len(vs) <= limit:
        return vs
    return vs[:limit] + [Violation(vs[0].invariant, f"... and {len(vs) - limit} more")]


def check_convergence(digests: dict[str, Any], views: dict[str, Any]) -> list[Violation]:
    """(a): every live node's CKPT digest and CLM view are the same."""
    vs: list[Violation] = []
    names = sorted(digests)
    for n in names[1:]:
        if digests[n] != digests[names[0]]:
            a, b = digests[names[0]], digests[n]
            diff = _first_diff(a, b)
            vs.append(Violation("diverged", f"CKPT replicas of {names[0]} and {n} differ: "
                                            f"{diff}"))
    vnames = sorted(views)
    for n in vnames[1:]:
        if views[n] != views[vnames[0]]:
            vs.append(Violation("diverged", f"CLM views of {vnames[0]} and {n} differ: "
                                            f"{views[vnames[0]]!r} vs {views[n]!r}"))
    return _capped(vs)


def _first_diff(a: list[Any], b: list[Any]) -> str:
    da = {x[0]: x for x in a}
    db = {x[0]: x for x in b}
    for k in sorted(da.keys() | db.keys()):
        if da.get(k) != db.get(k):
            if k not in da or k not in db:
                return f"checkpoint {k} only on {'the first' if k in da else 'the second'}"
            xa, xb = da[k], db[k]
            secs_a, secs_b = dict((s[0], s) for s in xa[-1]), dict((s[0], s) for s in xb[-1])
            for sid in sorted(secs_a.keys() | secs_b.keys()):
                if secs_a.get(sid) != secs_b.get(sid):
                    va = decode_value(secs_a[sid][1]) if sid in secs_a else None
                    vb = decode_value(secs_b[sid][1]) if sid in secs_b else None
                    return (f"checkpoint {xa[1]!r} {k} section {sid!r}: "
                            f"{va if sid in secs_a else 'missing'} vs "
                            f"{vb if sid in secs_b else 'missing'} "
                            f"(updates {xa[4]} vs {xb[4]})")
            return f"checkpoint {xa[1]!r} {k}: {xa[:7]} vs {xb[:7]}"
    return "?"


def check_acked(required: Iterable[Ack],
                replicas: dict[str, dict[tuple[int, int, int], dict[bytes, bytes]]]
                ) -> list[Violation]:
    """(b): each live replica holds every required acknowledged checkpoint, section and
    write (a counter not older than the acknowledged one)."""
    vs: list[Violation] = []
    newest: dict[tuple[Any, ...], Ack] = {}
    for a in required:
        key = (a.ckpt, a.sid)
        if key not in newest or a.counter > newest[key].counter:
            newest[key] = a
    gone: set[tuple[str, Any]] = set()
    for node, state in sorted(replicas.items()):
        for (ck, sid), a in sorted(newest.items(), key=lambda kv: (kv[0][0], kv[0][1] or b"")):
            what = (f"{a.name.decode()} {ck}" + (f" section {sid.decode()}" if sid else ""))
            mode = {1: "WR_ALL", 2: "ACTIVE", 4: "WEAK"}.get(a.mode, str(a.mode))
            secs = state.get(ck)
            if secs is None:
                if (node, ck) not in gone:
                    gone.add((node, ck))
                    vs.append(Violation("lost", f"{node}: checkpoint {a.name.decode()} {ck} "
                                                f"({mode}) is gone; {a.client} was told "
                                                f"{'it exists' if sid is None else 'of ' + what}"
                                                f" at {a.at:.3f}s"))
                continue
            if sid is None:
                continue
            data = secs.get(sid)
            if data is None:
                vs.append(Violation("lost", f"{node}: section {what} ({mode}) is gone; "
                                            f"{a.client} was told it exists at {a.at:.3f}s"))
                continue
            v = decode_value(data)
            if v is None:
                continue  # reported by check_values
            if v[1] < a.counter:
                vs.append(Violation("lost", f"{node}: {what} ({mode}) holds write #{v[1]}; "
                                            f"write #{a.counter} was acknowledged to "
                                            f"{a.client} at {a.at:.3f}s"))
    return _capped(vs)


def check_values(replicas: dict[str, dict[tuple[int, int, int], dict[bytes, bytes]]],
                 written: dict[bytes, tuple[int, int]]) -> list[Violation]:
    """Every section of a simulated client holds a whole value that client wrote
    (``written``: section id -> (the client's uid, its highest counter))."""
    vs: list[Violation] = []
    for node, state in sorted(replicas.items()):
        for ck, secs in sorted(state.items()):
            for sid, data in sorted(secs.items()):
                if sid not in written:
                    continue
                v = decode_value(data)
                if v is None or v[0] != written[sid][0] or v[1] > written[sid][1]:
                    vs.append(Violation("torn", f"{node}: {ck} section {sid.decode()} holds "
                                                f"{len(data)} bytes that no client wrote"))
    return _capped(vs)


def check_trackers(last: dict[str, w.ClmTrackCallback | None],
                   members: Iterable[int]) -> list[Violation]:
    """CLM: each live node's tracker was last told the final membership (SAF node ids)."""
    want = sorted(members)
    vs = []
    for node, cb in sorted(last.items()):
        got = None if cb is None else sorted(
            i.cluster_node.node_id for i in cb.items
            if i.cluster_change != ClusterChange.SA_CLM_NODE_LEFT)
        if got != want:
            vs.append(Violation("clm", f"{node}: the last track callback lists {got}, "
                                       f"the cluster is {want}"))
    return _capped(vs)


def check_answered(outstanding: Iterable[tuple[str, str, float]], quiet_at: float,
                   settle: float) -> list[Violation]:
    """(c): no live client still waits for an answer."""
    vs = [Violation("hang", f"{client}: {kind} sent at {at:.3f}s never answered "
                            f"({settle:.0f}s after the faults stopped at {quiet_at:.3f}s)")
          for client, kind, at in outstanding]
    return _capped(vs)


# --- simulated clients --------------------------------------------------------------------


# --- AMF: every node hosts some components of the sample model; identity is checked ---------

#: the sample groups.conf; healthchecks slow enough for a simulated loaded node
SIM_AMF_MODEL = parse_groups_conf("""
group {
name=raid
model=nplusm
active-units=1
backup-units=2
healthcheck-period=200
healthcheck-timeout=1000
response-timeout=2000
unit {
name=raidA
component {
name=comp_a_in_su_x
model=x_active
}
component {
name=comp_b_in_su_x
model=x_active
}
}
unit {
name=raidB
component {
name=comp_a_in_su_y
model=x_active
}
component {
name=comp_b_in_su_y
model=x_active
}
}
protection {
name=pgA
member=comp_a_in_su_x
member=comp_a_in_su_y
}
protection {
name=pgB
member=comp_b_in_su_x
member=comp_b_in_su_y
}
}
""", "<servicesim>")

#: SIM_AMF_MODEL with a spare unit (nplusm 1+1 of 3), an nway group whose units are
#: active for some CSIs and standby for others, and an N+1 group (nway) whose standby
#: component ks carries both CSIs (--amf-admin)
SIM_AMF_WIDE_TEXT = ("""
group {
name=raid
model=nplusm
active-units=1
backup-units=1
healthcheck-period=200
healthcheck-timeout=1000
response-timeout=2000
""" + "".join(f"""unit {{
name=raid{u}
component {{
name=comp_a_in_su_{u}
model=x_active
}}
component {{
name=comp_b_in_su_{u}
model=x_active
}}
}}
""" for u in "xyz") + """protection {
name=pgA
member=comp_a_in_su_x
member=comp_a_in_su_y
member=comp_a_in_su_z
}
protection {
name=pgB
member=comp_b_in_su_x
member=comp_b_in_su_y
member=comp_b_in_su_z
}
}
group {
name=web
model=nway
backup-units=1
healthcheck-period=200
healthcheck-timeout=1000
response-timeout=2000
""" + "".join(f"""unit {{
name=web{i}
component {{
name={a}{i}
model=x_active_and_y_standby
}}
component {{
name={b}{i}
model=x_active_and_y_standby
}}
}}
""" for i, (a, b) in enumerate((("a", "c"), ("a", "b"), ("b", "c")), 1)) + """protection {
name=csiA
member=a1
member=a2
}
protection {
name=csiB
member=b2
member=b3
}
protection {
name=csiC
member=c3
member=c1
}
}
group {
name=proxies
model=nwayactive
healthcheck-period=200
healthcheck-timeout=1000
response-timeout=2000
""" + "".join(f"""unit {{
name=pu{i}
component {{
name=proxy{i}
model=x_active
}}
}}
unit {{
name=ru{i}
component {{
name=relayed{i}
model=x_active
}}
}}
""" for i in (1, 2)) + """protection {
name=csiP
member=proxy1
member=proxy2
}
protection {
name=csiR
member=relayed1
member=relayed2
}
}
group {
name=nplus1
model=nway
backup-units=1
healthcheck-period=200
healthcheck-timeout=1000
response-timeout=2000
""" + "".join(f"""unit {{
name=nu{i}
component {{
name=k{i}
model=x_active_and_y_standby
}}
}}
""" for i in ("1", "2", "s")) + """protection {
name=csiN1
member=k1
member=ks
}
protection {
name=csiN2
member=k2
member=ks
}
}
""")
SIM_AMF_WIDE = parse_groups_conf(SIM_AMF_WIDE_TEXT, "<servicesim wide>")
#: SIM_AMF_WIDE with the raid group's six components started by AMF itself
#: (``instantiate=``: their unit's home node runs them, --amf-spawn)
SIM_AMF_SPAWN = parse_groups_conf(re.sub(r"(name=comp_[ab]_in_su_[xyz]\nmodel=x_active\n)",
                                          r"\1instantiate=sim-component\n", SIM_AMF_WIDE_TEXT),
                                   "<servicesim spawn>")
#: SIM_AMF_WIDE's proxied components: proxy -> the component it registers and serves
#: (the relayed one has no process of its own; it fails with its proxy)
SIM_AMF_PROXIED = {"proxy1": "relayed1", "proxy2": "relayed2"}


def check_amf(digests: dict[str, Any]) -> list[Violation]:
    """(a) for AMF: every live node holds the same AMF state (``AmfService.digest``)."""
    names = sorted(digests)
    return _capped([Violation("diverged", f"AMF states of {names[0]} and {n} differ: "
                                          f"{digests[names[0]]!r} vs {digests[n]!r}")
                    for n in names[1:] if digests[n] != digests[names[0]]])


def amf_unquiet(svc: AmfService) -> str:
    """What is under way in ``svc`` ("": nothing): a callback awaiting its answer, a unit
    neither in service nor out of it, a component not yet in the states it is wanted in."""
    busy = (amf_mod.KIND_READINESS, amf_mod.KIND_HA, amf_mod.KIND_TERMINATE,
            amf_mod.KIND_EXTERNAL)
    for i in svc.invocations.values():
        if i.kind in busy and not i.superseded:
            return f"a callback to {i.comp} is unanswered"
    for unit in svc.units.values():
        if unit.phase not in (amf_mod.Phase.IDLE, amf_mod.Phase.ASSIGNED):
            return f"unit {unit.name} is {unit.phase.name.lower()}"
        for c in unit.comps:
            if c.talkable and (c.has != c.want_has or c.readiness != c.want_readiness):
                return (f"{c.name} has {c.readiness}/{c.has}, is wanted "
                        f"{c.want_readiness}/{c.want_has}")
    return ""


def check_amf_service(svc: AmfService, procs: list[_AmfComp]) -> list[Violation]:
    """(d) for AMF, once it is quiet after the faults (``svc``: a live node's service, all
    alike by ``check_amf``; ``procs``: the live component processes):

    - a process whose registration was answered OK is the one the state registers, and it
      acts in exactly the HA state the state says its component has for each CSI;
    - no CSI has more processes acting active for it than its group allows, and no
      component has a live process on two nodes;
    - the service is available: every unit that could be in service (unlocked, its
      components registered without errors) is, and every group (every CSI of an N-way
      group) has as many active as its units allow.
    """
    vs: list[Violation] = []
    comps = svc.comps
    for p in procs:
        for name in {p.name} | ({p.proxied} if p.proxied else set()):
            c = comps.get(name)
            if c is None or name in p.unregistered:
                continue
            if not c.registered or (c.host, c.conn_id) != (p.host.node_id, p.conn_id):
                vs.append(Violation("amf-registration",
                                    f"{name}: its process at {p.node_name} (connection "
                                    f"{p.conn_id}) was told it is registered; the state says "
                                    f"registered={c.registered} at node {c.host} connection "
                                    f"{c.conn_id}"))
                continue
            for csi in c.csis:
                acts = p.belief.get((name, csi), amf_mod.QUIESCED)
                if acts != c.has[csi]:
                    vs.append(Violation("amf-belief",
                                        f"{name}/{csi}: its process acts in HA state {acts}, "
                                        f"the state says {c.has[csi]}"))
    where: dict[str, list[str]] = {}
    for p in procs:
        where.setdefault(p.name, []).append(p.node_name)
    vs += [Violation("amf-duplicate", f"{name}: a live process on each of {', '.join(nodes)}")
           for name, nodes in sorted(where.items()) if len(nodes) > 1]
    for g in svc.groups:
        limit = 1 if g.per_csi else g.spec.active_units
        for prot in g.spec.protections:
            acting = sorted(f"{p.name}@{p.node_name}" for p in procs for m in prot.members
                            if p.belief.get((m, prot.name)) == amf_mod.ACTIVE)
            if len(acting) > limit:
                vs.append(Violation("amf-split-brain",
                                    f"{prot.name}: {len(acting)} processes act active "
                                    f"({', '.join(acting)}), the group allows {limit}"))
        if not svc._may_activate(g):
            continue
        eligible = [u for u in g.units if u.admin == amf_mod.Admin.UNLOCKED
                    and all(c.registered and c.error == 0 for c in u.comps)]
        for u in eligible:
            if u.phase != amf_mod.Phase.ASSIGNED:
                vs.append(Violation("amf-availability",
                                    f"unit {u.name} could be in service but is "
                                    f"{u.phase.name.lower()}"))
        if g.per_csi:
            for prot in g.spec.protections:
                members = [comps[m] for m in prot.members]
                if any(c.unit in eligible for c in members) and not any(
                        c.has[prot.name] == amf_mod.ACTIVE for c in members):
                    vs.append(Violation("amf-availability",
                                        f"{prot.name}: no active component, though "
                                        f"{[c.name for c in members if c.unit in eligible]} "
                                        f"could take it"))
        else:
            active = sum(1 for u in g.units if u.role == amf_mod.Role.ACTIVE)
            want = min(g.spec.active_units, len(eligible))
            if active < want:
                vs.append(Violation("amf-availability",
                                    f"group {g.spec.name}: {active} active unit(s), "
                                    f"{len(eligible)} could serve, {g.spec.active_units} "
                                    f"wanted"))
    return _capped(vs)


class _AmfComp:
    """An AMF component process on one node incarnation: registers (retrying EXIST and
    TRY_AGAIN every 0.5 s) and answers every callback 1 ms later, as testamf1..6 do.
    It takes on each HA state a CSI-set callback gives it when the callback arrives
    (``belief``), for ``check_amf_service``."""

    def __init__(self, sim: ServiceSim, nid: int, inc: int, host: ServiceHost,
                 name: str, started: _SimChild | None = None) -> None:
        self.sim, self.nid, self.inc, self.host, self.name = sim, nid, inc, host, name
        #: the handle of the AMF start that made it (None: a supervisor restarts it)
        self.started = started
        self.conn_id = host.new_conn_id()
        self.service_id = aw.AMF_SERVICE_ID
        self.private: dict[str, Any] = {}
        self.uid = self.gid = self.pid = 0
        self.closed = False
        self.seq = 0
        #: the component this one registers as its proxy (SIM_AMF_PROXIED), and the
        #: component each registration request in flight is about
        self.proxied = SIM_AMF_PROXIED.get(name, "")
        self._reg_seq: dict[int, str] = {}
        #: (component, CSI) -> the HA state this process acts in (none: not assigned)
        self.belief: dict[tuple[str, str], int] = {}
        #: components it serves that are not registered (yet, or again)
        self.unregistered = {name, self.proxied} - {""}
        #: callbacks that came while it was stopped (None: running)
        self.held: list[tuple[int, bytes]] | None = None
        #: told to terminate, about to exit
        self.exiting = False
        #: answers the next CSI-set callback with an error (and does not take the state on)
        self.refuse_next = False
        #: what it did of the faults it was given (amf_faults)
        self.crashed = self.refused = self.left = False
        #: unregister requests in flight -> when to register again
        self._unreg_seq: dict[int, float] = {}
        sim.amf_procs.append(self)
        host.lib_connect(self)
        self._register()

    def _alive(self) -> bool:
        return self.sim.hosts.get(self.nid) is self.host and not self.closed

    def _register(self, proxied: bool = False) -> None:
        if self._alive():
            self.seq += 1
            self._reg_seq[self.seq] = self.proxied if proxied else self.name
            names = (self.proxied.encode(), self.name.encode()) if proxied \
                else (self.name.encode(), b"")
            self.host.lib_request(self, aw.AMF_REQ_REGISTER, self.seq, aw.encode_names(*names))

    @property
    def node_name(self) -> str:
        return self.sim.nodes[self.nid].name

    def hang(self, length: float) -> None:
        """Stop for ``length`` s: callbacks wait in the socket meanwhile."""
        if self._alive() and self.held is None:
            self.held = []
            self.sim.tr(self.sim.nodes[self.nid],
                        f"AMF process {self.name} stops for {length:.2f}s")
            self.host.call_later(length, self._resume)

    def _resume(self) -> None:
        held, self.held = self.held or [], None
        for msg_id, body in held:
            self.send_callback(msg_id, body)

    def send_callback(self, msg_id: int, body: bytes = b"", error: int = SA_OK) -> None:
        if self.held is not None:
            self.held.append((msg_id, body))
            return
        answer = aw.AMF_REQ_RESPONSE
        if msg_id == aw.AMF_CB_HEALTHCHECK:
            inv = aw.decode_healthcheck_cb_untrusted(body).invocation
        elif msg_id == aw.AMF_CB_READINESS_SET:
            cb = aw.decode_readiness_set_cb_untrusted(body)
            inv = cb.invocation
            if cb.readiness_state == aw.SA_AMF_STOPPING:
                answer = aw.AMF_REQ_STOPPING_COMPLETE
        elif msg_id == aw.AMF_CB_CSI_SET:
            cs = aw.decode_csi_set_cb_untrusted(body)
            inv = cs.invocation
            if self.refuse_next:
                self.refuse_next, self.refused = False, True
                self.sim.tr(self.sim.nodes[self.nid], f"AMF process {self.name} refuses "
                            f"{cs.csi_name.decode()!r} HA state {cs.ha_state}")
                self.host.call_later(0.001, lambda: self._answer(inv, answer, FailedOperation.code))
                return
            self.belief[(cs.comp_name.decode(), cs.csi_name.decode())] = cs.ha_state
        elif msg_id == aw.AMF_CB_CSI_REMOVE:
            cr = aw.decode_csi_remove_cb_untrusted(body)
            inv = cr.invocation
            self._forget(cr.comp_name.decode(), cr.csi_name.decode())
        elif msg_id == aw.AMF_CB_PENDING_CONFIRM:
            inv = aw.decode_invocation_cb_untrusted(body).invocation
        elif msg_id == aw.AMF_CB_TERMINATE:
            # Answer, exit, and come back 0.3 s later (a supervisor restarts it).
            cb = aw.decode_invocation_cb_untrusted(body)
            inv = cb.invocation
            self.belief.clear()  # (a proxy stops relaying for its proxied one too)
            self.exiting = True
            self.host.call_later(0.001, lambda: self._answer(inv, answer))
            self.host.call_later(0.002, self._exit)
            return
        elif msg_id in (aw.AMF_CB_EXT_RESTART, aw.AMF_CB_EXT_CONTROL):
            # The proxy restarts the proxied one (unregister, register again 0.3 s
            # later) or powers it off (it keeps its registration, serving nothing).
            cb = aw.decode_invocation_cb_untrusted(body)
            inv = cb.invocation
            self._forget(cb.comp_name.decode())
            if msg_id == aw.AMF_CB_EXT_RESTART:
                self.host.call_later(0.002, self._unregister_proxied)
                self.host.call_later(0.3, lambda: self._register(proxied=True))
        else:
            return
        self.host.call_later(0.001, lambda: self._answer(inv, answer))

    def _forget(self, comp: str, csi: str = "") -> None:
        """No longer acting for ``csi`` of ``comp`` (every CSI of it: "")."""
        for key in [k for k in self.belief if k[0] == comp and csi in ("", k[1])]:
            del self.belief[key]

    def _answer(self, inv: int, msg_id: int = aw.AMF_REQ_RESPONSE, error: int = SA_OK) -> None:
        if self._alive():
            self.seq += 1
            self.host.lib_request(self, msg_id, self.seq,
                                  aw.encode_response(aw.Response(inv, error)))

    def leave(self, back_after: float) -> None:
        """Unregister (as testamf2 does) and register again ``back_after`` s after the
        answer; it acts for its component until the unregistration is answered."""
        if self._alive() and not self.proxied and not self.exiting and self.held is None \
                and self.name not in self.unregistered:
            self.left = True
            self.sim.tr(self.sim.nodes[self.nid], f"AMF process {self.name} unregisters")
            self.unregistered.add(self.name)
            self._send_unregister(back_after)

    def _send_unregister(self, back_after: float) -> None:
        if self._alive():
            self.seq += 1
            self._unreg_seq[self.seq] = back_after
            self.host.lib_request(self, aw.AMF_REQ_UNREGISTER, self.seq,
                                  aw.encode_names(self.name.encode(), b""))

    def crash(self, back_after: float | None) -> None:
        """Die without a word (callbacks in flight unanswered); started again
        ``back_after`` s later (None: never)."""
        if self._alive():
            self.crashed = True
            self.sim.tr(self.sim.nodes[self.nid], f"AMF process {self.name} crashes"
                        + ("" if back_after is None else f", back in {back_after:.2f}s"))
            self._exit(back_after)

    def _exit(self, back_after: float | None = 0.3) -> None:
        if not self._alive():
            return
        self.closed = True
        self.belief.clear()
        self.host.lib_exit(self)
        if self.started is not None:
            self.started.exited(self.started.term_status if self.exiting else -signal.SIGKILL)
            return
        if back_after is None:
            return

        token = object()

        def restart() -> None:
            del self.sim.amf_restarts[token]
            if self.sim.hosts.get(self.nid) is self.host:
                _AmfComp(self.sim, self.nid, self.inc, self.host, self.name)
        self.sim.amf_restarts[token] = self.host
        self.host.call_later(back_after, restart)

    def _unregister_proxied(self) -> None:
        if self._alive():
            self.seq += 1
            self.unregistered.add(self.proxied)
            self.host.lib_request(self, aw.AMF_REQ_UNREGISTER, self.seq, aw.encode_names(
                self.proxied.encode(), self.name.encode()))

    def send_response(self, msg_id: int, seq: int, error: int, body: bytes = b"") -> None:
        if msg_id == aw.AMF_REQ_UNREGISTER and seq in self._unreg_seq:
            back_after = self._unreg_seq.pop(seq)
            if error in (SA_OK, NotExist.code):
                self._forget(self.name)
                self.host.call_later(back_after, self._register)
            else:
                self.host.call_later(0.5, lambda: self._send_unregister(back_after))
            return
        if msg_id != aw.AMF_REQ_REGISTER:
            return
        name = self._reg_seq.pop(seq, self.name)
        proxied = name != self.name
        if error != SA_OK:
            if name in self.unregistered:  # (not: a second registration of a restart)
                self.host.call_later(0.5, lambda: self._register(proxied))
            return
        self.unregistered.discard(name)
        if self.proxied and not proxied:
            self._register(proxied=True)

    def close(self, reason: str = "") -> None:
        self.closed = True


class _SimChild:
    """A process AMF started (``ServiceHost.spawner``): an ``_AmfComp`` that connects
    and registers 50 ms later; SIGKILL ends it at once, other signals 1 ms later (it
    exits as asked); AMF hears of every exit through ``on_exit``."""

    _pids = 1000

    def __init__(self, sim: ServiceSim, nid: int, inc: int, host: ServiceHost, name: str,
                 on_exit: Callable[[int], None]) -> None:
        _SimChild._pids += 1
        self.pid = _SimChild._pids
        self.sim, self.host, self.on_exit = sim, host, on_exit
        self.proc: _AmfComp | None = None
        self.returncode: int | None = None
        #: its exit status when it exits as asked (0; -SIGTERM once sent that)
        self.term_status = 0

        def run() -> None:
            if self.returncode is None and sim.hosts.get(nid) is host:
                self.proc = _AmfComp(sim, nid, inc, host, name, started=self)
        host.call_later(0.05, run)

    def kill(self, sig: int) -> None:
        if self.returncode is not None:
            return
        if self.proc is None:
            self.exited(-sig)
        elif sig == signal.SIGKILL:
            self.proc.crash(None)
        else:
            self.term_status = -sig
            self.proc.exiting = True
            self.host.call_later(0.001, self.proc._exit)

    def exited(self, rc: int) -> None:
        if self.returncode is None:
            self.returncode = rc
            self.host.call_later(0.0, lambda: self.on_exit(rc))


#: recommended recoveries the simulated operator reports errors with
_SIM_RECOVERIES = (aw.SA_AMF_COMPONENT_RESTART, aw.SA_AMF_COMPONENT_FAILOVER,
                   aw.SA_AMF_NODE_SWITCHOVER, aw.SA_AMF_INTERNALLY_RECOVERED)


class _AmfAdmin:
    """An operator on one node incarnation: ``count`` times, locks or shuts down a random
    unit (or locks a random node) and unlocks it 0.2-2 s later, or reports an error on a
    random component (with a random recommended recovery) and cancels it 0.2-2 s later.
    Random choices come from its own seeded generator, so the base simulator's draws are
    unchanged."""

    def __init__(self, sim: ServiceSim, nid: int, inc: int, host: ServiceHost,
                 units: list[str], comps: list[str], count: int) -> None:
        self.sim, self.nid, self.host = sim, nid, host
        self.conn_id = host.new_conn_id()
        self.service_id = aw.AMF_SERVICE_ID
        self.private: dict[str, Any] = {}
        self.uid = self.gid = self.pid = 0
        self.closed = False
        self.seq = 0
        rng = random.Random(f"amf-admin {sim.seed} {nid} {inc}")
        host.lib_connect(self)
        for _ in range(count):
            at = rng.uniform(0.5, max(1.0, sim.o.duration))
            later = at + rng.uniform(0.2, 2.0)
            x = rng.random()
            if x < 0.15:
                addr = str(ipaddress.IPv4Address(rng.choice(sorted(sim.nodes)))).encode()
                host.call_later(at, self._request(aw.AMF_REQ_ADMIN, aw.encode_admin(
                    aw.AdminRequest(aw.AMF_ADMIN_LOCK_NODE, addr))))
                host.call_later(later, self._request(aw.AMF_REQ_ADMIN, aw.encode_admin(
                    aw.AdminRequest(aw.AMF_ADMIN_UNLOCK_NODE, addr))))
            elif x < 0.6:
                unit = rng.choice(units)
                op = rng.choice((aw.AMF_ADMIN_LOCK, aw.AMF_ADMIN_SHUTDOWN))
                host.call_later(at, self._op(op, unit))
                host.call_later(later, self._op(aw.AMF_ADMIN_UNLOCK, unit))
            else:
                comp = rng.choice(comps).encode()
                report = aw.encode_error_report(aw.ErrorReport(
                    b"operator", comp, 0, aw.ErrorDescriptor(
                        probable_cause=aw.SA_AMF_SOFTWARE_ERROR,
                        recommended_recovery=rng.choice(_SIM_RECOVERIES))))
                host.call_later(at, self._request(aw.AMF_REQ_ERROR_REPORT, report))
                host.call_later(later, self._request(aw.AMF_REQ_ERROR_CANCEL_ALL,
                                                     aw.encode_name(comp)))

    def _op(self, op: int, unit: str) -> Callable[[], None]:
        return self._request(aw.AMF_REQ_ADMIN, aw.encode_admin(
            aw.AdminRequest(op, unit.encode())))

    def _request(self, msg_id: int, body: bytes) -> Callable[[], None]:
        def run() -> None:
            if self.sim.hosts.get(self.nid) is self.host:
                self.seq += 1
                self.host.lib_request(self, msg_id, self.seq, body)
        return run

    def send_callback(self, msg_id: int, body: bytes = b"", error: int = SA_OK) -> None:
        pass

    def send_response(self, msg_id: int, seq: int, error: int, body: bytes = b"") -> None:
        # BAD_OPERATION (already locked, not locked, not registered) is part of the game
        if error == SA_OK:
            self.sim.amf_admin_ok += 1

    def close(self, reason: str = "") -> None:
        self.closed = True


EVS_G, EVS_H = ew.group_key(b"G"), ew.group_key(b"H")


class _EvsMember:
    """An EVS process on one node incarnation (``SvcOptions.evs``): joins G (every other
    one H too), then multicasts numbered messages to its joined groups one at a time,
    20-80 ms apart, retrying TRY_AGAIN; every other one leaves H half-way.  Records every
    callback, for ``check_evs_history`` and ``check_evs_state``."""

    def __init__(self, sim: ServiceSim, node: _Node, host: ServiceHost, k: int,
                 count: int) -> None:
        self.sim, self.nid, self.inc, self.host = sim, node.id, node.inc, host
        self.conn_id = host.new_conn_id()
        self.service_id = ew.EVS_SERVICE_ID
        self.private: dict[str, Any] = {}
        self.uid = self.gid = 0
        self.pid = 100 + k + 1000 * node.inc  # unique across incarnations: views are too
        self.closed = False
        self.name = f"{node.name}.{node.inc}/e{k}"
        self.tag = sim.next_uid  # numbers this process's messages: b"<tag>:<n>"
        sim.next_uid += 1
        self.key = (node.id, self.conn_id, self.pid)
        self.groups = {EVS_G, EVS_H} if k % 2 else {EVS_G}
        self.leaves_h = bool(k % 2)
        self.count = count
        self.sent = 0
        #: ("msg", sender tag, n) and ("conf", group, members) in callback order
        self.events: list[tuple[Any, ...]] = []
        #: numbers of this process's messages the executive took (answered OK), in order
        self.taken: list[int] = []
        self.pending: int | None = None  # the seq of the request in flight
        self._seq = 0
        self._what: dict[int, tuple[str, int]] = {}
        self.joined = False
        host.lib_connect(self)
        self._step()

    @property
    def alive(self) -> bool:
        return self.sim.hosts.get(self.nid) is self.host and not self.closed

    def _request(self, kind: str, n: int, msg_id: int, body: bytes) -> None:
        self._seq += 1
        self.pending = self._seq
        self._what[self._seq] = (kind, n)
        self.host.lib_request(self, msg_id, self._seq, body)

    def _next(self, delay: float) -> None:
        self.sim.push(self.sim.now + delay, _CALL, self._step)

    def _step(self) -> None:
        if not self.alive or self.pending is not None:
            return
        if not self.joined:
            self._request("join", 0, ew.EVS_REQ_JOIN, ew.encode_group_list(sorted(self.groups)))
        elif self.leaves_h and self.sent >= self.count // 2:
            self._request("leave", 0, ew.EVS_REQ_LEAVE, ew.encode_group_list([EVS_H]))
        elif self.sent < self.count:
            n = self.sent + 1
            data = b"%d:%d" % (self.tag, n)
            self._request("mcast", n, ew.EVS_REQ_MCAST_JOINED, ew.encode_mcast(
                ew.McastRequest(2, 3, (), data), True))

    def send_response(self, msg_id: int, seq: int, error: int, body: bytes = b"") -> None:
        kind, n = self._what.pop(seq, ("?", 0))
        if seq == self.pending:
            self.pending = None
        if not self.alive:
            return
        if kind == "mcast":
            if error == SA_OK:
                self.taken.append(n)
                self.sent = n
            elif error != TryAgain.code:
                self.sim.violations.append(Violation(
                    "evs", f"{self.name}: multicast #{n} answered with error {error}"))
                self.sent = n  # (not retried)
        elif error == SA_OK:
            if kind == "join":
                self.joined = True
            else:
                self.leaves_h = False
                self.groups.discard(EVS_H)
        elif error != TryAgain.code:
            self.sim.violations.append(Violation(
                "evs", f"{self.name}: {kind} answered with error {error}"))
        self._next(self.sim.rng.uniform(0.02, 0.08))

    def send_callback(self, msg_id: int, body: bytes = b"", error: int = SA_OK) -> None:
        if self.closed:
            return
        if msg_id == ew.EVS_CB_DELIVER:
            cb = ew.decode_deliver_untrusted(body)
            tag, n = cb.data.split(b":")
            self.events.append(("msg", int(tag), int(n)))
        elif msg_id == ew.EVS_CB_CONFCHG:
            c = ew.decode_confchg_untrusted(body)
            self.events.append(("conf", c.group, frozenset(
                (m.node, m.conn, m.pid) for m in c.members)))

    def close(self, reason: str = "") -> None:
        self.closed = True


def check_refs(svc: CkptService, local: dict[int, dict[tuple[int, int, int], int]]
               ) -> list[Violation]:
    """(e) Reference counts, once settled: every live node's count in the replicated
    state (``svc``: any live node's service, all alike by (a)) is the number of handles
    its live clients hold open (``local``: node id -> checkpoint id -> handles), and no
    handle names a checkpoint that is gone.  A client that died closed all of its."""
    vs = []
    for node, mine in sorted(local.items()):
        for ck_id in sorted(set(mine) | {i for i, ck in svc.ckpts.items() if node in ck.refs}):
            ck = svc.ckpts.get(ck_id)
            if ck is None:
                vs.append(Violation("ckpt-refs", f"node {node:#x}: {mine[ck_id]} handle(s) "
                                                 f"open on checkpoint {ck_id}, which is gone"))
            elif ck.refs.get(node, 0) != mine.get(ck_id, 0):
                vs.append(Violation("ckpt-refs", f"{ck.name.decode(errors='replace')} "
                                                 f"{ck_id}: node {node:#x} holds "
                                                 f"{mine.get(ck_id, 0)} handle(s) open, the "
                                                 f"replicated count is {ck.refs.get(node, 0)}"))
    return _capped(vs)


def check_evs_history(members: list[_EvsMember], live: list[_EvsMember]
                      ) -> list[Violation]:
    """EVS delivery over the whole run, dead processes' histories included: one agreed
    order (any two processes deliver the messages they share in the same order), each
    sender's messages in the order it sent them, no message twice or never sent, and
    every process alive at the end got each of its own messages the executive took."""
    vs: list[Violation] = []
    alive = {id(m) for m in live}  # (a restarted node's processes may reuse conn ids)
    sent = {(m.tag, n) for m in members for n in range(1, m.sent + 1)}
    orders: list[tuple[_EvsMember, dict[tuple[int, int], int]]] = []
    for m in members:
        seen: dict[tuple[int, int], int] = {}
        last: dict[int, int] = {}
        for e in m.events:
            if e[0] != "msg":
                continue
            k = (e[1], e[2])
            if k in seen:
                vs.append(Violation("evs", f"{m.name} got message {k} twice"))
            elif k not in sent:
                vs.append(Violation("evs", f"{m.name} got message {k}, never sent"))
            elif e[2] <= last.get(e[1], 0):
                vs.append(Violation("evs", f"{m.name} got {k} after #{last[e[1]]} of that "
                                           "sender"))
            seen[k] = len(seen)
            last[e[1]] = max(e[2], last.get(e[1], 0))
        orders.append((m, seen))
        if id(m) in alive:
            mine = [e[2] for e in m.events if e[0] == "msg" and e[1] == m.tag]
            if mine != m.taken:
                vs.append(Violation("evs", f"{m.name} delivered {mine[:8]}... of its own "
                                           f"messages, not the {len(m.taken)} taken"))
    for i, (a, oa) in enumerate(orders):
        for b, ob in orders[i + 1:]:
            common = [k for k in ob if k in oa]  # in b's order
            pos = [oa[k] for k in common]
            if any(x > y for x, y in zip(pos, pos[1:])):
                vs.append(Violation("evs", f"{a.name} and {b.name} delivered messages in "
                                           "different orders"))
    return _capped(vs)


def check_evs_synchrony(members: list[_EvsMember]) -> list[Violation]:
    """Virtual synchrony, per group: two processes that both install a view of a group
    and then, next, the same following view delivered the same messages between the
    two.  Views are matched by their member lists; a pair of consecutive views that
    one process installed more than once (possible when a restarted node's processes
    reuse a conn id) is left out rather than guessed at."""
    vs: list[Violation] = []
    # per process and group: {(view, next view): messages delivered between} -- every
    # message reaches a process in each of its groups it shares, so each group's epochs
    # hold all the process's messages (the simulated processes all join G)
    spans: list[tuple[_EvsMember, dict[tuple[bytes, Any, Any], frozenset[Any] | None]]] = []
    for m in members:
        pairs: dict[tuple[bytes, Any, Any], frozenset[Any] | None] = {}
        current: dict[bytes, tuple[Any, list[Any]]] = {}
        for e in m.events:
            if e[0] == "msg":
                for _, since in current.values():
                    since.append((e[1], e[2]))
                continue
            g, view = e[1], e[2]
            if g in current:
                before, since = current[g]
                key = (g, before, view)
                pairs[key] = None if key in pairs else frozenset(since)
            current[g] = (view, [])
        spans.append((m, pairs))
    for i, (a, pa) in enumerate(spans):
        for b, pb in spans[i + 1:]:
            for key, got in pa.items():
                other = pb.get(key, None)
                if got is None or other is None or got == other:
                    continue
                g, _before, after = key
                vs.append(Violation("evs", f"{a.name} and {b.name} both went from one "
                                           f"view of {g.rstrip(bytes(1)).decode()} to the "
                                           f"next ({len(after)} members) having delivered "
                                           f"different messages: {sorted(got - other)[:4]} "
                                           f"only at {a.name}, {sorted(other - got)[:4]} "
                                           f"only at {b.name}"))
    return _capped(vs)


def check_evs_senders(members: list[_EvsMember]) -> list[Violation]:
    """A process delivers messages only from itself and from processes some view of
    it has shown: a sender on the far side of a merge whose round has not completed
    shares no view with it.  (The simulated processes multicast only to groups they
    joined.)"""
    vs: list[Violation] = []
    key_of = {m.tag: m.key for m in members}
    for m in members:
        seen = {m.key}
        for e in m.events:
            if e[0] == "conf":
                seen |= e[2]
            elif key_of.get(e[1]) not in seen:
                vs.append(Violation("evs", f"{m.name} got message {(e[1], e[2])} from a "
                                           "process no view of it had shown"))
                break
    return _capped(vs)


def check_evs_state(tables: dict[str, dict[bytes, frozenset[tuple[int, int, int]]]],
                    members: list[_EvsMember]) -> list[Violation]:
    """Every live node's group table lists exactly the live processes of each group, and
    each live process's last configuration callback for its groups says the same."""
    want: dict[bytes, frozenset[tuple[int, int, int]]] = {}
    for g in (EVS_G, EVS_H):
        keys = frozenset(m.key for m in members if g in m.groups)
        if keys:
            want[g] = keys
    vs = [Violation("evs", f"{n}: groups {_groups_text(t)}, live members "
                           f"{_groups_text(want)}") for n, t in sorted(tables.items())
          if t != want]
    for m in members:
        for g in sorted(m.groups):
            last = [e[2] for e in m.events if e[0] == "conf" and e[1] == g]
            if not last or last[-1] != want.get(g):
                vs.append(Violation("evs", f"{m.name}: last view of "
                                           f"{g.rstrip(bytes(1)).decode()} "
                                           f"{sorted(last[-1]) if last else None}, live "
                                           f"members {sorted(want.get(g, ()))}"))
    return _capped(vs)


def _groups_text(t: dict[bytes, frozenset[tuple[int, int, int]]]) -> str:
    return ", ".join(f"{g.rstrip(bytes(1)).decode()}: {len(k)}" for g, k in sorted(t.items()))


class _TrackConn:
    """A CLM client: SA_TRACK_CURRENT | SA_TRACK_CHANGES, keeping the last callback."""

    def __init__(self, host: ServiceHost) -> None:
        self.conn_id = host.new_conn_id()
        self.service_id = w.CLM_SERVICE_ID
        self.private: dict[str, Any] = {}
        self.uid = self.gid = self.pid = 0
        self.closed = False
        self.last: w.ClmTrackCallback | None = None
        self.error = SA_OK
        host.lib_connect(self)
        host.lib_request(self, w.CLM_REQ_TRACK_START, 1, w.encode_clm_track_start(
            w.ClmTrackStart(SA_TRACK_CURRENT | SA_TRACK_CHANGES, 0)))

    def send_callback(self, msg_id: int, body: bytes = b"", error: int = SA_OK) -> None:
        if msg_id == w.CLM_CB_TRACK and not self.closed:
            self.last = w.decode_clm_track_callback_untrusted(body)

    def send_response(self, msg_id: int, seq: int, error: int, body: bytes = b"") -> None:
        self.error = error

    def close(self, reason: str = "") -> None:
        self.closed = True


class _PgTracker:
    """An AMF client tracking every protection group (SA_TRACK_CURRENT |
    SA_TRACK_CHANGES), keeping each one's last callback as (component, readiness, HA
    state) triples."""

    def __init__(self, host: ServiceHost, csis: list[str]) -> None:
        self.conn_id = host.new_conn_id()
        self.service_id = aw.AMF_SERVICE_ID
        self.private: dict[str, Any] = {}
        self.uid = self.gid = self.pid = 0
        self.closed = False
        self.last: dict[str, tuple[tuple[str, int, int], ...]] = {}
        self.errors: list[int] = []
        host.lib_connect(self)
        for k, csi in enumerate(csis, 1):
            host.lib_request(self, aw.AMF_REQ_PG_TRACK_START, k, aw.encode_pg_track_start(
                aw.PgTrackStart(csi.encode(), SA_TRACK_CURRENT | SA_TRACK_CHANGES, 0)))

    def send_callback(self, msg_id: int, body: bytes = b"", error: int = SA_OK) -> None:
        if msg_id == aw.AMF_CB_PG_TRACK and not self.closed:
            cb = aw.decode_pg_track_cb_untrusted(body)
            self.last[cb.csi_name.decode()] = tuple(
                (n.member.comp_name.decode(), n.member.readiness_state, n.member.ha_state)
                for n in cb.items)

    def send_response(self, msg_id: int, seq: int, error: int, body: bytes = b"") -> None:
        if error != SA_OK:
            self.errors.append(error)

    def close(self, reason: str = "") -> None:
        self.closed = True


def check_pg_trackers(svc: AmfService, trackers: dict[str, _PgTracker]) -> list[Violation]:
    """(d) for AMF's protection group tracking: each live node's tracker of every
    protection group was last told the members' readiness and HA states the (common)
    state gives them."""
    vs = []
    for node, t in sorted(trackers.items()):
        if t.errors:
            vs.append(Violation("amf-pg-track", f"{node}: track start refused {t.errors}"))
        for csi in sorted(svc.protections):
            want = tuple((m.comp_name.decode(), m.readiness_state, m.ha_state)
                         for m in svc._pg_members(csi))
            if t.last.get(csi) != want:
                vs.append(Violation("amf-pg-track", f"{node}: last {csi} callback "
                                                    f"{t.last.get(csi)}, the state {want}"))
    return _capped(vs)


class _Conn:
    """A ``LibConn`` without a socket: frames go to its client."""

    def __init__(self, conn_id: int, service_id: int, client: _Client) -> None:
        self.conn_id = conn_id
        self.service_id = service_id
        self.private: dict[str, Any] = {}
        self.uid = self.gid = self.pid = 0
        self.client = client
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def send_callback(self, msg_id: int, body: bytes = b"", error: int = SA_OK) -> None:
        pass  # the simulated clients make no asynchronous calls

    def send_response(self, msg_id: int, seq: int, error: int, body: bytes = b"") -> None:
        if not self._closed:
            self.client.on_response(seq, error, body)

    def close(self, reason: str = "") -> None:
        self._closed = True
        self.client.sim.tr(None, f"{self.client.name}: connection closed: {reason}")


@dataclass
class _Req:
    seq: int
    kind: str
    msg_id: int
    body: bytes
    sent: float
    info: dict[str, Any] = field(default_factory=dict)


Reply = tuple[int, bytes]
#: a client step: yields requests (kind, request id, body, info), receives replies
Call = Generator[Any, Any, Reply]


class _Client:
    """One simulated CKPT client: one request at a time, like a blocking SAF call."""

    def __init__(self, sim: ServiceSim, node: _Node, k: int, uid: int,
                 script: Callable[[_Client], Generator[Any, Any, Any]] | None = None) -> None:
        self.sim = sim
        self.node_id = node.id
        self.inc = node.inc
        self.uid = uid
        self.name = f"{node.name}.{node.inc}/c{k}"
        host = sim.hosts[node.id]
        assert host is not None
        self.host: ServiceHost = host
        self.conn = _Conn(self.host.new_conn_id(), cw.CKPT_SERVICE_ID, self)
        self.host.lib_connect(self.conn)
        self.seq = 0
        self.alive = True
        self.pending: _Req | None = None
        self.reply: Reply | None = None
        self.counters: dict[bytes, int] = {}
        self.gen = (script or _workload)(self)
        self.started = False
        self.finished = False
        #: (ckpt id, name, mode) by handle
        self.handles: dict[int, tuple[tuple[int, int, int], bytes, int]] = {}
        self.on_ack: Callable[[_Client, Ack], None] | None = None
        #: the handle a scenario's steps share
        self.handle = 0
        #: died on its own (``client_crashes``), not with its node
        self.crashed = False

    def step(self) -> None:
        """Send the script's next request, if the last one was answered."""
        if not self.alive or self.pending is not None or self.finished:
            return
        try:
            if not self.started:
                self.started = True
                item = next(self.gen)
            else:
                item = self.gen.send(self.reply)
        except StopIteration:
            self.finished = True
            return
        self.reply = None
        kind, msg_id, body, info = item
        if kind == "sleep":
            return
        self.seq += 1
        req = _Req(self.seq, kind, msg_id, body, self.sim.now, info)
        self.pending = req
        self.sim.requests += 1
        self.sim.tr(self.sim.nodes[self.node_id], f"{self.name} -> {kind} #{req.seq} "
                    f"{_describe(info)}")
        self.host.lib_request(self.conn, msg_id, req.seq, body)

    def on_response(self, seq: int, error: int, body: bytes) -> None:
        req = self.pending
        if req is None or req.seq != seq:
            self.sim.violations.append(Violation(
                "spurious", f"{self.name}: response to request {seq}, which is not waiting"))
            return
        self.pending = None
        self.sim.answered += 1
        if req.kind == "write" and error == SA_OK:
            error = cw.decode_write_reply_untrusted(body)[0]
        self.reply = (error, body)
        self.sim.tr(self.sim.nodes[self.node_id], f"{self.name} <- {req.kind} #{seq}: "
                    f"{'OK' if error == SA_OK else error}")
        if error == SA_OK:
            self.sim.on_ok(self, req, body)

    def kill(self) -> None:
        self.alive = False
        self.conn._closed = True
        self.pending = None


def _describe(info: dict[str, Any]) -> str:
    return " ".join(f"{k}={v.decode() if isinstance(v, bytes) else v}"
                    for k, v in info.items())


def _call(kind: str, msg_id: int, body: bytes, **info: Any) -> Call:
    """One request, retried while the answer is TRY_AGAIN; returns (error, body)."""
    while True:
        reply = yield (kind, msg_id, body, info)
        if reply[0] != TryAgain.code:
            return reply
        yield ("sleep", 0, b"", {})  # let some time pass (one step) before retrying


def op_open(name: bytes, attrs: cw.CreationAttributes | None) -> Call:
    flags = RW | (CREATE if attrs is not None else 0)
    return _call("open", cw.REQ_OPEN, cw.encode_open(cw.OpenReq(name, flags, attrs)),
                 name=name)


def op_hcall(kind: str, msg_id: int, h: int, rest: bytes, **info: Any) -> Call:
    return _call(kind, msg_id, cw.HANDLE.pack(h) + rest, h=h, **info)


def op_section_create(c: _Client, h: int, sid: bytes, size: int) -> Call:
    data = value_of(c.uid, 0, size)
    c.sim.written.setdefault(sid, (c.uid, 0))
    now = int(c.sim.now * 1e9)
    return op_hcall("section_create", cw.REQ_SECTION_CREATE, h, cw.encode_section_create(
        cw.SectionCreateReq(sid, SA_TIME_END, SA_TIME_END, now, data)), sid=sid, n=0)


def op_write(c: _Client, h: int, sid: bytes, size: int, overwrite: bool) -> Call:
    n = c.counters.get(sid, 0) + 1
    c.counters[sid] = n
    c.sim.written[sid] = (c.uid, max(c.sim.written.get(sid, (0, 0))[1], n))
    data = value_of(c.uid, n, size)
    now = int(c.sim.now * 1e9)
    if overwrite:
        return op_hcall("overwrite", cw.REQ_OVERWRITE, h,
                        cw.encode_overwrite(now, sid, data), sid=sid, n=n, size=len(data))
    return op_hcall("write", cw.REQ_WRITE, h, cw.encode_write(cw.WriteReq(now, ((sid, 0, data),))),
                    sid=sid, n=n, size=len(data))


def _workload(c: _Client) -> Generator[Any, Any, Any]:
    """The random client: stable checkpoints, own sections, writes, reads, churn."""
    sim = c.sim
    rng = sim.rng
    o = sim.o
    opened: list[int] = []
    sections: dict[int, list[bytes]] = {}
    nsec = 0
    while True:
        r = rng.random()
        if not opened or (r < 0.04 and len(opened) < o.stable):
            i = rng.randrange(o.stable)
            err, body = yield from op_open(stable_name(i), stable_attrs(i))
            if err == SA_OK:
                h = cw.decode_handle_untrusted(body)
                opened.append(h)
                sections[h] = []
                if stable_attrs(i).creation_flags != cw.SA_CKPT_WR_ALL_REPLICAS:
                    yield from op_hcall("active_set", cw.REQ_ACTIVE_SET, h, b"")
            continue
        h = rng.choice(opened)
        secs = sections[h]
        if not secs or (r < 0.12 and len(secs) < 6):
            nsec += 1
            sid = b"%d.%d" % (c.uid, nsec)
            err, _ = yield from op_section_create(c, h, sid, rng.randrange(16, 200))
            if err == SA_OK:
                secs.append(sid)
            elif err == BadHandle.code:
                opened.remove(h)
            elif err == NotExist.code:
                yield from op_hcall("active_set", cw.REQ_ACTIVE_SET, h, b"")
            continue
        if r < 0.75:
            sid = rng.choice(secs)
            x = rng.random()
            size = (rng.randrange(40, 300) if x < 0.6 else rng.randrange(300, 3000)
                    if x < 0.9 else rng.randrange(3000, max(3001, o.max_write)))
            err, _ = yield from op_write(c, h, sid, size, overwrite=rng.random() < 0.3)
            if err == NotExist.code:
                yield from op_hcall("active_set", cw.REQ_ACTIVE_SET, h, b"")
            elif err == BadHandle.code:
                opened.remove(h)
            continue
        if r < 0.88:
            sid = rng.choice(secs)
            err, body = yield from op_hcall("read", cw.REQ_READ, h,
                                            cw.encode_read([(sid, 0, cw.READ_ALL)]), sid=sid)
            if err == SA_OK:
                e, _, datas = cw.decode_read_reply_untrusted(body)
                if e == SA_OK and datas and sid in sim.written and decode_value(datas[0]) is None:
                    sim.violations.append(Violation(
                        "torn", f"{c.name}: read of {sid.decode()} returned {len(datas[0])} "
                                f"bytes that no client wrote"))
            continue
        # churn: a short-lived checkpoint, closed and sometimes unlinked
        name = b"churn-%d" % rng.randrange(CHURN_NAMES)
        err, body = yield from op_open(name, churn_attrs())
        if err != SA_OK:
            continue
        ch = cw.decode_handle_untrusted(body)
        nsec += 1
        sid = b"%d.%d" % (c.uid, nsec)
        err, _ = yield from op_section_create(c, ch, sid, rng.randrange(16, 2000))
        if err == SA_OK:
            yield from op_write(c, ch, sid, rng.randrange(16, 4000), overwrite=False)
        yield from op_hcall("close", cw.REQ_CLOSE, ch, b"")
        if rng.random() < 0.5:
            yield from _call("unlink", cw.REQ_UNLINK, name, name=name)


# --- the simulation ------------------------------------------------------------------------


class _Clock:
    """One incarnation's scheduler: host timers on the simulator's heap."""

    __slots__ = ("sim", "nid", "inc")

    def __init__(self, sim: ServiceSim, nid: int, inc: int) -> None:
        self.sim, self.nid, self.inc = sim, nid, inc

    def now(self) -> float:
        return self.sim.now

    def call_later(self, delay: float, fn: Callable[[], None]) -> _Timer:
        t = _Timer()
        self.sim.push(self.sim.now + max(0.0, delay), _HOST, self.nid, self.inc, t, fn)
        return t


class _Timer:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Port:
    """The host's ring: ``srp.mcast`` of one incarnation.

    Like ``ais.totem.transport``, it only queues what the core answers (on
    the node's FIFO) and carries it out after the caller returned: the host
    never gets a ring event inside its own ``mcast``.
    """

    __slots__ = ("sim", "node", "inc")

    def __init__(self, sim: ServiceSim, node: _Node) -> None:
        self.sim, self.node, self.inc = sim, node, node.inc

    def mcast(self, payload: bytes, awaited: bool = False) -> None:
        if self.node.srp is None or self.node.inc != self.inc:
            raise SendQueueFull()
        self._core(lambda srp, now: srp.mcast(payload, now, awaited))

    def requeue_front(self, payloads: list[bytes]) -> None:
        if self.node.srp is None or self.node.inc != self.inc:
            return
        self.sim.requeued += len(payloads)
        self._core(lambda srp, now: srp.requeue_front(payloads, now))

    def _core(self, call: Callable[[Any, float], list[Any]]) -> None:
        """Run ``call(srp, now)`` and queue what the core answers."""
        node, sim = self.node, self.sim
        sim.in_mcast = node.id
        try:
            acts = call(node.srp, sim.now)
            if acts:
                sim.queue_actions(node, acts)
        finally:
            sim.in_mcast = None


class _TraceHandler(logging.Handler):
    """Log records of the hosts and services become trace lines."""

    def __init__(self, sim: ServiceSim) -> None:
        super().__init__(logging.DEBUG)
        self.sim = sim

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string in a log call must not end the run
            msg = str(record.msg)
        self.sim.tr(None, f"{record.levelname.lower()}: {record.name}: {msg}")


class ServiceSim(Simulation):
    """One seeded run of hosts and clients over Srp.  See the module docstring."""

    def __init__(self, seed: int, options: SvcOptions,
                 srp_factory: Callable[..., Any] | None = None) -> None:
        super().__init__(seed, options, srp_factory)
        self.o: SvcOptions = options
        if options.config is None:
            self.config = TotemConfig(send_queue_limit=options.send_queue,
                                      send_queue_bytes=256 * 1024)
        self.sres = SvcResult(seed, options)
        self.amf_model = (SIM_AMF_SPAWN if options.amf_spawn else SIM_AMF_WIDE
                          if options.amf_admin else SIM_AMF_MODEL)
        #: AMF operator requests (admin, error report, cancel) answered SA_OK
        self.amf_admin_ok = 0
        #: every AMF component process started; the hosts of those waiting to start again
        self.amf_procs: list[_AmfComp] = []
        self.amf_restarts: dict[object, ServiceHost] = {}
        self.result = self.sres
        self.hosts: dict[int, ServiceHost | None] = {n: None for n in self.ids}
        self.fifo: dict[int, deque[Any]] = {n: deque() for n in self.ids}
        self.draining: dict[int, bool] = {n: False for n in self.ids}
        #: (node, incarnation) whose FIFO a host event will carry out (``queue_actions``)
        self.drain_armed: set[tuple[int, int]] = set()
        #: the node whose host is inside ``_Port.mcast`` (None: none)
        self.in_mcast: int | None = None
        self.clients: dict[int, list[_Client]] = {n: [] for n in self.ids}
        self.all_clients: list[_Client] = []
        #: EVS processes (SvcOptions.evs) per node, of its current incarnation; and all
        self.evs_members: dict[int, list[_EvsMember]] = {}
        self.all_evs: list[_EvsMember] = []
        #: messages hosts re-sent in front of their queues (an abandoned sync round's)
        self.requeued = 0
        self.next_uid = 1
        self.requests = 0
        self.answered = 0
        self.sync_rounds = 0
        #: per node: deliveries in its current regular configuration (quiescence)
        self.in_ring: dict[int, int] = {n: 0 for n in self.ids}
        self.ring_of: dict[int, RingId | None] = {n: None for n in self.ids}
        #: per (node, incarnation): regular configurations installed, in order
        self.installs: dict[tuple[int, int], list[RingId]] = {}
        #: per incarnation and checkpoint: the changes its replica reflects (delivered,
        #: or received with the state of a completed sync round), by message identity
        self.held: dict[tuple[int, int], dict[Any, set[Any]]] = {}
        #: what each member held as it installed a configuration: (ring, node) -> copy
        self.snap: dict[tuple[RingId, int], dict[Any, frozenset[Any]]] = {}
        #: (ring, (node, incarnation)) -> when that incarnation installed the ring
        self.installed_at: dict[tuple[RingId, tuple[int, int]], float] = {}
        self.members_of: dict[RingId, tuple[int, ...]] = {}
        #: checkpoints whose histories conflicted when sides merged (and ("name", name)
        #: keys: names each side had linked to a checkpoint the other never saw)
        self.conflicted: set[Any] = set()
        #: checkpoints sharing their name with one created on a side they never met
        self.name_conflicted: set[tuple[int, int, int]] = set()
        self.ck_names: dict[tuple[int, int, int], bytes] = {}
        self.client_acks: list[Ack] = []
        self.written: dict[bytes, tuple[int, int]] = {}
        #: incarnations that hold the cluster's state (module docstring (b))
        #: acknowledgements and their holders (module docstring (b))
        self.tracks: list[AckTrack] = []
        self.tracks_by_key: dict[Any, list[AckTrack]] = {}
        #: (node, incarnation, conn, seq) -> the last message that request caused, as
        #: delivered there, and the members of the configuration it was delivered in
        #: (node, incarnation, connection, request seq) of the opens that created
        #: their checkpoint
        self.creating_opens: set[tuple[int, int, int, int]] = set()
        self.key_of_request: dict[tuple[int, int, int, int],
                                  tuple[Any, frozenset[tuple[int, int]]]] = {}
        #: message -> the incarnations that applied it
        self.applied: dict[Any, set[tuple[int, int]]] = {}
        #: per node: members of its last configuration (regular or transitional)
        self.conf_members: dict[int, tuple[int, ...]] = {n: () for n in self.ids}
        #: per node: changes delivered while its host syncs (applied when the round ends)
        self.pending_upd: dict[int, list[tuple[Any, Any]]] = {n: [] for n in self.ids}
        self.asym_rules: list[tuple[int, str, bool]] = []  # (node, "in"/"out", big only)
        #: extra packet filters (scenarios): drop when f(src, dst, data) is True
        self.drop_rules: list[Callable[[int, int, bytes], bool]] = []
        #: send hooks (scenarios): called with (node, data) before the network sees it
        self.send_hooks: list[Callable[[_Node, bytes], None]] = []
        self.ack_crashes = options.ack_crashes
        self.split_writes = options.split_writes
        #: per incarnation: whether a holder was a member when its last configuration began
        self.trackers: dict[int, _TrackConn] = {}
        self.pg_trackers: dict[int, _PgTracker] = {}
        self.scripts: dict[int, Callable[[_Client], Generator[Any, Any, Any]]] = {}

    # -- schedule ----------------------------------------------------------------------

    def schedule(self) -> None:
        super().schedule()
        o, rng = self.o, self.rng
        ends = [self.quiet_at]
        for _ in range(o.restarts):
            self.push(rng.uniform(0.5, o.duration), _FAULT, "qcrash", None)
        for _ in range(o.asym):
            t0 = rng.uniform(0.3, o.duration)
            length = rng.uniform(1.0, 4.0)
            rule = (rng.choice(self.ids), rng.choice(("in", "out")), rng.random() < 0.5)
            self.push(t0, _FAULT, "asym_on", rule)
            self.push(t0 + length, _FAULT, "asym_off", rule)
            ends.append(t0 + length)
        if max(ends) > self.quiet_at:
            # the base schedule put the quiet phase at its own end: move it
            self.heap = [e for e in self.heap if not (e[2] == _FAULT and e[3] == "quiet")]
            heapq.heapify(self.heap)
            self.quiet_at = max(ends)
            self.push(self.quiet_at, _FAULT, "quiet", 0)
            self.deadline = self.quiet_at + o.settle

    def at(self, t: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` at virtual time ``t`` (scenarios)."""
        self.push(t, _CALL, fn)

    # -- the event loop (the base loop plus host timers and scenario calls) -------------

    def run(self) -> SvcResult:  # type: ignore[override]
        saved = getattr(ckpt_mod, "SYNC_BUDGET", None)
        log = logging.getLogger("ais")
        handler = _TraceHandler(self)
        old_level, old_prop = log.level, log.propagate
        log.addHandler(handler)
        log.propagate = False
        log.setLevel(logging.DEBUG if self.o.full_trace else logging.WARNING)
        if saved is not None:
            ckpt_mod.SYNC_BUDGET = self.o.sync_budget
        try:
            self.schedule()
            self._loop()
        finally:
            if saved is not None:
                ckpt_mod.SYNC_BUDGET = saved
            log.removeHandler(handler)
            log.setLevel(old_level)
            log.propagate = old_prop
        return self.finish()

    def _loop(self) -> None:
        heap, nodes = self.heap, self.nodes
        pop = heapq.heappop
        max_steps = self.o.max_steps
        try:
            while heap and not self.done:
                entry = pop(heap)
                t = entry[0]
                if t > self.deadline:
                    break
                self.steps += 1
                if self.steps > max_steps:
                    self.violations.append(Violation(
                        "liveness", f"step bound {max_steps} reached at t={self.now:.3f}"))
                    break
                self.now = t
                kind = entry[2]
                if kind == _PKT or kind == _TIMER or kind == _APP or kind == _HOST:
                    node = nodes[entry[3]]
                    if node.srp is None:
                        continue
                    if kind == _TIMER and (entry[4] != node.inc
                                           or node.gens.get(entry[5]) != entry[6]):
                        continue
                    if kind == _HOST and (entry[4] != node.inc or entry[5].cancelled):
                        continue
                    if node.paused:
                        node.held.append(entry)
                        continue
                    if kind == _PKT:
                        self.on_packet(node, entry[4], entry[5])
                    elif kind == _TIMER:
                        node.gens[entry[5]] = entry[6] + 1
                        self.tr(node, f"timer {entry[5].value}")
                        self.call(node, node.srp.timer, entry[5])
                    elif kind == _HOST:
                        entry[6]()
                    else:
                        self.on_app(node)
                elif kind == _FAULT:
                    getattr(self, "f_" + entry[3])(entry[4])
                elif kind == _CHECK:
                    self.on_check()
                elif kind == _CALL:
                    entry[3]()
            else:
                if not self.done and not self.violations:
                    self.violations.append(Violation("liveness", "event queue ran dry"))
        except Exception:  # a bug in a service, the host or the core: this run's failure
            tb = traceback.format_exc().rstrip().splitlines()
            self.tr(None, "EXCEPTION " + tb[-1])
            self.violations.append(Violation("exception", " | ".join(tb[-6:])))

    # -- the core's actions ----------------------------------------------------------------

    def queue_actions(self, node: _Node, acts: Iterable[Any]) -> None:
        """Queue actions of ``srp.mcast``; a host event carries them out at this time."""
        self.fifo[node.id].extend(acts)
        key = (node.id, node.inc)
        if self.draining[node.id] or key in self.drain_armed:
            return  # the drain in progress, or the one armed, gets to them in order
        self.drain_armed.add(key)

        def drain() -> None:
            self.drain_armed.discard(key)
            self.perform(node, ())
        self.push(self.now, _HOST, node.id, node.inc, _Timer(), drain)

    def _reentry(self, node: _Node, what: str) -> None:
        if self.in_mcast is not None:
            self.violations.append(Violation(
                "reentry", f"{what} for {node.name} inside the mcast of "
                f"{self.nodes[self.in_mcast].name}'s host at t={self.now:.6f}"))

    def perform(self, node: _Node, acts: Iterable[Any]) -> None:
        q = self.fifo[node.id]
        q.extend(acts)
        if self.draining[node.id]:
            return
        self.draining[node.id] = True
        inc = node.inc
        try:
            while q:
                if node.srp is None or node.inc != inc:
                    q.clear()
                    break
                a = q.popleft()
                t = type(a)
                if t is Send:
                    for hook in self.send_hooks:
                        hook(node, a.data)
                    self.send(node, a.data, a.dest)
                elif t is StartTimer:
                    gen = node.gens.get(a.kind, 0) + 1
                    node.gens[a.kind] = gen
                    self.push(a.at if a.at > self.now else self.now, _TIMER, node.id, node.inc,
                              a.kind, gen)
                elif t is CancelTimer:
                    node.gens[a.kind] = node.gens.get(a.kind, 0) + 1
                elif t is Deliver:
                    self._reentry(node, "Deliver")
                    self.on_deliver(node, a)
                elif t is ConfChange:
                    self._reentry(node, "ConfChange")
                    self.on_confchg(node, a)
                elif t.__name__ == "Stable":
                    self._reentry(node, "Stable")
                    self._check_stable(node, a)
                    host = self.hosts[node.id]
                    on_stable = getattr(host, "on_stable", None)
                    if on_stable is not None:
                        on_stable(a)
                else:
                    raise TypeError(f"unknown action {a!r}")
        finally:
            self.draining[node.id] = False
        ckpt = self._ckpt_of(node)
        if ckpt is not None:
            # Every checkpoint id ever linked to a name; a replica "holds" the ids its
            # names ever led to, so creations on two sides conflict like changes do.
            names = ckpt.names
            mine = self.held.setdefault((node.id, node.inc), {})
            for name, ck_id in names.items():
                if ck_id not in self.ck_names:
                    self.ck_names[ck_id] = name
                mine.setdefault(("name", name), set()).add(ck_id)

    def on_deliver(self, node: _Node, d: Deliver) -> None:
        self.deliveries += 1
        self.in_ring[node.id] += 1
        p = d.payload
        if len(p) >= RING_HEADER.size:
            service, msg_id, flags = struct.unpack_from("!HHB", p)
            if service == cw.CKPT_SERVICE_ID and not flags & FLAG_SYNC:
                named = p
                if flags & FLAG_RESENT:
                    # named as the host hands it on: the re-send's origin taken off
                    named = (p[:4] + b"\x00" + p[5:RING_HEADER.size]
                             + p[RING_HEADER.size + ORIGIN.size:])
                key = _update_key(d.ring_id, d.sender, named)
                tag_node, conn, seq = struct.unpack_from("!III", p, 8)
                if tag_node == node.id and conn:
                    # safe delivery means: every member of this configuration has it
                    members = frozenset((m, self.nodes[m].inc) for m in self.conf_members[node.id]
                                        if m in self.nodes and self.nodes[m].srp is not None)
                    self.key_of_request[(node.id, node.inc, conn, seq)] = (key, members)
                ck = (cw.CKPT_ID.unpack_from(named, RING_HEADER.size)
                      if msg_id in _UPDATES and len(named) >= RING_HEADER.size + cw.CKPT_ID.size
                      else None)
                host = self.hosts[node.id]
                if host is not None and host.syncing:
                    # the host holds it until the round completes (dropped if abandoned)
                    self.pending_upd[node.id].append((ck, key))
                else:
                    self._holds(node, ck, key)
        if self.trace is not None and self.o.full_trace:
            sender = self.nodes[d.sender].name if d.sender in self.nodes else d.sender
            self.tr(node, f"deliver {len(p)}B from {sender} ring {d.ring_id}")
        host = self.hosts[node.id]
        if host is not None:
            host.on_deliver(d)

    def on_confchg(self, node: _Node, a: ConfChange) -> None:
        if node.hist is not None:
            node.hist.events.append(a)
        self.conf_members[node.id] = a.members
        if not a.transitional:
            self.rings.add(a.ring_id)
            self.installs.setdefault((node.id, node.inc), []).append(a.ring_id)
            self.ring_of[node.id] = a.ring_id
            self.in_ring[node.id] = 0
            self.members_of[a.ring_id] = a.members
            self.pending_upd[node.id] = []  # an abandoned round's held messages are dropped
            self.installed_at[(a.ring_id, (node.id, node.inc))] = self.now
            held = self.held.get((node.id, node.inc), {})
            ckpt = self._ckpt_of(node)
            if ckpt is not None:
                # A checkpoint deleted here (or never here) reflects nothing of this
                # node's history any more: merge rule 1 keeps the other sides'
                # replica as it is, the tombstone adds nothing to it.
                for ck in [k for k in held if k[0] != "name" and k not in ckpt.ckpts]:
                    del held[ck]
            self.snap[(a.ring_id, node.id)] = {ck: frozenset(v) for ck, v in held.items()}
        self.tr(node, f"{'TRANS' if a.transitional else 'CONF'} {a.ring_id} members "
                f"{self.names(a.members)} left {self.names(a.left)} "
                f"joined {self.names(a.joined)}")
        host = self.hosts[node.id]
        if host is not None:
            host.on_confchg(a)

    def _round_done(self, node: _Node, inc: int) -> None:
        """CKPT's sync_done ran on ``node``: its round for the current ring completed."""
        host = self.hosts[node.id]
        if host is None or node.inc != inc:
            return
        self.sync_rounds += 1
        key = (node.id, node.inc)
        ring = host.ring_id
        if ring is None:
            return
        self._merged(node, ring)
        # A member passed on in this round what it held when it installed the
        # ring (its state is frozen during the round): a holding that began
        # later -- in a ring it went on to while this one's round dragged on
        # elsewhere -- is not in it.
        installed = self.installed_at
        members = {(m, self.nodes[m].inc) for m in self.members_of.get(ring, ())}
        for t in self.tracks:
            if any(t.since[h] <= installed.get((ring, h), -1.0) for h in t.holders & members):
                t.add(key, self.now)
        self.tr(node, f"sync round {host.ring_id} done")

    def _ckpt_of(self, node: _Node) -> Any:
        """``node``'s checkpoint service, or None (node down, or run without it)."""
        return getattr(self.hosts[node.id], "services", {}).get(cw.CKPT_SERVICE_ID)

    def _holds(self, node: _Node, ck: tuple[int, int, int] | None, key: Any) -> None:
        """``node`` applied the message ``key`` (a change to ``ck``, if not None)."""
        me = (node.id, node.inc)
        if ck is not None:
            self.held.setdefault(me, {}).setdefault(ck, set()).add(key)
        self.applied.setdefault(key, set()).add(me)
        for t in self.tracks_by_key.get(key, ()):
            t.add(me, self.now)

    def _unholds(self, node: _Node, inc: int, msg: ExecMessage) -> None:
        """``node`` applied a CKPT change that its replica refused (say, a write to a
        section it never had: in a transitional configuration Totem delivers what
        its members have, past a sender's message none of them got).  Its replica
        does not reflect the change, so it is no holder of it."""
        me = (node.id, inc)
        key = _update_key(msg.ring_id, msg.sender, encode_ring_message(
            RingMessage(cw.CKPT_SERVICE_ID, msg.msg_id, 0, msg.tag, 0, msg.payload)))
        self.applied.get(key, set()).discard(me)
        for v in self.held.get(me, {}).values():
            v.discard(key)
        for t in self.tracks_by_key.get(key, ()):
            t.holders.discard(me)
            t.since.pop(me, None)

    def _merged(self, node: _Node, ring: RingId | None) -> None:
        """A sync round completed here: the replica now reflects every member's history
        (when they conflict, the merge rule chose one: the checkpoint is marked)."""
        if ring is None:
            return
        hs = [self.snap[(ring, m)] for m in self.members_of.get(ring, ())
              if (ring, m) in self.snap]
        diverged = diverging(hs)
        # every checkpoint of a diverged name, also one created since the name
        # first diverged (a later merge of the same name chooses among them too)
        for k in [k for k in diverged if k[0] == "name"]:
            self.name_conflicted |= {i for i, n in self.ck_names.items() if n == k[1]}
        bad = diverged - self.conflicted
        if bad:
            self.conflicted |= bad
            self.tr(node, f"conflicting histories merged in {ring}: {sorted(map(str, bad))}")
        mine = self.held.setdefault((node.id, node.inc), {})
        for h in hs:
            for ck, v in h.items():
                mine.setdefault(ck, set()).update(v)
        pending, self.pending_upd[node.id] = self.pending_upd[node.id], []
        for ck, key in pending:
            self._holds(node, ck, key)

    # -- network additions ---------------------------------------------------------------

    def send(self, node: _Node, data: bytes, dest: int | None) -> None:
        if (self.split_writes and self.faults_on and dest is None and len(data) > 1
                and data[1] == 1 and MAGIC in data and len(set(self.group.values())) == 1
                and self.rng.random() < 0.15):
            # Cut the sender off as its frame with client data leaves: the frame
            # reaches nobody, and each side may end the old ring with other writes.
            self.split_writes -= 1
            self.group = {n: int(n == node.id) for n in self.ids}
            self.tr(node, "PARTITION: cut off as it sends client data")
            self.push(self.now + self.rng.uniform(1.0, 3.0), _FAULT, "heal", 0)
        super().send(node, data, dest)

    def on_packet(self, node: _Node, src: int, data: bytes) -> None:
        dst = node.id
        for nid, direction, big in self.asym_rules:
            if (((direction == "out" and src == nid) or (direction == "in" and dst == nid))
                    and (not big or len(data) > 800)):
                return
        for rule in self.drop_rules:
            if rule(src, dst, data):
                return
        super().on_packet(node, src, data)

    # -- nodes ---------------------------------------------------------------------------

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
        host = ServiceHost(nid, [ClmService("simcluster", boot_timestamp=BOOT), CkptService()]
                           + ([AmfService(self.amf_model)] if self.o.amf else [])
                           + ([EvsService()] if self.o.evs else []),
                           _Clock(self, nid, node.inc))
        self.hosts[nid] = host
        self.fifo[nid].clear()
        self.pending_upd[nid] = []
        self.ring_of[nid] = None
        host.attach_ring(_Port(self, node))
        ckpt = host.services[cw.CKPT_SERVICE_ID]
        run_exec = host._run_exec

        def run_exec_noting_creations(svc: Any, msg: Any, inc: int = node.inc) -> None:
            # Which of this node's clients' opens created their checkpoint (answered
            # safe) and which found it (answered at agreed delivery, even when the
            # creating open came in the same frame and is not safe yet).
            # Decided before the handler runs: it may answer at once.
            if svc is ckpt and msg.msg_id == ckpt_mod.MSG_OPEN and msg.tag.node == nid:
                op = cw.decode_open_untrusted(ckpt_mod.OPEN_MSG.decode(msg.payload)[1])
                if op.attributes is not None and ckpt.ckpts.get(
                        ckpt.names.get(op.name)) is None:  # type: ignore[arg-type]
                    self.creating_opens.add((nid, inc, msg.tag.conn_id, msg.tag.seq))
            if svc is not ckpt or msg.sync or msg.msg_id not in _UPDATES:
                run_exec(svc, msg)
                return
            # Every change a replica makes moves its checkpoint's update count
            # (retention expiry removes the checkpoint): a message that moved
            # neither was refused there.
            try:
                ck_id = cw.split_ckpt_id_untrusted(msg.payload)[0]
            except Exception:  # noqa: BLE001 -- the handler drops it too
                ck_id = None
            before = ckpt.ckpts.get(ck_id) if ck_id is not None else None
            count = before.updates if before is not None else -1
            run_exec(svc, msg)
            after = ckpt.ckpts.get(ck_id) if ck_id is not None else None
            if before is None or (after is before and after.updates == count):
                self._unholds(node, inc, msg)
        host._run_exec = run_exec_noting_creations  # type: ignore[method-assign]
        done = ckpt.sync_done

        def sync_done(inc: int = node.inc) -> None:
            done()
            self._round_done(node, inc)
        ckpt.sync_done = sync_done  # type: ignore[method-assign]
        self.trackers[nid] = _TrackConn(host)
        if self.o.amf:
            self.pg_trackers[nid] = _PgTracker(host, sorted(
                p.name for g in self.amf_model.groups for p in g.protections))
        script = self.scripts.get(nid)
        self.clients[nid] = []
        for k in range(self.o.clients):
            c = _Client(self, node, k, self.next_uid, script)
            self.next_uid += 1
            self.clients[nid].append(c)
            self.all_clients.append(c)
        if self.o.client_crashes and script is None:
            rng = random.Random(f"client-crashes {self.seed} {nid} {node.inc}")
            for _ in range(self.o.client_crashes):
                host.call_later(rng.uniform(0.3, max(1.0, self.o.duration)),
                                self._client_crash(node, host, rng.random(),
                                                   rng.uniform(0.3, 1.0)))
        self.evs_members[nid] = [_EvsMember(self, node, host, k, max(4, self.o.messages // 2))
                                 for k in range(self.o.evs)]
        self.all_evs += self.evs_members[nid]
        if self.o.evs and self.o.evs_faults:
            rng = random.Random(f"evs-faults {self.seed} {nid} {node.inc}")
            for _ in range(self.o.evs_faults):
                host.call_later(rng.uniform(0.3, max(1.0, self.o.duration)),
                                self._evs_crash(node, host, rng.random(), rng.uniform(0.3, 1.0)))
        ids = sorted(self.nodes)
        relayed = set(SIM_AMF_PROXIED.values())
        if self.o.amf:
            host.spawner = lambda argv, env, on_exit: _SimChild(
                self, nid, node.inc, host, env["AIS_COMPONENT_NAME"], on_exit)
        for k, (_, _, comp) in enumerate(self.amf_model.components()):
            if self.o.amf and ids[k % len(ids)] == nid and comp.name not in relayed \
                    and not comp.instantiate:
                _AmfComp(self, nid, node.inc, host, comp.name)
        if self.o.amf and self.o.amf_hangs:
            rng = random.Random(f"amf-hangs {self.seed} {nid} {node.inc}")
            for _ in range(self.o.amf_hangs):
                host.call_later(rng.uniform(0.5, max(1.0, self.o.duration)),
                                self._hang_one(host, nid, rng.random(), rng.uniform(1.5, 4.0)))
        if self.o.amf and self.o.amf_faults:
            rng = random.Random(f"amf-faults {self.seed} {nid} {node.inc}")
            for _ in range(self.o.amf_faults):
                host.call_later(rng.uniform(0.5, max(1.0, self.o.duration)),
                                self._fail_one(host, nid, rng.random(), rng.random(),
                                               rng.uniform(0.3, 1.0)))
        if self.o.amf and self.o.amf_admin:
            _AmfAdmin(self, nid, node.inc, host,
                      [u.name for g in self.amf_model.groups for u in g.units],
                      [c.name for _, _, c in self.amf_model.components()], self.o.amf_admin)
        self.tr(node, f"start incarnation {node.inc} ring_seq {node.disk} (empty host)")
        self.call(node, node.srp.start)

    def _kill(self, node: _Node) -> None:
        self.hosts[node.id] = None
        self.fifo[node.id].clear()
        for c in self.clients[node.id]:
            c.kill()
        self.clients[node.id] = []
        key = (node.id, node.inc)
        for t in self.tracks:
            if key in t.holders:
                t.holders.discard(key)
                if not t.holders:
                    # memory only: the last node holding it is gone
                    self.tr(node, f"{t.ack.client}'s {_ack_text(t.ack)} now lost with "
                                  f"every node that held it")

    def f_crash(self, target: tuple[int, int] | None) -> None:
        super().f_crash(target)
        for nid in self.ids:
            if self.nodes[nid].srp is None and self.hosts[nid] is not None:
                self._kill(self.nodes[nid])

    def crash_now(self, nid: int) -> None:
        """Crash ``nid`` now, regardless of the fault phase (scenarios)."""
        node = self.nodes[nid]
        if node.srp is None:
            return
        node.srp = None
        node.held = []
        node.paused = False
        if node.hist is not None:
            node.hist.crashed = True
        self.tr(node, f"CRASH incarnation {node.inc}")
        self._kill(node)

    def f_qcrash(self, _: Any) -> None:
        """A quick restart: crash a node and start it again in 0.05-0.9 s."""
        if not self.faults_on:
            return
        up = self.up()
        if len(up) < 2:
            return
        node = self.rng.choice(up)
        target = (node.id, node.inc)
        super().f_crash(target)
        if node.srp is None:
            self._kill(node)
            self.push(self.now + self.rng.uniform(0.05, 0.9), _FAULT, "restart", target)

    def f_asym_on(self, rule: tuple[int, str, bool]) -> None:
        if not self.faults_on:
            return
        self.asym_rules.append(rule)
        nid, direction, big = rule
        self.tr(None, f"ASYM LOSS {self.nodes[nid].name} {direction}"
                      f"{' (frames > 800 B)' if big else ''}")

    def f_asym_off(self, rule: tuple[int, str, bool]) -> None:
        if rule in self.asym_rules:
            self.asym_rules.remove(rule)
            self.tr(None, f"ASYM LOSS OFF {self.nodes[rule[0]].name} {rule[1]}")

    def f_quiet(self, arg: Any) -> None:
        self.asym_rules = []
        self.drop_rules = []
        super().f_quiet(arg)

    # -- clients ---------------------------------------------------------------------------

    def on_app(self, node: _Node, probe: bool = False) -> bool:
        cs = [c for c in self.clients[node.id] if c.alive and c.pending is None]
        if cs:
            self.rng.choice(cs).step()
        return True

    def on_ok(self, c: _Client, req: _Req, body: bytes) -> None:
        """A request succeeded: remember what the client was promised."""
        host = c.host
        info = req.info
        if req.kind == "open":
            h = cw.decode_handle_untrusted(body)
            cs = c.conn.private.get("ckpt")
            hd = cs.handles.get(h) if cs is not None else None
            if hd is None:
                return
            name = info["name"]
            svc = host.services[cw.CKPT_SERVICE_ID]
            assert isinstance(svc, CkptService)
            found = svc.ckpts.get(hd.ckpt_id)
            mode = found.attrs.creation_flags if found is not None else 0
            c.handles[h] = (hd.ckpt_id, name, mode)
            self.ck_names[hd.ckpt_id] = name
            if name.startswith(b"stable-"):
                self._client_ack(c, Ack(hd.ckpt_id, name, None, 0, mode, c.node_id, c.inc,
                                        self.now, c.name), req.seq)
        elif req.kind in ("section_create", "write", "overwrite"):
            h = info["h"]
            if h not in c.handles:
                return
            ck, name, mode = c.handles[h]
            if name.startswith(b"stable-"):
                self._client_ack(c, Ack(ck, name, info["sid"], info["n"], mode, c.node_id,
                                        c.inc, self.now, c.name), req.seq)

    def _client_ack(self, c: _Client, a: Ack, seq: int) -> None:
        self.client_acks.append(a)
        found = self.key_of_request.get((c.node_id, c.inc, c.conn.conn_id, seq))
        key, members = found if found is not None else (None, frozenset())
        # An open that found its checkpoint (there already, or created by an open
        # before it, maybe in the same frame) is answered at agreed delivery, so
        # only who applied it is known to hold it.
        created = a.sid is None and (c.node_id, c.inc, c.conn.conn_id, seq) in self.creating_opens
        if created or (a.sid is not None and a.mode == cw.SA_CKPT_WR_ALL_REPLICAS):
            # safe: every member of the configuration it was delivered in holds it --
            # or, answered at that ring's transitional configuration, every member
            # of that (module docstring (b))
            now = {(m, self.nodes[m].inc) for m in self.conf_members[c.node_id]
                   if m in self.nodes}
            holders = set(members) & now
        else:
            holders = {(c.node_id, c.inc)}  # the active replica's (the answering) node
        if key is not None:
            holders |= self.applied.get(key, set())
        holders = {x for x in holders if self.nodes[x[0]].inc == x[1]
                   and self.nodes[x[0]].srp is not None}
        t = AckTrack(a, key, holders)
        if key is not None:
            # Delivered in ring key[0], before the holders installed any later ring:
            # held from just after they installed key[0].  Not from that instant:
            # key[0]'s own sync round passes on the state its members had when
            # they installed it, which lacks every message delivered in it.
            for h in holders:
                installed = self.installed_at.get((key[0], h))
                if installed is not None:
                    t.since[h] = min(t.since[h], math.nextafter(installed, math.inf))
        self.tracks.append(t)
        if key is not None:
            self.tracks_by_key.setdefault(key, []).append(t)
        if a.sid is not None and a.counter:
            self.sres.acked_writes += 1
        if c.on_ack is not None:
            c.on_ack(c, a)
        if (self.ack_crashes and self.faults_on and a.mode == cw.SA_CKPT_WR_ALL_REPLICAS
                and a.counter and self.rng.random() < 0.25 and len(self.up()) > 1):
            self.ack_crashes -= 1
            self.push(self.now + self.rng.uniform(0.0, 0.002), _FAULT, "crash",
                      (c.node_id, c.inc))

    # -- settling ---------------------------------------------------------------------------

    def on_check(self) -> None:
        if not self.restarting and self.quiescent():
            self.result.settled_at = self.now
            self.tr(None, "settled")
            self.done = True
            return
        self.push(self.now + 0.25, _CHECK)

    def quiescent(self, amf: bool = True) -> bool:
        """One configuration of exactly the live nodes, synced, every request answered,
        every message sent delivered everywhere, and (``amf``) AMF quiet."""
        up = self.up()
        if not up:
            return False
        ring = self.ring_of[up[0].id]
        want = tuple(n.id for n in up)
        for n in up:
            if self.ring_of[n.id] != ring or n.paused:
                return False
            if getattr(n.srp.state, "name", "OPERATIONAL") != "OPERATIONAL":
                return False
            if tuple(n.srp.members) != want or n.srp.queued():
                return False
            host = self.hosts[n.id]
            if host is None or host.syncing:
                return False
            if any(c.pending is not None for c in self.clients[n.id]):
                return False
            if any(m.pending is not None or m.sent < m.count
                   for m in self.evs_members.get(n.id, ()) if not m.closed):
                return False
        counts = {self.in_ring[n.id] for n in up}
        return len(counts) == 1 and not (amf and self.o.amf and self._amf_unquiet(up))

    def _crash_one(self, node: _Node, host: ServiceHost, pick: float, back_after: float,
                   live: Callable[[], list[Any]], kill: Callable[[Any], None],
                   start: Callable[[], None]) -> Callable[[], None]:
        """A process of ``node`` (one of ``live()``, by ``pick``) dies on its own (``kill``);
        another starts in its place ``back_after`` s later (``start``), if the node lives."""
        def crash() -> None:
            procs = live()
            if self.hosts.get(node.id) is not host or not procs:
                return
            kill(procs[int(pick * len(procs))])

            def again() -> None:
                if self.hosts.get(node.id) is host:
                    start()
            host.call_later(back_after, again)
        return crash

    def _client_crash(self, node: _Node, host: ServiceHost, pick: float,
                      back_after: float) -> Callable[[], None]:
        """A CKPT client of ``node`` dies on its own, maybe with a request in flight (its
        handles close as its connection does); another starts 0.3-1 s later."""
        def kill(c: _Client) -> None:
            self.tr(node, f"client {c.name} crashes"
                    + (f" with {c.pending.kind} #{c.pending.seq} unanswered"
                       if c.pending is not None else ""))
            c.kill()
            c.crashed = True
            host.lib_exit(c.conn)

        def start() -> None:
            new = _Client(self, node, len(self.clients[node.id]), self.next_uid)
            self.next_uid += 1
            self.clients[node.id].append(new)
            self.all_clients.append(new)
        return self._crash_one(node, host, pick, back_after,
                               lambda: [c for c in self.clients[node.id] if c.alive],
                               kill, start)

    def _evs_crash(self, node: _Node, host: ServiceHost, pick: float,
                   back_after: float) -> Callable[[], None]:
        """An EVS process of ``node`` dies on its own; another starts 0.3-1 s later."""
        members = self.evs_members[node.id]

        def kill(m: _EvsMember) -> None:
            self.tr(node, f"EVS process {m.name} crashes")
            m.closed = True
            host.lib_exit(m)

        def start() -> None:
            new = _EvsMember(self, node, host, len(members), max(4, self.o.messages // 2))
            members.append(new)
            self.all_evs.append(new)
        return self._crash_one(node, host, pick, back_after,
                               lambda: [m for m in members if m.alive], kill, start)

    def _hang_one(self, host: ServiceHost, nid: int, pick: float,
                  length: float) -> Callable[[], None]:
        def hang() -> None:
            procs = [p for p in self.amf_procs if p.nid == nid and p._alive()]
            if self.hosts.get(nid) is host and procs:
                procs[int(pick * len(procs))].hang(length)
        return hang

    def _fail_one(self, host: ServiceHost, nid: int, pick: float, kind: float,
                  back_after: float) -> Callable[[], None]:
        def fail() -> None:
            procs = [p for p in self.amf_procs if p.nid == nid and p._alive()]
            if self.hosts.get(nid) is host and procs:
                p = procs[int(pick * len(procs))]
                if kind < 0.6:
                    p.crash(back_after if kind < 0.5 else None)
                elif kind < 0.75:
                    p.leave(back_after)
                else:
                    p.refuse_next = True
        return fail

    def _amf_digests(self) -> dict[str, Any]:
        return {n.name: h.services[aw.AMF_SERVICE_ID].digest()  # type: ignore[attr-defined]
                for n in self.up() if (h := self.hosts[n.id]) is not None
                and aw.AMF_SERVICE_ID in h.services}

    def _amf_unquiet(self, up: list[_Node]) -> str:
        """What AMF has not finished of what the faults started ("": nothing left), at
        every live node and process."""
        hosts = [(n, h) for n in up if (h := self.hosts[n.id]) is not None]
        live = {id(h) for _, h in hosts}
        if any(id(h) in live for h in self.amf_restarts.values()):
            return "a component process is about to start again"
        for p in self.amf_procs:
            if p._alive() and p.unregistered:
                return f"{', '.join(sorted(p.unregistered))} not registered (yet)"
            if p._alive() and p.held is not None:
                return f"the process of {p.name} is stopped"
            if p._alive() and p.exiting:
                return f"the process of {p.name} is exiting"
        for n, h in hosts:
            svc = h.services[aw.AMF_SERVICE_ID]
            assert isinstance(svc, AmfService)
            for name, proc in svc.procs.items():
                if proc.timer is not None and not svc.comps[name].registered:
                    return f"AMF at {n.name} is to start {name}"
            why = amf_unquiet(svc)
            if why:
                return f"AMF at {n.name}: {why}"
        return ""

    # -- the end ------------------------------------------------------------------------------

    def observe(self) -> tuple[dict[str, Any], dict[str, Any],
                               dict[str, dict[tuple[int, int, int], dict[bytes, bytes]]]]:
        """Digests, CLM views and section bytes of every live node."""
        digests: dict[str, Any] = {}
        views: dict[str, Any] = {}
        replicas: dict[str, dict[tuple[int, int, int], dict[bytes, bytes]]] = {}
        for n in self.up():
            host = self.hosts[n.id]
            if host is None:
                continue
            ck = host.services[cw.CKPT_SERVICE_ID]
            clm = host.services[w.CLM_SERVICE_ID]
            assert isinstance(ck, CkptService) and isinstance(clm, ClmService)
            digests[n.name] = ck.digest()
            views[n.name] = (clm.view_number, clm.view_members, tuple(sorted(clm.records)))
            replicas[n.name] = {i: {sid: bytes(s.data) for sid, s in c.sections.items()}
                                for i, c in ck.ckpts.items()}
        return digests, views, replicas

    def check_state(self) -> list[Violation]:
        """Checks (a) and (b) on the live nodes' current state (module docstring)."""
        digests, views, replicas = self.observe()
        vs = check_convergence(digests, views)
        vs += check_amf(self._amf_digests())
        amfs = [h.services[aw.AMF_SERVICE_ID] for n in self.up()
                if (h := self.hosts[n.id]) is not None and aw.AMF_SERVICE_ID in h.services]
        if amfs and not vs:
            vs += check_amf_service(amfs[0],  # type: ignore[arg-type]
                                    [p for p in self.amf_procs if p._alive()])
            vs += check_pg_trackers(amfs[0],  # type: ignore[arg-type]
                                    {n.name: self.pg_trackers[n.id] for n in self.up()
                                     if self.hosts[n.id] is not None})
        desc = ring_graph(self.installs.values())
        # Of the checkpoints created with one name on sides that never met, the one
        # that kept the name (linked) must hold everything; the others only what
        # their live openers' replicas reflect (``loser_keeps``).
        named = self.name_conflicted | name_conflicts(self.ck_names, desc)
        openers: dict[tuple[int, int, int], set[tuple[int, int]]] = {}
        for n in self.up():
            for c in self.clients[n.id]:
                if c.alive:
                    for ck, _, _ in c.handles.values():
                        openers.setdefault(ck, set()).add((c.node_id, c.inc))
        linked: set[tuple[int, int, int]] = set()
        for n in self.up():
            host = self.hosts[n.id]
            svc = host.services[cw.CKPT_SERVICE_ID] if host is not None else None
            if isinstance(svc, CkptService):
                linked |= set(svc.names.values())
        req = required_acks(
            ((t.ack, t.holders) for t in self.tracks
             if t.ack.ckpt not in named or t.ack.ckpt in linked
             or loser_keeps(t.ack, self.applied.get(t.key, set()),
                            openers.get(t.ack.ckpt, set()))),
            self.conflicted)
        vs += check_acked(req, replicas)
        vs += check_values(replicas, self.written)
        hosts = [(n, h) for n in self.up() if (h := self.hosts[n.id]) is not None]
        if hosts and not vs:
            local: dict[int, dict[tuple[int, int, int], int]] = {}
            for n, h in hosts:
                mine = local[h.node_id] = {}
                for c in self.clients[n.id]:
                    cs = c.conn.private.get("ckpt")
                    for hd in cs.handles.values() if c.alive and cs is not None else ():
                        mine[hd.ckpt_id] = mine.get(hd.ckpt_id, 0) + 1
            ckpt = hosts[0][1].services[cw.CKPT_SERVICE_ID]
            assert isinstance(ckpt, CkptService)
            vs += check_refs(ckpt, local)
        vs += check_trackers({n.name: self.trackers[n.id].last for n in self.up()},
                             [node_id_from_totem(n.id) for n in self.up()])
        if self.o.evs:
            tables = {}
            for n in self.up():
                host = self.hosts[n.id]
                evs = host.services[ew.EVS_SERVICE_ID] if host is not None else None
                if isinstance(evs, EvsService):
                    tables[n.name] = {g: frozenset((node, conn, pid) for (node, conn), pid
                                                   in ms.items())
                                      for g, ms in evs.groups.items() if ms}
            live = [m for n in self.up() for m in self.evs_members[n.id] if not m.closed]
            vs += check_evs_state(tables, live)
            vs += check_evs_history(self.all_evs, live)
            vs += check_evs_synchrony(self.all_evs)
            vs += check_evs_senders(self.all_evs)
        return vs

    def finish(self) -> SvcResult:  # type: ignore[override]
        r = self.sres
        r.time, r.steps, r.packets = self.now, self.steps, self.packets
        r.deliveries = self.deliveries
        r.configurations = len(self.rings)
        r.requests, r.answered, r.sync_rounds = self.requests, self.answered, self.sync_rounds
        r.replays = sum(sum(h.replays.values()) for h in self.hosts.values() if h is not None)
        vs = list(self.violations)
        if not any(v.invariant == "exception" for v in vs):
            live = [c for n in self.up() for c in self.clients[n.id]]
            waiting = [(c.name, c.pending.kind, c.pending.sent) for c in live
                       if c.pending is not None]
            vs += check_answered(waiting, self.quiet_at, self.o.settle)
            if not self.done and not waiting:
                why = "no common synced ring"
                if self.o.amf and self.quiescent(amf=False):
                    why = f"AMF never quiet: {self._amf_unquiet(self.up())}"
                    vs += check_amf(self._amf_digests())  # (a cause, often)
                vs.append(Violation("liveness", f"not settled {self.o.settle}s after the "
                                                f"faults stopped ({why})"))
            if self.done:
                vs += self.check_state()
        r.violations = vs
        for v in vs:
            self.tr(None, f"VIOLATION {v}")
        r.trace = list(self.trace) if self.trace is not None else []
        r.histories = {}
        return r


def run(seed: int, options: SvcOptions | None = None) -> SvcResult:
    """Simulate one seeded run of the services and check it (module docstring)."""
    return ServiceSim(seed, options or SvcOptions()).run()


# --- scenarios ------------------------------------------------------------------------------


class _Driver:
    """Explicit client requests at fixed times, for the scenarios."""

    def __init__(self, sim: ServiceSim) -> None:
        self.sim = sim

    def client(self, i: int, k: int = 0) -> _Client:
        nid = self.sim.ids[i - 1]
        return self.sim.clients[nid][k]

    def do(self, t: float, i: int, make: Callable[[_Client], Generator[Any, Any, Any]],
           k: int = 0) -> None:
        """At ``t``, client ``k`` of node ``i`` runs ``make(client)`` to its end."""
        def start() -> None:
            c = self.client(i, k)
            if c.pending is not None or not c.alive:
                self.sim.violations.append(Violation(
                    "scenario", f"{c.name} is not idle at {self.sim.now:.3f}s"))
                return
            c.gen = make(c)
            c.started = False
            c.finished = False
            self._pump(c)
        self.sim.at(t, start)

    def _pump(self, c: _Client) -> None:
        c.step()
        if not c.finished and c.alive:
            # A scripted client steps as soon as its answer is there (or 20 ms later).
            self.sim.push(self.sim.now + 0.02, _CALL, lambda: self._pump(c))


def _open_and_fill(name_i: int, sections: int, size: int, writes: int
                   ) -> Callable[[_Client], Generator[Any, Any, Any]]:
    def make(c: _Client) -> Generator[Any, Any, Any]:
        err, body = yield from op_open(stable_name(name_i), stable_attrs(name_i))
        if err != SA_OK:
            c.sim.violations.append(Violation("scenario", f"{c.name}: open failed ({err})"))
            return
        h = cw.decode_handle_untrusted(body)
        c.sim.tr(None, f"{c.name}: opened handle {h}")
        c.handle = h
        for j in range(sections):
            sid = b"%d.%d" % (c.uid, j)
            yield from op_section_create(c, h, sid, 32)
            for _ in range(writes):
                yield from op_write(c, h, sid, size, overwrite=False)
    return make


def _open_only(name_i: int) -> Callable[[_Client], Generator[Any, Any, Any]]:
    def make(c: _Client) -> Generator[Any, Any, Any]:
        err, body = yield from op_open(stable_name(name_i), stable_attrs(name_i))
        if err == SA_OK:
            c.handle = cw.decode_handle_untrusted(body)
    return make


def _write_once(sid_j: int, size: int) -> Callable[[_Client], Generator[Any, Any, Any]]:
    def make(c: _Client) -> Generator[Any, Any, Any]:
        h = c.handle
        yield from op_write(c, h, b"%d.%d" % (c.uid, sid_j), size, overwrite=False)
    return make


def _read_back(sid_j: int) -> Callable[[_Client], Generator[Any, Any, Any]]:
    """Read the client's section back through its handle: it must hold its last write."""
    def make(c: _Client) -> Generator[Any, Any, Any]:
        sid = b"%d.%d" % (c.uid, sid_j)
        err, body = yield from op_hcall("read", cw.REQ_READ, c.handle,
                                        cw.encode_read([(sid, 0, cw.READ_ALL)]), sid=sid)
        e, _, datas = (cw.decode_read_reply_untrusted(body) if err == SA_OK
                       else (err, None, []))
        v = decode_value(datas[0]) if e == SA_OK and datas else None
        if v is None or v[1] != c.counters.get(sid, 0):
            c.sim.violations.append(Violation(
                "lost", f"{c.name}: read of its open checkpoint's section {sid.decode()} "
                        f"gave {'error ' + str(e) if e != SA_OK else v} after write "
                        f"#{c.counters.get(sid, 0)}"))
    return make


def _marker(c: _Client, sid_j: int) -> bytes:
    """The first bytes of the next value client ``c`` writes to its section ``sid_j``."""
    sid = b"%d.%d" % (c.uid, sid_j)
    return value_of(c.uid, c.counters.get(sid, 0) + 1, VALUE.size)[:12]  # not the size


SCENARIO_OPTIONS = SvcOptions(nodes=3, messages=0, clients=1, duration=12.0, settle=40.0)


def scenario(n: int, full_trace: bool = False) -> SvcResult:
    """Run the fixed schedule reproducing finding ``n`` (1-3) of issue 7, or scenario
    4-8 (module docstring), and check it."""
    o = replace(SCENARIO_OPTIONS, full_trace=full_trace, start_spread=0.0,
                clients=2 if n == 6 else SCENARIO_OPTIONS.clients, nodes=4 if n == 8 else 3)
    sim = ServiceSim(n, o)
    sim.sres.scenario = n
    d = _Driver(sim)
    n1, n2, n3 = sim.ids[:3]
    if n == 1:
        # State on every node; node 1 (the lowest) killed and back before the others
        # noticed; then node 3 leaves and rejoins: a sync round with a joiner in which
        # node 1 is the lowest member of the old configuration.
        for i in (1, 2, 3):
            d.do(2.0 + 0.1 * i, i, _open_and_fill(0, 3, 3000, 3))
        sim.at(4.0, lambda: sim.crash_now(n1))
        sim.at(4.2, lambda: sim.f_start(n1))
        sim.at(6.0, lambda: sim.crash_now(n3))
        sim.at(8.5, lambda: sim.f_start(n3))
    elif n == 2:
        # Writes by node 1 and node 3 to one checkpoint in the same rotation; node 1's
        # frame never reaches node 3, node 3 is cut off as it sends its own: each side
        # delivers a different last write of the old ring.  Healed 3 s later.
        d.do(2.0, 1, _open_and_fill(0, 1, 100, 2))
        d.do(2.2, 3, _open_and_fill(0, 1, 100, 2))

        def split() -> None:
            c1, c3 = d.client(1), d.client(3)
            m1, m3 = _marker(c1, 0), _marker(c3, 0)
            sim.drop_rules.append(lambda src, dst, data: dst == n3 and m1 in data)

            def cut(node: _Node, data: bytes) -> None:
                if node.id == n3 and m3 in data and sim.group[n3] == 0:
                    sim.group = {n1: 0, n2: 0, n3: 1}
                    sim.tr(None, "PARTITION [n1,n2] | [n3] (as n3 sends its write)")
            sim.send_hooks.append(cut)
        sim.at(4.0, split)
        d.do(4.0, 1, _write_once(0, 100))
        d.do(4.0, 3, _write_once(0, 100))

        def heal() -> None:
            sim.drop_rules.clear()
            sim.send_hooks.clear()
            sim.f_heal(0)
        sim.at(7.0, heal)
    elif n == 3:
        # A WR_ALL_REPLICAS write whose frame is lost on its way to the others; the
        # writer's node is killed as soon as the write returns (or 1 s later).
        d.do(2.0, 1, _open_and_fill(0, 1, 500, 2))

        def lossy() -> None:
            m = _marker(d.client(1), 0)
            sim.drop_rules.append(lambda src, dst, data: src == n1 and m in data)

            def on_ack(c: _Client, a: Ack) -> None:
                if a.counter == 3:
                    sim.tr(None, "write #3 acknowledged: killing its node")
                    sim.at(sim.now, lambda: sim.crash_now(n1))
            d.client(1).on_ack = on_ack
        sim.at(4.0, lossy)
        d.do(4.0, 1, _write_once(0, 500))
        sim.at(5.0, lambda: sim.crash_now(n1))
    elif n == 4:
        # Node 3 cut off before any checkpoint exists; each side creates stable-0 and
        # writes to it, and both openers keep it open.  At the heal one of the two keeps
        # the name; the other must stay, unlinked, with its data, for its opener (merge
        # rule 3), who goes on writing to it and reading it.
        def split() -> None:
            sim.group = {n1: 0, n2: 0, n3: 1}
            sim.tr(None, "PARTITION [n1,n2] | [n3]")
        sim.at(1.5, split)
        d.do(2.5, 1, _open_and_fill(0, 1, 300, 2))
        d.do(2.5, 3, _open_and_fill(0, 1, 300, 2))

        def heal() -> None:
            sim.f_heal(0)
        sim.at(5.0, heal)
        for i in (1, 3):
            d.do(9.0, i, _write_once(0, 300))
            d.do(9.5, i, _read_back(0))
    elif n == 5:
        # Merge rule 3's loser, then rule 2 on it.  As in scenario 4 each side of a
        # split creates stable-0; node 3's has more updates and keeps the name, the
        # other (open on nodes 1 and 2) is unlinked.  Node 1 writes to it in a ring
        # with node 3, which, alone next and with no opener, deletes it.  Node 3 then
        # meets node 2 and takes node 2's replica (it deleted its own), and node 2
        # writes to it there, more often than node 1 did.  At the heal node 2's
        # replica wins by its updates and node 1's write is lost, as merge rule 2
        # says: the tombstone on node 3 brought none of node 1's history to node 2.
        def group(g: dict[int, int], text: str) -> None:
            sim.group = g
            sim.tr(None, f"PARTITION {text}")
        sim.at(1.5, lambda: group({n1: 0, n2: 0, n3: 1}, "[n1,n2] | [n3]"))
        d.do(2.5, 1, _open_and_fill(0, 1, 300, 1))
        d.do(2.8, 2, _open_and_fill(0, 1, 300, 1))
        d.do(2.5, 3, _open_and_fill(0, 1, 300, 6))
        sim.at(4.0, lambda: sim.f_heal(0))
        sim.at(4.5, lambda: group({n1: 0, n2: 1, n3: 0}, "[n1,n3] | [n2]"))
        d.do(6.0, 1, _write_once(0, 300))
        sim.at(6.5, lambda: group({n1: 0, n2: 1, n3: 2}, "[n1] | [n2] | [n3]"))
        sim.at(8.0, lambda: group({n1: 0, n2: 1, n3: 1}, "[n1] | [n2,n3]"))
        for t in (9.0, 9.2, 9.4, 9.6):
            d.do(t, 2, _write_once(0, 300))
        sim.at(10.5, lambda: sim.f_heal(0))
    elif n == 6:
        # Two clients of node 1 open stable-0, which does not exist yet, at once: both
        # opens leave node 1, and never reach the others.  The first creates
        # the checkpoint and is answered once every member holds it (never, here); the
        # second finds it and is answered at agreed delivery, at once.  Node 1 is killed
        # as soon as an open returns: its client goes with it, and so may the checkpoint.
        def lossy() -> None:
            sim.drop_rules.append(lambda src, dst, data: src == n1 and b"stable-0" in data)

            def on_ack(c: _Client, a: Ack) -> None:
                sim.tr(None, f"{c.name}'s open acknowledged: killing its node")
                sim.at(sim.now, lambda: sim.crash_now(n1))
            for k in (0, 1):
                d.client(1, k).on_ack = on_ack
        sim.at(2.0, lossy)
        d.do(2.0, 1, _open_only(0), 0)
        d.do(2.0, 1, _open_only(0), 1)
        sim.at(3.0, lambda: sim.crash_now(n1))
    elif n == 7:
        # Node 1 and node 3 each create a checkpoint in the same rotation (stable-0 and
        # stable-2, both WR_ALL_REPLICAS); neither OPEN reaches the other side and the
        # ring splits into [n1] and [n2,n3].  Each side delivers its own creation only,
        # as the old ring's last message, so counting creations per ring gave both
        # checkpoints one id and the heal merged them into one.  Both must stay, with
        # the writes made on them before and after the heal.
        def lossy() -> None:
            # (by destination: a member holding a frame retransmits it too)
            sim.drop_rules.append(lambda src, dst, data: dst != n1 and b"stable-0" in data)
            sim.drop_rules.append(lambda src, dst, data: dst == n1 and b"stable-2" in data)
        sim.at(2.0, lossy)
        d.do(2.0, 1, _open_and_fill(0, 1, 100, 1))
        d.do(2.0, 3, _open_and_fill(2, 1, 100, 1))

        def split() -> None:
            sim.group = {n1: 0, n2: 1, n3: 1}
            sim.tr(None, "PARTITION [n1] | [n2,n3]")
        sim.at(2.003, split)

        def heal() -> None:
            sim.drop_rules.clear()
            sim.f_heal(0)
        sim.at(5.0, heal)
        for i in (1, 3):
            d.do(8.0, i, _write_once(0, 100))
            d.do(8.5, i, _read_back(0))
    elif n == 8:
        _replay_scenario(sim, d)
    else:
        raise ValueError(f"no scenario {n}")
    return sim.run()


def _replay_scenario(sim: ServiceSim, d: _Driver) -> None:
    """Scenario 8, a replay (``ais.executive``: re-sent messages are named).

    n2 creates a section as [n1,n3] and [n2,n4] merge, so the creation is delivered
    during the merged ring R's sync round and held.  n1's and n3's frames with
    barriers are kept from n2 and n4: n1 and n3 complete the round (creating the
    section), n2 and n4 cannot.  The ring splits the same way again; as soon as n2
    and n4 form their ring, n4 is paused (their round cannot complete) and the split
    heals, so n2 leaves that ring alone and meets n1 and n3 directly, sending the
    creation again.  n1 and n3 announce that their state holds it: applied again,
    it answered "exists"; as a replay it is not applied, and answered TIMEOUT.
    """
    n1, n2, n3, n4 = sim.ids
    apart = {n1: 0, n2: 1, n3: 0, n4: 1}

    def group(text: str) -> None:
        sim.group = dict(apart)
        sim.tr(None, f"PARTITION {text}")
    d.do(1.0, 2, _open_and_fill(0, 1, 100, 1))
    sim.at(2.0, lambda: group("[n1,n3] | [n2,n4]"))
    barrier = encode_ring_message(RingMessage(HOST_SERVICE_ID, HOST_MSG_SYNC_BARRIER, 0,
                                              NO_TAG, 0, b""))[:20]

    def no_barrier(src: int, dst: int, data: bytes) -> bool:
        return src in (n1, n3) and dst in (n2, n4) and barrier in data
    step: dict[str, Any] = {"phase": 0}

    def watch() -> None:
        h1, h2, node2, node4 = sim.hosts[n1], sim.hosts[n2], sim.nodes[n2], sim.nodes[n4]
        assert h1 is not None and h2 is not None and node2.srp is not None
        phase = step["phase"]
        if phase == 0 and getattr(node2.srp.state, "name", "") != "OPERATIONAL":
            sim.tr(None, "n2 merging: it creates a section; n1's and n3's barriers kept "
                         "from n2 and n4")
            sim.drop_rules.append(no_barrier)
            d.do(sim.now, 2, _create_section(1))
            step["phase"], step["before"] = 1, h1.ring_id
        elif phase == 1 and h1.ring_id != step["before"] and n2 in h1.ring_members \
                and not h1.syncing:
            step["phase"], step["R"] = 2, h1.ring_id
            group(f"[n1,n3] | [n2,n4] (n1 completed the round of {h1.ring_id})")
        elif phase == 2 and h2.ring_id != step["R"] and n1 not in h2.ring_members:
            step["phase"] = 3
            sim.tr(None, f"n2 and n4 formed {h2.ring_id}: n4 paused, the split healed")
            sim.pause(node4, 5.0)
            sim.f_heal(0)
        elif phase == 3 and n1 in h2.ring_members:
            sim.tr(None, f"n2 meets n1 and n3 in {h2.ring_id}")
            sim.drop_rules.clear()
            return
        sim.at(sim.now + 0.0005, watch)
    def heal() -> None:
        sim.f_heal(0)
        watch()
    sim.at(5.0, heal)


def _create_section(sid_j: int) -> Callable[[_Client], Generator[Any, Any, Any]]:
    """Create the client's section ``sid_j``: answered OK, or TIMEOUT for a replay."""
    def make(c: _Client) -> Generator[Any, Any, Any]:
        err, _ = yield from op_section_create(c, c.handle, b"%d.%d" % (c.uid, sid_j), 32)
        if err not in (SA_OK, Timeout.code):
            c.sim.violations.append(Violation(
                "scenario", f"{c.name}: section creation answered {err}"))
    return make


# --- command line ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    d = SvcOptions()
    p = argparse.ArgumentParser(prog="python -m ais.servicesim",
                                description="Simulate CLM and CKPT on Totem rings under "
                                            "faults and check the replicated state.")
    p.add_argument("--seed", type=int, help="one run, printing its full trace")
    p.add_argument("--scenario", type=int, choices=(1, 2, 3, 4, 5, 6, 7, 8),
                   help="run the fixed schedule of issue 7 finding N (with --trace: the trace)")
    p.add_argument("--trace", action="store_true", help="with --scenario: print the trace")
    p.add_argument("--seeds", type=int, default=10, help="number of runs (default 10)")
    p.add_argument("--start", type=int, default=0, help="first seed of a sweep")
    p.add_argument("--jobs", type=int, default=2, help="worker processes for a sweep")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print only violations and the total")
    p.add_argument("--nodes", type=int, default=d.nodes)
    for name in ("loss", "dup", "reorder", "reorder_delay", "duration", "settle",
                 "start_spread"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    for name in ("partitions", "flaps", "crashes", "state_crashes", "pauses", "restarts",
                 "asym", "ack_crashes", "split_writes"):
        p.add_argument("--" + name.replace("_", "-"), type=int, nargs="?", const=2,
                       default=getattr(d, name), metavar="N")
    for name in ("messages", "clients", "stable", "max_write", "sync_budget", "send_queue"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--delay", default=",".join(map(repr, d.delay)),
                   help="base delay range in seconds, LO,HI")
    p.add_argument("--max-steps", type=int, default=d.max_steps)
    p.add_argument("--amf", action=argparse.BooleanOptionalAction, default=d.amf,
                   help="run AMF and check its state identity (default on)")
    p.add_argument("--amf-admin", type=int, default=d.amf_admin, metavar="N",
                   help="AMF lock/shutdown/unlock operations per node incarnation, on a "
                        "model with spares and an nway group")
    p.add_argument("--amf-hangs", type=int, default=d.amf_hangs, metavar="N",
                   help="AMF component processes stopped for 1.5-4 s, per node incarnation")
    p.add_argument("--amf-spawn", action=argparse.BooleanOptionalAction, default=d.amf_spawn,
                   help="the wide model with the raid group's components started by AMF")
    p.add_argument("--amf-faults", type=int, default=d.amf_faults, metavar="N",
                   help="AMF component processes crashing or refusing a CSI, per node "
                        "incarnation")
    p.add_argument("--client-crashes", type=int, default=d.client_crashes, metavar="N",
                   help="CKPT clients crashing on their own, per node incarnation")
    p.add_argument("--evs-faults", type=int, default=d.evs_faults, metavar="N",
                   help="EVS processes crashing on their own, per node incarnation")
    p.add_argument("--evs", type=int, default=d.evs, metavar="N",
                   help="EVS processes per node incarnation, multicasting to groups G "
                        "and H; their delivery order and views are checked")
    return p


def options_from_args(a: argparse.Namespace) -> SvcOptions:
    lo, hi = (float(x) for x in a.delay.split(","))
    return SvcOptions(
        nodes=a.nodes, loss=a.loss, dup=a.dup, reorder=a.reorder, reorder_delay=a.reorder_delay,
        delay=(lo, hi), partitions=a.partitions, flaps=a.flaps, crashes=a.crashes,
        state_crashes=a.state_crashes, pauses=a.pauses, restarts=a.restarts, asym=a.asym,
        ack_crashes=a.ack_crashes, split_writes=a.split_writes, messages=a.messages,
        clients=a.clients, stable=a.stable,
        max_write=a.max_write, sync_budget=a.sync_budget, send_queue=a.send_queue,
        duration=a.duration, settle=a.settle, start_spread=a.start_spread,
        max_steps=a.max_steps, amf=a.amf, amf_admin=a.amf_admin, amf_hangs=a.amf_hangs,
        amf_faults=a.amf_faults, amf_spawn=a.amf_spawn, evs=a.evs, evs_faults=a.evs_faults,
        client_crashes=a.client_crashes)


def _sweep_one(job: tuple[int, SvcOptions]) -> SvcResult:
    seed, o = job
    r = run(seed, o)
    r.trace = r.trace[-40:] if r.violations else []
    return r


def _print_one(r: SvcResult) -> int:
    """A single run's line, its report if it failed, and the total line."""
    print(r.line())
    if r.violations:
        print(r.report())
    print(f"1 runs, {int(bool(r.violations))} violations")
    return 1 if r.violations else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m ais.servicesim``; returns the exit status."""
    a = _parser().parse_args(argv)
    if a.scenario is not None:
        r = scenario(a.scenario, full_trace=a.trace)
        if a.trace:
            for ln in r.trace:
                print(ln)
        return _print_one(r)
    o = options_from_args(a)
    if a.seed is not None:
        o.full_trace = True
        r = run(a.seed, o)
        for ln in r.trace:
            print(ln)
        return _print_one(r)
    jobs = [(s, o) for s in range(a.start, a.start + a.seeds)]
    if a.jobs > 1 and len(jobs) > 1:
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(a.jobs) as pool:
            bad = _print_results(pool.imap(_sweep_one, jobs, chunksize=1), a.quiet)
    else:
        bad = _print_results(map(_sweep_one, jobs), a.quiet)
    print(f"{len(jobs)} runs, {bad} violations")
    return 1 if bad else 0


def _print_results(results: Iterable[SvcResult], quiet: bool) -> int:
    bad = 0
    for r in results:
        if not quiet or r.violations:
            print(r.line(), flush=True)
        if r.violations:
            bad += 1
            print(r.report(), flush=True)
    return bad


if __name__ == "__main__":
    sys.exit(main())
