"""AMF proxied components: a proxy registers a component with proxyCompName; the
component's callbacks go to the proxy's connection and it fails with its proxy.
On fake rings (FakeBus, manual clock, scripted components)."""
from __future__ import annotations

import pytest
from amf_harness import AmfCluster

from ais.amf_status import render
from saf import _amf_wire as aw
from saf.errors import SA_OK, BadOperation, NotExist

A, B = "127.0.0.1", "127.0.0.2"
pytestmark = pytest.mark.timeout(30)

CONF = """group {
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
}
group {
name=px
model=noredundancy
healthcheck {
key=fast
period=20
timeout=10
}
unit {
name=pu
component {
name=proxy1
model=x_active
}
}
protection {
name=pp
member=proxy1
}
}
"""


def proxied(cl: AmfCluster, proxy, comp: str, via: str = "proxy1") -> int | None:
    return cl.request(proxy.addr, proxy.conn, aw.AMF_REQ_REGISTER,
                      aw.encode_names(comp.encode(), via.encode()))


def callbacks_for(proxy, comp: str) -> list[int]:
    """Message ids of the callbacks naming ``comp`` on the proxy's connection."""
    out = []
    for f in proxy.conn.callbacks:
        if f.msg_id == aw.AMF_CB_READINESS_SET:
            name = aw.decode_readiness_set_cb_untrusted(f.body).comp_name
        elif f.msg_id == aw.AMF_CB_CSI_SET:
            name = aw.decode_csi_set_cb_untrusted(f.body).comp_name
        elif f.msg_id == aw.AMF_CB_HEALTHCHECK:
            name = aw.decode_healthcheck_cb_untrusted(f.body).comp_name
        else:
            continue
        if name == comp.encode():
            out.append(f.msg_id)
    return out


def test_a_proxied_component_is_served_through_its_proxy_and_fails_with_it():
    cl = AmfCluster([A, B], CONF)
    cl.form([A, B])
    proxy = cl.proc(A, "proxy1")
    assert proxied(cl, proxy, "c1") == SA_OK
    p2 = cl.proc(B, "c2")
    cl.advance(0.3)
    got = callbacks_for(proxy, "c1")
    assert got[:2] == [aw.AMF_CB_READINESS_SET, aw.AMF_CB_CSI_SET]
    assert aw.AMF_CB_HEALTHCHECK in got, "the proxy answers its healthchecks too"
    assert cl.roles(B)["u1"] == "ACTIVE" and cl.amf(B).comps["c1"].proxy == "proxy1"
    assert p2.take() == ["IN_SERVICE", "STANDBY"]
    rows = aw.decode_status_untrusted(aw.encode_status(cl.amf(B).status_rows()))
    assert {r.comp: r.proxy for r in rows} == {b"c1": b"proxy1", b"c2": b"", b"proxy1": b""}
    lines = render(rows).splitlines()
    assert [ln for ln in lines if "via proxy" in ln] == [
        "    c1 (p): on 127.0.0.1 via proxy proxy1, IN_SERVICE/ACTIVE"]
    proxy.kill()  # the proxy's process dies: c1 has nobody to relay for it
    assert not cl.amf(B).comps["c1"].registered
    assert p2.take() == ["ACTIVE"]
    assert len(cl.digests()) == 1
    assert "via proxy" not in render(cl.amf(B).status_rows())


def test_a_hung_proxy_fails_its_proxied_components():
    cl = AmfCluster([A], CONF)
    cl.form([A])
    proxy = cl.proc(A, "proxy1")
    assert proxied(cl, proxy, "c1") == SA_OK
    p2 = cl.proc(A, "c2")
    p2.take()
    assert cl.request(A, proxy.conn, aw.AMF_REQ_HEALTHCHECK_START,
                      aw.encode_names(b"proxy1", b"fast")) == SA_OK
    cl.advance(0.05)
    proxy.stopped = True
    # within the proxy's period + timeout (30 ms); c1's own checks (100 + 40 ms) could
    # not have noticed yet: c1 fails because its proxy did
    cl.advance(0.035)
    comps = cl.amf(A).comps
    assert comps["proxy1"].error == comps["c1"].error == aw.SA_AMF_NOT_RESPONDING
    assert p2.take() == ["ACTIVE"]
    # waiting for the proxy when it runs again: its own terminate callback (exiting, it
    # takes c1's registration with it)
    assert [(m, cb.comp_name) for m, cb in external_cbs(proxy)] == [
        (aw.AMF_CB_TERMINATE, b"proxy1")]


def test_proxy_registration_errors():
    cl = AmfCluster([A, B], CONF)
    cl.form([A, B])
    proxy = cl.proc(A, "proxy1", register=False)
    assert proxied(cl, proxy, "c1") == NotExist.code, "the proxy is not registered"
    assert proxy.register() == SA_OK
    assert proxied(cl, proxy, "c1", via="nosuch") == NotExist.code
    assert proxied(cl, proxy, "c1") == SA_OK
    # unregistering with another proxy than its own
    assert cl.request(A, proxy.conn, aw.AMF_REQ_UNREGISTER,
                      aw.encode_names(b"c1", b"c2")) == BadOperation.code
    assert cl.request(A, proxy.conn, aw.AMF_REQ_UNREGISTER,
                      aw.encode_names(b"c1", b"proxy1")) == SA_OK
    assert not cl.amf(B).comps["c1"].registered


