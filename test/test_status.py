"""The status service, ring statistics, metrics text, ais-status output, and the
executive's small operating helpers (sd_notify, log reopening, metrics_port) without
real executives."""
from __future__ import annotations

import ast
import io
import json
import logging
import socket
from pathlib import Path

import pytest

from ais import config as config_mod
from ais.executive import ServiceHost, create_host
from ais.metrics import RingStats, metric_families
from ais.services.base import Service
from ais.services.status import StatusService
from ais.status import main as status_main
from ais.status import render
from ais.totem.events import ConfChange, RingId, TotemConfig, node_of
from ais.totem.srp import Srp
from helpers_exec import FakeConn
from saf import _status_wire as sw
from saf import _wire as w
from saf.errors import SA_OK, IpcProtocolError

try:
    from ais.testing import ManualScheduler  # where the service kit moves the fakes
except ImportError:
    from ais.executive import ManualScheduler

ROOT = Path(__file__).resolve().parent.parent
A = node_of("127.0.0.1")


def _host() -> tuple[ServiceHost, StatusService]:
    host = create_host(A, ManualScheduler(100.0), {"clm": {"boot_timestamp": 1}})
    svc = host.service_by_name("status")
    assert isinstance(svc, StatusService)
    return host, svc


def _ask(host: ServiceHost, body: bytes = b"") -> w.Frame:
    conn = FakeConn(host.new_conn_id(), sw.STATUS_SERVICE_ID)
    host.lib_connect(conn)
    host.lib_request(conn, sw.STATUS_REQ_GET, 7, body)
    (resp,) = conn.responses
    return resp


def test_status_is_a_builtin_service_answering_from_every_services_hook() -> None:
    host, svc = _host()
    svc.attach(services=lambda: list(host.services.values()), pid=4242,
               ring=lambda: {"id": "127.0.0.1/4", "members": []})
    host.scheduler.advance(2.5)
    resp = _ask(host)
    assert resp.error == SA_OK and resp.seq == 7
    doc = sw.decode_status_untrusted(resp.body)
    assert doc["format"] == sw.STATUS_FORMAT
    assert doc["node"] == "127.0.0.1" and doc["pid"] == 4242 and doc["uptime"] == 2.5
    assert doc["ring"] == {"id": "127.0.0.1/4", "members": []}
    assert doc["services"]["clm"]["members"] == ["127.0.0.1"]
    assert doc["services"]["ckpt"] == {"checkpoints": 0, "linked": 0, "sections": 0, "bytes": 0}
    assert "status" not in doc["services"]


class _Broken(Service):
    name = "broken"
    service_id = 999

    def status(self) -> dict:
        raise KeyError("oops")


class _Quiet(Service):
    name = "quiet"
    service_id = 998


def test_a_failing_section_is_reported_and_the_others_still_come() -> None:
    host, svc = _host()
    extra = [_Broken(), _Quiet()]
    svc.attach(services=lambda: list(host.services.values()) + extra)
    doc = svc.snapshot()
    assert doc["services"]["broken"] == {"error": "KeyError: 'oops'"}
    assert "quiet" not in doc["services"]  # the default hook contributes nothing
    assert "clm" in doc["services"] and "ring" not in doc


def test_a_status_request_with_a_body_is_a_protocol_error() -> None:
    host, _ = _host()
    conn = FakeConn(host.new_conn_id(), sw.STATUS_SERVICE_ID)
    host.lib_connect(conn)
    with pytest.raises(IpcProtocolError):
        host.lib_request(conn, sw.STATUS_REQ_GET, 1, b"x")


@pytest.mark.parametrize("body", [b"", b"\xff\xfe", b"[1]", b'{"format": 99}', b"null",
                                  b"{" * 100_000, b'{"format": 1' + b" " * sw.MAX_STATUS_BYTES])
