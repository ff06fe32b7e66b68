"""AMF, the availability management framework (executive side).

Theory of operation
-------------------
Implements spec/amf.md (SAF AIS A.01.01 AMF) with the fixes its quirks call
for and the node/partition handling of its section 8.2.

Model.  The service groups, units, components and protection groups come
from ``groups.conf`` (``ais.config.AmfModel``), read once at start-up; every
node must load the same file.  Everything is iterated in file order.

Replicated state (identical on every member after each sync round and after
each delivered message), per component: registered, host node and the
host's connection id, an incarnation number (grows with every
registration, so an answer meant for an earlier registration is recognised),
the error (probable cause; 0 healthy, 30 NOT_RESPONDING: it cannot be
talked to), the *current* readiness and, per CSI it carries, HA state
(confirmed) and the *wanted* ones (the last request).  Per unit: a phase and a
role:

====================  ====================================================
phase                 meaning
====================  ====================================================
IDLE                  disabled: waits until every component is registered
                      and none has an error
ENABLING              IN_SERVICE requested of every component
ASSIGNING             the role (ACTIVE or STANDBY) requested of every one
ASSIGNED              every component confirmed the role
QUIESCING             a component failed: QUIESCED requested of the others
STOPPING              OUT_OF_SERVICE requested of the others
DRAINING              shutdown: readiness STOPPING requested of every one
                      (answered with saAmfStoppingComplete)
REMOVING              its assignments taken away (CSI-remove callbacks):
                      lock, shutdown, or a standby made spare
====================  ====================================================

and an administrative state (``Admin``): UNLOCKED, LOCKED (stays out of
service), SHUTTING_DOWN (on its way to LOCKED).

The role (NONE, ACTIVE, STANDBY) is decided in the exec handlers from
replicated state only, so every node counts the same active units (this
fixes the 2004 count of 5.4.1, which used unconfirmed local states).  A
unit keeps role ACTIVE while it quiesces: its standby is promoted only once
no component of the failed unit can still be active (every component that
can be talked to confirmed QUIESCED; the others are forced).

Decisions.  Every state change happens in an exec handler (a delivered ring
message) or at the end of a sync round, on every node at the same point of
the agreed order.  Only the node hosting a component talks to it: after a
handler has changed a component's wanted state, the host sends the
readiness-set or CSI-set callback with a fresh invocation bound to
(component, incarnation, kind, state) -- so a late answer confirms only what
it answered (fixes quirk Q3).  An SA_OK answer makes the host multicast
``MSG_CONFIRM``; its delivery sets the current state everywhere and the
unit moves on.

Detection, on the host only, then multicast as a fact (``MSG_FAULT`` or
``MSG_UNREGISTER``): a healthcheck not answered within
``healthcheck-timeout`` (one is sent every ``healthcheck-period`` to every
component holding an ACTIVE or STANDBY assignment), a readiness/CSI callback
not answered within ``response-timeout`` or answered with an error (cause
SOFTWARE_ERROR: the component is still talked to; but one that refuses to
give work up -- quiesced, CSI removal, out of service, stopping -- is cleaned
up as NOT_RESPONDING, so that its unit's failover or stop never waits on it), a
closed connection
(exit, crash, Ctrl-C, finalize).  Any process may report an error
(``MSG_ERROR_REPORT``) or cancel one (``MSG_ERROR_CANCEL``).  Healthcheck
keys: a component may call saAmfHealthcheckStart(comp, key) on the connection
it registered through, naming a ``healthcheck {`` block of its group; its host
then checks it with that block's period and timeout until
saAmfHealthcheckStop or its next registration (host-local: only the host
checks, so nothing is replicated).  Checks are always AMF-invoked (A.01.01 has
no component-invoked ones) and start by themselves, key or not.  Defaults:
100 ms, 40 ms, 5000 ms (``ais.config.ServiceGroup``): a stopped component
is noticed at most period + 40 ms after its last answer, leaving ~10 ms for
the failover itself (the aim: standby active within one period + 50 ms).

Failure of a component: if it cannot be talked to (unregistered or
NOT_RESPONDING) its state is forced to OUT_OF_SERVICE/QUIESCED at once
(one found NOT_RESPONDING is sent the terminate callback, a proxied one the
external restart callback, by its host at once: a process that was only
stopped finds it waiting when it runs again, and so stops acting in the
states others now hold);
its unit, if enabled, goes QUIESCING -> STOPPING -> IDLE, and comes back by
itself once every component is registered and healthy again (error cancel,
re-registration).  A repaired unit becomes STANDBY while the group has its
active units (no failback).

Redundancy models (N = ``active-units``, M = ``backup-units``; defaults and
limits in ``ais.config._ModelBuilder.redundancy``).  Units are ranked in
file order, the first preferred.

* 2n (N = M = 1), nplusm (N >= 1, M): a unit that finished ENABLING becomes
  ACTIVE while the group has fewer than N actives, else STANDBY while it has
  fewer than M standbys, else *spare* (in service, role NONE, no CSI).
  Whenever a group has fewer than N actives, the first STANDBY unit becomes
  ACTIVE (else the first spare); whenever it has fewer than M standbys, the
  first spare becomes STANDBY; more than M (after a merge): the last ones
  are made spare (CSI-remove).  No failback: a repaired or unlocked unit
  comes back as standby or spare, never taking over from a working active.
* nwayactive, noredundancy (M = 0; N defaults to every unit): up to N units
  ACTIVE, the rest spare; no standby.
* nway: roles are per CSI (protection group), so a unit may be active for
  some CSIs and standby for others (``Group.per_csi``; the unit's role is a
  summary).  Every CSI gets one ACTIVE member and M STANDBY members among
  the members whose unit is in service: a lost active is replaced by a
  standby member (else an unassigned one), choosing the unit with the fewest
  active assignments, then by rank; standbys likewise by fewest standbys.

Several CSIs per component: a component named by ``member=`` in several
protection groups carries each of those CSIs, with an HA state per (component,
CSI) (``Comp.has`` / ``want_has``): one CSI-set or CSI-remove callback per CSI
(naming it; activeCompName is that CSI's active), confirmed per CSI
(``MSG_CONFIRM`` names it), answered per CSI by saAmfHAStateGet, tracked per
protection group, streamed per CSI in the sync records.  In unit-role models
every CSI of a component takes the unit's role; nplusm with several active
units rejects it (a shared standby would become active for every CSI at once):
the AIS N+1 example (one unit standing by for several actives) is model=nway,
where the standby takes over only the failed active's CSI.  Several components of
one unit in one CSI (a protection group listing them): in unit-role models each
gets the CSI with the unit's role; a standby's activeCompName names the active
component at its own place among its unit's members of the CSI.  nway rejects it
(``ais.config``: per-CSI roles pick one component, not a unit).

CSI-set callbacks: csiFlags ADD_NEW_INSTANCE for a first assignment, else
ALL_INSTANCES; transition descriptor NEW_ASSIGN, or for a standby made active
QUIESCED / NOT_QUIESCED as the previous active of that CSI confirmed QUIESCED
or failed (``_handover``, host-side detail); activeCompName of a standby
assignment names the CSI's active component.

Administrative operations (``MSG_ADMIN``, from ``ais.amf_admin`` through any
node, decided in agreed order): lock = REMOVING -> STOPPING -> IDLE, then the
terminate callback, LOCKED; shutdown = DRAINING (readiness STOPPING, each
component answers with saAmfStoppingComplete within ``response-timeout``,
else it has failed) -> REMOVING -> ...; unlock = the unit re-enables by
itself (during DRAINING: back in service with its role).  Node lock: every
unlocked unit with a component on the node (or ``node=`` it) is locked and
remembers the node (``locked_by``); node unlock unlocks those.  An active unit
keeps counting as active until its assignments are gone, so the standby's
promotion gets descriptor QUIESCED.  saAmfPendingOperationGet answers
SHUTDOWN from a shutdown until the unit is out of service, SWITCHOVER likewise
for a lock.  When a pending operation ends, the host of each component of the
unit that can still be talked to sends saAmfPendingOperationConfirmCallback
(completed: the unit is locked out of service; answered with saAmfResponse,
after the terminate callback) or saAmfPendingOperationExpiredCallback (not
completed: cancelled by an unlock, superseded by a lock, or a component of the
unit failed meanwhile, e.g. missed its response-timeout).  Which operation is
pending is derived from the replicated state at the end of each handler, so
every node agrees on it (``_pending_callbacks``).

Error recovery (saAmfErrorReport's recommendedRecovery): INTERNALLY_RECOVERED
is only logged; COMPONENT_RESTART fails the unit over and sends the
component the terminate callback (its node kills it 1 s later if AMF started
it); the next registration of the component clears the error, but after
``RESTART_LIMIT`` (3) restarts since its errors were last cancelled the error
stays until saAmfErrorCancelAll.  NODE_SWITCHOVER / NODE_FAILOVER /
NODE_FAILFAST fail every component hosted on that component's node (no
reboot).  Anything else (NO_RECOMMENDATION, COMPONENT_FAILOVER,
CLUSTER_RESET): the component's unit fails over; the error stays until
cancelled or the component registers again.

Instantiation (host side, ``HostAPI.spawn``): a component with an
``instantiate=`` command is started by its unit's home node (``node=``, else
the ring members take the units in turn) while it is unregistered and its
unit unlocked; a process that exits is started again after ``SPAWN_DELAY``
(1 s), at most ``SPAWN_LIMIT`` (5) times in ``SPAWN_WINDOW`` (60 s); one that
the cluster failed as NOT_RESPONDING (hung, SIGSTOP) is killed (SIGKILL) and
so restarted; a locked unit's processes get SIGTERM 1 s after the terminate
callback.  Spawned processes die with the executive (parent-death signal).

Nodes.  At the end of every sync round (``sync_done``), on every member:
components hosted on nodes that are not members are unregistered (failed
without waiting for anyone) and standbys are promoted.  A joining node gets
the whole state in the round: when members hold different states
(``SyncInfo.transfer``) the lowest member of each state group streams every
unit record (``MSG_SYNC_UNIT``) and every member merges the streams the same
way:

* a component's record comes from the state group holding its host (its
  host is the authority on it); a component whose host is fresh or absent
  is unregistered;
* a unit whose records came from one state group keeps that group's phase
  and role; a unit assembled from several is failed (quiesced, then
  re-enabled as usual);
* **heal rule**: a group never keeps more ACTIVE units than
  ``active-units``: the actives of the state group with the lowest node id
  are kept, then the next group's, in file order; the others are demoted to
  STANDBY (a CSI-set STANDBY callback), and standbys beyond M made spare.
  nway: per CSI, the active of the lowest state group's unit is kept.
* a unit locked (or shutting down) on either side stays so: an operator's
  lock wins over an unlock made on the other side during the partition.

Split brain: each side of a partition keeps running AMF on its own and
promotes standbys of the units it lost, so both sides may have an active
unit until they merge (then the heal rule keeps one).  ``quorum=N`` on a
group stops that: the group makes units active only while the ring has at
least N members; a side with fewer demotes its active units to STANDBY and
promotes nothing.  Set it to a majority of the nodes (e.g. 2 of 3).

Proxied components: a proxy process registers a component with
proxyCompName naming itself (a registered component); the component's host and
connection are then the proxy's, so every callback of the proxied component
goes to the proxy, which answers it.  The proxy's name is replicated
(``Comp.proxy``, in the sync records): when the proxy unregisters (exit,
crash) its proxied components are unregistered too, and when it is found
NOT_RESPONDING they are too (nobody relays for them); their units fail over
as usual.  Unregistering with another proxy than the registered one is
BAD_OPERATION.  A proxied component is an external one: where a local one would
get the terminate callback its proxy gets saAmfExternalComponentRestartCallback
(recommended recovery COMPONENT_RESTART) or saAmfExternalComponentControlCallback
with SA_AMF_POWER_OFF (its unit locked or shut down), answered with saAmfResponse:
an error answer (SOFTWARE_ERROR) or none within response-timeout
(NOT_RESPONDING) is a failure of the component, multicast as MSG_FAULT.

Protection-group tracking: trackers on every node are told of every change
of a member's current readiness or HA state (CHANGES: every member, the
changed one as STATE_CHANGE; CHANGES_ONLY: the changed one).
"""
from __future__ import annotations

