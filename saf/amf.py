"""SAF AIS AMF (availability management framework) client library, A.01.01.

Mapping from the C API (spec/amf.md section 4) to this module:

=========================================  ===============================================
C                                          Python
=========================================  ===============================================
saAmfInitialize(&h, &cb, &ver)             ``h = saf.amf.initialize(callbacks=cb, version=ver)``
saAmfSelectionObjectGet(h, &fd)            ``fd = h.selection_object()``
saAmfDispatch(h, flags)                    ``h.dispatch(flags)``
saAmfFinalize(h)                           ``h.finalize()`` (or leave a ``with h:`` block)
saAmfComponentRegister(h, &c, proxy)       ``h.component_register(c, proxy=None)``
saAmfComponentUnregister(h, &c, proxy)     ``h.component_unregister(c, proxy=None)``
saAmfCompNameGet(h, &c)                    ``c = h.comp_name_get()``
saAmfReadinessStateGet(&c, &s)             ``s = saf.amf.readiness_state_get(c)``
saAmfHAStateGet(&c, &csi, &s)              ``s = saf.amf.ha_state_get(c, csi)``
saAmfProtectionGroupTrackStart(h, &csi,    ``h.protection_group_track_start(csi, flags,
  flags, buf, n)                             number_of_items=None)``
saAmfProtectionGroupTrackStop(h, &csi)     ``h.protection_group_track_stop(csi)``
saAmfErrorReport(&r, &e, t, &d, &data)     ``saf.amf.error_report(r, e, t, d, data=None)``
saAmfErrorCancelAll(&c)                    ``saf.amf.error_cancel_all(c)``
saAmfComponentCapabilityModelGet(&c, &m)   ``m = saf.amf.component_capability_model_get(c)``
saAmfPendingOperationGet(&c, &f)           ``f = saf.amf.pending_operation_get(c)``
saAmfResponse(inv, err)                    ``saf.amf.response(inv, err)``
saAmfStoppingComplete(inv, err)            ``saf.amf.stopping_complete(inv, err)``
(not SAF) lock/unlock/shutdown a unit        ``saf.amf.admin(AMF_ADMIN_LOCK, unit)``
SaAmfCallbacksT                            ``saf.amf.Callbacks(healthcheck_callback=..., ...)``
SaErrorT != SA_OK                          raised as ``saf.errors.<Name>`` (``.code``)
=========================================  ===============================================

Names (SaNameT) may be given as ``str`` or ``bytes``; callbacks receive
``bytes``.  Callbacks keep the C argument order:

* ``healthcheck_callback(invocation, comp_name, check_type)``
* ``readiness_state_set_callback(invocation, comp_name, readiness_state)``
* ``component_terminate_callback(invocation, comp_name)``
* ``csi_set_callback(invocation, comp_name, csi_name, csi_flags, ha_state,
  active_comp_name, transition_descriptor)``
* ``csi_remove_callback(invocation, comp_name, csi_name, csi_flags)``
* ``protection_group_track_callback(csi_name, notification_buffer,
  number_of_items, number_of_members, error)``: a list of
  ``ProtectionGroupNotification``; when it would hold more than the
  ``number_of_items`` given to the track start, the list is empty,
  ``number_of_items`` is the count needed and ``error`` is SA_ERR_NO_SPACE.
* ``external_component_restart_callback(invocation, external_comp_name)``,
  ``external_component_control_callback(invocation, external_comp_name,
  control_action)``, ``pending_operation_confirm_callback(invocation,
  comp_name, flags)``, ``pending_operation_expired_callback(comp_name,
  flags)``: declared for completeness; this executive never invokes them (no
  proxies, no administrative operations).

Healthcheck, readiness-set and CSI-set callbacks must be answered with
``response(invocation, SA_OK)`` within the component's configured time
(groups.conf ``healthcheck-timeout`` / ``response-timeout``), else the
component is failed.  ``response`` uses the connection of the handle the
callback came on when it is still open (no new connection per answer), else
a short-lived one as the C library does.
"""
from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from saf import _amf_wire as aw
from saf._amf_wire import (  # noqa: F401  (re-exported SAF names)
    AMF_ADMIN_LOCK, AMF_ADMIN_LOCK_NODE, AMF_ADMIN_SHUTDOWN, AMF_ADMIN_UNLOCK,
    AMF_ADMIN_UNLOCK_NODE, SA_AMF_ACTIVE,
    SA_AMF_COMMUNICATION_SUBSYSTEM_FAILURE, SA_AMF_CSI_ADD_NEW_ISTANCE,
    SA_AMF_CSI_ALL_INSTANCES, SA_AMF_CSI_NEW_ASSIGN, SA_AMF_CSI_NOT_QUIESCED,
    SA_AMF_CSI_QUIESCED, SA_AMF_HEARTBEAT, SA_AMF_IN_SERVICE,
    SA_AMF_NOT_RESPONDING, SA_AMF_OUT_OF_SERVICE, SA_AMF_PROTECTION_GROUP_NO_CHANGE,
    SA_AMF_PROTECTION_GROUP_STATE_CHANGE, SA_AMF_QUIESCED, SA_AMF_SHUTDOWN_OPERATION,
    SA_AMF_SOFTWARE_ERROR, SA_AMF_STANDBY, SA_AMF_STOPPING, SA_AMF_SWITCHOVER_OPERATION,
    ErrorDescriptor, HAState, ProtectionGroupMember, ProtectionGroupNotification,
    ReadinessState, StatusRow,
)
from saf import _conn
from saf._conn import REQUEST_GUARD, Connection, decode_reply, on_callback, one_shot
from saf.errors import (
    ERRORS_BY_CODE, SA_OK, BadHandle, InvalidParam, Library, NoSpace, NotExist,
)
from saf.types import Version, sa_name

