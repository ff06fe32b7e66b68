"""SaErrorT as exceptions: one class per code (spec/clm.md section 1.1).

The executive raises these in service handlers, ``ais.ipc`` turns them into
the reply's error code, and the client library raises the same class again
(``SaError.from_code``).  ``SA_OK`` (1) is not an error and has no class.

Untrusted bytes from the other end of a client socket raise only
``IpcProtocolError``; it costs that one connection, never the process.
"""
from __future__ import annotations

from typing import ClassVar

SA_OK = 1


class SaError(Exception):
    """Base of every SAF error.  Use a subclass (``TryAgain``) or ``from_code``.

    ``code`` is the SaErrorT value; ``str(err)`` gives the SAF name and any
    detail passed at construction.
    """

    code: ClassVar[int] = 0
    sa_name: ClassVar[str] = ""

    def __new__(cls, *args: object, **kwargs: object) -> SaError:
        # The base carries no code: a bare SaError would reach clients as "0".
        if cls is SaError:
            raise TypeError("SaError is abstract: raise a subclass or SaError.from_code(n)")
        return super().__new__(cls, *args, **kwargs)

    def __str__(self) -> str:
        detail = super().__str__()
        return f"{self.sa_name} ({self.code})" + (f": {detail}" if detail else "")

    @staticmethod
    def from_code(code: int, detail: str = "") -> SaError:
        """The exception for SaErrorT ``code``.

        Raises:
            ValueError: ``code`` is SA_OK or not an SaErrorT value.
        """
        try:
            cls = _BY_CODE[code]
        except KeyError:
            raise ValueError(f"not an SaErrorT error code: {code!r}") from None
        return cls(detail) if detail else cls()


class IpcProtocolError(Exception):
    """A frame from the other end of a client socket is malformed, truncated or too big."""


# (class name, code, SAF name) -- the one table of codes.
_TABLE: tuple[tuple[str, int, str], ...] = (
    ("Library", 2, "SA_ERR_LIBRARY"),
    ("VersionError", 3, "SA_ERR_VERSION"),
    ("InitError", 4, "SA_ERR_INIT"),
    ("Timeout", 5, "SA_ERR_TIMEOUT"),
    ("TryAgain", 6, "SA_ERR_TRY_AGAIN"),
    ("InvalidParam", 7, "SA_ERR_INVALID_PARAM"),
    ("NoMemory", 8, "SA_ERR_NO_MEMORY"),
    ("BadHandle", 9, "SA_ERR_BAD_HANDLE"),
    ("Busy", 10, "SA_ERR_BUSY"),
    ("Access", 11, "SA_ERR_ACCESS"),
    ("NotExist", 12, "SA_ERR_NOT_EXIST"),
    ("NameTooLong", 13, "SA_ERR_NAME_TOO_LONG"),
    ("Exist", 14, "SA_ERR_EXIST"),
    ("NoSpace", 15, "SA_ERR_NO_SPACE"),
    ("Interrupt", 16, "SA_ERR_INTERRUPT"),
    ("SystemError_", 17, "SA_ERR_SYSTEM"),
    ("NameNotFound", 18, "SA_ERR_NAME_NOT_FOUND"),
    ("NoResources", 19, "SA_ERR_NO_RESOURCES"),
    ("NotSupported", 20, "SA_ERR_NOT_SUPPORTED"),
    ("BadOperation", 21, "SA_ERR_BAD_OPERATION"),
    ("FailedOperation", 22, "SA_ERR_FAILED_OPERATION"),
    ("MessageError", 23, "SA_ERR_MESSAGE_ERROR"),
    ("NoMessage", 24, "SA_ERR_NO_MESSAGE"),
    ("QueueFull", 25, "SA_ERR_QUEUE_FULL"),
    ("QueueNotAvailable", 26, "SA_ERR_QUEUE_NOT_AVAILABLE"),
    ("BadCheckpoint", 27, "SA_ERR_BAD_CHECKPOINT"),
    ("BadFlags", 28, "SA_ERR_BAD_FLAGS"),
    ("Security", 29, "SA_ERR_SECURITY"),
)


