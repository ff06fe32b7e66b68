"""AMF healthcheck keys: ``healthcheck {`` blocks in groups.conf and
saAmfHealthcheckStart/Stop (AMF-invoked checks with the key's period and timeout),
on fake rings (FakeBus, manual clock, scripted components)."""
from __future__ import annotations

import pytest
from amf_harness import AmfCluster
from test_amf_models import units_conf

from ais.config import ConfigError, HealthcheckKey, parse_groups_conf
from saf import _amf_wire as aw
from saf.errors import SA_OK, BadOperation, Exist, NotExist

A, B = "127.0.0.1", "127.0.0.2"
pytestmark = pytest.mark.timeout(30)

FAST = "healthcheck {\nkey=fast\nperiod=20\ntimeout=10\n}\n"


def hc_call(cl: AmfCluster, p, msg_id: int, key: str, comp: str | None = None) -> int | None:
    return cl.request(p.addr, p.conn, msg_id,
                      aw.encode_names((comp or p.name).encode(), key.encode()))


def test_groups_conf_healthcheck_blocks_and_their_errors():
    m = parse_groups_conf(units_conf("2n", 2, FAST))
    g = m.groups[0]
    assert g.healthchecks == (HealthcheckKey("fast", 20.0, 10.0),)
    assert g.healthcheck("fast").period == 20.0 and g.healthcheck("slow") is None
    for extra, line, words in [
            (FAST + FAST, 9, "already defined on line 4"),
            ("healthcheck {\nkey=x\nperiod=20\n}\n", 4, "without timeout="),
            ("healthcheck {\nkey=x\nperiod=0\ntimeout=5\n}\n", 6, "greater than 0"),
            ("healthcheck {\nkey=x\nperiod=5\ntimeout=5\nlevel=2\n}\n", 8, "level")]:
        with pytest.raises(ConfigError) as e:
            parse_groups_conf(units_conf("2n", 2, extra), "g.conf")
        assert (e.value.path, e.value.line) == ("g.conf", line), (extra, str(e.value))
        assert words in str(e.value)


def test_a_started_key_sets_the_period_and_timeout_and_stop_restores_the_group_ones():
    cl = AmfCluster([A, B], units_conf("2n", 2, FAST))
    cl.form([A, B])
    p1, p2 = cl.proc(A, "c1"), cl.proc(B, "c2")
    base = p1.healthchecks
    cl.advance(1.0)
    slow = p1.healthchecks - base
    assert 8 <= slow <= 11, "the group's default period: 100 ms"
    assert hc_call(cl, p1, aw.AMF_REQ_HEALTHCHECK_START, "fast") == SA_OK
    base = p1.healthchecks
    cl.advance(1.0)
    assert 45 <= p1.healthchecks - base <= 51, "the key's period: 20 ms"
    assert p2.healthchecks < p1.healthchecks, "only the component that started it"
    assert hc_call(cl, p1, aw.AMF_REQ_HEALTHCHECK_START, "fast") == Exist.code
    assert hc_call(cl, p1, aw.AMF_REQ_HEALTHCHECK_STOP, "fast") == SA_OK
    assert hc_call(cl, p1, aw.AMF_REQ_HEALTHCHECK_STOP, "fast") == NotExist.code
    base = p1.healthchecks
    cl.advance(1.0)
    assert 8 <= p1.healthchecks - base <= 11
    assert cl.roles(A) == {"u1": "ACTIVE", "u2": "STANDBY"}


def test_a_key_timeout_detects_a_stopped_component_sooner():
    cl = AmfCluster([A], units_conf("2n", 2, FAST))
    cl.form([A])
    p1, p2 = cl.proc(A, "c1"), cl.proc(A, "c2")
    assert hc_call(cl, p1, aw.AMF_REQ_HEALTHCHECK_START, "fast") == SA_OK
    cl.advance(0.05)
    p1.stopped = True
    p2.take()
    cl.advance(0.035)  # within one key period + timeout; the group's would need 140 ms
    assert cl.amf(A).comps["c1"].error == aw.SA_AMF_NOT_RESPONDING
    assert p2.take() == ["ACTIVE"]


def test_a_stopped_component_finds_the_terminate_callback_when_it_runs_again():
    """Failed as not responding, the stopped c1 is told to terminate at once; resumed, it
    handles the callbacks that waited in order, the terminate callback last, while its
    standby c2 is active: it is not left acting as c1's active."""
    cl = AmfCluster([A, B], units_conf("2n", 2))
    cl.form([A, B])
    p1, p2 = cl.proc(A, "c1"), cl.proc(B, "c2")
    assert cl.roles(A) == {"u1": "ACTIVE", "u2": "STANDBY"}
    p1.take()
    p2.take()
    p1.stopped = True
    cl.advance(0.3)  # one period + timeout (140 ms) and then some
    assert cl.amf(B).comps["c1"].error == aw.SA_AMF_NOT_RESPONDING
    assert p2.take() == ["ACTIVE"]
    waiting = [f.msg_id for f in p1.conn.callbacks[p1._done:]]
    assert waiting[-1] == aw.AMF_CB_TERMINATE and waiting.count(aw.AMF_CB_TERMINATE) == 1
    p1.stopped = False
    p1.pump()
    cl.advance(0.5)
    assert p1.take()[-1] == "TERMINATE"
    assert cl.amf(A).comps["c1"].error == aw.SA_AMF_NOT_RESPONDING, "a late answer changes nothing"
    assert len(cl.digests()) == 1


def test_healthcheck_start_errors():
    cl = AmfCluster([A, B], units_conf("2n", 2, FAST))
    cl.form([A, B])
    p1, _ = cl.proc(A, "c1"), cl.proc(B, "c2")
    assert hc_call(cl, p1, aw.AMF_REQ_HEALTHCHECK_START, "nosuch") == NotExist.code
    assert hc_call(cl, p1, aw.AMF_REQ_HEALTHCHECK_START, "fast", "c2") == BadOperation.code
    assert hc_call(cl, p1, aw.AMF_REQ_HEALTHCHECK_START, "fast", "nosuch") == NotExist.code
    # A key does not outlive the registration it was started under.
    assert hc_call(cl, p1, aw.AMF_REQ_HEALTHCHECK_START, "fast") == SA_OK
    assert p1.unregister() == SA_OK
    assert p1.register() == SA_OK
    cl.settle()
    assert hc_call(cl, p1, aw.AMF_REQ_HEALTHCHECK_STOP, "fast") == NotExist.code
