"""AMF's replicated state machine on fake rings (FakeBus, manual clock, scripted components)."""
from __future__ import annotations

import pytest
from amf_harness import SAMPLE, AmfCluster
from helpers_exec import FakeConn

from ais.services.amf import (
    AmfService, Phase, decode_unit_record_untrusted, encode_unit_record,
)
from saf import _amf_wire as aw
from saf.errors import SA_OK, BadFlags, BadOperation, Exist, InvalidParam, NotExist
from saf.types import SA_TRACK_CHANGES, SA_TRACK_CHANGES_ONLY, SA_TRACK_CURRENT

A, B, C = "127.0.0.1", "127.0.0.2", "127.0.0.3"
pytestmark = pytest.mark.timeout(30)


def quickstart_start(cl: AmfCluster, where_b: str = A, where_a: str = A):
    """testamf3+4 (raidB) then testamf1+2 (raidA), as QUICKSTART runs them."""
    t3 = cl.proc(where_b, "comp_a_in_su_y")
    assert t3.states() == []  # its unit is not complete: nothing happens
    t4 = cl.proc(where_b, "comp_b_in_su_y")
    t1 = cl.proc(where_a, "comp_a_in_su_x")
    t2 = cl.proc(where_a, "comp_b_in_su_x")
    return t1, t2, t3, t4


def test_quickstart_units_become_active_then_standby():
    cl = AmfCluster([A])
    cl.form([A])
    t3 = cl.proc(A, "comp_a_in_su_y")
    cl.advance(0.5)
    assert t3.states() == [] and t3.healthchecks == 0
    assert cl.state(A, "comp_a_in_su_y") == ("OUT_OF_SERVICE", "QUIESCED")
    t4 = cl.proc(A, "comp_b_in_su_y")
    assert t3.take() == ["IN_SERVICE", "ACTIVE"] and t4.take() == ["IN_SERVICE", "ACTIVE"]
    assert cl.state(A, "comp_b_in_su_y") == ("IN_SERVICE", "ACTIVE")
    t1 = cl.proc(A, "comp_a_in_su_x")
    cl.advance(0.3)
    assert t1.states() == [], "testamf1 alone changes nothing"
    t2 = cl.proc(A, "comp_b_in_su_x")
    assert t1.take() == ["IN_SERVICE", "STANDBY"] and t2.take() == ["IN_SERVICE", "STANDBY"]
    assert cl.roles(A) == {"raidA": "STANDBY", "raidB": "ACTIVE", "raidC": "NONE"}
    t1.healthchecks = t3.healthchecks = 0
    cl.advance(1.0)
    # healthchecks about every 100 ms, answered, nothing else happens
    assert 8 <= t3.healthchecks <= 11 and 8 <= t1.healthchecks <= 11
    assert t1.states() == t3.states() == []


def test_testamf2_script_unregister_reregister_error_cancel():
    cl = AmfCluster([A])
    cl.form([A])
    t1, t2, t3, t4 = quickstart_start(cl)
    for p in (t1, t2, t3, t4):
        p.take()
    assert t2.unregister() == SA_OK
    assert t2.take() == [], "no callbacks for the unregistered component"
    assert t1.take() == ["QUIESCED", "OUT_OF_SERVICE"]
    assert cl.amf(A).units["raidA"].phase == Phase.IDLE
    assert cl.state(A, "comp_a_in_su_x") == ("OUT_OF_SERVICE", "QUIESCED")
    hc = t1.healthchecks
    cl.advance(0.5)
    assert t1.healthchecks == hc, "healthchecks stop with the assignment"
    assert t2.register() == SA_OK
    assert t1.take() == ["IN_SERVICE", "STANDBY"] and t2.take() == ["IN_SERVICE", "STANDBY"]
    err, _ = cl.call(A, aw.AMF_REQ_ERROR_REPORT, aw.encode_error_report(aw.ErrorReport(
        b"comp_b_in_su_x", b"comp_b_in_su_x", 0,
        aw.ErrorDescriptor(probable_cause=aw.SA_AMF_COMMUNICATION_SUBSYSTEM_FAILURE))))
    assert err == SA_OK
    assert t2.take() == ["QUIESCED", "OUT_OF_SERVICE"]
    assert t1.take() == ["QUIESCED", "OUT_OF_SERVICE"]
    assert cl.amf(A).comps["comp_b_in_su_x"].error == 5
    err, _ = cl.call(A, aw.AMF_REQ_ERROR_CANCEL_ALL, aw.encode_name(b"comp_b_in_su_x"))
    assert err == SA_OK
    assert t2.take() == ["IN_SERVICE", "STANDBY"] and t1.take() == ["IN_SERVICE", "STANDBY"]
    # raidB was never disturbed
    assert t3.take() == [] and t4.take() == []
    assert cl.roles(A)["raidB"] == "ACTIVE"


