"""Real executives on 127.0.0.N (udpu): ring formation, crash, restart, keys, garbage."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from cluster import ROOT, Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


def test_three_nodes_form_a_ring_survive_a_kill_and_take_it_back(tmp_path) -> None:
    with Cluster(tmp_path, 3) as c:
        c.start_all()
        for n in (1, 2, 3):
            c.wait_socket(n)
        c.wait_ring([1, 2, 3])
        # the members' addresses are logged when the configuration forms
        assert "127.0.0.3" in c.nodes[1].log_text().split("New Configuration:")[-1]
        c.kill(2)
        c.wait_ring([1, 3], timeout=10)
        left = c.nodes[1].log_text().split("Members Left:")[-1]
        assert "127.0.0.2" in left.split("Members Joined:")[0]
        c.start(2)
        c.wait_ring([1, 2, 3], timeout=10)


def test_node_with_another_key_never_joins_and_logs_invalid_digest(tmp_path) -> None:
    with Cluster(tmp_path, 3) as c:
        c.start(1)
        c.start(2)
        c.wait_ring([1, 2])
        c.start(3, key=os.urandom(128))
        c.wait_socket(3)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and "invalid digest" not in c.nodes[1].log_text():
            time.sleep(0.1)
        assert "invalid digest" in c.nodes[1].log_text()
        time.sleep(2)
        assert all("127.0.0.3" not in members for _, members in c.nodes[1].rings())
        assert all(members == ["127.0.0.3"] for _, members in c.nodes[3].rings())
        assert c.nodes[1].alive and c.nodes[2].alive
        # the two good nodes still work as a ring: kill one, the other notices
        c.kill(2)
        c.wait_ring([1], timeout=10, on=[1])


def test_garbage_on_the_ring_port_leaves_the_executive_serving(tmp_path) -> None:
    with Cluster(tmp_path, 2) as c:
        c.start_all()
        c.wait_ring([1, 2])
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rng = __import__("random").Random(7)
        for _ in range(2000):
            n = rng.choice([0, 1, 5, 40, 60, 200, 1400, 9000])
            s.sendto(bytes(rng.getrandbits(8) for _ in range(n)), ("127.0.0.1", c.port))
        s.close()
        time.sleep(1)
        assert c.nodes[1].alive
        c.kill(2)
        c.wait_ring([1], timeout=10, on=[1])
        c.start(2)
        c.wait_ring([1, 2], timeout=10)


def test_paused_executive_ends_in_one_ring(tmp_path) -> None:
    with Cluster(tmp_path, 3) as c:
        c.start_all()
        c.wait_ring([1, 2, 3])
        c.pause(3)
        c.wait_ring([1, 2], timeout=10)
        time.sleep(2)
        c.resume(3)
        c.wait_ring([1, 2, 3], timeout=15)
        time.sleep(3)
        ring = c.wait_ring([1, 2, 3], timeout=5)
        assert all(c.nodes[n].rings()[-1][0] == ring for n in (1, 2, 3))


@pytest.mark.parametrize("text, expect", [
    ("network {\n bindnetaddr: 127.0.0.1\n mcastport: 5405\n}\n", "mcastaddr"),
    ("network {\n bindnetaddr: 127.0.0.1\n mcastaddr: 226.94.1.1\n mcastport: 5405\n}\n"
     "logging {\n logoutput: file\n}\n", ":7:"),
    ("network {\n bindnetaddr: 127.0.0.1\n mcastaddr: 226.94.1.1\n mcastport: 5405\n"
     " colour: blue\n}\n", ":5:"),
    ("network {\n bindnetaddr: 10.99.99.0\n mcastaddr: 226.94.1.1\n mcastport: 5405\n}\n", ":2:"),
])
def test_configuration_errors_give_one_clear_line(tmp_path, text: str, expect: str) -> None:
    conf = tmp_path / "openais.conf"
    conf.write_text(text)
    (tmp_path / "authkey").write_bytes(os.urandom(128))
    r = subprocess.run([sys.executable, str(ROOT / "aisexec.py"), "-c", str(conf),
                        "--no-realtime"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("aisexec:")]
    assert len(lines) == 1, r.stderr
    assert str(conf) in lines[0] and expect in lines[0]


def test_missing_or_short_key_stops_the_executive(tmp_path) -> None:
    conf = tmp_path / "openais.conf"
    conf.write_text("network {\n bindnetaddr: 127.0.0.1\n mcastport: 5405\n transport: udpu\n"
                    " member: 127.0.0.1\n}\nlogging {\n logoutput: stderr\n}\n")
    r = subprocess.run([sys.executable, str(ROOT / "aisexec.py"), "-c", str(conf)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "authkey" in r.stderr
    (tmp_path / "authkey").write_bytes(b"short")
    r = subprocess.run([sys.executable, str(ROOT / "aisexec.py"), "-c", str(conf)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "128" in r.stderr