import enum
import ipaddress
import logging
import signal
import zlib
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

from ais.config import AmfComponent, AmfModel, GroupModel, ServiceGroup, ServiceUnit
from ais.log import RateLimiter
from ais.services.base import (
    DEFERRED, NOTICE, Deferred, ExecMessage, HostAPI, LibConn, ProcessHandle, Request, Service,
    SyncInfo, TimerHandle, applied_elsewhere, exec_handler, lib_handler, register_service,
)
from ais.totem.events import fmt_node
from saf import _amf_wire as aw
from saf._codec import Layout, array, flag, pad, u8, u16, u32
from saf.errors import (
    SA_OK, BadFlags, BadOperation, Exist, InvalidParam, NotExist,
)
from saf.types import SA_TRACK_CHANGES, SA_TRACK_CHANGES_ONLY, SA_TRACK_CURRENT

# --- ring messages --------------------------------------------------------------------------

MSG_REGISTER = 1
MSG_UNREGISTER = 2
MSG_ERROR_REPORT = 3
MSG_ERROR_CANCEL = 4
MSG_CONFIRM = 5
MSG_FAULT = 6
MSG_SYNC_UNIT = 7
MSG_MODEL = 8
MSG_ADMIN = 9

# Ring layouts (saf._codec), NAME as in saf._amf_wire:
# REGISTER: | conn_id u32 | NAME comp | NAME proxy (empty: none) |
REGISTER = Layout(None, "REGISTER", ("conn_id", u32), ("comp", aw.NAME), ("proxy", aw.NAME))
# UNREGISTER: | conn_id u32 | incarnation u32 (0: any) | closed u8 | NAME comp | NAME proxy |
UNREGISTER = Layout(None, "UNREGISTER", ("conn_id", u32), ("incarnation", u32),
                    ("closed", flag), ("comp", aw.NAME), ("proxy", aw.NAME))
# ERROR_REPORT: the library's ERROR_REPORT body as is.  ERROR_CANCEL: NAME comp.
# CONFIRM: | incarnation u32 | kind u8 (1 readiness, 2 HA) | state u8 | NAME comp |
#  NAME csi (HA: the CSI confirmed; readiness: empty) |
CONFIRM = Layout(None, "CONFIRM", ("incarnation", u32), ("kind", u8), ("state", u8),
                 ("comp", aw.NAME), ("csi", aw.NAME))
# FAULT: | incarnation u32 | probable cause u32 | NAME comp |
FAULT = Layout(None, "FAULT", ("incarnation", u32), ("cause", u32), ("comp", aw.NAME))
# MODEL (sync, every member): | crc32 of the groups.conf model u32 |
MODEL = Layout(None, "MODEL", ("crc", u32))
# ADMIN: the library's ADMIN body as is (saf._amf_wire.ADMIN_REQ).

KIND_READINESS = 1
KIND_HA = 2
KIND_HEALTHCHECK = 3
KIND_TERMINATE = 4
KIND_PENDING = 5
KIND_EXTERNAL = 6  # external restart/control callback (a proxied component)

#: COMPONENT_RESTART recoveries of a component before it escalates to a failover that
#: only saAmfErrorCancelAll undoes
RESTART_LIMIT = 3
#: instantiation: a process that exited is started again after SPAWN_DELAY s, at most
#: SPAWN_LIMIT times in SPAWN_WINDOW s
SPAWN_DELAY = 1.0
SPAWN_LIMIT = 5
SPAWN_WINDOW = 60
_NODE_RECOVERIES = (aw.SA_AMF_NODE_SWITCHOVER, aw.SA_AMF_NODE_FAILOVER, aw.SA_AMF_NODE_FAILFAST)

OOS = aw.SA_AMF_OUT_OF_SERVICE
IN_SERVICE = aw.SA_AMF_IN_SERVICE
ACTIVE = aw.SA_AMF_ACTIVE
STANDBY = aw.SA_AMF_STANDBY
QUIESCED = aw.SA_AMF_QUIESCED
NOT_RESPONDING = aw.SA_AMF_NOT_RESPONDING

HA_WORDS: dict[int, str] = {ACTIVE: "active", STANDBY: "standby"}
_VALID_TRACK_BITS = SA_TRACK_CURRENT | SA_TRACK_CHANGES | SA_TRACK_CHANGES_ONLY


class Phase(enum.IntEnum):
    IDLE = 0
    ENABLING = 1
    ASSIGNING = 2
    ASSIGNED = 3
    QUIESCING = 4
    STOPPING = 5
    DRAINING = 6
    REMOVING = 7


class Role(enum.IntEnum):
    NONE = 0
    ACTIVE = 1
    STANDBY = 2


class Admin(enum.IntEnum):
    UNLOCKED = aw.AMF_ADMIN_UNLOCKED
    LOCKED = aw.AMF_ADMIN_LOCKED
    SHUTTING_DOWN = aw.AMF_ADMIN_SHUTTING_DOWN


_ENABLED = (Phase.ENABLING, Phase.ASSIGNING, Phase.ASSIGNED)
#: phases a component failure interrupts (the unit then quiesces and stops)
_FAILABLE = _ENABLED + (Phase.DRAINING, Phase.REMOVING)
#: phases in which a unit holds (or is taking) the assignment its role says
_READY = (Phase.ASSIGNING, Phase.ASSIGNED)


# --- replicated state ---------------------------------------------------------------------

@dataclass(eq=False)
class Comp:
    spec: AmfComponent
    unit: Unit
    registered: bool = False
    host: int = 0
    conn_id: int = 0
    incarnation: int = 0
    error: int = 0
    readiness: int = OOS
    want_readiness: int = OOS
    #: per CSI (``spec.csis``): the confirmed HA state and the wanted one
    has: dict[str, int] = field(default_factory=dict)
    want_has: dict[str, int] = field(default_factory=dict)
    #: COMPONENT_RESTART recoveries since its errors were last cancelled
    restarts: int = 0
    #: the proxy component it was registered with ("" none): it fails with its proxy
    proxy: str = ""

    def __post_init__(self) -> None:
        for csi in self.spec.csis:
            self.has.setdefault(csi, QUIESCED)
            self.want_has.setdefault(csi, QUIESCED)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def csis(self) -> tuple[str, ...]:
        return self.spec.csis

    def quiesce_all(self, *, current: bool) -> None:
        """Want QUIESCED for every CSI (and hold it now too when ``current``)."""
        for csi in self.want_has:
            self.want_has[csi] = QUIESCED
            if current:
                self.has[csi] = QUIESCED

    @property
    def talkable(self) -> bool:
        """The host can still send it callbacks."""
        return self.registered and self.error != NOT_RESPONDING

    def key(self) -> tuple:
        return (self.name, self.registered, self.host, self.conn_id, self.incarnation,
                self.error, int(self.readiness), int(self.want_readiness),
                tuple((csi, int(self.has[csi]), int(self.want_has[csi])) for csi in self.csis),
                self.restarts, self.proxy)


@dataclass(eq=False)
class Unit:
    spec: ServiceUnit
    group: Group
    comps: list[Comp] = field(default_factory=list)
    phase: Phase = Phase.IDLE
    role: Role = Role.NONE
    admin: Admin = Admin.UNLOCKED
    #: the node whose lock (AMF_ADMIN_LOCK_NODE) locked it (0: none)
    locked_by: int = 0
    #: its rank in the group: file order, the first preferred
    rank: int = 0

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(eq=False)
class Group:
    spec: ServiceGroup
    units: list[Unit] = field(default_factory=list)

    @property
    def per_csi(self) -> bool:
        """N-way: roles are per component (CSI), not per unit."""
        return self.spec.model == GroupModel.NWAY

    def active_count(self) -> int:
        return sum(1 for u in self.units if u.role == Role.ACTIVE)

    def standby_count(self) -> int:
        return sum(1 for u in self.units if u.role == Role.STANDBY)


# --- host-local bookkeeping ---------------------------------------------------------------

@dataclass
class _Invocation:
    comp: str
    incarnation: int
    kind: int
    state: int
    timer: TimerHandle | None = None
    #: a later request of the same kind replaced it
    superseded: bool = False
    #: the CSI of an HA request
    csi: str = ""


@dataclass
class _Proc:
    """A component process this node started (``instantiate=``)."""

    handle: ProcessHandle | None = None
    #: host-clock times of its recent starts (SPAWN_LIMIT per SPAWN_WINDOW)
    starts: list[float] = field(default_factory=list)
    #: a start waiting (SPAWN_DELAY after an exit, or the rate limit)
    timer: TimerHandle | None = None
    stop_timer: TimerHandle | None = None
    killed: bool = False
    stopping: bool = False


@dataclass
class _Healthcheck:
    incarnation: int
    timer: TimerHandle | None = None
    deadline: TimerHandle | None = None
    invocation: int = 0


@dataclass(frozen=True)
class _CsiRecord:
    ha: int
    want_ha: int


@dataclass(frozen=True)
class _CompRecord:
    name: bytes
    registered: bool
    readiness: int
    want_readiness: int
    host: int
    conn_id: int
    incarnation: int
    error: int
    restarts: int = 0
    proxy: bytes = b""
    #: per CSI of the component (file order)
    csis: tuple[_CsiRecord, ...] = ()


@dataclass(frozen=True)
class _UnitRecord:
    name: bytes
    phase: int
    role: int
    comps: tuple[_CompRecord, ...]
    admin: int = 0
    locked_by: int = 0


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _node_of(raw: bytes) -> int | None:
    """A node's Totem id from its IPv4 address as text (None: not an address)."""
    try:
        return int(ipaddress.IPv4Address(_name(raw)))
    except ValueError:
        return None


# SYNC_UNIT: | phase u8 | role u8 | count u16 | admin u8 | pad 3 | locked by u32 | NAME unit |,
#  then per component (file order)
#  NAME comp, | registered u8 | readiness u8 | want readiness u8 | CSI count u8 |
#  restarts u8 | pad 3 | host u32 | conn_id u32 | incarnation u32 | error u32 |, NAME proxy,
#  then per CSI of the component (its file order) | ha u8 | want ha u8 |
CSI_RECORD = Layout(_CsiRecord, "CSI record", ("ha", u8), ("want_ha", u8))
COMP_RECORD = Layout(_CompRecord, "component record", ("name", aw.NAME), ("registered", flag),
                     ("readiness", u8), ("want_readiness", u8), ("ncsi", u8),
                     ("restarts", u8), pad(3), ("host", u32), ("conn_id", u32),
                     ("incarnation", u32), ("error", u32), ("proxy", aw.NAME),
                     ("csis", array(CSI_RECORD, "ncsi")))
UNIT_RECORD = Layout(_UnitRecord, "unit record", ("phase", u8), ("role", u8), ("count", u16),
                     ("admin", u8), pad(3), ("locked_by", u32), ("name", aw.NAME),
                     ("comps", array(COMP_RECORD, "count")))


def encode_unit_record(rec: _UnitRecord) -> bytes:
    return UNIT_RECORD.encode(rec)


def decode_unit_record_untrusted(data: bytes) -> _UnitRecord:
    return UNIT_RECORD.decode(data)


# --- the service --------------------------------------------------------------------------