def test_error_report_racing_an_unconfirmed_standby_gets_standby_then_quiesced():
    cl = AmfCluster([A])
    cl.form([A])
    t1, t2, t3, t4 = quickstart_start(cl)
    t2.unregister()
    t1.take(), t2.take()
    t2.stopped = True  # testamf2 sleeps 1 s after registering
    assert t2.register() == SA_OK
    t2.stopped = False
    t2.pump()  # answers IN_SERVICE; its CONFIRM is ordered before the report
    cl.hosts[A].lib_request(t2.conn, aw.AMF_REQ_ERROR_REPORT, cl.next_seq(),
                            aw.encode_error_report(aw.ErrorReport(
                                b"x", b"comp_b_in_su_x", 0, aw.ErrorDescriptor(0, 5, 0, 0))))
    cl.settle()
    assert t2.take() == ["IN_SERVICE", "STANDBY", "QUIESCED", "OUT_OF_SERVICE"]


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_failure_of_an_active_component_promotes_the_standby(how):
    cl = AmfCluster([A])
    cl.form([A])
    t1, t2, t3, t4 = quickstart_start(cl)
    for p in (t1, t2, t3, t4):
        p.take()
    if how == "kill":
        t3.kill()
    else:
        t3.stopped = True
        cl.advance(0.25)  # one period + one healthcheck timeout at most
    assert t4.take() == ["QUIESCED", "OUT_OF_SERVICE"]
    assert t1.take() == ["ACTIVE"] and t2.take() == ["ACTIVE"]
    assert cl.roles(A) == {"raidA": "ACTIVE", "raidB": "NONE", "raidC": "NONE"}
    c = cl.amf(A).comps["comp_a_in_su_y"]
    if how == "kill":
        assert not c.registered
    else:
        assert c.registered and c.error == aw.SA_AMF_NOT_RESPONDING
    assert cl.state(A, "comp_a_in_su_y") == ("OUT_OF_SERVICE", "QUIESCED")
    hc = t4.healthchecks
    cl.advance(0.5)
    assert t4.healthchecks == hc and t1.healthchecks > 0
    # repair: the process comes back; raidB is standby now (no failback)
    if how == "stop":
        t3.kill()
        assert t4.take() == [], "a second failure of a failed unit repeats nothing"
    t3b = cl.proc(A, "comp_a_in_su_y")
    assert t3b.take() == ["IN_SERVICE", "STANDBY"] and t4.take() == ["IN_SERVICE", "STANDBY"]
    assert cl.roles(A)["raidA"] == "ACTIVE" and cl.roles(A)["raidB"] == "STANDBY"


def test_stopping_a_standby_takes_it_out_without_any_promotion():
    cl = AmfCluster([A])
    cl.form([A])
    t1, t2, t3, t4 = quickstart_start(cl)
    for p in (t1, t2, t3, t4):
        p.take()
    t1.stopped = True
    cl.advance(0.3)
    assert t2.take() == ["QUIESCED", "OUT_OF_SERVICE"]
    assert t3.take() == [] and t4.take() == []
    assert cl.roles(A)["raidB"] == "ACTIVE"


def test_a_silent_component_is_failed_after_the_response_timeout():
    cl = AmfCluster([A])
    cl.form([A])
    t3 = cl.proc(A, "comp_a_in_su_y")
    t4 = cl.proc(A, "comp_b_in_su_y", register=False)
    t4.stopped = True
    assert t4.register() == SA_OK
    assert cl.amf(A).units["raidB"].phase == Phase.ENABLING
    cl.advance(4.9, step=0.1)
    assert cl.amf(A).units["raidB"].phase == Phase.ENABLING
    cl.advance(0.2)
    assert cl.amf(A).comps["comp_b_in_su_y"].error == aw.SA_AMF_NOT_RESPONDING
    assert t3.take() == ["IN_SERVICE", "OUT_OF_SERVICE"]
    assert cl.amf(A).units["raidB"].phase == Phase.IDLE


