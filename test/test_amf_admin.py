"""AMF administrative operations (lock, unlock, shutdown of a service unit) and
saAmfPendingOperationGet, on fake rings (FakeBus, manual clock, scripted components)."""
from __future__ import annotations

import pytest
from amf_harness import AmfCluster
from test_amf import quickstart_start

from ais.amf_status import render
from ais.services.amf import Admin, Phase
from saf import _amf_wire as aw
from saf.errors import SA_OK, BadOperation, InvalidParam, IpcProtocolError, NotExist

A, B = "127.0.0.1", "127.0.0.2"
pytestmark = pytest.mark.timeout(30)

LOCK, UNLOCK, SHUTDOWN = aw.AMF_ADMIN_LOCK, aw.AMF_ADMIN_UNLOCK, aw.AMF_ADMIN_SHUTDOWN


def pending(cl: AmfCluster, addr: str, comp: str) -> int:
    err, body = cl.call(addr, aw.AMF_REQ_PENDING_GET, aw.encode_name(comp.encode()))
    assert err == SA_OK
    return aw.decode_u32_untrusted(body)


def unit_line(text: str, unit: str) -> str:
    """The line of ``amf_status`` output describing ``unit``."""
    return next(line for line in text.splitlines() if line.strip().startswith(f"unit {unit}:"))


def running(where_b: str = A, where_a: str = A) -> tuple[AmfCluster, tuple]:
    cl = AmfCluster([A, B])
    cl.form([A, B])
    procs = quickstart_start(cl, where_b, where_a)
    for p in procs:
        p.take()
    assert cl.roles(A) == {"raidA": "STANDBY", "raidB": "ACTIVE", "raidC": "NONE"}
    return cl, procs


def test_lock_of_the_active_unit_switches_over_and_unlock_brings_it_back_as_standby():
    cl, (t1, t2, t3, t4) = running(where_b=A, where_a=B)
    t3.stopped = t4.stopped = True  # hold their answers to see the pending operation
    assert cl.admin(B, LOCK, "raidB") == SA_OK  # asked on another node than the host
    assert pending(cl, B, "comp_a_in_su_y") == aw.SA_AMF_SWITCHOVER_OPERATION
    assert pending(cl, A, "comp_a_in_su_x") == 0
    assert "pending switchover" in unit_line(render(cl.amf(A).status_rows()), "raidB")
    assert t1.take() == [], "no promotion while raidB may still be active"
    t3.stopped = t4.stopped = False
    cl.settle()
    assert t3.take() == ["REMOVE pgA", "OUT_OF_SERVICE", "TERMINATE"]
    assert t4.take() == ["REMOVE pgB", "OUT_OF_SERVICE", "TERMINATE"]
    assert t1.take() == ["ACTIVE"] and t2.take() == ["ACTIVE"]
    assert t1.csi_sets[-1].transition_descriptor == aw.SA_AMF_CSI_QUIESCED
    unit = cl.amf(A).units["raidB"]
    assert (unit.phase, unit.admin) == (Phase.IDLE, Admin.LOCKED)
    assert pending(cl, A, "comp_a_in_su_y") == 0
    assert [r.su_admin for r in cl.amf(B).status_rows() if r.unit == b"raidB"] == [1, 1]
    assert "pending" not in unit_line(render(cl.amf(B).status_rows()), "raidB")
    hc = t3.healthchecks
    cl.advance(0.5)
    assert t3.healthchecks == hc and t3.take() == [], "a locked unit stays out of service"
    assert cl.admin(A, UNLOCK, "raidB") == SA_OK
    assert t3.take() == ["IN_SERVICE", "STANDBY"] and t4.take() == ["IN_SERVICE", "STANDBY"]
    assert cl.roles(B)["raidA"] == "ACTIVE"
    assert len(cl.digests()) == 1


