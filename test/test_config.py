"""ais/config.py: both grammars, their checks, and bindnetaddr resolution."""
from __future__ import annotations

import dataclasses
import os
import re
import textwrap
from pathlib import Path

import pytest

from ais.config import (
    FRAME_OVERHEAD, AmfComponent, ComponentModel, ConfigError, GroupModel, LogOutput,
    LoggingConfig, NetworkConfig, TotemSettings, Transport, load_groups_conf,
    load_openais_conf, parse_groups_conf, parse_openais_conf, resolve_bind_address, totem_table,
)
from ais.netif import IPV4_UDP_HEADER_BYTES, Interface, local_ipv4_addresses, parse_ip_addr_output
from ais.totem.wire import RECOVERED_HEADER
from ais.totem.events import TotemConfig

REPO = Path(__file__).resolve().parent.parent

QUICKSTART = """\
network {
	bindnetaddr: 192.168.1.0
	mcastaddr: 226.94.1.1
	mcastport: 5405
}

logging {
	logoutput: file
	logoutput: stderr
	logoutput: syslog
	logfile: /tmp/ais
	debug: on
	timestamp: on
}
"""

NET_UDP = "network {\n bindnetaddr: 10.0.0.0\n mcastaddr: 226.94.1.1\n mcastport: 5405\n}\n"


def conf_error(text: str, parse=parse_openais_conf) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, "/etc/ais/openais.conf")
    return info.value


# --------------------------------------------------------------------------
# openais.conf: good files
# --------------------------------------------------------------------------


def test_quickstart_example() -> None:
    cfg = parse_openais_conf(QUICKSTART, "/etc/ais/openais.conf")
    assert cfg.network == NetworkConfig("192.168.1.0", 5405, "226.94.1.1", Transport.UDP, ())
    assert cfg.logging == LoggingConfig(
        (LogOutput.FILE, LogOutput.STDERR, LogOutput.SYSLOG), "/tmp/ais", True, True)
    assert cfg.totem == TotemSettings()
    # Paths not given are beside the -c file, as the QUICKSTART installs them.
    assert cfg.aisexec.authkey == "/etc/ais/authkey"
    assert cfg.aisexec.groups == "/etc/ais/groups.conf"
    assert cfg.aisexec.statedir == "/etc/ais"
    assert cfg.aisexec.socket == "/var/run/ais/aisexec.sock"
    assert cfg.aisexec.group == "ais"
    assert cfg.aisexec.clustername == "mvlcge"


def test_logging_defaults_when_section_absent() -> None:
    cfg = parse_openais_conf(NET_UDP)
    assert cfg.logging.outputs == (LogOutput.SYSLOG, LogOutput.STDERR)
    assert cfg.logging.debug and cfg.logging.timestamp
    assert cfg.logging.logfile is None


def test_design_example_udpu_with_all_sections(tmp_path: Path) -> None:
    text = textwrap.dedent("""\
        # a comment line
        network {
            bindnetaddr: 127.0.0.1   # a full local address
            mcastaddr: 226.94.1.1
            mcastport: 5405
            transport: udpu
            member: 127.0.0.1
            member: 127.0.0.2
        }
        totem {
            token: 1000
            join: 100
            consensus: 500
            netmtu: 1200
            token_retransmit: 200.5
        }
        logging {
            logoutput: file
            logfile: ais.log
            debug: off
            timestamp: off
        }
        aisexec {
            socket: run/aisexec.sock
            authkey: /etc/ais/authkey
            group: wheel
            statedir: state
            clustername: lab
        }
        """)
    path = tmp_path / "openais.conf"
    path.write_text(text)
    cfg = load_openais_conf(str(path))
    assert cfg.network.transport is Transport.UDPU
    assert cfg.network.members == ("127.0.0.1", "127.0.0.2")
    assert cfg.totem.netmtu == 1200 and cfg.totem.frame_size is None
    assert cfg.to_totem_config(interface_mtu=65536).frame_size == 1200 - 87
    assert cfg.totem.token_retransmit == 200.5
    assert cfg.logging == LoggingConfig((LogOutput.FILE,), str(tmp_path / "ais.log"), False, False)
    a = cfg.aisexec
    assert (a.socket, a.authkey, a.groups, a.group, a.statedir, a.clustername) == (
        str(tmp_path / "run/aisexec.sock"), "/etc/ais/authkey", str(tmp_path / "groups.conf"),
        "wheel", str(tmp_path / "state"), "lab")


