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