def test_refusing_a_callback_is_a_component_error():
    cl = AmfCluster([A])
    cl.form([A])
    t3 = cl.proc(A, "comp_a_in_su_y")
    t4 = cl.proc(A, "comp_b_in_su_y", register=False)
    t4.answer_with = 2  # SA_ERR_LIBRARY
    t4.stopped = True
    t4.register()
    t4.stopped = False
    t4.pump()  # refuses IN_SERVICE: a software error, and its unit goes down
    t4.answer_with = SA_OK  # (it answers the rest)
    cl.settle()
    assert cl.amf(A).comps["comp_b_in_su_y"].error == aw.SA_AMF_SOFTWARE_ERROR
    assert t4.take() == ["IN_SERVICE", "OUT_OF_SERVICE"]
    assert cl.amf(A).units["raidB"].phase == Phase.IDLE
    assert t3.take() == ["IN_SERVICE", "OUT_OF_SERVICE"]
    assert cl.amf(A).comps["comp_b_in_su_y"].error == aw.SA_AMF_SOFTWARE_ERROR


def test_refusing_to_give_work_up_is_cleaned_up():
    """A component that refuses to be quiesced (or taken out of service) would hold its
    unit's failover up for ever: it is cleaned up as a hung one (terminated, taken as
    quiesced), and the standby takes over at once."""
    cl = AmfCluster([A])
    cl.form([A])
    t1, t2, t3, t4 = quickstart_start(cl)
    for p in (t1, t2, t3, t4):
        p.take()
    assert cl.roles(A)["raidB"] == "ACTIVE"
    t4.answer_with = 2  # SA_ERR_LIBRARY
    # an error on t3 fails raidB over: t4 is asked to quiesce and refuses
    cl.call(A, aw.AMF_REQ_ERROR_REPORT, aw.encode_error_report(aw.ErrorReport(
        b"", b"comp_a_in_su_y", 0, aw.ErrorDescriptor(0, 21, 0, 0))))
    cl.settle()
    assert t4.take() == ["QUIESCED", "TERMINATE"]
    assert cl.amf(A).comps["comp_b_in_su_y"].error == aw.SA_AMF_NOT_RESPONDING
    assert cl.state(A, "comp_b_in_su_y") == ("OUT_OF_SERVICE", "QUIESCED")
    assert cl.amf(A).units["raidB"].phase == Phase.IDLE
    assert cl.roles(A)["raidA"] == "ACTIVE"
    assert t1.take()[-1] == "ACTIVE" and t2.take()[-1] == "ACTIVE"


def test_late_answer_confirms_only_what_it_answered():
    cl = AmfCluster([A])
    cl.form([A])
    t3 = cl.proc(A, "comp_a_in_su_y")
    t4 = cl.proc(A, "comp_b_in_su_y", register=False)
    t4.stopped = True
    t4.register()
    # IN_SERVICE is outstanding at t4; an error takes the unit down meanwhile
    cl.call(A, aw.AMF_REQ_ERROR_REPORT, aw.encode_error_report(aw.ErrorReport(
        b"", b"comp_a_in_su_y", 0, aw.ErrorDescriptor(0, 21, 0, 0))))
    t4.stopped = False
    cl.settle()  # t4 answers the old IN_SERVICE, then OUT_OF_SERVICE
    assert t4.take() == ["IN_SERVICE", "OUT_OF_SERVICE"]
    assert t3.take() == ["IN_SERVICE", "OUT_OF_SERVICE"]
    assert cl.state(A, "comp_b_in_su_y") == ("OUT_OF_SERVICE", "QUIESCED")
    assert cl.amf(A).units["raidB"].phase == Phase.IDLE