def test_udpu_needs_no_mcastaddr() -> None:
    cfg = parse_openais_conf(
        "network {\nbindnetaddr: 127.0.0.1\nmcastport: 5405\ntransport: udpu\n"
        "member: 127.0.0.1\n}\n")
    assert cfg.network.mcastaddr is None


def test_frame_size_follows_the_mtu() -> None:
    cfg = parse_openais_conf(NET_UDP)
    assert cfg.totem.resolved_frame_size(None) == TotemConfig().frame_size
    assert cfg.totem.resolved_frame_size(1500) == 1500 - 87
    assert cfg.totem.resolved_frame_size(65536) == 65000  # the largest frame allowed
    assert cfg.to_totem_config(9000).frame_size == 9000 - 87


def test_frame_overhead_is_what_a_sealed_frame_adds() -> None:
    """FRAME_OVERHEAD is computed from the wire and crypto modules (87 bytes
    today); a real frame, encoded and sealed, adds exactly that on the wire."""
    from ais.totem.crypto import Crypto
    from ais.totem.events import RingId
    from ais.totem.wire import MCAST_RECOVERED, encode_mcast, encode_recovered

    crypto = Crypto(bytes(range(128)))
    ring = RingId(2**40, 0x7F000001)
    for size in (0, 1, 1313, TotemSettings().resolved_frame_size(1500), 65000):
        payload = bytes(size)
        sealed = crypto.seal(encode_mcast(0x7F000002, ring, 2**63, 0, payload))
        assert len(sealed) + IPV4_UDP_HEADER_BYTES - size == FRAME_OVERHEAD
    # A full frame fits the MTU exactly, also when recovery carries it again.
    frame = TotemSettings().resolved_frame_size(1500)
    inner = encode_recovered(ring, 7, 0x7F000003, bytes(frame - RECOVERED_HEADER.size))
    wrapped = crypto.seal(encode_mcast(0x7F000002, ring, 9, MCAST_RECOVERED, inner))
    assert len(wrapped) + IPV4_UDP_HEADER_BYTES == 1500


def test_totem_keys_are_declared_once() -> None:
    """The key table, the defaults and the README rows come from TotemSettings."""
    names = [f.name for f in dataclasses.fields(TotemSettings)]
    rows = totem_table()
    assert [re.search(r"`(\w+)`", r).group(1) for r in rows] == names  # type: ignore[union-attr]
    ring = TotemConfig()
    for name, row in zip(names, rows):
        if hasattr(ring, name) and name != "frame_size":
            value = getattr(ring, name)
            assert getattr(TotemSettings(), name) == value
            shown = ("on" if value else "off") if isinstance(value, bool) else f"{value:g}"
            assert f"| {shown} |" in row
    with pytest.raises(ConfigError, match="unknown key 'tokn' in 'totem'.*fail_recv_const"):
        parse_openais_conf(NET_UDP + "totem {\n tokn: 5\n}\n")
    # every declared key is read and reaches the ring (netmtu through frame_size)
    text = "".join(f" {n}: {v}\n" for n, v in (
        ("token", 3000), ("token_retransmit", 90), ("join", 70), ("consensus", 900),
        ("merge_detect", 1500), ("token_hold", 40), ("window_size", 80), ("max_messages", 25),
        ("netmtu", 9000), ("fail_recv_const", 33), ("fail_recv_backoff", 700),
        ("max_members", 12), ("window_bytes", 500000), ("token_linger", 7),
        ("writer_hold", 1.5), ("stable_acks", "off")))
    tc = parse_openais_conf(NET_UDP + "totem {\n" + text + "}\n").to_totem_config()
    assert (tc.token, tc.token_retransmit, tc.join, tc.consensus, tc.merge_detect,
            tc.token_hold, tc.window_size, tc.max_messages, tc.frame_size,
            tc.fail_recv_const, tc.fail_recv_backoff, tc.max_members, tc.window_bytes,
            tc.token_linger, tc.writer_hold, tc.stable_acks) == (
        3000, 90, 70, 900, 1500, 40, 80, 25, 9000 - FRAME_OVERHEAD, 33, 700, 12, 500000, 7, 1.5,
        False)
    exact = parse_openais_conf(NET_UDP + "totem {\n window_bytes: 0\n}\n").to_totem_config()
    assert exact.window_bytes == 0


