"""AMF: several CSIs per component (spec amf.md section 11; the AIS N+1 example: one
unit standing by for several active units), on fake rings."""
from __future__ import annotations

import pytest
from amf_harness import AmfCluster

from ais.services.amf import decode_unit_record_untrusted, encode_unit_record
from saf import _amf_wire as aw
from saf.errors import SA_OK
from saf.types import SA_TRACK_CHANGES_ONLY, SA_TRACK_CURRENT

A, B = "127.0.0.1", "127.0.0.2"
pytestmark = pytest.mark.timeout(30)

#: N+1: a1 carries CSI p1, a2 carries p2, s stands by for both (model nway: roles per CSI)
N_PLUS_1 = """group {
name=g
model=nway
backup-units=1
unit {
name=u1
component {
name=a1
model=x_active
}
}
unit {
name=u2
component {
name=a2
model=x_active
}
}
unit {
name=us
component {
name=s
model=x_active
}
}
protection {
name=p1
member=a1
member=s
}
protection {
name=p2
member=a2
member=s
}
}
"""

#: 2n: each unit's component carries two CSIs, both with the unit's role
TWO_N = """group {
name=g
model=2n
unit {
name=u1
component {
name=c1
model=x_active
}
}
unit {
name=u2
component {
name=c2
model=x_active
}
}
protection {
name=p
member=c1
member=c2
}
protection {
name=q
member=c1
member=c2
}
}
"""


def ha(cl: AmfCluster, addr: str, comp: str, csi: str) -> int:
    """saAmfHAStateGet(comp, csi) through the library request."""
    err, body = cl.call(addr, aw.AMF_REQ_HA_GET, aw.encode_names(comp.encode(), csi.encode()))
    assert err == SA_OK
    return int.from_bytes(body[:4], "big")


def by_csi(sets: list) -> dict[str, list[tuple[int, bytes]]]:
    out: dict[str, list[tuple[int, bytes]]] = {}
    for cs in sets:
        out.setdefault(cs.csi_name.decode(), []).append((cs.ha_state, cs.active_comp_name))
    return out


def test_n_plus_1_standby_takes_over_only_the_failed_csi():
    cl = AmfCluster([A, B], N_PLUS_1)
    cl.form([A, B])
    a1, a2 = cl.proc(A, "a1"), cl.proc(B, "a2")
    s = cl.proc(B, "s")
    for p in (a1, a2, s):
        p.take()
    assert [(ha(cl, A, "a1", "p1")), ha(cl, A, "a2", "p2")] == [aw.SA_AMF_ACTIVE] * 2
    assert ha(cl, A, "s", "p1") == ha(cl, B, "s", "p2") == aw.SA_AMF_STANDBY
    # one CSI-set per CSI, each naming its CSI and that CSI's active component
    assert by_csi(s.csi_sets) == {"p1": [(aw.SA_AMF_STANDBY, b"a1")],
                                  "p2": [(aw.SA_AMF_STANDBY, b"a2")]}
    assert len(cl.digests()) == 1
    s.csi_sets.clear()
    a1.kill()
    # s becomes active for p1 only; it stays standby for p2, a2 stays active
    assert by_csi(s.csi_sets) == {"p1": [(aw.SA_AMF_ACTIVE, b"s")]}
    assert s.csi_sets[0].transition_descriptor == aw.SA_AMF_CSI_NOT_QUIESCED
    assert a2.take() == []
    for addr in (A, B):
        assert ha(cl, addr, "s", "p1") == aw.SA_AMF_ACTIVE
        assert ha(cl, addr, "s", "p2") == aw.SA_AMF_STANDBY
        assert ha(cl, addr, "a2", "p2") == aw.SA_AMF_ACTIVE
    assert len(cl.digests()) == 1
    # a component's HA state is asked per CSI it carries
    err, _ = cl.call(A, aw.AMF_REQ_HA_GET, aw.encode_names(b"a2", b"p1"))
    assert err != SA_OK
    # a1 comes back as standby for p1 (no failback)
    a1 = cl.proc(A, "a1")
    assert a1.take() == ["IN_SERVICE", "STANDBY"]
    assert a1.csi_sets[-1].active_comp_name == b"s"
    assert len(cl.digests()) == 1


def test_n_plus_1_state_reaches_a_joiner_per_csi():
    cl = AmfCluster([A, B], N_PLUS_1)
    cl.form([A])
    procs = [cl.proc(A, n) for n in ("a1", "a2", "s")]
    procs[0].kill()
    cl.form([A, B])
    assert len(cl.digests()) == 1
    assert ha(cl, B, "s", "p1") == aw.SA_AMF_ACTIVE
    assert ha(cl, B, "s", "p2") == aw.SA_AMF_STANDBY
    rec = cl.amf(A)._record_of(cl.amf(A).units["us"])
    assert decode_unit_record_untrusted(encode_unit_record(rec)) == rec
    assert [(r.ha, r.want_ha) for r in rec.comps[0].csis] == [
        (aw.SA_AMF_ACTIVE, aw.SA_AMF_ACTIVE), (aw.SA_AMF_STANDBY, aw.SA_AMF_STANDBY)]