#: the version this library implements
DEFAULT_VERSION = Version("A", 1, 1)


@dataclass(frozen=True)
class Callbacks:
    """SaAmfCallbacksT; None means "no such callback" (the message is dropped)."""

    healthcheck_callback: Callable[[int, bytes, int], None] | None = None
    readiness_state_set_callback: Callable[[int, bytes, int], None] | None = None
    component_terminate_callback: Callable[[int, bytes], None] | None = None
    csi_set_callback: Callable[[int, bytes, bytes, int, int, bytes, int], None] | None = None
    csi_remove_callback: Callable[[int, bytes, bytes, int], None] | None = None
    protection_group_track_callback: Callable[
        [bytes, list[ProtectionGroupNotification], int, int, int], None] | None = None
    external_component_restart_callback: Callable[[int, bytes], None] | None = None
    external_component_control_callback: Callable[[int, bytes, int], None] | None = None
    pending_operation_confirm_callback: Callable[[int, bytes, int], None] | None = None
    pending_operation_expired_callback: Callable[[bytes, int], None] | None = None


def _name(value: str | bytes, what: str = "name") -> bytes:
    try:
        return sa_name(value)
    except ValueError as exc:
        raise InvalidParam(f"{what}: {exc}") from None


# invocation -> the handle its callback came on, so response() can use that connection
_INVOCATION_HANDLES: dict[int, weakref.ref[AmfHandle]] = {}
_INVOCATION_LOCK = threading.Lock()
_INVOCATION_LIMIT = 4096


def _remember(invocation: int, handle: AmfHandle) -> None:
    with _INVOCATION_LOCK:
        _INVOCATION_HANDLES[invocation] = weakref.ref(handle)
        while len(_INVOCATION_HANDLES) > _INVOCATION_LIMIT:
            del _INVOCATION_HANDLES[next(iter(_INVOCATION_HANDLES))]