@register_service
class AmfService(Service):
    """Availability management.  Option: ``model`` (else the host's, else empty)."""

    name = "amf"
    service_id = aw.AMF_SERVICE_ID

    def __init__(self, model: AmfModel | None = None) -> None:
        self._model_option = model
        self.groups: list[Group] = []
        self.comps: dict[str, Comp] = {}
        self.units: dict[str, Unit] = {}
        self.protections: dict[str, tuple[str, ...]] = {}
        #: members of the configuration of the last completed sync round
        self.members: tuple[int, ...] = ()
        # host-local
        self.conns: dict[int, LibConn] = {}
        self.trackers: dict[int, dict[str, int]] = {}
        self.invocations: dict[int, _Invocation] = {}
        self._next_invocation = 1
        self.healthchecks: dict[str, _Healthcheck] = {}
        #: component -> (incarnation, key) of the healthcheck it started (saAmfHealthcheckStart)
        self.hc_keys: dict[str, tuple[int, str]] = {}
        #: component processes this node started
        self.procs: dict[str, _Proc] = {}
        #: (component, incarnation) this node reported failed: no more callbacks to it
        self._faulted: set[tuple[str, int]] = set()
        self._round: SyncInfo | None = None
        self._streams: dict[int, dict[str, _UnitRecord]] = {}
        self._sync_cursor = 0
        self._model_sent = False
        #: (component, CSI) whose current state changed in this handler (PG tracking)
        self._changed: list[tuple[Comp, str]] = []
        #: CSI -> did its last active quiesce gracefully (transition descriptors)
        self._handover: dict[str, bool] = {}
        #: unit -> its pending operation at the end of the last handler (derived from the
        #: replicated state, so the same on every node; only hosts send the callbacks)
        self._pending: dict[str, int] = {}
        #: units whose pending operation met a component failure (it expires)
        self._pending_broken: set[str] = set()
        #: a handler failed components of other groups (proxied ones): settle every group
        self._wide = False

    # --- set-up ------------------------------------------------------------------------

    def exec_init(self, host: HostAPI) -> None:
        super().exec_init(host)
        self.log = host.logger("AMF")
        self._bad_log = RateLimiter(burst=5, interval=10.0, clock=host.now)
        model = self._model_option
        if model is None:
            model = getattr(host, "model", None)
        self.model: AmfModel = model if model is not None else AmfModel(())
        self.model_crc = zlib.crc32(repr(self.model.groups).encode())
        for g in self.model.groups:
            group = Group(g)
            for rank, u in enumerate(g.units):
                unit = Unit(u, group, rank=rank)
                for c in u.components:
                    comp = Comp(c, unit)
                    unit.comps.append(comp)
                    self.comps[c.name] = comp
                group.units.append(unit)
                self.units[u.name] = unit
            for p in g.protections:
                self.protections[p.name] = p.members
            self.groups.append(group)

    # --- sending -----------------------------------------------------------------------

    def _send_own(self, msg_id: int, payload: bytes) -> None:
        """Multicast a fact this node found (no client waits); the host retries it."""
        self.host.mcast_retried(self, msg_id, payload)

    def _new_invocation(self, inv: _Invocation) -> int:
        n = self._next_invocation
        self._next_invocation = n + 1 if n < 2**63 else 1
        self.invocations[n] = inv
        return n

    def _drop_invocations(self, comp: str) -> None:
        for n in [n for n, i in self.invocations.items() if i.comp == comp]:
            inv = self.invocations.pop(n)
            if inv.timer is not None:
                inv.timer.cancel()

    # --- talking to components (host only) ------------------------------------------------

    def _conn_of(self, c: Comp) -> LibConn | None:
        if c.host != self.host.node_id or not c.talkable \
                or (c.name, c.incarnation) in self._faulted:
            return None
        conn = self.conns.get(c.conn_id)
        return None if conn is None or conn.closed else conn

    def _outstanding(self, c: Comp, kind: int, state: int, csi: str = "") -> bool:
        return any(i.comp == c.name and i.incarnation == c.incarnation and i.kind == kind
                   and i.state == state and i.csi == csi and not i.superseded
                   for i in self.invocations.values())

    def _talk(self, c: Comp, kind: int, csi: str = "") -> None:
        """Send ``c`` the callback for its wanted state of ``kind`` (for ``csi``: HA) (if
        hosted here)."""
        conn = self._conn_of(c)
        if conn is None:
            return
        state = c.want_readiness if kind == KIND_READINESS else c.want_has[csi]
        for old in self.invocations.values():
            if old.comp == c.name and old.kind == kind and old.csi == csi \
                    and not old.superseded:
                # Its answer is still welcome but confirms nothing any more.
                old.superseded = True
                if old.timer is not None:
                    old.timer.cancel()
        inv = _Invocation(c.name, c.incarnation, kind, state, csi=csi)
        n = self._new_invocation(inv)
        name = c.name.encode()
        if kind == KIND_READINESS:
            conn.send_callback(aw.AMF_CB_READINESS_SET, aw.encode_readiness_set_cb(
                aw.ReadinessSetCb(n, name, state)))
        elif state == QUIESCED and c.unit.phase == Phase.REMOVING:
            # The assignment is taken away (lock, shutdown, a standby made spare).
            conn.send_callback(aw.AMF_CB_CSI_REMOVE, aw.encode_csi_remove_cb(aw.CsiRemoveCb(
                n, name, csi.encode(), aw.SA_AMF_CSI_ALL_INSTANCES)))
        else:
            # One callback per CSI, naming it (several CSIs may differ in state).
            new = c.has[csi] == QUIESCED and state != QUIESCED
            conn.send_callback(aw.AMF_CB_CSI_SET, aw.encode_csi_set_cb(aw.CsiSetCb(
                n, name, csi.encode(),
                aw.SA_AMF_CSI_ADD_NEW_ISTANCE if new else aw.SA_AMF_CSI_ALL_INSTANCES, state,
                self._active_name(c, csi, state), self._descriptor(c, csi, state))))
        timeout = c.unit.group.spec.response_timeout / 1000.0
        inv.timer = self.host.call_later(timeout, lambda: self._response_timed_out(n))

    def _descriptor(self, c: Comp, csi: str, state: int) -> int:
        """SaAmfCSITransitionDescriptorT of a CSI-set callback.

        NEW_ASSIGN: a first assignment; a standby made active learns whether the
        previous active was QUIESCED (it confirmed) or NOT_QUIESCED (it failed).
        """
        if state == ACTIVE and c.has[csi] == STANDBY:
            graceful = self._handover.get(csi)
            if graceful is not None:
                return aw.SA_AMF_CSI_QUIESCED if graceful else aw.SA_AMF_CSI_NOT_QUIESCED
        return aw.SA_AMF_CSI_NEW_ASSIGN

    def _holds_active(self, oc: Comp, csi: str) -> bool:
        if oc.unit.group.per_csi:
            return oc.want_has[csi] == ACTIVE or oc.has[csi] == ACTIVE
        return oc.unit.role == Role.ACTIVE

    def _active_name(self, c: Comp, csi: str, state: int) -> bytes:
        """activeCompName: a standby names the CSI's active component; when a unit has
        several components in the CSI, the active one at the standby's own place among
        its unit's members of the CSI (else the first active)."""
        if state != STANDBY:
            return c.name.encode()
        members = [self.comps[m] for m in self.protections.get(csi, ()) if m in self.comps]
        actives = [oc for oc in members if oc is not c and self._holds_active(oc, csi)]
        if not actives:
            return b""
        place = [oc for oc in members if oc.unit is c.unit].index(c)
        same_place = [oc for oc in actives
                      if [m for m in members if m.unit is oc.unit].index(oc) == place]
        return (same_place or actives)[0].name.encode()

    def _terminate(self, c: Comp, restart: bool = False, failed: LibConn | None = None) -> None:
        """The terminate callback (its unit was taken out of service administratively, or
        it is to restart).  A proxied component is an external one: its proxy gets the
        external restart callback, or the external control callback with POWER_OFF for an
        administrative stop; an error answer or none in time means it failed.

        ``failed``: the connection of a component already failed as not responding (no
        longer talked to otherwise); it is sent the callback all the same, and no answer
        to it matters."""
        conn = failed or self._conn_of(c)
        if conn is None:
            return
        if c.proxy and not failed:
            inv = _Invocation(c.name, c.incarnation, KIND_EXTERNAL, 0)
            n = self._new_invocation(inv)
            if restart:
                conn.send_callback(aw.AMF_CB_EXT_RESTART, aw.encode_invocation_cb(
                    aw.InvocationCb(n, c.name.encode())))
            else:
                conn.send_callback(aw.AMF_CB_EXT_CONTROL, aw.encode_invocation_cb(
                    aw.InvocationCb(n, c.name.encode(), aw.SA_AMF_POWER_OFF)))
            inv.timer = self.host.call_later(c.unit.group.spec.response_timeout / 1000.0,
                                             lambda: self._response_timed_out(n))
            return
        kind = KIND_EXTERNAL if c.proxy else KIND_TERMINATE
        inv = _Invocation(c.name, c.incarnation, kind, 0)
        n = self._new_invocation(inv)
        conn.send_callback(aw.AMF_CB_EXT_RESTART if c.proxy else aw.AMF_CB_TERMINATE,
                           aw.encode_invocation_cb(aw.InvocationCb(n, c.name.encode())))
        # Its answer changes nothing (the unit is out of service already): forget it later.
        inv.timer = self.host.call_later(c.unit.group.spec.response_timeout / 1000.0,
                                         lambda: self._forget_invocation(n))

    def _pending_callbacks(self) -> None:
        """A unit's pending operation ended: its components hear whether it completed
        (saAmfPendingOperationConfirmCallback, answered with saAmfResponse) or not
        (saAmfPendingOperationExpiredCallback: cancelled by an unlock, superseded by a
        lock, or broken by a component failure or a missed response-timeout)."""
        for unit in self.units.values():
            now = self._unit_pending(unit)
            before = self._pending.get(unit.name, 0)
            if now == before:
                continue
            self._pending[unit.name] = now
            if before == 0:
                continue
            broken = unit.name in self._pending_broken
            self._pending_broken.discard(unit.name)
            done = now == 0 and not broken and unit.admin == Admin.LOCKED \
                and unit.phase == Phase.IDLE
            self.log.log(NOTICE, "unit %s: pending %s %s", unit.name,
                         "shutdown" if before == aw.SA_AMF_SHUTDOWN_OPERATION else "switchover",
                         "completed" if done else "expired")
            for c in unit.comps:
                self._pending_callback(c, before, done)

    def _pending_callback(self, c: Comp, flags: int, done: bool) -> None:
        conn = self._conn_of(c)
        if conn is None:
            return
        if not done:
            conn.send_callback(aw.AMF_CB_PENDING_EXPIRED, aw.encode_invocation_cb(
                aw.InvocationCb(0, c.name.encode(), flags)))
            return
        inv = _Invocation(c.name, c.incarnation, KIND_PENDING, flags)
        n = self._new_invocation(inv)
        conn.send_callback(aw.AMF_CB_PENDING_CONFIRM, aw.encode_invocation_cb(
            aw.InvocationCb(n, c.name.encode(), flags)))
        # Its answer changes nothing (the operation is over): forget it later.
        inv.timer = self.host.call_later(c.unit.group.spec.response_timeout / 1000.0,
                                         lambda: self._forget_invocation(n))

    def _forget_invocation(self, n: int) -> None:
        self.invocations.pop(n, None)

    def _response_timed_out(self, n: int) -> None:
        inv = self.invocations.pop(n, None)
        if inv is None:
            return
        self.log.warning("component %s did not answer a callback in time", inv.comp)
        self._report_fault(inv.comp, inv.incarnation, NOT_RESPONDING)

    def _report_fault(self, comp: str, incarnation: int, cause: int) -> None:
        if cause == NOT_RESPONDING:
            if (comp, incarnation) not in self._faulted:
                self._stop_unresponsive(self.comps[comp], incarnation)
            self._faulted.add((comp, incarnation))
            self._stop_healthcheck(comp)
        self._send_own(MSG_FAULT, FAULT.pack(incarnation, cause, comp.encode()))

    def _stop_unresponsive(self, c: Comp, incarnation: int) -> None:
        """``c`` stopped answering: it gets the terminate callback (a proxied one, the
        external restart callback) now.  A process that is merely stopped (SIGSTOP, a
        long pause) finds it waiting when it runs again, and stops acting in the states
        the cluster has meanwhile taken from it (others may hold them by then)."""
        conn = self.conns.get(c.conn_id)
        if (c.host != self.host.node_id or c.incarnation != incarnation or not c.registered
                or conn is None or conn.closed):
            return
        self.log.log(NOTICE, "component %s does not respond: told to terminate", c.name)
        self._terminate(c, restart=True, failed=conn)

    def _lost_registration(self, c: Comp, conn: LibConn) -> None:
        """The process on ``conn`` registered ``c`` on its side of a partition, and the
        merge kept another side's registration (a process started there, or the same
        program run on two nodes): it serves nothing now, and is told to terminate (one
        this node started is stopped too), lest it go on acting in its side's states."""
        self.log.log(NOTICE, "component %s: the merge kept its registration on %s; the "
                     "process registered here is told to terminate", c.name,
                     fmt_node(c.host) if c.registered else "no node")
        self._terminate(c, restart=True, failed=conn)
        p = self.procs.get(c.name)
        if p is not None and not (c.registered and c.host == self.host.node_id):
            self._stop_process(p, "it lost its registration in a merge")

    # --- healthchecks (host only) -----------------------------------------------------------

    def _wants_healthcheck(self, c: Comp) -> bool:
        if self._conn_of(c) is None or c.error != 0 or c.unit.phase not in _READY:
            return False
        if any(c.has[s] in (ACTIVE, STANDBY) and c.want_has[s] in (ACTIVE, STANDBY)
               for s in c.csis):
            return True
        # In service without an assignment (a spare, an nway member with no CSI): checked
        # too, so that a hung one is not picked when a standby or active is needed.
        return (c.readiness == c.want_readiness == IN_SERVICE
                and all(c.has[s] == c.want_has[s] == QUIESCED for s in c.csis)
                and (c.unit.role == Role.NONE or c.unit.group.per_csi))

    def _hc_timing(self, c: Comp) -> tuple[float, float]:
        """Period and timeout (s) of ``c``'s checks: of the key it started, else its
        group's."""
        spec = c.unit.group.spec
        started = self.hc_keys.get(c.name)
        hc = spec.healthcheck(started[1]) if started and started[0] == c.incarnation else None
        if hc is None:
            return spec.healthcheck_period / 1000.0, spec.healthcheck_timeout / 1000.0
        return hc.period / 1000.0, hc.timeout / 1000.0

    def _refresh_healthchecks(self) -> None:
        me = self.host.node_id
        for c in self.comps.values():
            hc = self.healthchecks.get(c.name)
            want = c.host == me and self._wants_healthcheck(c)
            if hc is not None and (not want or hc.incarnation != c.incarnation):
                self._stop_healthcheck(c.name)
                hc = None
            if want and hc is None:
                hc = _Healthcheck(c.incarnation)
                self.healthchecks[c.name] = hc
                period, _ = self._hc_timing(c)
                hc.timer = self.host.call_later(period, self._hc_ticker(c.name))

    def _hc_ticker(self, name: str) -> Callable[[], None]:
        return lambda: self._hc_tick(name)

    def _stop_healthcheck(self, name: str) -> None:
        hc = self.healthchecks.pop(name, None)
        if hc is None:
            return
        for t in (hc.timer, hc.deadline):
            if t is not None:
                t.cancel()
        self.invocations.pop(hc.invocation, None)

    def _hc_tick(self, name: str) -> None:
        hc = self.healthchecks.get(name)
        c = self.comps[name]
        if hc is None:
            return
        conn = self._conn_of(c)
        if conn is None or c.incarnation != hc.incarnation:
            self._stop_healthcheck(name)
            return
        period, timeout = self._hc_timing(c)
        if hc.deadline is None:
            n = self._new_invocation(_Invocation(name, hc.incarnation, KIND_HEALTHCHECK, 0))
            hc.invocation = n
            conn.send_callback(aw.AMF_CB_HEALTHCHECK, aw.encode_healthcheck_cb(
                aw.HealthcheckCb(n, name.encode(), aw.SA_AMF_HEARTBEAT)))
            hc.deadline = self.host.call_later(timeout, lambda: self._hc_missed(name, n))
        hc.timer = self.host.call_later(period, lambda: self._hc_tick(name))

    def _hc_missed(self, name: str, n: int) -> None:
        hc = self.healthchecks.get(name)
        if hc is None or hc.invocation != n:
            return
        self.log.warning("component %s missed a healthcheck", name)
        self._report_fault(name, hc.incarnation, NOT_RESPONDING)

    # --- the replicated state machine --------------------------------------------------------

    def _set_current(self, c: Comp, readiness: int | None = None, ha: int | None = None,
                     forced: bool = False, csi: str | None = None) -> None:
        """Set the current readiness, and the HA state of ``csi`` (None: every CSI)."""
        if readiness is not None and readiness != c.readiness:
            c.readiness = readiness
            self._changed.extend((c, s) for s in c.csis)
        if ha is None:
            return
        for s in c.csis if csi is None else (csi,):
            if c.has[s] == ACTIVE and ha != ACTIVE:
                self._handover[s] = not forced
            if c.has[s] != ha:
                c.has[s] = ha
                self._changed.append((c, s))

    def _request(self, c: Comp, kind: int, state: int, csi: str | None = None) -> None:
        """Want ``state`` of ``c`` (HA: for ``csi``, None every CSI); its host sends the
        callback (nothing if already wanted)."""
        if not c.talkable:
            return
        if kind == KIND_READINESS:
            if c.want_readiness == state:
                return
            c.want_readiness = state
            self._talk(c, kind)
            return
        for s in c.csis if csi is None else (csi,):
            if c.want_has[s] != state:
                c.want_has[s] = state
                self._talk(c, kind, s)

    def _force_down(self, c: Comp) -> None:
        """A component that cannot be talked to is out of service and quiesced at once."""
        c.want_readiness = OOS
        c.quiesce_all(current=False)
        self._set_current(c, OOS, QUIESCED, forced=True)
        if c.host == self.host.node_id:
            self._drop_invocations(c.name)
            self._stop_healthcheck(c.name)

    def _fail(self, unit: Unit) -> None:
        """A component of ``unit`` failed (error or unregistered)."""
        if self._unit_pending(unit):
            self._pending_broken.add(unit.name)
        for c in unit.comps:
            if not c.talkable:
                self._force_down(c)
        if unit.phase in _FAILABLE:
            self.log.log(NOTICE, "unit %s failed; taking it out of service", unit.name)
            unit.phase = Phase.QUIESCING
            if unit.role == Role.STANDBY:
                unit.role = Role.NONE
            for c in unit.comps:
                self._request(c, KIND_HA, QUIESCED)

    def _step(self, unit: Unit) -> bool:
        comps = unit.comps
        live = [c for c in comps if c.talkable]
        g = unit.group
        if unit.phase == Phase.IDLE:
            if unit.admin == Admin.SHUTTING_DOWN:
                unit.admin = Admin.LOCKED
                return True
            if unit.admin == Admin.UNLOCKED and all(c.registered and c.error == 0
                                                    for c in comps):
                unit.phase = Phase.ENABLING
                for c in comps:
                    self._request(c, KIND_READINESS, IN_SERVICE)
                return True
        elif unit.phase == Phase.ENABLING:
            if all(c.readiness == IN_SERVICE and c.want_readiness == IN_SERVICE for c in comps):
                if g.per_csi or unit.role != Role.NONE:
                    # N-way: the CSIs are handed out by _balance; a unit whose shutdown
                    # was cancelled keeps its role.
                    unit.phase = Phase.ASSIGNING
                    if not g.per_csi:
                        for c in comps:
                            self._request(c, KIND_HA, int(unit.role))
                    return True
                self._first_role(unit)
                return True
        elif unit.phase == Phase.ASSIGNING:
            if all(c.has[s] == self._target(c, s) == c.want_has[s]
                   for c in comps for s in c.csis):
                unit.phase = Phase.ASSIGNED
                self.log.log(NOTICE, "unit %s is %s", unit.name, self._role_text(unit))
                return True
        elif unit.phase == Phase.DRAINING:
            if all(c.readiness == aw.SA_AMF_STOPPING and c.want_readiness == aw.SA_AMF_STOPPING
                   for c in live):
                self._remove(unit)
                return True
        elif unit.phase == Phase.REMOVING:
            if all(c.has == c.want_has for c in live) and (
                    g.per_csi or all(c.want_has[s] == QUIESCED for c in live for s in c.csis)):
                if unit.admin == Admin.UNLOCKED:
                    # A standby made spare (or an unlock while it was going down).
                    unit.phase = Phase.ASSIGNED
                    unit.role = self._summary(unit) if g.per_csi else Role.NONE
                    if any(c.readiness != IN_SERVICE for c in live):
                        unit.phase, unit.role = Phase.ENABLING, Role.NONE
                        for c in live:
                            self._request(c, KIND_READINESS, IN_SERVICE)
                else:
                    self._stop(unit)
                return True
        elif unit.phase == Phase.QUIESCING:
            if all(c.has[s] == QUIESCED == c.want_has[s] for c in live for s in c.csis):
                self._stop(unit)
                return True
        elif unit.phase == Phase.STOPPING and all(
                c.readiness == OOS and c.want_readiness == OOS for c in live):
            unit.phase = Phase.IDLE
            if unit.admin != Admin.UNLOCKED:
                self.log.log(NOTICE, "unit %s is locked out of service", unit.name)
                unit.admin = Admin.LOCKED
                for c in live:
                    self._terminate(c)
            else:
                self.log.log(NOTICE, "unit %s is out of service", unit.name)
            return True
        return False

    def _stop(self, unit: Unit) -> None:
        unit.phase = Phase.STOPPING
        unit.role = Role.NONE
        for c in unit.comps:
            if c.talkable:
                self._request(c, KIND_READINESS, OOS)

    def _remove(self, unit: Unit) -> None:
        """Take the unit's assignments away (CSI-remove callbacks)."""
        unit.phase = Phase.REMOVING
        for c in unit.comps:
            if c.talkable:
                self._request(c, KIND_HA, QUIESCED)

    def _target(self, c: Comp, csi: str) -> int:
        """The HA state ``c`` is being given for ``csi`` in an assigning unit."""
        if c.unit.group.per_csi:
            return c.want_has[csi]
        return int(c.unit.role) if c.unit.role != Role.NONE else QUIESCED

    @staticmethod
    def _summary(unit: Unit) -> Role:
        """N-way: the unit's role is the best of its components' assignments."""
        has = {h for c in unit.comps for h in (*c.has.values(), *c.want_has.values())}
        return Role.ACTIVE if ACTIVE in has else Role.STANDBY if STANDBY in has else Role.NONE

    @staticmethod
    def _role_text(unit: Unit) -> str:
        if unit.group.per_csi:
            return ", ".join(f"{c.name}{'/' + s if len(c.csis) > 1 else ''} "
                             f"{HA_WORDS.get(c.want_has[s], '-')}"
                             for c in unit.comps for s in c.csis)
        return "spare" if unit.role == Role.NONE else unit.role.name.lower()

    def _first_role(self, unit: Unit) -> None:
        """A unit is in service: active, standby or spare, as the group's counts say."""
        g = unit.group
        if self._may_activate(g) and g.active_count() < g.spec.active_units:
            role = Role.ACTIVE
        elif g.standby_count() < g.spec.backup_units:
            role = Role.STANDBY
        else:
            role = Role.NONE
        if role == Role.NONE:
            unit.role, unit.phase = Role.NONE, Phase.ASSIGNED
            self.log.log(NOTICE, "unit %s is spare", unit.name)
        else:
            self._assign(unit, role)

    def _may_activate(self, g: Group) -> bool:
        return g.spec.quorum <= 0 or len(self.members) >= g.spec.quorum

    def _settle(self, group: Group) -> None:
        """Run every unit of ``group`` forward, then keep its active count right."""
        for _ in range(100):  # bounded: each pass moves some unit forward or stops
            moved = False
            for unit in group.units:
                while self._step(unit):
                    moved = True
            if self._balance(group):
                moved = True
            if not moved:
                break

    def _balance(self, g: Group) -> bool:
        if g.per_csi:
            return self._balance_csis(g)
        moved = False
        if not self._may_activate(g):
            for unit in g.units:
                if unit.role == Role.ACTIVE and unit.phase in _READY:
                    self.log.log(NOTICE, "unit %s: group %s has no quorum; standby",
                                 unit.name, g.spec.name)
                    self._assign(unit, Role.STANDBY)
                    moved = True
            return moved
        spares = [u for u in g.units if u.role == Role.NONE and u.phase == Phase.ASSIGNED
                  and u.admin == Admin.UNLOCKED]
        while g.active_count() < g.spec.active_units:
            cand = next((u for u in g.units if u.role == Role.STANDBY and u.phase in _READY),
                        None)
            if cand is None and spares:
                cand = spares.pop(0)
            if cand is None:
                if any(u.phase in (Phase.QUIESCING, Phase.STOPPING) for u in g.units):
                    self._bad_log.log(self.log, logging.WARNING,
                                      "group %s: no standby available", g.spec.name)
                break
            self.log.log(NOTICE, "unit %s: promoting to active", cand.name)
            self._assign(cand, Role.ACTIVE)
            moved = True
        while spares and g.standby_count() < g.spec.backup_units:
            cand = spares.pop(0)
            self.log.log(NOTICE, "unit %s: spare made standby", cand.name)
            self._assign(cand, Role.STANDBY)
            moved = True
        standbys = [u for u in g.units if u.role == Role.STANDBY and u.phase in _READY]
        while len(standbys) > g.spec.backup_units:
            # More standbys than backup-units (after a merge): the lowest ranked goes spare.
            unit = standbys.pop()
            self.log.log(NOTICE, "unit %s: standby made spare", unit.name)
            unit.role = Role.NONE
            self._remove(unit)
            moved = True
        return moved

    def _balance_csis(self, g: Group) -> bool:
        """N-way: every CSI gets one active and backup-units standby assignments."""
        moved = False
        activate = self._may_activate(g)

        def usable(c: Comp) -> bool:
            return c.talkable and c.unit.phase in _READY and c.unit.admin == Admin.UNLOCKED

        def load(c: Comp, ha: int) -> tuple[int, int]:
            return (sum(1 for o in c.unit.comps for h in o.want_has.values() if h == ha),
                    c.unit.rank)

        for p in g.spec.protections:
            csi = p.name
            members = [self.comps[m] for m in p.members]
            if not activate:
                for c in members:
                    if usable(c) and c.want_has[csi] == ACTIVE:
                        self._give(c, csi, STANDBY)
                        moved = True
                continue
            if not any(c.has[csi] == ACTIVE or (usable(c) and c.want_has[csi] == ACTIVE)
                       for c in members):
                cands = sorted((c for c in members if usable(c) and c.want_has[csi] == STANDBY),
                               key=lambda c: load(c, ACTIVE)) or sorted(
                    (c for c in members if usable(c) and c.want_has[csi] == QUIESCED),
                    key=lambda c: load(c, ACTIVE))
                if cands:
                    self.log.log(NOTICE, "%s: %s made active", p.name, cands[0].name)
                    self._give(cands[0], csi, ACTIVE)
                    moved = True
            standbys = [c for c in members if usable(c) and c.want_has[csi] == STANDBY]
            free = sorted((c for c in members if usable(c) and c.want_has[csi] == QUIESCED),
                          key=lambda c: load(c, STANDBY))
            while free and len(standbys) < g.spec.backup_units:
                c = free.pop(0)
                self._give(c, csi, STANDBY)
                standbys.append(c)
                moved = True
        for unit in g.units:
            if unit.phase not in (Phase.QUIESCING, Phase.STOPPING, Phase.IDLE):
                unit.role = self._summary(unit)
        return moved

    def _give(self, c: Comp, csi: str, ha: int) -> None:
        """N-way: one assignment (component, CSI) changes; its unit waits for the answer."""
        c.unit.phase = Phase.ASSIGNING
        self._request(c, KIND_HA, ha, csi)

    def _assign(self, unit: Unit, role: Role) -> None:
        unit.role = role
        unit.phase = Phase.ASSIGNING
        for c in unit.comps:
            self._request(c, KIND_HA, int(role))

    def _after(self, groups: list[Group] | None = None) -> None:
        """End of a handler: settle, tell trackers, start/stop healthchecks."""
        if self._wide:
            groups, self._wide = None, False  # a proxy took components of other groups
        for g in groups if groups is not None else self.groups:
            self._settle(g)
        changed, self._changed = self._changed, []
        seen: set[tuple[str, str]] = set()
        for c, csi in changed:
            if (c.name, csi) not in seen:
                seen.add((c.name, csi))
                self._notify_trackers(c, csi)
        self._pending_callbacks()
        self._refresh_healthchecks()
        self._refresh_processes()

    # --- instantiation (host only): components with an instantiate command ----------------

    def _home(self, unit: Unit) -> int:
        """The node that starts the unit's components: its ``node=`` if a member (none if
        not), else the members in turn by the unit's place in the model."""
        if unit.spec.node:
            return unit.spec.node if unit.spec.node in self.members else 0
        index = list(self.units).index(unit.name)
        return self.members[index % len(self.members)] if self.members else 0

    def _refresh_processes(self) -> None:
        me = self.host.node_id
        if me not in self.members:
            return
        for unit in self.units.values():
            for c in unit.comps:
                if not c.spec.instantiate:
                    continue
                p = self.procs.get(c.name)
                if p is not None and p.handle is not None:
                    if unit.admin == Admin.LOCKED and unit.phase == Phase.IDLE:
                        self._stop_process(p, "its unit is locked")
                    elif c.registered and c.host != me:
                        # Started while the other node's registration was not known
                        # here (a partition, a merge): that one serves.
                        self._stop_process(p, f"{c.name} is registered on "
                                              f"{fmt_node(c.host)}", grace=0.0)
                    elif c.registered and c.host == me and c.error == NOT_RESPONDING \
                            and not p.killed:
                        # Hung (stopped, looping): restart it; the cluster failed it already.
                        self.log.log(NOTICE, "restarting %s (pid %d): not responding",
                                     c.name, p.handle.pid)
                        p.killed = True
                        p.handle.kill(signal.SIGKILL)
                    continue
                if c.registered or unit.admin != Admin.UNLOCKED or c.restarts > RESTART_LIMIT \
                        or self._home(unit) != me or (p is not None and p.timer is not None):
                    continue
                self._start_process(c)

    def _start_process(self, c: Comp) -> None:
        p = self.procs.setdefault(c.name, _Proc())
        now = self.host.now()
        p.starts = [t for t in p.starts if now - t < SPAWN_WINDOW]
        if len(p.starts) >= SPAWN_LIMIT:
            wait = p.starts[0] + SPAWN_WINDOW - now
            self._bad_log.log(self.log, logging.ERROR, "%s was started %d times in %d s; "
                              "next try in %.0f s", c.name, SPAWN_LIMIT, SPAWN_WINDOW, wait)
            p.timer = self.host.call_later(wait, lambda: self._respawn(c.name))
            return
        p.starts.append(now)
        p.killed = p.stopping = False
        handle = self.host.spawn(list(c.spec.instantiate), {"AIS_COMPONENT_NAME": c.name},
                                 lambda rc: self._process_exited(c.name, handle, rc))
        p.handle = handle
        if handle is None:
            # No way to start processes here (or the start failed): try again later.
            p.timer = self.host.call_later(SPAWN_DELAY * 5, lambda: self._respawn(c.name))
        else:
            self.log.log(NOTICE, "started %s (pid %d)", c.name, handle.pid)

    def _process_exited(self, name: str, handle: ProcessHandle | None, rc: int) -> None:
        p = self.procs.get(name)
        if p is None or p.handle is not handle or handle is None:
            return
        self.log.log(NOTICE, "%s (pid %d) exited with status %d", name, handle.pid, rc)
        p.handle = None
        if p.stop_timer is not None:
            p.stop_timer.cancel()
            p.stop_timer = None
        p.timer = self.host.call_later(SPAWN_DELAY, lambda: self._respawn(name))

    def _respawn(self, name: str) -> None:
        p = self.procs.get(name)
        if p is not None:
            p.timer = None
        self._refresh_processes()

    def _stop_process(self, p: _Proc, why: str, grace: float = 1.0) -> None:
        """SIGTERM after ``grace`` s (time to obey the terminate callback)."""
        if p.stopping or p.handle is None:
            return
        p.stopping = True
        handle = p.handle

        def term() -> None:
            p.stop_timer = None
            if p.handle is handle:
                self.log.log(NOTICE, "stopping pid %d: %s", handle.pid, why)
                handle.kill(signal.SIGTERM)
        p.stop_timer = self.host.call_later(grace, term)

    # --- exec handlers --------------------------------------------------------------------

    def _comp_named(self, raw: bytes) -> Comp | None:
        return self.comps.get(_name(raw))

    def _replayed(self, c: Comp | None, msg: ExecMessage) -> bool:
        """Whether ``msg``, a replay (``ExecMessage.applied_by``), changed ``c`` already.

        A merge takes a registered component's record from the state group of
        its node, so it did if that node's state held the message.  The asker is
        then told TIMEOUT ("maybe done"); otherwise the message is applied now.
        """
        if not msg.replay or c is None or not c.registered or c.host not in msg.applied_by:
            return False
        self.host.reply_error(msg.tag, applied_elsewhere())
        return True

    # A replay runs as a new registration: a merge keeps a registration only from a
    # state group its node belongs to, and the sender's group never applied this one.
    @exec_handler(MSG_REGISTER, replay=True)
    def exec_register(self, msg: ExecMessage) -> None:
        conn_id, comp_raw, proxy_raw = REGISTER.decode(msg.payload)
        c = self._comp_named(comp_raw)
        if c is None:
            self.host.reply_error(msg.tag, NotExist("no such component"))
            return
        if c.registered:
            self.host.reply_error(msg.tag, Exist("already registered"))
            return
        if proxy_raw:
            proxy = self._comp_named(proxy_raw)
            if proxy is None or not proxy.registered:
                self.host.reply_error(msg.tag, NotExist("no such proxy"))
                return
        c.registered, c.host, c.conn_id = True, msg.sender, conn_id
        c.proxy = _name(proxy_raw) if proxy_raw else ""
        c.incarnation += 1
        # A new process clears the error, unless restarts escalated (then only a cancel does).
        c.error = 0 if c.restarts <= RESTART_LIMIT else aw.SA_AMF_SOFTWARE_ERROR
        c.want_readiness = OOS
        c.quiesce_all(current=False)
        self._set_current(c, OOS, QUIESCED)
        self.log.debug("component %s registered on %s", c.name, fmt_node(msg.sender))
        if msg.sender == self.host.node_id:
            conn = self.conns.get(conn_id)
            if conn is None or conn.closed:
                # Its process went away before the registration was delivered.
                self._send_own(MSG_UNREGISTER, UNREGISTER.pack(conn_id, c.incarnation, True,
                                                               c.name.encode(), b""))
            else:
                conn.private.setdefault("amf_comps", set()).add(c.name)
        self.host.reply(msg.tag)
        self._after([c.unit.group])

    @exec_handler(MSG_UNREGISTER, replay=True)
    def exec_unregister(self, msg: ExecMessage) -> None:
        conn_id, inc, closed, comp_raw, proxy_raw = UNREGISTER.decode(msg.payload)
        c = self._comp_named(comp_raw)
        if self._replayed(c, msg):
            return
        if c is None:
            self.host.reply_error(msg.tag, NotExist("no such component"))
            return
        if proxy_raw and self._comp_named(proxy_raw) is None:
            self.host.reply_error(msg.tag, NotExist("no such proxy"))
            return
        if proxy_raw and c.registered and _name(proxy_raw) != c.proxy and not closed:
            self.host.reply_error(msg.tag, BadOperation("not this component's proxy"))
            return
        if not c.registered:
            self.host.reply_error(msg.tag, NotExist("not registered"))
            return
        if c.host != msg.sender or c.conn_id != conn_id or (inc and inc != c.incarnation):
            if closed:
                return  # about an earlier registration
            self.host.reply_error(msg.tag, BadOperation("registered by another process"))
            return
        self.log.debug("component %s unregistered%s", c.name, " (connection closed)"
                       if closed else "")
        self._unregister(c)
        self.host.reply(msg.tag)
        self._after([c.unit.group])

    def _proxied(self, proxy: Comp) -> list[Comp]:
        return [o for o in self.comps.values() if o.registered and o.proxy == proxy.name
                and o is not proxy]

    def _unregister(self, c: Comp) -> None:
        c.registered = False
        for o in self._proxied(c):
            # Nobody relays its callbacks any more.
            self.log.log(NOTICE, "component %s failed: its proxy %s is gone", o.name, c.name)
            self._unregister(o)
            self._wide = True
        if c.host == self.host.node_id:
            conn = self.conns.get(c.conn_id)
            if conn is not None:
                conn.private.get("amf_comps", set()).discard(c.name)
        self._fail(c.unit)

    @exec_handler(MSG_ERROR_REPORT, replay=True)
    def exec_error_report(self, msg: ExecMessage) -> None:
        rep = aw.decode_error_report_untrusted(msg.payload)
        c = self._comp_named(rep.erroneous)
        if self._replayed(c, msg):
            return
        if c is None:
            self.host.reply_error(msg.tag, NotExist("no such component"))
            return
        if not c.registered:
            self.host.reply_error(msg.tag, BadOperation("component not registered"))
            return
        cause = rep.descriptor.probable_cause or aw.SA_AMF_SOFTWARE_ERROR
        recovery = rep.descriptor.recommended_recovery
        self.log.log(NOTICE, "error reported on component %s (probable cause %d, "
                     "recommended recovery %d)", c.name, cause, recovery)
        groups = [c.unit.group]
        if recovery == aw.SA_AMF_INTERNALLY_RECOVERED:
            pass  # the component says it has recovered: recorded in the log only
        elif recovery in _NODE_RECOVERIES:
            # Every component of its node fails: their units move to other nodes.
            for other in self.comps.values():
                if other.registered and other.host == c.host:
                    self._set_error(other, cause)
                    if other.unit.group not in groups:
                        groups.append(other.unit.group)
        elif recovery == aw.SA_AMF_COMPONENT_RESTART:
            c.restarts += 1
            self._set_error(c, cause)
            if c.restarts <= RESTART_LIMIT:
                # its supervisor (or proxy) starts it again; registering clears it
                self._terminate(c, restart=True)
                p = self.procs.get(c.name)
                if p is not None and c.host == self.host.node_id:
                    self._stop_process(p, "component restart")
            else:
                self.log.log(NOTICE, "component %s: %d restarts since its errors were last "
                             "cancelled; it stays failed until they are", c.name, c.restarts)
        else:
            self._set_error(c, cause)
        self.host.reply(msg.tag)
        self._after(groups)

    def _set_error(self, c: Comp, cause: int) -> None:
        if c.error == 0 or cause == NOT_RESPONDING:
            c.error = cause
        self._fail(c.unit)
        if cause == NOT_RESPONDING:
            for o in self._proxied(c):
                if o.error != NOT_RESPONDING:
                    self._set_error(o, cause)  # its callbacks go through the hung proxy
                    self._wide = True

    @exec_handler(MSG_ERROR_CANCEL, replay=True)
    def exec_error_cancel(self, msg: ExecMessage) -> None:
        (comp_raw,) = aw.decode_names_untrusted(msg.payload, 1, "ERROR_CANCEL")
        c = self._comp_named(comp_raw)
        if self._replayed(c, msg):
            return
        if c is None:
            self.host.reply_error(msg.tag, NotExist("no such component"))
            return
        if not c.registered:
            self.host.reply_error(msg.tag, BadOperation("component not registered"))
            return
        c.restarts = 0
        if c.error:
            self.log.log(NOTICE, "errors cancelled on component %s", c.name)
            c.error = 0
            self._faulted.discard((c.name, c.incarnation))
        self.host.reply(msg.tag)
        self._after([c.unit.group])

    @exec_handler(MSG_CONFIRM, replay=True)
    def exec_confirm(self, msg: ExecMessage) -> None:
        inc, kind, state, comp_raw, csi_raw = CONFIRM.decode(msg.payload)
        c = self._comp_named(comp_raw)
        if self._replayed(c, msg) or c is None or not c.talkable or c.host != msg.sender \
                or c.incarnation != inc:
            return
        csi = _name(csi_raw)
        if kind == KIND_READINESS and c.want_readiness == state:
            self._set_current(c, readiness=state)
        elif kind == KIND_HA and c.want_has.get(csi) == state:
            self._set_current(c, ha=state, csi=csi)
        else:
            return  # a superseded request
        self._after([c.unit.group])

    @exec_handler(MSG_FAULT, replay=True)
    def exec_fault(self, msg: ExecMessage) -> None:
        inc, cause, comp_raw = FAULT.decode(msg.payload)
        c = self._comp_named(comp_raw)
        if self._replayed(c, msg) or c is None or not c.registered or c.host != msg.sender \
                or c.incarnation != inc:
            return
        if c.error == cause:
            return
        self.log.log(NOTICE, "component %s failed (probable cause %d)", c.name, cause)
        self._set_error(c, cause)
        self._after([c.unit.group])

    # Replays: a merge keeps the highest administrative state of a unit, so a lock
    # or shutdown some member applied is there (TIMEOUT, "maybe done"); an unlock
    # is there only if every side applied it: it runs, unless already unlocked.
    @exec_handler(MSG_ADMIN, replay=True)
    def exec_admin(self, msg: ExecMessage) -> None:
        op = aw.decode_admin_untrusted(msg.payload)
        if msg.replay and op.op in (aw.AMF_ADMIN_LOCK, aw.AMF_ADMIN_SHUTDOWN,
                                    aw.AMF_ADMIN_LOCK_NODE):
            self.host.reply_error(msg.tag, applied_elsewhere())
            return
        if op.op in (aw.AMF_ADMIN_LOCK_NODE, aw.AMF_ADMIN_UNLOCK_NODE):
            self._admin_node(msg, op)
            return
        unit = self.units.get(_name(op.unit))
        if unit is None:
            self.host.reply_error(msg.tag, NotExist("no such unit"))
            return
        if op.op == aw.AMF_ADMIN_UNLOCK:
            if unit.admin == Admin.UNLOCKED:
                self.host.reply_error(msg.tag, applied_elsewhere() if msg.replay
                                      else BadOperation(f"{unit.name} is not locked"))
                return
            self._unlock(unit)
        elif op.op in (aw.AMF_ADMIN_LOCK, aw.AMF_ADMIN_SHUTDOWN):
            want = Admin.LOCKED if op.op == aw.AMF_ADMIN_LOCK else Admin.SHUTTING_DOWN
            if unit.admin == Admin.LOCKED or unit.admin == want:
                self.host.reply_error(msg.tag, BadOperation(
                    f"{unit.name} is already {unit.admin.name.lower().replace('_', ' ')}"))
                return
            self.log.log(NOTICE, "unit %s: %s", unit.name,
                         "lock" if want == Admin.LOCKED else "shutdown")
            unit.admin = want
            self._apply_admin(unit)
        else:
            self.host.reply_error(msg.tag, InvalidParam("unknown operation"))
            return
        self.host.reply(msg.tag)
        self._after([unit.group])

    def _unlock(self, unit: Unit) -> None:
        self.log.log(NOTICE, "unit %s unlocked", unit.name)
        unit.admin = Admin.UNLOCKED
        unit.locked_by = 0
        if unit.phase == Phase.DRAINING:
            # The shutdown is cancelled: back in service with its role.
            unit.phase = Phase.ENABLING
            for c in unit.comps:
                self._request(c, KIND_READINESS, IN_SERVICE)

    def _admin_node(self, msg: ExecMessage, op: aw.AdminRequest) -> None:
        """Node lock: lock every unlocked unit with a component hosted on the node (or
        whose ``node=`` it is); node unlock: unlock the units its node lock locked."""
        node = _node_of(op.unit)
        if node is None:
            self.host.reply_error(msg.tag, InvalidParam("not a node address"))
            return
        if op.op == aw.AMF_ADMIN_LOCK_NODE:
            units = [u for u in self.units.values() if u.admin == Admin.UNLOCKED and (
                u.spec.node == node or any(c.registered and c.host == node for c in u.comps))]
            if not units:
                self.host.reply_error(msg.tag, NotExist(f"no unlocked unit on {fmt_node(node)}"))
                return
            self.log.log(NOTICE, "node %s locked: %s", fmt_node(node),
                         ", ".join(u.name for u in units))
            for u in units:
                u.admin, u.locked_by = Admin.LOCKED, node
                self._apply_admin(u)
        else:
            units = [u for u in self.units.values() if u.admin != Admin.UNLOCKED
                     and u.locked_by == node]
            if not units:
                self.host.reply_error(msg.tag, applied_elsewhere() if msg.replay else
                                      BadOperation(f"no unit locked by a lock of "
                                                   f"{fmt_node(node)}"))
                return
            for u in units:
                self._unlock(u)
        self.host.reply(msg.tag)
        self._after(list({id(u.group): u.group for u in units}.values()))

    def _apply_admin(self, unit: Unit) -> None:
        """Start taking a locked or shutting-down unit out of service."""
        if unit.admin == Admin.UNLOCKED:
            return
        if unit.phase == Phase.ENABLING or (unit.phase in _READY and unit.role == Role.NONE
                                            and not unit.group.per_csi):
            self._stop(unit)  # nothing assigned yet: straight out of service
        elif unit.phase in _READY:
            if unit.admin == Admin.SHUTTING_DOWN:
                unit.phase = Phase.DRAINING
                for c in unit.comps:
                    self._request(c, KIND_READINESS, aw.SA_AMF_STOPPING)
            else:
                self._remove(unit)
        elif unit.phase == Phase.DRAINING and unit.admin == Admin.LOCKED:
            self._remove(unit)  # a lock overrides a shutdown under way

    # --- configuration changes and sync ---------------------------------------------------

    def sync_start(self, info: SyncInfo) -> None:
        self._round = info
        self._streams = {}
        self._sync_cursor = 0
        self._model_sent = False

    def sync_process(self) -> bool:
        info = self._round
        if info is None:
            return True
        if not self._model_sent:
            # Every member says which model it runs: different groups.conf files
            # cannot give identical replicas, so the operator must hear of it.
            self.host.mcast_sync(self, MSG_MODEL, MODEL.pack(self.model_crc))
            self._model_sent = True
        if self.host.node_id not in info.senders:
            return True
        units = list(self.units.values())
        while self._sync_cursor < len(units):
            rec = self._record_of(units[self._sync_cursor])
            self.host.mcast_sync(self, MSG_SYNC_UNIT, encode_unit_record(rec))
            self._sync_cursor += 1
        return True

    def _record_of(self, unit: Unit) -> _UnitRecord:
        return _UnitRecord(unit.name.encode(), int(unit.phase), int(unit.role), tuple(
            _CompRecord(c.name.encode(), c.registered, int(c.readiness),
                        int(c.want_readiness), c.host, c.conn_id,
                        c.incarnation, c.error, min(c.restarts, 255), c.proxy.encode(),
                        tuple(_CsiRecord(int(c.has[s]), int(c.want_has[s])) for s in c.csis))
            for c in unit.comps), int(unit.admin), unit.locked_by)

    @exec_handler(MSG_MODEL)
    def exec_model(self, msg: ExecMessage) -> None:
        (crc,) = MODEL.decode(msg.payload)
        if crc != self.model_crc:
            self._bad_log.log(self.log, logging.ERROR,
                              "node %s runs another AMF model (groups.conf) than this node: "
                              "AMF states will differ", fmt_node(msg.sender))

    @exec_handler(MSG_SYNC_UNIT)
    def exec_sync_unit(self, msg: ExecMessage) -> None:
        if not msg.sync or self._round is None:
            return
        rec = decode_unit_record_untrusted(msg.payload)
        name = _name(rec.name)
        if name in self.units:
            self._streams.setdefault(msg.sender, {})[name] = rec

    def sync_done(self) -> None:
        info = self._round
        self._round = None
        if info is None:
            return
        streams, self._streams = self._streams, {}
        self.members = info.members
        demote: list[Unit | tuple[Comp, str]] = []
        if info.transfer:
            demote = self._merge(info, streams)
        me = self.host.node_id
        for c in self.comps.values():
            if c.registered and c.host not in info.members:
                self.log.log(NOTICE, "component %s failed: its node %s left", c.name,
                             fmt_node(c.host))
                self._unregister(c)
        for item in demote:
            if isinstance(item, tuple):
                c, csi = item
                if c.want_has[csi] == ACTIVE and c.talkable and c.unit.phase in _READY:
                    self.log.log(NOTICE, "%s: too many actives for %s after the merge; "
                                 "standby", c.name, csi)
                    self._give(c, csi, STANDBY)
            elif item.role == Role.ACTIVE and item.phase in _READY:
                self.log.log(NOTICE, "unit %s: too many actives after the merge; standby",
                             item.name)
                self._assign(item, Role.STANDBY)
        for unit in self.units.values():
            self._apply_admin(unit)
        # This node's own registrations, as the (possibly merged) state says.
        owned = [(lc, name) for lc in self.conns.values()
                 for name in sorted(lc.private.get("amf_comps", ()))]
        for lc in self.conns.values():
            lc.private["amf_comps"] = set()
        for c in self.comps.values():
            if c.registered and c.host == me:
                conn = self.conns.get(c.conn_id)
                if conn is None or conn.closed:
                    self._send_own(MSG_UNREGISTER, UNREGISTER.pack(
                        c.conn_id, c.incarnation, True, c.name.encode(), b""))
                else:
                    conn.private.setdefault("amf_comps", set()).add(c.name)
        for name in [n for n, i in self.invocations.items()
                     if self.comps[i.comp].incarnation != i.incarnation
                     or self.comps[i.comp].host != me]:
            inv = self.invocations.pop(name)
            if inv.timer is not None:
                inv.timer.cancel()
        # (after that clean-up, so that the terminate callback's answer is still taken)
        for lc, name in owned:
            if name not in lc.private["amf_comps"] and not lc.closed:
                self._lost_registration(self.comps[name], lc)
        self._after()
        # Requests whose callback this node never sent (or whose answer was lost).
        for c in self.comps.values():
            if c.host == me and c.talkable:
                if c.want_readiness != c.readiness and not self._outstanding(
                        c, KIND_READINESS, c.want_readiness):
                    self._talk(c, KIND_READINESS)
                for s in c.csis:
                    if c.want_has[s] != c.has[s] and not self._outstanding(
                            c, KIND_HA, c.want_has[s], s):
                        self._talk(c, KIND_HA, s)

    def _merge(self, info: SyncInfo,
               streams: dict[int, dict[str, _UnitRecord]]) -> list[Unit | tuple[Comp, str]]:
        """Install the merged state of the round's state groups; return actives to demote."""
        ranked = [(rank, g, streams.get(g.sender, {})) for rank, g in enumerate(info.groups)]
        demote: list[Unit | tuple[Comp, str]] = []
        for group in self.groups:
            kept: list[tuple[int, int, Unit]] = []
            for ui, unit in enumerate(group.units):
                # A lock made on either side holds (an operator asked for it).
                unit.admin = Admin(max([0] + [
                    recs[unit.name].admin for _, _, recs in ranked if unit.name in recs]))
                unit.locked_by = max([0] + [recs[unit.name].locked_by for _, _, recs in ranked
                                            if unit.name in recs]) if unit.admin else 0
                sources: set[int] = set()
                for ci, c in enumerate(unit.comps):
                    chosen: _CompRecord | None = None
                    inc = c.incarnation
                    restarts = 0
                    for rank, g, recs in ranked:
                        rec = recs.get(unit.name)
                        if rec is None or ci >= len(rec.comps):
                            continue
                        cr = rec.comps[ci]
                        inc = max(inc, cr.incarnation)
                        restarts = max(restarts, cr.restarts)
                        if chosen is None and cr.registered and cr.host in g.members:
                            chosen = cr
                            sources.add(rank)
                    before = (c.readiness, dict(c.has))
                    if chosen is None:
                        c.registered, c.host, c.conn_id, c.error = False, 0, 0, 0
                        c.proxy = ""
                        c.readiness = c.want_readiness = OOS
                        c.quiesce_all(current=True)
                    else:
                        c.registered, c.host, c.conn_id = True, chosen.host, chosen.conn_id
                        c.proxy = _name(chosen.proxy)
                        c.error = chosen.error
                        c.readiness, c.want_readiness = chosen.readiness, chosen.want_readiness
                        c.quiesce_all(current=True)
                        # A record shorter than the model (another groups.conf): quiesced.
                        for s, cs in zip(c.csis, chosen.csis):
                            c.has[s], c.want_has[s] = cs.ha, cs.want_ha
                    c.incarnation = inc
                    c.restarts = chosen.restarts if chosen is not None else restarts
                    for s in c.csis:
                        if (c.readiness, c.has[s]) != (before[0], before[1][s]):
                            self._changed.append((c, s))
                if len(sources) == 1:
                    rank = sources.pop()
                    rec = ranked[rank][2].get(unit.name)
                    unit.phase = Phase(rec.phase) if rec else Phase.IDLE
                    unit.role = Role(rec.role) if rec else Role.NONE
                    if unit.role == Role.ACTIVE:
                        kept.append((rank, ui, unit))
                    # Components this group thought registered but their hosts disown.
                    if any(not c.registered and rec and rec.comps[i].registered
                           for i, c in enumerate(unit.comps)):
                        self._fail(unit)
                elif not sources:
                    unit.phase, unit.role = Phase.IDLE, Role.NONE
                else:
                    # Assembled from several sides: fail it, it comes back by itself.
                    unit.phase, unit.role = Phase.ASSIGNED, Role.NONE
                    self._fail(unit)
            kept.sort(key=lambda t: (t[0], t[1]))
            if not group.per_csi:
                demote.extend(u for _, _, u in kept[group.spec.active_units:])
                continue
            # N-way: one active per CSI, the one of the lowest side's unit first.
            side = {u: rank for rank, _, u in kept}
            for p in group.spec.protections:
                actives = sorted((c for c in (self.comps[m] for m in p.members)
                                  if c.want_has[p.name] == ACTIVE and c.unit in side),
                                 key=lambda c: (side[c.unit], c.unit.rank))
                demote.extend((c, p.name) for c in actives[1:])
        return demote

    # --- connections ------------------------------------------------------------------------

    def on_lib_connect(self, conn: LibConn) -> None:
        self.conns[conn.conn_id] = conn

    def on_lib_exit(self, conn: LibConn) -> None:
        self.conns.pop(conn.conn_id, None)
        self.trackers.pop(conn.conn_id, None)
        for name in sorted(conn.private.get("amf_comps", ())):
            c = self.comps.get(name)
            if c is None or not c.registered or c.conn_id != conn.conn_id \
                    or c.host != self.host.node_id:
                continue
            # No more callbacks to it; the cluster learns of it in agreed order.
            self._faulted.add((name, c.incarnation))
            self._stop_healthcheck(name)
            self._drop_invocations(name)
            self._send_own(MSG_UNREGISTER, UNREGISTER.pack(conn.conn_id, c.incarnation, True,
                                                           name.encode(), b""))

    # --- protection group tracking -----------------------------------------------------------

    def _pg_members(self, csi: str) -> list[aw.ProtectionGroupMember]:
        out = []
        for m in self.protections[csi]:
            c = self.comps[m]
            out.append(aw.ProtectionGroupMember(m.encode(), int(c.readiness),
                                                int(c.has[csi])))
        return out

    def _notify_trackers(self, c: Comp, csi: str) -> None:
        targets = [(conn_id, flags) for conn_id, t in self.trackers.items()
                   for name, flags in t.items() if name == csi]
        if not targets:
            return
        members = self._pg_members(csi)
        full = aw.encode_pg_track_cb(aw.PgTrackCb(csi.encode(), tuple(
            aw.ProtectionGroupNotification(
                m, aw.SA_AMF_PROTECTION_GROUP_STATE_CHANGE if m.comp_name == c.name.encode()
                else aw.SA_AMF_PROTECTION_GROUP_NO_CHANGE) for m in members), len(members)))
        only = aw.encode_pg_track_cb(aw.PgTrackCb(csi.encode(), tuple(
            aw.ProtectionGroupNotification(m, aw.SA_AMF_PROTECTION_GROUP_STATE_CHANGE)
            for m in members if m.comp_name == c.name.encode()), len(members)))
        for conn_id, flags in targets:
            conn = self.conns.get(conn_id)
            if conn is not None:
                conn.send_callback(aw.AMF_CB_PG_TRACK,
                                   full if flags & SA_TRACK_CHANGES else only)

    # --- library requests -----------------------------------------------------------------------

    def _known(self, raw: bytes) -> Comp:
        c = self._comp_named(raw)
        if c is None:
            raise NotExist(f"no component {_name(raw)!r} in the AMF model")
        return c

    @lib_handler(aw.AMF_REQ_REGISTER, hold_during_sync=True)
    def lib_register(self, conn: LibConn, req: Request) -> Deferred:
        comp_raw, proxy_raw = aw.decode_names_untrusted(req.body, 2, "REGISTER")
        self._known(comp_raw)
        self.host.mcast(self, MSG_REGISTER, REGISTER.pack(conn.conn_id, comp_raw, proxy_raw),
                        tag=req.tag)
        return DEFERRED

    @lib_handler(aw.AMF_REQ_UNREGISTER, hold_during_sync=True)
    def lib_unregister(self, conn: LibConn, req: Request) -> Deferred:
        comp_raw, proxy_raw = aw.decode_names_untrusted(req.body, 2, "UNREGISTER")
        c = self._known(comp_raw)
        # Stop talking to it now; the cluster decides in agreed order.
        if c.registered and c.host == self.host.node_id and c.conn_id == conn.conn_id:
            self._stop_healthcheck(c.name)
            self._drop_invocations(c.name)
        self.host.mcast(self, MSG_UNREGISTER, UNREGISTER.pack(conn.conn_id, 0, False, comp_raw,
                                                              proxy_raw), tag=req.tag)
        return DEFERRED

    @lib_handler(aw.AMF_REQ_ERROR_REPORT, hold_during_sync=True)
    def lib_error_report(self, conn: LibConn, req: Request) -> Deferred:
        rep = aw.decode_error_report_untrusted(req.body)
        self._known(rep.erroneous)
        self.host.mcast(self, MSG_ERROR_REPORT, req.body, tag=req.tag)
        return DEFERRED

    @lib_handler(aw.AMF_REQ_ERROR_CANCEL_ALL, hold_during_sync=True)
    def lib_error_cancel(self, conn: LibConn, req: Request) -> Deferred:
        (comp_raw,) = aw.decode_names_untrusted(req.body, 1, "ERROR_CANCEL_ALL")
        self._known(comp_raw)
        self.host.mcast(self, MSG_ERROR_CANCEL, req.body, tag=req.tag)
        return DEFERRED

    @lib_handler(aw.AMF_REQ_READINESS_GET, hold_during_sync=True)
    def lib_readiness_get(self, conn: LibConn, req: Request) -> bytes:
        (comp_raw,) = aw.decode_names_untrusted(req.body, 1, "READINESS_GET")
        return aw.encode_u32(int(self._known(comp_raw).readiness))

    @lib_handler(aw.AMF_REQ_HA_GET, hold_during_sync=True)
    def lib_ha_get(self, conn: LibConn, req: Request) -> bytes:
        comp_raw, csi_raw = aw.decode_names_untrusted(req.body, 2, "HA_GET")
        c = self._known(comp_raw)
        csi = _name(csi_raw)
        if csi not in c.has:
            raise NotExist(f"{c.name} is not a member of {csi!r}")
        return aw.encode_u32(int(c.has[csi]))

    @lib_handler(aw.AMF_REQ_CAPABILITY_GET, hold_during_sync=True)
    def lib_capability_get(self, conn: LibConn, req: Request) -> bytes:
        (comp_raw,) = aw.decode_names_untrusted(req.body, 1, "CAPABILITY_GET")
        c = self._known(comp_raw)
        if not c.registered:
            raise NotExist(f"{c.name} is not registered")
        return aw.encode_u32(int(c.spec.model))

    @lib_handler(aw.AMF_REQ_PG_TRACK_START, hold_during_sync=True)
    def lib_pg_track_start(self, conn: LibConn, req: Request) -> bytes:
        ts = aw.decode_pg_track_start_untrusted(req.body)
        csi = _name(ts.csi)
        if csi not in self.protections:
            raise NotExist(f"no protection group {csi!r}")
        flags = ts.flags
        if flags & ~_VALID_TRACK_BITS or not flags & _VALID_TRACK_BITS or \
                (flags & SA_TRACK_CHANGES and flags & SA_TRACK_CHANGES_ONLY):
            raise BadFlags(f"track flags {flags:#x}")
        if flags & (SA_TRACK_CHANGES | SA_TRACK_CHANGES_ONLY):
            self.trackers.setdefault(conn.conn_id, {})[csi] = flags
        if flags & SA_TRACK_CURRENT:
            members = self._pg_members(csi)
            conn.send_callback(aw.AMF_CB_PG_TRACK, aw.encode_pg_track_cb(aw.PgTrackCb(
                ts.csi, tuple(aw.ProtectionGroupNotification(
                    m, aw.SA_AMF_PROTECTION_GROUP_NO_CHANGE) for m in members), len(members))))
        return b""

    @lib_handler(aw.AMF_REQ_PG_TRACK_STOP)
    def lib_pg_track_stop(self, conn: LibConn, req: Request) -> bytes:
        (csi_raw,) = aw.decode_names_untrusted(req.body, 1, "PG_TRACK_STOP")
        tracks = self.trackers.get(conn.conn_id, {})
        if tracks.pop(_name(csi_raw), None) is None:
            raise NotExist("not tracking that protection group")
        return b""

    @lib_handler(aw.AMF_REQ_RESPONSE)
    def lib_response(self, conn: LibConn, req: Request) -> bytes:
        r = aw.decode_response_untrusted(req.body)
        inv = self.invocations.get(r.invocation)
        if inv is None or inv.kind not in (KIND_READINESS, KIND_HA, KIND_HEALTHCHECK,
                                           KIND_TERMINATE, KIND_PENDING, KIND_EXTERNAL):
            raise InvalidParam(f"unknown invocation {r.invocation}")
        return self._answered(r.invocation, inv, r.error)

    @lib_handler(aw.AMF_REQ_STOPPING_COMPLETE)
    def lib_stopping_complete(self, conn: LibConn, req: Request) -> bytes:
        r = aw.decode_response_untrusted(req.body)
        inv = self.invocations.get(r.invocation)
        # Only a shutdown requests STOPPING.
        if inv is None or inv.kind != KIND_READINESS or inv.state != aw.SA_AMF_STOPPING:
            raise InvalidParam(f"unknown invocation {r.invocation}")
        return self._answered(r.invocation, inv, r.error)

    def _answered(self, n: int, inv: _Invocation, error: int) -> bytes:
        self.invocations.pop(n, None)
        if inv.timer is not None:
            inv.timer.cancel()
        if inv.superseded or inv.kind in (KIND_TERMINATE, KIND_PENDING):
            return b""
        if inv.kind == KIND_EXTERNAL:
            if error != SA_OK:
                self.log.warning("proxy of %s refused an external callback (error %d)",
                                 inv.comp, error)
                self._report_fault(inv.comp, inv.incarnation, aw.SA_AMF_SOFTWARE_ERROR)
        elif inv.kind == KIND_HEALTHCHECK:
            hc = self.healthchecks.get(inv.comp)
            if hc is not None and hc.invocation == n:
                if hc.deadline is not None:
                    hc.deadline.cancel()
                hc.deadline = None
                hc.invocation = 0
            if error != SA_OK:
                self._report_fault(inv.comp, inv.incarnation, NOT_RESPONDING)
        elif error == SA_OK:
            self._send_own(MSG_CONFIRM, CONFIRM.pack(inv.incarnation, inv.kind, inv.state,
                                                     inv.comp.encode(), inv.csi.encode()))
        elif (inv.state == QUIESCED) if inv.kind == KIND_HA else inv.state != IN_SERVICE:
            # It will not give the work up: nothing more it says can be trusted, and its
            # unit must not wait for it.  Cleaned up as a hung one is: terminated, and
            # taken as quiesced everywhere.
            self.log.warning("component %s refused to give up its work (error %d): "
                             "cleaned up", inv.comp, error)
            self._report_fault(inv.comp, inv.incarnation, NOT_RESPONDING)
        else:
            self.log.warning("component %s refused a callback (error %d)", inv.comp, error)
            self._report_fault(inv.comp, inv.incarnation, aw.SA_AMF_SOFTWARE_ERROR)
        return b""

    @lib_handler(aw.AMF_REQ_ADMIN, hold_during_sync=True)
    def lib_admin(self, conn: LibConn, req: Request) -> Deferred:
        op = aw.decode_admin_untrusted(req.body)
        if op.op in (aw.AMF_ADMIN_LOCK_NODE, aw.AMF_ADMIN_UNLOCK_NODE):
            if _node_of(op.unit) is None:
                raise InvalidParam(f"{_name(op.unit)!r} is not a node address")
        elif op.op not in (aw.AMF_ADMIN_LOCK, aw.AMF_ADMIN_UNLOCK, aw.AMF_ADMIN_SHUTDOWN):
            raise InvalidParam(f"unknown administrative operation {op.op}")
        elif _name(op.unit) not in self.units:
            raise NotExist(f"no service unit {_name(op.unit)!r} in the AMF model")
        self.host.mcast(self, MSG_ADMIN, req.body, tag=req.tag)
        return DEFERRED

    def _own_component(self, conn: LibConn, comp_raw: bytes) -> Comp:
        c = self._known(comp_raw)
        if not c.registered or c.host != self.host.node_id or c.conn_id != conn.conn_id:
            raise BadOperation("component not registered through this handle")
        return c

    @lib_handler(aw.AMF_REQ_HEALTHCHECK_START)
    def lib_healthcheck_start(self, conn: LibConn, req: Request) -> bytes:
        comp_raw, key_raw = aw.decode_names_untrusted(req.body, 2, "HEALTHCHECK_START")
        c = self._own_component(conn, comp_raw)
        key = _name(key_raw)
        if c.unit.group.spec.healthcheck(key) is None:
            raise NotExist(f"no healthcheck {key!r} in group {c.unit.group.spec.name!r}")
        if self.hc_keys.get(c.name) == (c.incarnation, key):
            raise Exist(f"healthcheck {key!r} already started")
        self.hc_keys[c.name] = (c.incarnation, key)
        self._restart_healthcheck(c)
        return b""

    @lib_handler(aw.AMF_REQ_HEALTHCHECK_STOP)
    def lib_healthcheck_stop(self, conn: LibConn, req: Request) -> bytes:
        comp_raw, key_raw = aw.decode_names_untrusted(req.body, 2, "HEALTHCHECK_STOP")
        c = self._own_component(conn, comp_raw)
        if self.hc_keys.get(c.name) != (c.incarnation, _name(key_raw)):
            raise NotExist("that healthcheck was not started")
        del self.hc_keys[c.name]
        self._restart_healthcheck(c)
        return b""

    def _restart_healthcheck(self, c: Comp) -> None:
        """The new timing applies from now (an answer still awaited keeps its deadline)."""
        hc = self.healthchecks.get(c.name)
        if hc is None or hc.deadline is not None:
            return
        if hc.timer is not None:
            hc.timer.cancel()
        period, _ = self._hc_timing(c)
        hc.timer = self.host.call_later(period, self._hc_ticker(c.name))

    @lib_handler(aw.AMF_REQ_PENDING_GET, hold_during_sync=True)
    def lib_pending_get(self, conn: LibConn, req: Request) -> bytes:
        (comp_raw,) = aw.decode_names_untrusted(req.body, 1, "PENDING_GET")
        return aw.encode_u32(self.pending_operation(self._known(comp_raw)))

    def pending_operation(self, c: Comp) -> int:
        """saAmfPendingOperationGet: the administrative operation under way on c's unit."""
        return self._unit_pending(c.unit)

    @staticmethod
    def _unit_pending(u: Unit) -> int:
        """SHUTDOWN from a shutdown until the unit is out of service, SWITCHOVER from a
        lock until then (a lock of a shutting-down unit supersedes the shutdown)."""
        if u.phase == Phase.IDLE:
            return 0
        if u.admin == Admin.SHUTTING_DOWN:
            return aw.SA_AMF_SHUTDOWN_OPERATION
        if u.admin == Admin.LOCKED:
            return aw.SA_AMF_SWITCHOVER_OPERATION
        return 0

    @lib_handler(aw.AMF_REQ_STATUS, hold_during_sync=True)
    def lib_status(self, conn: LibConn, req: Request) -> bytes:
        return aw.encode_status(self.status_rows())

    # --- views ----------------------------------------------------------------------------------

    def status_rows(self) -> list[aw.StatusRow]:
        rows = []
        for g in self.groups:
            for u in g.units:
                for c in u.comps:
                    for csi in c.csis:  # a row per (component, CSI)
                        rows.append(aw.StatusRow(
                            g.spec.name.encode(), u.name.encode(), c.name.encode(),
                            csi.encode(), c.registered, int(u.phase), int(u.role),
                            c.host if c.registered else 0, int(c.readiness), int(c.has[csi]),
                            c.error, g.spec.active_units, len(self.members), int(u.admin),
                            self._unit_pending(u), c.proxy.encode() if c.registered else b""))
        return rows

    def digest(self) -> tuple:
        """The replicated state, for equality checks across nodes."""
        return (self.members, tuple((u.name, int(u.phase), int(u.role), int(u.admin),
                                     u.locked_by, tuple(
            c.key() for c in u.comps)) for g in self.groups for u in g.units))

    def status(self) -> dict[str, Any]:
        return {"units": {u.name: (u.phase.name, u.role.name, u.admin.name)
                          for u in self.units.values()},
                "registered": sorted(c.name for c in self.comps.values() if c.registered)}


__all__ = ["AmfService", "Phase", "Role", "decode_unit_record_untrusted",
           "encode_unit_record"]
