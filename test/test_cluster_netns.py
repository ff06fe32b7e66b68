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
