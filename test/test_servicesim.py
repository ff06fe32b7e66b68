"""CLM and CKPT on the real Totem core under the seeded simulator (ais/servicesim.py).

Three kinds of tests:

* the checker itself, fed broken histories (a diverged replica, a missing
  acknowledged write, an unanswered request, torn bytes): these must pass;
* the fixed scenarios of issue 7 findings 1-3 and the seeded sweeps, which
  assert the correct behaviour (each of the three scenarios failed before the
  sync, merge and safe-acknowledgement fixes);
* runs that must hold already (no faults, partitions only, pauses).

``AIS_SVC_SEEDS=N`` sets the seeds per sweep (default 100); ``AIS_SLOW=1`` adds
the soak sweeps (1000 seeds per fault mix).  A failing run prints its replay
command (``python -m ais.servicesim --seed N ...``).
"""
from __future__ import annotations

import ast
import io
import os
from contextlib import redirect_stdout
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ais.servicesim import (
    EVS_G, EVS_H, Ack, ServiceSim, SvcOptions, check_acked, check_answered, check_convergence,
    check_evs_history, check_evs_state,
    check_trackers, check_values, decode_value, diverging, loser_keeps, main, name_conflicts,
    required_acks, ring_graph, run, scenario, value_of,
)
from ais.totem.events import RingId, TotemConfig
from saf import _ckpt_wire as cw

ROOT = Path(__file__).resolve().parent.parent

#: the fault mixes of the sweeps (3 nodes unless said)
MIXES: dict[str, SvcOptions] = {
    # crashes, quick restarts (a node back before the others noticed), writers'
    # nodes killed right after an acknowledged WR_ALL_REPLICAS write, and clients
    # dying on their own, under loss
    "crashes": SvcOptions(loss=0.1, dup=0.05, reorder=0.2, crashes=2, restarts=2,
                          ack_crashes=2, client_crashes=2),
    # five nodes, everything at once
    "five": SvcOptions(nodes=5, loss=0.1, partitions=2, crashes=2, restarts=2, pauses=1,
                       asym=1, ack_crashes=2),
    # a ring of two: either node's writers get the token held for their next write
    # (the representative's too), under loss, pauses, crashes, quick restarts and
    # kills right after an acknowledged write
    "pair": SvcOptions(nodes=2, loss=0.1, dup=0.05, reorder=0.2, crashes=2, restarts=2,
                       pauses=1, ack_crashes=2),
    # a node cut off as it sends client data: sides end the old ring differently
    "splits": SvcOptions(loss=0.15, split_writes=3, messages=30),
    # partitions and flapping links, nobody crashes; AMF starts the raid group's
    # components itself (each side starts the other side's), some of which crash
    "partitions": SvcOptions(loss=0.05, dup=0.02, reorder=0.1, partitions=3, flaps=1,
                             amf_spawn=True, amf_faults=1),
    # pauses longer than the token timeout and asymmetric (size-dependent) loss
    "pauses": SvcOptions(pauses=2, asym=2, loss=0.05),
    # four nodes, heavier loss, every fault at once and AMF operator actions: the mix
    # whose wide sweep found two sides giving one checkpoint id to two creations
    "chaos": SvcOptions(nodes=4, loss=0.2, dup=0.05, reorder=0.3, partitions=2, crashes=3,
                        restarts=3, pauses=2, asym=2, ack_crashes=2, split_writes=2,
                        amf_admin=1),
    # restarts while sync rounds crawl (a tiny sync budget and send queue, writes up
    # to 30 KB): rounds restart and are abandoned half-way
    "slow_sync": SvcOptions(loss=0.1, dup=0.05, crashes=2, restarts=4, sync_budget=256,
                            send_queue=4, max_write=30000),
    # four nodes, every fault, EVS processes multicasting throughout: the line where
    # members leaving a ring through different transitional configurations made
    # a held message delivered twice
    "evs_chaos": SvcOptions(nodes=4, loss=0.2, dup=0.05, reorder=0.3, partitions=2,
                            crashes=3, pauses=2, restarts=3, asym=2, ack_crashes=2,
                            split_writes=2, evs=2, evs_faults=2),
    # AMF operator actions (locks, shutdowns, node locks, error reports with every
    # recovery, cancels) on the wide model, component processes stopped and resumed,
    # crashing on their own or refusing assignments, under loss, crashes and quick restarts
    "amf_admin": SvcOptions(loss=0.1, crashes=2, restarts=2, amf_admin=3, amf_hangs=2,
                            ack_crashes=1, amf_faults=2),
}


def seeds(default: int) -> range:
    return range(int(os.environ.get("AIS_SVC_SEEDS", default)))


def sweep(o: SvcOptions, n: int) -> None:
    bad = []
    for s in seeds(n):
        r = run(s, o)
        if r.violations:
            bad.append(r)
    assert not bad, (f"{len(bad)} of {len(seeds(n))} runs broke an invariant; first:\n"
                     + "\n".join(r.report(tail=10) for r in bad[:3]))


# --- the checker on broken histories ---------------------------------------------------------

CK = (4, 0x0A000001, 1)


def _ack(sid: bytes | None, n: int, mode: int = cw.SA_CKPT_WR_ALL_REPLICAS) -> Ack:
    return Ack(CK, b"stable-0", sid, n, mode, 0x0A000001, 0, 1.0, "n1.0/c0")


def test_values_round_trip_and_torn_bytes_are_recognised() -> None:
    v = value_of(7, 42, 3000)
    assert len(v) == 3000 and decode_value(v) == (7, 42)
    assert decode_value(v + b"tail of an older, longer value") == (7, 42)
    torn = v[:1500] + value_of(7, 41, 3000)[1500:]
    assert decode_value(torn) is None
    assert decode_value(b"") is None and decode_value(v[:10]) is None


