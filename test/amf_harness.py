"""AMF on fake rings: hosts on a FakeBus with a manual clock, and scripted components.

``AmfCluster`` runs ``AmfService`` (and CLM) on every node; ``Comp`` is a
component process seen from the executive: a FakeConn that records its
callbacks as (kind, value) pairs and answers them (unless stopped), the way
the example programs do.  No sockets, no threads, no real time.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from helpers_exec import BOOT, FakeConn

from ais.config import parse_groups_conf
from ais.executive import ServiceHost
from ais.services.amf import AmfService
from ais.services.clm import ClmService
from ais.testing import FakeBus, ManualScheduler
from ais.totem.events import node_of
from saf import _amf_wire as aw
from saf.errors import SA_OK

SAMPLE = (Path(__file__).parent.parent / "conf" / "groups.conf").read_text()

READINESS = {1: "OUT_OF_SERVICE", 2: "IN_SERVICE", 3: "STOPPING"}
HA = {1: "ACTIVE", 2: "STANDBY", 3: "QUIESCED"}


class AmfCluster:
    def __init__(self, addrs: Iterable[str], model_text: str = SAMPLE) -> None:
        self.sched = ManualScheduler()
        self.bus = FakeBus(self.sched)
        self.model = parse_groups_conf(model_text)
        self.hosts: dict[str, ServiceHost] = {}
        self.procs: list[Comp] = []
        self._seq = 1000
        for a in addrs:
            self.add(a)

    def add(self, addr: str) -> ServiceHost:
        host = ServiceHost(node_of(addr), [ClmService(boot_timestamp=BOOT),
                                           AmfService(self.model)], self.sched)
        self.hosts[addr] = host
        self.bus.port(host)
        return host

    def restart(self, addr: str) -> ServiceHost:
        """The node's executive restarted empty (its components are gone)."""
        self.bus.remove(node_of(addr))
        for p in self.procs:
            if p.addr == addr:
                p.dead = True
        return self.add(addr)

    def amf(self, addr: str) -> AmfService:
        svc = self.hosts[addr].service_by_name("amf")
        assert isinstance(svc, AmfService)
        return svc

    def form(self, *components: Iterable[str]) -> None:
        self.bus.reconfigure(*[[node_of(a) for a in c] for c in components])
        self.settle()

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def settle(self, rounds: int = 200) -> None:
        """Run due timers and let live components answer, until nothing moves."""
        for _ in range(rounds):
            ran = self.sched.run()
            answered = sum(p.pump() for p in self.procs)
            if not ran and not answered:
                return
        raise AssertionError("AMF did not settle")

    def advance(self, seconds: float, step: float = 0.01) -> None:
        """Let ``seconds`` of virtual time pass, components answering as they go."""
        t = 0.0
        while t < seconds - 1e-9:
            self.sched.advance(min(step, seconds - t))
            t += step
            self.settle()

    def proc(self, addr: str, name: str, register: bool = True) -> Comp:
        p = Comp(self, addr, name)
        self.procs.append(p)
        if register:
            assert p.register() == SA_OK
        return p

    def request(self, addr: str, conn: FakeConn, msg_id: int, body: bytes) -> int | None:
        seq = self.next_seq()
        self.hosts[addr].lib_request(conn, msg_id, seq, body)
        self.settle()
        for f in reversed(conn.responses):
            if f.seq == seq:
                return f.error
        return None

    def call(self, addr: str, msg_id: int, body: bytes) -> tuple[int, bytes]:
        """A one-shot request (its own short connection)."""
        host = self.hosts[addr]
        conn = FakeConn(host.new_conn_id(), aw.AMF_SERVICE_ID)
        host.lib_connect(conn)
        seq = self.next_seq()
        host.lib_request(conn, msg_id, seq, body)
        self.settle()
        host.lib_exit(conn)
        [f] = [f for f in conn.responses if f.seq == seq]
        return f.error, f.body

    def state(self, addr: str, comp: str) -> tuple[str, str]:
        c = self.amf(addr).comps[comp]
        return READINESS[int(c.readiness)], HA[int(c.has[c.spec.protection])]

    def roles(self, addr: str) -> dict[str, str]:
        return {u.name: u.role.name for u in self.amf(addr).units.values()}

    def admin(self, addr: str, op: int, unit: str) -> int:
        """An administrative operation (ais.amf_admin) asked of ``addr``; its SAF error."""
        return self.call(addr, aw.AMF_REQ_ADMIN, aw.encode_admin(
            aw.AdminRequest(op, unit.encode())))[0]

    def phases(self, addr: str) -> dict[str, str]:
        return {u.name: u.phase.name for u in self.amf(addr).units.values()}

    def digests(self, addrs: Iterable[str] | None = None) -> set:
        return {self.amf(a).digest() for a in (addrs or self.hosts)}


