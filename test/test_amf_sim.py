"""AMF under the seeded service simulator: every live node holds the same AMF state
after every fault schedule (``ais.servicesim.check_amf``), and once AMF is quiet its
processes act as that state says, no CSI has two actives where one is allowed, and every
unit that could serve does (``check_amf_service``)."""
from __future__ import annotations

import pytest

from ais import servicesim
from ais.services import amf

pytestmark = pytest.mark.timeout(120)

FAULTS = servicesim.SvcOptions(crashes=2, partitions=2, pauses=2, restarts=2, duration=20.0)


def test_amf_states_identical_after_fault_schedules():
    for seed in range(30):
        r = servicesim.run(seed, FAULTS)
        assert not r.violations, f"seed {seed}: {r.violations[:2]}\n{r.replay()}"


def test_the_identity_check_catches_a_merge_that_drops_the_streams(monkeypatch):
    monkeypatch.setattr(amf.AmfService, "_merge", lambda self, info, streams: [])
    found = [v for seed in range(12) for v in servicesim.run(seed, FAULTS).violations
             if "AMF states" in v.detail]
    assert found


ADMIN = servicesim.SvcOptions(crashes=1, partitions=2, pauses=1, restarts=1, duration=20.0,
                              amf_admin=3)


def test_amf_models_and_admin_operations_stay_identical_under_faults():
    """Spares, an nway group, locks, shutdowns, unlocks, error reports with every kind of
    recommended recovery and their cancels, terminated components that come back,
    under the fault schedules."""
    agreed = 0
    for seed in range(12):
        sim = servicesim.ServiceSim(seed, ADMIN)
        r = sim.run()
        assert not r.violations, f"seed {seed}: {r.violations[:2]}\n{r.replay()}"
        agreed += sim.amf_admin_ok
    assert agreed >= 12 * 3, "too few operator requests were agreed"


def test_the_identity_check_covers_the_states_of_every_csi_of_a_component(monkeypatch):
    """The wide model's N+1 group: ks carries csiN1 and csiN2.  Nodes that apply a
    confirm to the wrong CSI of a component hold other states: caught."""
    split = 0
    for seed in range(4):
        sim = servicesim.ServiceSim(seed, ADMIN)
        assert not sim.run().violations
        ks = next(iter(sim.hosts.values())).services[amf.aw.AMF_SERVICE_ID].comps["ks"]
        split += all(h in (amf.ACTIVE, amf.STANDBY) for h in ks.has.values())
    assert split, "ks never ended up holding both of its CSIs"
    set_current = amf.AmfService._set_current

    def wrong_csi(self, c, readiness=None, ha=None, forced=False, csi=None):
        if csi is not None and c.host != self.host.node_id:
            csi = c.csis[0]  # a non-host applies a confirm to the component's first CSI
        set_current(self, c, readiness, ha, forced, csi)
    monkeypatch.setattr(amf.AmfService, "_set_current", wrong_csi)
    # (where no later merge re-streams ks's record from its host, the other nodes'
    # wrong CSI state also keeps AMF from ever being quiet: seed 12)
    assert any("AMF states" in v.detail for seed in range(16)
               for v in servicesim.ServiceSim(seed, ADMIN).run().violations)


# --- after the faults: processes, split brain, availability (check_amf_service) ----------

#: the service sweeps' chaos line (test_servicesim.MIXES) and its AMF operator line
CHAOS = servicesim.SvcOptions(nodes=4, loss=0.2, dup=0.05, reorder=0.3, partitions=2,
                              crashes=3, restarts=3, pauses=2, asym=2, ack_crashes=2,
                              split_writes=2, amf_admin=1)
OPERATOR = servicesim.SvcOptions(loss=0.1, crashes=2, restarts=2, amf_admin=3, ack_crashes=1)


