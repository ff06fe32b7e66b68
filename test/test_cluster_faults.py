"""Issue 7's findings 1-6 on real executives behind the fault hub.

Three executives (``python aisexec.py``), each in its own network namespace,
talk multicast through ``faulthub.FaultHub``, which loses, delays, reorders,
cuts or drops large frames per (source node, destination node).  Clients are
``test/fault_agent.py`` processes using ``saf.ckpt`` inside a node's
namespace.  Each test reproduces one finding of the issue and asserts the
behaviour the issue asks for; each of them failed on the code before the
fixes (sync, merge, safe acknowledgement, fail to receive, resume, loss).

Every test stops its processes by pid (``Cluster.stop_all``), bounds every
wait by time, and the hub fixture removes its namespaces and TAPs even when
the test fails.
"""
from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster import Cluster
from faulthub import FaultHub, fault_hub  # noqa: F401  (fixture)

pytestmark = [pytest.mark.cluster, pytest.mark.netns]

AGENT = str(Path(__file__).resolve().parent / "fault_agent.py")


# ---- helpers ---------------------------------------------------------------------------

def cluster(tmp_path: Path, hub: FaultHub, **kw: object) -> Cluster:
    return Cluster(tmp_path, hub.size, netns=hub.nss, addrs=hub.addrs,
                   bindnetaddr=hub.network, port=5405, **kw)


def start(c: Cluster, ns: list[int] | None = None) -> None:
    ns = ns or list(c.nodes)
    for n in ns:
        c.start(n)
    for n in ns:
        c.wait_socket(n)
    c.wait_ring(ns)


def agent(c: Cluster, n: int, *args: str, timeout: float = 60) -> str:
    """Run one fault_agent operation as a client of node n; its output."""
    p = c.client(n, AGENT, *args, timeout=timeout)
    assert p.returncode == 0, f"agent {args} on node {n} failed:\n{p.stdout}\n{p.stderr[-3000:]}"
    return p.stdout.strip()


def background(c: Cluster, n: int, *args: str) -> subprocess.Popen:
    node = c.nodes[n]
    return subprocess.Popen(["ip", "netns", "exec", node.netns, sys.executable, AGENT, *args],
                            env=node.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(p: subprocess.Popen, timeout: float = 60) -> list[float]:
    """Wait for a ``writeloop`` agent; the CLOCK_MONOTONIC times of its completed writes."""
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
    assert p.returncode == 0, f"writer failed:\n{out}\n{err[-3000:]}"
    lines = out.splitlines()
    assert lines and lines[0].startswith("done"), out
    return [float(t) for t in lines[1].split()[1:]] if len(lines) > 1 else []


def ring_counts(c: Cluster) -> dict[int, int]:
    return {n: len(node.rings()) for n, node in c.nodes.items()}


def wait_rejoined(c: Cluster, before: dict[int, int], timeout: float = 30) -> None:
    """Wait until every node reported a ring formed after ``before`` and all agree on a
    ring holding every node (a restarted node's log keeps its old lines, so the last
    line alone could be stale)."""
    want = sorted(node.addr for node in c.nodes.values())
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        rings = {n: node.rings() for n, node in c.nodes.items()}
        if all(len(r) > before[n] and sorted(r[-1][1]) == want for n, r in rings.items()) \
                and len({r[-1][0] for r in rings.values()}) == 1:
            return
        time.sleep(0.02)
    raise AssertionError(f"no ring of every node within {timeout}s: "
                         + "; ".join(f"node {n}: {node.rings()[-3:]}"
                                     for n, node in c.nodes.items()))


def reads(c: Cluster, name: str, section: str, ns: list[int] | None = None) -> dict[int, str]:
    return {n: agent(c, n, "read", name, section) for n in (ns or list(c.nodes))}


# ---- the hub itself ------------------------------------------------------------------------

RECEIVER = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9999))
s.settimeout(0.2)
print("ready", flush=True)
counts = {"late": 0}
top = -1
start = time.monotonic()
quiet = None
while time.monotonic() < start + 20:
    try:
        data = s.recv(65536)
    except socket.timeout:
        last = quiet if quiet is not None else start + 1.0  # nothing at all: 1.5 s
        if time.monotonic() - last > 0.5:
            break
        continue
    quiet = time.monotonic()
    kind, seq = data[:1].decode(), int(data[1:7])
    counts[kind] = counts.get(kind, 0) + 1
    counts["late"] += seq < top  # overtaken by a later datagram
    top = max(top, seq)
