"""AMF error recovery as the error report recommends (component failover, component
restart with escalation, node switchover/failover/failfast, internally recovered), on
fake rings (FakeBus, manual clock, scripted components)."""
from __future__ import annotations

import signal

import pytest
from amf_harness import AmfCluster, FakeSpawner
from test_amf import quickstart_start

from ais.services.amf import RESTART_LIMIT, SPAWN_LIMIT
from saf import _amf_wire as aw
from saf.errors import SA_OK

A, B = "127.0.0.1", "127.0.0.2"
pytestmark = pytest.mark.timeout(30)


def report(cl: AmfCluster, addr: str, comp: str, recovery: int) -> int:
    err, _ = cl.call(addr, aw.AMF_REQ_ERROR_REPORT, aw.encode_error_report(aw.ErrorReport(
        b"operator", comp.encode(), 0, aw.ErrorDescriptor(
            probable_cause=aw.SA_AMF_SOFTWARE_ERROR, recommended_recovery=recovery))))
    return err


def running(where_b: str = A, where_a: str = B):
    cl = AmfCluster([A, B])
    cl.form([A, B])
    procs = quickstart_start(cl, where_b, where_a)
    for p in procs:
        p.take()
    return cl, procs


def test_internally_recovered_changes_nothing():
    cl, (t1, t2, t3, t4) = running()
    assert report(cl, B, "comp_a_in_su_y", aw.SA_AMF_INTERNALLY_RECOVERED) == SA_OK
    assert [p.take() for p in (t1, t2, t3, t4)] == [[]] * 4
    assert cl.amf(A).comps["comp_a_in_su_y"].error == 0


def test_component_failover_keeps_the_error_until_cancelled():
    cl, (t1, t2, t3, t4) = running()
    assert report(cl, B, "comp_a_in_su_y", aw.SA_AMF_COMPONENT_FAILOVER) == SA_OK
    assert t3.take() == ["QUIESCED", "OUT_OF_SERVICE"] and t1.take() == ["ACTIVE"]
    assert cl.amf(B).comps["comp_a_in_su_y"].error == aw.SA_AMF_SOFTWARE_ERROR


def test_component_restart_terminates_it_and_a_new_process_clears_the_error():
    cl, (t1, t2, t3, t4) = running()
    for n in range(1, RESTART_LIMIT + 2):
        assert report(cl, B, "comp_a_in_su_y", aw.SA_AMF_COMPONENT_RESTART) == SA_OK
        c = cl.amf(B).comps["comp_a_in_su_y"]
        assert c.restarts == n
        if n <= RESTART_LIMIT:
            assert t3.take() == ["QUIESCED", "TERMINATE", "OUT_OF_SERVICE"]
            t3.kill()  # it obeys; a supervisor starts it again
            t3 = cl.proc(A, "comp_a_in_su_y")
            assert t3.take() == ["IN_SERVICE", "STANDBY"] and t4.take()[-2:] == [
                "IN_SERVICE", "STANDBY"]
            # the failed unit came back as standby; the other one is active now
            assert sorted(cl.roles(A).values()) == ["ACTIVE", "NONE", "STANDBY"]
        else:
            # escalated: no terminate, and a new process does not bring it back
            assert "TERMINATE" not in t3.take()
            t3.kill()
            t3 = cl.proc(A, "comp_a_in_su_y")
            cl.advance(0.3)
            assert t3.take() == [] and cl.amf(A).comps["comp_a_in_su_y"].error != 0
    assert len(cl.digests()) == 1
    err, _ = cl.call(B, aw.AMF_REQ_ERROR_CANCEL_ALL, aw.encode_name(b"comp_a_in_su_y"))
    assert err == SA_OK
    assert t3.take() == ["IN_SERVICE", "STANDBY"]
    assert cl.amf(A).comps["comp_a_in_su_y"].restarts == 0


@pytest.mark.parametrize("recovery", [aw.SA_AMF_NODE_SWITCHOVER, aw.SA_AMF_NODE_FAILOVER,
                                      aw.SA_AMF_NODE_FAILFAST])
def test_node_recoveries_fail_every_component_of_the_node(recovery):
    cl = AmfCluster([A, B])
    cl.form([A, B])
    # raidB and half of raidC on node A, raidA on node B
    t1, t2, t3, t4 = quickstart_start(cl, A, B)
    t5 = cl.proc(A, "comp_a_in_su_z")
    t6 = cl.proc(B, "comp_b_in_su_z")
    for p in (t1, t2, t3, t4, t5, t6):
        p.take()
    assert report(cl, B, "comp_b_in_su_y", recovery) == SA_OK
    for p in (t3, t4, t5):  # every component hosted on A
        assert cl.amf(B).comps[p.name].error == aw.SA_AMF_SOFTWARE_ERROR
        assert p.take() == ["QUIESCED", "OUT_OF_SERVICE"]
    assert t6.take() == ["QUIESCED", "OUT_OF_SERVICE"]  # its unit-mate was on A
    assert t1.take() == ["ACTIVE"] and t2.take() == ["ACTIVE"]
    assert cl.roles(A) == {"raidA": "ACTIVE", "raidB": "NONE", "raidC": "NONE"}
    assert len(cl.digests()) == 1


# --- instantiation: the executive starts components that have an instantiate command -----