def test_amf_checker_catches_two_actives_kept_after_a_merge(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Seed 0 of chaos with the merge demoting nobody: both sides' active units stay
    active, and two processes act active for one CSI."""
    merge = amf.AmfService._merge
    monkeypatch.setattr(amf.AmfService, "_merge",
                        lambda self, info, streams: (merge(self, info, streams), [])[1])
    r = servicesim.run(0, CHAOS)
    assert {v.invariant for v in r.violations} == {"amf-split-brain"}, r.report()


def test_amf_checker_catches_a_group_left_without_an_active(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Seed 9 of OPERATOR with standbys never promoted: a group whose active unit went
    out of service keeps none active although a unit could serve."""
    monkeypatch.setattr(amf.AmfService, "_balance",
                        lambda self, g: self._balance_csis(g) if g.per_csi else False)
    r = servicesim.run(9, OPERATOR)
    assert {v.invariant for v in r.violations} == {"amf-availability"}, r.report()


def test_amf_checker_catches_a_process_acting_in_a_state_taken_away(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Seed 7 of OPERATOR with the simulated processes ignoring CSI removals and
    terminations: a process still acts in a state the cluster took from it."""
    monkeypatch.setattr(servicesim._AmfComp, "_forget", lambda self, comp, csi="": None)
    r = servicesim.run(7, OPERATOR)
    assert "amf-belief" in {v.invariant for v in r.violations}, r.report()


@pytest.mark.parametrize("seed", [0, 7, 9])
def test_amf_settles_available_after_operator_actions_and_faults(seed: int) -> None:
    """The same runs unpatched: AMF ends quiet, every process acting as the state says,
    one active per CSI, every unit that can serve in service."""
    r = servicesim.run(seed, OPERATOR if seed else CHAOS)
    assert r.ok, r.report()


#: component processes stopped (SIGSTOP) for 1.5-4 s and resumed, among operator actions
HANGS = servicesim.SvcOptions(loss=0.05, crashes=1, amf_hangs=2, amf_admin=1)


def test_stopped_components_stop_acting_when_they_run_again() -> None:
    """A process stopped past its healthcheck timeout is failed and its CSIs go to others;
    when it runs again it finds the terminate callback waiting and stops acting (exits,
    its supervisor starts it again): the checks hold after every schedule."""
    for seed in range(20):
        r = servicesim.run(seed, HANGS)
        assert r.ok, r.report()


def test_stopped_components_keep_acting_without_the_terminate_callback(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """As before the fix: nothing tells a resumed process that the cluster failed it, and
    it goes on acting in states others hold by then (the same schedules)."""
    monkeypatch.setattr(amf.AmfService, "_stop_unresponsive", lambda self, c, inc: None)
    found = {v.invariant for seed in range(6) for v in servicesim.run(seed, HANGS).violations}
    assert {"amf-belief", "amf-split-brain"} <= found, found


#: seed 2370178's line: five nodes, every fault, operator actions, EVS processes
FIVE = servicesim.SvcOptions(nodes=5, loss=0.15, dup=0.05, reorder=0.3, partitions=3, flaps=1,
                             crashes=3, pauses=2, messages=80, restarts=3, asym=2,
                             ack_crashes=2, split_writes=2, max_write=30000, amf_admin=2, evs=2)


@pytest.mark.parametrize("seed, options", [
    (2360288, servicesim.SvcOptions(loss=0.1, crashes=2, restarts=2, amf_admin=3, amf_hangs=2,
                                    ack_crashes=1)),
    (2370178, FIVE)])
def test_a_process_told_to_terminate_is_compared_once_gone(seed: int, options) -> None:
    """A process handles its terminate callback as AMF falls quiet and exits 2 ms later:
    from the callback on it acts for nothing (a proxy, not for its proxied one either),
    and AMF is not quiet until it is gone.  Seed 2360288: the stopped proxy1 runs again
    (the checker once read it as relayed1's active in those 2 ms); seed 2370178: proxy2's
    unit is locked while relayed2's stays active (the checker once read the state's
    active relayed2 as unserved)."""
    r = servicesim.run(seed, options)
    assert r.ok, r.report()


def test_a_proxy_asked_twice_to_restart_its_component_registers_it_once() -> None:
    """Seed 2391159 (five nodes, stopped processes, operator actions): relayed1 is found
    not responding twice while its proxy is stopped (an operator cancelled the first
    error in between), so the proxy finds two external restart callbacks when it runs
    again; the second registration answers EXIST, which the proxy takes as done (the
    simulated proxy once retried it forever, and AMF was never quiet)."""
    o = servicesim.SvcOptions(nodes=5, loss=0.1, partitions=3, flaps=1, crashes=3, pauses=2,
                              restarts=3, amf_admin=2, amf_hangs=2, evs=1)
    r = servicesim.run(2391159, o)
    assert r.ok, r.report()


#: component processes that crash on their own (most come back, some never do), unregister
#: and register again, or refuse a CSI assignment, among operator actions and node crashes
FAILING = servicesim.SvcOptions(loss=0.1, crashes=1, restarts=1, amf_admin=1, amf_faults=3)


def test_components_that_crash_or_refuse_are_recovered() -> None:
    """A crashed (or unregistered) process's units fail over and come back when it
    registers again; one that refuses an assignment is failed (software error), and one
    that refuses to give its work up is cleaned up: the checks hold after every
    schedule."""
    crashed = refused = left = 0
    for seed in range(20):
        sim = servicesim.ServiceSim(seed, FAILING)
        r = sim.run()
        assert r.ok, r.report()
        crashed += sum(1 for p in sim.amf_procs if p.crashed)
        refused += sum(1 for p in sim.amf_procs if p.refused)
        left += sum(1 for p in sim.amf_procs if p.left)
    assert crashed >= 20 and refused >= 8 and left >= 8, (crashed, refused, left)


def test_a_refused_quiesce_stalls_the_failover_without_the_clean_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """As before the fix (a refused quiesce taken as one more software error): the unit
    waits for its component's quiesce for ever, and AMF is never quiet (seed 6)."""
    answered = amf.AmfService._answered

    def old(self, n, inv, error):
        if error != amf.SA_OK and inv.kind == amf.KIND_HA and inv.state == amf.QUIESCED:
            inv = amf._Invocation(inv.comp, inv.incarnation, inv.kind, amf.ACTIVE, csi=inv.csi)
        return answered(self, n, inv, error)
    monkeypatch.setattr(amf.AmfService, "_answered", old)
    r = servicesim.run(6, FAILING)
    assert [v.invariant for v in r.violations] == ["liveness"], r.report()
    assert "quiescing" in r.violations[0].detail


#: AMF starts the raid group's components itself: after a crash, on the node that takes
#: a unit over after its home left, on each side of a partition
SPAWN = servicesim.SvcOptions(loss=0.1, crashes=1, restarts=1, partitions=2, amf_spawn=True,
                              amf_faults=2)


def test_components_amf_starts_itself_one_process_each_after_faults() -> None:
    """Every check holds, and no component has a live process on two nodes, though each
    side of a partition starts the components whose home is on the other."""
    spawned = 0
    for seed in range(15):
        sim = servicesim.ServiceSim(seed, SPAWN)
        r = sim.run()
        assert r.ok, r.report()
        spawned += sum(1 for p in sim.amf_procs if p.started is not None)
    assert spawned >= 15 * 8


def test_processes_of_the_losing_side_act_on_without_being_stopped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """As before the fixes: nothing stops a process whose registration the merge did
    not keep (it acts on in its side's states), nor one started for a component
    registered elsewhere (it waits to register for ever)."""
    monkeypatch.setattr(amf.AmfService, "_lost_registration", lambda self, c, conn: None)
    stop = amf.AmfService._stop_process

    def stop_unless_registered_elsewhere(self, p, why, grace=1.0):
        if "registered on" not in why:
            stop(self, p, why, grace)
    monkeypatch.setattr(amf.AmfService, "_stop_process", stop_unless_registered_elsewhere)
    found = {v.invariant for seed in range(3) for v in servicesim.run(seed, SPAWN).violations}
    assert {"amf-registration", "amf-duplicate"} <= found, found


def test_pg_tracker_check_catches_callbacks_not_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every node runs a client tracking every protection group; once AMF is quiet its
    last callback for each must list the members' states.  Trackers told nothing after
    the first (current) callback are caught."""
    sim = servicesim.ServiceSim(0, FAILING)
    assert sim.run().ok
    assert all(len(t.last) == 9 for t in sim.pg_trackers.values())
    monkeypatch.setattr(amf.AmfService, "_notify_trackers", lambda self, c, csi: None)
    found = {v.invariant for v in servicesim.run(0, FAILING).violations}
    assert found == {"amf-pg-track"}, found