def test_garbled_status_documents_raise_only_protocol_errors(body: bytes) -> None:
    with pytest.raises(IpcProtocolError):
        sw.decode_status_untrusted(body)


def test_status_document_round_trip_and_size_limit() -> None:
    doc = {"node": "x", "services": {"a": {"n": 1, "l": [1, 2]}}}
    assert sw.decode_status_untrusted(sw.encode_status(doc)) == {"format": 1, **doc}
    with pytest.raises(IpcProtocolError):
        sw.encode_status({"big": "x" * sw.MAX_STATUS_BYTES})
    with pytest.raises(IpcProtocolError):
        sw.encode_status({"nan": float("nan")})


def test_status_service_does_no_io() -> None:
    tree = ast.parse((ROOT / "ais" / "services" / "status.py").read_text())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
            for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree)
             if isinstance(n, ast.ImportFrom) and n.module}
    assert not mods & {"gevent", "socket", "time", "select", "threading", "os"}


# ------------------------------------------------------------------ ring statistics

class _FakeTransport:
    mode = "udpu"
    port = 5405

    def __init__(self) -> None:
        self.stats = dict.fromkeys(("deliveries", "deliver_bytes", "invalid_digest",
                                    "unknown_peer", "leave_refused", "rx_packets",
                                    "tx_packets", "busy_polls", "busy_poll_us"), 0)


def test_ring_stats_rates_over_the_window_and_uptime() -> None:
    now = [10.0]
    srp = Srp(A, TotemConfig())
    tr = _FakeTransport()
    rs = RingStats(srp, tr, clock=lambda: now[0])
    snap = rs.snapshot()
    assert snap["id"] is None and snap["state"] == "gather" and snap["uptime"] is None
    assert snap["stats"]["token_rotation_ms"] is None
    rs.on_confchg(ConfChange(True, RingId(4, A), (A,)))  # transitional: no new ring
    assert rs.ring_since is None
    rs.on_confchg(ConfChange(False, RingId(4, A), (A,)))
    for _ in range(30):  # 30 s at 100 msgs/s of 50 bytes, sampled each second
        now[0] += 1.0
        tr.stats["deliveries"] += 100
        tr.stats["deliver_bytes"] += 5000
        rs.sample()
    now[0] += 0.5
    tr.stats["deliveries"] += 50
    tr.stats["deliver_bytes"] += 2500
    tr.stats["invalid_digest"] = 3
    snap = rs.snapshot()
    st = snap["stats"]
    assert st["delivered_msgs_per_s"] == 100.0 and st["delivered_bytes_per_s"] == 5000.0
    assert st["delivered_msgs"] == 3050 and st["bad_digest"] == 3
    assert snap["uptime"] == 30.5
    assert snap["members"] == [{"address": "127.0.0.1", "node_id": 0x0100007F}]
    json.dumps(snap)  # plain JSON values only


def _exposition(doc: dict) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    class C:
        def collect(self):
            return metric_families(doc)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(C())  # type: ignore[arg-type]
    return generate_latest(reg).decode()


SAMPLE = {
    "node": "127.0.0.1", "pid": 10, "uptime": 65.0,
    "ring": {"id": "127.0.0.1/8", "seq": 8, "representative": "127.0.0.1",
             "state": "operational", "transport": "udpu", "port": 5405,
             "members": [{"address": "127.0.0.1", "node_id": 0x0100007F},
                         {"address": "127.0.0.2", "node_id": 0x0200007F}],
             "uptime": 3725.0,
             "stats": {"token_rotation_ms": 0.5, "delivered_msgs_per_s": 12.0,
                       "delivered_bytes_per_s": 2048.0, "delivered_msgs": 100,
                       "delivered_bytes": 4096, "retransmits": 2, "token_retransmits": 1,
                       "bad_digest": 4, "refused": 0, "send_queue_msgs": 3,
                       "send_queue_bytes": 300, "rings_formed": 2, "leaves": 1,
                       "writer_holds": 7, "acks_sent": 5, "ack_stables": 3,
                       "busy_polls": 9, "busy_poll_ms": 12,
                       "rx_packets": 1, "tx_packets": 1}},
    "services": {"clm": {"view": 8, "members": ["127.0.0.1", "127.0.0.2"], "trackers": 0},
                 "ckpt": {"checkpoints": 2, "linked": 2, "sections": 5, "bytes": 1000},
                 "amf": {"state": "text only", "ok": True}},
}


