"""Extended virtual synchrony, checked over recorded histories.

Theory of operation
-------------------
A *history* is what one processor incarnation (a node id plus a restart count)
saw, in order: configuration changes (``events.ConfChange``) and deliveries
(``Delivered``), plus the list of messages it submitted with ``mcast``.  A
node that crashes and restarts is a new incarnation: EVS treats it as a new
processor, so every check below is per incarnation ("proc").

``check(histories)`` parses each history into *segments*: a regular
configuration C1, the messages delivered in it, an optional transitional
configuration and the messages delivered in that, and the regular
configuration C2 that followed (``None`` at the end of the history).  Every
guarantee of spec/totem.md "Extended virtual synchrony" is then a property of
the segments:

======================  =====================================================
invariant               what is checked
======================  =====================================================
structure               first event is a regular configuration; at most one
                        transitional configuration per segment, carrying the
                        old ring id; ``left``/``joined`` match the previous
                        regular configuration
unique-configurations   one membership per ring id; each proc installs ring
                        ids with strictly increasing seq (so at most once);
                        a restarted node's rings stay above its earlier ones
self-inclusion          a proc is a member of every configuration it installs
integrity               every delivery was submitted, by the sender it names,
                        with the bytes submitted; at most once per proc
agreed-order            per ring, any two procs deliver common messages in the
                        same order; the messages a proc delivers in a regular
                        configuration are a gap-free prefix of that ring's order
fifo                    a sender's messages are delivered in submission order
sending-configuration   a message is tagged with, and delivered in, one ring
                        (or its transitional configuration), whose members
                        include its sender
virtual-synchrony       procs going C1 -> C2 deliver the same set in C1
same-point              ... and deliver the transitional configuration after
                        the same set of C1 messages
self-delivery           a proc delivers its own messages in order without gaps,
                        and (complete runs) all of them unless it crashed
safe-delivery           a message delivered as safe in C is delivered by every
                        member of C unless that member crashed
transitional-membership the transitional configuration between C1 and C2 is
                        exactly the members of C1 that go to C2 directly
liveness                ``check_liveness``: one final ring of exactly the live
                        nodes, every live proc's messages and the probes sent
                        in that ring delivered everywhere
======================  =====================================================

Ordering "by seq" is checked through positions, because ``Deliver`` carries no
sequence number: the union of the per-proc orders of one ring must be a single
consistent order, and a regular configuration's deliveries must be
downward-closed in it (no holes), while transitional ones may skip holes.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from ais.totem.events import ConfChange, RingId, fmt_node

ProcId = tuple[int, int]
"""(node id, incarnation number)."""

INVARIANTS = (
    "structure", "unique-configurations", "self-inclusion", "integrity", "agreed-order",
    "fifo", "sending-configuration", "virtual-synchrony", "same-point", "self-delivery",
    "safe-delivery", "transitional-membership", "liveness",
)

#: at most this many violations are reported per invariant (one bug tends to cascade)
MAX_PER_INVARIANT = 5


@dataclass(frozen=True, slots=True)
class Delivered:
    """One delivery in a history.

    ``msg`` identifies the message (hashable, unique per submission); the
    recorder maps a payload whose bytes differ from what was submitted to a key
    that was never submitted, so corruption shows up as an integrity violation.
    """

    sender: int
    msg: Hashable
    ring_id: RingId
    safe: bool = False


Event = ConfChange | Delivered


@dataclass
class History:
    """Everything one incarnation saw, in order."""

    node: int
    inc: int
    #: ConfChange and Delivered, in the order the protocol emitted them
    events: list[Event] = field(default_factory=list)
    #: message keys this incarnation submitted successfully, in order
    submitted: list[Hashable] = field(default_factory=list)
    #: the incarnation ended by a crash (EVS: it "failed")
    crashed: bool = False

    @property
    def proc(self) -> ProcId:
        """The EVS processor identity."""
        return (self.node, self.inc)


@dataclass(frozen=True)
class Violation:
    """One broken guarantee."""

    invariant: str
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant}: {self.detail}"


@dataclass
class _Segment:
    """A regular configuration at one proc and what it delivered there."""

    conf: ConfChange
    regular: list[Hashable] = field(default_factory=list)
    trans: ConfChange | None = None
    trans_msgs: list[Hashable] = field(default_factory=list)
    next_ring: RingId | None = None

    @property
    def ring(self) -> RingId:
        return self.conf.ring_id

    def all_msgs(self) -> list[Hashable]:
        return self.regular + self.trans_msgs


def _p(proc: ProcId) -> str:
    return f"{fmt_node(proc[0])}#{proc[1]}"


def _ring_str(ring: RingId | None) -> str:
    return "-" if ring is None else str(ring)


class _Report:
    """Collects violations, capped per invariant."""

    def __init__(self) -> None:
        self.items: list[Violation] = []
        self._count: dict[str, int] = defaultdict(int)

    def add(self, invariant: str, detail: str) -> None:
        assert invariant in INVARIANTS, invariant
        self._count[invariant] += 1
        if self._count[invariant] <= MAX_PER_INVARIANT:
            self.items.append(Violation(invariant, detail))


class _Checker:
    def __init__(self, histories: Iterable[History], complete: bool) -> None:
        self.hists = {h.proc: h for h in histories}
        self.complete = complete
        self.r = _Report()
        #: message key -> (submitting proc, index in its submissions)
        self.origin: dict[Hashable, tuple[ProcId, int]] = {}
        for h in self.hists.values():
            for i, key in enumerate(h.submitted):
                self.origin[key] = (h.proc, i)
        self.segs: dict[ProcId, list[_Segment]] = {}
        #: per proc, message -> the Delivered record (first delivery only)
        self.delivered: dict[ProcId, dict[Hashable, Delivered]] = {}
        for proc in sorted(self.hists):
            self._parse(self.hists[proc])
        #: ring -> procs that installed it (in proc order)
        self.installs: dict[RingId, list[ProcId]] = defaultdict(list)
        #: (proc, ring) -> the segment
        self.seg_of: dict[tuple[ProcId, RingId], _Segment] = {}
        for proc, segs in self.segs.items():
            for s in segs:
                self.installs[s.ring].append(proc)
                self.seg_of.setdefault((proc, s.ring), s)

    # -- parsing -------------------------------------------------------------

    def _parse(self, h: History) -> None:
        proc = h.proc
        segs: list[_Segment] = []
        seen: dict[Hashable, Delivered] = {}
        prev_members: tuple[int, ...] | None = None
        for ev in h.events:
            if isinstance(ev, ConfChange):
                if ev.transitional:
                    if not segs:
                        self.r.add("structure", f"{_p(proc)} installs transitional "
                                   f"{ev.ring_id} before any regular configuration")
                        continue
                    cur = segs[-1]
                    if cur.trans is not None:
                        self.r.add("structure", f"{_p(proc)} installs a second transitional "
                                   f"configuration in {cur.ring}")
                    elif ev.ring_id != cur.ring:
                        self.r.add("structure", f"{_p(proc)} transitional configuration "
                                   f"carries ring {ev.ring_id}, current ring is {cur.ring}")
                    cur.trans = ev
                else:
                    if prev_members is not None:
                        left = set(prev_members) - set(ev.members)
                        joined = set(ev.members) - set(prev_members)
                        if set(ev.left) != left or set(ev.joined) != joined:
                            self.r.add("structure", f"{_p(proc)} installs {ev.ring_id} with "
                                       f"left={_nodes(ev.left)} joined={_nodes(ev.joined)}, "
                                       f"expected left={_nodes(left)} joined={_nodes(joined)}")
                    prev_members = ev.members
                    if segs:
                        segs[-1].next_ring = ev.ring_id
                    segs.append(_Segment(ev))
            else:
                if not segs:
                    self.r.add("structure", f"{_p(proc)} delivers {ev.msg!r} before any "
                               "configuration")
                    continue
                if ev.msg in seen:
                    self.r.add("integrity", f"{_p(proc)} delivers {ev.msg!r} twice")
                    continue
                seen[ev.msg] = ev
                cur = segs[-1]
                (cur.trans_msgs if cur.trans is not None else cur.regular).append(ev.msg)
        self.segs[proc] = segs
        self.delivered[proc] = seen

    # -- the guarantees ------------------------------------------------------

    def run(self) -> list[Violation]:
        self.integrity()
        self.unique_configurations()
        self.self_inclusion()
        self.agreed_order()
        self.fifo()
        self.sending_configuration()
        self.virtual_synchrony_and_same_point()
        self.self_delivery()
        self.safe_delivery()
        self.transitional_membership()
        return self.r.items

    def unique_configurations(self) -> None:
        members: dict[RingId, tuple[ProcId, frozenset[int]]] = {}
        for proc, segs in self.segs.items():
            last: RingId | None = None
            installed: set[RingId] = set()
            for s in segs:
                m = frozenset(s.conf.members)
                if s.ring in members and members[s.ring][1] != m:
                    other, om = members[s.ring]
                    self.r.add("unique-configurations", f"ring {s.ring} has members "
                               f"{_nodes(om)} at {_p(other)} but {_nodes(m)} at {_p(proc)}")
                members.setdefault(s.ring, (proc, m))
                if last is not None and s.ring.seq <= last.seq:
                    what = "again" if s.ring in installed else "out of order"
                    self.r.add("unique-configurations", f"{_p(proc)} installs {s.ring} "
                               f"{what} after {last}")
                installed.add(s.ring)
                last = s.ring
        # a restarted node never goes back to ring seqs its earlier incarnations used
        by_node: dict[int, list[ProcId]] = defaultdict(list)
        for proc in sorted(self.segs):
            by_node[proc[0]].append(proc)
        for procs in by_node.values():
            top: tuple[ProcId, RingId] | None = None
            for proc in procs:
                segs = self.segs[proc]
                if not segs:
                    continue
                if top is not None and segs[0].ring.seq <= top[1].seq:
                    self.r.add("unique-configurations", f"{_p(proc)} installs {segs[0].ring}, "
                               f"not above {top[1]} installed by {_p(top[0])}")
                top = (proc, segs[-1].ring)

    def self_inclusion(self) -> None:
        for proc, segs in self.segs.items():
            for s in segs:
                for c in (s.conf, s.trans):
                    if c is not None and proc[0] not in c.members:
                        kind = "transitional" if c.transitional else "regular"
                        self.r.add("self-inclusion", f"{_p(proc)} installs {kind} {c.ring_id} "
                                   f"with members {_nodes(c.members)}")

    def integrity(self) -> None:
        for proc, seen in self.delivered.items():
            bad: set[Hashable] = set()
            for key, d in seen.items():
                org = self.origin.get(key)
                if org is None:
                    self.r.add("integrity", f"{_p(proc)} delivers {key!r} from "
                               f"{fmt_node(d.sender)}, which nobody submitted")
                    bad.add(key)
                elif org[0][0] != d.sender:
                    self.r.add("integrity", f"{_p(proc)} delivers {key!r} as sent by "
                               f"{fmt_node(d.sender)}; {_p(org[0])} submitted it")
            if bad:
                # forged deliveries are reported once, here, not again by every
                # check that compares deliveries between procs
                for key in bad:
                    del seen[key]
                for s in self.segs[proc]:
                    s.regular = [m for m in s.regular if m not in bad]
                    s.trans_msgs = [m for m in s.trans_msgs if m not in bad]

    def agreed_order(self) -> None:
        # ring -> proc -> that ring's messages in delivery order
        orders: dict[RingId, dict[ProcId, list[Hashable]]] = defaultdict(dict)
        for proc, segs in self.segs.items():
            for s in segs:
                orders[s.ring][proc] = s.all_msgs()
        for ring in sorted(orders):
            per = orders[ring]
            pos = {p: {m: i for i, m in enumerate(seq)} for p, seq in per.items()}
            procs = sorted(per)
            for a_i, a in enumerate(procs):
                for b in procs[a_i + 1:]:
                    pb = pos[b]
                    last_i, last_m = -1, None
                    for m in per[a]:
                        j = pb.get(m)
                        if j is None:
                            continue
                        if j < last_i:
                            self.r.add("agreed-order", f"in {ring}: {_p(a)} delivers {last_m!r} "
                                       f"before {m!r}, {_p(b)} the other way round")
                            break
                        last_i, last_m = j, m
            # no holes: what a proc delivers in the regular configuration is closed
            # under "delivered earlier in this ring by someone"
            for p in procs:
                seg = self.seg_of[(p, ring)]
                regular = set(seg.regular)
                if not regular:
                    continue
                for q in procs:
                    if q == p:
                        continue
                    seq = per[q]
                    pq = pos[q]
                    k = max((pq[m] for m in regular if m in pq), default=-1)
                    if k < 0:
                        continue  # nothing in common: no order to compare
                    for m in seq[:k]:
                        if m not in regular:
                            self.r.add("agreed-order", f"in {ring}: {_p(p)} delivers "
                                       f"{seq[k]!r} in the regular configuration without "
                                       f"{m!r}, which {_p(q)} delivers before it")
                            break

    def fifo(self) -> None:
        for proc, seen in self.delivered.items():
            last: dict[ProcId, tuple[int, Hashable]] = {}
            for key in seen:
                org = self.origin.get(key)
                if org is None:
                    continue
                sender, idx = org
                if sender in last and last[sender][0] > idx:
                    self.r.add("fifo", f"{_p(proc)} delivers {key!r} after {last[sender][1]!r}, "
                               f"but {_p(sender)} submitted it first")
                if sender not in last or last[sender][0] < idx:
                    last[sender] = (idx, key)

    def sending_configuration(self) -> None:
        ring_of: dict[Hashable, tuple[RingId, ProcId]] = {}
        for proc, segs in self.segs.items():
            for s in segs:
                for key in s.all_msgs():
                    d = self.delivered[proc][key]
                    if d.ring_id != s.ring:
                        self.r.add("sending-configuration", f"{_p(proc)} delivers {key!r} "
                                   f"of ring {d.ring_id} while in {s.ring}")
                    if key in ring_of and ring_of[key][0] != s.ring:
                        other = ring_of[key]
                        self.r.add("sending-configuration", f"{key!r} delivered in {other[0]} "
                                   f"at {_p(other[1])} but in {s.ring} at {_p(proc)}")
                    ring_of.setdefault(key, (s.ring, proc))
                    if d.sender not in s.conf.members:
                        self.r.add("sending-configuration", f"{_p(proc)} delivers {key!r} "
                                   f"from {fmt_node(d.sender)} in {s.ring}, which it is not in")
        for key, (ring, proc) in ring_of.items():
            org = self.origin.get(key)
            if org is None or org[0] not in self.segs:
                continue
            if (org[0], ring) not in self.seg_of:
                self.r.add("sending-configuration", f"{key!r} delivered in {ring} at {_p(proc)}, "
                           f"but its sender {_p(org[0])} never installed {ring}")

    def virtual_synchrony_and_same_point(self) -> None:
        groups: dict[tuple[RingId, RingId], list[ProcId]] = defaultdict(list)
        for proc, segs in self.segs.items():
            for s in segs:
                if s.next_ring is not None:
                    groups[(s.ring, s.next_ring)].append(proc)
        for (c1, c2), procs in sorted(groups.items()):
            procs.sort()
            first = procs[0]
            s0 = self.seg_of[(first, c1)]
            set0 = set(s0.all_msgs())
            for p in procs[1:]:
                s = self.seg_of[(p, c1)]
                got = set(s.all_msgs())
                if got != set0:
                    diff = sorted(map(repr, got ^ set0))[:3]
                    self.r.add("virtual-synchrony", f"{_p(first)} and {_p(p)} both go "
                               f"{c1} -> {c2} but deliver different sets in {c1} "
                               f"(e.g. {', '.join(diff)})")
                if (s.trans is None) != (s0.trans is None):
                    self.r.add("same-point", f"{_p(first)} and {_p(p)} both go {c1} -> {c2}, "
                               "only one delivers a transitional configuration")
                elif set(s.regular) != set(s0.regular):
                    diff = sorted(map(repr, set(s.regular) ^ set(s0.regular)))[:3]
                    self.r.add("same-point", f"{_p(first)} and {_p(p)} both go {c1} -> {c2} "
                               "but deliver the transitional configuration at different points "
                               f"(e.g. {', '.join(diff)})")

    def self_delivery(self) -> None:
        for proc, h in self.hists.items():
            own = [k for k in self.delivered[proc] if self.origin.get(k, (None,))[0] == proc]
            n = len(own)
            if own != h.submitted[:n]:
                i = next(i for i, (a, b) in enumerate(zip(own, h.submitted)) if a != b)
                self.r.add("self-delivery", f"{_p(proc)} delivers its own {own[i]!r} where "
                           f"{h.submitted[i]!r} was due")
            elif self.complete and not h.crashed and n < len(h.submitted):
                self.r.add("self-delivery", f"{_p(proc)} never delivers its own "
                           f"{h.submitted[n]!r} ({len(h.submitted) - n} of "
                           f"{len(h.submitted)} missing)")

    def safe_delivery(self) -> None:
        for proc, segs in self.segs.items():
            for s in segs:
                for key in s.all_msgs():
                    if not self.delivered[proc][key].safe:
                        continue
                    for q in self.installs[s.ring]:
                        qs = self.seg_of[(q, s.ring)]
                        settled = qs.next_ring is not None or (
                            self.complete and not self.hists[q].crashed)
                        if settled and key not in set(qs.all_msgs()):
                            self.r.add("safe-delivery", f"{_p(proc)} delivers {key!r} as safe "
                                       f"in {s.ring}; member {_p(q)} never does")

    def transitional_membership(self) -> None:
        for proc, segs in self.segs.items():
            for s in segs:
                t = s.trans
                if t is None:
                    continue
                tm = set(t.members)
                c1 = set(s.conf.members)
                if s.next_ring is None:
                    if not tm <= c1:
                        self.r.add("transitional-membership", f"{_p(proc)}: transitional "
                                   f"{_nodes(tm)} not within {s.ring} {_nodes(c1)}")
                    continue
                c2_install = self.seg_of.get((proc, s.next_ring))
                c2 = set(c2_install.conf.members) if c2_install else set()
                if not tm <= c1 & c2:
                    self.r.add("transitional-membership", f"{_p(proc)}: transitional "
                               f"{_nodes(tm)} between {s.ring} and {s.next_ring} is not within "
                               f"{_nodes(c1 & c2)}")
                for q in self.installs[s.ring]:
                    qs = self.seg_of[(q, s.ring)]
                    if qs.next_ring == s.next_ring and q[0] not in tm:
                        self.r.add("transitional-membership", f"{_p(proc)}: transitional "
                                   f"{_nodes(tm)} between {s.ring} and {s.next_ring} lacks "
                                   f"{_p(q)}, which goes there directly too")
                for n in sorted(tm):
                    for q in self.installs[s.ring]:
                        if q[0] != n:
                            continue
                        qs = self.seg_of[(q, s.ring)]
                        if qs.next_ring != s.next_ring and (q, s.next_ring) in self.seg_of:
                            self.r.add("transitional-membership", f"{_p(proc)}: transitional "
                                       f"{_nodes(tm)} between {s.ring} and {s.next_ring} lists "
                                       f"{_p(q)}, which goes to {_ring_str(qs.next_ring)} first")


def _nodes(nodes: Iterable[int]) -> str:
    return "{" + ",".join(fmt_node(n) for n in sorted(nodes)) + "}"


def check(histories: Iterable[History], *, complete: bool = False) -> list[Violation]:
    """Check every EVS guarantee except liveness over a run's histories.

    Args:
        histories: one per incarnation (crashed ones included).
        complete: the run ended quiescent (faults over, network fair, everything
            settled), so a proc that did not crash must have delivered all its
            own messages and every safe message of its configurations.

    Returns:
        The violations found, at most ``MAX_PER_INVARIANT`` per invariant.
    """
    return _Checker(histories, complete).run()


def check_liveness(histories: Iterable[History], live: Iterable[ProcId],
                   probes: Iterable[Hashable] = ()) -> list[Violation]:
    """The liveness guarantee, evaluated on the state at the end of a quiet phase.

    All ``live`` procs must have as their last event the same regular
    configuration whose members are exactly the live nodes; each must have
    delivered everything it submitted; each must have delivered every key in
    ``probes`` (messages sent once that common configuration formed); and all
    must have delivered the same set of messages in that final configuration.
    (Messages sent before a processor joined, or while it was partitioned away,
    are legitimately never delivered to it, so they are not required.)

    Returns:
        At most one violation, describing the first unmet condition.
    """
    hists = {h.proc: h for h in histories}
    live = sorted(live)
    want_members = sorted({p[0] for p in live})
    rings: dict[ProcId, ConfChange | None] = {}
    for p in live:
        h = hists[p]
        last = None
        for ev in reversed(h.events):
            if isinstance(ev, ConfChange):
                last = ev
                break
        rings[p] = last
        if last is None or last.transitional:
            what = "no configuration" if last is None else f"transitional {last.ring_id} last"
            return [Violation("liveness", f"{_p(p)} has {what}")]
        if sorted(last.members) != want_members:
            return [Violation("liveness", f"{_p(p)} is in {last.ring_id} with members "
                              f"{_nodes(last.members)}; live nodes are {_nodes(want_members)}")]
    ids = {c.ring_id for c in rings.values() if c is not None}
    if len(ids) > 1:
        return [Violation("liveness", "live nodes are in different rings: " + ", ".join(
            f"{_p(p)}:{c.ring_id}" for p, c in rings.items() if c is not None))]
    probes = list(probes)
    final_sets: dict[ProcId, set[Hashable]] = {}
    for p in live:
        h = hists[p]
        got = {ev.msg for ev in h.events if isinstance(ev, Delivered)}
        missing = [k for k in h.submitted if k not in got]
        if missing:
            return [Violation("liveness", f"{_p(p)} has not delivered {len(missing)} of its own "
                              f"messages, first {missing[0]!r}")]
        missing = [k for k in probes if k not in got]
        if missing:
            return [Violation("liveness", f"{_p(p)} has not delivered {len(missing)} probe "
                              f"messages, first {missing[0]!r}")]
        tail: set[Hashable] = set()
        for ev in reversed(h.events):
            if isinstance(ev, ConfChange):
                break
            tail.add(ev.msg)
        final_sets[p] = tail
    sets = list(final_sets.items())
    for p, s in sets[1:]:
        if s != sets[0][1]:
            diff = sorted(map(repr, s ^ sets[0][1]))[:3]
            return [Violation("liveness", f"{_p(sets[0][0])} and {_p(p)} deliver different "
                              f"sets in the final ring (e.g. {', '.join(diff)})")]
    return []


__all__ = ["Delivered", "History", "INVARIANTS", "ProcId", "Violation", "check",
           "check_liveness"]
