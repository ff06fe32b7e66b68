"""aisexec: the executive's entry point (``python aisexec.py -c FILE``).

Start-up follows spec/executive.md: configuration, logging, a best-effort
priority and memory lock, the key, the ring's socket, the AMF model, the
services and the client socket, then the ring.  Anything wrong before the
ring starts ends the program with one clear line and a non-zero status.

Operation: SIGTERM or SIGINT makes the executive leave the ring cleanly
(the others re-form at once instead of after the token timeout) and exit 0;
SIGHUP reopens the log file (logrotate).  Under systemd (``Type=notify``,
``conf/aisexec.service``) it reports ``READY=1`` once its client socket
accepts connections and ``STOPPING=1`` when it begins to stop, by writing
to ``$NOTIFY_SOCKET`` (a few lines, no library).  ``metrics_port`` in the
aisexec section starts the Prometheus endpoint (``ais.metrics``).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

DEFAULT_CONFIG = "/etc/ais/openais.conf"

#: the release; setup.cfg reads it from here
__version__ = "0.1.0"

_DESCRIPTION = """\
Run the AIS executive of this node in the foreground: it joins the Totem ring
described by the configuration file and serves the SAF services (CLM, CKPT,
...) to the clients of this node over a Unix socket."""

_EPILOG = """\
signals:
  SIGTERM, SIGINT  leave the ring cleanly (the other nodes re-form at once), exit 0
  SIGHUP           reopen the log file (after logrotate moved it)

environment:
  NOTIFY_SOCKET    set by systemd for Type=notify: READY=1 once clients can
                   connect, STOPPING=1 when stopping

files:
  /etc/ais/openais.conf   configuration (network, logging, totem, aisexec, limits)
  /etc/ais/authkey        the cluster's key (ais-keygen writes it)
  /etc/ais/groups.conf    the AMF model (optional)

