"""saf.amf over real sockets: in-process executives (ExecThread) and the blocking
library in threads, plus one gevent (monkey-patched) client process."""
from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from amf_harness import SAMPLE
from helpers_exec import BOOT, ExecThread, on

from ais.config import parse_groups_conf
from ais.executive import ServiceHost
from ais.services.amf import AmfService
from ais.services.clm import ClmService
from ais.totem.events import node_of
from saf import _amf_wire as aw
from saf import amf
from saf.errors import (
    BadHandle, BadOperation, Exist, InvalidParam, NoSpace, NotExist, SaError, VersionError,
)
from saf.types import (
    SA_DISPATCH_ALL, SA_DISPATCH_BLOCKING, SA_DISPATCH_ONE, SA_OK, SA_TRACK_CHANGES,
    SA_TRACK_CURRENT, Version,
)

A, B = "127.0.0.1", "127.0.0.2"
MODEL = parse_groups_conf(SAMPLE.replace("backup-units=2", "backup-units=2\n\t"
                                         "healthcheck-timeout=2000\n\thealthcheck {\n"
                                         "key=slow\nperiod=50\ntimeout=2000\n}"))
pytestmark = pytest.mark.timeout(60)


class AmfExecThread(ExecThread):
    def make_host(self, addr: str, sched: Any) -> ServiceHost:
        return ServiceHost(node_of(addr), [ClmService("mvlcge", boot_timestamp=BOOT),
                                           AmfService(MODEL)], sched)


@pytest.fixture
def execs(sock_dir, monkeypatch):
    et = AmfExecThread(sock_dir, [A, B]).start()
    monkeypatch.setenv("AIS_SOCKET", et.socket_of(A))  # restored afterwards, whatever on() set
    yield et
    et.stop()


