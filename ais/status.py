"""ais-status: the local executive's ring and services at a glance.

Usage::

    ais-status                 # human-readable
    ais-status --json          # one JSON document (the executive's, as sent)
    ais-status --watch 2       # refresh every 2 s until interrupted

It connects to the executive of this node over its client socket
(``$AIS_SOCKET``, default /var/run/ais/aisexec.sock) like any SAF client, so
the same rule applies: root, the executive's user, or a member of its
configured group.  When no executive runs, or the caller is refused, it
prints one line on stderr and exits 1.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO
from collections.abc import Sequence

from saf import _status_wire as sw
from saf._conn import one_shot, socket_path
from saf.errors import IpcProtocolError, Library, SaError, Security, Timeout, TryAgain

#: seconds to wait for the executive's answer
TIMEOUT = 5.0


class StatusError(Exception):
    """Why there is no status to show: one line for the user."""


def fetch_status(timeout: float = TIMEOUT) -> dict[str, Any]:
    """The local executive's status document.

    Raises:
        StatusError: no executive, refused, no answer, or a garbled one.
    """
    path = socket_path()
    try:
        body = one_shot(sw.STATUS_SERVICE_ID, sw.STATUS_REQ_GET, b"", timeout)
        return sw.decode_status_untrusted(body)
    except TryAgain:
        raise StatusError(f"no executive is running at {path}") from None
    except Security:
        raise StatusError(f"refused by the executive at {path}: only root, its user and "
                          "members of its group may ask") from None
    except Timeout:
        raise StatusError(f"the executive at {path} did not answer within {timeout:g} s") \
            from None
    except (Library, IpcProtocolError) as exc:
        raise StatusError(f"the executive at {path} failed: {exc}") from None
    except SaError as exc:
        raise StatusError(f"the executive at {path} answered {exc.sa_name}") from None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s"
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{d}d"] if d else []
    if d or h:
        parts.append(f"{h}h")
    parts += [f"{m:02d}m" if parts else f"{m}m", f"{s:02d}s"]
    return " ".join(parts)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _value(v: Any) -> str:
    if isinstance(v, list):
        return " ".join(_value(x) for x in v) if v else "-"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_value(x)}" for k, x in v.items())
    if v is None:
        return "-"
    return str(v)


def render(doc: dict[str, Any]) -> str:
    """The human-readable report for one status document."""
    out = []
    node = doc.get("node", "?")
    pid = f"pid {doc['pid']}, " if "pid" in doc else ""
    out.append(f"Node {node} ({pid}executive up {_duration(doc.get('uptime'))})")
    ring = doc.get("ring")
    if ring is None:
        out.append("Ring: not started")
    else:
        members = ring.get("members", [])
        out.append(f"Ring {ring.get('id') or '-'}: {ring.get('state')}, up "
                   f"{_duration(ring.get('uptime'))}, {len(members)} member"
                   f"{'' if len(members) == 1 else 's'} ({ring.get('transport')} port "
                   f"{ring.get('port')})")
        for m in members:
            me = "  (this node)" if m.get("address") == node else ""
            out.append(f"  {m.get('address'):<16} node id {m.get('node_id'):#010x}{me}")
        st = ring.get("stats", {})
        rot = st.get("token_rotation_ms")
        out.append("Ring statistics")
        rows = [
            ("token rotation", "-" if rot is None else f"{rot:.2f} ms"),
            ("delivered", f"{st.get('delivered_msgs_per_s', 0):.1f} msgs/s, "
                          f"{_size(st.get('delivered_bytes_per_s', 0))}/s "
                          f"(total {st.get('delivered_msgs', 0)} msgs, "
                          f"{_size(st.get('delivered_bytes', 0))})"),
            ("retransmits", f"{st.get('retransmits', 0)} frames, "
                            f"{st.get('token_retransmits', 0)} tokens"),
            ("bad digest", f"{st.get('bad_digest', 0)} packets"),
            ("refused", f"{st.get('refused', 0)} packets"),
            ("send queue", f"{st.get('send_queue_msgs', 0)} msgs "
                           f"({_size(st.get('send_queue_bytes', 0))})"),
            ("rings formed", f"{st.get('rings_formed', 0)} (leaves seen "
                             f"{st.get('leaves', 0)})"),
        ]
        out += [f"  {k:<16} {v}" for k, v in rows]
    for name, section in sorted(doc.get("services", {}).items()):
        out.append(f"Service {name.upper()}")
        out += _section(section, 1)
    return "\n".join(out)


def _section(section: dict[str, Any], depth: int) -> list[str]:
    """A service's section: scalars and plain lists on one line, nested records below."""
    pad = "  " * depth
    lines = []
    for k, v in section.items():
        if isinstance(v, dict) and any(isinstance(x, (dict, list)) for x in v.values()):
            lines.append(f"{pad}{k}")
            lines += _section(v, depth + 1)
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            lines.append(f"{pad}{k}")
            lines += [f"{pad}  - {_value(x)}" for x in v]
        else:
            lines.append(f"{pad}{k:<{max(1, 18 - len(pad))}} {_value(v)}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ais-status",
        description="Show this node's ring (id, state, members, uptime, statistics) and one "
                    "section per service, from the local executive.",
        epilog="The executive is found at $AIS_SOCKET (default /var/run/ais/aisexec.sock). "
               "Exit status: 0 shown, 1 no executive / refused / no answer.")
    p.add_argument("--json", action="store_true",
                   help="print the status document as JSON (one line per refresh)")
    p.add_argument("--watch", type=float, metavar="SECONDS",
                   help="refresh every SECONDS until interrupted")
    p.add_argument("--count", type=int, metavar="N",
                   help="with --watch: stop after N reports")
    return p


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = out or sys.stdout
    if args.watch is not None and args.watch <= 0:
        print("ais-status: --watch needs a positive number of seconds", file=sys.stderr)
        return 2
    shown = 0
    try:
        while True:
            try:
                doc = fetch_status()
            except StatusError as exc:
                print(f"ais-status: {exc}", file=sys.stderr)
                return 1
            if args.json:
                out.write(json.dumps(doc, sort_keys=True) + "\n")
            else:
                if args.watch is not None and out.isatty():
                    out.write("\x1b[H\x1b[2J")  # clear the screen between refreshes
                out.write(render(doc) + "\n")
            out.flush()
            shown += 1
            if args.watch is None or (args.count is not None and shown >= args.count):
                return 0
            if args.json is False and not out.isatty():
                out.write("\n")
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (``ais-status --watch 1 | head``): not an error.
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