exit status: 0 after a clean stop, 1 on a start-up error.
See also: ais-status (ring and services at a glance), ais-keygen."""

logger = logging.getLogger("ais.main")


def _die(msg: str, status: int = 1) -> int:
    print(f"aisexec: {msg}", file=sys.stderr)
    return status


def _best_effort_realtime() -> None:
    """Raise priority and lock memory so health checks are not delayed by paging."""
    try:
        os.nice(-10)
    except OSError as e:
        logger.warning("could not raise scheduling priority: %s", e.strerror)
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mlockall(1 | 2) != 0:  # MCL_CURRENT | MCL_FUTURE
            logger.warning("could not lock memory: %s", os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as e:
        logger.warning("could not lock memory: %s", e)


def sd_notify(state: str) -> bool:
    """Send ``state`` ("READY=1", ...) to systemd's ``$NOTIFY_SOCKET``.

    Returns:
        False when not started by systemd with Type=notify, or the send failed.
    """
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path or path[0] not in "/@":
        return False
    addr = "\0" + path[1:] if path[0] == "@" else path  # "@": Linux abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError as e:
        logger.warning("cannot notify systemd at %s: %s", path, e.strerror or e)
        return False
    return True


def build_parser() -> argparse.ArgumentParser:
    """The command line of aisexec."""
    parser = argparse.ArgumentParser(
        prog="aisexec", description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, metavar="FILE",
                        help=f"openais.conf to read (default {DEFAULT_CONFIG})")
    parser.add_argument("--no-realtime", action="store_true",
                        help="skip raising priority and locking memory")
    parser.add_argument("--version", action="version",
                        version=f"aisexec (pyopenais) {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one executive in the foreground until SIGTERM or SIGINT.

    Returns:
        the exit status: 0 after a clean stop, 1 on a start-up error.
    """
    args = build_parser().parse_args(argv)

    # gevent is imported here, not at module level, so that `aisexec --help`
    # and configuration errors stay cheap.
    from ais import config as config_mod
    from ais import netif
    from ais.keygen import load_authkey
    from ais.log import NodeAdapter, log_elsewhere, notice, reopen_log_files, setup_logging

    try:
        cfg = config_mod.load_openais_conf(args.config)
    except config_mod.ConfigError as e:
        return _die(str(e))
    try:
        setup_logging(cfg.logging)
    except config_mod.ConfigError as e:
        return _die(str(e))

    def fail(msg: str) -> int:
        # One line on stderr, whatever the logging section says; the log file
        # and syslog get it too.
        log_elsewhere(logger, logging.ERROR, msg)
        return _die(msg)

    try:
        key = load_authkey(cfg.aisexec.authkey)
        interfaces = netif.local_ipv4_addresses()
        bind_addr = cfg.bind_address(interfaces)
        amf_model = config_mod.load_groups_conf(cfg.aisexec.groups) \
            if os.path.lexists(cfg.aisexec.groups) else None
        statedir = config_mod.prepare_statedir(cfg)
    except config_mod.ConfigError as e:
        return fail(str(e))
    notice(logger, "AIS Executive Service: starting (config %s)", cfg.path)
    if not args.no_realtime:
        _best_effort_realtime()
    if amf_model is None:
        logger.warning("no AMF model: %s does not exist", cfg.aisexec.groups)

    import gevent
    import gevent.event

    from ais.executive import GeventScheduler, create_host
    from ais.ipc import IpcLimits, IpcServer
    from ais.metrics import MetricsServer, RingStats
    from ais.services.ckpt import CkptLimits
    from ais.totem.crypto import Crypto
    from ais.totem.events import ConfChange, node_of
    from ais.totem.srp import Srp
    from ais.totem.transport import Transport, load_ring_seq

    node_id = node_of(bind_addr)
    node_log = NodeAdapter(logging.getLogger("ais.totem"), bind_addr)
    state_file = os.path.join(statedir, f"ringseq-{bind_addr}")
    iface_mtu = netif.interface_mtu(bind_addr, interfaces)
    totem_cfg = cfg.to_totem_config(iface_mtu)
    if iface_mtu is not None and totem_cfg.frame_size + config_mod.FRAME_OVERHEAD > iface_mtu:
        # It works (IP fragments them), but a lost fragment loses the frame.
        logger.warning("frames of %d bytes make datagrams larger than the MTU of the ring's "
                       "interface (%d): IP fragments them, and one lost fragment loses the "
                       "frame (see frame_size and netmtu)", totem_cfg.frame_size, iface_mtu)
    if cfg.network.members:
        # udpu: the ring refuses packets naming anyone else (ais/totem/guard.py)
        totem_cfg = dataclasses.replace(
            totem_cfg, members=tuple(node_of(str(m)) for m in cfg.network.members))
    logger.debug("frame size %d bytes", totem_cfg.frame_size)
    srp = Srp(node_id, totem_cfg, ring_seq=load_ring_seq(state_file), log=node_log)
    def fatal(exc: BaseException) -> None:
        logger.critical("internal error, exiting: %r", exc)
        logging.shutdown()
        os._exit(1)

    lim = cfg.limits
    host = create_host(node_id, GeventScheduler(on_error=fatal), {
        "clm": {"cluster_name": cfg.aisexec.clustername},
        "ckpt": {"limits": CkptLimits(max_checkpoints=lim.max_checkpoints,
                                      max_checkpoint_opens=lim.max_checkpoint_opens,
                                      max_sections=lim.max_sections)},
    }, model=amf_model)
    host.client_socket = cfg.aisexec.socket  # for the components AMF starts
    net = cfg.network
    ring_stats: RingStats | None = None

    def on_confchg(conf: ConfChange) -> None:
        if ring_stats is not None:
            ring_stats.on_confchg(conf)
        host.on_confchg(conf)

    transport = Transport(
        srp, Crypto(key), bind_addr=bind_addr, port=net.mcastport, mode=net.transport.value,
        mcast_addr=net.mcastaddr, members=[str(m) for m in net.members],
        on_deliver=host.on_deliver, on_confchg=on_confchg, on_stable=host.on_stable,
        log=node_log,
        state_file=state_file, busy_poll=cfg.totem.busy_poll / 1000.0)
    ring_stats = RingStats(srp, transport)
    status = host.service_by_name("status")
    if status is not None:
        status.attach(ring=ring_stats.snapshot,  # type: ignore[attr-defined]
                      services=lambda: list(host.services.values()), pid=os.getpid())
    ipc = IpcServer(host, cfg.aisexec.socket, group=cfg.aisexec.group, limits=IpcLimits(
        max_connections=lim.max_connections, max_queued_callbacks=lim.max_queued_callbacks,
        max_queued_bytes=lim.max_queued_bytes, max_buffered_bytes=lim.max_buffered_bytes,
        frame_timeout=lim.frame_timeout / 1000.0))
    ipc.on_request = transport.kick  # a client's next request is read at once
    # As the reference does: services and the client socket first, then the
    # ring; requests that need the ring wait in the host until it has formed.
    metrics = None
    if cfg.aisexec.metrics is not None and status is not None:
        maddr, mport = cfg.aisexec.metrics
        metrics = MetricsServer(status.snapshot, maddr, mport)  # type: ignore[attr-defined]
        try:
            metrics.start()
        except ImportError:
            return fail("metrics_port is set but prometheus_client is not installed "
                        "(pip install prometheus-client)")
        except OSError as e:
            return fail(f"cannot serve metrics on {maddr}:{mport}: {e.strerror or e}")
        notice(logger, "metrics on http://%s:%d/metrics", maddr, metrics.port)
    try:
        ipc.start()
    except OSError as e:
        if metrics is not None:
            metrics.stop()
        return fail(f"cannot serve {cfg.aisexec.socket}: {e}")
    notice(logger, "AIS Executive Service: started and ready to receive connections "
           "(node %s, %s on port %d, socket %s)", bind_addr, net.transport.value,
           net.mcastport, cfg.aisexec.socket)
    try:
        transport.start()
    except OSError as e:
        ipc.stop()
        if metrics is not None:
            metrics.stop()
        return fail(f"cannot open the ring socket on {bind_addr}:{net.mcastport}: {e}")
    host.attach_ring(transport)  # until now the host answered TryAgain / held requests
    ring_stats.start_sampling()
    # Start-up objects (modules, grammars: ~30,000) never die: keep them out of
    # the collector's full passes, which otherwise pause the loop for all of them.
    gc.freeze()

    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)

    def reopen() -> None:
        files = reopen_log_files()
        notice(logger, "SIGHUP: reopened %s", ", ".join(files) or "no log file")
    gevent.signal_handler(signal.SIGHUP, reopen)
    sd_notify(f"READY=1\nSTATUS=node {bind_addr}, socket {cfg.aisexec.socket}\n"
              f"MAINPID={os.getpid()}")
    stop.wait()
    sd_notify("STOPPING=1")
    notice(logger, "AIS Executive Service: stopping, leaving the ring")
    # The leave goes out first, so the others re-form while we close the rest.
    transport.leave()
    ring_stats.stop_sampling()
    ipc.stop()
    if metrics is not None:
        metrics.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