def test_readme_totem_rows_agree_with_the_declaration() -> None:
    """Every totem key in the README, with the default it shows, is the declared one."""
    readme = (REPO / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(readme) if line.startswith("| totem |"))
    shown: dict[str, str] = {}
    for line in readme[start:]:
        cols = [c.strip() for c in line.strip("|").split("|")]
        if len(cols) < 4 or cols[0] not in ("", "totem"):
            break
        keys = re.findall(r"`(\w+)`", cols[1])
        defaults = cols[2].split(", ") if len(keys) > 1 else [cols[2]]
        assert len(defaults) == len(keys), line
        shown.update(zip(keys, defaults))
    declared = {re.search(r"`(\w+)`", r).group(1): r.split(" | ")[2]  # type: ignore[union-attr]
                for r in totem_table()}
    assert shown == declared


def test_to_totem_config() -> None:
    cfg = parse_openais_conf(NET_UDP + "totem {\n token: 2000\n consensus: 800\n"
                             " window_size: 100\n max_messages: 30\n frame_size: 9000\n}\n")
    tc = cfg.to_totem_config()
    assert isinstance(tc, TotemConfig)
    assert (tc.token, tc.consensus, tc.window_size, tc.max_messages, tc.frame_size) == (
        2000.0, 800.0, 100, 30, 9000)
    assert tc.join == TotemConfig().join
    assert tc.send_queue_limit == TotemConfig().send_queue_limit
    assert TotemSettings().to_totem_config() == TotemConfig()


def test_shipped_files_parse() -> None:
    dev = load_openais_conf(str(REPO / "conf/openais.conf"))
    assert dev.network.transport is Transport.UDPU
    assert dev.network.bindnetaddr == "127.0.0.1"
    assert dev.network.members == ("127.0.0.1",)
    assert dev.network.mcastport == 5405
    assert dev.logging.outputs == (LogOutput.STDERR,)
    assert dev.aisexec.authkey == str(REPO / "conf/authkey")
    assert dev.aisexec.groups == str(REPO / "conf/groups.conf")
    assert dev.aisexec.socket == str(REPO / "conf/aisexec.sock")
    assert dev.bind_address([Interface("lo", "127.0.0.1", 8)]) == "127.0.0.1"
    example = load_openais_conf(str(REPO / "conf/openais.conf.example"))
    assert example.network.mcastaddr == "226.94.1.1"
    assert load_groups_conf(str(REPO / "conf/groups.conf")).groups[0].name == "raid"


# --------------------------------------------------------------------------
# openais.conf: every error is one line, path:line: message
# --------------------------------------------------------------------------

P = "/etc/ais/openais.conf"

