"""SaError hierarchy: one class per SaErrorT code (spec/clm.md 1.1)."""
import pytest

from saf import errors

TABLE = [
    (2, "Library", "SA_ERR_LIBRARY"), (3, "VersionError", "SA_ERR_VERSION"),
    (4, "InitError", "SA_ERR_INIT"), (5, "Timeout", "SA_ERR_TIMEOUT"),
    (6, "TryAgain", "SA_ERR_TRY_AGAIN"), (7, "InvalidParam", "SA_ERR_INVALID_PARAM"),
    (8, "NoMemory", "SA_ERR_NO_MEMORY"), (9, "BadHandle", "SA_ERR_BAD_HANDLE"),
    (10, "Busy", "SA_ERR_BUSY"), (11, "Access", "SA_ERR_ACCESS"),
    (12, "NotExist", "SA_ERR_NOT_EXIST"), (13, "NameTooLong", "SA_ERR_NAME_TOO_LONG"),
    (14, "Exist", "SA_ERR_EXIST"), (15, "NoSpace", "SA_ERR_NO_SPACE"),
    (16, "Interrupt", "SA_ERR_INTERRUPT"), (17, "SystemError_", "SA_ERR_SYSTEM"),
    (18, "NameNotFound", "SA_ERR_NAME_NOT_FOUND"), (19, "NoResources", "SA_ERR_NO_RESOURCES"),
    (20, "NotSupported", "SA_ERR_NOT_SUPPORTED"), (21, "BadOperation", "SA_ERR_BAD_OPERATION"),
    (22, "FailedOperation", "SA_ERR_FAILED_OPERATION"),
    (23, "MessageError", "SA_ERR_MESSAGE_ERROR"), (24, "NoMessage", "SA_ERR_NO_MESSAGE"),
    (25, "QueueFull", "SA_ERR_QUEUE_FULL"),
    (26, "QueueNotAvailable", "SA_ERR_QUEUE_NOT_AVAILABLE"),
    (27, "BadCheckpoint", "SA_ERR_BAD_CHECKPOINT"), (28, "BadFlags", "SA_ERR_BAD_FLAGS"),
    (29, "Security", "SA_ERR_SECURITY"),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("code,name,sa_name", TABLE)
def test_code_class_table(code, name, sa_name):
    cls = getattr(errors, name)
    assert issubclass(cls, errors.SaError)
    assert cls.code == code and cls.sa_name == sa_name
    err = errors.SaError.from_code(code)
    assert type(err) is cls
    assert str(err).startswith(sa_name)


@pytest.mark.timeout(10)
def test_every_code_covered_once():
    assert sorted(errors.ERRORS_BY_CODE) == list(range(2, 30))
    assert errors.SA_OK == 1


@pytest.mark.timeout(10)
def test_base_is_abstract():
    with pytest.raises(TypeError):
        errors.SaError()
    with pytest.raises(TypeError):
        errors.SaError("detail")


@pytest.mark.timeout(10)
@pytest.mark.parametrize("bad", [0, 1, 30, -1, 999])
def test_from_code_rejects_non_errors(bad):
    with pytest.raises(ValueError):
        errors.SaError.from_code(bad)


@pytest.mark.timeout(10)
def test_detail_and_catching():
    with pytest.raises(errors.TryAgain) as info:
        raise errors.SaError.from_code(6, "ring busy")
    assert info.value.code == 6
    assert "ring busy" in str(info.value)
    assert not issubclass(errors.IpcProtocolError, errors.SaError)