# Explicit class statements (rather than generated ones) so that readers,
# type checkers and ``except saf.errors.TryAgain`` all see real names.
class Library(SaError): code = 2; sa_name = "SA_ERR_LIBRARY"  # noqa: E701,E702
class VersionError(SaError): code = 3; sa_name = "SA_ERR_VERSION"  # noqa: E701,E702
class InitError(SaError): code = 4; sa_name = "SA_ERR_INIT"  # noqa: E701,E702
class Timeout(SaError): code = 5; sa_name = "SA_ERR_TIMEOUT"  # noqa: E701,E702
class TryAgain(SaError): code = 6; sa_name = "SA_ERR_TRY_AGAIN"  # noqa: E701,E702
class InvalidParam(SaError): code = 7; sa_name = "SA_ERR_INVALID_PARAM"  # noqa: E701,E702
class NoMemory(SaError): code = 8; sa_name = "SA_ERR_NO_MEMORY"  # noqa: E701,E702
class BadHandle(SaError): code = 9; sa_name = "SA_ERR_BAD_HANDLE"  # noqa: E701,E702
class Busy(SaError): code = 10; sa_name = "SA_ERR_BUSY"  # noqa: E701,E702
class Access(SaError): code = 11; sa_name = "SA_ERR_ACCESS"  # noqa: E701,E702
class NotExist(SaError): code = 12; sa_name = "SA_ERR_NOT_EXIST"  # noqa: E701,E702
class NameTooLong(SaError): code = 13; sa_name = "SA_ERR_NAME_TOO_LONG"  # noqa: E701,E702
class Exist(SaError): code = 14; sa_name = "SA_ERR_EXIST"  # noqa: E701,E702
class NoSpace(SaError): code = 15; sa_name = "SA_ERR_NO_SPACE"  # noqa: E701,E702
class Interrupt(SaError): code = 16; sa_name = "SA_ERR_INTERRUPT"  # noqa: E701,E702
# Named SystemError_ so as not to shadow the builtin SystemError.
class SystemError_(SaError): code = 17; sa_name = "SA_ERR_SYSTEM"  # noqa: E701,E702
class NameNotFound(SaError): code = 18; sa_name = "SA_ERR_NAME_NOT_FOUND"  # noqa: E701,E702
class NoResources(SaError): code = 19; sa_name = "SA_ERR_NO_RESOURCES"  # noqa: E701,E702
class NotSupported(SaError): code = 20; sa_name = "SA_ERR_NOT_SUPPORTED"  # noqa: E701,E702
class BadOperation(SaError): code = 21; sa_name = "SA_ERR_BAD_OPERATION"  # noqa: E701,E702
class FailedOperation(SaError): code = 22; sa_name = "SA_ERR_FAILED_OPERATION"  # noqa: E701,E702
class MessageError(SaError): code = 23; sa_name = "SA_ERR_MESSAGE_ERROR"  # noqa: E701,E702
class NoMessage(SaError): code = 24; sa_name = "SA_ERR_NO_MESSAGE"  # noqa: E701,E702
class QueueFull(SaError): code = 25; sa_name = "SA_ERR_QUEUE_FULL"  # noqa: E701,E702
class QueueNotAvailable(SaError): code = 26; sa_name = "SA_ERR_QUEUE_NOT_AVAILABLE"  # noqa: E701,E702,E501
class BadCheckpoint(SaError): code = 27; sa_name = "SA_ERR_BAD_CHECKPOINT"  # noqa: E701,E702
class BadFlags(SaError): code = 28; sa_name = "SA_ERR_BAD_FLAGS"  # noqa: E701,E702
class Security(SaError): code = 29; sa_name = "SA_ERR_SECURITY"  # noqa: E701,E702


# EVS's own code (spec/evs.md 2), outside the SaErrorT table: only saf.evs raises it,
# before anything reaches the executive, so from_code need not know it.
class TooManyGroups(SaError): code = 30; sa_name = "EVS_ERR_TOO_MANY_GROUPS"  # noqa: E701,E702


_BY_CODE: dict[int, type[SaError]] = {}
for _name, _code, _sa in _TABLE:
    _cls = globals()[_name]
    # The table and the class statements must agree; checked once at import.
    assert _cls.code == _code and _cls.sa_name == _sa, _name
    _BY_CODE[_code] = _cls
del _name, _code, _sa, _cls

#: every error class, by code (read-only use)
ERRORS_BY_CODE: dict[int, type[SaError]] = dict(_BY_CODE)

__all__ = ["SA_OK", "SaError", "IpcProtocolError", "ERRORS_BY_CODE", "TooManyGroups"] + [
    n for n, _, _ in _TABLE]