OPENAIS_ERRORS = [
    # (name, text, expected line (0: whole file), words in the message)
    ("missing bindnetaddr", "network {\n mcastaddr: 226.94.1.1\n mcastport: 5405\n}\n",
     1, "bindnetaddr is not set"),
    ("missing mcastaddr", "network {\n bindnetaddr: 10.0.0.0\n mcastport: 5405\n}\n",
     1, "mcastaddr is not set"),
    ("missing mcastport", "\nnetwork {\n bindnetaddr: 10.0.0.0\n mcastaddr: 226.94.1.1\n}\n",
     2, "mcastport is not set"),
    ("missing network section", "logging {\n debug: on\n}\n", 0, "no 'network' section"),
    ("empty file", "", 0, "no 'network' section"),
    ("logoutput file without logfile",
     NET_UDP + "logging {\n logoutput: stderr\n logoutput: file\n}\n", 8,
     "logoutput: file needs a logfile"),
    ("unknown key", NET_UDP.replace(" mcastport", " mcastprot"), 4, "unknown key 'mcastprot'"),
    ("unknown section", NET_UDP + "\nlogs {\n debug: on\n}\n", 7, "unknown section 'logs'"),
    ("duplicate section", NET_UDP + NET_UDP, 6, "section 'network' already appears on line 1"),
    ("duplicate key", NET_UDP.replace("}", " mcastport: 5406\n}"), 5,
     "'mcastport' is already set on line 4"),
    ("bad address", NET_UDP.replace("10.0.0.0", "10.0.0"), 2, "'10.0.0' is not an IPv4 address"),
    ("not multicast", NET_UDP.replace("226.94.1.1", "10.1.1.1"), 3,
     "10.1.1.1 is not a multicast address"),
    ("bad port", NET_UDP.replace("5405", "70000"), 4, "70000 is not a port number"),
    ("port zero", NET_UDP.replace("5405", "0"), 4, "0 is not a port number"),
    ("port not a number", NET_UDP.replace("5405", "54o5"), 4, "'54o5' is not a number"),
    ("bad transport", NET_UDP.replace("}", " transport: tcp\n}"), 5,
     "'tcp' is not one of udp, udpu"),
    ("member in udp mode", NET_UDP.replace("}", " member: 10.0.0.2\n}"), 5,
     "member: only allowed with transport: udpu"),
    ("udpu without member", NET_UDP.replace("}", " transport: udpu\n}"), 5,
     "transport udpu needs at least one member"),
    ("duplicate member",
     NET_UDP.replace("}", " transport: udpu\n member: 10.0.0.2\n member: 10.0.0.2\n}"), 7,
     "10.0.0.2 is already listed on line 6"),
    ("bad member", NET_UDP.replace("}", " transport: udpu\n member: node2\n}"), 6,
     "'node2' is not an IPv4 address"),
    ("bad number", NET_UDP + "totem {\n token: fast\n}\n", 7, "'fast' is not a number"),
    ("zero size", NET_UDP + "totem {\n window_size: 0\n}\n", 7, "must be greater than 0"),
    ("consensus not above join", NET_UDP + "totem {\n join: 100\n consensus: 100\n}\n", 8,
     "consensus (100) must be greater than join (100)"),
    ("token not above retransmit", NET_UDP + "totem {\n token: 100\n}\n", 7,
     "token (100) must be greater than token_retransmit (150)"),
    ("token_hold too long", NET_UDP + "totem {\n token_hold: 1000\n}\n", 7,
     "token_hold (1000) must be less than token (1000)"),
    ("writer_hold too long", NET_UDP + "totem {\n writer_hold: 5\n}\n", 7,
     "writer_hold (5) must be less than 4 (ms, the shortest token retransmit wait)"),
    ("max_messages above window", NET_UDP + "totem {\n max_messages: 100\n}\n", 7,
     "max_messages (100) must not exceed window_size (60)"),
    ("window_bytes too big", NET_UDP + "totem {\n window_bytes: 99999999\n}\n", 7,
     "window_bytes: 99999999 is outside 0..4194304"),
    ("frame too big", NET_UDP + "totem {\n netmtu: 70000\n}\n", 7, "netmtu: 70000 is outside"),
    ("netmtu and frame_size", NET_UDP + "totem {\n frame_size: 1400\n netmtu: 1400\n}\n", 8,
     "netmtu (the network's MTU) or frame_size, not both"),
    ("frame too small", NET_UDP + "totem {\n frame_size: 100\n}\n", 7,
     "frame_size: 100 is outside"),
    ("bad on/off", NET_UDP + "logging {\n debug: maybe\n}\n", 7, "'maybe' is not on or off"),
    ("bad logoutput", NET_UDP + "logging {\n logoutput: console\n}\n", 7,
     "'console' is not one of file, stderr, syslog"),
    ("group with blanks", NET_UDP + "aisexec {\n group: ais users\n}\n", 7, "must be one word"),
    ("unclosed brace", NET_UDP + "logging {\n debug: on\n\n", 6,
     "'{' opened on line 6 is never closed"),
    ("unclosed brace before next section", NET_UDP.replace("}", "") + "logging {\n}\n", 1,
     "'{' opened on line 1 is never closed"),
    ("extra closing brace", NET_UDP + "}\n", 6, "'}' without a matching '{'"),
    ("missing colon", NET_UDP.replace("mcastport:", "mcastport"), 4,
     "syntax error: expected ':', found '5405'"),
    ("missing value", NET_UDP.replace("5405", ""), 4,
     "syntax error: expected value, found end of line"),
    ("junk at top level", "bindnetaddr: 1.2.3.4\n" + NET_UDP, 1,
     "syntax error: expected '{', found ':'"),
    ("nested section", NET_UDP.replace("}", " sub {\n }\n}"), 5, "syntax error"),
]


@pytest.mark.parametrize("text, line, words", [c[1:] for c in OPENAIS_ERRORS],
                         ids=[c[0] for c in OPENAIS_ERRORS])
def test_openais_conf_errors(text: str, line: int, words: str) -> None:
    err = conf_error(text)
    message = str(err)
    assert "\n" not in message
    prefix = f"{P}:{line}: " if line else f"{P}: "
    assert message.startswith(prefix), message
    assert words in message, message
    assert err.path == P and err.line == line


def test_unreadable_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.conf"
    with pytest.raises(ConfigError) as info:
        load_openais_conf(str(missing))
    assert str(info.value) == f"{missing}: cannot read configuration: No such file or directory"


def test_config_error_str() -> None:
    assert str(ConfigError("a.conf", 3, 7, "bad thing")) == "a.conf:3: bad thing"
    assert str(ConfigError("a.conf", 0, 0, "bad thing")) == "a.conf: bad thing"


