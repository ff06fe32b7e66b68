"""Configuration files: ``openais.conf`` and ``groups.conf`` -> frozen dataclasses.

Both grammars live here (STYLE.md P9).  Parsing happens in two steps:

1. A pyparsing grammar turns the text into blocks and ``key: value`` /
   ``key=value`` entries, each remembering its line.  It knows nothing about
   which keys exist, so that a typo is reported as "unknown key 'x'" on its own
   line instead of as a confusing syntax error somewhere else.
2. A checking pass walks the blocks against a table of known sections/keys,
   converts values and applies cross-field rules.

Every problem is a :class:`ConfigError` whose ``str()`` is one line,
``path:line: message``, which ``aisexec`` prints before exiting non-zero.

openais.conf (``section { key: value }``, ``#`` comments)::

    network  { bindnetaddr mcastaddr mcastport transport member* }
    logging  { logoutput* logfile debug timestamp }
    totem    { one key per field of TotemSettings, declared there once }
    aisexec  { socket authkey groups group statedir clustername }
    limits   { max_connections max_queued_callbacks max_queued_bytes
               max_buffered_bytes frame_timeout max_checkpoints
               max_checkpoint_opens max_sections }

Only regular files of at most ``MAX_CONFIG_BYTES`` are read (a FIFO or a
device would block or never end), and groups.conf blocks nest at most
``MAX_NESTING`` deep (its grammar is recursive).

groups.conf (``block { key=value }``, ``#`` comments), spec/amf.md section 2.2::

    file       := group*
    group      := "group" "{" ( name | model | active-units | backup-units
                                | healthcheck-period | healthcheck-timeout
                                | response-timeout | quorum | unit | protection )* "}"
    unit       := "unit" "{" ( name | node | component )* "}"
    component  := "component" "{" ( name | model | instantiate )* "}"
    protection := "protection" "{" ( name | member* )* "}"
    model      := 2n | nplusm | nway | nwayactive | noredundancy   (n+m, n-way, n-way-active)

The order of the units in a group is their rank (the first is preferred);
``_ModelBuilder.redundancy`` gives each model its defaults and limits.
"""
from __future__ import annotations

import dataclasses
import enum
import ipaddress
import os
import re
import shlex
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pyparsing as pp

from ais.netif import IPV4_UDP_HEADER_BYTES, Interface, local_ipv4_addresses
from ais.totem.crypto import OVERHEAD as CRYPTO_OVERHEAD
from ais.totem.events import TotemConfig
from ais.totem.wire import MCAST_OVERHEAD

#: Where clients look for the executive when ``AIS_SOCKET`` is not set
#: (DESIGN.md).  ``saf`` must use the same path.
DEFAULT_SOCKET = "/var/run/ais/aisexec.sock"
#: Where ``aisexec`` looks for its configuration without ``-c``.
DEFAULT_CONFIG = "/etc/ais/openais.conf"
DEFAULT_GROUP = "ais"
DEFAULT_CLUSTERNAME = "mvlcge"


class ConfigError(Exception):
    """A configuration problem, printed as one line: ``path:line: msg``.

    ``line`` (1-based) and ``col`` may be 0 when the problem belongs to the
    whole file (a missing section); ``str()`` is then ``path: msg``.
    """

    def __init__(self, path: str, line: int | None, col: int | None, msg: str) -> None:
        super().__init__(path, line, col, msg)
        self.path = path
        self.line = line or 0
        self.col = col or 0
        self.msg = msg

    def __str__(self) -> str:
        if self.line:
            return f"{self.path}:{self.line}: {self.msg}"
        return f"{self.path}: {self.msg}"


# --------------------------------------------------------------------------
# Grammar pieces shared by both files
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """One ``key: value`` (or ``key=value``) line as parsed."""

    key: str
    value: str
    line: int
    col: int


@dataclass(frozen=True)
class _Block:
    """One ``name { ... }`` block as parsed; items are entries and nested blocks."""

    name: str
    items: tuple[Any, ...]
    line: int
    col: int


def _entry_action(s: str, loc: int, toks: pp.ParseResults) -> _Entry:
    return _Entry(toks[0], toks[1], pp.lineno(loc, s), pp.col(loc, s))


def _block_action(s: str, loc: int, toks: pp.ParseResults) -> _Block:
    return _Block(toks[0], tuple(toks[1]), pp.lineno(loc, s), pp.col(loc, s))


_COMMENT = pp.python_style_comment
_LBRACE = pp.Suppress("{")
_RBRACE = pp.Suppress("}")
#: Section, block and key names: ``network``, ``active-units``, ``token_hold``.
_NAME = pp.Word(pp.alphas + "_", pp.alphanums + "_-").set_name("name")
#: A value is the rest of the line up to a comment or brace.  It must start on
#: the key's own line, so a missing value is reported there and does not
#: swallow the next line.
_VALUE = pp.Regex(r"[^\s#{}][^\n#{}]*").set_name("value")
_VALUE.set_whitespace_chars(" \t", copy_defaults=False)
_VALUE.add_parse_action(lambda toks: toks[0].rstrip())

# openais.conf: flat sections of "key: value".  "-" stops backtracking once a
# name has been read, so errors point at the real line, not at the section start.
_OA_ENTRY = (_NAME - pp.Suppress(":") - _VALUE).set_parse_action(_entry_action)
_OA_SECTION = (
    _NAME - _LBRACE - pp.Group(pp.ZeroOrMore(_OA_ENTRY)) - _RBRACE
).set_parse_action(_block_action)
OPENAIS_GRAMMAR = pp.ZeroOrMore(_OA_SECTION).ignore(_COMMENT)

# groups.conf: nested blocks of "key=value" (spec/amf.md 2.2); which block may
# hold what is checked afterwards.
_GC_ITEM = pp.Forward()
_GC_BODY = _LBRACE - pp.Group(pp.ZeroOrMore(_GC_ITEM)) - _RBRACE
_GC_ASSIGN = pp.Suppress("=") - _VALUE
_GC_ITEM <<= (_NAME - (_GC_BODY | _GC_ASSIGN).set_name("'=' or '{'")).set_parse_action(
    lambda s, loc, toks: (
        _block_action(s, loc, toks) if isinstance(toks[1], pp.ParseResults)
        else _entry_action(s, loc, toks)
    )
)
GROUPS_GRAMMAR = pp.ZeroOrMore(_GC_ITEM).ignore(_COMMENT)


def _brace_problem(text: str) -> tuple[int, str] | None:
    """Find an unbalanced brace; pyparsing would report it far from its cause."""
    opened: list[int] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for ch in line.split("#", 1)[0]:
            if ch == "{":
                opened.append(lineno)
            elif ch == "}":
                if not opened:
                    return lineno, "syntax error: '}' without a matching '{'"
                opened.pop()
    if opened:
        return opened[-1], f"syntax error: '{{' opened on line {opened[-1]} is never closed"
    return None


def _describe_found(text: str, loc: int) -> str:
    if loc >= len(text):
        return "end of file"
    if text[loc] == "\n":
        return "end of line"
    word = re.match(r"\S{1,30}", text[loc:])
    return repr(word.group(0)) if word else repr(text[loc])