def test_metric_names_and_values() -> None:
    text = _exposition(SAMPLE)
    for line in ("ais_up 1.0", "ais_ring_operational 1.0", "ais_ring_seq 8.0",
                 "ais_ring_members 2.0", "ais_ring_uptime_seconds 3725.0",
                 "ais_ring_token_rotation_seconds 0.0005",
                 "ais_ring_delivered_messages_total 100.0",
                 "ais_ring_delivered_bytes_total 4096.0", "ais_ring_retransmits_total 2.0",
                 "ais_ring_token_retransmits_total 1.0", "ais_ring_bad_digest_packets_total 4.0",
                 "ais_ring_refused_packets_total 0.0", "ais_ring_send_queue_messages 3.0",
                 "ais_ring_send_queue_bytes 300.0", "ais_ring_formed_total 2.0",
                 "ais_ring_leaves_total 1.0", "ais_ring_writer_holds_total 7.0",
                 "ais_ring_acks_sent_total 5.0", "ais_ring_ack_stables_total 3.0",
                 "ais_busy_polls_total 9.0", "ais_busy_poll_milliseconds_total 12.0",
                 "ais_clm_members 2.0", "ais_clm_view 8.0",
                 "ais_ckpt_checkpoints 2.0", "ais_ckpt_sections 5.0", "ais_ckpt_bytes 1000.0",
                 "ais_amf_ok 1.0",
                 'ais_ring_info{node="127.0.0.1",ring="127.0.0.1/8",state="operational"} 1.0'):
        assert line in text.splitlines(), line
    assert "ais_amf_state" not in text  # text values are not numbers


def test_render_reads_as_a_report() -> None:
    text = render(SAMPLE)
    lines = text.splitlines()
    assert lines[0] == "Node 127.0.0.1 (pid 10, executive up 1m 05s)"
    assert lines[1] == "Ring 127.0.0.1/8: operational, up 1h 02m 05s, 2 members (udpu port 5405)"
    assert "  127.0.0.1        node id 0x0100007f  (this node)" in lines
    assert "  token rotation   0.50 ms" in lines
    assert "  delivered        12.0 msgs/s, 2.0 KiB/s (total 100 msgs, 4.0 KiB)" in lines
    assert "  bad digest       4 packets" in lines
    assert "  send queue       3 msgs (300 B)" in lines
    assert "Service CKPT" in lines and "  sections         5" in lines
    assert "  members          127.0.0.1 127.0.0.2" in lines


