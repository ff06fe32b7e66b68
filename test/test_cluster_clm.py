"""CLM with real executives: testclm on a survivor prints each change."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from cluster import ROOT, Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


class Output:
    """Collects a subprocess's stdout lines in a thread, so waits can be bounded."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pred, timeout: float = 15.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred(self.text()):
                return
            time.sleep(0.05)
        raise AssertionError("timed out; output so far:\n" + self.text())


def test_testclm_on_a_survivor_prints_each_change(tmp_path) -> None:
    with Cluster(tmp_path, 3) as c:
        c.start_all()
        c.wait_ring([1, 2, 3])
        proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "testclm.py")],
                                env=c.nodes[1].env(), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out = Output(proc)
        try:
            out.wait_for(lambda t: t.count("Done calling trackCallback") >= 1)
            text = out.text()
            assert "Result of saClmClusterNodeGet 1" in text
            assert text.count("result is 1") == 4
            # the CURRENT callback lists all three members as NO CHANGE
            assert text.count("NODE STATE NO CHANGE.") == 3
            for n in (1, 2, 3):
                assert f"Node name is 127.0.0.{n}" in text
            assert "NodeGetCallback local machine 55" in text
            c.kill(3)
            # (the whole callback printed: its record ends before "Done calling")
            out.wait_for(lambda t: "Done calling trackCallback"
                         in t.partition("NODE STATE LEFT.")[2])
            left = out.text().split("NODE STATE LEFT.")[1]
            assert "Node name is 127.0.0.3" in left.split("Done calling trackCallback")[0]
            c.start(3)
            out.wait_for(lambda t: "Done calling trackCallback" in t.split(
                "NODE STATE LEFT.")[1].partition("NODE STATE JOINED.")[2])
            joined = out.text().split("NODE STATE LEFT.")[1].split("NODE STATE JOINED.")[1]
            assert "Node name is 127.0.0.3" in joined.split("Done calling trackCallback")[0]
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.wait(timeout=10) == 0
            out._t.join(timeout=5)
            assert "TrackStop result is 1 (should be 1)" in out.text()
            assert "Finalize  result is 1 (should be 1)" in out.text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_killing_the_local_executive_makes_calls_fail_promptly(tmp_path) -> None:
    with Cluster(tmp_path, 1) as c:
        c.start(1)
        c.wait_ring([1])
        script = (
            "import time, saf.clm as clm\n"
            "from saf.errors import SaError\n"
            "from saf.types import SA_DISPATCH_BLOCKING\n"
            "h = clm.initialize()\n"
            "print('ready', flush=True)\n"
            "t = time.monotonic()\n"
            "try:\n"
            "    h.dispatch(SA_DISPATCH_BLOCKING)\n"
            "    print('returned')\n"
            "except SaError as e:\n"
            "    print('error', e.code, round(time.monotonic() - t, 1))\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", script], env=c.nodes[1].env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(0.5)
            c.kill(1)
            rest = proc.communicate(timeout=10)[0]
            assert rest.startswith("error 2"), rest  # SA_ERR_LIBRARY
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_client_of_a_refused_user_is_refused(tmp_path) -> None:
    with Cluster(tmp_path, 1) as c:
        c.start(1)
        c.wait_ring([1])
        os.chmod(c.nodes[1].dir, 0o755)
        os.chmod(c.nodes[1].socket, 0o777)  # only the credential check stands in the way
        script = (
            "import os\n"
            "import saf.clm as clm\n"
            "from saf.errors import SaError\n"
            "os.setgid(65534); os.setgroups([]); os.setuid(65534)\n"
            "try:\n"
            "    clm.initialize(); print('accepted')\n"
            "except SaError as e:\n"
            "    print('refused', e.code)\n"
        )
        env = c.nodes[1].env()
        r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, timeout=30)
        assert r.stdout.strip() == "refused 29", r.stdout + r.stderr  # SA_ERR_SECURITY
        assert "refused" in c.nodes[1].log_text()
        # and the executive still serves others
        r = subprocess.run([sys.executable, "-c", "import saf.clm as clm; clm.initialize(); "
                            "print('ok')"], env=env, capture_output=True, text=True, timeout=30)
        assert r.stdout.strip() == "ok"


def test_garbage_on_the_client_socket_costs_only_that_client(tmp_path) -> None:
    import random
    import socket as sk
    import struct

    with Cluster(tmp_path, 2) as c:
        c.start_all()
        c.wait_ring([1, 2])
        # A well-behaved client connected before, during and after the garbage.
        keeper = subprocess.Popen(
            [sys.executable, "-c",
             "import sys, saf.clm as clm\n"
             "from saf.types import SA_TRACK_CURRENT\n"
             "got = []\n"
             "h = clm.initialize(callbacks=clm.Callbacks(cluster_track_callback="
             "lambda buf, *a: got.append(len(buf))))\n"
             "print('ready', flush=True)\n"
             "sys.stdin.readline()\n"
             "h.cluster_track_start(SA_TRACK_CURRENT)\n"
             "while not got: h.dispatch(1)\n"
             "print('members', got[0], flush=True)\n"],
            env=c.nodes[1].env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert keeper.stdout.readline().strip() == "ready"
            rng = random.Random(3)
            bad = [b"", b"\x00" * 3, struct.pack("!IHHiI", 2 ** 31, 1, 1, 0, 0),
                   struct.pack("!IHHiI", 3, 1, 1, 0, 0),
                   struct.pack("!IHHiI", 40, 1, 0, 0, 1) + b"x"]
            bad += [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))
                    for _ in range(30)]
            for junk in bad:
                s = sk.socket(sk.AF_UNIX, sk.SOCK_STREAM)
                s.settimeout(5)
                s.connect(c.nodes[1].socket)
                s.sendall(junk)
                s.shutdown(sk.SHUT_WR)
                try:
                    while s.recv(4096):
                        pass
                except OSError:
                    pass
                s.close()
            keeper.stdin.write("\n")
            keeper.stdin.flush()
            assert keeper.stdout.readline().strip() == "members 2"
            assert keeper.wait(timeout=10) == 0
            r = c.client(1, "import saf.clm as clm; clm.initialize(); print('ok')")
            assert r.stdout.strip() == "ok", r.stderr
            assert c.nodes[1].alive
        finally:
            if keeper.poll() is None:
                keeper.kill()
                keeper.wait()
