"""Operating real executives: ais-status, clean leave, SIGHUP, systemd notify, metrics."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from cluster import ROOT, Cluster, free_udp_port
from test_cluster_clm import Output

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

STATUS = "import sys; from ais.status import main; sys.exit(main(sys.argv[1:]))"

TRACKER = (
    "import sys, time, saf.clm as clm\n"
    "from saf.types import SA_TRACK_CHANGES_ONLY, SA_DISPATCH_ONE\n"
    "def cb(items, n, members, view, err):\n"
    "    for i in items:\n"
    "        print(i.cluster_change.name, i.cluster_node.node_name.decode(), flush=True)\n"
    "h = clm.initialize(callbacks=clm.Callbacks(cluster_track_callback=cb))\n"
    "h.cluster_track_start(SA_TRACK_CHANGES_ONLY)\n"
    "print('tracking', flush=True)\n"
    "end = time.monotonic() + 60\n"
    "import select\n"
    "while time.monotonic() < end:\n"
    "    if select.select([h.selection_object()], [], [], 0.5)[0]:\n"
    "        h.dispatch(SA_DISPATCH_ONE)\n"
)


def test_ais_status_on_three_nodes_and_a_clean_leave(tmp_path: Path) -> None:
    with Cluster(tmp_path, 3) as c:
        c.start_all()
        ring = c.wait_ring([1, 2, 3])
        addrs = [c.nodes[n].addr for n in (1, 2, 3)]
        docs = {n: c.status(n) for n in (1, 2, 3)}
        for n, doc in docs.items():
            assert doc["node"] == c.nodes[n].addr
            assert doc["ring"]["id"] == ring and doc["ring"]["state"] == "operational"
            assert [m["address"] for m in doc["ring"]["members"]] == addrs
            assert doc["services"]["clm"]["members"] == addrs
            assert doc["services"]["ckpt"]["checkpoints"] == 0
            assert doc["pid"] == c.nodes[n].proc.pid
        # the human form shows the same ring and members
        r = c.client(2, STATUS)
        assert r.returncode == 0, r.stderr
        assert f"Ring {ring}: operational" in r.stdout
        for a in addrs:
            assert a in r.stdout
        assert "Service CLM" in r.stdout and "Service CKPT" in r.stdout
        assert "127.0.0.2        node id 0x0200007f  (this node)" in r.stdout
        # --watch with a count refreshes
        r = c.client(1, STATUS, "--json", "--watch", "0.2", "--count", "2")
        assert r.returncode == 0 and len(r.stdout.splitlines()) == 2

        # SIGTERM on node 3: the others see it LEFT and log a leave
        tracker = subprocess.Popen([sys.executable, "-c", TRACKER], env=c.nodes[1].env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out = Output(tracker)
        try:
            out.wait_for(lambda t: "tracking" in t)
            c.nodes[3].proc.send_signal(signal.SIGTERM)
            assert c.nodes[3].proc.wait(timeout=10) == 0
            out.wait_for(lambda t: "SA_CLM_NODE_LEFT 127.0.0.3" in t)
        finally:
            tracker.kill()
            tracker.wait()
        c.wait_ring([1, 2])
        assert "leaving ring" in c.nodes[3].log_text()
        for n in (1, 2):
            assert "127.0.0.3 left ring" in c.nodes[n].log_text()
            doc = c.status(n)
            assert [m["address"] for m in doc["ring"]["members"]] == addrs[:2]
            assert doc["ring"]["stats"]["leaves"] == 1


def _listening_tcp_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` listens on (from /proc, no tools needed)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sighup_notify_and_metrics_on_one_executive(tmp_path: Path, monkeypatch) -> None:
    notify_path = str(tmp_path / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(20)
    port = _free_tcp_port()
    with Cluster(tmp_path, 1) as c:
        monkeypatch.setenv("NOTIFY_SOCKET", notify_path)
        try:
            c.start(1, extra=f"\tmetrics_port: {port}")
        finally:
            monkeypatch.delenv("NOTIFY_SOCKET")
        node = c.nodes[1]
        ready = notify.recv(4096).decode()
        assert "READY=1" in ready.splitlines()
        # READY means the socket accepts: a client succeeds at once
        r = c.client(1, STATUS, "--json")
        assert r.returncode == 0, r.stderr
        c.wait_ring([1])

        # metrics: the documented names, and the same ring as ais-status
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) \
            .read().decode()
        for name in ("ais_up 1.0", "ais_ring_operational 1.0", "ais_ring_members 1.0",
                     "ais_ring_delivered_messages_total", "ais_ring_retransmits_total",
                     "ais_ring_bad_digest_packets_total", "ais_ring_send_queue_messages",
                     "ais_ring_seq",
                     "ais_ring_uptime_seconds", "ais_clm_members 1.0",
                     "ais_ckpt_checkpoints 0.0", "ais_ckpt_sections 0.0"):
            assert name in text, name
        seq = c.status(1)["ring"]["seq"]
        assert f"ais_ring_seq {float(seq)}" in text
        assert _listening_tcp_ports(node.proc.pid) == {port}

        # SIGHUP after the log was moved away makes a new log file
        moved = node.dir / "aisexec.log.1"
        os.rename(node.log, moved)
        node.proc.send_signal(signal.SIGHUP)
        end = time.monotonic() + 10
        while time.monotonic() < end and not node.log.exists():
            time.sleep(0.05)
        assert node.log.exists()
        end = time.monotonic() + 10
        while time.monotonic() < end and "SIGHUP: reopened" not in node.log_text():
            time.sleep(0.05)
        assert f"SIGHUP: reopened {node.log}" in node.log_text()
        assert "SIGHUP" not in moved.read_text()
        assert node.alive

        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(timeout=10) == 0
        states = []
        notify.settimeout(1)
        try:
            while True:
                states += notify.recv(4096).decode().splitlines()
        except TimeoutError:
            pass
        assert "STOPPING=1" in states
    notify.close()


def test_no_metrics_listener_by_default_and_one_line_without_executive(tmp_path: Path) -> None:
    with Cluster(tmp_path, 1) as c:
        c.start(1)
        c.wait_ring([1])
        assert _listening_tcp_ports(c.nodes[1].proc.pid) == set()
        c.kill(1, signal.SIGTERM)
        r = c.client(1, STATUS)
        assert r.returncode == 1
        assert r.stdout == ""
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        assert r.stderr.startswith("ais-status: no executive is running at ")


def test_aisexec_version_and_help() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "aisexec.py"), "--version"],
                       capture_output=True, text=True, timeout=30)
    from ais.main import __version__
    assert r.returncode == 0 and r.stdout.strip() == f"aisexec (pyopenais) {__version__}"
    r = subprocess.run([sys.executable, str(ROOT / "aisexec.py"), "--help"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    assert r.stdout.startswith("usage: aisexec")
    for word in ("--config", "--version", "SIGTERM", "SIGHUP", "NOTIFY_SOCKET", "exit status"):
        assert word in r.stdout
    assert "Theory" not in r.stdout and "spec/executive.md" not in r.stdout


def _readable_copy() -> str:
    """ais-status and saf where another uid can read them (the checkout may be private)."""
    d = tempfile.mkdtemp(prefix="ais-status-")
    os.chmod(d, 0o755)
    shutil.copytree(ROOT / "saf", Path(d) / "saf", ignore=shutil.ignore_patterns("__pycache__"))
    (Path(d) / "ais").mkdir()
    shutil.copy(ROOT / "ais" / "status.py", Path(d) / "ais" / "status.py")
    (Path(d) / "ais" / "__init__.py").write_text("")
    for dirpath, dirnames, filenames in os.walk(d):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    return d


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_refused_user_gets_one_line() -> None:
    from test_ipc import NOBODY, NOGROUP, OTHER_PYTHON
    if OTHER_PYTHON is None:
        pytest.skip("no Python another uid can run")
    root = tempfile.mkdtemp(prefix="ais-ops-", dir="/tmp")
    lib = _readable_copy()
    try:
        os.chmod(root, 0o755)
        with Cluster(Path(root), 1, port=free_udp_port()) as c:
            c.start(1)
            c.wait_ring([1])
            os.chmod(c.nodes[1].dir, 0o755)
            os.chmod(c.nodes[1].socket, 0o777)  # only the credential check stands in the way
            env = dict(c.nodes[1].env(), PYTHONPATH=lib, PYTHONDONTWRITEBYTECODE="1")
            r = subprocess.run([OTHER_PYTHON, "-c", STATUS], env=env, capture_output=True,
                               text=True, timeout=30, cwd="/", user=NOBODY, group=NOGROUP,
                               extra_groups=[])
            assert r.returncode == 1 and r.stdout == ""
            assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
            assert r.stderr.startswith("ais-status: refused by the executive at ")
            assert "refused connection from pid" in c.nodes[1].log_text()
            # root is still served
            assert c.client(1, STATUS).returncode == 0
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(lib, ignore_errors=True)