print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())), flush=True)
"""

SENDER = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(300):
    s.sendto(b"s%06d" % (2 * i) + b"." * 100, (sys.argv[1], 9999))
    s.sendto(b"L%06d" % (2 * i + 1) + b"." * 1200, (sys.argv[1], 9999))
    if i % 20 == 0:
        time.sleep(0.01)  # stay far below any queue limit
"""


def udp_counts(hub: FaultHub, src: int, dst: int) -> dict[str, int]:
    """Send 300 small and 300 large datagrams, numbered, from node src to node dst:
    how many of each arrived and how many were overtaken."""
    rx = subprocess.Popen(["ip", "netns", "exec", hub.nss[dst - 1], sys.executable, "-c",
                           RECEIVER, hub.addrs[dst - 1]], stdout=subprocess.PIPE, text=True)
    try:
        assert rx.stdout.readline().strip() == "ready"
        subprocess.run(["ip", "netns", "exec", hub.nss[src - 1], sys.executable, "-c", SENDER,
                        hub.addrs[dst - 1]], check=True, timeout=30)
        out, _ = rx.communicate(timeout=30)
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait(timeout=10)
    return {k: int(v) for k, v in (kv.split("=") for kv in out.split())}


@pytest.mark.timeout(90)
def test_fault_hub_loses_delays_cuts_and_drops_large_frames_per_direction(fault_hub) -> None:
    hub = fault_hub
    clean = {"L": 300, "s": 300, "late": 0}
    assert udp_counts(hub, 1, 2) == clean
    hub.set(1, 2, loss=0.5, drop_above=800)
    got = udp_counts(hub, 1, 2)
    assert "L" not in got and 90 <= got["s"] <= 210, got  # seeded: far from the bounds
    assert udp_counts(hub, 2, 1) == clean  # the other direction untouched
    hub.set(3, 1, delay_ms=5, jitter_ms=2, reorder=0.2)
    got = udp_counts(hub, 3, 1)
    assert got["L"] == got["s"] == 300 and got["late"] > 0, got  # all there, not in order
    hub.heal()
    hub.cut(2, 1)
    assert udp_counts(hub, 2, 1) == {"late": 0}
    assert udp_counts(hub, 1, 2) == clean
    hub.heal()
    hub.partition([1], [2, 3])
    assert udp_counts(hub, 3, 1) == {"late": 0}
    assert udp_counts(hub, 2, 3) == clean  # within a side: clean
    hub.heal()
    assert udp_counts(hub, 2, 1) == clean


# ---- finding 1: a rolling restart deletes everything ------------------------------------

@pytest.mark.timeout(120)
def test_rolling_restart_keeps_every_checkpoint_byte(tmp_path, fault_hub) -> None:
    """Nodes 1 and 2 are killed and restarted one after another, each soon after the
    previous one rejoined (its sync still running); node 3 is never restarted, so
    some member always holds everything.  At the end every node reads every
    checkpoint with the bytes written."""
    hub = fault_hub
    with cluster(tmp_path, hub) as c:
        start(c)
        ref = {}
        for name, nsect, size in (("big", 8, 1 << 20), ("small-a", 3, 1000),
                                  ("small-b", 1, 100)):
            assert agent(c, 3, "fill", name, str(nsect), str(size), timeout=120) == "ok"
            ref[name] = agent(c, 3, "dump", name)
            assert ref[name].startswith(f"dump {nsect} ")
        # a little latency makes each sync round take longer, so the next kill cuts it
        hub.set(delay_ms=2, jitter_ms=1)
        for victim in (1, 2, 1, 2, 1):
            before = ring_counts(c)
            c.kill(victim)
            c.start(victim)
            c.wait_socket(victim)
            wait_rejoined(c, before)
            time.sleep(0.3)  # soon after it rejoined
        hub.heal()
        c.wait_ring([1, 2, 3], timeout=30)
        # Sync may still be streaming: poll, bounded, then compare every byte.
        end = time.monotonic() + 15
        while True:
            got = {(n, name): agent(c, n, "dump", name, timeout=120)
                   for n in (1, 2, 3) for name in ref}
            if all(got[(n, name)] == ref[name] for (n, name) in got) \
                    or time.monotonic() > end:
                break
            time.sleep(1.0)
        wrong = {k: v for k, v in got.items() if v != ref[k[1]]}
        assert not wrong, f"expected {ref}, nodes hold {wrong}"


# ---- finding 2: replicas differ for good after a partition heals -------------------------