# --------------------------------------------------------------------------
# bindnetaddr -> local address
# --------------------------------------------------------------------------

IFACES = [Interface("lo", "127.0.0.1", 8), Interface("eth0", "192.168.1.7", 24),
          Interface("eth1", "10.20.30.40", 16)]


@pytest.mark.parametrize("bindnetaddr, expected", [
    ("192.168.1.0", "192.168.1.7"),   # the QUICKSTART's network form
    ("192.168.1.7", "192.168.1.7"),   # a full local address
    ("10.20.0.0", "10.20.30.40"),     # network address under the interface's mask
    ("10.20.30.0", "10.20.30.40"),    # classful-style, written as a /24
    ("127.0.0.0", "127.0.0.1"),
    ("127.0.0.1", "127.0.0.1"),
    ("127.0.0.3", "127.0.0.3"),       # several nodes on one host
])
def test_resolve_bind_address(bindnetaddr: str, expected: str) -> None:
    assert resolve_bind_address(bindnetaddr, IFACES) == expected


@pytest.mark.parametrize("bindnetaddr", ["192.168.2.0", "192.168.1.9", "172.16.0.0"])
def test_resolve_bind_address_errors(bindnetaddr: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_bind_address(bindnetaddr, IFACES, path="x.conf", line=2)
    assert str(info.value).startswith(f"x.conf:2: bindnetaddr: {bindnetaddr} is neither")


def test_bind_address_names_bindnetaddr_line() -> None:
    cfg = parse_openais_conf("\n\n" + NET_UDP, P)
    with pytest.raises(ConfigError) as info:
        cfg.bind_address([Interface("lo", "127.0.0.1", 8)])
    assert str(info.value).startswith(f"{P}:4: bindnetaddr: 10.0.0.0")
    assert "lo 127.0.0.1/8" in str(info.value)


def test_parse_ip_addr_output() -> None:
    text = (
        "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n"
        "4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\\       valid_lft\n"
        "5: veth0@if6    inet 10.0.0.1/24 scope global veth0\n"
        "7: tun0    inet 10.8.0.1 peer 10.8.0.2/32 scope global tun0\n")
    assert parse_ip_addr_output(text) == [
        Interface("lo", "127.0.0.1", 8), Interface("eth0", "192.0.2.2", 24),
        Interface("veth0", "10.0.0.1", 24), Interface("tun0", "10.8.0.1", 32)]


def test_local_addresses_include_loopback() -> None:
    from ais.netif import _ioctl_ipv4_addresses

    for found in (local_ipv4_addresses(), _ioctl_ipv4_addresses()):
        assert Interface("lo", "127.0.0.1", 8) in found


# --------------------------------------------------------------------------
# groups.conf
# --------------------------------------------------------------------------

G = "/etc/ais/groups.conf"


def test_sample_groups_conf() -> None:
    model = load_groups_conf(str(REPO / "conf/groups.conf"))
    (raid,) = model.groups
    assert (raid.name, raid.model, raid.active_units, raid.backup_units) == (
        "raid", GroupModel.NPLUSM, 1, 2)
    assert [u.name for u in raid.units] == ["raidA", "raidB", "raidC"]
    assert [[c.name for c in u.components] for u in raid.units] == [
        ["comp_a_in_su_x", "comp_b_in_su_x"], ["comp_a_in_su_y", "comp_b_in_su_y"],
        ["comp_a_in_su_z", "comp_b_in_su_z"]]
    assert {c.model for _, _, c in model.components()} == {ComponentModel.X_ACTIVE}
    assert [(p.name, p.members) for p in raid.protections] == [
        ("pgA", ("comp_a_in_su_x", "comp_a_in_su_y", "comp_a_in_su_z")),
        ("pgB", ("comp_b_in_su_x", "comp_b_in_su_y", "comp_b_in_su_z"))]
    g, u, c = model.find_component("comp_b_in_su_y")
    assert (g.name, u.name, c) == ("raid", "raidB",
                                   AmfComponent("comp_b_in_su_y", ComponentModel.X_ACTIVE, "pgB"))
    assert model.find_component("nobody") is None
    assert model.find_protection("pgA")[1].members[0] == "comp_a_in_su_x"
    assert model.find_protection("pgC") is None


def test_groups_conf_lenient_spacing_and_defaults() -> None:
    model = parse_groups_conf(textwrap.dedent("""\
        group {
          name = g1   # comments may follow values
          unit {  
            name=u1
            component {
              name =c1
              model= 1_active_or_1_standby
            }
          }
          protection {
            name=p1
            member=c1
          }
        }
        group {
          name=g2
          model=noredundancy
          unit { name=u2
            component { name=c2
              model=no_active }
          }
          protection { name=p2
            member=c2 }
        }
        """))  # noqa: W291 (trailing blanks after "unit {" are part of the test)
    g1, g2 = model.groups
    assert (g1.model, g1.active_units, g1.backup_units) == (GroupModel.TWO_N, 1, 1)
    assert g1.units[0].components[0].model is ComponentModel.ONE_ACTIVE_OR_ONE_STANDBY
    assert (g2.model, g2.active_units, g2.backup_units) == (GroupModel.NOREDUNDANCY, 1, 0)
    assert g2.units[0].components[0] == AmfComponent("c2", ComponentModel.NO_ACTIVE, "p2")


def _group(body: str) -> str:
    """A valid one-unit group with ``body`` inserted before its closing brace."""
    return ("group {\n"          # 1
            " name=g\n"          # 2
            " unit {\n"          # 3
            "  name=u\n"         # 4
            "  component {\n"    # 5
            "   name=c\n"        # 6
            "   model=x_active\n"  # 7
            "  }\n"              # 8
            " }\n"               # 9
            " protection {\n"    # 10
            "  name=p\n"         # 11
            "  member=c\n"       # 12
            " }\n"               # 13
            + body + "}\n")      # 14...


GROUPS_ERRORS = [
    ("unknown key in group", _group(" colour=red\n"), 14, "unknown key 'colour' in 'group'"),
    ("unknown block", _group(" node {\n }\n"), 14, "unknown block 'node' in group"),
    ("component outside unit", _group(" component {\n  name=d\n  model=x_active\n }\n"), 14,
     "unknown block 'component' in group (expected 'unit' or 'protection' or 'healthcheck')"),
    ("key at top level", "name=raid\n", 1, "'name' outside any group"),
    ("2n with two actives", _group(" model=2n\n active-units=2\n"), 15,
     "active-units must be 1 in the 2n model"),
    ("2n with two standbys", _group(" backup-units=2\n"), 14,
     "backup-units must be 1 in the 2n model"),
    ("nplusm without actives", _group(" model=nplusm\n active-units=0\n"), 15,
     "active-units must be at least 1 in the nplusm model"),
    ("nway with two actives per CSI", _group(" model=n-way\n active-units=2\n"), 15,
     "active-units must be 1 in the nway model"),
    ("nwayactive with standbys", _group(" model=nwayactive\n backup-units=1\n"), 15,
     "backup-units must be 0 in the nwayactive model"),
    ("noredundancy with standbys", _group(" backup-units=1\n model=noredundancy\n"), 14,
     "backup-units must be 0 in the noredundancy model"),
    ("bad group model", _group(" model=3n\n"), 14,
     "'3n' is not one of 2n, nplusm, nway, nwayactive, noredundancy"),
    ("bad component model", _group("").replace("model=x_active", "model=x_activ"), 7,
     "'x_activ' is not one of"),
    ("bad active-units", _group(" active-units=one\n"), 14, "'one' is not a number"),
    ("member not declared", _group(" protection {\n  name=q\n  member=zz\n }\n"), 16,
     "member: 'zz' is not a component of a unit declared before it in group 'g'"),
    ("member declared before its unit",
     "group {\n name=g\n protection {\n  name=p\n  member=c\n }\n unit {\n  name=u\n"
     "  component {\n   name=c\n   model=x_active\n  }\n }\n}\n", 5,
     "member: 'c' is not a component of a unit declared before it"),
    ("member twice", _group(" protection {\n  name=q\n  member=c\n  member=c\n }\n"), 17,
     "'c' is already in protection group 'q'"),
    ("shared standby with N units active", _group(
        " unit {\n  name=u2\n  component {\n   name=c2\n   model=x_active\n  }\n }\n"
        " unit {\n  name=u3\n  component {\n   name=c3\n   model=x_active\n  }\n }\n"
        " protection {\n  name=q\n  member=c2\n  member=c3\n }\n"
        " protection {\n  name=r\n  member=c\n  member=c3\n }\n"
        " model=nplusm\n active-units=2\n"), 35,
     "member: 'c' is in several protection groups; with several active units use "
     "model=nway"),
    ("nway with two components of one unit in one CSI", _group(
        " unit {\n  name=u2\n  component {\n   name=c2\n   model=x_active\n  }\n"
        "  component {\n   name=d2\n   model=x_active\n  }\n }\n"
        " protection {\n  name=q\n  member=c2\n  member=d2\n }\n"
        " model=nway\n"), 28,
     "member: 'd2' and 'c2' of one unit are both in protection group 'q'; model=nway"),
    ("component without protection", _group(
        " unit {\n  name=u2\n  component {\n   name=c2\n   model=x_active\n  }\n }\n"), 16,
     "component 'c2' is in no protection group"),
    ("duplicate component", _group(
        " unit {\n  name=u2\n  component {\n   name=c\n   model=x_active\n  }\n }\n"), 17,
     "component 'c' is already defined on line 6"),
    ("duplicate group", _group("") + _group(""), 16, "group 'g' is already defined on line 2"),
    ("group without name", "group {\n active-units=1\n}\n", 1, "group without a name"),
    ("component without model", _group("").replace("   model=x_active\n", ""), 5,
     "component 'c' has no model"),
    ("unit without components", _group(" unit {\n  name=u2\n }\n"), 14,
     "unit 'u2' has no components"),
    ("missing equals", _group(" active-units 1\n"), 14,
     "syntax error: expected '=' or '{', found '1'"),
    ("missing closing brace", _group("")[:-2], 1, "'{' opened on line 1 is never closed"),
    ("extra closing brace", _group("") + "}\n", 15, "'}' without a matching '{'"),
]


@pytest.mark.parametrize("text, line, words", [c[1:] for c in GROUPS_ERRORS],
                         ids=[c[0] for c in GROUPS_ERRORS])
def test_groups_conf_errors(text: str, line: int, words: str) -> None:
    err = conf_error(text, parse_groups_conf)
    message = str(err).replace("/etc/ais/openais.conf", G)
    assert "\n" not in message
    assert message.startswith(f"{G}:{line}: "), message
    assert words in message, message


def test_group_template_is_valid() -> None:
    assert parse_groups_conf(_group("")).groups[0].units[0].components[0].protection == "p"


def test_groups_conf_component_in_several_protection_groups() -> None:
    """A member may repeat across protection groups: the component carries every CSI."""
    g = parse_groups_conf(_group(" protection {\n  name=q\n  member=c\n }\n")).groups[0]
    c = g.units[0].components[0]
    assert (c.protection, c.more, c.csis) == ("p", ("q",), ("p", "q"))


def test_unreadable_groups_conf(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_groups_conf(str(tmp_path / "groups.conf"))
    assert "cannot read AMF model: No such file or directory" in str(info.value)
    assert str(info.value).startswith(str(tmp_path))


def test_config_objects_are_frozen() -> None:
    cfg = parse_openais_conf(NET_UDP)
    with pytest.raises(AttributeError):
        cfg.network.mcastport = 1  # type: ignore[misc]
    assert os.path.isabs(cfg.aisexec.authkey)


# --- hardening: files that are not configuration, and the one-line rule -----------------------

import subprocess  # noqa: E402
import sys  # noqa: E402

from ais.config import MAX_CONFIG_BYTES, LimitsConfig, prepare_statedir  # noqa: E402

UDPU = ("network {\n bindnetaddr: 127.0.0.1\n mcastport: 5405\n transport: udpu\n"
        " member: 127.0.0.1\n}\n")


@pytest.mark.parametrize("loader", [load_openais_conf, load_groups_conf])
def test_fifo_is_refused_without_blocking(tmp_path: Path, loader) -> None:
    fifo = tmp_path / "fifo.conf"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as e:
        loader(str(fifo))  # a blocking open would hang the test until its timeout
    assert str(e.value) == f"{fifo}: cannot read " + (
        "configuration" if loader is load_openais_conf else "AMF model") + \
        ": not a regular file (a FIFO)"


@pytest.mark.parametrize("loader", [load_openais_conf, load_groups_conf])
def test_devices_and_directories_are_refused(tmp_path: Path, loader) -> None:
    for path, kind in (("/dev/zero", "a character device"), (str(tmp_path), "a directory")):
        with pytest.raises(ConfigError) as e:
            loader(path)
        assert str(e.value).endswith(f"not a regular file ({kind})")


def test_oversized_file_is_refused_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.conf"
    big.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match="byte limit"):
        load_openais_conf(str(big))


def test_deeply_nested_groups_conf_is_one_error() -> None:
    text = "group {\n" * 75 + "}\n" * 75
    e = conf_error(text, parse_groups_conf)
    assert (e.line, e.msg) == (9, "blocks nested more than 8 deep")


def test_clustername_longer_than_a_sa_name() -> None:
    e = conf_error(NET_UDP + "aisexec {\n clustername: " + "c" * 257 + "\n}\n")
    assert e.line == 7 and "257 bytes" in e.msg
    ok = parse_openais_conf(NET_UDP + "aisexec {\n clustername: " + "c" * 256 + "\n}\n")
    assert ok.aisexec.clustername == "c" * 256


def test_statedir_must_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    cfg = parse_openais_conf(UDPU + "aisexec {\n statedir: afile\n}\n",
                             str(tmp_path / "openais.conf"))
    with pytest.raises(ConfigError) as e:
        prepare_statedir(cfg)
    assert str(e.value) == (f"{tmp_path}/openais.conf:8: statedir: {tmp_path}/afile: "
                            "exists and is not a directory")
    cfg = parse_openais_conf(UDPU + "aisexec {\n statedir: new/dir\n}\n",
                             str(tmp_path / "openais.conf"))
    assert prepare_statedir(cfg) == f"{tmp_path}/new/dir" and (tmp_path / "new/dir").is_dir()


def test_limits_section() -> None:
    assert parse_openais_conf(NET_UDP).limits == LimitsConfig()
    cfg = parse_openais_conf(NET_UDP + "limits {\n max_connections: 10\n frame_timeout: 500\n"
                                       " max_checkpoints: 7\n}\n")
    assert (cfg.limits.max_connections, cfg.limits.frame_timeout,
            cfg.limits.max_checkpoints) == (10, 500.0, 7)
    e = conf_error(NET_UDP + "limits {\n max_sections: 0\n}\n")
    assert (e.line, e.msg) == (7, "max_sections: must be greater than 0")
    e = conf_error(NET_UDP + "limits {\n max_socks: 3\n}\n")
    assert e.line == 7 and "unknown key 'max_socks'" in e.msg


def _aisexec(conf: Path, timeout: float = 30) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / "aisexec.py"), "--no-realtime",
                           "-c", str(conf)], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def _one_line(done: subprocess.CompletedProcess, expected: str) -> None:
    assert done.returncode != 0
    assert done.stdout == ""
    assert done.stderr.splitlines() == [expected], done.stderr


