"""The client library in the two programming models it must serve, against a
real executive: gevent (monkey-patched) and plain threads.  In both, one
flow of control sits in a blocking dispatch while another makes blocking
calls; neither may starve or corrupt the other."""
from __future__ import annotations

import pytest

from cluster import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(90)]

COMMON = r'''
from saf import ckpt, clm
from saf.types import SA_DISPATCH_BLOCKING, SA_TRACK_CURRENT, SA_TRACK_CHANGES_ONLY
from saf._ckpt_wire import (CreationAttributes, IOVector, SA_CKPT_CHECKPOINT_CREATE,
                            SA_CKPT_CHECKPOINT_READ, SA_CKPT_CHECKPOINT_WRITE)

tracked = []
def on_track(buf, n_items, n_members, view, error):
    tracked.append([i.cluster_node.node_name.decode() for i in buf])

def blocking_dispatch(h, out):
    h.dispatch(SA_DISPATCH_BLOCKING)  # returns when h is finalized elsewhere
    out.append("dispatch returned")

def worker(results, tag):
    with ckpt.initialize() as ch:
        flags = SA_CKPT_CHECKPOINT_CREATE | SA_CKPT_CHECKPOINT_READ | SA_CKPT_CHECKPOINT_WRITE
        c = ch.checkpoint_open(f"clients-{tag}", flags,
                               attributes=CreationAttributes(checkpoint_size=1 << 20,
                                                             max_section_size=1 << 20))
        for k in range(40):
            data = f"{tag}:{k}".encode() * 100
            c.write([IOVector(b"", data, 0)])
            assert c.read([IOVector(b"", offset=0, size=len(data))])[0] == data
        results.append(tag)
'''

GEVENT = r'''
from gevent import monkey; monkey.patch_all()
import gevent
''' + COMMON + r'''
out = []
h = clm.initialize(callbacks=clm.Callbacks(cluster_track_callback=on_track))
g = gevent.spawn(blocking_dispatch, h, out)
gevent.sleep(0.1)
results = []
workers = [gevent.spawn(worker, results, t) for t in ("a", "b", "c")]
h.cluster_track_start(SA_TRACK_CURRENT | SA_TRACK_CHANGES_ONLY)
gevent.joinall(workers, timeout=40, raise_error=True)
with gevent.Timeout(10):
    while not tracked:
        gevent.sleep(0.01)
h.finalize()
g.join(timeout=10)
print(sorted(results), tracked[0], out)
'''

THREADS = r'''
import threading, time
''' + COMMON + r'''
out = []
h = clm.initialize(callbacks=clm.Callbacks(cluster_track_callback=on_track))
t = threading.Thread(target=blocking_dispatch, args=(h, out))
t.start()
time.sleep(0.1)
results = []
workers = [threading.Thread(target=worker, args=(results, tag)) for tag in ("a", "b", "c")]
for w in workers: w.start()
h.cluster_track_start(SA_TRACK_CURRENT | SA_TRACK_CHANGES_ONLY)
for w in workers: w.join(timeout=40)
deadline = time.monotonic() + 10
while not tracked and time.monotonic() < deadline:
    time.sleep(0.01)
h.finalize()
t.join(timeout=10)
print(sorted(results), tracked[0], out)
'''


@pytest.mark.parametrize("model", ["gevent", "threads"])
def test_blocking_dispatch_and_calls_side_by_side(tmp_path, model: str) -> None:
    with Cluster(tmp_path, 2) as c:
        c.start_all()
        c.wait_ring([1, 2])
        r = c.client(1, GEVENT if model == "gevent" else THREADS, timeout=60)
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stdout.strip() == (
            "['a', 'b', 'c'] ['127.0.0.1', '127.0.0.2'] ['dispatch returned']"), r.stderr[-2000:]