def test_api_errors():
    cl = AmfCluster([A, B])
    cl.form([A, B])
    p = cl.proc(A, "comp_a_in_su_y")
    q = cl.proc(B, "comp_a_in_su_y", register=False)
    assert q.register() == Exist.code  # registered on another node
    r = cl.proc(B, "no_such_component", register=False)
    assert r.register() == NotExist.code
    assert q.unregister() == BadOperation.code  # registered by another process
    assert cl.proc(B, "comp_b_in_su_y", register=False).unregister() == NotExist.code
    report = aw.encode_error_report(aw.ErrorReport(b"", b"comp_a_in_su_x", 0,
                                                   aw.ErrorDescriptor(0, 5, 0, 0)))
    assert cl.call(B, aw.AMF_REQ_ERROR_REPORT, report)[0] == BadOperation.code
    assert cl.call(B, aw.AMF_REQ_ERROR_CANCEL_ALL,
                   aw.encode_name(b"comp_a_in_su_x"))[0] == BadOperation.code
    assert cl.call(B, aw.AMF_REQ_HA_GET,
                   aw.encode_names(b"comp_a_in_su_y", b"pgB"))[0] == NotExist.code
    err, body = cl.call(B, aw.AMF_REQ_HA_GET, aw.encode_names(b"comp_a_in_su_y", b"pgA"))
    assert err == SA_OK and aw.decode_u32_untrusted(body) == aw.SA_AMF_QUIESCED
    err, body = cl.call(B, aw.AMF_REQ_READINESS_GET, aw.encode_name(b"comp_a_in_su_z"))
    assert err == SA_OK and aw.decode_u32_untrusted(body) == aw.SA_AMF_OUT_OF_SERVICE
    assert cl.call(B, aw.AMF_REQ_READINESS_GET, aw.encode_name(b"nope"))[0] == NotExist.code
    assert cl.call(B, aw.AMF_REQ_CAPABILITY_GET,
                   aw.encode_name(b"comp_a_in_su_x"))[0] == NotExist.code
    err, body = cl.call(B, aw.AMF_REQ_CAPABILITY_GET, aw.encode_name(b"comp_a_in_su_y"))
    assert err == SA_OK and aw.decode_u32_untrusted(body) == 5
    assert cl.call(A, aw.AMF_REQ_RESPONSE,
                   aw.encode_response(aw.Response(999, SA_OK)))[0] == InvalidParam.code
    assert cl.call(A, aw.AMF_REQ_PG_TRACK_START, aw.encode_pg_track_start(
        aw.PgTrackStart(b"pgZ", SA_TRACK_CURRENT, 0)))[0] == NotExist.code
    assert cl.call(A, aw.AMF_REQ_PG_TRACK_START, aw.encode_pg_track_start(
        aw.PgTrackStart(b"pgA", 0x40, 0)))[0] == BadFlags.code
    assert cl.call(A, aw.AMF_REQ_PG_TRACK_STOP, aw.encode_name(b"pgA"))[0] == NotExist.code
    # another process may not unregister p's component
    assert q.cl.request(A, cl.proc(A, "comp_b_in_su_z", register=False).conn,
                        aw.AMF_REQ_UNREGISTER,
                        aw.encode_names(b"comp_a_in_su_y", b"")) == BadOperation.code
    assert p.unregister() == SA_OK


def tracked(conn):
    out = [aw.decode_pg_track_cb_untrusted(f.body) for f in conn.callbacks
           if f.msg_id == aw.AMF_CB_PG_TRACK]
    conn.callbacks.clear()
    return out


def test_protection_group_tracking_reports_every_member_change():
    cl = AmfCluster([A, B])
    cl.form([A, B])
    watcher = cl.proc(B, "comp_a_in_su_z", register=False).conn
    only = cl.proc(B, "comp_b_in_su_z", register=False).conn
    assert cl.request(B, watcher, aw.AMF_REQ_PG_TRACK_START, aw.encode_pg_track_start(
        aw.PgTrackStart(b"pgA", SA_TRACK_CURRENT | SA_TRACK_CHANGES, 0))) == SA_OK
    assert cl.request(B, only, aw.AMF_REQ_PG_TRACK_START, aw.encode_pg_track_start(
        aw.PgTrackStart(b"pgA", SA_TRACK_CHANGES_ONLY, 0))) == SA_OK
    [cur] = tracked(watcher)
    assert [(i.member.comp_name, i.change) for i in cur.items] == [
        (b"comp_a_in_su_x", 1), (b"comp_a_in_su_y", 1), (b"comp_a_in_su_z", 1)]
    assert cur.number_of_members == 3
    cl.proc(A, "comp_a_in_su_y")
    cl.proc(A, "comp_b_in_su_y")
    full = tracked(watcher)
    # comp_a_in_su_y: IN_SERVICE, then ACTIVE (pgB members do not show up in pgA)
    assert [[(i.member.comp_name, i.member.readiness_state, i.member.ha_state, i.change)
              for i in cb.items if i.change == 4] for cb in full] == [
        [(b"comp_a_in_su_y", 2, 3, 4)], [(b"comp_a_in_su_y", 2, 1, 4)]]
    assert all(len(cb.items) == 3 for cb in full)
    ch = tracked(only)
    assert [[(i.member.comp_name, i.member.ha_state) for i in cb.items] for cb in ch] == [
        [(b"comp_a_in_su_y", 3)], [(b"comp_a_in_su_y", 1)]]
    assert cl.request(B, only, aw.AMF_REQ_PG_TRACK_STOP, aw.encode_name(b"pgA")) == SA_OK
    cl.proc(A, "comp_a_in_su_x")
    cl.proc(A, "comp_b_in_su_x")
    assert tracked(only) == [] and len(tracked(watcher)) == 2


