"""Logging: the executive's line format, its levels, and helpers for busy loggers.

A line is ``[timestamp ]level [SUBSYS] text``, for example::

    Nov 25 10:01:02 notice [GMI  ] members: 127.0.0.1 127.0.0.2

Levels are the reference's five: security, error, warning, notice, debug.
``security`` and ``notice`` are custom stdlib levels (:data:`SECURITY`,
:data:`NOTICE`); stdlib ``info`` prints as ``notice`` and ``critical`` as
``error`` so that the vocabulary stays the reference's.  The subsystem comes
from the logger name (``ais.totem.*`` -> GMI, ``ais.services.clm`` -> CLM, ...)
or from ``extra={"subsys": "XYZ"}``.

Modules log through ``logging.getLogger(__name__)``; only ``aisexec`` calls
:func:`setup_logging`.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from ais.config import ConfigError, LoggingConfig, LogOutput
from ais.totem.events import fmt_node

#: Between INFO and WARNING: normal but significant events (membership changes).
NOTICE = 25
#: Between WARNING and ERROR: authentication problems ("invalid digest").
SECURITY = 35
logging.addLevelName(NOTICE, "NOTICE")
logging.addLevelName(SECURITY, "SECURITY")

#: Words printed for each level, highest first; a level prints as the first
#: entry at or below it.
_LEVEL_WORDS = (
    (logging.ERROR, "error"),
    (SECURITY, "security"),
    (logging.WARNING, "warning"),
    (logging.INFO, "notice"),
    (0, "debug"),
)

#: Logger name part -> subsystem tag.  The last matching dotted part wins, so
#: ``ais.totem.srp`` is GMI and both ``ais.services.clm`` and ``ais.clm`` are CLM.
SUBSYSTEMS = {
    "totem": "GMI",
    "clm": "CLM",
    "amf": "AMF",
    "ckpt": "CKPT",
    "evs": "EVS",
    "ipc": "IPC",
}

TIMESTAMP_FORMAT = "%b %d %H:%M:%S"


def level_word(levelno: int) -> str:
    """The reference's name for a stdlib level number."""
    return next(word for floor, word in _LEVEL_WORDS if levelno >= floor)


def subsystem(logger_name: str) -> str:
    """The subsystem tag for a logger name; MAIN when none matches."""
    for part in reversed(logger_name.split(".")):
        if part in SUBSYSTEMS:
            return SUBSYSTEMS[part]
    return "MAIN"