def test_checker_catches_a_diverged_replica() -> None:
    same = [(CK, b"stable-0", True, None, 3, 0, (), ((b"1.1", value_of(1, 2, 40), 0, 0),))]
    other = [(CK, b"stable-0", True, None, 3, 0, (), ((b"1.1", value_of(1, 1, 40), 0, 0),))]
    assert check_convergence({"n1": same, "n2": list(same)}, {"n1": 1, "n2": 1}) == []
    vs = check_convergence({"n1": same, "n2": same, "n3": other}, {"n1": 1, "n2": 1, "n3": 1})
    assert [v.invariant for v in vs] == ["diverged"]
    assert "n3" in vs[0].detail and "section b'1.1'" in vs[0].detail
    vs = check_convergence({"n1": same, "n2": same}, {"n1": (8, (1, 2)), "n2": (8, (1,))})
    assert [v.invariant for v in vs] == ["diverged"] and "CLM" in vs[0].detail


def test_checker_catches_a_missing_acknowledged_write() -> None:
    acks = [_ack(None, 0), _ack(b"1.1", 0), _ack(b"1.1", 1), _ack(b"1.1", 2)]
    good = {CK: {b"1.1": value_of(1, 2, 100)}}
    newer = {CK: {b"1.1": value_of(1, 3, 100)}}
    assert check_acked(acks, {"n1": good, "n2": newer}) == []
    older = {CK: {b"1.1": value_of(1, 1, 100)}}
    vs = check_acked(acks, {"n1": good, "n2": older})
    assert [v.invariant for v in vs] == ["lost"]
    assert "n2" in vs[0].detail and "#1" in vs[0].detail and "#2" in vs[0].detail
    vs = check_acked(acks, {"n1": {CK: {}}, "n2": {}})
    assert {v.detail.split(":")[0] for v in vs} == {"n1", "n2"}
    assert any("section" in v.detail and "gone" in v.detail for v in vs)
    assert any("checkpoint" in v.detail and "gone" in v.detail for v in vs)


def test_checker_catches_torn_section_bytes() -> None:
    torn = value_of(1, 2, 3000)[:1500] + value_of(1, 1, 3000)[1500:]
    written = {b"1.1": (1, 2)}
    assert check_values({"n1": {CK: {b"1.1": value_of(1, 2, 50), b"x": b"?"}}}, written) == []
    vs = check_values({"n1": {CK: {b"1.1": torn, b"other": b"x"}}}, written)
    assert [v.invariant for v in vs] == ["torn"]
    vs = check_values({"n1": {CK: {b"1.1": value_of(1, 9, 50)}}}, written)
    assert [v.invariant for v in vs] == ["torn"], "a counter no client ever wrote"
    vs = check_values({"n1": {CK: {b"1.1": value_of(2, 1, 50)}}}, written)
    assert [v.invariant for v in vs] == ["torn"], "another client's value"


def test_checker_catches_a_stale_membership_callback() -> None:
    from saf import _clm_wire as w
    from saf.types import ClusterChange, ClusterNotification
    from ais.services.clm import record_for
    from saf.types import node_id_from_totem

    def cb(*changes: tuple[int, ClusterChange]) -> w.ClmTrackCallback:
        return w.ClmTrackCallback(8, 2, tuple(ClusterNotification(record_for(n, b"c", 0), ch)
                                               for n, ch in changes))
    a, b, c = 0x0A000001, 0x0A000002, 0x0A000003
    live = [node_id_from_totem(a), node_id_from_totem(b)]
    good = cb((a, ClusterChange.SA_CLM_NODE_NO_CHANGE), (b, ClusterChange.SA_CLM_NODE_JOINED),
              (c, ClusterChange.SA_CLM_NODE_LEFT))
    assert check_trackers({"n1": good, "n2": good}, live) == []
    stale = cb((a, ClusterChange.SA_CLM_NODE_NO_CHANGE), (c, ClusterChange.SA_CLM_NODE_NO_CHANGE))
    vs = check_trackers({"n1": good, "n2": stale, "n3": None}, live)
    assert [v.invariant for v in vs] == ["clm", "clm"]


def test_checker_catches_an_unanswered_request() -> None:
    assert check_answered([], 6.0, 40.0) == []
    vs = check_answered([("n2.0/c1", "write", 5.5)], 6.0, 40.0)
    assert [v.invariant for v in vs] == ["hang"] and "n2.0/c1" in vs[0].detail


def test_required_acks_follow_holders_and_conflicts() -> None:
    a, b = _ack(b"1.1", 1), replace(_ack(b"1.1", 1), ckpt=(8, 1, 1))
    assert required_acks([(a, {(1, 0)}), (b, {(2, 0)})], set()) == [a, b]
    assert required_acks([(a, set()), (b, {(2, 0)})], set()) == [b], "lost with its holders"
    assert required_acks([(a, {(1, 0)}), (b, {(2, 0)})], {CK}) == [b], "merge chose a side"


def test_conflicting_histories_and_concurrent_names() -> None:
    base = frozenset({"u1", "u2"})
    assert diverging([{CK: base}, {CK: base | {"u3"}}, {}]) == set(), "one extends the other"
    assert diverging([{CK: base | {"u3"}}, {CK: base | {"u4"}}]) == {CK}
    r4, r8a, r8b, r12 = RingId(4, 1), RingId(8, 1), RingId(8, 2), RingId(12, 1)
    desc = ring_graph([[r4, r8a, r12], [r4, r8b, r12]])
    assert r12 in desc[r4] and r8b not in desc[r8a]
    ids = {(8, 1, 1): b"x", (8, 2, 1): b"x", (4, 1, 1): b"y", (12, 1, 1): b"y"}
    assert name_conflicts(ids, desc) == {(8, 1, 1), (8, 2, 1)}


def test_a_checkpoint_that_lost_its_name_keeps_what_its_openers_saw() -> None:
    a = _ack(b"1.1", 2)  # acknowledged on node 0x0A000001, incarnation 0
    me, other = (0x0A000001, 0), (0x0A000002, 0)
    assert loser_keeps(a, set(), {me}), "acknowledged on a live opener's node"
    assert loser_keeps(a, {other}, {other}), "applied on a live opener's node"
    assert not loser_keeps(a, {me}, set()), "nobody holds it open: it may go"
    assert not loser_keeps(a, {other}, {(0x0A000003, 0)}), "only another side had it"
    assert not loser_keeps(a, {me}, {(0x0A000001, 1)}), "the opener is a later incarnation"


