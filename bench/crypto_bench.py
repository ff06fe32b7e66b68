"""Measure candidate packet ciphers for the ring, and the loopback UDP ceiling.

Run:  python bench/crypto_bench.py [--seconds 0.5]

For each candidate and packet size (100 B, 1400 B, 64 KiB) it prints how many
packets per second one core can seal, and open, and the matching MB/s of
plaintext.  Each candidate is implemented exactly as a per-packet layer would
use it: a fresh random nonce, a new cipher object per packet (pycryptodome
cipher objects are single-use), the nonce carried in front of the ciphertext.
With the ``cryptography`` package installed it adds its AEADs, which keep
one key object and take the nonce per call.  It then prints
``ais.totem.crypto.Crypto`` with each installed backend (which adds a version
byte and the replay cache) and the UDP ceiling: MB/s of 1400-byte datagrams
sent and received over 127.0.0.1 for one second in one thread.

Only loopback is used (DESIGN.md, "Safety rules").  Speed is printed, never
asserted (STYLE P12).
"""
from __future__ import annotations

import argparse
import hmac
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from Crypto.Cipher import AES, ChaCha20_Poly1305
from Crypto.Protocol.KDF import HKDF
from Crypto.Hash import SHA256

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ais.totem.crypto import BACKENDS, Crypto  # noqa: E402

SIZES = (100, 1400, 64 * 1024)

Seal = Callable[[bytes], bytes]
Open = Callable[[bytes], bytes]


def _keys(n: int) -> tuple[bytes, ...]:
    material = os.urandom(128)
    return HKDF(material, 32, b"bench", SHA256, num_keys=n)  # type: ignore[return-value]


def aes_gcm() -> tuple[Seal, Open]:
    key = _keys(2)[0]

    def seal(p: bytes) -> bytes:
        n = os.urandom(12)
        c, t = AES.new(key, AES.MODE_GCM, nonce=n).encrypt_and_digest(p)
        return n + c + t

    def open_(d: bytes) -> bytes:
        return AES.new(key, AES.MODE_GCM, nonce=d[:12]).decrypt_and_verify(d[12:-16], d[-16:])

    return seal, open_


def chacha(nonce_len: int) -> Callable[[], tuple[Seal, Open]]:
    def make() -> tuple[Seal, Open]:
        key = _keys(2)[0]

        def seal(p: bytes) -> bytes:
            n = os.urandom(nonce_len)
            c, t = ChaCha20_Poly1305.new(key=key, nonce=n).encrypt_and_digest(p)
            return n + c + t

        def open_(d: bytes) -> bytes:
            return ChaCha20_Poly1305.new(key=key, nonce=d[:nonce_len]).decrypt_and_verify(
                d[nonce_len:-16], d[-16:])

        return seal, open_

    return make


def aes_ctr_hmac() -> tuple[Seal, Open]:
    ekey, mkey = _keys(2)

    def seal(p: bytes) -> bytes:
        iv = os.urandom(16)
        c = iv + AES.new(ekey, AES.MODE_CTR, nonce=b"", initial_value=iv).encrypt(p)
        return c + hmac.digest(mkey, c, "sha256")[:16]

    def open_(d: bytes) -> bytes:
        body, tag = d[:-16], d[-16:]
        if not hmac.compare_digest(hmac.digest(mkey, body, "sha256")[:16], tag):
            raise ValueError("MAC check failed")
        return AES.new(ekey, AES.MODE_CTR, nonce=b"", initial_value=body[:16]).decrypt(body[16:])

    return seal, open_


def aes_ocb() -> tuple[Seal, Open]:
    key = _keys(2)[0]

    def seal(p: bytes) -> bytes:
        n = os.urandom(15)
        c, t = AES.new(key, AES.MODE_OCB, nonce=n).encrypt_and_digest(p)
        return n + c + t

    def open_(d: bytes) -> bytes:
        return AES.new(key, AES.MODE_OCB, nonce=d[:15]).decrypt_and_verify(d[15:-16], d[-16:])

    return seal, open_


def aes_siv() -> tuple[Seal, Open]:
    k1, k2 = _keys(2)
    key = k1 + k2  # SIV takes two AES keys

    def seal(p: bytes) -> bytes:
        n = os.urandom(16)
        c, t = AES.new(key, AES.MODE_SIV, nonce=n).encrypt_and_digest(p)
        return n + t + c

    def open_(d: bytes) -> bytes:
        return AES.new(key, AES.MODE_SIV, nonce=d[:16]).decrypt_and_verify(d[32:], d[16:32])

    return seal, open_