# --- several nodes -------------------------------------------------------------------------------

def test_states_are_identical_on_every_node_and_node_loss_promotes_at_once():
    cl = AmfCluster([A, B, C])
    cl.form([A, B, C])
    t1, t2, t3, t4 = quickstart_start(cl, where_b=A, where_a=B)
    assert len(cl.digests()) == 1
    assert cl.roles(C) == {"raidA": "STANDBY", "raidB": "ACTIVE", "raidC": "NONE"}
    assert cl.amf(C).comps["comp_a_in_su_y"].host == cl.hosts[A].node_id
    t1.take(), t2.take()
    cl.bus.remove(cl.hosts[A].node_id)  # node A's executive is killed
    t3.dead = t4.dead = True
    cl.form([B, C])
    assert t1.take() == ["ACTIVE"] and t2.take() == ["ACTIVE"]
    assert len(cl.digests([B, C])) == 1
    for node in (B, C):
        assert cl.roles(node) == {"raidA": "ACTIVE", "raidB": "NONE", "raidC": "NONE"}
        assert not cl.amf(node).comps["comp_a_in_su_y"].registered
    # A comes back empty and learns everything in the sync round
    cl.restart(A)
    cl.form([A, B, C])
    assert len(cl.digests()) == 1
    assert cl.roles(A)["raidA"] == "ACTIVE"
    t3b = cl.proc(A, "comp_a_in_su_y")
    t4b = cl.proc(A, "comp_b_in_su_y")
    assert t3b.take() == ["IN_SERVICE", "STANDBY"] and t4b.take() == ["IN_SERVICE", "STANDBY"]
    assert len(cl.digests()) == 1


def test_a_joining_node_gets_the_whole_state_before_handling_amf_messages():
    cl = AmfCluster([A, B, C])
    cl.form([A, B])
    t1, t2, t3, t4 = quickstart_start(cl, where_b=A, where_a=B)
    cl.call(A, aw.AMF_REQ_ERROR_REPORT, aw.encode_error_report(aw.ErrorReport(
        b"", b"comp_b_in_su_x", 0, aw.ErrorDescriptor(0, 5, 0, 0))))
    cl.form([A, B, C])
    assert len(cl.digests()) == 1
    assert cl.amf(C).comps["comp_b_in_su_x"].error == 5
    assert cl.amf(C).comps["comp_a_in_su_y"].incarnation == 1
    # the newcomer's own client sees the same answers
    err, body = cl.call(C, aw.AMF_REQ_HA_GET, aw.encode_names(b"comp_a_in_su_y", b"pgA"))
    assert aw.decode_u32_untrusted(body) == aw.SA_AMF_ACTIVE
    cl.call(C, aw.AMF_REQ_ERROR_CANCEL_ALL, aw.encode_name(b"comp_b_in_su_x"))
    assert t2.take()[-2:] == ["IN_SERVICE", "STANDBY"]
    assert len(cl.digests()) == 1