def _handle_for(invocation: int) -> AmfHandle | None:
    with _INVOCATION_LOCK:
        ref = _INVOCATION_HANDLES.pop(invocation, None)
    h = ref() if ref is not None else None
    return h if h is not None and not h.finalized else None


class AmfHandle(Connection):
    """An initialized AMF library handle (SaAmfHandleT)."""

    service_id = aw.AMF_SERVICE_ID

    def __init__(self, callbacks: Callbacks | None) -> None:
        super().__init__()
        self.callbacks = callbacks or Callbacks()
        self._comp_name: bytes | None = None
        self._track_limits: dict[bytes, int] = {}

    # --- components ----------------------------------------------------------------

    def component_register(self, comp_name: str | bytes,
                           proxy_comp_name: str | bytes | None = None) -> None:
        """Register this process as component ``comp_name`` (cluster-wide), or,
        with ``proxy_comp_name``, register external component ``comp_name`` on
        behalf of proxy ``proxy_comp_name`` (``comp_name_get`` keeps the proxy).

        Raises:
            NotExist: not in groups.conf (or the proxy is unknown/unregistered).
            Exist: already registered on some node.  TryAgain, BadHandle, Library.
        """
        name = _name(comp_name, "component name")
        proxy = _name(proxy_comp_name, "proxy name") if proxy_comp_name is not None else b""
        self.request(aw.AMF_REQ_REGISTER, aw.encode_names(name, proxy))
        if not proxy:
            # a proxy registering an external component stays itself
            self._comp_name = name

    def component_unregister(self, comp_name: str | bytes,
                             proxy_comp_name: str | bytes | None = None) -> None:
        """Unregister ``comp_name``; its unit goes out of service.

        Raises:
            NotExist: unknown or not registered.  BadOperation: registered by
            another process.  BadHandle, Library.
        """
        name = _name(comp_name, "component name")
        proxy = _name(proxy_comp_name, "proxy name") if proxy_comp_name is not None else b""
        self.request(aw.AMF_REQ_UNREGISTER, aw.encode_names(name, proxy))
        if self._comp_name == name:
            self._comp_name = None

    def comp_name_get(self) -> bytes:
        """The name registered through this handle.  Raises NotExist when none."""
        self._check_open()
        if self._comp_name is None:
            raise NotExist("no component registered through this handle")
        return self._comp_name

    # --- protection groups ----------------------------------------------------------------

    def protection_group_track_start(self, csi_name: str | bytes, track_flags: int,
                                     number_of_items: int | None = None) -> None:
        """Track the members of protection group (CSI) ``csi_name``.

        Raises:
            NotExist: no such protection group.  BadFlags, InvalidParam, BadHandle.
        """
        if number_of_items is not None and number_of_items < 0:
            raise InvalidParam("number_of_items must be >= 0")
        csi = _name(csi_name, "CSI name")
        limit = number_of_items or 0
        self.request(aw.AMF_REQ_PG_TRACK_START, _conn.encode(
            aw.encode_pg_track_start, aw.PgTrackStart(csi, track_flags, limit)))
        self._track_limits[csi] = limit

    def protection_group_track_stop(self, csi_name: str | bytes) -> None:
        """Stop tracking ``csi_name``.  Raises NotExist when not tracking it."""
        csi = _name(csi_name, "CSI name")
        self.request(aw.AMF_REQ_PG_TRACK_STOP, aw.encode_name(csi))
        self._track_limits.pop(csi, None)

    def healthcheck_start(self, comp_name: str | bytes, key: str | bytes) -> None:
        """Have the executive check ``comp_name`` (registered through this handle) with
        the period and timeout of the healthcheck configured as ``key`` in its group
        (instead of the group's healthcheck-period / healthcheck-timeout).

        Raises:
            NotExist: no such key in the component's group.  Exist: already started
            with that key.  BadOperation: the component is not registered through this
            handle.
        """
        self.request(aw.AMF_REQ_HEALTHCHECK_START, aw.encode_names(
            _name(comp_name), _name(key, "healthcheck key")))

    def healthcheck_stop(self, comp_name: str | bytes, key: str | bytes) -> None:
        """Stop the checks started with ``key``: the group's own period and timeout
        apply again (a component in service is always checked).  Raises NotExist."""
        self.request(aw.AMF_REQ_HEALTHCHECK_STOP, aw.encode_names(
            _name(comp_name), _name(key, "healthcheck key")))

    # --- answers -----------------------------------------------------------------------------

    def response(self, invocation: int, error: int = SA_OK) -> None:
        """saAmfResponse on this handle's connection."""
        self.request(aw.AMF_REQ_RESPONSE, _response_body(invocation, error))

    def stopping_complete(self, invocation: int, error: int = SA_OK) -> None:
        """saAmfStoppingComplete on this handle's connection."""
        self.request(aw.AMF_REQ_STOPPING_COMPLETE, _response_body(invocation, error))

    # --- callbacks (run by dispatch; the table comes from @on_callback) -------------------

    @on_callback(aw.AMF_CB_HEALTHCHECK, aw.decode_healthcheck_cb_untrusted)
    def _on_healthcheck(self, cb: aw.HealthcheckCb, error: int) -> None:
        _remember(cb.invocation, self)
        fn = self.callbacks.healthcheck_callback
        if fn is not None:
            fn(cb.invocation, cb.comp_name, cb.check_type)

    @on_callback(aw.AMF_CB_READINESS_SET, aw.decode_readiness_set_cb_untrusted)
    def _on_readiness_set(self, cb: aw.ReadinessSetCb, error: int) -> None:
        _remember(cb.invocation, self)
        fn = self.callbacks.readiness_state_set_callback
        if fn is not None:
            fn(cb.invocation, cb.comp_name, cb.readiness_state)

    @on_callback(aw.AMF_CB_CSI_SET, aw.decode_csi_set_cb_untrusted)
    def _on_csi_set(self, cb: aw.CsiSetCb, error: int) -> None:
        _remember(cb.invocation, self)
        fn = self.callbacks.csi_set_callback
        if fn is not None:
            fn(cb.invocation, cb.comp_name, cb.csi_name, cb.csi_flags, cb.ha_state,
               cb.active_comp_name, cb.transition_descriptor)

    @on_callback(aw.AMF_CB_CSI_REMOVE, aw.decode_csi_remove_cb_untrusted)
    def _on_csi_remove(self, cb: aw.CsiRemoveCb, error: int) -> None:
        _remember(cb.invocation, self)
        fn = self.callbacks.csi_remove_callback
        if fn is not None:
            fn(cb.invocation, cb.comp_name, cb.csi_name, cb.csi_flags)

    @on_callback(aw.AMF_CB_PG_TRACK, aw.decode_pg_track_cb_untrusted)
    def _on_pg_track(self, pg: aw.PgTrackCb, error: int) -> None:
        fn = self.callbacks.protection_group_track_callback
        if fn is None:
            return
        items = list(pg.items)
        limit = self._track_limits.get(pg.csi_name, 0)
        if limit and len(items) > limit:
            fn(pg.csi_name, [], len(items), pg.number_of_members, NoSpace.code)
        else:
            fn(pg.csi_name, items, len(items), pg.number_of_members, pg.error)

    @on_callback(aw.AMF_CB_TERMINATE, aw.decode_invocation_cb_untrusted)
    def _on_terminate(self, cb: aw.InvocationCb, error: int) -> None:
        if self.callbacks.component_terminate_callback is not None:
            self.callbacks.component_terminate_callback(cb.invocation, cb.comp_name)

    @on_callback(aw.AMF_CB_EXT_RESTART, aw.decode_invocation_cb_untrusted)
    def _on_ext_restart(self, cb: aw.InvocationCb, error: int) -> None:
        if self.callbacks.external_component_restart_callback is not None:
            self.callbacks.external_component_restart_callback(cb.invocation, cb.comp_name)

    @on_callback(aw.AMF_CB_EXT_CONTROL, aw.decode_invocation_cb_untrusted)
    def _on_ext_control(self, cb: aw.InvocationCb, error: int) -> None:
        if self.callbacks.external_component_control_callback is not None:
            self.callbacks.external_component_control_callback(cb.invocation, cb.comp_name,
                                                               cb.flags)

    @on_callback(aw.AMF_CB_PENDING_CONFIRM, aw.decode_invocation_cb_untrusted)
    def _on_pending_confirm(self, cb: aw.InvocationCb, error: int) -> None:
        if self.callbacks.pending_operation_confirm_callback is not None:
            self.callbacks.pending_operation_confirm_callback(cb.invocation, cb.comp_name,
                                                              cb.flags)

    @on_callback(aw.AMF_CB_PENDING_EXPIRED, aw.decode_invocation_cb_untrusted)
    def _on_pending_expired(self, cb: aw.InvocationCb, error: int) -> None:
        if self.callbacks.pending_operation_expired_callback is not None:
            self.callbacks.pending_operation_expired_callback(cb.comp_name, cb.flags)

    def __enter__(self) -> AmfHandle:
        return self


