"""Ring statistics for ``ais-status``, and the optional Prometheus endpoint.

Theory of operation
-------------------
``RingStats`` reads the executive's ``Srp`` and ``Transport`` (their counters
are plain dicts, updated in the one gevent thread) and builds the ``ring``
section of the status document (``ais.services.status``).  Rates (messages
and bytes delivered per second) are taken over a moving window: ``sample``
records the delivery counters once a second (``start_sampling``), and a
snapshot divides what was delivered since the oldest kept sample (at most
``WINDOW`` seconds back) by the time since it.  ``on_confchg`` notes when
the current ring formed, for its uptime.

``MetricsServer`` serves the same statistics in the Prometheus text format
with ``prometheus_client`` (a custom collector over the status document, so
the two never disagree), from a ``gevent.pywsgi`` server in the executive's
own loop: collecting reads the live structures with no thread racing the
ring.  It listens only when ``aisexec { metrics_port: [ADDRESS:]PORT }`` is
set, on 127.0.0.1 unless an address is given.

Exported names (``ais_`` prefix; counters end in ``_total``)::

    ais_up                                  1 while the executive answers
    ais_ring_info{ring,state,node}          1, labels name the ring
    ais_ring_operational                    1 when OPERATIONAL, else 0
    ais_ring_seq                            ring sequence number
    ais_ring_members                        members of the current ring
    ais_ring_uptime_seconds                 since the current ring formed
    ais_ring_token_rotation_seconds         smoothed token rotation time
    ais_ring_delivered_messages_total       messages delivered in agreed order
    ais_ring_delivered_bytes_total          their payload bytes
    ais_ring_retransmits_total              frames retransmitted for others
    ais_ring_token_retransmits_total        tokens resent
    ais_ring_bad_digest_packets_total       packets refused: bad digest (key)
    ais_ring_refused_packets_total          packets refused by the ring's checks
    ais_ring_send_queue_messages            messages queued, not yet sent
    ais_ring_send_queue_bytes               their bytes
    ais_ring_formed_total                   rings this node formed or joined
    ais_ring_leaves_total                   leave messages honoured
    ais_<service>_<key>                     each number in a service's section
                                            (a list counts its items), e.g.
                                            ais_clm_members, ais_ckpt_checkpoints,
                                            ais_ckpt_sections, ais_ckpt_bytes
"""
from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections import deque
from typing import Any
from collections.abc import Callable, Iterator

from ais.totem.events import ConfChange, fmt_node
from saf.types import node_id_from_totem

logger = logging.getLogger(__name__)

#: seconds of samples the delivery rates average over
WINDOW = 10