def chosen(backend: str) -> Callable[[], tuple[Seal, Open]]:
    def make() -> tuple[Seal, Open]:
        c = Crypto(os.urandom(128), backend=backend)
        return c.seal, c.open_untrusted

    return make


def openssl_aead(kind: str) -> Callable[[], tuple[Seal, Open]]:
    """One key object for all packets, the nonce per call (the ``cryptography`` package)."""
    def make() -> tuple[Seal, Open]:
        from cryptography.hazmat.primitives.ciphers import aead
        nlen = 15 if kind == "AESOCB3" else 12
        obj = getattr(aead, kind)(_keys(2)[0])

        def seal(p: bytes) -> bytes:
            n = os.urandom(nlen)
            return n + obj.encrypt(n, p, None)

        def open_(d: bytes) -> bytes:
            return obj.decrypt(d[:nlen], d[nlen:], None)

        return seal, open_

    return make


CANDIDATES: dict[str, Callable[[], tuple[Seal, Open]]] = {
    "AES-256-GCM (96-bit nonce)": aes_gcm,
    "ChaCha20-Poly1305 (96-bit nonce)": chacha(12),
    "XChaCha20-Poly1305 (192-bit nonce)": chacha(24),
    "AES-256-CTR + HMAC-SHA256/128": aes_ctr_hmac,
    "AES-256-OCB (120-bit nonce)": aes_ocb,
    "AES-256-SIV (128-bit nonce)": aes_siv,
    **{f"ais Crypto ({b}, + replay cache)": chosen(b) for b in BACKENDS},
}
if "cryptography" in BACKENDS:
    CANDIDATES |= {f"{k} (cryptography, one key object)": openssl_aead(k)
                   for k in ("AESOCB3", "AESGCM", "ChaCha20Poly1305")}


def _rate(fn: Callable[[bytes], bytes], inputs: list[bytes], seconds: float) -> float:
    """Calls per second of ``fn`` over ``inputs``, repeated for about ``seconds``."""
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for x in inputs:
            fn(x)
        count += len(inputs)
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def bench_cipher(name: str, make: Callable[[], tuple[Seal, Open]], seconds: float) -> None:
    for size in SIZES:
        seal, open_ = make()
        plain = os.urandom(size)
        batch = 64 if size < 10_000 else 4
        s_rate = _rate(seal, [plain] * batch, seconds)
        # Opening needs distinct ciphertexts (the chosen layer drops replays):
        # about ``seconds`` worth, each opened once.
        sealed = [seal(plain) for _ in range(int(s_rate * seconds) + batch)]
        start = time.perf_counter()
        for d in sealed:
            open_(d)
        o_rate = len(sealed) / (time.perf_counter() - start)
        print(f"{name:38s} {size:6d} B  seal {s_rate:9.0f} pkt/s {s_rate * size / 1e6:8.1f} MB/s"
              f"   open {o_rate:9.0f} pkt/s {o_rate * size / 1e6:8.1f} MB/s")


def udp_ceiling(seconds: float = 1.0, size: int = 1400, burst: int = 32) -> float:
    """MB/s of ``size``-byte datagrams through 127.0.0.1, send and receive in one thread."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(1.0)
        dest = rx.getsockname()
        payload = os.urandom(size)
        got = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            for _ in range(burst):
                tx.sendto(payload, dest)
            for _ in range(burst):
                got += len(rx.recvfrom(65536)[0])
        return got / (time.perf_counter() - start) / 1e6
    finally:
        rx.close()
        tx.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="time per measurement")
    ap.add_argument("--only", help="run only candidates whose name contains this")
    args = ap.parse_args(argv)
    for name, make in CANDIDATES.items():
        if args.only and args.only.lower() not in name.lower():
            continue
        bench_cipher(name, make, args.seconds)
    for size, burst in ((1400, 32), (65000, 8)):  # an Ethernet frame; loopback's MTU
        mbs = udp_ceiling(size=size, burst=burst)
        print(f"loopback UDP ceiling: {size} B datagrams 127.0.0.1, 1 s: {mbs:.1f} MB/s"
              f" ({mbs * 1e6 / size:.0f} pkt/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