def test_ais_status_without_an_executive_prints_one_line(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("AIS_SOCKET", str(tmp_path / "none.sock"))
    assert status_main([], out=io.StringIO()) == 1
    err = capsys.readouterr().err
    assert err == f"ais-status: no executive is running at {tmp_path / 'none.sock'}\n"


# ----------------------------------------------------------- executive helpers

def test_sd_notify_writes_to_the_notify_socket(tmp_path, monkeypatch) -> None:
    from ais.main import sd_notify
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False  # not under systemd
    path = str(tmp_path / "n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        s.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sd_notify("READY=1\nSTATUS=x") is True
        assert s.recv(100) == b"READY=1\nSTATUS=x"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        name = f"ais-test-{id(s)}"
        s.bind("\0" + name)  # abstract namespace, as systemd may hand out
        s.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify("STOPPING=1") is True
        assert s.recv(100) == b"STOPPING=1"
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert sd_notify("READY=1") is False  # logged, never raised


def test_reopen_log_files_after_a_move(tmp_path) -> None:
    from ais.log import reopen_log_files, setup_logging, teardown_logging
    logfile = tmp_path / "ais.log"
    cfg = config_mod.LoggingConfig(outputs=(config_mod.LogOutput.FILE,), logfile=str(logfile),
                                   debug=False, timestamp=False)
    setup_logging(cfg)
    try:
        log = logging.getLogger("ais.test")
        log.warning("before")
        logfile.rename(tmp_path / "ais.log.1")
        log.warning("still old")
        assert reopen_log_files() == [str(logfile)]
        log.warning("after")
        for h in logging.getLogger().handlers:
            h.flush()
        assert "before" in (tmp_path / "ais.log.1").read_text()
        assert "still old" in (tmp_path / "ais.log.1").read_text()
        assert logfile.read_text() == "warning [MAIN ] after\n"
        # a directory that vanished: reported, not raised
        logfile.unlink()
        tmp_path.joinpath("gone").mkdir()
        from ais.log import _installed
        h = next(h for h in _installed if isinstance(h, logging.FileHandler))
        h.baseFilename = str(tmp_path / "gone" / "x" / "ais.log")
        assert reopen_log_files() == []
    finally:
        teardown_logging()


def test_metrics_port_key() -> None:
    base = "network {\n bindnetaddr: 127.0.0.1\n mcastaddr: 226.94.1.1\n mcastport: 5405\n}\n"
    cfg = config_mod.parse_openais_conf(base)
    assert cfg.aisexec.metrics is None
    cfg = config_mod.parse_openais_conf(base + "aisexec {\n metrics_port: 9101\n}\n")
    assert cfg.aisexec.metrics == ("127.0.0.1", 9101)
    cfg = config_mod.parse_openais_conf(base + "aisexec {\n metrics_port: 0.0.0.0:9102\n}\n")
    assert cfg.aisexec.metrics == ("0.0.0.0", 9102)
    for bad in ("0", "70000", "host:1", "9101x", "1.2.3.4:"):
        with pytest.raises(config_mod.ConfigError, match="metrics_port"):
            config_mod.parse_openais_conf(base + f"aisexec {{\n metrics_port: {bad}\n}}\n")


def test_render_nests_records_a_service_reports() -> None:
    doc = {"node": "127.0.0.1", "services": {"amf": {
        "groups": [{"name": "g1", "ready": 2}, {"name": "g2", "ready": 0}],
        "nodes": {"127.0.0.1": {"units": ["u1", "u2"]}}, "components": 3}}}
    lines = render(doc).splitlines()
    assert lines[1] == "Ring: not started"
    assert lines[2:] == ["Service AMF", "  groups", "    - name g1, ready 2",
                         "    - name g2, ready 0", "  nodes", "    127.0.0.1",
                         "      units        u1 u2", "  components       3"]


def test_every_documented_metric_name_is_exported() -> None:
    import re

    import ais.metrics
    documented = re.findall(r"^    (ais_[a-z_]+)", ais.metrics.__doc__ or "", re.M)
    assert len(documented) >= 17
    exported = {line.split("{")[0].split(" ")[0] for line in _exposition(SAMPLE).splitlines()
                if line.startswith("ais_")}
    assert set(documented) - {"ais_"} <= exported, set(documented) - exported


def test_unit_and_logrotate_samples_say_what_the_executive_does() -> None:
    unit = (ROOT / "conf" / "aisexec.service").read_text().splitlines()
    assert "Type=notify" in unit and "KillSignal=SIGTERM" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert any(line.startswith("ExecStart=") and "aisexec -c " in line for line in unit)
    rot = (ROOT / "conf" / "logrotate.d" / "ais").read_text()
    assert "postrotate" in rot and "--signal=HUP aisexec.service" in rot
    assert "copytruncate" not in rot.replace("no copytruncate", "")