class RingStats:
    """The ``ring`` section of the status document, from a live ``Srp`` and transport."""

    def __init__(self, srp: Any, transport: Any, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.srp = srp
        self.transport = transport
        self.clock = clock
        self.ring_since: float | None = None
        self._samples: deque[tuple[float, int, int]] = deque(maxlen=WINDOW + 1)
        self._sampler: Any = None
        self.sample()

    def on_confchg(self, conf: ConfChange) -> None:
        """Call with every configuration change the transport performs."""
        if not conf.transitional:
            self.ring_since = self.clock()

    def sample(self) -> None:
        """Record the delivery counters now (the rates' window moves on)."""
        st = self.transport.stats
        self._samples.append((self.clock(), st["deliveries"], st["deliver_bytes"]))

    def start_sampling(self) -> None:
        """Sample once a second in a greenlet, until ``stop_sampling``."""
        import gevent

        def loop() -> None:
            while True:
                gevent.sleep(1.0)
                self.sample()
        self._sampler = gevent.spawn(loop)

    def stop_sampling(self) -> None:
        if self._sampler is not None:
            self._sampler.kill(block=False)
            self._sampler = None

    def rates(self) -> tuple[float, float]:
        """(messages, bytes) delivered per second over the last ``WINDOW`` s."""
        st = self.transport.stats
        now = self.clock()
        t0, m0, b0 = self._samples[0]
        dt = now - t0
        if dt <= 0:
            return 0.0, 0.0
        return (st["deliveries"] - m0) / dt, (st["deliver_bytes"] - b0) / dt

    def snapshot(self) -> dict[str, Any]:
        """The ring section: id, state, members, uptime, statistics (JSON values)."""
        srp, tr = self.srp, self.transport
        ss, ts = srp.stats, tr.stats
        msgs, nbytes = self.rates()
        rot = srp.rotation_time
        ring = srp.ring_id
        now = self.clock()
        return {
            "id": str(ring) if ring.seq else None,
            "seq": ring.seq,
            "representative": fmt_node(ring.rep),
            "state": srp.state.value,
            "transport": tr.mode,
            "port": tr.port,
            "members": [{"address": fmt_node(n), "node_id": node_id_from_totem(n)}
                        for n in srp.members],
            "uptime": None if self.ring_since is None else round(now - self.ring_since, 3),
            "stats": {
                "token_rotation_ms": None if rot is None else round(rot * 1000.0, 3),
                "delivered_msgs_per_s": round(msgs, 1),
                "delivered_bytes_per_s": round(nbytes, 1),
                "delivered_msgs": ts["deliveries"],
                "delivered_bytes": ts["deliver_bytes"],
                "retransmits": ss["retransmits"],
                "token_retransmits": ss["token_retransmits"],
                "bad_digest": ts["invalid_digest"],
                "refused": ss["refused"] + ts["unknown_peer"] + ts["leave_refused"],
                "send_queue_msgs": srp.queued(),
                "send_queue_bytes": srp.queue.bytes,
                "rings_formed": ss["rings_formed"],
                "leaves": ss["leaves"],
                "writer_holds": ss["writer_holds"],
                "acks_sent": ss["acks_sent"],
                "ack_stables": ss["ack_stables"],
                "busy_polls": ts["busy_polls"],
                "busy_poll_ms": ts["busy_poll_us"] // 1000,
                "rx_packets": ts["rx_packets"],
                "tx_packets": ts["tx_packets"],
            },
        }


# --------------------------------------------------------------- Prometheus

_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")

#: ring stats key -> (metric name, help, counter?)
_RING_METRICS: tuple[tuple[str, str, str, bool], ...] = (
    ("delivered_msgs", "ais_ring_delivered_messages", "messages delivered in agreed order", True),
    ("delivered_bytes", "ais_ring_delivered_bytes", "payload bytes delivered", True),
    ("retransmits", "ais_ring_retransmits", "frames retransmitted for other members", True),
    ("token_retransmits", "ais_ring_token_retransmits", "tokens resent", True),
    ("bad_digest", "ais_ring_bad_digest_packets", "packets refused for a bad digest", True),
    ("refused", "ais_ring_refused_packets", "packets refused by the ring's checks", True),
    ("send_queue_msgs", "ais_ring_send_queue_messages", "messages queued, not yet sent", False),
    ("send_queue_bytes", "ais_ring_send_queue_bytes", "bytes queued, not yet sent", False),
    ("rings_formed", "ais_ring_formed", "rings this node formed or joined", True),
    ("leaves", "ais_ring_leaves", "leave messages honoured", True),
    ("writer_holds", "ais_ring_writer_holds", "token visits held for a local client's next "
     "write (writer_hold)", True),
    ("acks_sent", "ais_ring_acks_sent", "ACKs sent for frames a writer's client waits for "
     "(stable_acks)", True),
    ("ack_stables", "ais_ring_ack_stables", "times ACKs made this node's messages stable "
     "before the token came back (stable_acks)", True),
    ("busy_polls", "ais_busy_polls", "times the event loop began polling instead of sleeping "
     "(busy_poll)", True),
    ("busy_poll_ms", "ais_busy_poll_milliseconds", "time spent polling instead of sleeping "
     "(busy_poll)", True),
)


def metric_families(doc: dict[str, Any]) -> Iterator[Any]:
    """Prometheus metric families for one status document (see the module docstring)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    yield GaugeMetricFamily("ais_up", "1 while the executive answers", value=1)
    ring = doc.get("ring")
    if ring is not None:
        info = GaugeMetricFamily("ais_ring_info", "the current ring", labels=["ring", "state",
                                                                              "node"])
        info.add_metric([str(ring["id"]), ring["state"], str(doc.get("node"))], 1)
        yield info
        yield GaugeMetricFamily("ais_ring_operational", "1 when the ring is operational",
                                value=int(ring["state"] == "operational"))
        yield GaugeMetricFamily("ais_ring_seq", "ring sequence number", value=ring["seq"])
        yield GaugeMetricFamily("ais_ring_members", "members of the current ring",
                                value=len(ring["members"]))
        if ring["uptime"] is not None:
            yield GaugeMetricFamily("ais_ring_uptime_seconds", "since the current ring formed",
                                    value=ring["uptime"])
        st = ring["stats"]
        if st["token_rotation_ms"] is not None:
            yield GaugeMetricFamily("ais_ring_token_rotation_seconds",
                                    "smoothed token rotation time",
                                    value=st["token_rotation_ms"] / 1000.0)
        for key, name, doc_, counter in _RING_METRICS:
            cls = CounterMetricFamily if counter else GaugeMetricFamily
            yield cls(name, doc_, value=st[key])
    for svc, section in sorted(doc.get("services", {}).items()):
        for key, value in sorted(section.items()):
            if isinstance(value, bool):
                value = int(value)
            elif isinstance(value, (list, tuple, dict)):
                value = len(value)
            elif not isinstance(value, (int, float)):
                continue
            name = _NAME_BAD.sub("_", f"ais_{svc}_{key}")
            yield GaugeMetricFamily(name, f"{svc} status: {key}", value=value)


class _Collector:
    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        yield from metric_families(self.snapshot())


class MetricsServer:
    """``/metrics`` in the Prometheus text format, served from the gevent loop.

    Args:
        snapshot: returns the status document (``StatusService.snapshot``).
        address: IPv4 address to listen on (127.0.0.1 unless configured).
        port: TCP port.
    Raises:
        ImportError: prometheus_client is not installed (from ``start``).
        OSError: the port cannot be bound (from ``start``).
    """

    def __init__(self, snapshot: Callable[[], dict[str, Any]], address: str, port: int) -> None:
        ipaddress.IPv4Address(address)
        self.snapshot = snapshot
        self.address = address
        self.port = port
        self._server: Any = None

    def start(self) -> None:
        from gevent.pywsgi import WSGIServer
        from prometheus_client import CollectorRegistry, make_wsgi_app

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self.snapshot))  # type: ignore[arg-type]
        app = make_wsgi_app(registry)
        self._server = WSGIServer((self.address, self.port), app, log=None, error_log=logger)
        self._server.start()
        self.port = self._server.server_port

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=1)
            self._server = None


__all__ = ["MetricsServer", "RingStats", "WINDOW", "metric_families"]
