"""ais/log.py: line format, levels, destinations, node prefix and rate limiting."""
from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import ais.log
from ais.config import ConfigError, LoggingConfig, LogOutput
from ais.log import (
    NOTICE, SECURITY, NodeAdapter, RateLimiter, level_word, notice, security, setup_logging,
    subsystem, teardown_logging,
)

STAMP = r"[A-Z][a-z]{2} \d\d \d\d:\d\d:\d\d "


@pytest.fixture(autouse=True)
def clean_root_logger() -> Iterator[None]:
    """Leave the root logger as pytest set it up."""
    root = logging.getLogger()
    level = root.level
    yield
    teardown_logging()
    root.setLevel(level)


def file_config(tmp_path: Path, **kw: object) -> LoggingConfig:
    return LoggingConfig(outputs=(LogOutput.FILE,), logfile=str(tmp_path / "ais.log"), **kw)


def lines(tmp_path: Path) -> list[str]:
    for handler in ais.log._installed:
        handler.flush()
    return (tmp_path / "ais.log").read_text().splitlines()


def test_file_with_timestamps(tmp_path: Path) -> None:
    setup_logging(file_config(tmp_path, timestamp=True, debug=True))
    notice(logging.getLogger("ais.totem.srp"), "members: %s %s", "127.0.0.1", "127.0.0.2")
    (line,) = lines(tmp_path)
    assert re.fullmatch(STAMP + r"notice \[GMI  \] members: 127\.0\.0\.1 127\.0\.0\.2", line), line


def test_file_without_timestamps(tmp_path: Path) -> None:
    setup_logging(file_config(tmp_path, timestamp=False))
    logging.getLogger("ais.services.ckpt").warning("checkpoint %s full", "c1")
    assert lines(tmp_path) == ["warning [CKPT ] checkpoint c1 full"]


def test_file_is_appended(tmp_path: Path) -> None:
    (tmp_path / "ais.log").write_text("old line\n")
    setup_logging(file_config(tmp_path, timestamp=False))
    logging.getLogger("x").error("new line")
    assert lines(tmp_path) == ["old line", "error [MAIN ] new line"]


@pytest.mark.parametrize("debug", [True, False])
def test_debug_filtering(tmp_path: Path, debug: bool) -> None:
    setup_logging(file_config(tmp_path, timestamp=False, debug=debug))
    log = logging.getLogger("ais.ipc")
    log.debug("a debug line")
    notice(log, "a notice line")
    expected = ["debug [IPC  ] a debug line"] * debug + ["notice [IPC  ] a notice line"]
    assert lines(tmp_path) == expected


def test_level_words(tmp_path: Path) -> None:
    setup_logging(file_config(tmp_path, timestamp=False))
    log = logging.getLogger("ais")
    security(log, "s")
    log.error("e")
    log.critical("c")
    log.warning("w")
    notice(log, "n")
    log.info("i")
    log.debug("d")
    assert [line.split(" ")[0] for line in lines(tmp_path)] == [
        "security", "error", "error", "warning", "notice", "notice", "debug"]
    assert NOTICE == 25 and SECURITY == 35
    assert logging.INFO < NOTICE < logging.WARNING < SECURITY < logging.ERROR
    assert level_word(SECURITY) == "security" and level_word(5) == "debug"


@pytest.mark.parametrize("name, tag", [
    ("ais.totem", "GMI"), ("ais.totem.srp", "GMI"), ("ais.totem.transport", "GMI"),
    ("ais.services.clm", "CLM"), ("ais.services.amf", "AMF"), ("ais.services.ckpt", "CKPT"),
    ("ais.services.evs", "EVS"), ("ais.ipc", "IPC"), ("ais.main", "MAIN"), ("root", "MAIN"),
    ("ais.totemic", "MAIN"), ("ais.services.base", "MAIN"), ("ais.clm", "CLM"),
    ("ais.amf", "AMF"), ("ais.totem.crypto", "GMI"),
])
def test_subsystem(name: str, tag: str) -> None:
    assert subsystem(name) == tag


def test_subsystem_override(tmp_path: Path) -> None:
    setup_logging(file_config(tmp_path, timestamp=False))
    logging.getLogger("ais.services.clm").warning("sync done", extra={"subsys": "SYNC"})
    assert lines(tmp_path) == ["warning [SYNC ] sync done"]


def test_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(LoggingConfig(outputs=(LogOutput.STDERR,), timestamp=False, debug=False))
    logging.getLogger("ais.services.amf").error("component %s failed", "c1")
    assert capsys.readouterr().err == "error [AMF  ] component c1 failed\n"


