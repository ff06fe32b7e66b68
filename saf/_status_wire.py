"""The status service's IPC format, declared once; shared by ``ais-status`` and the executive.

A status request is one ``STATUS_REQ_GET`` frame with an empty body on a
request channel of service ``STATUS_SERVICE_ID`` (same handshake and the
same credential check as every client).  The response body is one JSON
object, UTF-8, at most ``MAX_STATUS_BYTES``::

    {"format": 1, "node": "127.0.0.1", "pid": 1234, "uptime": 12.5,
     "ring": {...}, "services": {"clm": {...}, "ckpt": {...}}}

Why JSON here when every other body is a fixed ``struct`` layout: this is a
report for people and scripts, not a protocol two programs act on.  Each
service contributes a free-form section (``Service.status()``), so AMF or
EVS can add theirs without a new layout, and ``ais-status --json`` prints
what came over the wire.  Readers must ignore keys they do not know; keys
are only ever added within one ``format``.
"""
from __future__ import annotations

import json
from typing import Any

from saf.errors import IpcProtocolError

#: far from the SAF services' ids (CLM 1, CKPT 3, ...)
STATUS_SERVICE_ID = 32
#: the one request: "send me the status document"
STATUS_REQ_GET = 1
#: version of the document's layout
STATUS_FORMAT = 1
#: largest status document either side accepts
MAX_STATUS_BYTES = 1024 * 1024


def encode_status(doc: dict[str, Any]) -> bytes:
    """The response body for ``doc`` (its ``format`` key is set here).

    Raises:
        IpcProtocolError: the document is larger than ``MAX_STATUS_BYTES``.
    """
    try:
        data = json.dumps({"format": STATUS_FORMAT, **doc}, separators=(",", ":"),
                          allow_nan=False, default=str).encode()
    except (TypeError, ValueError) as exc:
        raise IpcProtocolError(f"status document: {exc}") from None
    if len(data) > MAX_STATUS_BYTES:
        raise IpcProtocolError(f"status document of {len(data)} bytes")
    return data


def decode_status_untrusted(body: bytes) -> dict[str, Any]:
    """The status document in a response body.  Raises only ``IpcProtocolError``."""
    if len(body) > MAX_STATUS_BYTES:
        raise IpcProtocolError(f"status document of {len(body)} bytes")
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise IpcProtocolError(f"status document: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != STATUS_FORMAT:
        raise IpcProtocolError("status document of an unknown format")
    return doc


__all__ = ["MAX_STATUS_BYTES", "STATUS_FORMAT", "STATUS_REQ_GET", "STATUS_SERVICE_ID",
           "decode_status_untrusted", "encode_status"]