class Component:
    """A component in this process, dispatched by a thread (BLOCKING)."""

    def __init__(self, name: str, answer: bool = True) -> None:
        self.events: list[tuple[str, Any]] = []
        self.answer = answer
        self.h = amf.initialize(amf.Callbacks(
            healthcheck_callback=self.hc, readiness_state_set_callback=self.rs,
            csi_set_callback=self.cs,
            csi_remove_callback=self.cr, component_terminate_callback=self.term,
            pending_operation_confirm_callback=self.pc,
            pending_operation_expired_callback=self.pe,
            external_component_restart_callback=self.er,
            external_component_control_callback=self.ec))
        self.h.component_register(name)
        self.t = threading.Thread(target=self.h.dispatch, args=(SA_DISPATCH_BLOCKING,),
                                  daemon=True)
        self.t.start()

    def respond(self, inv: int) -> None:
        try:
            amf.response(inv, SA_OK)
        except SaError:
            if not self.h.finalized:  # an answer racing our own finalize may be refused
                raise

    def hc(self, inv: int, comp: bytes, typ: int) -> None:
        self.events.append(("hc", typ))
        self.respond(inv)

    def rs(self, inv: int, comp: bytes, state: int) -> None:
        self.events.append(("readiness", state))
        self.respond(inv)

    def cs(self, inv: int, comp: bytes, csi: bytes, flags: int, ha: int, active: bytes,
           tr: int) -> None:
        self.events.append(("ha", (csi, ha, active, flags, tr)))
        self.respond(inv)

    def cr(self, inv: int, comp: bytes, csi: bytes, flags: int) -> None:
        self.events.append(("remove", csi))
        self.respond(inv)

    def term(self, inv: int, comp: bytes) -> None:
        self.events.append(("terminate", comp))
        self.respond(inv)

    def pc(self, inv: int, comp: bytes, flags: int) -> None:
        self.events.append(("confirm", flags))
        self.respond(inv)

    def pe(self, comp: bytes, flags: int) -> None:
        self.events.append(("expired", flags))

    def er(self, inv: int, comp: bytes) -> None:
        # answered before it is recorded: the test re-registers the component once it
        # sees the event, which drops an invocation still unanswered
        self.respond(inv)
        self.events.append(("ext restart", comp))

    def ec(self, inv: int, comp: bytes, action: int) -> None:
        self.events.append(("ext control", (comp, action)))
        self.respond(inv)

    def has(self, pred, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred(list(self.events)):
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self.h.finalize()
        self.t.join(10)
        assert not self.t.is_alive(), "a BLOCKING dispatch returns when its handle is finalized"


def test_library_calls_callbacks_and_errors_over_sockets(execs):
    on(execs, A)
    with pytest.raises(VersionError):
        amf.initialize(version=Version("B", 1, 1))
    ca = Component("comp_a_in_su_y")
    assert ca.h.comp_name_get() == b"comp_a_in_su_y"
    assert amf.component_capability_model_get("comp_a_in_su_y") == 5
    with pytest.raises(NotExist):
        amf.component_capability_model_get("comp_a_in_su_x")
    cb = Component("comp_b_in_su_y")
    assert ca.has(lambda ev: ("readiness", 2) in ev and any(
        e[0] == "ha" and e[1][1] == amf.SA_AMF_ACTIVE for e in ev))
    ha = next(e[1] for e in ca.events if e[0] == "ha")
    assert ha == (b"pgA", amf.SA_AMF_ACTIVE, b"comp_a_in_su_y", amf.SA_AMF_CSI_ADD_NEW_ISTANCE,
                  amf.SA_AMF_CSI_NEW_ASSIGN)
    assert ca.has(lambda ev: ev.count(("hc", amf.SA_AMF_HEARTBEAT)) >= 2)
    # every node answers the same
    for node in (A, B):
        on(execs, node)
        assert amf.readiness_state_get("comp_a_in_su_y") == amf.SA_AMF_IN_SERVICE
        assert amf.ha_state_get(b"comp_b_in_su_y", "pgB") == amf.SA_AMF_ACTIVE
        assert amf.pending_operation_get("comp_b_in_su_y") == 0
    with pytest.raises(NotExist):
        amf.ha_state_get("comp_b_in_su_y", "pgA")
    with pytest.raises(NotExist):
        amf.pending_operation_get("nobody")
    with amf.initialize() as other:
        with pytest.raises(Exist):
            other.component_register("comp_a_in_su_y")  # registered on node A
        with pytest.raises(NotExist):
            other.comp_name_get()
        with pytest.raises(BadOperation):
            other.component_unregister("comp_a_in_su_y")
    with pytest.raises(BadOperation):
        amf.error_report("x", "comp_a_in_su_x")
    with pytest.raises(InvalidParam):
        amf.response(10**9, SA_OK)
    with pytest.raises(InvalidParam):
        amf.response(1, 12345)
    with pytest.raises(InvalidParam):
        amf.error_report("x", "comp_a_in_su_y", 0, amf.ErrorDescriptor(probable_cause=-1))
    with pytest.raises(InvalidParam):
        ca.h.protection_group_track_start("pgA", 0x1FF)
    with pytest.raises(InvalidParam):
        amf.readiness_state_get("x" * 300)
    # an error report from a process on the other node fails the unit over nothing:
    # raidB goes out of service (no standby), cancel brings it back active
    on(execs, B)
    amf.error_report("watcher", "comp_a_in_su_y", time.time_ns(),
                     amf.ErrorDescriptor(probable_cause=amf.SA_AMF_SOFTWARE_ERROR))
    assert cb.has(lambda ev: ("readiness", amf.SA_AMF_OUT_OF_SERVICE) in ev)
    amf.error_cancel_all("comp_a_in_su_y")
    assert cb.has(lambda ev: [e for e in ev if e[0] == "ha"][-1][1][1] == amf.SA_AMF_ACTIVE
                  and len([e for e in ev if e[0] == "ha"]) == 3)
    on(execs, A)
    ca.h.component_unregister("comp_a_in_su_y")
    with pytest.raises(NotExist):
        ca.h.comp_name_get()
    ca.close()
    cb.close()
    with pytest.raises(BadHandle):
        cb.h.dispatch(SA_DISPATCH_ALL)


def test_protection_group_tracking_through_the_library(execs):
    on(execs, A)
    got: list[tuple[bytes, list, int, int, int]] = []
    h = amf.initialize(amf.Callbacks(
        protection_group_track_callback=lambda csi, buf, n, m, e: got.append((csi, buf, n, m, e))))
    small = amf.initialize(amf.Callbacks(
        protection_group_track_callback=lambda csi, buf, n, m, e: got.append((b"small", buf, n,
                                                                                m, e))))
    try:
        h.protection_group_track_start("pgA", SA_TRACK_CURRENT | SA_TRACK_CHANGES)
        small.protection_group_track_start("pgA", SA_TRACK_CURRENT, number_of_items=2)
        fd = h.selection_object()
        assert select.select([fd], [], [], 5)[0]
        h.dispatch(SA_DISPATCH_ONE)
        small.dispatch(SA_DISPATCH_ALL)
        assert got[0][0] == b"pgA" and got[0][2:] == (3, 3, SA_OK)
        assert [i.member.comp_name for i in got[0][1]] == [
            b"comp_a_in_su_x", b"comp_a_in_su_y", b"comp_a_in_su_z"]
        assert all(i.change == amf.SA_AMF_PROTECTION_GROUP_NO_CHANGE for i in got[0][1])
        assert got[1] == (b"small", [], 3, 3, NoSpace.code)
        del got[:]
        comps = [Component("comp_a_in_su_x"), Component("comp_b_in_su_x")]
        end = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < end:
            if select.select([fd], [], [], 0.1)[0]:
                h.dispatch(SA_DISPATCH_ALL)
        changed = [[(i.member.comp_name, i.member.readiness_state, i.member.ha_state)
                    for i in g[1] if i.change == amf.SA_AMF_PROTECTION_GROUP_STATE_CHANGE]
                   for g in got[:2]]
        assert changed == [[(b"comp_a_in_su_x", 2, 3)], [(b"comp_a_in_su_x", 2, 1)]]
        h.protection_group_track_stop("pgA")
        with pytest.raises(NotExist):
            h.protection_group_track_stop("pgA")
        for c in comps:
            c.close()
    finally:
        h.finalize()
        small.finalize()


GEVENT_CLIENT = r"""
from gevent import monkey; monkey.patch_all()
import gevent, sys
sys.path.insert(0, %r)
from saf import amf
from saf.types import SA_DISPATCH_BLOCKING
seen = []
def cs(inv, comp, csi, flags, ha, active, tr):
    seen.append(ha)
    amf.response(inv)
def rs(inv, comp, state):
    amf.response(inv)
def hc(inv, comp, t):
    seen.append("hc")
    amf.response(inv)
handles = []
for name in ("comp_a_in_su_z", "comp_b_in_su_z"):
    h = amf.initialize(amf.Callbacks(healthcheck_callback=hc, readiness_state_set_callback=rs,
                                     csi_set_callback=cs))
    h.component_register(name)
    handles.append((h, gevent.spawn(h.dispatch, SA_DISPATCH_BLOCKING)))
with gevent.Timeout(20):
    while seen.count(amf.SA_AMF_ACTIVE) < 2 or seen.count("hc") < 4:
        assert str(amf.readiness_state_get("comp_a_in_su_z")) != ""  # blocking calls meanwhile
        gevent.sleep(0.02)
for h, g in handles:
    h.finalize()
    g.join(timeout=5)
print("ok", seen.count(amf.SA_AMF_ACTIVE), all(g.dead for _, g in handles))
"""


def test_library_under_gevent(execs):
    env = dict(os.environ, AIS_SOCKET=execs.socket_of(B))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-c", GEVENT_CLIENT % root], env=env,
                       capture_output=True, text=True, timeout=40)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.split() == ["ok", "2", "True"]