def initialize(callbacks: Callbacks | None = None,
               version: Version | None = DEFAULT_VERSION) -> AmfHandle:
    """saAmfInitialize: connect to the local executive's AMF service.

    Raises:
        VersionError: not A.01.01.  TryAgain: no executive.  Security: not allowed.
    """
    return _conn.initialize(AmfHandle, callbacks, version)


def _call(msg_id: int, body: bytes) -> bytes:
    return one_shot(aw.AMF_SERVICE_ID, msg_id, body, REQUEST_GUARD)


def _u32(body: bytes) -> int:
    return decode_reply(aw.decode_u32_untrusted, body)


def readiness_state_get(comp_name: str | bytes) -> ReadinessState:
    """The confirmed readiness of any configured component.  Raises NotExist."""
    return ReadinessState(_u32(_call(aw.AMF_REQ_READINESS_GET,
                                     aw.encode_name(_name(comp_name)))))


def ha_state_get(comp_name: str | bytes, csi_name: str | bytes) -> HAState:
    """The confirmed HA state of ``comp_name`` for CSI ``csi_name``.

    Raises:
        NotExist: unknown component, or not a member of that protection group.
    """
    return HAState(_u32(_call(aw.AMF_REQ_HA_GET,
                              aw.encode_names(_name(comp_name), _name(csi_name)))))


