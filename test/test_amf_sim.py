"""AMF under the seeded service simulator: every live node holds the same AMF state
after every fault schedule (``ais.servicesim.check_amf``)."""
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
    assert any("AMF states" in v.detail for seed in range(12)
               for v in servicesim.ServiceSim(seed, ADMIN).run().violations)