def test_no_executive_is_try_again(tmp_path, monkeypatch):
    from saf.errors import TryAgain
    monkeypatch.setenv("AIS_SOCKET", str(tmp_path / "nobody.sock"))
    with pytest.raises(TryAgain):
        amf.initialize()
    with pytest.raises(TryAgain):
        amf.readiness_state_get("comp_a_in_su_x")


def test_healthcheck_keys_and_pending_operation_callbacks_through_the_library(execs):
    on(execs, A)
    ca = Component("comp_a_in_su_y")
    cb = Component("comp_b_in_su_y")
    assert ca.has(lambda ev: any(e[0] == "ha" for e in ev))
    ca.h.healthcheck_start("comp_a_in_su_y", "slow")
    with pytest.raises(Exist):
        ca.h.healthcheck_start("comp_a_in_su_y", "slow")
    with pytest.raises(NotExist):
        ca.h.healthcheck_start("comp_a_in_su_y", "nosuch")
    with pytest.raises(BadOperation):
        ca.h.healthcheck_start("comp_b_in_su_y", "slow")  # not registered through ca.h
    ca.h.healthcheck_stop("comp_a_in_su_y", "slow")
    with pytest.raises(NotExist):
        ca.h.healthcheck_stop("comp_a_in_su_y", "slow")
    # raidB (testamf3/4's unit) is shut down: each component hears it is confirmed
    amf.admin(amf.AMF_ADMIN_SHUTDOWN, "raidB")
    for c in (ca, cb):
        assert c.has(lambda ev: ("confirm", amf.SA_AMF_SHUTDOWN_OPERATION) in ev)
        assert not any(e[0] == "expired" for e in c.events)
    ca.close()
    cb.close()


def test_external_component_callbacks_reach_the_proxy_through_the_library(execs):
    on(execs, A)
    proxy = Component("comp_a_in_su_y")  # also proxies comp_b_in_su_y, an external one
    proxy.h.component_register("comp_b_in_su_y", "comp_a_in_su_y")
    assert proxy.h.comp_name_get() == b"comp_a_in_su_y"  # the proxy stays itself
    assert proxy.has(lambda ev: sum(e[0] == "ha" for e in ev) >= 2)
    amf.error_report("comp_a_in_su_y", "comp_b_in_su_y", 0, amf.ErrorDescriptor(
        probable_cause=aw.SA_AMF_SOFTWARE_ERROR,
        recommended_recovery=aw.SA_AMF_COMPONENT_RESTART))
    assert proxy.has(lambda ev: ("ext restart", b"comp_b_in_su_y") in ev)
    # the proxy restarts it: registering it again clears its error
    proxy.h.component_unregister("comp_b_in_su_y", "comp_a_in_su_y")
    proxy.h.component_register("comp_b_in_su_y", "comp_a_in_su_y")
    amf.admin(amf.AMF_ADMIN_LOCK, "raidB")
    assert proxy.has(lambda ev: ("ext control", (b"comp_b_in_su_y", aw.SA_AMF_POWER_OFF))
                     in ev)
    assert proxy.has(lambda ev: ("terminate", b"comp_a_in_su_y") in ev)
    assert ("terminate", b"comp_b_in_su_y") not in proxy.events, \
        "an external component gets no terminate callback"
    proxy.close()