@pytest.mark.parametrize("case", ["fifo", "zero", "groups-fifo", "groups-zero", "nested",
                                  "statedir", "clustername", "badkey"])
def test_aisexec_start_up_errors_are_one_line(tmp_path: Path, case: str) -> None:
    """``python aisexec.py -c`` on each bad case: one line, non-zero exit, no hang."""
    (tmp_path / "authkey").write_bytes(os.urandom(128))
    os.chmod(tmp_path / "authkey", 0o400)
    body = UDPU + "logging {\n logoutput: stderr\n}\n"
    aisexec = f" socket: {tmp_path}/s.sock\n"
    conf = tmp_path / "openais.conf"
    expected = ""
    if case == "fifo":
        os.mkfifo(conf)
        expected = f"aisexec: {conf}: cannot read configuration: not a regular file (a FIFO)"
    elif case == "zero":
        conf = Path("/dev/zero")
        expected = ("aisexec: /dev/zero: cannot read configuration: not a regular file "
                    "(a character device)")
    elif case == "groups-fifo":
        os.mkfifo(tmp_path / "groups.conf")
        expected = (f"aisexec: {tmp_path}/groups.conf: cannot read AMF model: not a regular "
                    "file (a FIFO)")
    elif case == "groups-zero":
        aisexec += " groups: /dev/zero\n"
        expected = ("aisexec: /dev/zero: cannot read AMF model: not a regular file "
                    "(a character device)")
    elif case == "nested":
        (tmp_path / "groups.conf").write_text("group {\n" * 75 + "}\n" * 75)
        expected = f"aisexec: {tmp_path}/groups.conf:9: blocks nested more than 8 deep"
    elif case == "statedir":
        (tmp_path / "afile").write_text("")
        aisexec += " statedir: afile\n"
        expected = (f"aisexec: {conf}:12: statedir: {tmp_path}/afile: exists and is not "
                    "a directory")
    elif case == "clustername":
        aisexec += " clustername: " + "n" * 300 + "\n"
        expected = (f"aisexec: {conf}:12: clustername: 300 bytes, more than the 256 an "
                    "SaNameT holds")
    elif case == "badkey":
        os.chmod(tmp_path / "authkey", 0o600)
        (tmp_path / "authkey").write_bytes(b"short")
        expected = (f"aisexec: {tmp_path}/authkey: key is 5 bytes, need 128 (make one with "
                    "ais-keygen)")
    if case not in ("fifo", "zero"):
        conf.write_text(body + "aisexec {\n" + aisexec + "}\n")
    _one_line(_aisexec(conf), expected)