def test_checker_catches_a_broken_replica_of_a_real_run() -> None:
    sim = ServiceSim(3, SvcOptions(messages=30))
    r = sim.run()
    assert r.ok, r.report()
    assert sim.check_state() == []
    host = sim.hosts[sim.ids[1]]
    assert host is not None
    ck = host.services[cw.CKPT_SERVICE_ID]
    sec = next((ck_id, sid) for t in sim.tracks if (sid := t.ack.sid) is not None
               and t.ack.counter and (ck_id := t.ack.ckpt) in ck.ckpts)
    ck.ckpts[sec[0]].sections[sec[1]].data = bytearray(value_of(999, 0, 40))
    kinds = {v.invariant for v in sim.check_state()}
    assert kinds == {"diverged", "lost", "torn"}


# --- runs that hold on this branch --------------------------------------------------------------


def test_fault_free_run_exercises_the_services() -> None:
    r = run(1, SvcOptions(messages=80))
    assert r.ok, r.report()
    assert r.settled_at is not None
    assert r.acked_writes > 30 and r.answered == r.requests > 100
    assert r.sync_rounds >= 3


def test_runs_are_deterministic() -> None:
    o = replace(MIXES["crashes"], full_trace=True)
    a, b = run(5, o), run(5, o)
    assert a.trace == b.trace and a.line() == b.line()
    assert any("CRASH" in ln for ln in a.trace)
    assert any("ais.ckpt" in ln or "ais.executive" in ln for ln in a.trace), \
        "host and service log lines are in the full trace"


def test_stable_actions_reach_the_host() -> None:
    class Stable:  # an action of that name: what svcfix's events.Stable looks like
        pass

    sim = ServiceSim(0, SvcOptions(messages=0))
    got: list[Any] = []

    class Host:
        def on_stable(self, s: Any) -> None:
            got.append(s)

    node = sim.nodes[sim.ids[0]]
    node.srp = object()
    node.inc = 0
    sim.hosts[node.id] = Host()  # type: ignore[assignment]
    s = Stable()
    sim.perform(node, [s])
    assert got == [s]


@pytest.mark.parametrize("mix", ["partitions", "pauses"])
def test_sweep(mix: str) -> None:
    sweep(MIXES[mix], 100)


def test_command_line_sweep_and_replay() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        status = main(["--seeds", "2", "--jobs", "1", "--messages", "10"])
    lines = out.getvalue().splitlines()
    assert status == 0 and lines[-1] == "2 runs, 0 violations"
    assert lines[0].startswith("seed 0: nodes 3") and lines[0].endswith(": ok")
    out = io.StringIO()
    with redirect_stdout(out):
        status = main(["--seed", "1", "--messages", "10"])
    text = out.getvalue()
    assert status == 0 and text.endswith("1 runs, 0 violations\n")
    assert "start incarnation 0" in text and "<- open" in text and "sync round" in text


def test_report_names_the_seed_the_invariant_and_the_replay_command() -> None:
    r = run(7, replace(MIXES["crashes"], messages=5))
    r.violations.append(__import__("ais.totem.invariants", fromlist=["Violation"]).Violation(
        "lost", "n1: made up"))
    text = r.report()
    assert text.startswith("seed 7: ") and "lost: n1: made up" in text
    assert r.replay() in text
    assert r.replay().startswith("python -m ais.servicesim --seed 7 ")
    assert "--crashes 2" in r.replay() and "--ack-crashes 2" in r.replay()


def test_servicesim_does_no_io() -> None:
    tree = ast.parse((ROOT / "ais" / "servicesim.py").read_text())
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module.split(".")[0])
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "random" and node.attr != "Random"):
            pytest.fail(f"global random.{node.attr} at line {node.lineno}")
    assert not mods & {"gevent", "socket", "time", "select", "threading"}


# --- issue 7: the findings, asserted fixed -------------------------


def test_finding1_rolling_restart_keeps_the_checkpoints() -> None:
    """Node 1 (lowest) killed and back before the others noticed, then node 3 leaves
    and rejoins: node 1 must not stream its empty state over everybody's."""
    r = scenario(1)
    assert r.ok, r.report()


def test_finding2_replicas_converge_after_a_partition_with_different_last_writes() -> None:
    """Each side delivers a different last write of the old ring: after the heal every
    node must hold the same bytes."""
    r = scenario(2)
    assert r.ok, r.report()


def test_finding3_acknowledged_write_survives_its_writers_node() -> None:
    """A WR_ALL_REPLICAS write whose frame was lost on its way to the others returns;
    its node is killed at once: the survivors must have it (or it must not return)."""
    r = scenario(3)
    assert r.ok, r.report()


def test_checkpoints_created_with_one_name_on_both_sides_stay_for_their_openers() -> None:
    """Merge rule 3: the checkpoint that loses the name stays, unlinked, for its opener,
    who writes to it and reads it back after the heal; both stay on every node."""
    r = scenario(4)
    assert r.ok, r.report()


