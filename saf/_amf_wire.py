"""AMF client IPC layouts and value types, declared once; shared by ``saf.amf`` and
``ais.services.amf``.

Conventions (as in ``saf/_wire.py``): every fixed part is a module-level
``struct.Struct`` in network order with its byte layout drawn above it; each
message has an ``encode_x`` / ``decode_x_untrusted`` pair; decoded messages
are frozen dataclasses; ``*_untrusted`` functions raise only
``saf.errors.IpcProtocolError``.  Names (SaNameT) follow the fixed part, each
as ``NAME`` (u16 length, then that many bytes, at most 256).

One connection per library handle (service id AMF = 2).  Requests that are
"one-shot" in the C API (readiness get, HA get, error report, cancel,
capability get, response, stopping complete) go on a short-lived connection
or on a handle's request channel: the executive does not care which.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from saf.errors import SA_OK, IpcProtocolError
from saf.types import SA_MAX_NAME_LENGTH

AMF_SERVICE_ID = 2

# --- SAF constants (A.01.01 ais_amf.h, spec/amf.md section 3) -------------------------


class ReadinessState(enum.IntEnum):
    """SaAmfReadinessStateT."""

    SA_AMF_OUT_OF_SERVICE = 1
    SA_AMF_IN_SERVICE = 2
    SA_AMF_STOPPING = 3


class HAState(enum.IntEnum):
    """SaAmfHAStateT (A.01.01 has no QUIESCING)."""

    SA_AMF_ACTIVE = 1
    SA_AMF_STANDBY = 2
    SA_AMF_QUIESCED = 3


class ProtectionGroupChange(enum.IntEnum):
    """SaAmfProtectionGroupChangesT."""

    SA_AMF_PROTECTION_GROUP_NO_CHANGE = 1
    SA_AMF_PROTECTION_GROUP_ADDED = 2
    SA_AMF_PROTECTION_GROUP_REMOVED = 3
    SA_AMF_PROTECTION_GROUP_STATE_CHANGE = 4


SA_AMF_OUT_OF_SERVICE = ReadinessState.SA_AMF_OUT_OF_SERVICE
SA_AMF_IN_SERVICE = ReadinessState.SA_AMF_IN_SERVICE
SA_AMF_STOPPING = ReadinessState.SA_AMF_STOPPING
SA_AMF_ACTIVE = HAState.SA_AMF_ACTIVE
SA_AMF_STANDBY = HAState.SA_AMF_STANDBY
SA_AMF_QUIESCED = HAState.SA_AMF_QUIESCED
SA_AMF_PROTECTION_GROUP_NO_CHANGE = ProtectionGroupChange.SA_AMF_PROTECTION_GROUP_NO_CHANGE
SA_AMF_PROTECTION_GROUP_ADDED = ProtectionGroupChange.SA_AMF_PROTECTION_GROUP_ADDED
SA_AMF_PROTECTION_GROUP_REMOVED = ProtectionGroupChange.SA_AMF_PROTECTION_GROUP_REMOVED
SA_AMF_PROTECTION_GROUP_STATE_CHANGE = ProtectionGroupChange.SA_AMF_PROTECTION_GROUP_STATE_CHANGE

# SaAmfHealthcheckT
SA_AMF_HEARTBEAT = 1
SA_AMF_HEALTHCHECK_LEVEL1 = 2
SA_AMF_HEALTHCHECK_LEVEL2 = 3
SA_AMF_HEALTHCHECK_LEVEL3 = 4

# SaAmfComponentCapabilityModelT
SA_AMF_COMPONENT_CAPABILITY_X_ACTIVE_AND_Y_STANDBY = 1
SA_AMF_COMPONENT_CAPABILITY_X_ACTIVE_OR_Y_STANDBY = 2
SA_AMF_COMPONENT_CAPABILITY_1_ACTIVE_OR_Y_STANDBY = 3
SA_AMF_COMPONENT_CAPABILITY_1_ACTIVE_OR_1_STANDBY = 4
SA_AMF_COMPONENT_CAPABILITY_X_ACTIVE = 5
SA_AMF_COMPONENT_CAPABILITY_1_ACTIVE = 6
SA_AMF_COMPONENT_CAPABILITY_NO_ACTIVE = 7

# SaAmfCSIFlagsT (the 2004 header spells it ISTANCE)
SA_AMF_CSI_ADD_NEW_ISTANCE = 0x01
SA_AMF_CSI_ADD_NEW_INSTANCE = SA_AMF_CSI_ADD_NEW_ISTANCE
SA_AMF_CSI_ALL_INSTANCES = 0x02

# SaAmfCSITransitionDescriptorT
SA_AMF_CSI_NEW_ASSIGN = 1
SA_AMF_CSI_QUIESCED = 2
SA_AMF_CSI_NOT_QUIESCED = 3
SA_AMF_CSI_STILL_ACTIVE = 4

# SaAmfExternalComponentActionT
SA_AMF_RESET = 1
SA_AMF_REBOOT = 2
SA_AMF_POWER_ON = 3
SA_AMF_POWER_OFF = 4

# SaAmfPendingOperationFlagsT
SA_AMF_SWITCHOVER_OPERATION = 0x01
SA_AMF_SHUTDOWN_OPERATION = 0x02

# SaAmfErrorReportTypeT
SA_AMF_COMMUNICATION_ALARM_TYPE = 1
SA_AMF_QUALITY_OF_SERVICE_ALARM_TYPE = 2
SA_AMF_PROCESSING_ERROR_ALARM_TYPE = 3
SA_AMF_EQUIPMENT_ALARM_TYPE = 4
SA_AMF_ENVIRONMENTAL_ALARM_TYPE = 5

# SaAmfProbableCauseT (the ones the service and the examples name)
SA_AMF_COMMUNICATION_SUBSYSTEM_FAILURE = 5
SA_AMF_SOFTWARE_ERROR = 21
SA_AMF_NOT_RESPONDING = 30

# SaAmfErrorImpactAndSeverityT
SA_AMF_CLEARED = 1
SA_AMF_WARNING = 10

# SaAmfRecommendedRecoveryT
SA_AMF_NO_RECOMMENDATION = 1
SA_AMF_INTERNALLY_RECOVERED = 2
SA_AMF_COMPONENT_RESTART = 3
SA_AMF_COMPONENT_FAILOVER = 4
SA_AMF_NODE_SWITCHOVER = 5
SA_AMF_NODE_FAILOVER = 6
SA_AMF_NODE_FAILFAST = 7
SA_AMF_CLUSTER_RESET = 8

#: most additional-data bytes an error report carries (carried, never interpreted)
MAX_ADDITIONAL_DATA = 512


@dataclass(frozen=True, slots=True)
class ErrorDescriptor:
    """SaAmfErrorDescriptorT (only ``probable_cause`` drives the service)."""

    error_report_type: int = 0
    probable_cause: int = 0
    error_impact_and_severity: int = 0
    recommended_recovery: int = 0


@dataclass(frozen=True, slots=True)
class ProtectionGroupMember:
    """SaAmfProtectionGroupMemberT."""

    comp_name: bytes
    readiness_state: int
    ha_state: int


@dataclass(frozen=True, slots=True)
class ProtectionGroupNotification:
    """SaAmfProtectionGroupNotificationT."""

    member: ProtectionGroupMember
    change: int


# --- request and callback ids -----------------------------------------------------------

AMF_REQ_REGISTER = 1
AMF_REQ_UNREGISTER = 2
AMF_REQ_READINESS_GET = 3
AMF_REQ_HA_GET = 4
AMF_REQ_PG_TRACK_START = 5
AMF_REQ_PG_TRACK_STOP = 6
AMF_REQ_ERROR_REPORT = 7
AMF_REQ_ERROR_CANCEL_ALL = 8
AMF_REQ_STOPPING_COMPLETE = 9
AMF_REQ_RESPONSE = 10
AMF_REQ_CAPABILITY_GET = 11
#: the whole replicated state, for ``ais.amf_status`` (not in the SAF API)
AMF_REQ_STATUS = 12

AMF_CB_HEALTHCHECK = 5
AMF_CB_READINESS_SET = 6
AMF_CB_TERMINATE = 7
AMF_CB_CSI_SET = 8
AMF_CB_CSI_REMOVE = 9
AMF_CB_PG_TRACK = 11
AMF_CB_EXT_RESTART = 18
AMF_CB_EXT_CONTROL = 19
AMF_CB_PENDING_CONFIRM = 20
AMF_CB_PENDING_EXPIRED = 21

# --- layouts ------------------------------------------------------------------------------

# NAME: | length u16 (0..256) | bytes ... |
NAME_LEN = struct.Struct("!H")

# ERROR_REPORT request: NAME reporting, NAME erroneous, then (24 bytes)
#  0                8       12      16         20         24
#  | detection i64  | type  | cause | severity | recovery | additional data (0..512 bytes)
ERROR_REPORT_FIXED = struct.Struct("!qIIII")

# PG_TRACK_START request: NAME csi, then | flags u8 | pad 3 | number_of_items u32 |
PG_TRACK_START_FIXED = struct.Struct("!B3xI")

# RESPONSE / STOPPING_COMPLETE request (12 bytes): | invocation u64 | error i32 |
RESPONSE_REQ = struct.Struct("!Qi")

# replies carrying one state or model (4 bytes): | value u32 |
U32 = struct.Struct("!I")

# HEALTHCHECK callback: | invocation u64 | check type u32 | NAME comp
# READINESS_SET callback: | invocation u64 | readiness u32 | NAME comp
INVOCATION_U32 = struct.Struct("!QI")

# TERMINATE / EXT_RESTART callback: | invocation u64 | NAME comp
INVOCATION = struct.Struct("!Q")

# CSI_SET callback (24 bytes): then NAME comp, NAME csi, NAME active comp
#  0             8       12         16             20        24
#  | invocation  | flags | ha state | transition   | pad     |
CSI_SET_FIXED = struct.Struct("!QIII4x")

# CSI_REMOVE callback: | invocation u64 | flags u32 | NAME comp, NAME csi

# PG_TRACK callback: | items u32 | members u32 | error i32 | NAME csi |, then per item
#  NAME comp, | readiness u32 | ha u32 | change u32 |
PG_TRACK_FIXED = struct.Struct("!IIi")
PG_ITEM = struct.Struct("!III")

# PENDING_CONFIRM / PENDING_EXPIRED callback: | invocation u64 | flags u32 | NAME comp

# STATUS reply: | count u32 |, then per component (file order):
#  NAME group, NAME unit, NAME comp, NAME csi, then (28 bytes)
#  | registered u8 | su phase u8 | su role u8 | pad | host u32 (Totem id, 0 none) |
#  | readiness u32 | ha u32 | error u32 | active-units u32 | members u32 |
STATUS_ROW = struct.Struct("!BBBxIIIIII")

# ---------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, body: bytes, what: str) -> None:
        self.body = body
        self.off = 0
        self.what = what

    def fixed(self, layout: struct.Struct) -> tuple:
        if len(self.body) - self.off < layout.size:
            raise IpcProtocolError(f"{self.what}: truncated")
        out = layout.unpack_from(self.body, self.off)
        self.off += layout.size
        return out

    def name(self) -> bytes:
        (n,) = self.fixed(NAME_LEN)
        if n > SA_MAX_NAME_LENGTH:
            raise IpcProtocolError(f"{self.what}: name of {n} bytes")
        if len(self.body) - self.off < n:
            raise IpcProtocolError(f"{self.what}: truncated name")
        out = bytes(self.body[self.off:self.off + n])
        self.off += n
        return out

    def rest(self, limit: int) -> bytes:
        out = bytes(self.body[self.off:])
        if len(out) > limit:
            raise IpcProtocolError(f"{self.what}: {len(out)} trailing bytes")
        self.off = len(self.body)
        return out

    def end(self) -> None:
        if self.off != len(self.body):
            raise IpcProtocolError(f"{self.what}: {len(self.body) - self.off} extra bytes")


def encode_name(name: bytes) -> bytes:
    """NAME of ``name``.

    Raises:
        ValueError: longer than 256 bytes.
    """
    if len(name) > SA_MAX_NAME_LENGTH:
        raise ValueError(f"SaNameT longer than {SA_MAX_NAME_LENGTH} bytes")
    return NAME_LEN.pack(len(name)) + name


def encode_names(*names: bytes) -> bytes:
    return b"".join(encode_name(n) for n in names)


def decode_names_untrusted(body: bytes, count: int, what: str) -> tuple[bytes, ...]:
    """Exactly ``count`` NAMEs."""
    r = _Reader(body, what)
    out = tuple(r.name() for _ in range(count))
    r.end()
    return out


@dataclass(frozen=True, slots=True)
class ErrorReport:
    reporting: bytes
    erroneous: bytes
    detection_time: int
    descriptor: ErrorDescriptor
    additional_data: bytes = b""


def encode_error_report(req: ErrorReport) -> bytes:
    d = req.descriptor
    if len(req.additional_data) > MAX_ADDITIONAL_DATA:
        raise ValueError(f"additional data longer than {MAX_ADDITIONAL_DATA} bytes")
    return (encode_names(req.reporting, req.erroneous)
            + ERROR_REPORT_FIXED.pack(req.detection_time, d.error_report_type, d.probable_cause,
                                      d.error_impact_and_severity, d.recommended_recovery)
            + req.additional_data)


def decode_error_report_untrusted(body: bytes) -> ErrorReport:
    r = _Reader(body, "ERROR_REPORT")
    reporting, erroneous = r.name(), r.name()
    t, typ, cause, sev, rec = r.fixed(ERROR_REPORT_FIXED)
    data = r.rest(MAX_ADDITIONAL_DATA)
    return ErrorReport(reporting, erroneous, t, ErrorDescriptor(typ, cause, sev, rec), data)


@dataclass(frozen=True, slots=True)
class PgTrackStart:
    csi: bytes
    flags: int
    number_of_items: int


def encode_pg_track_start(req: PgTrackStart) -> bytes:
    return encode_name(req.csi) + PG_TRACK_START_FIXED.pack(req.flags, req.number_of_items)


def decode_pg_track_start_untrusted(body: bytes) -> PgTrackStart:
    r = _Reader(body, "PG_TRACK_START")
    csi = r.name()
    flags, n = r.fixed(PG_TRACK_START_FIXED)
    r.end()
    return PgTrackStart(csi, flags, n)


@dataclass(frozen=True, slots=True)
class Response:
    invocation: int
    error: int


def encode_response(req: Response) -> bytes:
    try:
        return RESPONSE_REQ.pack(req.invocation, req.error)
    except struct.error as exc:
        raise ValueError(f"invocation or error out of range: {exc}") from None


def decode_response_untrusted(body: bytes) -> Response:
    if len(body) != RESPONSE_REQ.size:
        raise IpcProtocolError(f"RESPONSE: {len(body)} bytes")
    return Response(*RESPONSE_REQ.unpack(body))


def encode_u32(value: int) -> bytes:
    return U32.pack(value)


def decode_u32_untrusted(body: bytes) -> int:
    if len(body) != U32.size:
        raise IpcProtocolError(f"reply of {len(body)} bytes, expected 4")
    return U32.unpack(body)[0]


# --- callbacks ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class HealthcheckCb:
    invocation: int
    comp_name: bytes
    check_type: int


@dataclass(frozen=True, slots=True)
class ReadinessSetCb:
    invocation: int
    comp_name: bytes
    readiness_state: int


@dataclass(frozen=True, slots=True)
class CsiSetCb:
    invocation: int
    comp_name: bytes
    csi_name: bytes
    csi_flags: int
    ha_state: int
    active_comp_name: bytes
    transition_descriptor: int


@dataclass(frozen=True, slots=True)
class CsiRemoveCb:
    invocation: int
    comp_name: bytes
    csi_name: bytes
    csi_flags: int


@dataclass(frozen=True, slots=True)
class PgTrackCb:
    csi_name: bytes
    items: tuple[ProtectionGroupNotification, ...]
    number_of_members: int
    error: int = SA_OK


@dataclass(frozen=True, slots=True)
class InvocationCb:
    """Terminate, external restart (flags 0) and pending-operation callbacks."""

    invocation: int
    comp_name: bytes
    flags: int = 0


def encode_healthcheck_cb(cb: HealthcheckCb) -> bytes:
    return INVOCATION_U32.pack(cb.invocation, cb.check_type) + encode_name(cb.comp_name)


def decode_healthcheck_cb_untrusted(body: bytes) -> HealthcheckCb:
    r = _Reader(body, "healthcheck callback")
    inv, typ = r.fixed(INVOCATION_U32)
    name = r.name()
    r.end()
    return HealthcheckCb(inv, name, typ)


def encode_readiness_set_cb(cb: ReadinessSetCb) -> bytes:
    return INVOCATION_U32.pack(cb.invocation, cb.readiness_state) + encode_name(cb.comp_name)


def decode_readiness_set_cb_untrusted(body: bytes) -> ReadinessSetCb:
    r = _Reader(body, "readiness callback")
    inv, state = r.fixed(INVOCATION_U32)
    name = r.name()
    r.end()
    return ReadinessSetCb(inv, name, state)


def encode_csi_set_cb(cb: CsiSetCb) -> bytes:
    return (CSI_SET_FIXED.pack(cb.invocation, cb.csi_flags, cb.ha_state,
                               cb.transition_descriptor)
            + encode_names(cb.comp_name, cb.csi_name, cb.active_comp_name))


def decode_csi_set_cb_untrusted(body: bytes) -> CsiSetCb:
    r = _Reader(body, "CSI set callback")
    inv, flags, ha, trans = r.fixed(CSI_SET_FIXED)
    comp, csi, active = r.name(), r.name(), r.name()
    r.end()
    return CsiSetCb(inv, comp, csi, flags, ha, active, trans)


def encode_csi_remove_cb(cb: CsiRemoveCb) -> bytes:
    return INVOCATION_U32.pack(cb.invocation, cb.csi_flags) + encode_names(cb.comp_name,
                                                                          cb.csi_name)


def decode_csi_remove_cb_untrusted(body: bytes) -> CsiRemoveCb:
    r = _Reader(body, "CSI remove callback")
    inv, flags = r.fixed(INVOCATION_U32)
    comp, csi = r.name(), r.name()
    r.end()
    return CsiRemoveCb(inv, comp, csi, flags)


def encode_invocation_cb(cb: InvocationCb) -> bytes:
    return INVOCATION_U32.pack(cb.invocation, cb.flags) + encode_name(cb.comp_name)


def decode_invocation_cb_untrusted(body: bytes) -> InvocationCb:
    r = _Reader(body, "callback")
    inv, flags = r.fixed(INVOCATION_U32)
    name = r.name()
    r.end()
    return InvocationCb(inv, name, flags)


def encode_pg_track_cb(cb: PgTrackCb) -> bytes:
    parts = [PG_TRACK_FIXED.pack(len(cb.items), cb.number_of_members, cb.error),
             encode_name(cb.csi_name)]
    for item in cb.items:
        m = item.member
        parts.append(encode_name(m.comp_name))
        parts.append(PG_ITEM.pack(m.readiness_state, m.ha_state, item.change))
    return b"".join(parts)


def decode_pg_track_cb_untrusted(body: bytes) -> PgTrackCb:
    r = _Reader(body, "PG track callback")
    count, members, error = r.fixed(PG_TRACK_FIXED)
    csi = r.name()
    if count > len(body):
        raise IpcProtocolError("PG track callback: impossible item count")
    items = []
    for _ in range(count):
        name = r.name()
        ready, ha, change = r.fixed(PG_ITEM)
        items.append(ProtectionGroupNotification(ProtectionGroupMember(name, ready, ha), change))
    r.end()
    return PgTrackCb(csi, tuple(items), members, error)


# --- status ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StatusRow:
    """One component of the replicated AMF state, as ``ais.amf_status`` prints it."""

    group: bytes
    unit: bytes
    comp: bytes
    csi: bytes
    registered: bool
    su_phase: int
    su_role: int
    host: int
    readiness: int
    ha: int
    error: int
    active_units: int
    members: int


def encode_status(rows: list[StatusRow] | tuple[StatusRow, ...]) -> bytes:
    parts = [U32.pack(len(rows))]
    for s in rows:
        parts.append(encode_names(s.group, s.unit, s.comp, s.csi))
        parts.append(STATUS_ROW.pack(int(s.registered), s.su_phase, s.su_role, s.host,
                                     s.readiness, s.ha, s.error, s.active_units, s.members))
    return b"".join(parts)


def decode_status_untrusted(body: bytes) -> tuple[StatusRow, ...]:
    r = _Reader(body, "status")
    (count,) = r.fixed(U32)
    if count > len(body):
        raise IpcProtocolError("status: impossible row count")
    rows = []
    for _ in range(count):
        g, u, c, p = r.name(), r.name(), r.name(), r.name()
        reg, phase, role, host, ready, ha, err, n, members = r.fixed(STATUS_ROW)
        rows.append(StatusRow(g, u, c, p, bool(reg), phase, role, host, ready, ha, err, n,
                              members))
    r.end()
    return tuple(rows)
