"""AMF redundancy models (2n, nplusm, nway, nwayactive), spares and failback policy,
on fake rings (FakeBus, manual clock, scripted components)."""
from __future__ import annotations

import pytest
from amf_harness import AmfCluster

from saf import _amf_wire as aw

A, B, C = "127.0.0.1", "127.0.0.2", "127.0.0.3"
pytestmark = pytest.mark.timeout(30)


def units_conf(model: str, units: int, extra: str = "") -> str:
    """A group of ``units`` one-component units u1..uN, all members of protection p."""
    body = "".join(f"unit {{\nname=u{i}\ncomponent {{\nname=c{i}\nmodel=x_active\n}}\n}}\n"
                   for i in range(1, units + 1))
    members = "".join(f"member=c{i}\n" for i in range(1, units + 1))
    return (f"group {{\nname=g\nmodel={model}\n{extra}{body}"
            f"protection {{\nname=p\n{members}}}\n}}\n")


def start(cl: AmfCluster, n: int, addr: str = A) -> list:
    procs = [cl.proc(addr, f"c{i}") for i in range(1, n + 1)]
    for p in procs:
        p.take()
    return procs


def test_2n_has_one_active_one_standby_and_the_rest_spare():
    cl = AmfCluster([A], units_conf("2n", 3))
    cl.form([A])
    p1, p2, p3 = [cl.proc(A, f"c{i}") for i in (1, 2, 3)]
    assert p1.take() == ["IN_SERVICE", "ACTIVE"]
    assert p2.take() == ["IN_SERVICE", "STANDBY"]
    assert p3.take() == ["IN_SERVICE"], "a spare is in service without an assignment"
    assert cl.roles(A) == {"u1": "ACTIVE", "u2": "STANDBY", "u3": "NONE"}
    assert cl.state(A, "c3") == ("IN_SERVICE", "QUIESCED")
    assert p2.csi_sets[-1].active_comp_name == b"c1", "a standby is told who is active"
    p1.kill()
    # the standby takes over; the spare becomes the new standby (a standby was lost)
    assert p2.take() == ["ACTIVE"] and p3.take() == ["STANDBY"]
    promo = p2.csi_sets[-1]
    assert promo.transition_descriptor == aw.SA_AMF_CSI_NOT_QUIESCED, "c1 died unquiesced"
    assert promo.csi_flags == aw.SA_AMF_CSI_ALL_INSTANCES
    assert p3.csi_sets[-1].csi_flags == aw.SA_AMF_CSI_ADD_NEW_ISTANCE
    assert p3.csi_sets[-1].transition_descriptor == aw.SA_AMF_CSI_NEW_ASSIGN
    # no failback: u1 comes back as a spare, u2 stays active
    p1 = cl.proc(A, "c1")
    assert p1.take() == ["IN_SERVICE"]
    assert cl.roles(A) == {"u1": "NONE", "u2": "ACTIVE", "u3": "STANDBY"}


def test_nplusm_enforces_backup_units_and_ranks_units_in_file_order():
    cl = AmfCluster([A, B], units_conf("nplusm", 5, "active-units=2\nbackup-units=1\n"))
    cl.form([A, B])
    procs = [cl.proc(A if i % 2 else B, f"c{i}") for i in range(1, 6)]
    assert cl.roles(A) == {"u1": "ACTIVE", "u2": "ACTIVE", "u3": "STANDBY", "u4": "NONE",
                           "u5": "NONE"}
    assert len(cl.digests()) == 1
    for p in procs:
        p.take()
    procs[0].kill()  # an active: the standby is promoted, the first spare becomes standby
    assert procs[2].take() == ["ACTIVE"] and procs[3].take() == ["STANDBY"]
    assert procs[4].take() == []
    procs[2].kill()  # the new active: u4 promoted, u5 becomes standby
    assert procs[3].take() == ["ACTIVE"] and procs[4].take() == ["STANDBY"]
    assert cl.roles(B) == {"u1": "NONE", "u2": "ACTIVE", "u3": "NONE", "u4": "ACTIVE",
                           "u5": "STANDBY"}
    assert len(cl.digests()) == 1


def test_nplusm_without_standby_promotes_a_spare_directly():
    cl = AmfCluster([A], units_conf("nplusm", 3, "active-units=1\nbackup-units=0\n"))
    cl.form([A])
    p1, p2, p3 = start(cl, 3)
    assert cl.roles(A) == {"u1": "ACTIVE", "u2": "NONE", "u3": "NONE"}
    p1.kill()
    assert p2.take() == ["ACTIVE"] and p3.take() == []
    assert p2.csi_sets[-1].transition_descriptor == aw.SA_AMF_CSI_NEW_ASSIGN


def test_nwayactive_makes_every_unit_active_and_never_standby():
    cl = AmfCluster([A], units_conf("nwayactive", 3))
    cl.form([A])
    p1, p2, p3 = [cl.proc(A, f"c{i}") for i in (1, 2, 3)]
    assert [p.take() for p in (p1, p2, p3)] == [["IN_SERVICE", "ACTIVE"]] * 3
    p2.kill()
    assert p1.take() == [] and p3.take() == []
    assert cl.roles(A) == {"u1": "ACTIVE", "u2": "NONE", "u3": "ACTIVE"}
    assert cl.proc(A, "c2").take() == ["IN_SERVICE", "ACTIVE"]