def test_shutdown_waits_for_stopping_complete():
    cl, (t1, t2, t3, t4) = running()
    t3.complete_stopping = False
    assert cl.admin(A, SHUTDOWN, "raidB") == SA_OK
    assert t3.take() == ["STOPPING"] and t4.take() == ["STOPPING"]
    assert cl.amf(A).units["raidB"].admin == Admin.SHUTTING_DOWN
    assert pending(cl, B, "comp_b_in_su_y") == aw.SA_AMF_SHUTDOWN_OPERATION
    assert cl.state(B, "comp_b_in_su_y") == ("STOPPING", "ACTIVE")
    # amf_status shows the pending operation of the unit (and of no other unit)
    rows = aw.decode_status_untrusted(aw.encode_status(cl.amf(B).status_rows()))
    assert {r.unit: r.su_pending for r in rows} == {
        b"raidA": 0, b"raidB": aw.SA_AMF_SHUTDOWN_OPERATION, b"raidC": 0}
    text = render(rows)
    assert "pending shutdown" in unit_line(text, "raidB")
    assert "pending" not in unit_line(text, "raidA")
    cl.advance(1.0)
    assert t1.take() == [], "raidB is still active while one component is stopping"
    # testamf3 finally says it has stopped
    inv = [aw.decode_readiness_set_cb_untrusted(f.body).invocation for f in t3.conn.callbacks
           if f.msg_id == aw.AMF_CB_READINESS_SET][-1]
    assert cl.request(A, t3.conn, aw.AMF_REQ_STOPPING_COMPLETE,
                      aw.encode_response(aw.Response(inv, SA_OK))) == SA_OK
    assert t3.take() == ["REMOVE pgA", "OUT_OF_SERVICE", "TERMINATE"]
    assert t1.take() == ["ACTIVE"]
    assert cl.amf(B).units["raidB"].admin == Admin.LOCKED
    assert len(cl.digests()) == 1


def test_shutdown_not_completed_in_time_is_a_component_failure():
    cl, (t1, t2, t3, t4) = running()
    t3.complete_stopping = False
    assert cl.admin(A, SHUTDOWN, "raidB") == SA_OK
    cl.advance(5.5)  # response-timeout 5000 ms
    c = cl.amf(B).comps["comp_a_in_su_y"]
    assert c.error == aw.SA_AMF_NOT_RESPONDING
    assert t4.take() == ["STOPPING", "QUIESCED", "OUT_OF_SERVICE", "TERMINATE"]
    assert t1.take() == ["ACTIVE"]
    assert t1.csi_sets[-1].transition_descriptor == aw.SA_AMF_CSI_NOT_QUIESCED
    assert cl.amf(A).units["raidB"].admin == Admin.LOCKED


def test_unlock_during_a_shutdown_cancels_it():
    cl, (t1, t2, t3, t4) = running()
    t3.complete_stopping = t4.complete_stopping = False
    assert cl.admin(A, SHUTDOWN, "raidB") == SA_OK
    assert cl.admin(B, UNLOCK, "raidB") == SA_OK
    assert t3.take() == ["STOPPING", "IN_SERVICE"] and t4.take() == ["STOPPING", "IN_SERVICE"]
    assert cl.roles(A)["raidB"] == "ACTIVE" and cl.phases(A)["raidB"] == "ASSIGNED"
    assert t1.take() == []


def test_lock_of_the_standby_needs_no_promotion_and_a_locked_unit_does_not_enable():
    cl, (t1, t2, t3, t4) = running()
    assert cl.admin(A, LOCK, "raidA") == SA_OK
    assert t1.take() == ["REMOVE pgA", "OUT_OF_SERVICE", "TERMINATE"]
    assert t3.take() == []
    assert cl.admin(A, LOCK, "raidC") == SA_OK  # nothing registered: locked at once
    assert cl.phases(A)["raidC"] == "IDLE" and cl.amf(A).units["raidC"].admin == Admin.LOCKED
    t5 = cl.proc(A, "comp_a_in_su_z")
    t6 = cl.proc(B, "comp_b_in_su_z")
    cl.advance(0.3)
    assert t5.take() == [] and t6.take() == []
    t3.kill()  # no standby left in service: nothing to promote
    assert cl.roles(A) == {"raidA": "NONE", "raidB": "NONE", "raidC": "NONE"}
    assert cl.admin(B, UNLOCK, "raidC") == SA_OK
    assert t5.take() == ["IN_SERVICE", "ACTIVE"] and t6.take() == ["IN_SERVICE", "ACTIVE"]


