"""Per-packet encryption and authentication of ring packets.

Cipher: AES-256-OCB (RFC 7253, pycryptodome), a 120-bit nonce per packet
(random session id and packet counter), 128-bit tag.  It was the fastest
candidate at every size we measured, and it is safe as we use it:

* ``python bench/crypto_bench.py --seconds 0.5`` on the development machine
  (2 cores with AES-NI, PCLMUL and SHA-NI; pycryptodome 4.4; one core;
  thousands of packets/s, seal / open):

  ==============================  ==========  ==========  ===========
  candidate                        100 B       1400 B      64 KiB
  ==============================  ==========  ==========  ===========
  AES-256-GCM, 96-bit nonce        22 / 21     20 / 20     14.3 / 12.9
  ChaCha20-Poly1305, 96-bit        49 / 51     44 / 46     8.2 / 7.6
  XChaCha20-Poly1305, 192-bit      42 / 43     39 / 39     7.9 / 7.7
  AES-256-CTR + HMAC-SHA256/128    88 / 89     79 / 75     16.1 / 15.0
  AES-256-OCB, 120-bit nonce       91 / 93     84 / 89     29.9 / 27.4
  AES-256-SIV, 128-bit nonce       8.6 / 8.7   8.4 / 8.1   4.8 / 4.8
  this module (OCB + replay)       89 / 89     84 / 83     29.7 / 26.4
  ==============================  ==========  ==========  ===========

  At 1400 B this module seals 117 MB/s and opens 116 MB/s (64 KiB: 1.9 and
  1.7 GB/s); the loopback UDP ceiling on the same machine is about 730 MB/s
  (520 k datagrams/s of 1400 B), so one core of crypto, not the kernel,
  bounds a node, and the per-packet cost (about 12 us) matters more than
  bulk speed.  Interleaved repeated runs put OCB 5-10 % ahead of CTR+HMAC at
  1400 B and level at 100 B; GCM loses because pycryptodome builds GHASH
  tables for every new cipher object, which dominates small packets.
* Safety: OCB is a one-pass AEAD with a standard security proof; its weak
  point is nonce reuse.  The 120-bit nonce is a 64-bit random session id,
  drawn from ``os.urandom`` once per ``Crypto`` (per process start), and a
  56-bit packet counter: within a session nonces never repeat, and two
  sessions collide only if their random ids do -- after 2**20 process starts
  under one key, a chance of about 2**-25, and even then only if both count
  through the same counters.  A year at the loopback ceiling is about 2**44
  packets of 1400 B (2**50 AES blocks); OCB's privacy/forgery bound, roughly
  blocks**2 / 2**128, is then about 2**-27 -- with one key for the cluster's
  lifetime.  (96-bit random nonces, as GCM/ChaCha20 take, pass 2**-32 after
  only 2**32 packets: hours of a busy ring.)  The OCB patents have been
  abandoned by their owner.
* The runner-up, AES-CTR + HMAC-SHA256 (encrypt-then-MAC, the reference's
  own shape), is the fallback if OCB is ever unavailable.

Two implementations of the same cipher: the ``cryptography`` package's
``AESOCB3`` (OpenSSL) when it is installed (``pip install pyopenais[fast]``),
pycryptodome's OCB otherwise.  Both implement RFC 7253 with the same key,
nonce and tag length, so their packets are byte-identical (``test_crypto``
checks it both ways) and nodes with and without the package form one ring.
The difference is per-packet cost: pycryptodome builds a new cipher object
(key schedule, OCB tables, a dozen ctypes calls) for every nonce, about 7 of
its 13 us per 1400-byte seal; ``AESOCB3`` keeps one key object and takes the
nonce per call, about 1 us per seal or open.  On a ring at Ethernet frame
sizes that is a fifth of an executive's time per frame (``bench/netns_bench.py``).

Key derivation: HKDF-SHA256 (RFC 5869) over the whole authkey, with a fixed
salt and a context string naming the purpose and version, so that another use
of the same authkey (or a later packet format) gets an unrelated key.

Replay: a byte-identical copy of an authenticated packet is a network
duplicate or an attacker's replay (a retransmission by the ring is sealed
again, under a new counter).  Each ``Crypto`` keeps, per sender session it
has heard (at most ``MAX_SESSIONS``, least recently heard evicted), the
highest counter and a bitmap of the ``replay_window`` counters below it, as
IPsec and DTLS do.  A packet whose counter is in the bitmap, or older than
the window, raises ``ReplayedPacket``: old packets stay refused however much
traffic has passed since, so a departed node's packets cannot be replayed
later to disturb the ring.  The check reads the state before decrypting (a
replay costs no AES) and updates it only after the tag verified, so forged
packets cannot evict or pre-empt genuine ones.  What remains: a receiver
that restarted has no sessions, and accepts a session it has never heard
once, from its current counter on; the ring's own checks (``guard.py``) and
its duplicate detection make such old packets harmless, and a foreign frame
or probe starts at most one gather per second.  A sender's own packets
reordered by more than the window are dropped as too old; the ring asks for
them again.  A coalesced read (``UDP_GRO``) that is one sender's next
packets in order is opened by ``open_run`` with one move of the state for
the run, the same outcome as opening each in turn; any other read is opened
one datagram at a time.  Keep one ``Crypto`` per receiving node: an instance shared by
several receivers (a simulator) would take the second receiver's copy of a
multicast for a replay; pass ``replay_window=0`` there.

Overhead and cost: the layout is unchanged (version byte, 15-byte nonce,
16-byte tag: 32 bytes), and the window costs a dict lookup and a shift of a
``replay_window``-bit integer per packet (see ``bench/crypto_bench.py``).
Format version 2 (session + counter nonces) derives another key than
version 1, so mixed clusters refuse each other's packets ("invalid
digest"): upgrade all nodes together.
"""
from __future__ import annotations