def test_nwayactive_with_fewer_active_units_keeps_spares():
    cl = AmfCluster([A], units_conf("nwayactive", 3, "active-units=2\n"))
    cl.form([A])
    p1, p2, p3 = start(cl, 3)
    assert cl.roles(A) == {"u1": "ACTIVE", "u2": "ACTIVE", "u3": "NONE"}
    p1.kill()
    assert p3.take() == ["ACTIVE"]


# N-way: three units of two components; every CSI has members in two units, so a
# unit is active for some CSIs and standby for others.
NWAY = """group {
name=g
model=nway
backup-units=1
unit {
name=u1
component {
name=a1
model=x_active_and_y_standby
}
component {
name=c1
model=x_active_and_y_standby
}
}
unit {
name=u2
component {
name=a2
model=x_active_and_y_standby
}
component {
name=b2
model=x_active_and_y_standby
}
}
unit {
name=u3
component {
name=b3
model=x_active_and_y_standby
}
component {
name=c3
model=x_active_and_y_standby
}
}
protection {
name=pgA
member=a1
member=a2
}
protection {
name=pgB
member=b2
member=b3
}
protection {
name=pgC
member=c3
member=c1
}
}
"""


def ha_of(cl: AmfCluster, addr: str) -> dict[str, str]:
    return {n: cl.state(addr, n)[1] for n in ("a1", "c1", "a2", "b2", "b3", "c3")}


def test_nway_units_are_active_for_some_csis_and_standby_for_others():
    cl = AmfCluster([A, B, C], NWAY)
    cl.form([A, B, C])
    procs = {n: cl.proc(addr, n) for n, addr in (("a1", A), ("c1", A), ("a2", B), ("b2", B),
                                                 ("b3", C), ("c3", C))}
    assert ha_of(cl, A) == {"a1": "ACTIVE", "c1": "ACTIVE", "a2": "STANDBY", "b2": "ACTIVE",
                            "b3": "STANDBY", "c3": "STANDBY"}
    assert len(cl.digests()) == 1
    b3 = [cs for cs in procs["b3"].csi_sets if cs.ha_state == aw.SA_AMF_STANDBY][-1]
    assert (b3.csi_name, b3.active_comp_name) == (b"pgB", b"b2")
    for p in procs.values():
        p.take()
    procs["a1"].kill()  # u1 fails: pgA moves to u2 at once, pgC once c1 is quiesced
    assert procs["c1"].take() == ["QUIESCED", "OUT_OF_SERVICE"]
    assert procs["a2"].take() == ["ACTIVE"] and procs["c3"].take() == ["ACTIVE"]
    assert procs["c3"].csi_sets[-1].transition_descriptor == aw.SA_AMF_CSI_QUIESCED
    assert procs["a2"].csi_sets[-1].transition_descriptor == aw.SA_AMF_CSI_NOT_QUIESCED
    assert procs["b2"].take() == [] and procs["b3"].take() == []
    # u1 repaired: standby for the CSIs that lost their standby, no failback
    procs["a1"] = cl.proc(A, "a1")
    assert procs["a1"].take() == ["IN_SERVICE", "STANDBY"]
    assert procs["c1"].take() == ["IN_SERVICE", "STANDBY"]
    assert ha_of(cl, C) == {"a1": "STANDBY", "c1": "STANDBY", "a2": "ACTIVE", "b2": "ACTIVE",
                            "b3": "STANDBY", "c3": "ACTIVE"}
    assert len(cl.digests()) == 1


def test_nway_partition_heal_keeps_one_active_per_csi():
    cl = AmfCluster([A, B], NWAY)
    cl.form([A, B])
    for n, addr in (("a1", A), ("c1", A), ("a2", B), ("b2", B)):
        cl.proc(addr, n)
    assert cl.state(A, "a2")[1] == "STANDBY"
    cl.form([A], [B])
    # B lost u1: a2 is promoted on B's side; A keeps a1 active
    assert cl.state(B, "a2")[1] == "ACTIVE" and cl.state(A, "a1")[1] == "ACTIVE"
    cl.form([A, B])
    assert len(cl.digests()) == 1
    actives = [n for n in ("a1", "a2") if cl.state(A, n)[1] == "ACTIVE"]
    assert len(actives) == 1


def test_a_hung_spare_is_failed_and_never_promoted():
    cl = AmfCluster([A], units_conf("2n", 3))
    cl.form([A])
    p1, p2, p3 = start(cl, 3)
    hc = p3.healthchecks
    cl.advance(0.5)
    assert p3.healthchecks > hc, "spares are healthchecked too"
    p3.stopped = True
    cl.advance(0.3)
    assert cl.amf(A).comps["c3"].error == aw.SA_AMF_NOT_RESPONDING
    p1.kill()
    assert p2.take() == ["ACTIVE"] and cl.roles(A)["u3"] == "NONE"
    assert cl.phases(A)["u3"] != "ASSIGNING"