def test_a_name_conflict_loser_that_vanishes_is_caught(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """The checker no longer exempts every checkpoint in a name conflict: with a merge
    that drops the unlinked loser (what was once seen in the pauses mix), the durability
    check itself reports it, on every node, not only the opener's read."""
    from ais.services.ckpt import CkptService
    install = CkptService._install
    monkeypatch.setattr(CkptService, "_install", lambda self, merged: install(
        self, {i: c for i, c in merged.items() if c.linked}))
    r = scenario(4)
    gone = [v for v in r.violations if v.invariant == "lost" and "is gone" in v.detail]
    assert len(gone) == 3, r.report()


def test_a_replica_deleted_on_a_node_brings_none_of_its_history_to_a_merge() -> None:
    """Merge rule 3's loser, then rule 2 on it (scenario 5): the node that deleted
    the unlinked loser passes none of its history on when it next takes another
    side's replica, so the heal that loses node 1's acknowledged write is a merge
    of conflicting histories, as the merge rule allows.  (The checker once let that
    history through the tombstone and reported the documented loss as a lost write:
    seed 583 of the pauses soak.)"""
    r = scenario(5, full_trace=True)
    assert r.ok, r.report()
    lost = [ln for ln in r.trace if "replicas diverged" in ln and "the last 1 of its" in ln]
    assert len(lost) == 3, "\n".join(r.trace[-40:])  # the write is lost, on every node
    assert any("conflicting histories merged" in ln and "(8, 167772161, 1)" in ln
               for ln in r.trace), "\n".join(r.trace[-40:])


@pytest.mark.parametrize("mix", ["crashes", "five", "pair", "chaos", "slow_sync", "evs_chaos",
                                 "amf_admin"])
def test_sweep_with_crashes(mix: str) -> None:
    sweep(MIXES[mix], 100)


def found(mix: str, **kw: Any) -> SvcOptions:
    """``MIXES[mix]`` with the ring's timing of the day the histories below were found:
    they replay as they were with ``writer_hold``, ``stable_acks`` and
    ``install_pause`` off (they came later and move every schedule in which a node's
    own message becomes stable or a ring is installed; the sweeps run with them)."""
    o = MIXES[mix]
    cfg = TotemConfig(send_queue_limit=o.send_queue, send_queue_bytes=256 * 1024,
                      writer_hold=0.0, stable_acks=False, install_pause=False)
    return replace(o, config=cfg, **kw)


def test_write_answered_by_a_transitional_configuration_holds_on_its_members_only() -> None:
    """Seed 20 of the five-node mix (seed 172 until the ring's timing changed): n1's
    WR_ALL_REPLICAS overwrite of stable-0, sent in ring 10.0.0.1/8 of all five, is
    answered at that ring's transitional configuration, whose only member is n1, and
    n1 later crashes.  Safe delivery promised the write to n1 alone (the host's rule),
    so its loss with n1 is no violation; the checker used to count every member of
    the ring it was delivered in as a holder."""
    r = run(20, found("five", full_trace=True, amf=False))  # the schedule without AMF
    assert r.ok, r.report()
    t = r.trace
    i = next(i for i, ln in enumerate(t) if "n1 TRANS 10.0.0.1/8 members [n1]" in ln)
    assert "n1.0/c1 <- overwrite #3: OK" in t[i + 1]
    assert any("n1 CONF 10.0.0.1/8 members [n1,n2,n3,n4,n5]" in ln for ln in t[:i])
    assert any("n1 CRASH" in ln for ln in t[i:])


def test_open_that_found_its_checkpoint_is_held_by_who_applied_it() -> None:
    """Seed 1145 of the five-node mix without AMF: n3's client opens stable-0, which
    exists; the open is delivered in ring 10.0.0.2/16 inside a sync round that n2
    (fresh) never completes, and n3 answers it when its own round completes.  CKPT
    answers an open that finds its checkpoint at agreed delivery, so n2 never held the
    checkpoint, and its loss with n3 and n4 is no violation; the checker used to count
    every member of the ring as a holder of every open."""
    r = run(1145, found("five", full_trace=True, amf=False))
    assert r.ok, r.report()
    t = r.trace
    assert any("n3 n3.0/c0 <- open #1: OK" in ln for ln in t)
    assert not any("n2 sync round 10.0.0.2/16 done" in ln for ln in t)


def test_a_holding_that_began_after_a_ring_is_not_passed_on_by_its_round() -> None:
    """Seed 113 of the five-node mix: n5 leaves ring 10.0.0.2/20 for a ring of its
    own and creates stable-1 there; n2 completes /20's round only later.  What n5
    passed on in that round was its state when it installed /20, so n2 never held the
    new checkpoint; the checker used to make n2 a holder of everything n5 held by then."""
    r = run(113, found("five", full_trace=True))
    assert r.ok, r.report()
    t = r.trace
    alone = next(i for i, ln in enumerate(t) if "n5 CONF 10.0.0.5/28" in ln)
    assert "n5 n5.1/c1 <- open #1: OK" in "".join(t[alone:alone + 30])
    assert any("n2 sync round 10.0.0.2/20 done" in ln for ln in t[alone:])


def test_an_open_that_found_a_checkpoint_not_yet_safe_goes_with_its_node() -> None:
    """Scenario 6 (seen first as seed 320471 of the crashes mix): two clients of n1 open
    stable-0 at once and neither open reaches the others.  The first creates it and
    waits for safe delivery; the second finds it and returns at agreed delivery; n1 is
    killed then.  Only n1 ever held the checkpoint and its client died with it: no
    violation.  The checker used to count every open delivered in the ring that created
    the checkpoint as the creation, whose holders are every member."""
    r = scenario(6, full_trace=True)
    assert r.ok, r.report()
    t = r.trace
    answered = [ln for ln in t if "<- open #1" in ln]
    assert len(answered) == 1 and "n1.0/c1 <- open #1: OK" in answered[0], answered
    assert any("[10.0.0.1] checkpoint b'stable-0' created" in ln for ln in t)
    assert any("n1 CRASH incarnation 0" in ln for ln in t)
    assert not any("[10.0.0.2] checkpoint b'stable-0' created" in ln
                   or "[10.0.0.3] checkpoint b'stable-0' created" in ln for ln in t)


def test_checkpoints_created_on_the_two_sides_of_a_split_keep_apart() -> None:
    """Scenario 7 (seen first as seed 321073 of four nodes under every fault): n1 and n3
    each create a checkpoint as the ring splits into [n1] and [n2,n3], and each side
    delivers only its own creation.  Ids counted per ring named both (4, rep, 1), so
    the heal merged the two and n1's client lost its section (error 12 on its read).
    Ids now name the OPEN itself: both checkpoints stay, with every write."""
    r = scenario(7, full_trace=True)
    assert r.ok, r.report()
    t = r.trace
    heal = next(i for i, ln in enumerate(t) if "-- HEAL" in ln)
    before = t[:heal]
    assert any("[10.0.0.1] checkpoint b'stable-0' created" in ln for ln in before)
    assert any("[10.0.0.3] checkpoint b'stable-2' created" in ln for ln in before)
    assert not any("[10.0.0.1] checkpoint b'stable-2' created" in ln
                   or "[10.0.0.3] checkpoint b'stable-0' created" in ln for ln in before)
    for who in ("n1 n1.0/c0", "n3 n3.0/c0"):
        assert any(f"{who} <- read #5: OK" in ln for ln in t[heal:]), who
    assert r.acked_writes == 4


def test_resent_creation_applied_in_another_partition_is_a_replay() -> None:
    """Scenario 8, on the real Totem core: n2's section creation is held by a sync round
    that n1 and n3 complete (creating the section) and n2 cannot (their barriers are
    kept from it); n2 then meets them again without completing a round of its own and
    sends the creation again.  n1 and n3 announce that their state holds it, so every
    member takes it for a replay (three replays, one per member of the merged ring): not
    applied again, and n2's client is answered TIMEOUT ("maybe done")."""
    r = scenario(8, full_trace=True)
    assert r.ok, r.report()
    assert r.replays == 3
    assert any("n2 n2.0/c0 <- section_create #4: 5" in ln for ln in r.trace)


def test_replays_in_a_seeded_run() -> None:
    """Seed 2320121 of the pauses line, the first run of the sweeps to meet replays on
    its own: an AMF confirmation n1 re-sent, which n3's state held, is a replay at n3
    twice (rounds only n3 completed), handed to the handler, which applies it by the
    component's side (n1's); everything checks out."""
    r = run(2320121, MIXES["pauses"])
    assert r.ok, r.report()
    assert r.replays == 2


def test_resent_creation_applied_twice_without_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scenario 8 with no re-send ever recognised: the creation is applied a second
    time and answered "exists" (14), though n2's client's creation is what made it."""
    from ais.executive import Applied
    monkeypatch.setattr(Applied, "covers", lambda self, seq, index: False)
    r = scenario(8)
    assert r.replays == 0
    assert [v.detail for v in r.violations] == ["n2.0/c0: section creation answered 14"]


def test_checker_catches_a_creating_open_answered_before_it_is_safe(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Scenario 6 with the executive answering every open at agreed delivery: the
    creating open returns before the others have its frame and its node dies, so the
    checkpoint it promised is gone from the survivors -- reported on both."""
    from ais.executive import ServiceHost
    claim = ServiceHost._claim_and_answer

    def unsafe_opens(self: ServiceHost, tag: Any, code: int, body: bytes, safe: bool) -> bool:
        if self._pending.get((tag.conn_id, tag.seq)) == cw.REQ_OPEN:
            safe = False
        return claim(self, tag, code, body, safe)
    monkeypatch.setattr(ServiceHost, "_claim_and_answer", unsafe_opens)
    r = scenario(6)
    gone = [v for v in r.violations if v.invariant == "lost"
            and "checkpoint stable-0" in v.detail and "n1.0/c0 was told" in v.detail]
    assert len(gone) == 2, r.report()


def test_a_message_delivered_in_a_ring_is_not_passed_on_by_that_rings_round() -> None:
    """Seed 310807 of four nodes under every fault at once: n1, cut off as it sends a
    WR_ALL_REPLICAS section creation in ring 10.0.0.1/8, answers it at that ring's
    transitional configuration (n1 alone) and later crashes; n4 completes /8's sync
    round afterwards.  That round passed on the state its members had when they
    installed /8, without the creation, so n1 alone held it and its loss is no
    violation; the checker used to date a holding that began in a ring at that ring's
    installation, which made n4 a holder."""
    o = SvcOptions(nodes=4, loss=0.2, dup=0.05, reorder=0.3, partitions=2, crashes=3,
                   restarts=3, pauses=2, asym=2, ack_crashes=2, split_writes=2, amf_admin=1,
                   full_trace=True)
    r = run(310807, o)
    assert r.ok, r.report()
    t = r.trace
    i = next(i for i, ln in enumerate(t) if "n1 n1.0/c1 <- section_create #2: OK" in ln)
    assert "n1 TRANS 10.0.0.1/8 members [n1]" in "".join(t[i - 3:i])
    assert any("n4 sync round 10.0.0.1/8 done" in ln for ln in t[i:])
    assert any("n1 CRASH incarnation 0" in ln for ln in t[i:])


def test_a_checkpoint_made_under_a_name_that_diverged_before_may_lose_it() -> None:
    """Seed 1630 of the five-node mix: the name stable-1 diverged early; later a
    restarted n1 creates another stable-1 with n5 alone, its opener crashes, and the
    merge with the others keeps their stable-1.  The new one lost the name with no
    opener left, so it may be gone (merge rule 3); the checker used to mark only the
    checkpoints of a name that existed when the name first diverged."""
    r = run(1630, found("five", full_trace=True))
    assert r.ok, r.report()
    t = r.trace
    opened = next(i for i, ln in enumerate(t) if "n1 n1.1/c0 <- open #1: OK" in ln)
    assert any("[10.0.0.1] checkpoint b'stable-1' created" in ln for ln in t[opened - 40:opened])
    assert any("n1 CRASH incarnation 1" in ln for ln in t[opened:])


def test_change_refused_by_a_replica_is_not_held_there() -> None:
    """Seed 1200004 of the chaos mix: n3 creates section 1.1 and overwrites it (both
    answered at agreed delivery, ACTIVE mode) in a ring of n1, n3 and n4, and is cut off
    as the creation leaves; n1, paused, comes back alone and in its transitional
    configuration Totem delivers what it has: the overwrite, past the creation nobody
    with it got.  n1's replica refuses the overwrite (no such section), then n3 and n4
    die, and the section is rightly gone.  The checker counted n1 a holder of the
    overwrite because it applied the message; a change its replica refused is not held
    there."""
    r = run(1200004, MIXES["chaos"])
    assert r.ok, r.report()


def test_write_refused_by_a_replica_is_not_held_there() -> None:
    """Seed 1600396, a ring of two at 25% loss with every fault and EVS: n2, alone in its
    transitional configuration, delivers n1's write past the section's creation it never
    got; the write (answered at agreed delivery, ACTIVE mode) is refused there -- with an
    I/O status in its reply, not an error -- and n1 crashes.  Nothing held it."""
    o = SvcOptions(nodes=2, loss=0.25, dup=0.1, reorder=0.3, crashes=2, restarts=3, pauses=2,
                   asym=2, ack_crashes=2, split_writes=2, evs=3)
    r = run(1600396, o)
    assert r.ok, r.report()


def test_change_refused_by_a_replica_counted_held_is_reported(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same seed with refused changes counted as held: the section's loss is
    reported (the history the checker once took for a loss)."""
    monkeypatch.setattr(ServiceSim, "_unholds", lambda *a: None)
    r = run(1200004, MIXES["chaos"])
    assert any(v.invariant == "lost" and "section 1.1" in v.detail for v in r.violations), \
        r.line()


def test_sweep_split_on_write() -> None:
    sweep(MIXES["splits"], 100)


@pytest.mark.slow
@pytest.mark.parametrize("mix", sorted(MIXES))
def test_soak(mix: str) -> None:
    sweep(MIXES[mix], 1000)


# --- EVS in the simulator ---------------------------------------------------------------------


def _proc(name: str, tag: int, taken: list[int], events: list[tuple[Any, ...]],
          key: tuple[int, int, int] = (1, 1, 100)) -> Any:
    """A stand-in for a simulated EVS process: what the checkers read of one."""
    from types import SimpleNamespace
    return SimpleNamespace(name=name, tag=tag, sent=len(taken), taken=taken, events=events,
                           key=key, groups={EVS_G})


def test_evs_checker_catches_broken_histories() -> None:
    """Two processes each send two messages; every way of breaking the delivery
    guarantees is reported, and the correct history is not."""
    def msgs(*ks: tuple[int, int]) -> list[tuple[Any, ...]]:
        return [("msg", t, n) for t, n in ks]
    good = [(1, 1), (2, 1), (1, 2), (2, 2)]
    a, b = _proc("a", 1, [1, 2], msgs(*good)), _proc("b", 2, [1, 2], msgs(*good))
    assert check_evs_history([a, b], [a, b]) == []
    cases = {
        "different orders": msgs((2, 1), (1, 1), (1, 2), (2, 2)),
        "twice": msgs(*good, (2, 2)),
        "never sent": msgs(*good, (2, 3)),
        "after #2 of that sender": msgs((1, 1), (2, 2), (2, 1), (1, 2)),
        "of its own messages": msgs((1, 1), (2, 1), (1, 2)),
    }
    for text, events in cases.items():
        bad = _proc("b", 2, [1, 2], events)
        vs = check_evs_history([a, bad], [a, bad])
        assert any(text in v.detail for v in vs), (text, vs)
    # a dead process need not have got its own messages
    dead = _proc("b", 2, [1, 2], msgs((1, 1), (2, 1), (1, 2)))
    assert check_evs_history([a, dead], [a]) == []


def test_evs_synchrony_checker() -> None:
    """Two processes that go from one view to the same next view must have delivered
    the same messages in between; different next views, or a pair of views one of them
    installed twice (not told apart), are not compared."""
    from ais.servicesim import check_evs_synchrony
    v1, v2, v3 = frozenset({1}), frozenset({1, 2}), frozenset({2})

    def hist(*es: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return [("conf", EVS_G, e) if isinstance(e, frozenset) else ("msg", *e) for e in es]
    a = _proc("a", 1, [], hist(v1, (1, 1), (2, 1), v2, (1, 2)))
    b = _proc("b", 2, [], hist(v1, (1, 1), (2, 1), v2, (2, 2)))
    assert check_evs_synchrony([a, b]) == []
    c = _proc("c", 3, [], hist(v1, (1, 1), v2))
    vs = check_evs_synchrony([a, c])
    assert len(vs) == 1 and "(2, 1)" in vs[0].detail and "only at a" in vs[0].detail
    d = _proc("d", 4, [], hist(v1, (1, 1), v3))  # another next view: nothing to compare
    assert check_evs_synchrony([a, d]) == []
    e = _proc("e", 5, [], hist(v1, v2, v1, (1, 1), v2))  # v1 -> v2 twice: left out
    assert check_evs_synchrony([a, e]) == []


def test_evs_senders_checker() -> None:
    """A message from a process that no view of the receiver had shown (nor the
    receiver itself) is reported; after a view showing the sender, or from itself,
    it is not."""
    from ais.servicesim import check_evs_senders
    ka, kb = (1, 5, 100), (2, 5, 100)
    a = _proc("a", 1, [1], [("msg", 1, 1), ("conf", EVS_G, frozenset({ka, kb})),
                            ("msg", 2, 1)], key=ka)
    b = _proc("b", 2, [1], [("msg", 2, 1), ("msg", 1, 1)], key=kb)
    vs = check_evs_senders([a, b])
    assert len(vs) == 1 and vs[0].detail.startswith("b got message (1, 1)"), vs


def test_evs_state_checker_compares_tables_and_last_views() -> None:
    p1, p2 = (1, 5, 100), (2, 5, 100)
    a = _proc("a", 1, [], [("conf", EVS_G, frozenset({p1, p2}))], key=p1)
    b = _proc("b", 2, [], [("conf", EVS_G, frozenset({p1}))], key=p2)
    table = {EVS_G: frozenset({p1, p2})}
    vs = check_evs_state({"n1": table, "n2": table}, [a, b])
    assert [v.detail.split(":")[0] for v in vs] == ["b"]
    vs = check_evs_state({"n1": table, "n2": {EVS_G: frozenset({p1}), EVS_H: frozenset({p2})}},
                         [a])
    assert any(v.detail.startswith("n2: groups") for v in vs)


@pytest.mark.parametrize("mix", ["loss", "pauses"])
def test_evs_processes_under_loss_and_pauses(mix: str) -> None:
    """Two EVS processes per node multicast to G (half of them to H too, leaving it
    half-way) while the ring loses, duplicates and reorders packets, or nodes pause:
    one agreed order, each sender's order, every own message back, and the group tables
    and last views equal to the live processes everywhere."""
    o = (SvcOptions(evs=2, loss=0.15, dup=0.05, reorder=0.3) if mix == "loss"
         else SvcOptions(evs=2, pauses=2, loss=0.05))
    delivered = 0
    for seed in seeds(25):
        sim = ServiceSim(seed, o)
        r = sim.run()
        assert r.ok, r.report()
        delivered += sum(1 for m in sim.all_evs for e in m.events if e[0] == "msg")
    assert delivered > 25 * 6 * 30  # every process got at least its own messages


def passing_runs(o: SvcOptions, n: int, count: Any) -> int:
    """Run ``n`` seeds of ``o``, each without a violation; the sum of ``count(sim)``."""
    total = 0
    for seed in seeds(n):
        sim = ServiceSim(seed, o)
        r = sim.run()
        assert r.ok, r.report()
        total += count(sim)
    return total


#: CKPT clients crashing on their own, a request in flight or not, under loss and crashes
CLIENT_CRASHES = SvcOptions(loss=0.1, crashes=1, restarts=1, client_crashes=3)


def test_ckpt_clients_that_crash_close_their_handles() -> None:
    """A client that dies while its node lives closes every handle it held, in agreed
    order: each node's replicated count of opens is what its live clients hold, and
    every other check (convergence, acknowledged writes, answers) holds."""
    crashed = passing_runs(CLIENT_CRASHES, 15, lambda sim: sum(c.crashed for c in sim.all_clients))
    assert crashed >= 15 * 5


def test_refs_check_catches_a_dead_clients_opens_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from ais.services.ckpt import CkptService
    monkeypatch.setattr(CkptService, "on_lib_exit", lambda self, conn: None)
    found = {v.invariant for seed in seeds(3) for v in run(seed, CLIENT_CRASHES).violations}
    assert found == {"ckpt-refs"}, found


#: EVS processes crashing on their own (others start in their place) under loss
EVS_CRASHES = SvcOptions(evs=2, evs_faults=3, loss=0.1, crashes=1, restarts=1)


def test_evs_processes_that_crash_leave_every_view() -> None:
    """A process that dies while its node lives leaves its groups on every node (the
    tables and the survivors' last views list only live processes), and the processes
    started in its place join and deliver as any other."""
    crashed = passing_runs(EVS_CRASHES, 15, lambda sim: sum(m.closed for m in sim.all_evs))
    assert crashed >= 15 * 4


def test_evs_state_check_catches_a_dead_process_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from ais.services.evs import EvsService
    monkeypatch.setattr(EvsService, "on_lib_exit", lambda self, conn: None)
    found = [v for seed in seeds(3) for v in run(seed, EVS_CRASHES).violations]
    assert any("live members" in v.detail for v in found), found[:3]


#: partitions and crashes with EVS processes: sync rounds abandoned while nodes send
EVS_SPLITS = SvcOptions(loss=0.1, dup=0.05, reorder=0.2, partitions=2, crashes=2, restarts=2,
                        evs=2)


def _evs_split_sweep(n: int) -> tuple[list[Any], int]:
    bad, requeued = [], 0
    for seed in seeds(n):
        sim = ServiceSim(seed, EVS_SPLITS)
        r = sim.run()
        requeued += sim.requeued
        if not r.ok:
            bad.append(r)
    return bad, requeued


def test_evs_sender_order_survives_abandoned_sync_rounds() -> None:
    """Messages a node multicast while its ring re-formed are delivered during the new
    ring's sync round and held; when the next configuration abandons that round, EVS's
    are delivered where Totem delivered them (``apply_held_on_abort``) and the other
    services' are sent again by their senders, in front of what they queued since
    (``requeue_front``): each sender's order, one agreed order, nothing twice."""
    bad, requeued = _evs_split_sweep(60)
    assert not bad, bad[0].report()
    assert requeued > 0  # the sweep does abandon rounds with held messages


def test_evs_order_breaks_with_held_messages_resent_at_the_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep above with EVS re-sending its held messages as replicated services do,
    and behind what the node queued since (as before ``requeue_front``): the checker
    reports a sender's order broken (seed 40: #7-#10 before #1-#6)."""
    from ais.servicesim import _Port
    from ais.services.evs import EvsService
    monkeypatch.setattr(EvsService, "apply_held_on_abort", False)
    monkeypatch.delattr(_Port, "requeue_front")  # the host then re-sends as it used to
    bad, _ = _evs_split_sweep(60)
    assert any("of that sender" in v.detail or "of its own messages" in v.detail
               for r in bad for v in r.violations), [r.line() for r in bad]


EVS_CHAOS = replace(MIXES["evs_chaos"], evs_faults=0)  # (the line as the seeds were found)


#: five nodes with partitions, flaps, crashes, restarts, pauses, one-way loss and EVS
EVS_FIVE = SvcOptions(nodes=5, loss=0.15, dup=0.05, reorder=0.3, partitions=3, flaps=1,
                      crashes=3, restarts=3, pauses=2, asym=2, evs=2)


def test_evs_processes_that_split_and_heal_unseen_see_each_other_leave() -> None:
    """Seed 1017: n1 and n2 leave ring 16 through different transitional configurations
    (n1 then spends ring 20 with n3, whose round never completes) and meet again in
    ring 24.  Their processes now see each other's leave at the transitional
    configurations and come back at ring 24's round; before, neither saw the other go,
    and they went from the same view to the same next view having delivered different
    messages (each got a message the other did not)."""
    r = run(1017, EVS_FIVE)
    assert r.ok, r.report()


def test_evs_synchrony_broken_without_transitional_views(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ais.services.base import Service
    from ais.services.evs import EvsService
    monkeypatch.setattr(EvsService, "on_confchg", Service.on_confchg)
    r = run(1017, EVS_FIVE)
    assert any("both went from one view" in v.detail for v in r.violations), r.line()


def test_evs_message_of_a_split_sync_round_delivered_once() -> None:
    """Seed 1053: n3 completes a ring's sync round (it has both barriers) and n4 does not
    (n3's barrier never reaches it; they leave the ring through different transitional
    configurations).  n4 used to re-send the held messages n3 had delivered, and after
    the merge n3's processes got them twice; they are now delivered where Totem
    delivered them and never re-sent."""
    r = run(1053, EVS_CHAOS)
    assert r.ok, r.report()


def test_evs_message_of_a_split_sync_round_lost_when_resent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same seed with EVS re-sending its held messages.  Before the host named
    re-sends, the checker saw n3's processes get them twice; now the re-sends are
    replays (n3 completed the round that held them), not applied again anywhere, so
    n4's processes never get their own messages: EVS cannot re-send at all."""
    from ais.services.evs import EvsService
    monkeypatch.setattr(EvsService, "apply_held_on_abort", False)
    r = run(1053, EVS_CHAOS)
    assert any("of its own messages" in v.detail for v in r.violations), r.line()


#: six nodes with partitions, a flap, crashes, restarts, pauses, one-way loss and EVS
EVS_SIX = SvcOptions(nodes=6, loss=0.1, partitions=3, flaps=1, crashes=3, restarts=3, pauses=2,
                     asym=1, evs=1)


@pytest.mark.parametrize("seed, options", [(1600591, EVS_CHAOS), (1700114, EVS_SIX)])
def test_evs_no_view_of_a_half_merged_table(seed: int, options: SvcOptions) -> None:
    """Seed 1600591: n1 (restarted) and n3 merge in ring 8, whose sync round the next
    configuration abandons; the messages it held (n1's processes joining, n3's
    multicasts) were applied on tables holding only each node's own side, and each
    node's processes were shown those views: n1's {n1's}, n3's {n1's and n3's}.  They
    then reached the merged view at different points of n3's messages.  Now changes
    applied while a round is pending are shown only when one completes.  Seed 1700114
    (six nodes) went wrong the same way."""
    r = run(seed, options)
    assert r.ok, r.report()


def test_evs_synchrony_broken_when_views_follow_a_pending_round(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ais.services.evs import EvsService
    shown = EvsService.on_confchg

    def loud(self: EvsService, conf: Any) -> None:
        shown(self, conf)
        self._shown = None  # every change shown at once, as before

    monkeypatch.setattr(EvsService, "on_confchg", loud)
    r = run(1600591, EVS_CHAOS)
    assert any("both went from one view" in v.detail for v in r.violations), r.line()


#: five nodes, every fault, AMF operator actions and EVS
EVS_CHAOS5 = SvcOptions(nodes=5, loss=0.15, dup=0.05, reorder=0.3, partitions=3, flaps=1,
                        crashes=3, restarts=3, pauses=2, asym=2, ack_crashes=2, split_writes=2,
                        amf_admin=2, messages=80, max_write=30000, evs=2)


def test_evs_quiet_join_answered_once_shown() -> None:
    """Seed 1601636: n2's processes join while a round is pending (their JOINs are
    applied quietly when the next configuration abandons it); answered at once, they
    multicast, and when that ring's round is abandoned too their own messages arrive
    while no view shows them yet, so they never got them.  A quiet JOIN is now
    answered when a completed round shows it."""
    r = run(1601636, EVS_CHAOS5)
    assert r.ok, r.report()


def test_evs_own_messages_lost_when_quiet_join_answered_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ais.services.evs import MSG_JOIN, EvsService
    spec = EvsService.exec_handlers[MSG_JOIN]

    def join(self: EvsService, msg: Any) -> None:  # answered when applied, as before
        spec.fn(self, msg)
        if msg.tag in self._join_replies:
            self._join_replies.remove(msg.tag)
            self.host.reply(msg.tag)

    monkeypatch.setitem(EvsService.exec_handlers, MSG_JOIN, replace(spec, fn=join))
    r = run(1601636, EVS_CHAOS5)
    assert any("of its own messages" in v.detail for v in r.violations), r.line()


def test_evs_no_message_from_the_far_side_of_an_unfinished_merge() -> None:
    """Seed 1600032 of six nodes: while a merge's round was pending, messages an
    abandoned round held were delivered to every local process in the group, those
    from the other side of the merge too, whose processes no view here had shown
    (31 of 180 runs of three EVS lines, seeds 1600000-1600059, on the tree before).
    Now a node delivers then only what its peers of the last completed round sent."""
    r = run(1600032, EVS_SIX)
    assert r.ok, r.report()


def test_evs_no_message_from_a_process_whose_join_was_in_a_gap() -> None:
    """Seed 1900168 of five nodes: n5 leaves a ring alone and, past a gap Totem skips
    in its transitional configuration, delivers its own processes' JOINs and then a
    message of n4's process, whose JOIN was in the gap: n5's processes never saw it in
    a view.  A departed process's last messages now go only to those a view showed
    it to."""
    r = run(1900168, EVS_CHAOS5)
    assert r.ok, r.report()


def test_evs_far_side_messages_delivered_without_the_peer_rule(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ais.services.evs import EvsService

    class Everyone(frozenset):  # type: ignore[type-arg]
        def __contains__(self, node: object) -> bool:
            return True

        def __and__(self, other: object) -> Everyone:
            return self

    done = EvsService.sync_done

    def sync_done(self: EvsService) -> None:
        done(self)
        self._peers = Everyone()

    monkeypatch.setattr(EvsService, "sync_done", sync_done)
    init = EvsService.__init__

    def fresh(self: EvsService) -> None:
        init(self)
        self._peers = Everyone()

    monkeypatch.setattr(EvsService, "__init__", fresh)
    r = run(1600032, EVS_SIX)
    assert any("no view of it had shown" in v.detail for v in r.violations), r.line()

