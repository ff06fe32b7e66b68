"""The same cluster behaviour over real multicast: three executives in network
namespaces the test creates (``transport: udp``, ``bindnetaddr`` given as the
network address, as in the QUICKSTART)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from cluster import ROOT, Cluster
from test_cluster_clm import Output

pytestmark = [pytest.mark.cluster, pytest.mark.netns, pytest.mark.timeout(150)]


def test_multicast_cluster_forms_survives_a_kill_and_testclm_sees_it(tmp_path, netns_lan) -> None:
    nss, addrs = netns_lan
    with Cluster(tmp_path, 3, netns=nss, addrs=addrs, bindnetaddr="10.250.0.0",
                 port=5405) as c:
        c.start_all()
        c.wait_ring([1, 2, 3])
        assert "ready to receive connections (node 10.250.0.1, udp" in c.nodes[1].log_text()
        node = c.nodes[1]
        proc = subprocess.Popen(
            ["ip", "netns", "exec", node.netns, sys.executable,
             str(ROOT / "examples" / "testclm.py")], env=node.env(), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out = Output(proc)
        try:
            out.wait_for(lambda t: t.count("NODE STATE NO CHANGE.") == 3)
            c.kill(2)
            c.wait_ring([1, 3], timeout=10)
            out.wait_for(lambda t: "NODE STATE LEFT." in t)
            assert "Node name is 10.250.0.2" in out.text().split("NODE STATE LEFT.")[1]
            c.start(2)
            c.wait_ring([1, 2, 3], timeout=10)
            out.wait_for(lambda t: "NODE STATE JOINED." in t.split("NODE STATE LEFT.")[1])
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_frames_larger_than_the_mtu_still_reach_every_member(tmp_path, netns_lan) -> None:
    """``frame_size: 4000`` on a LAN of MTU 1500: the kernel refuses to segment
    such frames (EMSGSIZE), so the transport sends them one by one and IP
    fragments them.  (Before, the refused segmented sends were dropped: the
    first large writes left the receivers behind, they declared they failed
    to receive, and each node went on alone while the writes still returned.)
    The executive warns about the fragmentation at start."""
    nss, addrs = netns_lan
    with Cluster(tmp_path, 2, netns=nss[:2], addrs=addrs[:2], bindnetaddr="10.250.0.0",
                 port=5405, totem="frame_size: 4000") as c:
        c.start_all()
        c.wait_ring([1, 2])
        assert "larger than the MTU of the ring's interface (1500)" in c.nodes[1].log_text()

        def ring_of(n: int) -> dict:
            ring = c.status(n)["ring"]
            assert len(ring["members"]) == 2, ring
            return ring

        before = {n: ring_of(n) for n in (1, 2)}
        p = c.client(1, str(ROOT / "examples" / "ckptbench.py"), "--count", "40",
                     "--sizes", "73", timeout=120)
        assert p.returncode == 0 and "40 writes" in p.stdout, p.stdout + p.stderr
        after = {n: ring_of(n) for n in (1, 2)}
        for n in (1, 2):  # the same ring throughout
            assert after[n]["id"] == before[n]["id"]
            assert after[n]["stats"]["rings_formed"] == before[n]["stats"]["rings_formed"]
        # 40 writes of 73 KiB in frames of 4000 bytes: ~19 frames each
        assert after[2]["stats"]["rx_packets"] - before[2]["stats"]["rx_packets"] >= 40 * 18
        assert "failed to receive" not in c.nodes[2].log_text()
