"""Real executives for tests: processes on 127.0.0.N with ``transport: udpu``.

Every node gets its own directory (openais.conf, authkey, socket, log) under
the test's tmp_path.  Processes are stopped by pid at teardown, and every
wait is bounded.  Nothing leaves loopback.

    with Cluster(tmp_path, 3) as c:
        c.start_all()
        c.wait_ring([1, 2, 3])
        c.kill(2)
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RING_RE = re.compile(r"ring (\S+) formed: ([\d. ]+)$")


def free_udp_port() -> int:
    """A UDP port free on every 127.0.0.N we use (checked on .1, then used by all)."""
    for _ in range(50):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if 20000 <= port <= 60000:
            return port
    return 40000 + os.getpid() % 10000


class Node:
    def __init__(self, cluster: Cluster, n: int, addr: str, netns: str | None) -> None:
        self.cluster = cluster
        self.n = n
        self.addr = addr
        self.netns = netns
        self.dir = cluster.root / f"node{n}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "openais.conf"
        self.socket = str(self.dir / "aisexec.sock")
        self.log = self.dir / "aisexec.log"
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        """Environment for a client of this node."""
        env = dict(os.environ)
        env["AIS_SOCKET"] = self.socket
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def rings(self) -> list[tuple[str, list[str]]]:
        """Every ring this node reported forming: (ring id, member addresses)."""
        out = []
        for line in self.log_text().splitlines():
            m = RING_RE.search(line)
            if m:
                out.append((m.group(1), m.group(2).split()))
        return out

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    """Up to ``size`` executives on 127.0.0.1 .. 127.0.0.size."""

    def __init__(self, root: Path, size: int, *, port: int | None = None,
                 totem: str = "", debug: bool = False, key: bytes | None = None,
                 netns: list[str] | None = None, addrs: list[str] | None = None,
                 bindnetaddr: str | None = None, mcastaddr: str = "226.94.1.1") -> None:
        """With ``netns``, node n runs inside namespace netns[n-1] at addrs[n-1]
        and the ring uses multicast (``transport: udp``); otherwise udpu on
        127.0.0.n."""
        self.root = Path(root)
        self.size = size
        self.port = port or free_udp_port()
        self.totem = totem
        self.debug = debug
        self.key = key or os.urandom(128)
        self.multicast = netns is not None
        self.bindnetaddr = bindnetaddr
        self.mcastaddr = mcastaddr
        addrs = addrs or [f"127.0.0.{n}" for n in range(1, size + 1)]
        self.nodes = {n: Node(self, n, addrs[n - 1], netns[n - 1] if netns else None)
                      for n in range(1, size + 1)}

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def write_conf(self, n: int, *, key: bytes | None = None, extra: str = "") -> Node:
        node = self.nodes[n]
        if self.multicast:
            net = (f"\tbindnetaddr: {self.bindnetaddr or node.addr}\n"
                   f"\tmcastaddr: {self.mcastaddr}\n\ttransport: udp")
        else:
            net = f"\tbindnetaddr: {node.addr}\n\ttransport: udpu\n" + "\n".join(
                f"\tmember: {m.addr}" for m in self.nodes.values())
        node.conf.write_text(f"""
network {{
{net}
\tmcastport: {self.port}
}}
logging {{
\tlogoutput: file
\tlogoutput: stderr
\tlogfile: {node.log}
\tdebug: {"on" if self.debug else "off"}
\ttimestamp: on
}}
totem {{
{self.totem}
}}
aisexec {{
\tsocket: {node.socket}
\tauthkey: authkey
\tgroups: {ROOT / "conf" / "groups.conf"}
{extra}
}}
""")
        keyfile = node.dir / "authkey"
        if keyfile.exists():
            keyfile.chmod(0o600)
        keyfile.write_bytes(key or self.key)
        keyfile.chmod(0o400)
        return node

    def start(self, n: int, *, key: bytes | None = None, extra: str = "") -> Node:
        node = self.write_conf(n, key=key, extra=extra)
        prefix = ["ip", "netns", "exec", node.netns] if node.netns else []
        with open(node.dir / "stdout.txt", "ab") as out:
            node.proc = subprocess.Popen(
                prefix + [sys.executable, str(ROOT / "aisexec.py"), "-c", str(node.conf),
                          "--no-realtime"],
                stdout=out, stderr=subprocess.STDOUT, cwd=str(node.dir), env=node.env())
        return node

    def start_all(self, ns: list[int] | None = None) -> None:
        for n in ns or list(self.nodes):
            self.start(n)

    def kill(self, n: int, sig: int = signal.SIGKILL) -> None:
        node = self.nodes[n]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(sig)
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(timeout=10)

    def pause(self, n: int) -> None:
        self.nodes[n].proc.send_signal(signal.SIGSTOP)

    def resume(self, n: int) -> None:
        self.nodes[n].proc.send_signal(signal.SIGCONT)

    def stop_all(self) -> None:
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGCONT)
                node.proc.terminate()
        for node in self.nodes.values():
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(timeout=5)

    def wait_socket(self, n: int, timeout: float = 15.0) -> None:
        node = self.nodes[n]
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if os.path.exists(node.socket) and "ready to receive connections" in node.log_text():
                return
            if node.proc is not None and node.proc.poll() is not None:
                raise AssertionError(f"node {n} exited with {node.proc.returncode}:\n"
                                     + (node.dir / "stdout.txt").read_text(errors="replace"))
            time.sleep(0.05)
        raise AssertionError(f"node {n} did not start within {timeout}s:\n{node.log_text()}")

    def wait_ring(self, ns: list[int], timeout: float = 20.0, on: list[int] | None = None) -> str:
        """Wait until every node in ``on`` (default ``ns``) last reported the ring of ``ns``.

        Returns the ring id.
        """
        want = sorted(self.nodes[n].addr for n in ns)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            last = [self.nodes[n].rings()[-1:] for n in (on or ns)]
            if all(r and sorted(r[0][1]) == want for r in last):
                ids = {r[0][0] for r in last}
                if len(ids) == 1:
                    return ids.pop()
            time.sleep(0.05)
        raise AssertionError(f"no ring {want} within {timeout}s: " + "; ".join(
            f"node {n}: {self.nodes[n].rings()[-3:]}" for n in (on or ns)))

    def status(self, n: int) -> dict:
        """Node n's status document (``ais-status --json``, one snapshot)."""
        r = self.client(n, "import sys; from ais.status import main; sys.exit(main(sys.argv[1:]))",
                        "--json")
        assert r.returncode == 0, r.stderr
        (line,) = r.stdout.splitlines()
        return json.loads(line)

    def client(self, n: int, script: str, *args: str, timeout: float = 60.0,
               input: str | None = None) -> subprocess.CompletedProcess:
        """Run ``python -c script`` (or a file path) as a client of node n."""
        node = self.nodes[n]
        cmd = [sys.executable] + ([script] if script.endswith(".py") else ["-c", script])
        if node.netns:
            cmd = ["ip", "netns", "exec", node.netns] + cmd
        return subprocess.run(cmd + list(args), env=node.env(), capture_output=True, text=True,
                              timeout=timeout, input=input)