def test_unit_role_model_gives_every_csi_the_unit_role():
    cl = AmfCluster([A], TWO_N)
    cl.form([A])
    c1, c2 = cl.proc(A, "c1"), cl.proc(A, "c2")
    assert c1.take() == ["IN_SERVICE", "ACTIVE", "ACTIVE"]
    assert c2.take() == ["IN_SERVICE", "STANDBY", "STANDBY"]
    assert sorted(cs.csi_name for cs in c2.csi_sets) == [b"p", b"q"]
    c1.kill()
    assert c2.take() == ["ACTIVE", "ACTIVE"]
    assert {ha(cl, A, "c2", x) for x in ("p", "q")} == {aw.SA_AMF_ACTIVE}


def tracked(conn) -> list:
    out = [aw.decode_pg_track_cb_untrusted(f.body) for f in conn.callbacks
           if f.msg_id == aw.AMF_CB_PG_TRACK]
    conn.callbacks.clear()
    return out


def test_pg_tracking_reports_per_csi():
    cl = AmfCluster([A], N_PLUS_1)
    cl.form([A])
    a1, _, s = [cl.proc(A, n) for n in ("a1", "a2", "s")]
    w1 = cl.proc(A, "x1", register=False).conn
    w2 = cl.proc(A, "x2", register=False).conn
    for w, csi in ((w1, b"p1"), (w2, b"p2")):
        assert cl.request(A, w, aw.AMF_REQ_PG_TRACK_START, aw.encode_pg_track_start(
            aw.PgTrackStart(csi, SA_TRACK_CURRENT | SA_TRACK_CHANGES_ONLY, 0))) == SA_OK
    [cur2] = tracked(w2)
    assert [(i.member.comp_name, i.member.ha_state) for i in cur2.items] == [
        (b"a2", aw.SA_AMF_ACTIVE), (b"s", aw.SA_AMF_STANDBY)]
    tracked(w1)
    assert s.take() == ["IN_SERVICE", "STANDBY", "STANDBY"]
    a1.kill()
    assert tracked(w2) == [], "nothing changed for p2"
    changes = [(i.member.comp_name, i.member.ha_state) for cb in tracked(w1) for i in cb.items]
    assert changes[-1] == (b"s", aw.SA_AMF_ACTIVE) and (b"a1", aw.SA_AMF_QUIESCED) in changes
    assert s.take() == ["ACTIVE"]


#: several components of one unit in one CSI: p lists both components of u1 and of u2
ONE_CSI_TWO_COMPS = """group {
name=g
model=2n
unit {
name=u1
component {
name=a1
model=x_active
}
component {
name=b1
model=x_active
}
}
unit {
name=u2
component {
name=a2
model=x_active
}
component {
name=b2
model=x_active
}
}
protection {
name=p
member=a1
member=b1
member=a2
member=b2
}
}
"""


def test_several_components_of_one_unit_share_a_csi_with_the_unit_role():
    cl = AmfCluster([A, B], ONE_CSI_TWO_COMPS)
    cl.form([A, B])
    a1, b1 = cl.proc(A, "a1"), cl.proc(A, "b1")
    a2, b2 = cl.proc(B, "a2"), cl.proc(B, "b2")
    cl.settle()
    assert a1.take() == b1.take() == ["IN_SERVICE", "ACTIVE"]
    assert a2.take() == b2.take() == ["IN_SERVICE", "STANDBY"]
    assert [cs.csi_name for p in (a1, b1, a2, b2) for cs in p.csi_sets] == [b"p"] * 4
    # an active assignment names its own component; a standby names the active component
    # at its own place among its unit's members of the CSI
    assert [cs.active_comp_name for cs in a1.csi_sets + b1.csi_sets] == [b"a1", b"b1"]
    assert [cs.active_comp_name for cs in a2.csi_sets + b2.csi_sets] == [b"a1", b"b1"]
    assert {ha(cl, B, c, "p") for c in ("a1", "b1")} == {aw.SA_AMF_ACTIVE}
    b1.kill()  # one component fails: its whole unit fails over, both of u2 go active
    assert a1.take() == ["QUIESCED", "OUT_OF_SERVICE"]
    assert a2.take() == b2.take() == ["ACTIVE"]
    assert {ha(cl, A, c, "p") for c in ("a2", "b2")} == {aw.SA_AMF_ACTIVE}
    assert len(cl.digests()) == 1
