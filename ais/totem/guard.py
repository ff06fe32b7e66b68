"""What a ring packet may claim: semantic checks at the entry of ``Srp``.

Theory of operation
===================

``wire.decode_untrusted`` guarantees that a packet parses.  A packet that
parses and authenticates can still lie: a buggy or out-of-date peer, or a
compromised node, holds the key.  ``Guard.check`` compares every field of a
decoded packet with what the protocol allows *given this node's state*, and
``Srp.receive`` drops the packet when it names a reason.  Nothing here keeps
the protocol from working with honest peers: each bound below is wider than
what the protocol itself produces, and where a bound is tight (future
frames) an honest packet dropped by it is only retransmitted.

Bounds and why they hold for honest peers:

* Ring sequences (JOIN, COMMIT, MCAST, TOKEN, PROBE, commit entries) grow by
  4 per ring formed.  Once this node has been in a ring with another member
  ("anchored"), a value more than ``RING_SEQ_JUMP`` (2**20, a quarter of a
  million ring formations) above the highest it has seen is a lie.  Before
  that -- first start, lost or refused state file, a node down for ages --
  it trusts what it hears up to ``RING_SEQ_LIMIT`` (2**62), so a restarted
  node always catches up with the cluster.  No accepted value ever comes
  within 2**62 of the 64-bit encoding limit, so adding 4 per ring can never
  overflow.  A node poisoned during its unanchored start is refused by the
  anchored ones: it stays alone (and is logged by them) but harms nobody.
* Message sequence numbers: per rotation the ring assigns at most about
  ``srp.window`` new seqs (flow control: ``fcc``; ``window_size`` scaled up
  to ``window_bytes`` at small frames), and the token's seq never
  decreases.  A token (that is not a duplicate) or a frame may claim at most
  ``frame_ahead`` (two windows) beyond the seq this node last passed the
  token on with, and a token no less.  A forged far-future frame therefore
  pins no memory (at most ``frame_ahead`` frames, freed when the ring passes
  them), and a forged token cannot freeze the ring at an unreachable seq.
  (Commit entries and recovered frames, which report on an old ring, get the
  wider ``seq_ahead``: another member may have been up to ``4 *
  window`` ahead of our aru there.)
* Token sequence: grows by one per hop, so an honest token comes back at most
  one rotation (``len(members)`` hops) above what this node forwarded.
* Flow control: ``fcc`` is the sum of each member's frames sent on its last
  visit, never above the window.  After a rotation in which nobody sent
  (the seq the representative passed on came back unchanged) it equals the
  representative's own last share: a larger value is a lie that would stop
  every sender for good, and the representative refuses that token (the
  token loss re-forms the ring, a second later).
* An ACK (stable_acks) reports the sender's aru in our ring: it is held by a
  member, and it claims at most ``frame_ahead`` beyond the highest seq this
  node knows (the token's seq it passed on, the highest frame it holds).  A
  member lying about its aru can mislead about itself only, as in the token.
* Member lists: sorted, unique (``wire``), non-zero ids, at most
  ``max_members`` (also after merging a join into our process set, so that a
  join naming made-up nodes cannot make our own joins unreadable to the
  others), and for udpu only configured members (``TotemConfig.members``).
* A frame of our ring whose seq we already hold with a different sender or
  payload is a forgery or the original that a forgery displaced: counted
  and logged, never stored twice.

A foreign ring's frame or merge-detect probe starts a gather at most once
per ``foreign_gather_interval``: the first merges partitions at once, a
stream of them cannot keep the ring re-forming.  (A join from a new node
still starts a gather at once: that is how nodes join.  A made-up node named
in it is failed at the consensus timeout together with the silent sender,
and the real members, who agree with each other, form the ring again.)

Every refusal is counted in ``Srp.stats`` and logged at warning, rate
limited (a few lines per ``LOG_INTERVAL`` seconds, then one summary).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import wire
from .events import RingId, fmt_node
from .wire import (MCAST_ACK, MCAST_RECOVERED, TOKEN_COMPLETE, TOKEN_IDLE, Ack, BadPacket, Commit,
                   Join, Mcast, Probe, Token)

if TYPE_CHECKING:
    from .srp import Srp

#: largest step up from the highest ring sequence seen that an anchored node accepts
RING_SEQ_JUMP = 2 ** 20
#: largest ring sequence an unanchored node accepts (leaves 3 * 2**62 of headroom)
RING_SEQ_LIMIT = 2 ** 62
#: no ring sequence above this is ever accepted, whatever the node has seen
RING_SEQ_HARD = 2 ** 63
#: frames queued ring-wide that a token may claim: far above anything honest, below 2**32
MAX_BACKLOG = 2 ** 30
#: refusal lines per window, and the window in seconds
LOG_BURST = 5
LOG_INTERVAL = 10.0

_TOKEN_FLAGS = TOKEN_IDLE | TOKEN_COMPLETE


class Limiter:
    """``burst`` events per ``interval`` seconds of the caller's clock, the rest counted.

    The core has no clock, so ``now`` is passed in (``ais.log.RateLimiter`` is
    the shell's equivalent; the core does not import the logging layer).
    """

    __slots__ = ("burst", "interval", "start", "count", "suppressed")

    def __init__(self, burst: int, interval: float) -> None:
        self.burst, self.interval = burst, interval
        self.start: float | None = None
        self.count = 0
        self.suppressed = 0

    def hit(self, now: float) -> tuple[bool, int]:
        """(log this one?, events suppressed in the window that just ended)."""
        reported = 0
        if self.start is None or now - self.start >= self.interval:
            reported = self.suppressed
            self.start, self.count, self.suppressed = now, 0, 0
        if self.count < self.burst:
            self.count += 1
            return True, reported
        self.suppressed += 1
        return False, reported


class Guard:
    """Per-``Srp`` packet checks, refusal counters and the foreign-gather limiter."""

    def __init__(self, srp: Srp) -> None:
        self.srp = srp
        cfg = srp.cfg
        #: True once this node has been in a ring with another member
        self.anchored = False
        #: udpu: the configured members (and this node, listed or not); empty: anyone
        self.allowed: frozenset[int] = (frozenset(cfg.members) | {srp.node_id}
                                        if cfg.members else frozenset())
        self.max_members = min(cfg.max_members, wire.MAX_NODES)
        # The window as flow control applies it (scaled up to window_bytes at
        # small frames), not the configured minimum: a rotation may carry all of it.
        window, quota = srp.window, srp.visit_quota
        self.frame_ahead = 2 * window + 2 * quota + 16
        self.seq_ahead = 8 * window + 4 * quota + 64
        #: flow control keeps fcc <= window; slack for members configured differently
        self.max_fcc = 4 * window + 64
        self._last_foreign: float | None = None
        self._log_limit = Limiter(LOG_BURST, LOG_INTERVAL)
        srp.stats.update(refused=0, foreign_ignored=0, frame_conflicts=0)

    # ------------------------------------------------------------- reporting

    def refuse(self, why: str, sender: int | None, now: float) -> None:
        """Count one refused packet and log it, rate limited."""
        srp = self.srp
        srp.stats["refused"] += 1
        allowed, suppressed = self._log_limit.hit(now)
        who = fmt_node(sender) if sender is not None else "?"
        if suppressed:
            srp.log.warning("refused %d more ring packets in the last %g s", suppressed,
                            self._log_limit.interval)
        if allowed:
            srp.log.warning("refused ring packet from %s: %s", who, why)

    def may_gather(self, now: float) -> bool:
        """Whether a packet from outside the ring may start a gather now."""
        last = self._last_foreign
        if last is not None and now - last < self.srp.cfg.foreign_gather_interval / 1000.0:
            self.srp.stats["foreign_ignored"] += 1
            return False
        self._last_foreign = now
        return True

    # ---------------------------------------------------------------- checks

    def ring_seq_bound(self) -> int:
        srp = self.srp
        if not self.anchored and len(srp._regular) > 1:
            self.anchored = True
        near = min(srp.max_ring_seq + RING_SEQ_JUMP, RING_SEQ_HARD)
        return near if self.anchored else max(near, RING_SEQ_LIMIT)

    def check(self, pkt: wire.Packet) -> str | None:
        """Why ``pkt`` is refused, or None if it may be handled."""
        sender = pkt.sender
        if sender == 0:
            return "node id 0"
        if self.allowed and sender not in self.allowed:
            return "not a configured member"
        if isinstance(pkt, Mcast):
            return self._mcast(pkt)
        if isinstance(pkt, Token):
            return self._token(pkt)
        if isinstance(pkt, Join):
            return self._join(pkt)
        if isinstance(pkt, Commit):
            return self._commit(pkt)
        if isinstance(pkt, Ack):
            return self._ack(pkt)
        return self._probe(pkt)

    def _ring(self, rid: RingId) -> str | None:
        bound = self.ring_seq_bound()
        if rid.seq > bound:
            return f"ring sequence {rid.seq} beyond {bound}"
        if rid.rep == 0 or (self.allowed and rid.seq and rid.rep not in self.allowed):
            return f"ring representative {fmt_node(rid.rep)}"
        return None

    def _members(self, nodes: frozenset[int] | tuple[int, ...], what: str) -> str | None:
        if len(nodes) > self.max_members:
            return f"{what} of {len(nodes)} nodes, more than {self.max_members}"
        if 0 in nodes:
            return f"{what} names node 0"
        if self.allowed and not self.allowed.issuperset(nodes):
            return f"{what} names nodes that are not configured members"
        return None

    def _mcast(self, m: Mcast) -> str | None:
        # The hot path: a frame of our own ring (whose id passed these checks).
        srp = self.srp
        rid = m.ring_id
        if rid == srp.ring_id:
            rx, members = srp.rx, srp.members
        elif rid == srp._new_ring and srp._new_rx is not None:
            rx, members = srp._new_rx, srp._new_members
        else:
            return self._ring(rid)  # a foreign ring: the handler decides (rate limited)
        if m.seq == 0:
            return "frame seq 0"
        if m.flags & ~(MCAST_RECOVERED | MCAST_ACK):
            return f"frame flags {m.flags:#x}"
        if m.sender not in members:
            return f"frame of ring {m.ring_id} from a non-member"
        if m.seq > srp._sent_seq + self.frame_ahead:
            # Not relative to our aru: contiguous forgeries would drag it along.
            return f"frame seq {m.seq} too far ahead of {srp._sent_seq}"
        held = rx.frames.get(m.seq)
        if held is not None and (held.sender != m.sender or held.payload != m.payload):
            srp.stats["frame_conflicts"] += 1
            return f"frame seq {m.seq} conflicts with the frame already held"
        if m.flags & MCAST_RECOVERED and rx is not srp.rx:
            try:
                r = wire.decode_recovered_untrusted(m.payload)
            except BadPacket as e:
                return str(e)
            if r.ring_id == srp.ring_id and (
                    r.seq == 0 or r.seq > srp.rx.aru + self.seq_ahead
                    or r.sender not in srp.members):
                return f"recovered frame seq {r.seq} of {fmt_node(r.sender)} implausible"
        return None

    def _token(self, t: Token) -> str | None:
        srp = self.srp
        state = srp.state.value
        if state == "operational" and t.ring_id == srp.ring_id:
            members = srp.members
        elif state == "recovery" and t.ring_id == srp._new_ring and srp._new_rx is not None:
            members = srp._new_members
        else:
            return None  # not for our ring: the handler ignores it
        if t.token_seq <= srp._last_token_seq:
            return None  # a duplicate: the handler counts and drops it
        if t.sender not in members:
            return "token from a non-member"
        if t.token_seq > srp._last_token_seq + 4 * len(members) + 16:
            return f"token sequence {t.token_seq} far above {srp._last_token_seq}"
        # Since we passed it on, the others can have added one rotation's
        # frames, no more; and the real token's seq never goes back.
        if not srp._sent_seq <= t.seq <= srp._sent_seq + self.frame_ahead:
            return f"token seq {t.seq} out of reach of {srp._sent_seq}"
        if t.aru > t.seq:
            return f"token aru {t.aru} above its seq {t.seq}"
        if t.aru_addr and t.aru_addr not in members:
            return "token aru holder is not a member"
        if t.fcc > self.max_fcc or t.backlog > MAX_BACKLOG:
            return f"token flow control fcc {t.fcc} backlog {t.backlog}"
        if (t.ring_id.rep == srp.node_id and t.seq == srp._rep_last_seq
                and t.fcc > srp._my_last_sent):
            # Nobody sent during the whole rotation, so every other member's
            # share of fcc is 0: an inflated fcc would throttle the ring for good.
            return f"token fcc {t.fcc} after a rotation in which nobody sent"
        if t.retrans_flg > 1 or t.flags & ~_TOKEN_FLAGS:
            return f"token flags {t.retrans_flg} {t.flags:#x}"
        for s in t.rtr:
            if not 0 < s <= t.seq:
                return f"retransmit request for seq {s} outside 1..{t.seq}"
        return None

    def _ack(self, a: Ack) -> str | None:
        srp = self.srp
        if srp.state.value != "operational" or a.ring_id != srp.ring_id:
            return None  # not for our ring: the handler ignores it
        if a.sender not in srp.members or a.sender == srp.node_id:
            return "ack from a non-member"
        # Frames exist only up to the token's seq: ours when we passed it on,
        # plus what later holders sent (bounded as for frames).
        if a.aru > max(srp._sent_seq, srp.rx.high) + self.frame_ahead:
            return f"ack of seq {a.aru} out of reach of {srp._sent_seq}"
        return None

    def _join(self, j: Join) -> str | None:
        srp = self.srp
        bound = self.ring_seq_bound()
        if j.ring_seq > bound:
            return f"join ring sequence {j.ring_seq} beyond {bound}"
        if j.sender not in j.proc or j.sender in j.fail:
            return "join sender not in its own process set"
        why = self._members(j.proc, "process set") or self._members(j.fail, "fail set")
        if why:
            return why
        base = set(srp.members) if srp.state.value == "operational" else srp._proc
        if len(base | j.proc) > self.max_members:
            return f"process set would grow beyond {self.max_members} nodes"
        return None

    def _commit(self, c: Commit) -> str | None:
        why = self._ring(c.ring_id)
        if why:
            return why
        members = c.members
        why = self._members(members, "commit token")
        if why:
            return why
        if c.ring_id.rep != members[0] or c.sender not in members:
            return "commit token representative or sender not a member"
        srp = self.srp
        bound = self.ring_seq_bound()
        for e in c.entries:
            if e.old_ring.seq > bound or e.aru > e.high:
                return f"commit entry of {fmt_node(e.node)} implausible"
            if e.old_ring == srp.ring_id and e.high > srp.rx.aru + self.seq_ahead:
                return f"commit entry of {fmt_node(e.node)} claims seq {e.high}"
        return None

    def _probe(self, p: Probe) -> str | None:
        why = self._ring(p.ring_id)
        if why:
            return why
        if p.kind == wire.MERGE_DETECT and p.ring_id.rep != p.sender:
            return "merge detect from a node that is not its ring's representative"
        if p.kind == wire.WAKE and p.ring_id == self.srp.ring_id and \
                p.sender not in self.srp.members:
            return "wake from a non-member"
        return None


__all__ = ["Guard", "Limiter", "RING_SEQ_HARD", "RING_SEQ_JUMP", "RING_SEQ_LIMIT"]
