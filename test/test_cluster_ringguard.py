"""Issue 8 on real executives: sealed lying ring packets, crafted with the real key.

Three executives on 127.0.0.1-3 (udpu).  The lies come from a socket on
127.0.0.1 (a configured member's address, so the transport's peer filter lets
them through to the core) and from 127.0.0.9 (not a member).
"""
from __future__ import annotations

import socket
import time

import pytest

from ais.totem import wire
from ais.totem.crypto import Crypto
from ais.totem.events import RingId, node_of
from cluster import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

U64 = 2 ** 64 - 1


def ring_id_of(text: str) -> RingId:
    rep, seq = text.split("/")
    return RingId(int(seq), node_of(rep))


def test_sealed_lying_packets_leave_three_executives_running_in_their_ring(tmp_path) -> None:
    with Cluster(tmp_path, 3) as c:
        c.start_all()
        rid = ring_id_of(c.wait_ring([1, 2, 3]))
        n1, n2, n3 = (node_of(f"127.0.0.{n}") for n in (1, 2, 3))
        crypto = Crypto(c.key)
        lies = [
            # 8.1: a join with the largest ring seqs (sender: a member, so udpu lets it in)
            wire.encode_join(wire.Join(n3, U64, frozenset({n3}), frozenset())),
            wire.encode_join(wire.Join(n3, U64 - 7, frozenset({n3}), frozenset())),
            # 8.2 and 8.4: tokens of the current ring with impossible sequences
            wire.encode_token(wire.Token(n1, rid, U64, 0, 0, 0, 0, 0, 0, 0, [])),
            wire.encode_token(wire.Token(n1, rid, 2 ** 62, 2 ** 40, 0, 0, 0, 0, 0, 0, [])),
            # 8.5: frames far ahead of the ring
            *(wire.encode_mcast(n1, rid, 10 ** 6 + k, 0, b"\0" * 1000) for k in range(50)),
            # 8.6: a join naming made-up nodes, a foreign ring's frames
            wire.encode_join(wire.Join(n3, 0, frozenset(range(n3, n3 + 300)), frozenset())),
            *(wire.encode_mcast(n3 + 10, RingId(rid.seq + 8, n3 + 10), 1, 0, b"x")
              for _ in range(5)),
        ]
        member = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            member.bind(("127.0.0.1", 0))
            stranger.bind(("127.0.0.9", 0))
            for data in lies:
                sealed = crypto.seal(data)
                for n in (1, 2, 3):
                    member.sendto(sealed, (f"127.0.0.{n}", c.port))
                    stranger.sendto(crypto.seal(data), (f"127.0.0.{n}", c.port))
        finally:
            member.close()
            stranger.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(
                "refused ring packet" in c.nodes[n].log_text() for n in (2, 3)):
            time.sleep(0.1)
        time.sleep(2)
        for n in (1, 2, 3):
            node = c.nodes[n]
            assert node.alive, node.log_text()[-3000:]
            # the ring was kept (if not: which ring, and what the log says led to it)
            assert node.rings()[-1][0] == f"127.0.0.1/{rid.seq}", \
                (node.rings(), node.log_text()[-4000:])
            assert "not a configured member" in node.log_text()
            assert "Traceback" not in node.log_text()
        assert all("refused ring packet" in c.nodes[n].log_text() for n in (2, 3))
        # the next membership change works (it once killed every node)
        c.kill(3)
        c.wait_ring([1, 2], timeout=10)
        # a lie saved in a state file is refused at start, in one line
        state = c.nodes[3].dir / "ringseq-127.0.0.3"
        assert state.exists() and int(state.read_text()) == rid.seq
        state.write_text(f"{U64}\n")
        c.start(3)
        c.wait_ring([1, 2, 3], timeout=15)
        text = c.nodes[3].log_text()
        assert text.count("beyond any ring sequence") == 1 and "Traceback" not in text
        # (the ring's seq is written, fsync'ed and renamed into place just after the
        # "formed" line is logged: a loaded machine takes a while)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and state.read_text() == f"{U64}\n":
            time.sleep(0.05)
        assert int(state.read_text()) < 2 ** 20
