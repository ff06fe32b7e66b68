"""The ring's shared key: ``ais-keygen`` / ``python -m ais.keygen`` and :func:`load_authkey`.

Every node of a cluster must hold the same 128 random bytes; packets sealed
with another key fail their digest check and are dropped ("invalid digest").
Generate the key once, copy it to every node with mode 0400.
"""
from __future__ import annotations

import argparse
import logging
import os
import stat
import sys
import tempfile
from collections.abc import Sequence

from ais.config import ConfigError

#: Bytes in a key; the reference read exactly this many.
AUTHKEY_SIZE = 128
DEFAULT_AUTHKEY = "/etc/ais/authkey"

logger = logging.getLogger(__name__)


class AuthKeyError(ConfigError):
    """The key is missing, unreadable or the wrong size; ``str()`` is ``path: msg``."""

    def __init__(self, path: str, msg: str) -> None:
        super().__init__(path, 0, 0, msg)


def load_authkey(path: str) -> bytes:
    """Read the ring key.

    Returns:
        Exactly :data:`AUTHKEY_SIZE` bytes.
    Raises:
        AuthKeyError: missing, unreadable, or not exactly 128 bytes.
    """
    try:
        # stat first: opening a FIFO or device by mistake could block or never end.
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise AuthKeyError(path, "key is not a regular file")
        with open(path, "rb") as f:
            # Read one byte more than needed so a too-long key is noticed.
            key = f.read(AUTHKEY_SIZE + 1)
    except OSError as exc:
        raise AuthKeyError(path, f"cannot read key: {exc.strerror}") from None
    if len(key) != AUTHKEY_SIZE:
        size = f"{len(key)} bytes" if len(key) <= AUTHKEY_SIZE else "more than 128 bytes"
        raise AuthKeyError(path, f"key is {size}, need {AUTHKEY_SIZE} "
                                 f"(make one with ais-keygen)")
    if st.st_mode & 0o077:
        # Not fatal (the reference did not check), but anyone who can read the
        # key can join the ring and read all traffic.
        logger.warning("%s: key is readable by group or others (mode %04o); use mode 0400",
                       path, stat.S_IMODE(st.st_mode))
    return key


def write_authkey(path: str, *, force: bool = False) -> None:
    """Write a fresh key to ``path`` with mode 0400, creating its directory.

    Raises:
        FileExistsError: ``path`` exists and ``force`` is false.
        OSError: the directory or file cannot be written.
    """
    key = os.urandom(AUTHKEY_SIZE)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if not force:
        # O_EXCL: never clobber a key that nodes of a running cluster share.
        _write_key(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400), key)
        return
    # The old key is mode 0400, so it cannot be opened for writing even by its
    # owner; write a new file beside it and rename it over the old one.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        _write_key(fd, key)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_key(fd: int, key: bytes) -> None:
    """Write ``key`` to the new file ``fd``, make it mode 0400, close it."""
    try:
        os.fchmod(fd, 0o400)  # the umask (or mkstemp's 0600) must not decide the mode
        view = memoryview(key)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="ais-keygen",
        description=f"Write {AUTHKEY_SIZE} random bytes to the openais key file (mode 0400).")
    parser.add_argument("-o", "--output", metavar="PATH", default=DEFAULT_AUTHKEY,
                        help=f"where to write the key (default {DEFAULT_AUTHKEY})")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing key (every node then needs the new one)")
    parser.add_argument("--if-missing", action="store_true",
                        help="keep an existing key and exit 0 (for set-up scripts)")
    args = parser.parse_args(argv)
    if args.if_missing and os.path.exists(args.output):
        print(f"Keeping the existing key {args.output}.")
        return 0
    print(f"Gathering {AUTHKEY_SIZE * 8} bits for the key from the kernel's random source.")
    try:
        write_authkey(args.output, force=args.force)
    except FileExistsError as exc:
        if exc.filename != args.output:  # a file where its directory should be
            print(f"ais-keygen: cannot write {args.output}: {exc.filename} is not a directory",
                  file=sys.stderr)
            return 1
        print(f"ais-keygen: {args.output} already exists; not overwriting it "
              f"(use --force to replace it)", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"ais-keygen: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"Wrote the openais key to {args.output} ({AUTHKEY_SIZE} bytes, mode 0400).")
    print("Copy it to every node of the cluster, e.g. "
          f"install -D --mode=0400 authkey {DEFAULT_AUTHKEY}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
