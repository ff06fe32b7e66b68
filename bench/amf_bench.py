"""AMF failover latency with real executives and component processes.

    python bench/amf_bench.py [--runs N]

Three measurements, each with the default healthcheck settings (period
100 ms, timeout 40 ms) and with short ones (50 ms, 30 ms); the clock is
CLOCK_MONOTONIC, shared by every process of the machine:

* component SIGKILL -> the standby unit's ACTIVE callback (one executive);
* component SIGSTOP -> the same (detected by the missed healthcheck);
* executive kill -9 -> the standby's ACTIVE callback on the other node
  (two executives; includes the ring's failure detection, token timeout).

Units: raidB (active) and raidA (standby) of the sample groups.conf, each
component a small saf.amf program that answers every callback and prints the
time of its ACTIVE callback.  Prints min / median / max in ms per case.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "test"))
from cluster import Cluster  # noqa: E402

COMP = rf"""
import os, select, sys, time  # noqa: E402
sys.path.insert(0, {str(ROOT)!r})
from saf import amf  # noqa: E402
from saf.types import SA_DISPATCH_ALL  # noqa: E402
def hc(inv, comp, t): amf.response(inv)
def rs(inv, comp, s): amf.response(inv)
def cs(inv, comp, csi, flags, ha, active, tr):
    if ha == amf.SA_AMF_ACTIVE:
        print("ACTIVE", time.monotonic(), flush=True)
    elif ha == amf.SA_AMF_STANDBY:
        print("STANDBY", flush=True)
    amf.response(inv)
h = amf.initialize(amf.Callbacks(healthcheck_callback=hc, readiness_state_set_callback=rs,
                                 csi_set_callback=cs))
h.component_register(sys.argv[1])
fd = h.selection_object()
while True:
    select.select([fd], [], [])
    h.dispatch(SA_DISPATCH_ALL)
"""


class Comp:
    def __init__(self, c: Cluster, n: int, name: str) -> None:
        fd, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".out", dir=c.root)
        self.path = Path(path)
        with os.fdopen(fd, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-c", COMP, name],
                                         env=c.nodes[n].env(), stdout=out,
                                         stderr=subprocess.STDOUT, text=True)

    def text(self) -> str:
        return self.path.read_text()

    def wait(self, word: str, timeout: float = 20.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            t = self.text()
            if word in t:
                return t
            time.sleep(0.005)
        raise RuntimeError(f"no {word}: {self.text()[-500:]}")

    def active_at(self, timeout: float = 20.0) -> float:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            # complete lines only: print() may write "ACTIVE" before its number
            for line in self.text().split("\n")[:-1]:
                if line.startswith("ACTIVE "):
                    return float(line.split()[1])
            time.sleep(0.002)
        raise RuntimeError(f"no ACTIVE: {self.text()[-500:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(timeout=10)


def groups(period: int, timeout: int) -> str:
    text = (ROOT / "conf" / "groups.conf").read_text()
    return text.replace("backup-units=2", f"backup-units=2\n\thealthcheck-period={period}\n\t"
                        f"healthcheck-timeout={timeout}")


class BenchCluster(Cluster):
    groups_text = ""

    def write_conf(self, n: int, **kw):  # type: ignore[override]
        node = super().write_conf(n, **kw)
        path = self.root / "groups.conf"
        path.write_text(self.groups_text)
        node.conf.write_text(node.conf.read_text().replace(
            str(ROOT / "conf" / "groups.conf"), str(path)))
        return node


def one_trial(c: Cluster, active_node: int, standby_node: int, fault: str) -> float:
    b = [Comp(c, active_node, "comp_a_in_su_y"), Comp(c, active_node, "comp_b_in_su_y")]
    for p in b:
        p.wait("ACTIVE")
    a = [Comp(c, standby_node, "comp_a_in_su_x"), Comp(c, standby_node, "comp_b_in_su_x")]
    for p in a:
        p.wait("STANDBY")
    time.sleep(0.3)  # healthchecks running
    t0 = time.monotonic()
    if fault == "kill":
        b[0].proc.send_signal(signal.SIGKILL)
    elif fault == "stop":
        b[0].proc.send_signal(signal.SIGSTOP)
    else:
        c.nodes[active_node].proc.send_signal(signal.SIGKILL)
    t = max(p.active_at() for p in a) - t0
    for p in a + b:
        p.stop()
    time.sleep(0.5)  # every registration gone before the next trial
    return t * 1000


def run_case(root: Path, fault: str, period: int, timeout: int, runs: int) -> list[float]:
    out = []
    nodes = 2 if fault == "exec" else 1
    with BenchCluster(root, nodes) as c:
        c.groups_text = groups(period, timeout)
        c.start_all()
        c.wait_ring(list(range(1, nodes + 1)))
        for _ in range(runs):
            if fault == "exec":
                out.append(one_trial(c, 1, 2, fault))
                c.kill(1)
                c.start(1)
                c.wait_ring([1, 2])
                time.sleep(0.5)
            else:
                out.append(one_trial(c, 1, 1, fault))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        for period, timeout in ((100, 40), (50, 30)):
            for fault, what in (("kill", "component SIGKILL"), ("stop", "component SIGSTOP"),
                                ("exec", "executive kill -9")):
                root = Path(tmp) / f"{fault}-{period}"
                ms = run_case(root, fault, period, timeout, args.runs)
                print(f"healthcheck {period}/{timeout} ms  {what:18s} -> standby ACTIVE: "
                      f"min {min(ms):7.1f}  median {statistics.median(ms):7.1f}  "
                      f"max {max(ms):7.1f} ms  ({len(ms)} runs)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