# --- external components: restart and control callbacks to the proxy -------------------------

def external_cbs(proxy) -> list[tuple[int, aw.InvocationCb]]:
    """External restart/control callbacks on the proxy's connection, decoded."""
    return [(f.msg_id, aw.decode_invocation_cb_untrusted(f.body)) for f in proxy.conn.callbacks
            if f.msg_id in (aw.AMF_CB_EXT_RESTART, aw.AMF_CB_EXT_CONTROL,
                            aw.AMF_CB_TERMINATE)]


def answer(cl: AmfCluster, proxy, invocation: int, error: int = SA_OK) -> int | None:
    return cl.request(proxy.addr, proxy.conn, aw.AMF_REQ_RESPONSE,
                      aw.encode_response(aw.Response(invocation, error)))


def external_running() -> tuple[AmfCluster, object, object]:
    cl = AmfCluster([A, B], CONF)
    cl.form([A, B])
    proxy = cl.proc(A, "proxy1")
    assert proxied(cl, proxy, "c1") == SA_OK
    p2 = cl.proc(B, "c2")
    cl.advance(0.1)
    p2.take()
    assert cl.roles(B)["u1"] == "ACTIVE"
    return cl, proxy, p2


def test_component_restart_of_an_external_component_asks_its_proxy():
    cl, proxy, p2 = external_running()
    err, _ = cl.call(B, aw.AMF_REQ_ERROR_REPORT, aw.encode_error_report(aw.ErrorReport(
        b"operator", b"c1", 0, aw.ErrorDescriptor(
            probable_cause=aw.SA_AMF_SOFTWARE_ERROR,
            recommended_recovery=aw.SA_AMF_COMPONENT_RESTART))))
    assert err == SA_OK
    got = external_cbs(proxy)
    assert [(m, cb.comp_name) for m, cb in got] == [(aw.AMF_CB_EXT_RESTART, b"c1")], \
        "the proxy restarts it: no terminate callback, no control callback"
    assert p2.take() == ["ACTIVE"], "its unit failed over meanwhile"
    assert answer(cl, proxy, got[0][1].invocation) == SA_OK
    # the proxy restarted it: registering it again clears the error, u1 comes back standby
    assert cl.request(A, proxy.conn, aw.AMF_REQ_UNREGISTER,
                      aw.encode_names(b"c1", b"proxy1")) == SA_OK
    assert proxied(cl, proxy, "c1") == SA_OK
    cl.advance(0.1)
    assert cl.amf(B).comps["c1"].error == 0 and cl.roles(B)["u1"] == "STANDBY"
    assert answer(cl, proxy, got[0][1].invocation) != SA_OK, "answered once only"
    assert len(cl.digests()) == 1


def test_lock_of_an_external_components_unit_powers_it_off_through_its_proxy():
    cl, proxy, p2 = external_running()
    assert cl.admin(B, aw.AMF_ADMIN_LOCK, "u1") == SA_OK
    cl.advance(0.05)
    got = external_cbs(proxy)
    assert [(m, cb.comp_name, cb.flags) for m, cb in got] == [
        (aw.AMF_CB_EXT_CONTROL, b"c1", aw.SA_AMF_POWER_OFF)]
    assert p2.take() == ["ACTIVE"]
    assert cl.amf(A).comps["c1"].error == 0
    # an error answer: the component failed (replicated everywhere)
    assert answer(cl, proxy, got[0][1].invocation, aw.SA_AMF_SOFTWARE_ERROR) == SA_OK
    assert cl.amf(B).comps["c1"].error == aw.SA_AMF_SOFTWARE_ERROR
    assert len(cl.digests()) == 1


def test_an_unanswered_external_control_callback_is_a_failure():
    cl, proxy, _ = external_running()
    assert cl.admin(A, aw.AMF_ADMIN_SHUTDOWN, "u1") == SA_OK
    cl.advance(0.05)
    assert [(m, cb.flags) for m, cb in external_cbs(proxy)] == [
        (aw.AMF_CB_EXT_CONTROL, aw.SA_AMF_POWER_OFF)]
    assert cl.amf(B).comps["c1"].error == 0
    cl.advance(5.1)  # response-timeout (5000 ms default) passes without an answer
    assert cl.amf(B).comps["c1"].error == aw.SA_AMF_NOT_RESPONDING
    assert cl.amf(A).comps["proxy1"].error == 0, "the proxy itself is fine"
    # c1 does not respond: its proxy is asked to restart it (the external component's
    # terminate callback), so that it stops acting for the states taken from it
    assert [(m, cb.comp_name) for m, cb in external_cbs(proxy)][-1] == (
        aw.AMF_CB_EXT_RESTART, b"c1")
    assert len(cl.digests()) == 1
