"""The service host's sync rounds under churn (in-process, FakeBus, manual clock)."""
from __future__ import annotations

import pytest

from test_clm import svc, toy_cluster


@pytest.mark.timeout(20)
def test_message_held_by_an_abandoned_round_reaches_a_node_that_joins_later():
    sched, bus, (h1, h2, h3) = toy_cluster(3)
    bus.reconfigure([1, 2])
    sched.run()
    h1.mcast(svc(h1), 1, b"\x01\x02")
    sched.run()
    assert svc(h1).values == svc(h2).values == [1, 2]
    bus.pause()
    bus.reconfigure([1], [2])  # a partition: each side starts a round
    h1.mcast(svc(h1), 1, b"\x09")  # ordinary message, delivered during that round
    bus.reconfigure([1, 2, 3])  # healed, and node 3 joins, before the round can finish
    assert bus.step() and bus.step()
    assert h1.syncing and svc(h1).values == [1, 2]  # held
    while bus.step():
        pass
    bus.resume()
    sched.run()
    # applied exactly once, everywhere, including on the nodes that were not
    # in the configuration where it was first delivered
    assert svc(h1).values == svc(h2).values == svc(h3).values == [1, 2, 9]
    assert not any(h.syncing for h in (h1, h2, h3))


@pytest.mark.timeout(20)
def test_held_message_of_a_departed_sender_stays_with_its_sender():
    sched, bus, (h1, h2, h3) = toy_cluster(3)
    bus.reconfigure([1, 2], [3])
    sched.run()
    bus.pause()
    bus.reconfigure([1, 2, 3])  # merge: a round starts on all three
    h3.mcast(svc(h3), 1, b"\x07")
    bus.reconfigure([1, 2], [3])  # split again before the round can end
    assert bus.step() and bus.step()
    assert all(h.syncing for h in (h1, h2, h3))
    while bus.step():
        pass
    bus.resume()
    sched.run()
    # nobody applied it in the abandoned configuration; its sender's side has it
    assert svc(h1).values == svc(h2).values == []
    assert svc(h3).values == [7]