import os
import struct
from collections import OrderedDict

from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF

try:  # the faster implementation of the same cipher (see the module docstring)
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESOCB3
except ImportError:  # pragma: no cover - depends on what is installed
    AESOCB3 = None  # type: ignore[assignment,misc]
    InvalidTag = ValueError  # type: ignore[assignment,misc]

# BadPacket is declared once, with the wire formats; crypto failures are one kind of it.
from ais.totem.wire import BadPacket


class InvalidDigest(BadPacket):
    """The packet does not authenticate under our key (wrong key, damaged, forged, short)."""


class ReplayedPacket(InvalidDigest):
    """An authentic packet whose nonce was seen recently: a duplicate or a replay."""


#: the format byte; bump it when the layout or cipher changes
VERSION = 2
#: minimum authkey length accepted here (aisexec itself requires the full 128 bytes)
MIN_KEY_BYTES = 32
#: counters below the highest one remembered per sender session
DEFAULT_REPLAY_WINDOW = 4096
#: sender sessions remembered (least recently heard evicted)
MAX_SESSIONS = 1024
#: the OCB implementations ``Crypto(backend=...)`` takes; the first available is the default
BACKENDS = ("cryptography", "pycryptodome") if AESOCB3 is not None else ("pycryptodome",)

# Sealed packet:
#   0       1                         16                        n-16      n
#   +-------+-------------------------+-------------------------+---------+
#   | ver=2 | nonce: 15 bytes         | ciphertext (len(plain)) | tag: 16 |
#   +-------+-------------------------+-------------------------+---------+
#   nonce = session id (8 random bytes, per Crypto) | counter (7 bytes, from 1)
# The version byte is not fed to the cipher as associated data (that costs a
# fifth of the time of a 1400-byte seal): it is bound through the key instead,
# since the HKDF context names the version, so a packet of another version
# never authenticates under this key.  The nonce is bound by the cipher.
SEALED_HEADER = struct.Struct("!B15s")
TAG_BYTES = 16
#: bytes seal() adds to a plaintext
OVERHEAD = SEALED_HEADER.size + TAG_BYTES
_HEADER = SEALED_HEADER.size