@pytest.mark.timeout(150)
def test_partition_heal_leaves_identical_bytes_on_every_node(tmp_path, fault_hub) -> None:
    """Around each split, one client on each side writes the same section.  Just
    before, frames over 800 bytes stop crossing the coming split (both ways) while
    the small token still circulates: each write is delivered on its own side only,
    behind a gap, in the old ring.  Then the cut; after the heal every node must
    read the same bytes -- for three split/heal cycles with different sides."""
    hub = fault_hub
    with cluster(tmp_path, hub) as c:
        start(c)
        assert agent(c, 1, "fill", "split", "2", "1024") == "ok"
        for cycle, (left, right) in enumerate((([1, 2], [3]), ([1], [2, 3]), ([1, 3], [2]))):
            go = time.monotonic() + 1.5  # both writers have opened the checkpoint by then
            writers = [background(c, side[0], "write", "split", "s000",
                                  f"{tag}{cycle}".ljust(1000, tag), str(go))
                       for side, tag in ((left, "L"), (right, "R"))]
            time.sleep(max(0.0, go - 0.2 - time.monotonic()))
            hub.set(left, right, drop_above=800)
            hub.set(right, left, drop_above=800)
            time.sleep(1.2)  # both writes sent, neither crossed
            hub.partition(left, right)
            for w in writers:
                out, err = w.communicate(timeout=60)
                # a write caught by the split may succeed or fail: convergence is checked
                assert w.returncode == 0 and out.split()[:1] in (["ok"], ["error"]), \
                    err[-3000:]
            c.wait_ring(left, on=left, timeout=20)
            c.wait_ring(right, on=right, timeout=20)
            hub.heal()
            c.wait_ring([1, 2, 3], timeout=20)
            end = time.monotonic() + 5
            while True:  # bounded: a merge still being installed gets a moment
                got = {n: agent(c, n, "dump", "split") for n in (1, 2, 3)}
                if len(set(got.values())) == 1 or time.monotonic() > end:
                    break
                time.sleep(0.5)
            values = reads(c, "split", "s000")
            assert len(set(got.values())) == 1, (
                f"cycle {cycle} ({left} | {right}): nodes differ: {got}; s000: {values}")
            assert got[1].startswith("dump 2 ")


# ---- finding 3: acknowledged writes lost -------------------------------------------------

@pytest.mark.timeout(180)
def test_write_acknowledged_under_loss_survives_its_node_killed_at_once(
        tmp_path, fault_hub) -> None:
    """At 10 % loss, a SA_CKPT_WR_ALL_REPLICAS write returns and its node is killed -9
    at once (by the client itself, no delay): every survivor holds that write."""
    hub = fault_hub
    with cluster(tmp_path, hub) as c:
        start(c)
        assert agent(c, 1, "fill", "acked", "1", "64") == "ok"
        hub.set(loss=0.10)
        lost = []
        for rnd in range(10):
            w = rnd % 3 + 1
            survivors = [n for n in (1, 2, 3) if n != w]
            # ~36 frames: the last token visits' frames are the ones at risk
            value = f"round-{rnd}-" + "x" * 48000
            before = ring_counts(c)
            assert agent(c, w, "writekill", "acked", "ack", value,
                         str(c.nodes[w].proc.pid)) == "ok"
            c.nodes[w].proc.wait(timeout=10)
            c.wait_ring(survivors, timeout=30)
            got = reads(c, "acked", "ack", survivors)
            want = (f"value {value[:64]} {len(value)} "
                    + hashlib.sha256(value.encode()).hexdigest()[:16])
            if any(v != want for v in got.values()):
                lost.append((rnd, w, got))
                break  # one is enough to fail
            c.start(w)
            c.wait_socket(w)
            wait_rejoined(c, before)
        assert not lost, f"acknowledged writes missing on survivors: {lost}"


# ---- finding 4: a silent hang when one node cannot receive large frames ------------------

FAILED_TO_RECEIVE = re.compile(r"fail(ed|s)? to receive|fail-to-receive|stopped receiving",
                               re.IGNORECASE)