def _parse(grammar: pp.ParserElement, text: str, path: str) -> list[Any]:
    """Run ``grammar`` over ``text``; syntax errors become ConfigError."""
    try:
        return list(grammar.parse_string(text, parse_all=True))
    except pp.ParseBaseException as exc:
        problem = _brace_problem(text)
        if problem is not None:
            raise ConfigError(path, problem[0], 1, problem[1]) from None
        expected = exc.msg[:1].lower() + exc.msg[1:]
        found = _describe_found(exc.pstr, exc.loc)
        raise ConfigError(
            path, exc.lineno, exc.col, f"syntax error: {expected}, found {found}"
        ) from None


#: Largest configuration file read; a real one is a few kilobytes.
MAX_CONFIG_BYTES = 1024 * 1024
#: Deepest block nesting accepted in groups.conf (its grammar needs 3).
MAX_NESTING = 8


def _read(path: str, what: str) -> str:
    """The text of a configuration file.

    Only a regular file of at most ``MAX_CONFIG_BYTES`` is read: a FIFO would
    block for ever and ``/dev/zero`` would never end.
    """
    try:
        # O_NONBLOCK: should a FIFO appear here after any check, open() must not wait.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise ConfigError(path, 0, 0, f"cannot read {what}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(path, 0, 0, f"cannot read {what}: not a regular file "
                                          f"({_file_kind(st.st_mode)})")
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(path, 0, 0, f"cannot read {what}: {st.st_size} bytes, "
                                          f"more than the {MAX_CONFIG_BYTES}-byte limit")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(path, 0, 0, f"cannot read {what}: more than the "
                                          f"{MAX_CONFIG_BYTES}-byte limit")
        data = b"".join(chunks)
    except OSError as exc:
        raise ConfigError(path, 0, 0, f"cannot read {what}: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, 0, 0,
                          f"cannot read {what}: not UTF-8 text ({exc.reason})") from None


def _file_kind(mode: int) -> str:
    for test, word in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return word
    return "not a regular file"


def _nesting_problem(text: str, limit: int) -> tuple[int, str] | None:
    """The first block opened deeper than ``limit`` (the recursive grammar would
    otherwise exhaust Python's stack on a deep enough file)."""
    depth = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        for ch in line.split("#", 1)[0]:
            if ch == "{":
                depth += 1
                if depth > limit:
                    return lineno, f"blocks nested more than {limit} deep"
            elif ch == "}":
                depth = max(0, depth - 1)
    return None


# --------------------------------------------------------------------------
# Value converters: take the text, return the value or raise ValueError(msg)
# --------------------------------------------------------------------------


def _ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 address") from None


def _port(text: str) -> int:
    n = _int(text)
    if not 1 <= n <= 65535:
        raise ValueError(f"{n} is not a port number (1..65535)")
    return n


def _int(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text):
        raise ValueError(f"{text!r} is not a number")
    return int(text)


def _positive_int(text: str) -> int:
    n = _int(text)
    if n <= 0:
        raise ValueError("must be greater than 0")
    return n


def _millis(text: str) -> float:
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
        raise ValueError(f"{text!r} is not a number of milliseconds")
    ms = float(text)
    if ms <= 0:
        raise ValueError("must be greater than 0")
    return ms


def _millis_or_zero(text: str) -> float:
    return 0.0 if re.fullmatch(r"0+(\.0+)?", text) else _millis(text)


def _on_off(text: str) -> bool:
    word = text.lower()
    if word in ("on", "yes"):
        return True
    if word in ("off", "no"):
        return False
    raise ValueError(f"{text!r} is not on or off")


def _word(text: str) -> str:
    if re.search(r"\s", text):
        raise ValueError(f"{text!r} must be one word")
    return text