def error_report(reporting_component: str | bytes, erroneous_component: str | bytes,
                 error_detection_time: int = 0,
                 error_descriptor: ErrorDescriptor | None = None,
                 additional_data: bytes | None = None) -> None:
    """Report an error on a registered component (from any process, any node).

    Every accepted report takes the component's unit out of service (its
    standby, if any, becomes active) until ``error_cancel_all``.

    Raises:
        NotExist: unknown component.  BadOperation: not registered.
    """
    data = additional_data or b""
    if len(data) > aw.MAX_ADDITIONAL_DATA:
        raise InvalidParam(f"additional data longer than {aw.MAX_ADDITIONAL_DATA} bytes")
    _call(aw.AMF_REQ_ERROR_REPORT, _conn.encode(aw.encode_error_report, aw.ErrorReport(
        _name(reporting_component), _name(erroneous_component), error_detection_time,
        error_descriptor or ErrorDescriptor(), data)))


def error_cancel_all(comp_name: str | bytes) -> None:
    """Clear the component's errors; its unit comes back into service.

    Raises:
        NotExist: unknown component.  BadOperation: not registered.
    """
    _call(aw.AMF_REQ_ERROR_CANCEL_ALL, aw.encode_name(_name(comp_name)))


def component_capability_model_get(comp_name: str | bytes) -> int:
    """The configured capability model (1..7).  Raises NotExist (unknown or unregistered)."""
    return _u32(_call(aw.AMF_REQ_CAPABILITY_GET, aw.encode_name(_name(comp_name))))


