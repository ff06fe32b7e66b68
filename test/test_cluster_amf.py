"""AMF with real executives and the example programs as real processes (spec/amf.md 10).

The QUICKSTART walkthrough on one executive, SIGSTOP and SIGKILL of a
component, and the two-node failover when an executive is killed.  The
groups.conf is the sample with a generous healthcheck timeout, so that a
loaded machine does not fail a component that is merely slow.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cluster import ROOT, Cluster
from faulthub import fault_hub  # noqa: F401  (fixture)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

SAMPLE = (ROOT / "conf" / "groups.conf").read_text()
TEST_GROUPS = SAMPLE.replace("backup-units=2",
                             "backup-units=2\n\thealthcheck-period=100\n\t"
                             "healthcheck-timeout=1000")
ACTIVE = "SA_AMF_ACTIVE."
STANDBY = "SA_AMF_STANDBY."
QUIESCED = "SA_AMF_QUIESCED."
IN_SERVICE = "SA_AMF_IN_SERVICE."
OOS = "SA_AMF_OUT_OF_SERVICE."


class AmfCluster(Cluster):
    """Executives reading the test groups.conf."""

    def write_conf(self, n: int, **kw):  # type: ignore[override]
        node = super().write_conf(n, **kw)
        groups = self.root / "groups.conf"
        groups.write_text(TEST_GROUPS)
        node.conf.write_text(node.conf.read_text().replace(
            str(ROOT / "conf" / "groups.conf"), str(groups)))
        return node


class Prog:
    """One example program's process with its output collected in a thread."""

    def __init__(self, c: Cluster, n: int, i: int | str, *args: str) -> None:
        script = ROOT / "examples" / f"testamf{i}.py"
        self.proc = subprocess.Popen([sys.executable, str(script), *args],
                                     env=c.nodes[n].env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def states(self) -> list[str]:
        """The readiness / HA lines, as their last word."""
        return [ln.rsplit(" ", 1)[-1] for ln in list(self.lines)
                if ln.startswith(("ReadinessStateSetCallback", "CSISetCallback"))]

    def healthchecks(self) -> int:
        return sum(1 for ln in list(self.lines) if "HealthcheckCallback" in ln)

    def wait(self, pred, what: str, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred(self):
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; output:\n" + "\n".join(self.lines))

    def wait_states(self, want: list[str], timeout: float = 20.0) -> None:
        self.wait(lambda p: p.states() == want, f"states {want}", timeout)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def status(c: Cluster, n: int) -> str:
    """What ``python -m ais.amf_status`` prints on node n."""
    p = subprocess.run([sys.executable, "-m", "ais.amf_status"], env=c.nodes[n].env(),
                       capture_output=True, text=True, timeout=30, cwd=str(ROOT))
    assert p.returncode == 0, p.stderr
    return p.stdout


def unit_line(text: str, unit: str) -> str:
    return next(ln for ln in text.splitlines() if ln.strip().startswith(f"unit {unit}:"))


def same_status(c: Cluster, nodes: tuple[int, ...] = (1, 2), timeout: float = 10.0) -> str:
    """``ais.amf_status`` of ``nodes``, once it is the same on all of them."""
    end = time.monotonic() + timeout
    while len({status(c, n) for n in nodes}) > 1 and time.monotonic() < end:
        time.sleep(0.2)
    texts = {status(c, n) for n in nodes}
    assert len(texts) == 1, texts
    return texts.pop()


def hub_cluster(tmp_path: Path, hub: Any) -> AmfCluster:
    """Executives in the fault hub's namespaces, on its network."""
    return AmfCluster(tmp_path, hub.size, netns=hub.nss, addrs=hub.addrs,
                      bindnetaddr=hub.network, port=5405)


def test_quickstart_walkthrough_with_the_example_programs(tmp_path: Path) -> None:
    procs: list[Prog] = []

    def run(i: int | str, *args: str) -> Prog:
        p = Prog(c, 1, i, *args)
        procs.append(p)
        return p

    with AmfCluster(tmp_path, 1) as c:
        try:
            c.start(1)
            c.wait_ring([1])
            smoke = run("")  # testamf: tracks pgA (CURRENT | CHANGES) from the start
            smoke.wait(lambda p: "ProtectionGroupTrackCallback items 3 members 3" in p.lines,
                       "the current members of pgA")
            assert smoke.lines[:3] == ["component capability model get is 12 (should be 1)",
                                       "track start result is 1 (should be 1)",
                                       "track stop result is 1 (should be 1)"]
            assert [ln for ln in smoke.lines if ln.startswith("component name")] == [
                "component namecomp_a_in_su_x", "component namecomp_a_in_su_y",
                "component namecomp_a_in_su_z"]
            t3 = run(3)
            t3.wait(lambda p: "register result is 1 (should be 1)" in p.lines, "register")
            time.sleep(0.5)
            assert t3.states() == [] and t3.healthchecks() == 0, t3.lines
            t4 = run(4)
            for p in (t3, t4):
                p.wait_states([IN_SERVICE, ACTIVE])
                p.wait(lambda q: q.healthchecks() >= 3, "healthchecks")
            t1 = run(1)
            t1.wait(lambda p: "register result is 1 (should be 1)" in p.lines, "register")
            time.sleep(0.5)
            assert t1.states() == [], "testamf1 alone changes nothing"
            t2 = run(2)
            t2.wait(lambda p: "CANCELING ERROR." in p.lines, "the testamf2 script", 30)
            cycle = [IN_SERVICE, STANDBY]
            t2.wait_states(cycle + cycle + [QUIESCED, OOS] + cycle)
            lines = t2.lines
            assert lines.index("Unregistering component") < lines.index("Registering component") \
                < lines.index("REPORTING ERROR.") < lines.index("CANCELING ERROR.")
            t1.wait_states(cycle + [QUIESCED, OOS] + cycle + [QUIESCED, OOS] + cycle)
            t1.wait(lambda p: p.healthchecks() >= 3, "healthchecks")
            assert t3.states() == [IN_SERVICE, ACTIVE] and t4.states() == [IN_SERVICE, ACTIVE]
            text = status(c, 1)
            assert "role active" in unit_line(text, "raidB")
            assert "role standby" in unit_line(text, "raidA")
            # the tracker heard comp_a_in_su_y go IN_SERVICE then ACTIVE (change 4 each)
            assert smoke.lines.count("ProtectionGroupTrackCallback items 3 members 3") >= 3
            assert "\tchange is 4" in smoke.lines
            assert "comp_a_in_su_y (pgA): on 127.0.0.1, IN_SERVICE/ACTIVE" in text

            # Ctrl-Z on a component of the active unit: the standby takes over.
            t3.signal(signal.SIGSTOP)
            t4.wait_states([IN_SERVICE, ACTIVE, QUIESCED, OOS])
            for p in (t1, t2):
                p.wait(lambda q: q.states()[-1:] == [ACTIVE], "ACTIVE")
            text = status(c, 1)
            assert "role active" in unit_line(text, "raidA")
            assert "comp_a_in_su_y (pgA): on 127.0.0.1, OUT_OF_SERVICE/QUIESCED, error 30" in text
            # Resumed, the stopped process finds the terminate callback waiting: the
            # cluster failed it, and it must stop acting as comp_a_in_su_y's active.
            t3.signal(signal.SIGCONT)
            t3.wait(lambda p: "ComponentTerminateCallback" in p.lines,
                    "the terminate callback after SIGCONT")
            # Repair: the process is killed and started again; raidB comes back standby.
            t3.stop()
            time.sleep(0.5)
            t3b = run(3)
            for p in (t3b,):
                p.wait_states([IN_SERVICE, STANDBY])
            t4.wait_states([IN_SERVICE, ACTIVE, QUIESCED, OOS, IN_SERVICE, STANDBY])
            # SIGKILL of a component of the (now) active unit raidA.
            n1, n2 = len(t1.states()), len(t2.states())
            t1.signal(signal.SIGKILL)
            t2.wait(lambda p: p.states()[n2:] == [QUIESCED, OOS], "QUIESCED, OOS")
            for p in (t3b, t4):
                p.wait(lambda q: q.states()[-1:] == [ACTIVE], "ACTIVE")
            assert n1 and "role active" in unit_line(status(c, 1), "raidB")
            # negative checks of spec 10.8 through the library
            out = c.client(1, f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + NEGATIVE)
            assert out.returncode == 0 and out.stdout.split() == [
                "12", "14", "21", "21", "12", "12", "3"], out.stdout + out.stderr
        finally:
            for p in procs:
                p.stop()


NEGATIVE = """
from saf import amf
from saf.errors import SaError
from saf.types import Version
def code(fn):
    try:
        fn()
        return 1
    except SaError as e:
        return e.code
h = amf.initialize()
print(code(lambda: h.component_register("nobody")))
print(code(lambda: h.component_register("comp_b_in_su_y")))
print(code(lambda: amf.error_report("x", "comp_a_in_su_z")))
print(code(lambda: amf.error_cancel_all("comp_a_in_su_z")))
print(code(lambda: amf.ha_state_get("comp_a_in_su_y", "pgB")))
print(code(lambda: h.protection_group_track_start("pgZ", 1)))
print(code(lambda: amf.initialize(version=Version("B", 1, 1))))
"""


def test_two_executives_fail_over_when_one_is_killed(tmp_path: Path) -> None:
    procs: list[Prog] = []
    with AmfCluster(tmp_path, 2) as c:
        try:
            c.start_all()
            c.wait_ring([1, 2])
            t3, t4 = Prog(c, 1, 3), Prog(c, 1, 4)
            procs += [t3, t4]
            for p in (t3, t4):
                p.wait_states([IN_SERVICE, ACTIVE])
            t1, t2 = Prog(c, 2, 1), Prog(c, 2, 2)
            procs += [t1, t2]
            t2.wait(lambda p: "CANCELING ERROR." in p.lines, "the testamf2 script", 30)
            for p in (t1, t2):
                p.wait(lambda q: q.states()[-2:] == [IN_SERVICE, STANDBY], "standby")
            end = time.monotonic() + 10
            while status(c, 1) != status(c, 2) and time.monotonic() < end:
                time.sleep(0.2)
            s1 = status(c, 1)
            assert s1 == status(c, 2)
            assert "comp_a_in_su_y (pgA): on 127.0.0.1, IN_SERVICE/ACTIVE" in s1
            assert "comp_a_in_su_x (pgA): on 127.0.0.2, IN_SERVICE/STANDBY" in s1
            c.kill(1)  # kill -9 node 1's executive
            for p in (t1, t2):
                p.wait(lambda q: q.states()[-1:] == [ACTIVE], "ACTIVE on node 2", 30)
            s2 = status(c, 2)
            assert "role active" in unit_line(s2, "raidA")
            assert "comp_a_in_su_y (pgA): unregistered, OUT_OF_SERVICE/QUIESCED" in s2
            t3.stop(), t4.stop()
            # node 1 comes back empty: it gets the state in the sync round
            c.start(1)
            c.wait_ring([1, 2])
            end = time.monotonic() + 10
            while status(c, 1) != status(c, 2) and time.monotonic() < end:
                time.sleep(0.2)
            assert status(c, 1) == status(c, 2)
            t3b, t4b = Prog(c, 1, 3), Prog(c, 1, 4)
            procs += [t3b, t4b]
            for p in (t3b, t4b):
                p.wait_states([IN_SERVICE, STANDBY])
            end = time.monotonic() + 10
            while status(c, 1) != status(c, 2) and time.monotonic() < end:
                time.sleep(0.2)
            final = status(c, 1)
            assert final == status(c, 2)
            assert "role active" in unit_line(final, "raidA")
            assert "role standby" in unit_line(final, "raidB")
        finally:
            for p in procs:
                p.stop()


def launch(c: Cluster, procs: list[Prog], n: int, progs: list[tuple[int | str, ...]],
           states: list[str]) -> list[Prog]:
    """Start example programs on node n (each: testamf number, then arguments), add them
    to ``procs``, and wait until each has printed ``states``."""
    started = [Prog(c, n, i, *args) for i, *args in progs]
    procs += started
    for p in started:
        p.wait_states(states)
    return started


def b_active_on_1_a_standby_on_3(c: Cluster, procs: list[Prog]
                                 ) -> tuple[list[Prog], list[Prog]]:
    """Three executives in the fault hub's namespaces; raidB's programs on node 1
    (active), raidA's on node 3 (standby); every program is added to ``procs``."""
    for n in (1, 2, 3):
        c.start(n)
    for n in (1, 2, 3):
        c.wait_socket(n)
    c.wait_ring([1, 2, 3])
    b = launch(c, procs, 1, [(3,), (4,)], [IN_SERVICE, ACTIVE])
    a = launch(c, procs, 3, [(1,), (4, "-n", "comp_b_in_su_x")], [IN_SERVICE, STANDBY])
    return b, a


@pytest.mark.netns
def test_partition_healed_with_an_active_on_each_side_ends_with_one(tmp_path: Path,
                                                                    fault_hub) -> None:
    """raidB active on node 1, raidA standby on node 3; the cut [1, 2] | [3] leaves
    each side with an active unit (no quorum set); after the heal the side of the
    lowest node keeps its active, the other unit is standby, every node agrees."""
    hub = fault_hub
    procs: list[Prog] = []
    with hub_cluster(tmp_path, hub) as c:
        try:
            b, a = b_active_on_1_a_standby_on_3(c, procs)
            hub.partition([1, 2], [3])
            for p in a:
                p.wait_states([IN_SERVICE, STANDBY, ACTIVE], timeout=30)
            assert "role active" in unit_line(status(c, 1), "raidB")
            assert "role active" in unit_line(status(c, 3), "raidA")
            hub.heal()
            c.wait_ring([1, 2, 3], timeout=30)
            for p in a:
                p.wait_states([IN_SERVICE, STANDBY, ACTIVE, STANDBY], timeout=30)
            final = same_status(c, (1, 2, 3))
            assert final.count("role active") == 1
            assert "role active" in unit_line(final, "raidB")
            assert "role standby" in unit_line(final, "raidA")
            assert [p.states() for p in b] == [[IN_SERVICE, ACTIVE]] * 2
        finally:
            for p in procs:
                p.stop()


#: the sample as a 2n group: raidA..raidC are active, standby and spare
GROUPS_2N = SAMPLE.replace("model=nplusm\n\tactive-units=1\n\tbackup-units=2",
                           "model=2n\n\thealthcheck-period=100\n\thealthcheck-timeout=1000")
REMOVE = "CSIRemoveCallback"


class Amf2nCluster(AmfCluster):
    def write_conf(self, n: int, **kw):  # type: ignore[override]
        node = super().write_conf(n, **kw)
        (self.root / "groups.conf").write_text(GROUPS_2N)
        return node


def admin(c: Cluster, n: int, *args: str) -> subprocess.CompletedProcess:
    """``python -m ais.amf_admin ARGS`` on node n."""
    return subprocess.run([sys.executable, "-m", "ais.amf_admin", *args], env=c.nodes[n].env(),
                          capture_output=True, text=True, timeout=30, cwd=str(ROOT))


def test_2n_spare_and_admin_lock_unlock_shutdown_across_executives(tmp_path: Path) -> None:
    """2n on two executives: active raidB (node 1), standby raidA (node 2), spare raidC
    (node 1).  amf_admin lock raidB on node 2 removes raidB's CSIs, raidA takes over and
    the spare becomes standby; unlock brings raidB back as spare; shutdown of raidA waits
    for its components' stopping-complete, then raidC takes over."""
    procs: list[Prog] = []
    with Amf2nCluster(tmp_path, 2) as c:
        try:
            c.start_all()
            c.wait_ring([1, 2])
            b = launch(c, procs, 1, [(3,), (4,)], [IN_SERVICE, ACTIVE])
            a = launch(c, procs, 2, [(1,), (4, "-n", "comp_b_in_su_x")], [IN_SERVICE, STANDBY])
            z = launch(c, procs, 1, [(5,), (6,)], [IN_SERVICE])
            text = same_status(c)
            assert "role spare" in unit_line(text, "raidC")
            lock = admin(c, 2, "lock", "raidB")
            assert lock.returncode == 0, lock.stderr
            for p in b:
                p.wait(lambda q: q.states() == [IN_SERVICE, ACTIVE, OOS]
                       and any(ln.startswith(REMOVE) for ln in q.lines), "CSI removed, OOS")
                p.wait(lambda q: "ComponentTerminateCallback" in q.lines, "terminate")
            for p in a:
                p.wait_states([IN_SERVICE, STANDBY, ACTIVE])
            for p in z:
                p.wait_states([IN_SERVICE, STANDBY])
            text = same_status(c)
            assert "locked" in unit_line(text, "raidB") and "role active" in unit_line(
                text, "raidA")
            again = admin(c, 1, "lock", "raidB")
            assert again.returncode == 1 and "BAD_OPERATION" in again.stderr, again.stderr
            assert admin(c, 1, "unlock", "raidB").returncode == 0
            for p in b:
                p.wait_states([IN_SERVICE, ACTIVE, OOS, IN_SERVICE])
            shut = admin(c, 1, "shutdown", "raidA")
            assert shut.returncode == 0, shut.stderr
            for p in a:
                p.wait(lambda q: q.states()[3:] == ["SA_AMF_STOPPING.", OOS]
                       and any(ln.startswith(REMOVE) for ln in q.lines), "shut down")
            for p in z:
                p.wait_states([IN_SERVICE, STANDBY, ACTIVE])
            for p in b:
                p.wait_states([IN_SERVICE, ACTIVE, OOS, IN_SERVICE, STANDBY])
            text = same_status(c)
            assert "locked" in unit_line(text, "raidA")
            assert "role active" in unit_line(text, "raidC")
            assert "role standby" in unit_line(text, "raidB")
            # node 1 hosts raidB and raidC: a node lock takes both out, unlock brings them back
            assert admin(c, 2, "lock-node", "127.0.0.1").returncode == 0
            for p in b + z:
                p.wait(lambda q: "ComponentTerminateCallback" in q.lines[-3:], "terminate")
            text = same_status(c)
            assert "locked" in unit_line(text, "raidB") and "locked" in unit_line(text, "raidC")
            assert admin(c, 2, "unlock-node", "127.0.0.1").returncode == 0
            end = time.monotonic() + 20
            while status(c, 2).count("role active") != 1 and time.monotonic() < end:
                time.sleep(0.2)
            text = same_status(c)
            assert text.count("role active") == 1 and "locked" in unit_line(text, "raidA"), text
        finally:
            for p in procs:
                p.stop()


def spawned_groups() -> str:
    """2n; every component started by the executive of node 1 (u on node 1's address)."""
    py = sys.executable
    units = "".join(f"""unit {{
name=raid{u}
node=127.0.0.1
component {{
name=comp_a_in_su_{x}
model=x_active
instantiate={py} {ROOT}/examples/testamf3.py -h 1000 -n comp_a_in_su_{x}
}}
component {{
name=comp_b_in_su_{x}
model=x_active
instantiate={py} {ROOT}/examples/testamf4.py -h 1000 -n comp_b_in_su_{x}
}}
}}
""" for u, x in (("A", "x"), ("B", "y")))
    return ("group {\nname=raid\nmodel=2n\nhealthcheck-period=100\nhealthcheck-timeout=1000\n"
            + units + "protection {\nname=pgA\nmember=comp_a_in_su_x\nmember=comp_a_in_su_y\n}\n"
            "protection {\nname=pgB\nmember=comp_b_in_su_x\nmember=comp_b_in_su_y\n}\n}\n")


def children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        out.update(int(x) for x in (task / "children").read_text().split())
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


class SpawnCluster(AmfCluster):
    def write_conf(self, n: int, **kw):  # type: ignore[override]
        node = super().write_conf(n, **kw)
        (self.root / "groups.conf").write_text(spawned_groups())
        return node


def test_the_executive_starts_restarts_and_reaps_its_components(tmp_path: Path) -> None:
    """Components with instantiate= are started by node 1's executive (node=), a killed
    one is started again (its unit comes back as standby), and kill -9 of the executive
    takes its component processes with it."""
    with SpawnCluster(tmp_path, 2) as c:
        c.start_all()
        c.wait_ring([1, 2])
        exec_pid = c.nodes[1].proc.pid

        def registered(text: str) -> int:
            return text.count("on 127.0.0.1, IN_SERVICE/")

        end = time.monotonic() + 30
        while registered(status(c, 2)) < 4 and time.monotonic() < end:
            time.sleep(0.2)
        text = same_status(c)
        assert registered(text) == 4, text
        # the unit whose components registered first is active (they start together)
        active, standby = ("A", "B") if "role active" in unit_line(text, "raidA") else ("B", "A")
        assert "role standby" in unit_line(text, f"raid{standby}"), text
        kids = children(exec_pid)
        assert len(kids) == 4
        comp = "comp_a_in_su_x" if active == "A" else "comp_a_in_su_y"
        victim = next(pid for pid in kids if comp in Path(f"/proc/{pid}/cmdline").read_text())
        os.kill(victim, signal.SIGKILL)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            text = status(c, 2)
            if "role standby" in unit_line(text, f"raid{active}") and registered(text) == 4:
                break
            time.sleep(0.2)
        assert "role active" in unit_line(text, f"raid{standby}"), text
        assert "role standby" in unit_line(text, f"raid{active}"), text
        kids = children(exec_pid)
        assert len(kids) == 4 and victim not in kids
        c.kill(1)
        end = time.monotonic() + 10
        while any(alive(pid) for pid in kids) and time.monotonic() < end:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in kids), "orphaned component processes"


GROUPS_N_PLUS_1 = """group {
\tname=nplus1
\tmodel=nway
\tbackup-units=1
\thealthcheck-period=100
\thealthcheck-timeout=1000
""" + "".join(f"""\tunit {{
\t\tname=nu{i}
\t\tcomponent {{
\t\t\tname=k{i}
\t\t\tmodel=x_active
\t\t}}
\t}}
""" for i in ("1", "2", "s")) + """\tprotection {
\t\tname=csi1
\t\tmember=k1
\t\tmember=ks
\t}
\tprotection {
\t\tname=csi2
\t\tmember=k2
\t\tmember=ks
\t}
}
"""


class NPlus1Cluster(AmfCluster):
    def write_conf(self, n: int, **kw):  # type: ignore[override]
        node = super().write_conf(n, **kw)
        (self.root / "groups.conf").write_text(GROUPS_N_PLUS_1)
        return node


def test_n_plus_1_standby_takes_over_one_csi_across_executives(tmp_path: Path) -> None:
    """One component standing by for the CSIs of two actives (several CSIs per component):
    when one active is killed it becomes active for that CSI only."""
    procs: list[Prog] = []
    with NPlus1Cluster(tmp_path, 2) as c:
        try:
            c.start_all()
            c.wait_ring([1, 2])
            k1, k2 = Prog(c, 1, 1, "-n", "k1"), Prog(c, 1, 1, "-n", "k2")
            procs += [k1, k2]
            for p in (k1, k2):
                p.wait_states([IN_SERVICE, ACTIVE])
            ks = Prog(c, 2, 1, "-n", "ks")
            procs.append(ks)
            ks.wait_states([IN_SERVICE, STANDBY, STANDBY])
            text = same_status(c)
            assert "ks (csi1): on 127.0.0.2, IN_SERVICE/STANDBY" in text
            assert "ks (csi2): on 127.0.0.2, IN_SERVICE/STANDBY" in text
            k1.stop()  # kill -9 of the active for csi1
            ks.wait(lambda q: q.states()[3:] == [ACTIVE], "ks active for csi1", 30)
            assert any("for CSI 'csi1' requested to enter hastate SA_AMF_ACTIVE" in ln
                       for ln in ks.lines)
            end = time.monotonic() + 10
            while "k1 (csi1): unregistered" not in status(c, 1) and time.monotonic() < end:
                time.sleep(0.2)
            text = same_status(c)
            assert "ks (csi1): on 127.0.0.2, IN_SERVICE/ACTIVE" in text
            assert "ks (csi2): on 127.0.0.2, IN_SERVICE/STANDBY" in text
            assert "k2 (csi2): on 127.0.0.1, IN_SERVICE/ACTIVE" in text
            assert k2.states() == [IN_SERVICE, ACTIVE]
        finally:
            for p in procs:
                p.stop()


@pytest.mark.netns
@pytest.mark.timeout(240)
def test_failovers_under_loss_leave_one_active_agreed_everywhere(tmp_path: Path,
                                                                 fault_hub) -> None:
    """At 10 % loss both ways on every link: a component process killed -9 (its node
    lives) fails its unit over to the standby on another node; the process started
    again makes its unit standby (no failback); then the new active's executive is
    killed -9 and the unit on node 1 is active again.  After each step every live node
    shows the same state with exactly one active unit."""
    hub = fault_hub
    procs: list[Prog] = []

    def agreed(nodes: tuple[int, ...]) -> str:
        text = same_status(c, nodes, timeout=30)
        assert text.count("role active") == 1, text
        return text

    with hub_cluster(tmp_path, hub) as c:
        try:
            b, a = b_active_on_1_a_standby_on_3(c, procs)
            hub.set(loss=0.10)
            b[0].proc.kill()  # testamf3 (comp_a_in_su_y) dies; its executive lives
            b[0].proc.wait(timeout=10)
            for p in a:
                p.wait_states([IN_SERVICE, STANDBY, ACTIVE], timeout=30)
            b[1].wait(lambda q: q.states()[-2:] == [QUIESCED, OOS], "raidB quiesced", 30)
            text = agreed((1, 2, 3))
            assert "role active" in unit_line(text, "raidA")
            b3 = Prog(c, 1, 3)  # started again: raidB comes back as standby
            procs.append(b3)
            b3.wait_states([IN_SERVICE, STANDBY], timeout=30)
            text = agreed((1, 2, 3))
            assert "role standby" in unit_line(text, "raidB")
            assert "role active" in unit_line(text, "raidA")
            c.kill(3)  # the active unit's executive, kill -9
            c.wait_ring([1, 2], timeout=30)
            for p in (b3, b[1]):
                p.wait(lambda q: q.states()[-1:] == [ACTIVE], "raidB active again", 30)
            text = agreed((1, 2))
            assert "role active" in unit_line(text, "raidB")
            assert "comp_a_in_su_x (pgA): unregistered" in text
            dropped = sum(v["dropped"] for v in hub.stats().values())
            assert dropped >= 10, hub.stats()  # the loss was real
        finally:
            hub.heal()
            for p in procs:
                p.stop()


@pytest.mark.netns
def test_a_component_run_on_both_sides_of_a_partition_is_stopped_on_one(tmp_path: Path,
                                                                         fault_hub) -> None:
    """testamf3 runs on node 1; while node 3 is cut off, a second testamf3 there
    registers the same component on that side.  After the heal the merge keeps node
    1's registration (the lowest side's), and node 3's process gets the terminate
    callback; every node agrees."""
    hub = fault_hub
    procs: list[Prog] = []
    with hub_cluster(tmp_path, hub) as c:
        try:
            b, a = b_active_on_1_a_standby_on_3(c, procs)
            second = Prog(c, 3, 3)
            procs.append(second)
            second.wait(lambda p: any("register result is 14" in ln for ln in p.lines),
                        "EXIST while the ring is whole")
            second.stop()
            hub.partition([1, 2], [3])
            c.wait_ring([3], timeout=30)
            second = Prog(c, 3, 3)
            procs.append(second)
            second.wait(lambda p: any("register result is 1 " in ln for ln in p.lines),
                        "registered on node 3's side")
            hub.heal()
            c.wait_ring([1, 2, 3], timeout=30)
            second.wait(lambda p: "ComponentTerminateCallback" in p.lines, "terminate", 30)
            assert "ComponentTerminateCallback" not in b[0].lines
            final = same_status(c, (1, 2, 3))
            assert f"comp_a_in_su_y (pgA): on {hub.addrs[0]}," in final, final
            assert final.count("role active") == 1
        finally:
            for p in procs:
                p.stop()