def test_admin_errors():
    cl, _ = running()
    err, _ = cl.call(A, aw.AMF_REQ_ADMIN, aw.encode_admin(aw.AdminRequest(LOCK, b"nosuch")))
    assert err == NotExist.code
    err, _ = cl.call(A, aw.AMF_REQ_ADMIN, aw.encode_admin(aw.AdminRequest(9, b"raidA")))
    assert err == InvalidParam.code
    assert cl.admin(A, UNLOCK, "raidA") == BadOperation.code
    assert cl.admin(A, LOCK, "raidA") == SA_OK
    assert cl.admin(B, LOCK, "raidA") == BadOperation.code
    assert cl.admin(B, SHUTDOWN, "raidA") == BadOperation.code
    with pytest.raises(IpcProtocolError):  # the executive drops such a client
        cl.call(A, aw.AMF_REQ_ADMIN, b"\x01")
    err, _ = cl.call(A, aw.AMF_REQ_PENDING_GET, aw.encode_name(b"nosuch"))
    assert err == NotExist.code


def test_a_lock_survives_a_partition_and_heal():
    cl, (t1, t2, t3, t4) = running(where_b=A, where_a=B)
    cl.form([A], [B])
    assert cl.admin(B, LOCK, "raidA") == SA_OK  # on B's side only, where raidA is active
    assert t1.take()[-1] == "TERMINATE"
    cl.form([A, B])
    assert len(cl.digests()) == 1
    unit = cl.amf(A).units["raidA"]
    assert (unit.admin, unit.phase) == (Admin.LOCKED, Phase.IDLE)
    assert cl.roles(A)["raidB"] == "ACTIVE"


def test_node_lock_locks_the_units_hosted_there_and_node_unlock_brings_them_back():
    cl, (t1, t2, t3, t4) = running(where_b=A, where_a=B)
    t5 = cl.proc(A, "comp_a_in_su_z")
    t6 = cl.proc(B, "comp_b_in_su_z")  # raidC is on both nodes
    t5.take(), t6.take()
    node = lambda addr, op: cl.call(B, aw.AMF_REQ_ADMIN, aw.encode_admin(  # noqa: E731
        aw.AdminRequest(op, addr.encode())))[0]
    assert node(A, aw.AMF_ADMIN_LOCK_NODE) == SA_OK
    assert t3.take() == ["REMOVE pgA", "OUT_OF_SERVICE", "TERMINATE"]
    assert t6.take() == ["REMOVE pgB", "OUT_OF_SERVICE", "TERMINATE"], \
        "its unit-mate is on the node"
    assert t5.take() == ["REMOVE pgA", "OUT_OF_SERVICE", "TERMINATE"]
    assert t1.take() == ["ACTIVE"]
    units = cl.amf(B).units
    assert {n: (u.admin, u.locked_by) for n, u in units.items()} == {
        "raidA": (Admin.UNLOCKED, 0), "raidB": (Admin.LOCKED, cl.hosts[A].node_id),
        "raidC": (Admin.LOCKED, cl.hosts[A].node_id)}
    assert node(A, aw.AMF_ADMIN_LOCK_NODE) == NotExist.code  # nothing unlocked left there
    assert node(B, aw.AMF_ADMIN_UNLOCK_NODE) == BadOperation.code
    assert node("nonsense", aw.AMF_ADMIN_LOCK_NODE) == InvalidParam.code
    assert cl.admin(A, UNLOCK, "raidC") == SA_OK  # a unit of a node lock unlocked alone
    assert t5.take() == ["IN_SERVICE", "STANDBY"]
    assert node(A, aw.AMF_ADMIN_UNLOCK_NODE) == SA_OK
    assert t3.take() == ["IN_SERVICE", "STANDBY"], "back as standby: no failback"
    assert cl.roles(A) == {"raidA": "ACTIVE", "raidB": "STANDBY", "raidC": "STANDBY"}
    assert len(cl.digests()) == 1


# --- pending-operation callbacks -------------------------------------------------------------

SWITCHOVER_OP, SHUTDOWN_OP = aw.SA_AMF_SWITCHOVER_OPERATION, aw.SA_AMF_SHUTDOWN_OPERATION


def no_pending_invocations(cl: AmfCluster) -> bool:
    from ais.services.amf import KIND_PENDING
    return all(i.kind != KIND_PENDING for a in (A, B) for i in cl.amf(a).invocations.values())