def test_partition_heal_keeps_one_active_unit():
    cl = AmfCluster([A, B])
    cl.form([A, B])
    t1, t2, t3, t4 = quickstart_start(cl, where_b=A, where_a=B)
    for p in (t1, t2, t3, t4):
        p.take()
    cl.form([A], [B])
    # split brain without quorum: B lost raidB's components and promotes raidA
    assert t1.take() == ["ACTIVE"] and t2.take() == ["ACTIVE"]
    assert cl.roles(A)["raidB"] == "ACTIVE" and cl.roles(B)["raidA"] == "ACTIVE"
    cl.form([A, B])
    assert len(cl.digests()) == 1
    roles = cl.roles(A)
    assert list(roles.values()).count("ACTIVE") == 1
    # the lowest node's side keeps its active; the other side's unit becomes standby
    assert roles["raidB"] == "ACTIVE" and roles["raidA"] == "STANDBY"
    assert t1.take() == ["STANDBY"] and t2.take() == ["STANDBY"]
    assert t3.take() == [] and t4.take() == []


def test_unit_split_across_a_partition_is_recycled_after_the_heal():
    cl = AmfCluster([A, B])
    cl.form([A, B])
    ta = cl.proc(A, "comp_a_in_su_y")
    tb = cl.proc(B, "comp_b_in_su_y")
    assert ta.take() == ["IN_SERVICE", "ACTIVE"] and tb.take() == ["IN_SERVICE", "ACTIVE"]
    cl.form([A], [B])
    assert ta.take() == ["QUIESCED", "OUT_OF_SERVICE"]
    assert tb.take() == ["QUIESCED", "OUT_OF_SERVICE"]
    cl.form([A, B])
    assert len(cl.digests()) == 1
    assert ta.take() == ["IN_SERVICE", "ACTIVE"] and tb.take() == ["IN_SERVICE", "ACTIVE"]
    assert cl.roles(A)["raidB"] == "ACTIVE"


QUORUM = SAMPLE.replace("backup-units=2", "backup-units=2\n\tquorum=2")


def test_quorum_stops_a_minority_from_promoting_and_demotes_its_active():
    cl = AmfCluster([A, B, C], QUORUM)
    cl.form([A, B, C])
    t1, t2, t3, t4 = quickstart_start(cl, where_b=A, where_a=B)
    for p in (t1, t2, t3, t4):
        p.take()
    cl.form([A], [B, C])
    # majority side (B, C) promotes raidA; the minority (A) demotes raidB
    assert t1.take() == ["ACTIVE"] and t2.take() == ["ACTIVE"]
    assert t3.take() == ["STANDBY"] and t4.take() == ["STANDBY"]
    assert cl.roles(A)["raidB"] == "STANDBY"
    cl.form([A, B, C])
    assert len(cl.digests()) == 1
    assert list(cl.roles(A).values()).count("ACTIVE") == 1
    assert cl.roles(A)["raidA"] == "ACTIVE"
    cl.form([A], [B], [C])  # nobody has quorum: nothing is active anywhere
    for node in (A, B, C):
        assert "ACTIVE" not in cl.roles(node).values()


def test_sync_unit_record_round_trip_and_garbage():
    cl = AmfCluster([A])
    cl.form([A])
    cl.proc(A, "comp_a_in_su_y")
    svc = cl.amf(A)
    rec = svc._record_of(svc.units["raidB"])
    assert decode_unit_record_untrusted(encode_unit_record(rec)) == rec
    from saf.errors import IpcProtocolError
    data = encode_unit_record(rec)
    for cut in range(len(data)):
        with pytest.raises(IpcProtocolError):
            decode_unit_record_untrusted(data[:cut])


def test_a_bad_ring_message_is_dropped_everywhere_alike():
    cl = AmfCluster([A, B])
    cl.form([A, B])
    svc = cl.amf(A)
    cl.hosts[A].mcast(svc, 2, b"\x00\x01")  # truncated UNREGISTER
    cl.hosts[A].mcast(svc, 5, b"\xff" * 7)
    cl.hosts[A].mcast(svc, 9, b"\x01")  # truncated ADMIN
    cl.settle()
    assert cl.hosts[A].bad_messages["amf"] == cl.hosts[B].bad_messages["amf"] == 3
    assert len(cl.digests()) == 1


def test_no_model_means_every_component_is_unknown():
    cl = AmfCluster([A], "")
    cl.form([A])
    assert cl.proc(A, "comp_a_in_su_x", register=False).register() == NotExist.code
    assert isinstance(cl.amf(A), AmfService) and cl.amf(A).groups == []


