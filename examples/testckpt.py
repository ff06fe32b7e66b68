"""testckpt: exercise the checkpoint API and print every call's SaErrorT, as the C test does.

Run against a running executive (``AIS_SOCKET`` names its socket)::

    python examples/testckpt.py [NAME]

Each line reads ``<SAF call> result <n> (should be <m>)``; a run is good when
every ``n`` equals its ``m`` (SA_OK is 1; the expected errors show the limits
being enforced).  Data read back, the section list and the status are printed
too.  The checkpoint (default name ``checkpoint``) is unlinked at the end.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from saf import ckpt  # noqa: E402
from saf.errors import SA_OK, SaError  # noqa: E402
from saf.types import SA_TIME_END  # noqa: E402

SECOND = 1_000_000_000
FAILURES = 0


def call(label: str, expected: int, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """Run one API call, print its SaErrorT next to the expected one."""
    global FAILURES
    result = None
    try:
        result = fn(*args, **kw)
        code = SA_OK
    except SaError as err:
        code = err.code
        index = getattr(err, "erroneous_vector_index", None)
        if index is not None:
            label += f" (erroneous vector {index})"
    print(f"{label} result {code} (should be {expected})")
    if code != expected:
        FAILURES += 1
    return result


def show_status(c: ckpt.CheckpointHandle) -> None:
    st = call("saCkptCheckpointStatusGet", SA_OK, c.status_get)
    if st is None:
        return
    a = st.checkpoint_creation_attributes
    print(f"\tcreation flags {a.creation_flags:#x}, checkpoint size {a.checkpoint_size}, "
          f"retention {a.retention_duration} ns")
    print(f"\tmax sections {a.max_sections}, max section size {a.max_section_size}, "
          f"max section id size {a.max_section_id_size}")
    print(f"\tnumber of sections {st.number_of_sections}, memory used {st.memory_used}")


def show_sections(c: ckpt.CheckpointHandle, chosen: int, title: str) -> None:
    it = call(f"saCkptSectionIteratorInitialize {title}", SA_OK,
              c.section_iterator_initialize, chosen, time.time_ns())
    if it is None:
        return
    for d in it:
        exp = "never" if d.expiration_time >= SA_TIME_END else f"{d.expiration_time} ns"
        print(f"\tsection {d.section_id!r} size {d.section_size} expires {exp} "
              f"state {d.section_state}")
    call("saCkptSectionIteratorFinalize", SA_OK, it.finalize)


def main(argv: list[str]) -> int:
    name = argv[1] if len(argv) > 1 else "checkpoint"
    attrs = ckpt.CreationAttributes(
        creation_flags=ckpt.SA_CKPT_WR_ALL_REPLICAS, checkpoint_size=100_000,
        retention_duration=5 * SECOND, max_sections=5, max_section_size=20_000,
        max_section_id_size=20)
    rw = ckpt.SA_CKPT_CHECKPOINT_READ | ckpt.SA_CKPT_CHECKPOINT_WRITE

    h = call("saCkptInitialize", SA_OK, ckpt.initialize)
    if h is None:
        return 1
    with h:
        c = call("saCkptCheckpointOpen", SA_OK, h.checkpoint_open, name, rw, attrs,
                 timeout=SECOND)
        if c is None:
            return 1
        call("saCkptCheckpointOpen other attributes", 14, h.checkpoint_open, name, rw,
             ckpt.CreationAttributes(max_sections=2, checkpoint_size=10, max_section_size=10))
        call("saCkptCheckpointOpen missing", 12, h.checkpoint_open, name + "-absent", rw)
        call("saCkptCheckpointOpen create without attributes", 7, h.checkpoint_open,
             name + "-x", rw | ckpt.SA_CKPT_CHECKPOINT_CREATE)
        call("saCkptCheckpointOpen name too long", 13, h.checkpoint_open, "n" * 300, rw)
        show_status(c)

        s1, s2 = b"section ID #1", b"section ID #2"
        call("saCkptSectionCreate", SA_OK, c.section_create, s1, b"Initial Data #0")
        call("saCkptSectionCreate again", 14, c.section_create, s1)
        call("saCkptSectionCreate id too long", 7, c.section_create, b"x" * 21)
        call("saCkptSectionCreate data too big", 7, c.section_create, b"big", b"x" * 20_001)
        call("saCkptCheckpointWrite", SA_OK, c.write,
             [ckpt.IOVector(s1, b"Data written at offset 0 "),
              ckpt.IOVector(s1, b"and more", 25)])
        call("saCkptCheckpointWrite missing section", 12, c.write,
             [ckpt.IOVector(s1, b"x"), ckpt.IOVector(b"no such section", b"y")])
        call("saCkptCheckpointWrite beyond maxSectionSize", 7, c.write,
             ckpt.IOVector(s1, b"x", 20_000))
        data = call("saCkptCheckpointRead", SA_OK, c.read, ckpt.IOVector(s1))
        if data:
            print(f"\tread {len(data[0])} bytes: {data[0]!r}")
        call("saCkptSectionOverwrite", SA_OK, c.section_overwrite, s1, b"Overwritten data")
        data = call("saCkptCheckpointRead", SA_OK, c.read,
                    [ckpt.IOVector(s1, size=11), ckpt.IOVector(s1, offset=12)])
        if data:
            print(f"\tread {[bytes(d) for d in data]}")

        call("saCkptSectionCreate with expiration", SA_OK, c.section_create, s2, b"soon",
             expiration_time=time.time_ns() + 3600 * SECOND)
        show_sections(c, ckpt.SA_CKPT_SECTIONS_ANY, "ANY")
        show_sections(c, ckpt.SA_CKPT_SECTIONS_FOREVER, "FOREVER")
        show_sections(c, ckpt.SA_CKPT_SECTIONS_GEQ_EXPIRATION_TIME, "GEQ_EXPIRATION_TIME")
        call("saCkptSectionExpirationTimeSet", SA_OK, c.section_expiration_time_set, s2,
             SA_TIME_END)
        call("saCkptSectionDelete", SA_OK, c.section_delete, s2)
        call("saCkptSectionDelete again", 12, c.section_delete, s2)
        show_status(c)

        call("saCkptCheckpointSynchronize (all replicas)", 21, c.synchronize, SECOND)
        call("saCkptActiveCheckpointSet (all replicas)", 21, c.active_checkpoint_set)
        call("saCkptCheckpointRetentionDurationSet", SA_OK, c.retention_duration_set,
             2 * SECOND)

        ro = call("saCkptCheckpointOpen read only", SA_OK, h.checkpoint_open, name,
                  ckpt.SA_CKPT_CHECKPOINT_READ)
        if ro is not None:
            call("saCkptCheckpointWrite read only", 11, ro.write, ckpt.IOVector(s1, b"x"))
            call("saCkptCheckpointClose", SA_OK, ro.close)
            call("saCkptCheckpointClose again", 9, ro.close)
        call("saCkptCheckpointClose", SA_OK, c.close)
        call("saCkptCheckpointUnlink", SA_OK, h.checkpoint_unlink, name)
        call("saCkptCheckpointUnlink again", 12, h.checkpoint_unlink, name)
    print(f"Finalize result {SA_OK} (should be 1)")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