@pytest.mark.timeout(150)
def test_node_that_cannot_receive_large_frames_is_expelled_and_writers_go_on(
        tmp_path, fault_hub) -> None:
    """Frames larger than 800 bytes to node 3 are dropped (one direction only; its
    own frames and every small frame still pass).  Writers on nodes 1 and 2 keep
    completing writes during the fault, node 3 is expelled with a log line saying
    it failed to receive, and once the fault clears the three form one ring again."""
    hub = fault_hub
    with cluster(tmp_path, hub) as c:
        start(c)
        assert agent(c, 1, "fill", "big-frames", "2", "1024") == "ok"
        before = ring_counts(c)
        t0 = time.monotonic() + 2.0  # the writers have opened their checkpoint by then
        fault = 20.0
        writers = [background(c, n, "writeloop", "big-frames", f"s00{n - 1}", f"W{n}",
                              str(t0 + fault), "1024", str(t0)) for n in (1, 2)]
        time.sleep(max(0.0, t0 - time.monotonic()))
        hub.set(None, 3, drop_above=800)
        time.sleep(max(0.0, t0 + fault - time.monotonic()))
        expelled = [r for r in c.nodes[1].rings()[before[1]:]
                    if c.nodes[3].addr not in r[1]]
        hub.heal()  # before waiting for the writers: today they are stuck until it clears
        times = [finish(w, timeout=60) for w in writers]
        logs = "".join(node.log_text() for node in c.nodes.values())
        late = [sum(1 for t in ts if t > t0 + fault / 2) for ts in times]
        logged = FAILED_TO_RECEIVE.search(logs)
        # Behaviour, not speed: both writers still complete writes in the second half
        # of the fault, node 3 was expelled and that was logged.
        assert expelled and logged and all(n >= 10 for n in late), (
            f"rings without node 3 formed on node 1: {expelled}; failed-to-receive logged: "
            f"{bool(logged)}; writes completed in the fault's 2nd half: {late}")
        c.wait_ring([1, 2, 3], timeout=30)  # whole again once the fault cleared


# ---- finding 5: a resuming node splits the healthy ones ----------------------------------

@pytest.mark.timeout(150)
def test_resumed_node_never_splits_the_healthy_members(tmp_path, fault_hub) -> None:
    """Node 3 is SIGSTOPped for 3 s (long enough to be dropped from the ring) and
    resumed, six times.  Nodes 1 and 2 must never form rings apart from each other,
    and each resume costs them at most one re-formation."""
    hub = fault_hub
    with cluster(tmp_path, hub) as c:
        start(c)
        a1, a2 = c.nodes[1].addr, c.nodes[2].addr
        base = ring_counts(c)  # rings of the start-up do not count
        extra = []
        for rnd in range(6):
            c.pause(3)
            c.wait_ring([1, 2], on=[1, 2], timeout=20)
            time.sleep(1.0)
            before = ring_counts(c)
            c.resume(3)
            wait_rejoined(c, before)
            time.sleep(1.0)  # anything the resume set off shows up in the logs by now
            for n in (1, 2):
                after = c.nodes[n].rings()[before[n]:]
                if len(after) > 1:
                    extra.append((rnd, n, after))
        split = [(n, r) for n in (1, 2) for r in c.nodes[n].rings()[base[n]:]
                 if not (a1 in r[1] and a2 in r[1])]
        assert not split, f"healthy nodes formed rings apart: {split}"
        assert not extra, f"more than one re-formation after a resume: {extra}"


# ---- finding 6: collapse under loss -------------------------------------------------------

@pytest.mark.timeout(120)
def test_writes_progress_under_loss_without_reforming_the_ring(tmp_path, fault_hub) -> None:
    """Two writers of 1 KiB on nodes 1 and 2, at 10 % then 30 % loss on every link:
    both keep completing writes all along, and the ring is never re-formed."""
    hub = fault_hub
    with cluster(tmp_path, hub) as c:
        start(c)
        assert agent(c, 1, "fill", "lossy", "2", "1024") == "ok"
        for loss, span in ((0.10, 5.0), (0.30, 20.0)):
            before = ring_counts(c)
            hub.set(loss=loss)
            t0 = time.monotonic()
            writers = [background(c, n, "writeloop", "lossy", f"s00{n - 1}", f"W{n}",
                                  str(t0 + span)) for n in (1, 2)]
            times = [finish(w, timeout=span + 60) for w in writers]
            hub.heal()
            reformed = {n: node.rings()[before[n]:] for n, node in c.nodes.items()}
            # progress in every quarter of the span, from both writers
            quarters = [[sum(1 for t in ts if t0 + q * span / 4 < t <= t0 + (q + 1) * span / 4)
                         for q in range(4)] for ts in times]
            print(f"loss {loss:.0%}: writes per quarter {quarters}, re-formed {reformed}")
            assert all(min(q) > 0 for q in quarters), \
                f"loss {loss:.0%}: writes per quarter of {span}s: {quarters}"
            assert not any(reformed.values()), f"loss {loss:.0%}: ring re-formed: {reformed}"