class AisFormatter(logging.Formatter):
    """Formats records as ``[timestamp ]level [SUBSYS] text``."""

    def __init__(self, timestamp: bool = True) -> None:
        fmt = "%(ais_level)s [%(ais_subsys)-5s] %(message)s"
        if timestamp:
            fmt = "%(asctime)s " + fmt
        super().__init__(fmt, datefmt=TIMESTAMP_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        record.ais_level = level_word(record.levelno)
        record.ais_subsys = getattr(record, "subsys", None) or subsystem(record.name)
        return super().format(record)


class _SyslogHandler(logging.handlers.SysLogHandler):
    """SysLogHandler that knows our custom levels."""

    priority_map = {
        "DEBUG": "debug", "INFO": "info", "NOTICE": "notice", "WARNING": "warning",
        # The reference logged security problems at LOG_ALERT.
        "SECURITY": "alert", "ERROR": "err", "CRITICAL": "crit",
    }


#: Handlers installed by setup_logging, removed on the next call.  Others
#: (pytest's capture, a caller's own) are left alone.
_installed: list[logging.Handler] = []
_warned_no_syslog = False


def setup_logging(cfg: LoggingConfig, name: str = "aisexec", *,
                  syslog_address: str = "/dev/log") -> None:
    """Configure the root logger from a ``logging`` section.  Calling it again
    replaces what the previous call installed.

    Args:
        cfg: destinations, log file, debug and timestamp switches.
        name: the syslog ident.
        syslog_address: the syslog socket (tests point it elsewhere).
    Raises:
        ConfigError: the log file cannot be opened (``logfile: reason``).
    """
    global _warned_no_syslog
    teardown_logging()
    root = logging.getLogger()

    handlers: list[logging.Handler] = []
    syslog_problem = None
    for output in cfg.outputs:
        if output is LogOutput.FILE:
            assert cfg.logfile is not None, "config check guarantees a logfile"
            try:
                handler: logging.Handler = logging.FileHandler(cfg.logfile, encoding="utf-8")
            except OSError as exc:
                for h in handlers:
                    h.close()
                raise ConfigError(cfg.logfile, 0, 0,
                                  f"cannot open log file: {exc.strerror}") from None
            handler.setFormatter(AisFormatter(cfg.timestamp))
        elif output is LogOutput.STDERR:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(AisFormatter(cfg.timestamp))
            handler.ais_stderr = True  # type: ignore[attr-defined]
        else:
            if not os.path.exists(syslog_address):
                syslog_problem = f"{syslog_address} does not exist"
                continue
            try:
                handler = _SyslogHandler(address=syslog_address,
                                         facility=logging.handlers.SysLogHandler.LOG_DAEMON)
            except OSError as exc:
                syslog_problem = f"{syslog_address}: {exc.strerror}"
                continue
            handler.ident = f"{name}[{os.getpid()}]: "
            handler.setFormatter(AisFormatter(timestamp=False))  # syslog stamps lines itself
        handlers.append(handler)

    for handler in handlers:
        root.addHandler(handler)
        _installed.append(handler)
    root.setLevel(logging.DEBUG if cfg.debug else logging.INFO)
    if syslog_problem and not _warned_no_syslog:
        _warned_no_syslog = True
        logging.getLogger("ais.log").warning("not logging to syslog: %s", syslog_problem)


def log_elsewhere(logger: logging.Logger, level: int, msg: str) -> None:
    """Log ``msg`` to every installed destination except stderr.

    For the one-line start-up errors ``aisexec`` prints on stderr itself: the
    log file and syslog still get them, stderr gets them once.
    """
    if not logger.isEnabledFor(level):
        return
    record = logger.makeRecord(logger.name, level, "(aisexec)", 0, msg, (), None)
    for handler in _installed:
        if not getattr(handler, "ais_stderr", False) and level >= handler.level:
            handler.handle(record)


def reopen_log_files() -> list[str]:
    """Reopen every log file :func:`setup_logging` opened (SIGHUP, for logrotate).

    A file moved away keeps its old name's inode until reopened; afterwards
    lines go to a new file at the configured path.  Never raises: a file
    that cannot be reopened is reported on the other destinations and its
    handler retries at its next line.

    Returns:
        the paths reopened.
    """
    done = []
    for handler in _installed:
        if not isinstance(handler, logging.FileHandler):
            continue
        handler.acquire()
        try:
            old, handler.stream = handler.stream, None  # type: ignore[assignment]
            if old is not None:
                old.close()
            try:
                handler.stream = handler._open()
                done.append(handler.baseFilename)
            except OSError as exc:
                problem = f"cannot reopen log file {handler.baseFilename}: {exc.strerror}"
            else:
                problem = ""
        finally:
            handler.release()
        if problem:
            # Not through the broken handler itself, which would print a traceback.
            log = logging.getLogger("ais.log")
            record = log.makeRecord(log.name, logging.ERROR, "(aisexec)", 0, problem, (), None)
            for other in _installed:
                if other is not handler:
                    other.handle(record)
    return done


def teardown_logging() -> None:
    """Remove and close the handlers :func:`setup_logging` installed."""
    root = logging.getLogger()
    for handler in _installed:
        root.removeHandler(handler)
        handler.close()
    _installed.clear()


def notice(logger: logging.Logger | logging.LoggerAdapter, msg: str, *args: Any,
           **kwargs: Any) -> None:
    """Log at NOTICE (stdlib loggers have no ``notice`` method)."""
    logger.log(NOTICE, msg, *args, **kwargs)


def security(logger: logging.Logger | logging.LoggerAdapter, msg: str, *args: Any,
             **kwargs: Any) -> None:
    """Log at SECURITY."""
    logger.log(SECURITY, msg, *args, **kwargs)


class NodeAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every message with a node id, for code that runs many nodes in
    one process (the simulator).  The id is also in ``record.node``.

    Args:
        logger: the underlying logger.
        node: a node id (int, printed dotted) or any label.
    """

    def __init__(self, logger: logging.Logger, node: int | str) -> None:
        label = fmt_node(node) if isinstance(node, int) else str(node)
        super().__init__(logger, {"node": label})

    def process(self, msg: Any,
                kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        # Merge rather than replace, so callers can still pass their own extra.
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return f"[{self.extra['node']}] {msg}", kwargs  # type: ignore[index]

    def notice(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at NOTICE."""
        self.log(NOTICE, msg, *args, **kwargs)

    def security(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at SECURITY."""
        self.log(SECURITY, msg, *args, **kwargs)


class RateLimiter:
    """Lets ``burst`` events through per ``interval`` seconds and counts the rest.

    Meant for messages a peer can provoke at will ("invalid digest"): the first
    few are logged, then one summary per window.  The summary is written with
    the first event of the next window, so no timer is needed.

    Args:
        burst: events let through per window.
        interval: window length in seconds.
        clock: monotonic time source; tests pass a fake one.
    """

    def __init__(self, burst: int = 10, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if burst < 1 or interval <= 0:
            raise ValueError("burst must be >= 1 and interval > 0")
        self.burst = burst
        self.interval = interval
        self.clock = clock
        self._window_start: float | None = None
        self._count = 0
        #: events dropped in the current window so far
        self.suppressed = 0

    def hit(self, now: float | None = None) -> tuple[bool, int]:
        """Count one event.

        Returns:
            ``(allowed, suppressed)``: whether to log this event, and how many
            events the previous window suppressed (non-zero once, at the first
            event of a new window).
        """
        now = self.clock() if now is None else now
        reported = 0
        if self._window_start is None or now - self._window_start >= self.interval:
            reported = self.suppressed
            self._window_start, self._count, self.suppressed = now, 0, 0
        if self._count < self.burst:
            self._count += 1
            return True, reported
        self.suppressed += 1
        return False, reported

    def log(self, logger: logging.Logger | logging.LoggerAdapter, level: int, msg: str,
            *args: Any, now: float | None = None) -> bool:
        """Log ``msg % args`` if the limit allows, after any pending summary.

        Returns:
            Whether the message itself was logged.
        """
        allowed, reported = self.hit(now)
        if reported:
            logger.log(level, "suppressed %d similar messages in %g s: " + msg,
                       reported, self.interval, *args)
        if allowed:
            logger.log(level, msg, *args)
        return allowed


__all__ = [
    "AisFormatter", "NOTICE", "NodeAdapter", "RateLimiter", "SECURITY", "SUBSYSTEMS",
    "level_word", "log_elsewhere", "notice", "security", "setup_logging", "subsystem",
    "teardown_logging",
]