def test_a_completed_lock_confirms_the_switchover_to_the_unit_components_only():
    cl, (t1, t2, t3, t4) = running(where_b=A, where_a=B)
    t3.stopped = True
    assert cl.admin(A, LOCK, "raidB") == SA_OK
    assert t4.pending == [], "nothing completed while testamf3 has not answered"
    t3.stopped = False
    cl.settle()
    assert t3.pending == [("CONFIRM", SWITCHOVER_OP)]
    assert t4.pending == [("CONFIRM", SWITCHOVER_OP)]
    assert t1.pending == [] and t2.pending == []
    assert no_pending_invocations(cl), "the confirms were answered with saAmfResponse"


def test_a_completed_shutdown_is_confirmed():
    cl, (t1, t2, t3, t4) = running()
    assert cl.admin(B, SHUTDOWN, "raidB") == SA_OK
    cl.settle()
    assert cl.amf(A).units["raidB"].admin == Admin.LOCKED
    assert t3.pending == t4.pending == [("CONFIRM", SHUTDOWN_OP)]
    assert t1.pending == t2.pending == []


def test_a_shutdown_that_times_out_expires():
    cl, (t1, t2, t3, t4) = running()
    t3.complete_stopping = False
    assert cl.admin(A, SHUTDOWN, "raidB") == SA_OK
    cl.advance(5.5)  # testamf3 misses its response-timeout: the operation has failed
    assert cl.amf(A).units["raidB"].admin == Admin.LOCKED
    assert t4.pending == [("EXPIRED", SHUTDOWN_OP)]
    assert t3.pending == [], "a component that cannot be talked to hears nothing"


def test_unlock_during_a_shutdown_expires_it_and_a_lock_supersedes_it():
    cl, (t1, t2, t3, t4) = running()
    t3.complete_stopping = t4.complete_stopping = False
    assert cl.admin(A, SHUTDOWN, "raidB") == SA_OK
    assert cl.admin(B, UNLOCK, "raidB") == SA_OK
    assert t3.pending == t4.pending == [("EXPIRED", SHUTDOWN_OP)]
    assert pending(cl, A, "comp_a_in_su_y") == 0
    assert cl.admin(A, SHUTDOWN, "raidB") == SA_OK
    assert cl.admin(A, LOCK, "raidB") == SA_OK  # the lock overrides the shutdown
    cl.settle()
    assert t3.pending[1:] == [("EXPIRED", SHUTDOWN_OP), ("CONFIRM", SWITCHOVER_OP)]
    assert cl.amf(B).units["raidB"].admin == Admin.LOCKED
    assert len(cl.digests()) == 1


@pytest.mark.parametrize("op", [LOCK, UNLOCK])
def test_admin_operation_applied_in_another_partition(op):
    """An operator on B locks (or unlocks) a unit during a sync round that A completes,
    applying it, and B does not; the ring splits and merges again before B's round
    alone completed, so B re-sends the request: a replay.  A merge keeps the highest
    administrative state of the two sides: A's lock is kept, so the replay is not
    applied again ("already locked") and the operator hears TIMEOUT ("maybe done");
    A's unlock is not (B's side is still locked), so the replay unlocks and answers
    SA_OK."""
    from test_amf import client_of, sent_in_a_split_round
    from test_ckpt import _apart_then_merged

    from saf.errors import Timeout

    cl = AmfCluster([A, B])
    cl.form([A, B])
    if op == UNLOCK:
        assert cl.admin(A, LOCK, "raidB") == SA_OK
    cl.form([A], [B])
    conn = client_of(cl, B)
    seq = sent_in_a_split_round(cl, conn, aw.AMF_REQ_ADMIN, aw.encode_admin(
        aw.AdminRequest(op, b"raidB")))
    applied = Admin.LOCKED if op == LOCK else Admin.UNLOCKED
    assert cl.amf(A).units["raidB"].admin == applied != cl.amf(B).units["raidB"].admin
    _apart_then_merged(cl, A, B, first_completes=False)
    assert [f.error for f in conn.responses if f.seq == seq] == \
        [Timeout.code if op == LOCK else SA_OK]
    assert cl.amf(A).units["raidB"].admin == cl.amf(B).units["raidB"].admin == applied
    assert len(cl.digests()) == 1