class Comp:
    """A component process: answers callbacks unless stopped, like testamf1..6."""

    def __init__(self, cl: AmfCluster, addr: str, name: str) -> None:
        self.cl = cl
        self.addr = addr
        self.name = name
        host = cl.hosts[addr]
        self.conn = FakeConn(host.new_conn_id(), aw.AMF_SERVICE_ID)
        host.lib_connect(self.conn)
        self.seen: list[tuple[str, str]] = []
        self.healthchecks = 0
        self.stopped = False
        self.dead = False
        self.answer_with = SA_OK
        #: every CSI-set callback received, decoded
        self.csi_sets: list[aw.CsiSetCb] = []
        #: answer STOPPING (shutdown) with saAmfStoppingComplete; False: stay silent
        self.complete_stopping = True
        #: pending-operation callbacks, as ("CONFIRM" or "EXPIRED", flags); kept apart
        #: from ``seen`` (tests compare that one whole)
        self.pending: list[tuple[str, int]] = []
        self._done = 0

    def register(self) -> int | None:
        return self.cl.request(self.addr, self.conn, aw.AMF_REQ_REGISTER,
                               aw.encode_names(self.name.encode(), b""))

    def unregister(self) -> int | None:
        return self.cl.request(self.addr, self.conn, aw.AMF_REQ_UNREGISTER,
                               aw.encode_names(self.name.encode(), b""))

    def kill(self) -> None:
        """The process died: its connection closes."""
        self.dead = True
        self.conn.close()
        self.cl.hosts[self.addr].lib_exit(self.conn)
        self.cl.settle()

    def pump(self) -> int:
        """Handle new callbacks; the number answered."""
        if self.stopped or self.dead:
            return 0
        answered = 0
        host = self.cl.hosts[self.addr]
        while self._done < len(self.conn.callbacks):
            f = self.conn.callbacks[self._done]
            self._done += 1
            inv = None
            answer = aw.AMF_REQ_RESPONSE
            if f.msg_id == aw.AMF_CB_HEALTHCHECK:
                inv = aw.decode_healthcheck_cb_untrusted(f.body).invocation
                self.healthchecks += 1
            elif f.msg_id == aw.AMF_CB_READINESS_SET:
                cb = aw.decode_readiness_set_cb_untrusted(f.body)
                self.seen.append(("readiness", READINESS[cb.readiness_state]))
                inv = cb.invocation
                if cb.readiness_state == aw.SA_AMF_STOPPING:
                    answer = aw.AMF_REQ_STOPPING_COMPLETE
                    if not self.complete_stopping:
                        continue
            elif f.msg_id == aw.AMF_CB_CSI_SET:
                cs = aw.decode_csi_set_cb_untrusted(f.body)
                self.seen.append(("ha", HA[cs.ha_state]))
                self.csi_sets.append(cs)
                inv = cs.invocation
            elif f.msg_id == aw.AMF_CB_CSI_REMOVE:
                cr = aw.decode_csi_remove_cb_untrusted(f.body)
                self.seen.append(("remove", "REMOVE " + cr.csi_name.decode()))
                inv = cr.invocation
            elif f.msg_id == aw.AMF_CB_TERMINATE:
                self.seen.append(("terminate", "TERMINATE"))
                inv = aw.decode_invocation_cb_untrusted(f.body).invocation
            elif f.msg_id in (aw.AMF_CB_PENDING_CONFIRM, aw.AMF_CB_PENDING_EXPIRED):
                pc = aw.decode_invocation_cb_untrusted(f.body)
                confirm = f.msg_id == aw.AMF_CB_PENDING_CONFIRM
                self.pending.append(("CONFIRM" if confirm else "EXPIRED", pc.flags))
                if confirm:
                    inv = pc.invocation
            if inv is not None:
                host.lib_request(self.conn, answer, self.cl.next_seq(),
                                 aw.encode_response(aw.Response(inv, self.answer_with)))
                answered += 1
        return answered

    def states(self) -> list[str]:
        """Callbacks so far, as short words: IN_SERVICE, ACTIVE, ..."""
        return [v for _, v in self.seen]

    def take(self) -> list[str]:
        out = self.states()
        self.seen.clear()
        return out


class FakeSpawner:
    """``ServiceHost.spawner`` for one node: a "process" is a scripted ``Comp`` that
    registers the name in AIS_COMPONENT_NAME shortly after its start."""

    def __init__(self, cl: AmfCluster, addr: str) -> None:
        self.cl, self.addr = cl, addr
        self.started: list[FakeProcess] = []
        cl.hosts[addr].spawner = self

    def __call__(self, argv: list[str], env: dict[str, str], on_exit) -> FakeProcess:
        proc = FakeProcess(self, env["AIS_COMPONENT_NAME"], on_exit)
        self.started.append(proc)
        return proc

    def live(self) -> list[FakeProcess]:
        return [p for p in self.started if p.returncode is None]


class FakeProcess:
    _next_pid = 1000

    def __init__(self, spawner: FakeSpawner, name: str, on_exit) -> None:
        FakeProcess._next_pid += 1
        self.pid = FakeProcess._next_pid
        self.spawner, self.name, self.on_exit = spawner, name, on_exit
        self.returncode: int | None = None
        self.signals: list[int] = []
        cl = spawner.cl
        self.comp = Comp(cl, spawner.addr, name)
        cl.procs.append(self.comp)
        # registers once it has started (not inside the handler that started it)
        cl.sched.call_later(0.05, lambda: self._register())

    def _register(self) -> None:
        if self.returncode is None:
            self.comp.cl.hosts[self.spawner.addr].lib_request(
                self.comp.conn, aw.AMF_REQ_REGISTER, self.comp.cl.next_seq(),
                aw.encode_names(self.name.encode(), b""))

    def kill(self, sig: int) -> None:
        self.signals.append(sig)
        if self.returncode is not None:
            return
        self.returncode = -sig
        self.comp.dead = True
        self.comp.conn.close()
        host = self.comp.cl.hosts[self.spawner.addr]
        self.comp.cl.sched.call_later(0.0, lambda: (host.lib_exit(self.comp.conn),
                                                    self.on_exit(-sig)))