def pending_operation_get(comp_name: str | bytes) -> int:
    """Pending operation flags of the component's unit: SA_AMF_SHUTDOWN_OPERATION while
    it shuts down, SA_AMF_SWITCHOVER_OPERATION while a lock takes its assignments
    away, else 0.

    Raises:
        NotExist: unknown component.
    """
    return _u32(_call(aw.AMF_REQ_PENDING_GET, aw.encode_name(_name(comp_name))))


def admin(op: int, unit: str | bytes) -> None:
    """An administrative operation on a service unit (not SAF; ``ais.amf_admin``):
    ``AMF_ADMIN_LOCK``, ``AMF_ADMIN_UNLOCK`` or ``AMF_ADMIN_SHUTDOWN``; or on a node
    (``unit`` = its IPv4 address): ``AMF_ADMIN_LOCK_NODE``, ``AMF_ADMIN_UNLOCK_NODE``.
    Returns once the cluster has agreed on it (the units then move on their own).

    Raises:
        NotExist: no such unit (no unlocked unit on the node).  BadOperation: already
        locked (lock, shutdown) or not locked (unlock, unlock-node).  InvalidParam:
        unknown operation, not an address.
    """
    _call(aw.AMF_REQ_ADMIN, aw.encode_admin(aw.AdminRequest(op, _name(unit, "unit name"))))


def _response_body(invocation: int, error: int) -> bytes:
    if error != SA_OK and error not in ERRORS_BY_CODE:
        raise InvalidParam(f"{error!r} is not an SaErrorT")
    try:
        return aw.encode_response(aw.Response(invocation, error))
    except ValueError as exc:
        raise InvalidParam(str(exc)) from None


def response(invocation: int, error: int = SA_OK) -> None:
    """saAmfResponse: answer a healthcheck, readiness-set or CSI-set callback.

    Raises:
        InvalidParam: unknown invocation (already answered, timed out, or never issued).
    """
    body = _response_body(invocation, error)
    handle = _handle_for(invocation)
    if handle is not None:
        try:
            handle.request(aw.AMF_REQ_RESPONSE, body)
            return
        except (Library, BadHandle):
            if not handle.finalized:
                raise  # the executive is gone: a new connection would not help
    _call(aw.AMF_REQ_RESPONSE, body)


def stopping_complete(invocation: int, error: int = SA_OK) -> None:
    """saAmfStoppingComplete: answer a readiness-set(STOPPING) callback."""
    body = _response_body(invocation, error)
    handle = _handle_for(invocation)
    if handle is not None:
        handle.request(aw.AMF_REQ_STOPPING_COMPLETE, body)
        return
    _call(aw.AMF_REQ_STOPPING_COMPLETE, body)


def status() -> tuple[StatusRow, ...]:
    """The replicated AMF state as this node holds it (not SAF; ``ais.amf_status`` prints it)."""
    return decode_reply(aw.decode_status_untrusted, _call(aw.AMF_REQ_STATUS, b""))


__all__ = [
    "DEFAULT_VERSION",
    "AmfHandle",
    "Callbacks",
    "ErrorDescriptor",
    "AMF_ADMIN_LOCK",
    "AMF_ADMIN_LOCK_NODE",
    "AMF_ADMIN_SHUTDOWN",
    "AMF_ADMIN_UNLOCK",
    "AMF_ADMIN_UNLOCK_NODE",
    "HAState",
    "ProtectionGroupMember",
    "ProtectionGroupNotification",
    "ReadinessState",
    "admin",
    "component_capability_model_get",
    "error_cancel_all",
    "error_report",
    "ha_state_get",
    "initialize",
    "pending_operation_get",
    "readiness_state_get",
    "response",
    "status",
    "stopping_complete",
]