def test_groups_conf_timing_and_quorum_keys():
    from ais.config import ConfigError, parse_groups_conf
    text = SAMPLE.replace("backup-units=2", "backup-units=2\n\thealthcheck-period=50\n\t"
                          "healthcheck-timeout=70\n\tresponse-timeout=900\n\tquorum=2")
    g = parse_groups_conf(text).groups[0]
    assert (g.healthcheck_period, g.healthcheck_timeout, g.response_timeout, g.quorum) == \
        (50.0, 70.0, 900.0, 2)
    d = parse_groups_conf(SAMPLE).groups[0]
    assert (d.healthcheck_period, d.healthcheck_timeout, d.response_timeout, d.quorum) == \
        (100.0, 40.0, 5000.0, 0)
    bad = SAMPLE.replace("backup-units=2", "backup-units=2\n\thealthcheck-period=0")
    with pytest.raises(ConfigError) as e:
        parse_groups_conf(bad, "groups.conf")
    line = bad.splitlines().index("\thealthcheck-period=0") + 1
    assert str(e.value) == f"groups.conf:{line}: healthcheck-period: must be greater than 0"


def test_short_healthcheck_settings_detect_a_stop_sooner():
    text = SAMPLE.replace("backup-units=2", "backup-units=2\n\thealthcheck-period=20\n\t"
                          "healthcheck-timeout=20")
    cl = AmfCluster([A], text)
    cl.form([A])
    t1, t2, t3, t4 = quickstart_start(cl)
    for p in (t1, t2, t3, t4):
        p.take()
    t3.stopped = True
    cl.advance(0.05, step=0.005)
    assert t1.take() == ["ACTIVE"] and t4.take() == ["QUIESCED", "OUT_OF_SERVICE"]


def test_an_executive_restarted_before_anyone_noticed_loses_its_components():
    cl = AmfCluster([A, B, C])
    cl.form([A, B, C])
    t1, t2, t3, t4 = quickstart_start(cl, where_b=A, where_a=B)
    for p in (t1, t2):
        p.take()
    cl.restart(A)  # same address, empty state, the others never saw it leave
    cl.form([A, B, C])
    assert len(cl.digests()) == 1
    for node in (A, B, C):
        assert not cl.amf(node).comps["comp_a_in_su_y"].registered
        assert cl.roles(node)["raidA"] == "ACTIVE"
    assert t1.take() == ["ACTIVE"] and t2.take() == ["ACTIVE"]
    # the components can register again on the restarted node
    t3b = cl.proc(A, "comp_a_in_su_y")
    cl.proc(A, "comp_b_in_su_y")
    assert t3b.take() == ["IN_SERVICE", "STANDBY"]


def test_a_node_with_another_groups_conf_is_reported(caplog):
    from ais.config import parse_groups_conf
    from ais.executive import ServiceHost
    from ais.services.clm import ClmService
    from ais.totem.events import node_of
    cl = AmfCluster([A])
    other = parse_groups_conf(SAMPLE.replace("active-units=1", "active-units=2"))
    cl.hosts[B] = ServiceHost(node_of(B), [ClmService(), AmfService(other)], cl.sched)
    cl.bus.port(cl.hosts[B])
    with caplog.at_level("ERROR"):
        cl.form([A, B])
    assert "runs another AMF model" in caplog.text
    cl2 = AmfCluster([A, B])
    caplog.clear()
    with caplog.at_level("ERROR"):
        cl2.form([A, B])
    assert "runs another AMF model" not in caplog.text


def sent_in_a_split_round(cl: AmfCluster, conn: FakeConn, msg_id: int, body: bytes) -> int:
    """B sends a request as A and B (apart) merge; A completes that ring's sync round,
    applying it, and B does not (``test_ckpt._only_first_completes``).  Its seq."""
    from test_ckpt import _only_first_completes

    from ais.totem.events import node_of

    cl.bus.pause()
    cl.bus.reconfigure([node_of(A), node_of(B)])
    seq = cl.next_seq()
    cl.hosts[B].lib_request(conn, msg_id, seq, body)
    _only_first_completes(cl, A, B)
    return seq


def client_of(cl: AmfCluster, addr: str) -> FakeConn:
    conn = FakeConn(cl.hosts[addr].new_conn_id(), aw.AMF_SERVICE_ID)
    cl.hosts[addr].lib_connect(conn)
    return conn


