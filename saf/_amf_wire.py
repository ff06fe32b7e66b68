"""AMF client IPC layouts and value types, declared once; shared by ``saf.amf`` and
``ais.services.amf``.

Conventions as in ``saf/_clm_wire.py``: each layout is a ``saf._codec.Layout``
with its bytes drawn above it; each message has an ``encode_x`` /
``decode_x_untrusted`` pair; decoded messages are frozen dataclasses (or
tuples); ``*_untrusted`` functions raise only ``saf.errors.IpcProtocolError``.
Names (SaNameT) are ``NAME``: a u16 length, then that many bytes (at most 256).

One connection per library handle (service id AMF = 2).  Requests that are
"one-shot" in the C API (readiness get, HA get, error report, cancel,
capability get, response, stopping complete) go on a short-lived connection
or on a handle's request channel: the executive does not care which.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from saf._codec import Layout, array, blob, flag, i32, i64, pad, rest, u8, u16, u32, u64
from saf.errors import SA_OK
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
#: administrative operation on a service unit or a node (ais.amf_admin):
#: | op u32 | NAME unit (node operations: the node's IPv4 address as text) |
AMF_REQ_ADMIN = 13
#: saAmfPendingOperationGet: NAME comp -> u32 flags
AMF_REQ_PENDING_GET = 14
#: saAmfHealthcheckStart / Stop (B.01.01 style, AMF-invoked only), on the connection the
#: component registered through: NAME comp, NAME healthcheck key (a ``healthcheck {`` of
#: its group in groups.conf)
AMF_REQ_HEALTHCHECK_START = 15
AMF_REQ_HEALTHCHECK_STOP = 16

#: administrative operations (AMF_REQ_ADMIN)
AMF_ADMIN_LOCK = 1
AMF_ADMIN_UNLOCK = 2
AMF_ADMIN_SHUTDOWN = 3
#: lock every unit hosted on a node / unlock the units a node lock locked
AMF_ADMIN_LOCK_NODE = 4
AMF_ADMIN_UNLOCK_NODE = 5
#: administrative state of a unit (StatusRow.su_admin)
AMF_ADMIN_UNLOCKED = 0
AMF_ADMIN_LOCKED = 1
AMF_ADMIN_SHUTTING_DOWN = 2

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

# --- messages ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorReport:
    reporting: bytes
    erroneous: bytes
    detection_time: int
    descriptor: ErrorDescriptor
    additional_data: bytes = b""


@dataclass(frozen=True, slots=True)
class PgTrackStart:
    csi: bytes
    flags: int
    number_of_items: int


@dataclass(frozen=True, slots=True)
class Response:
    invocation: int
    error: int


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
    #: AMF_ADMIN_UNLOCKED / LOCKED / SHUTTING_DOWN
    su_admin: int = AMF_ADMIN_UNLOCKED
    #: the unit's pending administrative operation (saAmfPendingOperationGet; 0 none)
    su_pending: int = 0
    #: the proxy component relaying for this one (empty: not proxied)
    proxy: bytes = b""


@dataclass(frozen=True, slots=True)
class AdminRequest:
    op: int
    #: the unit's name, or for the node operations the node's address ("127.0.0.1")
    unit: bytes


# --- layouts ---------------------------------------------------------------------------------

# NAME: | length u16 (0..256) | bytes ... |
NAME = blob(u16, max=SA_MAX_NAME_LENGTH)
NAMES = {n: Layout(None, f"{n} names", *[(f"name{i}", NAME) for i in range(n)])
         for n in (1, 2, 3)}

# ERROR_REPORT request: NAME reporting, NAME erroneous, then (24 bytes)
#  0                8       12      16         20         24
#  | detection i64  | type  | cause | severity | recovery | additional data (0..512 bytes)
ERROR_DESCRIPTOR = Layout(ErrorDescriptor, "error descriptor", ("error_report_type", u32),
                          ("probable_cause", u32), ("error_impact_and_severity", u32),
                          ("recommended_recovery", u32))
ERROR_REPORT = Layout(ErrorReport, "ERROR_REPORT", ("reporting", NAME), ("erroneous", NAME),
                      ("detection_time", i64), ("descriptor", ERROR_DESCRIPTOR),
                      ("additional_data", rest(max=MAX_ADDITIONAL_DATA)))

# PG_TRACK_START request: NAME csi, then | flags u8 | pad 3 | number_of_items u32 |
PG_TRACK_START = Layout(PgTrackStart, "PG_TRACK_START", ("csi", NAME), ("flags", u8), pad(3),
                        ("number_of_items", u32))

# RESPONSE / STOPPING_COMPLETE request (12 bytes): | invocation u64 | error i32 |
RESPONSE_REQ = Layout(Response, "RESPONSE", ("invocation", u64), ("error", i32))

# replies carrying one state or model (4 bytes): | value u32 |
U32 = Layout(None, "u32 reply", ("value", u32))

# HEALTHCHECK callback: | invocation u64 | check type u32 | NAME comp
HEALTHCHECK_CB = Layout(HealthcheckCb, "healthcheck callback", ("invocation", u64),
                        ("check_type", u32), ("comp_name", NAME))
# READINESS_SET callback: | invocation u64 | readiness u32 | NAME comp
READINESS_SET_CB = Layout(ReadinessSetCb, "readiness callback", ("invocation", u64),
                          ("readiness_state", u32), ("comp_name", NAME))

# CSI_SET callback (24 bytes): then NAME comp, NAME csi, NAME active comp
#  0             8       12         16             20        24
#  | invocation  | flags | ha state | transition   | pad     |
CSI_SET_CB = Layout(CsiSetCb, "CSI set callback", ("invocation", u64), ("csi_flags", u32),
                    ("ha_state", u32), ("transition_descriptor", u32), pad(4),
                    ("comp_name", NAME), ("csi_name", NAME), ("active_comp_name", NAME))

# CSI_REMOVE callback: | invocation u64 | flags u32 | NAME comp, NAME csi
CSI_REMOVE_CB = Layout(CsiRemoveCb, "CSI remove callback", ("invocation", u64),
                       ("csi_flags", u32), ("comp_name", NAME), ("csi_name", NAME))

# TERMINATE / EXT_RESTART / EXT_CONTROL / PENDING_* callbacks:
#  | invocation u64 | flags (or action) u32 | NAME comp
INVOCATION_CB = Layout(InvocationCb, "callback", ("invocation", u64), ("flags", u32),
                       ("comp_name", NAME))

# PG_TRACK callback: | items u32 | members u32 | error i32 | NAME csi |, then per item
#  NAME comp, | readiness u32 | ha u32 | change u32 |
PG_MEMBER = Layout(ProtectionGroupMember, "PG member", ("comp_name", NAME),
                   ("readiness_state", u32), ("ha_state", u32))
PG_ITEM = Layout(ProtectionGroupNotification, "PG item", ("member", PG_MEMBER),
                 ("change", u32))
PG_TRACK_CB = Layout(PgTrackCb, "PG track callback", ("count", u32),
                     ("number_of_members", u32), ("error", i32), ("csi_name", NAME),
                     ("items", array(PG_ITEM, "count")))

# STATUS reply: | count u32 |, then per component (file order):
#  NAME group, NAME unit, NAME comp, NAME csi, then (28 bytes)
#  | registered u8 | su phase u8 | su role u8 | su admin u8 | host u32 (Totem id, 0 none) |
#  | readiness u32 | ha u32 | error u32 | active-units u32 | members u32 |
#  | su pending operation u32 |, NAME proxy
STATUS_ROW = Layout(StatusRow, "status row", ("group", NAME), ("unit", NAME), ("comp", NAME),
                    ("csi", NAME), ("registered", flag), ("su_phase", u8), ("su_role", u8),
                    ("su_admin", u8), ("host", u32), ("readiness", u32), ("ha", u32),
                    ("error", u32), ("active_units", u32), ("members", u32),
                    ("su_pending", u32), ("proxy", NAME))
STATUS = Layout(None, "status", ("rows", array(STATUS_ROW, u32)))

# ADMIN request: | op u32 | NAME unit |
ADMIN_REQ = Layout(AdminRequest, "ADMIN", ("op", u32), ("unit", NAME))


def encode_name(name: bytes) -> bytes:
    """NAME of ``name``.  Raises ValueError: longer than 256 bytes."""
    return NAMES[1].pack(name)


def encode_names(*names: bytes) -> bytes:
    return NAMES[len(names)].pack(*names)


def decode_names_untrusted(body: bytes, count: int, what: str = "") -> tuple[bytes, ...]:
    """Exactly ``count`` (1 to 3) NAMEs."""
    return NAMES[count].decode(body)


def encode_error_report(req: ErrorReport) -> bytes:
    """Raises ValueError: a name or the additional data too long."""
    return ERROR_REPORT.encode(req)


decode_error_report_untrusted = ERROR_REPORT.decode
encode_pg_track_start = PG_TRACK_START.encode
decode_pg_track_start_untrusted = PG_TRACK_START.decode
encode_response = RESPONSE_REQ.encode
decode_response_untrusted = RESPONSE_REQ.decode
encode_healthcheck_cb = HEALTHCHECK_CB.encode
decode_healthcheck_cb_untrusted = HEALTHCHECK_CB.decode
encode_readiness_set_cb = READINESS_SET_CB.encode
decode_readiness_set_cb_untrusted = READINESS_SET_CB.decode
encode_csi_set_cb = CSI_SET_CB.encode
decode_csi_set_cb_untrusted = CSI_SET_CB.decode
encode_csi_remove_cb = CSI_REMOVE_CB.encode
decode_csi_remove_cb_untrusted = CSI_REMOVE_CB.decode
encode_invocation_cb = INVOCATION_CB.encode
decode_invocation_cb_untrusted = INVOCATION_CB.decode
encode_admin = ADMIN_REQ.encode
decode_admin_untrusted = ADMIN_REQ.decode
encode_pg_track_cb = PG_TRACK_CB.encode
decode_pg_track_cb_untrusted = PG_TRACK_CB.decode


def encode_u32(value: int) -> bytes:
    return U32.pack(value)


def decode_u32_untrusted(body: bytes) -> int:
    return U32.decode(body)[0]


def encode_status(rows: list[StatusRow] | tuple[StatusRow, ...]) -> bytes:
    return STATUS.pack(tuple(rows))


def decode_status_untrusted(body: bytes) -> tuple[StatusRow, ...]:
    return STATUS.decode(body)[0]