_HKDF_SALT = b"ais totem ring key derivation"
_HKDF_CONTEXT = b"ais totem packet key v%d aes-256-ocb" % VERSION
_VERSION_BYTE = bytes([VERSION])
_NONCE_BYTES = 15  # OCB takes at most 120 bits
_SESSION_BYTES = 8
_COUNTER_LIMIT = 1 << 8 * (_NONCE_BYTES - _SESSION_BYTES)
_COUNTER_MASK = _COUNTER_LIMIT - 1


class Crypto:
    """Seals and opens ring packets with a key derived from the shared authkey."""

    def __init__(self, authkey: bytes, *, replay_window: int = DEFAULT_REPLAY_WINDOW,
                 backend: str | None = None) -> None:
        """
        Args:
            authkey: the cluster's shared secret (128 bytes from ``ais-keygen``).
            replay_window: counters remembered per sender session; 0 disables the check.
            backend: one of ``BACKENDS``; None: the fastest installed.
        Raises:
            ValueError: the key is shorter than ``MIN_KEY_BYTES``, or an unknown backend.
        """
        if len(authkey) < MIN_KEY_BYTES:
            raise ValueError(f"authkey too short: {len(authkey)} bytes, need {MIN_KEY_BYTES}")
        backend = backend or BACKENDS[0]
        if backend not in BACKENDS:
            raise ValueError(f"OCB backend {backend!r} not available (have {BACKENDS})")
        self.backend = backend
        self._key: bytes = HKDF(bytes(authkey), 32, _HKDF_SALT, SHA256,
                                context=_HKDF_CONTEXT)  # type: ignore[assignment]
        #: one key object for every packet (cryptography); None: a cipher per packet
        self._ocb = AESOCB3(self._key) if backend == "cryptography" else None
        self._window = replay_window
        self._mask = (1 << replay_window) - 1
        #: sender session id -> [highest counter, bitmap: bit i = counter (highest - i) seen]
        self._sessions: OrderedDict[bytes, list[int]] = OrderedDict()
        self._last_session: bytes | None = None  #: the one moved to the end last
        self._last_state: list[int] | None = None  #: its entry in ``_sessions``
        self._session = os.urandom(_SESSION_BYTES)
        self._prefix = _VERSION_BYTE + self._session  #: a sealed packet's first bytes
        self._counter = 0

    def seal(self, plain: bytes) -> bytes:
        """Encrypt and authenticate one packet under the next nonce of this session.

        Returns:
            ``OVERHEAD`` bytes more than ``plain``.
        """
        counter = self._counter = self._counter + 1
        if counter >= _COUNTER_LIMIT:  # 2**56 packets: not in this universe, but exact
            self._session, self._counter = os.urandom(_SESSION_BYTES), 1
            self._prefix = _VERSION_BYTE + self._session
            counter = 1
        tail = counter.to_bytes(_NONCE_BYTES - _SESSION_BYTES, "big")
        nonce = self._session + tail
        if self._ocb is not None:
            return b"".join((self._prefix, tail, self._ocb.encrypt(nonce, plain, None)))
        cipher = AES.new(self._key, AES.MODE_OCB, nonce=nonce)
        body, tag = cipher.encrypt_and_digest(plain)
        return _VERSION_BYTE + nonce + body + tag

    def open_untrusted(self, data: bytes) -> bytes:
        """Authenticate and decrypt one datagram from the network.

        Returns:
            the plaintext given to ``seal`` by a holder of the same authkey.
        Raises:
            InvalidDigest: anything that does not authenticate (never another
                exception); its subclass ReplayedPacket for a packet of a sender
                session seen already or older than the window.
        """
        if len(data) < OVERHEAD or data[0] != VERSION:
            raise InvalidDigest(f"bad header or short packet ({len(data)} bytes)")
        nonce = bytes(data[1:_HEADER])
        window = self._window
        if window:
            session = nonce[:_SESSION_BYTES]
            counter = int.from_bytes(nonce[_SESSION_BYTES:], "big")
            state = self._last_state if session == self._last_session \
                else self._sessions.get(session)
            if state is not None and counter <= state[0]:
                back = state[0] - counter
                if back >= window or state[1] >> back & 1:
                    raise ReplayedPacket("packet seen already or older than the replay window")
        try:
            if self._ocb is not None:
                plain = self._ocb.decrypt(nonce, data[_HEADER:], None)
            else:
                cipher = AES.new(self._key, AES.MODE_OCB, nonce=nonce)
                plain = cipher.decrypt_and_verify(data[_HEADER:-TAG_BYTES],
                                                  data[-TAG_BYTES:])
        except InvalidTag:
            raise InvalidDigest("MAC check failed") from None
        except (ValueError, TypeError) as e:
            raise InvalidDigest(str(e)) from None
        if window:
            state = self._heard(session, state)
            high = state[0]
            if counter > high:
                state[1] = (state[1] << (counter - high) | 1) & self._mask \
                    if counter - high < window else 1
                state[0] = counter
            else:
                state[1] |= 1 << (high - counter)
        return plain

    def _heard(self, session: bytes, state: list[int] | None) -> list[int]:
        """``session``'s replay state, made the most recently heard (at the end,
        for eviction); ``state`` None: a new one, nothing heard yet (counters
        start at 1), the least recently heard session evicted to make room."""
        sessions = self._sessions
        if state is None:
            if len(sessions) >= MAX_SESSIONS:
                sessions.popitem(last=False)
            state = sessions[session] = [0, 0]
        elif session != self._last_session:
            # a run of packets from one sender finds it at the end already
            sessions.move_to_end(session)
        self._last_session, self._last_state = session, state
        return state

    def open_run(self, data: bytes, seg: int) -> list[bytes] | None:
        """Open a coalesced run of datagrams (``seg`` bytes each, the last
        maybe shorter) that one sender sealed one after another, in one pass.

        The common case of a ``UDP_GRO`` read: one session, consecutive
        counters, all above what was heard from it.  Then every datagram is
        authenticated and decrypted, and the replay state moves once for the
        whole run, exactly as ``open_untrusted`` on each in turn would have
        moved it.  Anything else -- another shape, a counter not above the
        state, a datagram that does not authenticate -- returns None with the
        state untouched: open the datagrams one by one (which sorts out the
        replays and forgeries and counts them).
        """
        ocb, window, size = self._ocb, self._window, len(data)
        if ocb is None or seg < OVERHEAD or size % seg and size % seg < OVERHEAD:
            return None
        view = memoryview(data)
        first = int.from_bytes(data[1:_HEADER], "big")
        session = data[1:1 + _SESSION_BYTES]
        if window:
            state = self._last_state if session == self._last_session \
                else self._sessions.get(session)
            if state is not None and first & _COUNTER_MASK <= state[0]:
                return None
        plains = []
        expect = first
        decrypt = ocb.decrypt
        try:
            for i in range(0, size, seg):
                nonce = data[i + 1:i + _HEADER]
                # (a 120-bit nonce one above the last: the same session, the
                # next counter, since counters never reach the session's bits)
                if data[i] != VERSION or int.from_bytes(nonce, "big") != expect:
                    return None
                expect += 1
                plains.append(decrypt(nonce, view[i + _HEADER:i + seg], None))
        except (InvalidTag, ValueError, TypeError):
            return None
        if window:
            state = self._heard(session, state)
            last = (expect - 1) & _COUNTER_MASK
            bits = (1 << len(plains)) - 1  # counters last, last - 1, ... of the run
            shift = last - state[0]
            state[1] = (state[1] << shift | bits) & self._mask if shift < window \
                else bits & self._mask
            state[0] = last
        return plains


__all__ = ["BACKENDS", "BadPacket", "Crypto", "DEFAULT_REPLAY_WINDOW", "InvalidDigest",
           "MAX_SESSIONS", "OVERHEAD", "ReplayedPacket", "VERSION"]