SPAWNED = """group {
name=g
model=2n
healthcheck-period=100
healthcheck-timeout=40
""" + "".join(f"""unit {{
name=u{i}
component {{
name=c{i}
model=x_active
instantiate=/usr/bin/env python3 -m my.component --name 'c {i}'
}}
}}
""" for i in (1, 2)) + """protection {
name=p
member=c1
member=c2
}
}
"""


def test_components_with_an_instantiate_command_are_started_and_restarted():
    cl = AmfCluster([A, B], SPAWNED)
    assert cl.model.groups[0].units[0].components[0].instantiate == (
        "/usr/bin/env", "python3", "-m", "my.component", "--name", "c 1")
    sa, sb = FakeSpawner(cl, A), FakeSpawner(cl, B)
    cl.form([A, B])
    cl.advance(0.2)
    # the members take the units in turn: u1 on A, u2 on B
    assert [p.name for p in sa.live()] == ["c1"] and [p.name for p in sb.live()] == ["c2"]
    assert cl.roles(B) == {"u1": "ACTIVE", "u2": "STANDBY"}
    # a hung component (SIGSTOP) is failed by the cluster and killed and restarted by its node
    first = sa.live()[0]
    first.comp.stopped = True
    cl.advance(0.3)
    assert first.returncode == -signal.SIGKILL
    assert cl.roles(B) == {"u1": "NONE", "u2": "ACTIVE"}
    cl.advance(1.5)  # SPAWN_DELAY, then it registers again: back as standby (no failback)
    [second] = sa.live()
    assert second.pid != first.pid and cl.roles(A) == {"u1": "STANDBY", "u2": "ACTIVE"}
    # a locked unit's process is asked to terminate, then stopped, and not restarted
    assert cl.admin(B, aw.AMF_ADMIN_LOCK, "u1") == SA_OK
    cl.advance(3.0)
    assert second.signals == [signal.SIGTERM] and sa.live() == []
    assert cl.admin(A, aw.AMF_ADMIN_UNLOCK, "u1") == SA_OK
    cl.advance(0.5)
    assert [p.name for p in sa.live()] == ["c1"] and cl.roles(A)["u1"] == "STANDBY"
    # node B leaves: its unit's component is started on A, the survivor
    cl.form([A])
    cl.advance(0.5)
    assert sorted(p.name for p in sa.live()) == ["c1", "c2"]
    assert cl.roles(A) == {"u1": "ACTIVE", "u2": "STANDBY"}


def test_start_rate_is_limited():
    cl = AmfCluster([A], SPAWNED)
    sa = FakeSpawner(cl, A)
    cl.form([A])
    cl.advance(0.2)
    for _ in range(8):  # c1 dies at once every time
        for p in sa.live():
            if p.name == "c1":
                p.kill(signal.SIGKILL)
        cl.advance(1.2)
    starts = [p for p in sa.started if p.name == "c1"]
    assert len(starts) == SPAWN_LIMIT, "at most SPAWN_LIMIT starts in SPAWN_WINDOW"
    cl.advance(60.0)
    assert len([p for p in sa.started if p.name == "c1"]) == SPAWN_LIMIT + 1


def test_a_registration_lost_in_a_merge_stops_its_process():
    """Each side of a partition starts the other side's component: after the heal the
    merge keeps one registration of each, and the process registered on the losing
    side -- acting in its side's states, c2 as active -- gets the terminate callback
    and, started by AMF, SIGTERM after the grace second: one process per component,
    one active for the CSI."""
    cl = AmfCluster([A, B], SPAWNED)
    sa, sb = FakeSpawner(cl, A), FakeSpawner(cl, B)
    cl.form([A, B])
    cl.advance(0.3)
    cl.form([A], [B])
    cl.advance(2.0)
    assert sorted(p.name for p in sa.live()) == sorted(p.name for p in sb.live()) == ["c1", "c2"]
    assert cl.roles(B) == {"u1": "STANDBY", "u2": "ACTIVE"}
    cl.form([A, B])
    cl.advance(3.0)
    assert cl.roles(A) == cl.roles(B) == {"u1": "ACTIVE", "u2": "STANDBY"}
    assert sorted(p.name for p in sa.live()) == ["c1", "c2"] and sb.live() == []
    for p in sb.started:
        assert p.comp.seen[-1] == ("terminate", "TERMINATE")
        assert p.signals == [signal.SIGTERM]
    assert [s for s in sb.started if s.name == "c2"][0].comp.seen[-2] == ("ha", "ACTIVE")


def test_a_process_started_for_a_component_registered_elsewhere_is_stopped():
    """The heal comes before the processes each side started for the other's component
    have registered: the merged state has each component registered where it was, the
    new processes' registrations would be refused (EXIST), and AMF stops them: one
    process per component."""
    cl = AmfCluster([A, B], SPAWNED)
    sa, sb = FakeSpawner(cl, A), FakeSpawner(cl, B)
    cl.form([A, B])
    cl.advance(0.3)
    cl.form([A], [B])
    cl.advance(0.01)  # each side has started the other's component, not registered yet
    assert len(sa.live()) == len(sb.live()) == 2
    cl.form([A, B])
    cl.advance(3.0)
    assert [p.name for p in sa.live()] == ["c1"] and [p.name for p in sb.live()] == ["c2"]
    for p in sa.started + sb.started:
        if p.returncode is not None:
            assert p.signals == [signal.SIGTERM]
    assert cl.roles(A) == cl.roles(B) == {"u1": "ACTIVE", "u2": "STANDBY"}