def _choice(*words: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text not in words:
            raise ValueError(f"{text!r} is not one of {', '.join(words)}")
        return text
    return convert


class _Key(NamedTuple):
    """How one key is read: its converter and whether it may repeat."""

    convert: Callable[[str], Any]
    repeated: bool = False


class _Values:
    """Converted values of one block, with the line each came from."""

    def __init__(self, path: str, block: _Block | None) -> None:
        self.path = path
        self.block = block
        self.values: dict[str, list[tuple[Any, _Entry]]] = {}

    def has(self, key: str) -> bool:
        return key in self.values

    def get(self, key: str, default: Any = None) -> Any:
        return self.values[key][0][0] if key in self.values else default

    def all(self, key: str) -> list[Any]:
        return [v for v, _ in self.values.get(key, [])]

    def entry(self, key: str) -> _Entry:
        return self.values[key][0][1]

    def error(self, key: str | None, msg: str) -> ConfigError:
        """An error on ``key``'s line, else on the block's line, else the file's."""
        if key is not None and key in self.values:
            e = self.entry(key)
            return ConfigError(self.path, e.line, e.col, msg)
        if self.block is not None:
            return ConfigError(self.path, self.block.line, self.block.col, msg)
        return ConfigError(self.path, 0, 0, msg)


def _collect(path: str, block: _Block, entries: Iterable[_Entry],
             schema: dict[str, _Key]) -> _Values:
    """Check entries against ``schema`` and convert them, in file order."""
    out = _Values(path, block)
    for e in entries:
        spec = schema.get(e.key)
        if spec is None:
            known = ", ".join(sorted(schema))
            raise ConfigError(path, e.line, e.col,
                              f"unknown key {e.key!r} in {block.name!r} (known: {known})")
        if e.key in out.values and not spec.repeated:
            first = out.entry(e.key).line
            raise ConfigError(path, e.line, e.col, f"{e.key!r} is already set on line {first}")
        try:
            value = spec.convert(e.value)
        except ValueError as exc:
            raise ConfigError(path, e.line, e.col, f"{e.key}: {exc}") from None
        out.values.setdefault(e.key, []).append((value, e))
    return out


# --------------------------------------------------------------------------
# openais.conf
# --------------------------------------------------------------------------


class Transport(enum.StrEnum):
    """How ring packets reach the other nodes."""

    UDP = "udp"  #: IP multicast to ``mcastaddr``
    UDPU = "udpu"  #: unicast to every configured ``member``


class LogOutput(enum.StrEnum):
    """Log destinations (``logoutput``)."""

    FILE = "file"
    STDERR = "stderr"
    SYSLOG = "syslog"


@dataclass(frozen=True)
class NetworkConfig:
    """The ``network`` section."""

    #: network address (host part zero, e.g. 192.168.1.0) or a full local address
    bindnetaddr: str
    #: UDP port of the ring
    mcastport: int
    #: multicast group of the ring; required for udp, unused (may be None) for udpu
    mcastaddr: str | None = None
    #: udp (multicast) or udpu (unicast to ``members``)
    transport: Transport = Transport.UDP
    #: udpu only: every node of the cluster; the local node may be listed too
    members: tuple[str, ...] = ()
    #: line of ``bindnetaddr``, so a failed interface lookup can name it
    bindnetaddr_line: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class LoggingConfig:
    """The ``logging`` section; defaults as the QUICKSTART says when it is absent."""

    #: destinations, in file order, without repeats (key ``logoutput``)
    outputs: tuple[LogOutput, ...] = (LogOutput.SYSLOG, LogOutput.STDERR)
    #: log file, absolute; required when ``outputs`` has ``file``
    logfile: str | None = None
    #: show debug lines
    debug: bool = True
    #: prefix each line with the date and time
    timestamp: bool = True


_RING = TotemConfig()
#: ms the executive polls after activity (``busy_poll``): not the ring's, the event loop's
BUSY_POLL = 0.5
#: Smallest and largest ring frame: room for headers, and one UDP datagram
#: (65507 bytes) with space left for the crypto envelope.
FRAME_SIZE_RANGE = (576, 65000)
#: bytes a frame's datagram adds on the wire: IPv4 and UDP headers, the crypto
#: envelope (version, nonce, tag) and the Totem packet and frame headers
FRAME_OVERHEAD = IPV4_UDP_HEADER_BYTES + CRYPTO_OVERHEAD + MCAST_OVERHEAD


def _setting(convert: Callable[[str], Any], default: Any, meaning: str, *,
             shown: str | None = None, within: tuple[int, int] | None = None) -> Any:
    """Declare one ``totem`` key: the field, its converter, its README row.

    Args:
        convert: text -> value, raising ValueError (``_millis``, ``_positive_int``).
        default: the value when the key is absent (TotemConfig's, by name).
        meaning: the README's meaning column.
        shown: the README's default column when ``default`` does not say it.
        within: inclusive bounds checked after the cross-key rules.
    """
    return field(default=default, metadata={
        "convert": convert, "meaning": meaning, "shown": shown, "within": within})


@dataclass(frozen=True)
class TotemSettings:
    """The ``totem`` section.  Times in milliseconds.

    Each field is the one declaration of its key: the parser's key table, the
    defaults (TotemConfig's), the range checks and the README rows
    (:func:`totem_table`) all come from these fields.
    """

    token: float = _setting(_millis, _RING.token,
                            "ms without the token before the ring is re-formed")
    token_retransmit: float = _setting(
        _millis, _RING.token_retransmit,
        "longest wait before the token is resent (never more than token/20); the wait "
        "adapts: measured rotation time plus four deviations, doubling per resend, never "
        f"under {_RING.token_retransmit_min:g} ms")
    join: float = _setting(_millis, _RING.join, "gather: join resend interval")
    consensus: float = _setting(_millis, _RING.consensus,
                                "gather: give up on processors that have not agreed")
    merge_detect: float = _setting(_millis, _RING.merge_detect,
                                   "how often a ring's representative probes for other rings")
    token_hold: float = _setting(_millis, _RING.token_hold,
                                 "how long an idle ring's token rests per rotation")
    token_linger: float = _setting(_millis_or_zero, _RING.token_linger,
                                   "how long the token keeps rotating after the last traffic "
                                   "before it may rest (a synchronous writer's next message "
                                   "finds it moving); 0: it rests as soon as the ring is quiet")
    writer_hold: float = _setting(_millis_or_zero, _RING.writer_hold,
                                  "how long a node keeps the token once a message a local "
                                  "client waits for became stable and nothing else is queued "
                                  "on the ring: the client's next write then leaves on this "
                                  "visit; 0: off")
    stable_acks: bool = _setting(
        _on_off, _RING.stable_acks,
        "in rings of three or more: the frame that ends a message a local client waits for "
        "asks every member for an ACK; once all answered, the client is answered without "
        "waiting for the token to come round (on/off)", shown="on")
    busy_poll: float = _setting(
        _millis_or_zero, BUSY_POLL,
        "after each packet or client request the executive keeps polling its sockets this "
        "long instead of sleeping, giving the processor to anything else runnable meanwhile: "
        "a sleeping process wakes slowly where idle processors halt (virtual machines), and "
        "a synchronous write waits for four wake-ups; 0: off", within=(0, 100))
    window_size: int = _setting(_positive_int, _RING.window_size,
                                "frames per rotation, whole ring (a minimum: see "
                                "`window_bytes`)")
    max_messages: int = _setting(_positive_int, _RING.max_messages,
                                 "frames per token visit, one node (a minimum: see "
                                 "`window_bytes`)")
    window_bytes: int = _setting(
        _int, _RING.window_bytes,
        "bytes a rotation may carry at least: where `window_size` frames hold less, "
        "`window_size` and `max_messages` grow by the same factor (Ethernet's "
        "1413-byte frames: 198 and 66); "
"0: they are exact", within=(0, 4 * 1024 * 1024))
    frame_size: int | None = _setting(
        _positive_int, None,
        "largest frame before encryption, if you would rather set it directly (above the "
        "interface's MTU IP fragments the datagrams, and the executive warns)",
        shown="derived from `netmtu`", within=FRAME_SIZE_RANGE)
    netmtu: int | None = _setting(
        _positive_int, None,
        "the network's MTU; frames are sized so their datagrams fit it (loopback: 65536 -> "
        f"{FRAME_SIZE_RANGE[1]}-byte frames; Ethernet: 1500 -> {1500 - FRAME_OVERHEAD})",
        shown="the MTU of the ring's interface",
        within=(FRAME_SIZE_RANGE[0] + FRAME_OVERHEAD, 65535))
    fail_recv_const: int = _setting(
        _positive_int, _RING.fail_recv_const,
        "token visits a member's aru may hold the ring back without moving before it "
        "declares that it fails to receive and leaves")
    fail_recv_backoff: float = _setting(
        _millis, _RING.fail_recv_backoff,
        "ms such a member stays apart before merging again (doubled on repeats, up to 8x)")
    max_members: int = _setting(_positive_int, _RING.max_members,
                                "most processors a ring may have; packets naming more are "
                                "refused")

    def resolved_frame_size(self, interface_mtu: int | None = None) -> int:
        """The frame size: ``frame_size`` if given, else the largest frame whose
        datagram (headers and crypto included) fits ``netmtu`` or the interface's
        MTU, else TotemConfig's default."""
        if self.frame_size is not None:
            return self.frame_size
        mtu = self.netmtu or interface_mtu
        if mtu is None:
            return _RING.frame_size
        lo, hi = FRAME_SIZE_RANGE
        return max(lo, min(hi, mtu - FRAME_OVERHEAD))

    def to_totem_config(self, interface_mtu: int | None = None) -> TotemConfig:
        """The ring's parameters; settings not in this section keep their defaults."""
        return dataclasses.replace(
            _RING, **{k: getattr(self, k) for k in _TOTEM_RING_KEYS},
            frame_size=self.resolved_frame_size(interface_mtu))


#: the settings passed to TotemConfig as they are (frame_size is resolved first)
_TOTEM_RING_KEYS = tuple(f.name for f in dataclasses.fields(TotemSettings)
                         if f.name in {g.name for g in dataclasses.fields(TotemConfig)}
                         and f.name != "frame_size")


def totem_table() -> list[str]:
    """The README's rows for the ``totem`` section (markdown), one per key."""
    rows = []
    for i, f in enumerate(dataclasses.fields(TotemSettings)):
        shown = f.metadata["shown"] or (
            f"{f.default:g}" if isinstance(f.default, float) else str(f.default))
        rows.append(f"{'| totem |' if i == 0 else '| |'} `{f.name}` | {shown} | "
                    f"{f.metadata['meaning']} |")
    return rows

@dataclass(frozen=True)
class AisexecConfig:
    """The ``aisexec`` section.  Paths are absolute after loading."""

    #: Unix socket where this node's clients connect
    socket: str = DEFAULT_SOCKET
    #: the 128-byte ring key; default ``<config dir>/authkey``
    authkey: str = "/etc/ais/authkey"
    #: the AMF model; default ``<config dir>/groups.conf``
    groups: str = "/etc/ais/groups.conf"
    #: Unix group whose members may connect (besides root and our own user)
    group: str = DEFAULT_GROUP
    #: directory for state kept across restarts (the highest ring sequence);
    #: default: the config directory
    statedir: str = "/etc/ais"
    #: name of the cluster, reported to clients
    clustername: str = DEFAULT_CLUSTERNAME
    #: line of ``statedir`` (0: not given), so a bad directory can name it
    statedir_line: int = field(default=0, compare=False, repr=False)
    #: ``metrics_port: [ADDRESS:]PORT``: serve Prometheus metrics there (address
    #: default 127.0.0.1); None (the default): no metrics endpoint
    metrics: tuple[str, int] | None = None


def _metrics_endpoint(text: str) -> tuple[str, int]:
    """``[ADDRESS:]PORT`` -> (IPv4 address, port); the address defaults to loopback."""
    addr, sep, port = text.rpartition(":")
    if not sep:
        addr = "127.0.0.1"
    try:
        ipaddress.IPv4Address(addr)
    except ValueError:
        raise ValueError(f"{addr!r} is not an IPv4 address") from None
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise ValueError(f"{port!r} is not a port number (1..65535)")
    return addr, int(port)


@dataclass(frozen=True)
class LimitsConfig:
    """The ``limits`` section: what one client, or all of them, may make the executive hold.

    The CKPT limits are decided in agreed order on every node, so every node
    of a cluster must have the same values (like the ``totem`` settings).
    """

    #: client connections at once (a handle is one, two sockets); None: from RLIMIT_NOFILE
    max_connections: int | None = None
    #: per connection: callbacks queued for a client that does not read them
    max_queued_callbacks: int = 4096
    #: per connection: bytes of responses and callbacks queued for the client
    max_queued_bytes: int = 32 * 1024 * 1024
    #: all connections together: bytes of incomplete request frames held
    max_buffered_bytes: int = 256 * 1024 * 1024
    #: milliseconds a connection may stay silent inside an incomplete frame
    frame_timeout: float = 10_000.0
    #: cluster: checkpoints that exist (opened, or kept for their retention time)
    max_checkpoints: int = 16384
    #: per connection: open checkpoint handles
    max_checkpoint_opens: int = 4096
    #: cluster: sections of all checkpoints together
    max_sections: int = 262144


@dataclass(frozen=True)
class OpenaisConfig:
    """A whole ``openais.conf``."""

    #: the file it was read from ("<string>" when parsed from text)
    path: str
    #: the ``network`` section (required)
    network: NetworkConfig
    #: the ``logging`` section, or its defaults
    logging: LoggingConfig = LoggingConfig()
    #: the ``totem`` section, or its defaults
    totem: TotemSettings = TotemSettings()
    #: the ``aisexec`` section, or its defaults
    aisexec: AisexecConfig = AisexecConfig()
    #: the ``limits`` section, or its defaults
    limits: LimitsConfig = LimitsConfig()

    def to_totem_config(self, interface_mtu: int | None = None) -> TotemConfig:
        """Shortcut for ``self.totem.to_totem_config(interface_mtu)``."""
        return self.totem.to_totem_config(interface_mtu)

    def bind_address(self, interfaces: Sequence[Interface] | None = None) -> str:
        """The local address to bind (see :func:`resolve_bind_address`).

        Args:
            interfaces: local addresses; read from the kernel when None.
        Raises:
            ConfigError: naming ``bindnetaddr``'s line when nothing matches.
        """
        if interfaces is None:
            interfaces = local_ipv4_addresses()
        return resolve_bind_address(self.network.bindnetaddr, interfaces,
                                    path=self.path, line=self.network.bindnetaddr_line)


_NETWORK_KEYS = {
    "bindnetaddr": _Key(_ipv4),
    "mcastaddr": _Key(_ipv4),
    "mcastport": _Key(_port),
    "transport": _Key(_choice(*Transport)),
    "member": _Key(_ipv4, repeated=True),
}
_LOGGING_KEYS = {
    "logoutput": _Key(_choice(*LogOutput), repeated=True),
    "logfile": _Key(str),
    "debug": _Key(_on_off),
    "timestamp": _Key(_on_off),
}
_TOTEM_KEYS = {f.name: _Key(f.metadata["convert"]) for f in dataclasses.fields(TotemSettings)}
_AISEXEC_KEYS = {
    "socket": _Key(str),
    "authkey": _Key(str),
    "groups": _Key(str),
    "group": _Key(_word),
    "statedir": _Key(str),
    "clustername": _Key(lambda text: _sa_name(_word(text))),
    "metrics_port": _Key(_metrics_endpoint),
}
_LIMITS_KEYS = {
    "max_connections": _Key(_positive_int),
    "max_queued_callbacks": _Key(_positive_int),
    "max_queued_bytes": _Key(_positive_int),
    "max_buffered_bytes": _Key(_positive_int),
    "frame_timeout": _Key(_millis),
    "max_checkpoints": _Key(_positive_int),
    "max_checkpoint_opens": _Key(_positive_int),
    "max_sections": _Key(_positive_int),
}
_SECTIONS = {
    "network": _NETWORK_KEYS,
    "logging": _LOGGING_KEYS,
    "totem": _TOTEM_KEYS,
    "aisexec": _AISEXEC_KEYS,
    "limits": _LIMITS_KEYS,
}


def _sa_name(text: str) -> str:
    """A name that fits SaNameT (SA_MAX_NAME_LENGTH bytes)."""
    if len(text.encode()) > MAX_NAME:
        raise ValueError(f"{len(text.encode())} bytes, more than the {MAX_NAME} "
                         "an SaNameT holds")
    return text


def _network(v: _Values) -> NetworkConfig:
    for key in ("bindnetaddr", "mcastport"):
        if not v.has(key):
            raise v.error(None, f"network: {key} is not set")
    transport = Transport(v.get("transport", Transport.UDP))
    members = v.all("member")
    if transport is Transport.UDP:
        if not v.has("mcastaddr"):
            raise v.error(None, "network: mcastaddr is not set")
        if not ipaddress.IPv4Address(v.get("mcastaddr")).is_multicast:
            raise v.error("mcastaddr",
                          f"mcastaddr: {v.get('mcastaddr')} is not a multicast address "
                          "(224.0.0.0 - 239.255.255.255)")
        if members:
            raise v.error("member", "member: only allowed with transport: udpu")
    else:
        if not members:
            raise v.error("transport", "transport udpu needs at least one member")
        seen: dict[str, int] = {}
        for addr, e in v.values["member"]:
            if addr in seen:
                raise ConfigError(v.path, e.line, e.col,
                                  f"member: {addr} is already listed on line {seen[addr]}")
            seen[addr] = e.line
    return NetworkConfig(
        bindnetaddr=v.get("bindnetaddr"), mcastport=v.get("mcastport"),
        mcastaddr=v.get("mcastaddr"), transport=transport, members=tuple(members),
        bindnetaddr_line=v.entry("bindnetaddr").line,
    )


def _logging(v: _Values, base: str) -> LoggingConfig:
    defaults = LoggingConfig()
    outputs = tuple(dict.fromkeys(LogOutput(o) for o in v.all("logoutput"))) or defaults.outputs
    logfile = v.get("logfile")
    if LogOutput.FILE in outputs and logfile is None:
        first_file = next(e for o, e in v.values["logoutput"] if o == LogOutput.FILE)
        raise ConfigError(v.path, first_file.line, first_file.col,
                          "logoutput: file needs a logfile")
    return LoggingConfig(
        outputs=outputs,
        logfile=os.path.join(base, logfile) if logfile is not None else None,
        debug=v.get("debug", defaults.debug),
        timestamp=v.get("timestamp", defaults.timestamp),
    )


def _totem(v: _Values) -> TotemSettings:
    if v.has("netmtu") and v.has("frame_size"):
        raise v.error("netmtu", "give netmtu (the network's MTU) or frame_size, not both")
    defaults = TotemSettings()
    t = TotemSettings(**{k: v.get(k, getattr(defaults, k)) for k in _TOTEM_KEYS})

    def check(ok: bool, keys: tuple[str, ...], msg: str) -> None:
        if not ok:
            # Name the line of a key the user wrote; defaults agree with each other.
            given = [k for k in keys if v.has(k)]
            raise v.error(given[-1] if given else None, msg)

    check(t.token > t.token_retransmit, ("token", "token_retransmit"),
          f"token ({t.token:g}) must be greater than token_retransmit ({t.token_retransmit:g})")
    check(t.consensus > t.join, ("join", "consensus"),
          f"consensus ({t.consensus:g}) must be greater than join ({t.join:g})")
    check(t.token_hold < t.token, ("token", "token_hold"),
          f"token_hold ({t.token_hold:g}) must be less than token ({t.token:g}), "
          "or a resting token looks lost")
    check(t.token_linger < t.token, ("token", "token_linger"),
          f"token_linger ({t.token_linger:g}) must be less than token ({t.token:g})")
    check(t.writer_hold < _RING.token_retransmit_min, ("writer_hold",),
          f"writer_hold ({t.writer_hold:g}) must be less than {_RING.token_retransmit_min:g} "
          "(ms, the shortest token retransmit wait)")
    check(t.max_messages <= t.window_size, ("window_size", "max_messages"),
          f"max_messages ({t.max_messages}) must not exceed window_size ({t.window_size})")
    for f in dataclasses.fields(TotemSettings):
        value, within = getattr(t, f.name), f.metadata["within"]
        if within is not None and value is not None:
            lo, hi = within
            check(lo <= value <= hi, (f.name,), f"{f.name}: {value} is outside {lo}..{hi}")
    return t


def _aisexec(v: _Values, base: str) -> AisexecConfig:
    def path(key: str, default: str) -> str:
        value = v.get(key)
        if value is None:
            return default
        return os.path.normpath(os.path.join(base, value))

    return AisexecConfig(
        socket=path("socket", DEFAULT_SOCKET),
        authkey=path("authkey", os.path.join(base, "authkey")),
        groups=path("groups", os.path.join(base, "groups.conf")),
        group=v.get("group", DEFAULT_GROUP),
        statedir=path("statedir", base),
        clustername=v.get("clustername", DEFAULT_CLUSTERNAME),
        statedir_line=v.entry("statedir").line if v.has("statedir") else 0,
        metrics=v.get("metrics_port"),
    )


def _limits(v: _Values) -> LimitsConfig:
    defaults = LimitsConfig()
    return LimitsConfig(**{k: v.get(k, getattr(defaults, k)) for k in _LIMITS_KEYS})


def prepare_statedir(cfg: OpenaisConfig) -> str:
    """Create ``aisexec { statedir }`` if missing and check it is a writable directory.

    Returns:
        The directory.
    Raises:
        ConfigError: naming the ``statedir`` line (or the file, for the default).
    """
    d = cfg.aisexec.statedir

    def fail(msg: str) -> ConfigError:
        return ConfigError(cfg.path, cfg.aisexec.statedir_line, 0, f"statedir: {d}: {msg}")

    try:
        os.makedirs(d, exist_ok=True)
    except FileExistsError:
        raise fail("exists and is not a directory") from None
    except OSError as exc:
        raise fail(f"cannot create it: {exc.strerror}") from None
    if not os.path.isdir(d):
        raise fail("is not a directory")
    if not os.access(d, os.W_OK | os.X_OK):
        raise fail("is not writable")
    return d


def parse_openais_conf(text: str, path: str = "<string>",
                       base_dir: str | None = None) -> OpenaisConfig:
    """Parse the text of an ``openais.conf``.

    Args:
        text: the file's contents.
        path: named in errors; its directory is the base for relative paths.
        base_dir: overrides that base (default: ``path``'s directory, or the
            current directory for ``"<string>"``).
    Returns:
        The configuration, with every path absolute.
    Raises:
        ConfigError: the first problem found, with its line.
    """
    if base_dir is None:
        base_dir = os.getcwd() if path == "<string>" else os.path.dirname(os.path.abspath(path))
    base_dir = os.path.abspath(base_dir)
    sections: dict[str, _Values] = {}
    for block in _parse(OPENAIS_GRAMMAR, text, path):
        schema = _SECTIONS.get(block.name)
        if schema is None:
            raise ConfigError(path, block.line, block.col,
                              f"unknown section {block.name!r} "
                              f"(known: {', '.join(sorted(_SECTIONS))})")
        if block.name in sections:
            first = sections[block.name].block
            raise ConfigError(path, block.line, block.col,
                              f"section {block.name!r} already appears on line "
                              f"{first.line if first else 0}")
        sections[block.name] = _collect(path, block, block.items, schema)
    if "network" not in sections:
        raise ConfigError(path, 0, 0,
                          "no 'network' section (bindnetaddr, mcastaddr and mcastport "
                          "must be set)")

    def values(name: str) -> _Values:
        return sections.get(name) or _Values(path, None)

    return OpenaisConfig(
        path=path,
        network=_network(sections["network"]),
        logging=_logging(values("logging"), base_dir),
        totem=_totem(values("totem")),
        aisexec=_aisexec(values("aisexec"), base_dir),
        limits=_limits(values("limits")),
    )


def load_openais_conf(path: str) -> OpenaisConfig:
    """Read and parse ``openais.conf``; relative paths in it are taken from its directory.

    Raises:
        ConfigError: unreadable file, or the first problem in it.
    """
    return parse_openais_conf(_read(path, "configuration"), path)


# --------------------------------------------------------------------------
# bindnetaddr -> local address
# --------------------------------------------------------------------------


def resolve_bind_address(bindnetaddr: str, interfaces: Sequence[tuple[str, str, int]], *,
                         path: str = "<config>", line: int = 0) -> str:
    """Pick the local address to bind for ``bindnetaddr``.

    In order:

    1. ``bindnetaddr`` is an address of an interface: use it as is.
    2. It lies in a loopback interface's network (127.0.0.N): use it as is,
       because Linux answers for the whole loopback network.  This is how
       several nodes share one host.
    3. It names an interface's network, the reference's way: its host part
       under that interface's mask is zero, or it ends in ``.0`` (written
       classful-style, as in the QUICKSTART's 192.168.1.0 for a wider subnet).
       Use that interface's address; the first such interface wins.

    Raises:
        ConfigError: at ``path:line`` when nothing matches.
    """
    want = ipaddress.IPv4Address(bindnetaddr)
    nets = [(name, ipaddress.IPv4Interface(f"{addr}/{plen}")) for name, addr, plen in interfaces]
    for _, iface in nets:
        if iface.ip == want:
            return str(want)
    for _, iface in nets:
        net = iface.network
        if iface.ip.is_loopback and want in net and want != net.network_address:
            return str(want)
    for _, iface in nets:
        if want in iface.network and (
            want == iface.network.network_address or int(want) & 0xFF == 0
        ):
            return str(iface.ip)
    local = ", ".join(f"{n} {i.with_prefixlen}" for n, i in nets) or "none"
    raise ConfigError(path, line, 0,
                      f"bindnetaddr: {bindnetaddr} is neither a local address nor the "
                      f"network of a local interface (local: {local})")


# --------------------------------------------------------------------------
# groups.conf: the AMF model
# --------------------------------------------------------------------------


class GroupModel(enum.IntEnum):
    """Redundancy model of a service group (values as in the 2004 code)."""

    TWO_N = 0
    NPLUSM = 1
    NWAY = 2
    NWAYACTIVE = 3
    NOREDUNDANCY = 4


class ComponentModel(enum.IntEnum):
    """SaAmfComponentCapabilityModelT, as answered by saAmfComponentCapabilityModelGet."""

    X_ACTIVE_AND_Y_STANDBY = 1
    X_ACTIVE_OR_Y_STANDBY = 2
    ONE_ACTIVE_OR_Y_STANDBY = 3
    ONE_ACTIVE_OR_ONE_STANDBY = 4
    X_ACTIVE = 5
    ONE_ACTIVE = 6
    NO_ACTIVE = 7


_GROUP_MODELS = {"2n": GroupModel.TWO_N, "nplusm": GroupModel.NPLUSM,
                 "nway": GroupModel.NWAY, "nwayactive": GroupModel.NWAYACTIVE,
                 "noredundancy": GroupModel.NOREDUNDANCY}
#: spellings of the SAF documents, accepted as well
_GROUP_MODEL_ALIASES = {"n+m": GroupModel.NPLUSM, "n-way": GroupModel.NWAY,
                        "n-way-active": GroupModel.NWAYACTIVE}
_COMPONENT_MODELS = {
    "x_active_and_y_standby": ComponentModel.X_ACTIVE_AND_Y_STANDBY,
    "x_active_or_y_standby": ComponentModel.X_ACTIVE_OR_Y_STANDBY,
    "1_active_or_y_standby": ComponentModel.ONE_ACTIVE_OR_Y_STANDBY,
    "1_active_or_1_standby": ComponentModel.ONE_ACTIVE_OR_ONE_STANDBY,
    "x_active": ComponentModel.X_ACTIVE,
    "1_active": ComponentModel.ONE_ACTIVE,
    "no_active": ComponentModel.NO_ACTIVE,
}
#: SaNameT holds at most this many bytes.
MAX_NAME = 256


def _amf_name(text: str) -> str:
    if len(text.encode()) > MAX_NAME:
        raise ValueError(f"name is longer than {MAX_NAME} bytes")
    return _word(text)


def _node_address(text: str) -> int:
    """A unit's ``node=``: an IPv4 address, as the Totem node id (big-endian int)."""
    try:
        return int(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 address") from None


def _command(text: str) -> tuple[str, ...]:
    """A component's ``instantiate=``: a command line, split as a shell would (no shell)."""
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        raise ValueError(f"bad command line: {exc}") from None
    if not argv:
        raise ValueError("empty command line")
    return argv


def _group_model(text: str) -> GroupModel:
    word = text.lower()
    model = _GROUP_MODELS.get(word, _GROUP_MODEL_ALIASES.get(word))
    if model is None:
        raise ValueError(f"{text!r} is not one of {', '.join(_GROUP_MODELS)}")
    return model


def _component_model(text: str) -> ComponentModel:
    word = text.lower()
    if word not in _COMPONENT_MODELS:
        raise ValueError(f"{text!r} is not one of {', '.join(_COMPONENT_MODELS)}")
    return _COMPONENT_MODELS[word]


@dataclass(frozen=True)
class AmfComponent:
    """A component: a process that registers under ``name``."""

    #: the name the process registers with (globally unique)
    name: str
    #: capability model, only reported to clients
    model: ComponentModel
    #: name of its protection group, i.e. the CSI it is assigned
    protection: str
    #: line of its ``component {`` in groups.conf
    line: int = field(default=0, compare=False)
    #: ``instantiate=``: the command the executive runs to start it (empty: started
    #: by someone else); its environment names the executive's socket (AIS_SOCKET)
    #: and the component (AIS_COMPONENT_NAME)
    instantiate: tuple[str, ...] = ()
    #: the further protection groups (CSIs) it is a member of, in file order (several
    #: CSIs per component: e.g. one standby for several actives, N+1)
    more: tuple[str, ...] = ()

    @property
    def csis(self) -> tuple[str, ...]:
        """Every CSI it carries: ``protection`` first."""
        return (self.protection,) + self.more


@dataclass(frozen=True)
class ServiceUnit:
    """A service unit: components put in service and made active/standby together."""

    #: unit name (globally unique)
    name: str
    #: its components, in file order
    components: tuple[AmfComponent, ...]
    #: line of its ``unit {``
    line: int = field(default=0, compare=False)
    #: ``node=``: Totem id of the node that instantiates its components (0: the
    #: ring members take the units in turn, by rank)
    node: int = 0


@dataclass(frozen=True)
class ProtectionGroup:
    """A protection group: the CSI named ``name`` and the components that carry it."""

    #: CSI / protection group name (globally unique)
    name: str
    #: component names, one per unit, in file order
    members: tuple[str, ...]
    #: line of its ``protection {``
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class HealthcheckKey:
    """A configured healthcheck (``healthcheck {`` in a group), started by a component
    with saAmfHealthcheckStart(comp, key): its own period and timeout."""

    #: the key components name (unique in its group)
    key: str
    #: ms between two healthchecks
    period: float
    #: ms the component has to answer one
    timeout: float
    #: line of its ``healthcheck {``
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class ServiceGroup:
    """A service group: units protecting the same work."""

    #: group name (globally unique)
    name: str
    #: redundancy model (``_check_redundancy`` gives each its meaning of N and M)
    model: GroupModel
    #: N: how many units are made active (nway: active assignments of each CSI)
    active_units: int
    #: M: how many units are made standby, the others in service are spares
    #: (nway: standby assignments of each CSI)
    backup_units: int
    #: units, in file order
    units: tuple[ServiceUnit, ...]
    #: protection groups, in file order
    protections: tuple[ProtectionGroup, ...]
    #: line of its ``group {``
    line: int = field(default=0, compare=False)
    #: ms between two healthchecks of a component (``healthcheck-period``)
    healthcheck_period: float = 100.0
    #: ms a component has to answer a healthcheck (``healthcheck-timeout``)
    healthcheck_timeout: float = 40.0
    #: ms a component has to answer a readiness or CSI callback (``response-timeout``)
    response_timeout: float = 5000.0
    #: fewest ring members with which the group makes units active (``quorum``; 0: any)
    quorum: int = 0
    #: configured healthchecks (``healthcheck {`` blocks), in file order
    healthchecks: tuple[HealthcheckKey, ...] = ()

    def healthcheck(self, key: str) -> HealthcheckKey | None:
        """The healthcheck configured under ``key``, or None."""
        return next((h for h in self.healthchecks if h.key == key), None)


@dataclass(frozen=True)
class AmfModel:
    """The whole AMF model.  Everything is in file order (the 2004 code iterated in
    reverse; any fixed order gives the same result on every node)."""

    #: service groups, in file order
    groups: tuple[ServiceGroup, ...]
    #: the file it came from
    path: str = field(default="<string>", compare=False)

    def components(self) -> Iterable[tuple[ServiceGroup, ServiceUnit, AmfComponent]]:
        """Every component with its group and unit, in file order."""
        for g in self.groups:
            for u in g.units:
                for c in u.components:
                    yield g, u, c

    def find_component(self, name: str) -> tuple[ServiceGroup, ServiceUnit, AmfComponent] | None:
        """The component named ``name`` with its group and unit, or None."""
        return next((t for t in self.components() if t[2].name == name), None)

    def find_protection(self, name: str) -> tuple[ServiceGroup, ProtectionGroup] | None:
        """The protection group (CSI) named ``name`` with its group, or None."""
        for g in self.groups:
            for p in g.protections:
                if p.name == name:
                    return g, p
        return None


_GROUP_KEYS = {"name": _Key(_amf_name), "model": _Key(_group_model),
               "active-units": _Key(_int), "backup-units": _Key(_int),
               "healthcheck-period": _Key(_millis), "healthcheck-timeout": _Key(_millis),
               "response-timeout": _Key(_millis), "quorum": _Key(_int)}
_UNIT_KEYS = {"name": _Key(_amf_name), "node": _Key(_node_address)}
_COMPONENT_KEYS = {"name": _Key(_amf_name), "model": _Key(_component_model),
                   "instantiate": _Key(_command)}
_PROTECTION_KEYS = {"name": _Key(_amf_name), "member": _Key(_amf_name, repeated=True)}
_HEALTHCHECK_KEYS = {"key": _Key(_amf_name), "period": _Key(_millis),
                     "timeout": _Key(_millis)}
#: Which blocks each block may hold; None is the top of the file.
_CHILD_BLOCKS: dict[str | None, tuple[str, ...]] = {
    None: ("group",), "group": ("unit", "protection", "healthcheck"),
    "unit": ("component",), "component": (), "protection": (), "healthcheck": (),
}


class _ModelBuilder:
    """The checking pass over parsed groups.conf blocks."""

    def __init__(self, path: str) -> None:
        self.path = path
        # Names are looked up globally (spec/amf.md 2.2), so duplicates are errors.
        self.names: dict[str, dict[str, int]] = {
            "group": {}, "unit": {}, "component": {}, "protection": {}}

    def split(self, parent: str | None, items: Iterable[Any],
              where: str) -> tuple[list[_Entry], list[_Block]]:
        entries, blocks = [], []
        allowed = _CHILD_BLOCKS[parent]
        for item in items:
            if isinstance(item, _Entry):
                if parent is None:
                    raise ConfigError(self.path, item.line, item.col,
                                      f"{item.key!r} outside any group")
                entries.append(item)
            elif item.name in allowed:
                blocks.append(item)
            else:
                expect = " or ".join(repr(a) for a in allowed) or "no blocks"
                raise ConfigError(self.path, item.line, item.col,
                                  f"unknown block {item.name!r} in {where} (expected {expect})")
        return entries, blocks

    def named(self, kind: str, block: _Block, v: _Values) -> str:
        if not v.has("name"):
            raise v.error(None, f"{kind} without a name")
        name = v.get("name")
        seen = self.names[kind]
        if name in seen:
            raise v.error("name", f"{kind} {name!r} is already defined on line {seen[name]}")
        seen[name] = v.entry("name").line
        return name

    def build(self, blocks: list[Any]) -> AmfModel:
        _, groups = self.split(None, blocks, "the file")
        built = tuple(self.group(b) for b in groups)
        return AmfModel(built, self.path)

    def group(self, block: _Block) -> ServiceGroup:
        entries, children = self.split("group", block.items, "group")
        v = _collect(self.path, block, entries, _GROUP_KEYS)
        name = self.named("group", block, v)
        units: list[tuple[ServiceUnit, list[tuple[str, _Block]]]] = []
        # component name -> (protection name, member entry); filled in file order,
        # so a member can only name a component of a unit declared before it.
        declared: dict[str, tuple[_Block, str | None]] = {}
        assigned: dict[str, list[str]] = {}
        #: components in several protection groups -> the entry naming one a second time
        shared: dict[str, Any] = {}
        unit_of: dict[str, str] = {}
        #: first member naming a second component of one unit in one protection group
        same_unit: tuple[str, str, str, Any] | None = None
        protections = []
        healthchecks: dict[str, HealthcheckKey] = {}
        for child in children:
            if child.name == "healthcheck":
                hc = self.healthcheck(child)
                if hc.key in healthchecks:
                    raise ConfigError(self.path, child.line, child.col,
                                      f"healthcheck {hc.key!r} is already defined on line "
                                      f"{healthchecks[hc.key].line} in group {name!r}")
                healthchecks[hc.key] = hc
            elif child.name == "unit":
                unit, comps = self.unit(child)
                units.append((unit, comps))
                for cname, cblock in comps:
                    declared[cname] = (cblock, None)
                    unit_of[cname] = unit.name
            else:
                pv, pname = self.protection(child)
                members: list[str] = []
                for member, e in pv.values.get("member", []):
                    if member not in declared:
                        raise ConfigError(self.path, e.line, e.col,
                                          f"member: {member!r} is not a component of a unit "
                                          f"declared before it in group {name!r}")
                    if member in members:
                        raise ConfigError(self.path, e.line, e.col,
                                          f"member: {member!r} is already in protection "
                                          f"group {pname!r}")
                    if member in assigned:
                        shared.setdefault(member, e)
                    mate = next((m for m in members if unit_of[m] == unit_of[member]), None)
                    if mate is not None and same_unit is None:
                        same_unit = (member, mate, pname, e)
                    assigned.setdefault(member, []).append(pname)
                    members.append(member)
                protections.append(ProtectionGroup(pname, tuple(members), child.line))
        final_units = []
        for unit, comps in units:
            final = []
            for comp, (cname, cblock) in zip(unit.components, comps):
                if cname not in assigned:
                    raise ConfigError(self.path, cblock.line, cblock.col,
                                      f"component {cname!r} is in no protection group")
                csis = assigned[cname]
                final.append(AmfComponent(comp.name, comp.model, csis[0], comp.line,
                                          comp.instantiate, tuple(csis[1:])))
            final_units.append(ServiceUnit(unit.name, tuple(final), unit.line, unit.node))
        model = v.get("model", GroupModel.TWO_N)
        active, backup = self.redundancy(v, model, len(final_units))
        if shared and model == GroupModel.NPLUSM and active > 1:
            # Unit roles would make a shared standby active for every CSI at once.
            member, e = next(iter(shared.items()))
            raise ConfigError(self.path, e.line, e.col,
                              f"member: {member!r} is in several protection groups; with "
                              f"several active units use model=nway (roles per CSI)")
        if same_unit is not None and model == GroupModel.NWAY:
            # nway picks one component per assignment, not every component of a unit.
            member, mate, pname, e = same_unit
            raise ConfigError(self.path, e.line, e.col,
                              f"member: {member!r} and {mate!r} of one unit are both in "
                              f"protection group {pname!r}; model=nway assigns a CSI to one "
                              f"component per unit (use a unit-role model, e.g. 2n)")
        return ServiceGroup(
            name=name, model=model, active_units=active, backup_units=backup,
            units=tuple(final_units), protections=tuple(protections), line=block.line,
            healthcheck_period=v.get("healthcheck-period", 100.0),
            healthcheck_timeout=v.get("healthcheck-timeout", 40.0),
            response_timeout=v.get("response-timeout", 5000.0), quorum=v.get("quorum", 0),
            healthchecks=tuple(healthchecks.values()),
        )

    def redundancy(self, v: _Values, model: GroupModel, units: int) -> tuple[int, int]:
        """N and M of a group: defaults and limits of its redundancy model.

        2n: exactly 1 active and 1 standby unit.  nplusm: N >= 1 active, M standby.
        nway: each CSI gets 1 active and M standby assignments, on any units.
        nwayactive, noredundancy: N active units (default: all), no standby.
        """
        def count(key: str, default: int) -> int:
            n = v.get(key, default)
            if n < 0:
                raise v.error(key, f"{key} cannot be negative")
            return n

        def fixed(key: str, value: int, why: str) -> int:
            if v.has(key) and v.get(key) != value:
                raise v.error(key, f"{key} must be {value} {why}")
            return value

        if model == GroupModel.TWO_N:
            return (fixed("active-units", 1, "in the 2n model"),
                    fixed("backup-units", 1, "in the 2n model"))
        if model == GroupModel.NPLUSM:
            active = count("active-units", 1)
            if active < 1:
                raise v.error("active-units", "active-units must be at least 1 in the nplusm model")
            return active, count("backup-units", 1)
        if model == GroupModel.NWAY:
            return (fixed("active-units", 1, "in the nway model (one active per CSI)"),
                    count("backup-units", 1))
        what = "nwayactive" if model == GroupModel.NWAYACTIVE else "noredundancy"
        return (count("active-units", units),
                fixed("backup-units", 0, f"in the {what} model (no standby)"))

    def unit(self, block: _Block) -> tuple[ServiceUnit, list[tuple[str, _Block]]]:
        entries, children = self.split("unit", block.items, "unit")
        v = _collect(self.path, block, entries, _UNIT_KEYS)
        name = self.named("unit", block, v)
        comps = [self.component(c) for c in children]
        if not comps:
            raise v.error(None, f"unit {name!r} has no components")
        return (ServiceUnit(name, tuple(c for c, _ in comps), block.line, v.get("node", 0)),
                [(c.name, b) for c, b in comps])

    def component(self, block: _Block) -> tuple[AmfComponent, _Block]:
        entries, _ = self.split("component", block.items, "component")
        v = _collect(self.path, block, entries, _COMPONENT_KEYS)
        name = self.named("component", block, v)
        if not v.has("model"):
            raise v.error(None, f"component {name!r} has no model")
        return AmfComponent(name, v.get("model"), "", block.line,
                            v.get("instantiate", ())), block

    def healthcheck(self, block: _Block) -> HealthcheckKey:
        entries, _ = self.split("healthcheck", block.items, "healthcheck")
        v = _collect(self.path, block, entries, _HEALTHCHECK_KEYS)
        for key in ("key", "period", "timeout"):
            if not v.has(key):
                raise v.error(None, f"healthcheck without {key}=")
        return HealthcheckKey(v.get("key"), v.get("period"), v.get("timeout"), block.line)

    def protection(self, block: _Block) -> tuple[_Values, str]:
        entries, _ = self.split("protection", block.items, "protection")
        v = _collect(self.path, block, entries, _PROTECTION_KEYS)
        return v, self.named("protection", block, v)


def parse_groups_conf(text: str, path: str = "<string>") -> AmfModel:
    """Parse the text of a ``groups.conf``.

    Raises:
        ConfigError: the first problem found, with its line.
    """
    problem = _nesting_problem(text, MAX_NESTING)
    if problem is not None:
        raise ConfigError(path, problem[0], 1, problem[1])
    return _ModelBuilder(path).build(_parse(GROUPS_GRAMMAR, text, path))


def load_groups_conf(path: str) -> AmfModel:
    """Read and parse ``groups.conf`` (the AMF model).

    Raises:
        ConfigError: unreadable file, or the first problem in it.
    """
    return parse_groups_conf(_read(path, "AMF model"), path)


__all__ = [
    "AisexecConfig", "AmfComponent", "AmfModel", "ComponentModel", "ConfigError",
    "DEFAULT_CLUSTERNAME", "DEFAULT_CONFIG", "DEFAULT_GROUP", "DEFAULT_SOCKET", "FRAME_OVERHEAD",
    "FRAME_SIZE_RANGE", "GROUPS_GRAMMAR", "GroupModel", "HealthcheckKey", "LimitsConfig",
    "LogOutput", "LoggingConfig", "MAX_CONFIG_BYTES", "NetworkConfig", "OPENAIS_GRAMMAR",
    "OpenaisConfig",
    "ProtectionGroup", "ServiceGroup", "ServiceUnit", "TotemSettings", "Transport",
    "load_groups_conf", "load_openais_conf", "parse_groups_conf", "parse_openais_conf",
    "prepare_statedir", "resolve_bind_address", "totem_table",
]
