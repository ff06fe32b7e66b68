"""The status service: what ``ais-status`` and the metrics endpoint report.

Theory of operation
-------------------
A service on the ordinary plug-in interface (``ais.services.base``) with one
library request, ``STATUS_REQ_GET`` (``saf._status_wire``), answered at once
from local state: it multicasts nothing and keeps no replicated state, so it
never waits for the ring or a sync round.  A client connects like any other
(the IPC server's credential check applies unchanged).

The document it returns has three parts:

* this node: its address, the executive's pid and how long it has run;
* ``ring``: what the executive's ring shell reports (``ring_source``, set
  with ``attach`` once the transport exists; ``ais.metrics.RingStats`` in
  the executive): ring id and state, members, uptime and statistics.  Before
  ``attach`` (unit tests, start-up) the section is absent;
* ``services``: one section per service, each from its own
  ``Service.status()`` hook (CLM members, CKPT checkpoints, sections and
  bytes; AMF and EVS add theirs the same way).  A hook that raises is
  reported as ``{"error": ...}`` for that service only: a bug in one
  section must not hide the others or cost the client its answer.

The service imports neither gevent, socket nor time: the pid comes from the
executive's wiring (``attach``), the clock from the host.
"""
from __future__ import annotations

from typing import Any
from collections.abc import Callable, Iterable

from ais.services.base import HostAPI, LibConn, Request, Service, lib_handler, register_service
from ais.totem.events import fmt_node
from saf import _status_wire as sw
from saf.errors import IpcProtocolError, NoResources


@register_service
class StatusService(Service):
    """Answers status requests; see the module docstring."""

    name = "status"
    service_id = sw.STATUS_SERVICE_ID

    def __init__(self) -> None:
        self.ring_source: Callable[[], dict[str, Any]] | None = None
        self.services_source: Callable[[], Iterable[Service]] | None = None
        self.pid: int | None = None
        self.started = 0.0

    def exec_init(self, host: HostAPI) -> None:
        super().exec_init(host)
        self.started = host.now()

    def attach(self, *, ring: Callable[[], dict[str, Any]] | None = None,
               services: Callable[[], Iterable[Service]] | None = None,
               pid: int | None = None) -> None:
        """Wire the sources the executive has (each optional)."""
        if ring is not None:
            self.ring_source = ring
        if services is not None:
            self.services_source = services
        if pid is not None:
            self.pid = pid

    def snapshot(self) -> dict[str, Any]:
        """The status document (without its ``format`` key)."""
        host = self.host
        doc: dict[str, Any] = {"node": fmt_node(host.node_id),
                               "uptime": round(host.now() - self.started, 3)}
        if self.pid is not None:
            doc["pid"] = self.pid
        if self.ring_source is not None:
            doc["ring"] = self.ring_source()
        sections: dict[str, Any] = {}
        for svc in (self.services_source() if self.services_source is not None else ()):
            if svc is self:
                continue
            try:
                section = svc.status()
            except Exception as exc:  # noqa: BLE001 -- one bad section, not the answer
                section = {"error": f"{type(exc).__name__}: {exc}"}
            if section:
                sections[svc.name] = section
        doc["services"] = sections
        return doc

    @lib_handler(sw.STATUS_REQ_GET)
    def lib_get(self, conn: LibConn, req: Request) -> bytes:
        if req.body:
            raise IpcProtocolError("status request with a body")
        try:
            return sw.encode_status(self.snapshot())
        except IpcProtocolError as exc:
            # Too big or not JSON: our fault, not the client's.
            raise NoResources(str(exc)) from None


__all__ = ["StatusService"]