@pytest.mark.parametrize("a_alone_completes", [False, True])
def test_registration_applied_in_another_partition_is_answered_once(a_alone_completes):
    """A process on B registers during a sync round that A completes (registering it)
    and B does not; the ring splits and merges again before B's own round could
    complete, so B re-sends the registration, a replay.  The merge takes B's
    registrations from B's side (A's holds them only second-hand), where this one was
    never applied, so the replay registers the component anew, whether A completed a
    round alone meanwhile (B's components failed there: their node had left) or not:
    the process gets SA_OK once (not "already registered"), the replicas agree, and the
    component is unregistered everywhere when its process ends."""
    from test_ckpt import _apart_then_merged

    from ais.totem.events import node_of

    cl = AmfCluster([A, B])
    cl.form([A], [B])
    p = cl.proc(B, "comp_a_in_su_y", register=False)
    seq = sent_in_a_split_round(cl, p.conn, aw.AMF_REQ_REGISTER,
                                aw.encode_names(b"comp_a_in_su_y", b""))
    assert cl.amf(A).comps["comp_a_in_su_y"].registered
    assert not cl.amf(B).comps["comp_a_in_su_y"].registered
    _apart_then_merged(cl, A, B, first_completes=a_alone_completes)
    assert [f.error for f in p.conn.responses if f.seq == seq] == [SA_OK]
    for addr in (A, B):
        c = cl.amf(addr).comps["comp_a_in_su_y"]
        assert c.registered and c.host == node_of(B)
        assert c.incarnation == 2
    assert len(cl.digests()) == 1
    p.kill()
    assert not any(cl.amf(addr).comps["comp_a_in_su_y"].registered for addr in (A, B))


def test_error_report_applied_in_another_partition_restarts_the_component_once():
    """B reports an error on A's component during a round that A completes (restarting
    the component) and B does not; the ring splits and merges again, and B re-sends
    the report.  The merge takes the component's record from A's side, which holds the
    report: the replay is not applied again (a second restart, a restart counted
    twice), and B's client learns the outcome is unknown (SA_ERR_TIMEOUT)."""
    from test_ckpt import _apart_then_merged

    from saf.errors import Timeout

    cl = AmfCluster([A, B])
    cl.form([A], [B])
    t = cl.proc(A, "comp_a_in_su_y")
    conn = client_of(cl, B)
    seq = sent_in_a_split_round(cl, conn, aw.AMF_REQ_ERROR_REPORT, aw.encode_error_report(
        aw.ErrorReport(b"", b"comp_a_in_su_y", 0, aw.ErrorDescriptor(
            probable_cause=aw.SA_AMF_SOFTWARE_ERROR,
            recommended_recovery=aw.SA_AMF_COMPONENT_RESTART))))
    assert cl.amf(A).comps["comp_a_in_su_y"].restarts == 1
    _apart_then_merged(cl, A, B, first_completes=False)
    for addr in (A, B):
        assert cl.amf(addr).comps["comp_a_in_su_y"].restarts == 1
    assert [f.error for f in conn.responses if f.seq == seq] == [Timeout.code]
    assert len(cl.digests()) == 1
    assert t.states().count("TERMINATE") == 1


def test_the_same_component_registered_on_both_sides_of_a_partition():
    """One program run on two nodes: the second registration is refused (EXIST) while
    the ring is whole, accepted while the nodes are apart.  After the heal the merge
    keeps the first side's, and the other process gets the terminate callback."""
    cl = AmfCluster([A, B])
    cl.form([A, B])
    t3 = cl.proc(A, "comp_a_in_su_y")
    assert cl.proc(B, "comp_a_in_su_y", register=False).register() == Exist.code
    cl.form([A], [B])
    cl.settle()
    u = cl.proc(B, "comp_a_in_su_y")
    assert cl.amf(B).comps["comp_a_in_su_y"].host == cl.amf(B).host.node_id
    cl.form([A, B])
    cl.settle()
    assert cl.amf(A).comps["comp_a_in_su_y"].host == cl.amf(A).host.node_id
    assert u.take()[-1:] == ["TERMINATE"] and "TERMINATE" not in t3.take()
    # its answer to the terminate callback is taken (not refused as an unknown invocation)
    last = u.conn.responses[-1]
    assert last.msg_id == aw.AMF_REQ_RESPONSE and last.error == SA_OK
    assert cl.digests() and len(cl.digests()) == 1