def test_setup_twice_replaces_handlers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = LoggingConfig(outputs=(LogOutput.STDERR,), timestamp=False)
    setup_logging(cfg)
    setup_logging(cfg)
    logging.getLogger("x").warning("once")
    assert capsys.readouterr().err == "warning [MAIN ] once\n"


def test_missing_syslog_warns_once(capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ais.log, "_warned_no_syslog", False)
    cfg = LoggingConfig(outputs=(LogOutput.SYSLOG, LogOutput.STDERR), timestamp=False)
    nowhere = str(tmp_path / "no-such-log")
    setup_logging(cfg, syslog_address=nowhere)
    setup_logging(cfg, syslog_address=nowhere)
    logging.getLogger("x").warning("still logging")
    assert capsys.readouterr().err == (
        f"warning [MAIN ] not logging to syslog: {nowhere} does not exist\n"
        "warning [MAIN ] still logging\n")


def test_syslog(tmp_path: Path) -> None:
    address = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        server.settimeout(5)
        setup_logging(LoggingConfig(outputs=(LogOutput.SYSLOG,)), name="aisexec",
                      syslog_address=address)
        notice(logging.getLogger("ais.totem.srp"), "ring formed")
        security(logging.getLogger("ais.totem.crypto"), "invalid digest")
        first, second = server.recv(4096), server.recv(4096)
    ident = f"aisexec[{os.getpid()}]: "
    # daemon facility (3 << 3) | notice (5) = 29; | alert (1) = 25.  No timestamp:
    # syslog adds its own.
    assert first == f"<29>{ident}notice [GMI  ] ring formed\x00".encode()
    assert second == f"<25>{ident}security [GMI  ] invalid digest\x00".encode()


def test_unwritable_logfile(tmp_path: Path) -> None:
    cfg = LoggingConfig(outputs=(LogOutput.FILE,), logfile=str(tmp_path / "no" / "dir.log"))
    with pytest.raises(ConfigError) as info:
        setup_logging(cfg)
    assert str(info.value) == f"{tmp_path / 'no' / 'dir.log'}: cannot open log file: " \
                              "No such file or directory"


def test_node_adapter(tmp_path: Path) -> None:
    setup_logging(file_config(tmp_path, timestamp=False))
    base = logging.getLogger("ais.totem.srp")
    NodeAdapter(base, 0x7F000002).notice("entering %s", "GATHER")
    NodeAdapter(base, "n3").security("bad", extra={"subsys": "SEC"})
    assert lines(tmp_path) == ["notice [GMI  ] [127.0.0.2] entering GATHER",
                               "security [SEC  ] [n3] bad"]


def test_node_adapter_sets_record_attribute(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="ais.totem.srp"):
        NodeAdapter(logging.getLogger("ais.totem.srp"), 0x7F000001).debug("x")
    assert caplog.records[0].node == "127.0.0.1"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_window() -> None:
    clock = FakeClock()
    limiter = RateLimiter(burst=3, interval=10.0, clock=clock)
    assert [limiter.hit() for _ in range(5)] == [
        (True, 0), (True, 0), (True, 0), (False, 0), (False, 0)]
    assert limiter.suppressed == 2
    clock.now = 9.9
    assert limiter.hit() == (False, 0)
    clock.now = 10.0  # a new window: the previous one's count is reported once
    assert limiter.hit() == (True, 3)
    assert limiter.hit() == (True, 0)
    assert limiter.hit(now=25.0) == (True, 0)  # explicit time; nothing was suppressed


def test_rate_limiter_log(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limiter = RateLimiter(burst=2, interval=60.0, clock=clock)
    log = logging.getLogger("ais.totem.crypto")
    with caplog.at_level(logging.DEBUG, logger="ais.totem.crypto"):
        logged = [limiter.log(log, SECURITY, "invalid digest from %s", "10.0.0.9")
                  for _ in range(50)]
        clock.now = 61.0
        limiter.log(log, SECURITY, "invalid digest from %s", "10.0.0.9")
    assert logged == [True, True] + [False] * 48
    assert [r.getMessage() for r in caplog.records] == [
        "invalid digest from 10.0.0.9", "invalid digest from 10.0.0.9",
        "suppressed 48 similar messages in 60 s: invalid digest from 10.0.0.9",
        "invalid digest from 10.0.0.9"]
    assert all(r.levelno == SECURITY for r in caplog.records)


def test_rate_limiter_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        RateLimiter(burst=0)
    with pytest.raises(ValueError):
        RateLimiter(interval=0)
