"""Tests of ais.totem.crypto: round trips, and that untrusted input raises only InvalidDigest."""
from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ais.totem import crypto as crypto_mod
from ais.totem.crypto import (
    BACKENDS, DEFAULT_REPLAY_WINDOW, MAX_SESSIONS, OVERHEAD, VERSION, BadPacket, Crypto,
    InvalidDigest, ReplayedPacket)

pytestmark = pytest.mark.timeout(60)

KEY = bytes(range(128))
OTHER_KEY = bytes(reversed(range(128)))


@pytest.fixture(autouse=True, params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs once per installed OCB implementation (the default is the first)."""
    monkeypatch.setattr(crypto_mod, "BACKENDS",
                        (request.param, *(b for b in BACKENDS if b != request.param)))
    assert Crypto(KEY).backend == request.param
    return request.param


def test_both_backends_seal_the_same_bytes_and_open_each_other() -> None:
    if len(BACKENDS) < 2:
        pytest.skip("the cryptography package is not installed: one backend only")
    a = Crypto(KEY, backend="cryptography")
    b = Crypto(KEY, backend="pycryptodome")
    b._session = a._session  # same session and counter: the same nonce
    for size in (0, 1, 16, 100, 1400, 64 * 1024):
        plain = random.Random(size).randbytes(size)
        sealed = a.seal(plain)
        assert b.seal(plain) == sealed
        assert Crypto(KEY, backend="pycryptodome").open_untrusted(sealed) == plain
        assert Crypto(KEY, backend="cryptography").open_untrusted(sealed) == plain
        flipped = bytearray(sealed)
        flipped[-1] ^= 1
        for other in BACKENDS:
            with pytest.raises(InvalidDigest):
                Crypto(KEY, backend=other).open_untrusted(bytes(flipped))


def test_unknown_backend_refused() -> None:
    with pytest.raises(ValueError):
        Crypto(KEY, backend="rot13")


def test_round_trip_sizes() -> None:
    tx, rx = Crypto(KEY), Crypto(KEY)
    for size in (0, 1, 15, 16, 17, 100, 1400, 1441, 64 * 1024):
        plain = random.Random(size).randbytes(size)
        sealed = tx.seal(plain)
        assert len(sealed) == size + OVERHEAD
        assert sealed[0] == VERSION
        assert rx.open_untrusted(sealed) == plain


def test_ciphertext_is_fresh_and_not_plaintext() -> None:
    c = Crypto(KEY)
    plain = b"totem token " * 20
    a, b = c.seal(plain), c.seal(plain)
    assert a != b  # fresh nonce per packet, so retransmissions differ on the wire
    assert a[1:16] != b[1:16]
    assert b"totem token" not in a


def test_accepts_bytearray_and_memoryview() -> None:
    c = Crypto(KEY)
    assert Crypto(KEY).open_untrusted(bytearray(c.seal(b"x"))) == b"x"
    assert Crypto(KEY).open_untrusted(memoryview(c.seal(b"y"))) == b"y"


def test_wrong_key_is_invalid_digest() -> None:
    sealed = Crypto(KEY).seal(b"hello ring")
    with pytest.raises(InvalidDigest):
        Crypto(OTHER_KEY).open_untrusted(sealed)
    # One differing byte in a 128-byte key is another key.
    key2 = bytearray(KEY)
    key2[127] ^= 1
    with pytest.raises(InvalidDigest):
        Crypto(bytes(key2)).open_untrusted(sealed)


def test_every_truncation_is_invalid_digest() -> None:
    sealed = Crypto(KEY).seal(b"some payload of moderate size" * 3)
    rx = Crypto(KEY)
    for n in range(len(sealed)):
        with pytest.raises(InvalidDigest):
            rx.open_untrusted(sealed[:n])


def test_every_bit_flip_is_invalid_digest() -> None:
    sealed = Crypto(KEY).seal(b"flip me")
    rx = Crypto(KEY)
    for i in range(len(sealed)):
        for bit in (0, 3, 7):
            bad = bytearray(sealed)
            bad[i] ^= 1 << bit
            with pytest.raises(InvalidDigest):
                rx.open_untrusted(bytes(bad))
    assert rx.open_untrusted(sealed) == b"flip me"  # the damaged copies did not poison it


def test_appended_bytes_are_invalid_digest() -> None:
    sealed = Crypto(KEY).seal(b"abc")
    with pytest.raises(InvalidDigest):
        Crypto(KEY).open_untrusted(sealed + b"\0")


def test_garbage_of_many_lengths_raises_only_invalid_digest() -> None:
    rng = random.Random(20261)
    rx = Crypto(KEY)
    lengths = list(range(0, 200)) + [rng.randrange(200, 70000) for _ in range(200)]
    for n in lengths:
        for _ in range(5):
            data = rng.randbytes(n)
            if n and rng.random() < 0.5:
                data = bytes([VERSION]) + data[1:]  # get past the version check
            try:
                rx.open_untrusted(data)
            except InvalidDigest:
                continue
            except Exception as e:  # noqa: BLE001 - the point of the test
                pytest.fail(f"{type(e).__name__} for {n} bytes of garbage: {e}")
            pytest.fail(f"{n} bytes of garbage opened")


def test_replay_is_dropped_within_window() -> None:
    tx, rx = Crypto(KEY), Crypto(KEY, replay_window=8)
    first = tx.seal(b"first")
    assert rx.open_untrusted(first) == b"first"
    with pytest.raises(ReplayedPacket) as info:
        rx.open_untrusted(first)
    assert isinstance(info.value, InvalidDigest) and isinstance(info.value, BadPacket)
    # Once 8 newer packets of the session passed, it is older than the window:
    # still refused (the old nonce cache accepted it again here).
    for i in range(8):
        rx.open_untrusted(tx.seal(b"%d" % i))
    with pytest.raises(ReplayedPacket):
        rx.open_untrusted(first)


def test_replay_after_much_traffic_is_still_refused() -> None:
    """Issue 8.7: a departed node's packets replayed once the cache rolled over."""
    departed, busy, rx = Crypto(KEY), Crypto(KEY), Crypto(KEY)
    old = [departed.seal(b"join %d" % i) for i in range(5)]
    for p in old:
        rx.open_untrusted(p)
    for _ in range(3 * DEFAULT_REPLAY_WINDOW):  # the other nodes keep talking
        rx.open_untrusted(busy.seal(b"frame"))
    for p in old:
        with pytest.raises(ReplayedPacket):
            rx.open_untrusted(p)


def test_reordered_packets_within_the_window_are_accepted_once() -> None:
    tx, rx = Crypto(KEY), Crypto(KEY, replay_window=64)
    sealed = [tx.seal(b"%d" % i) for i in range(100)]
    order = list(range(40, 100)) + list(range(39, -1, -1))
    got = []
    for i in order:
        try:
            got.append(int(rx.open_untrusted(sealed[i])))
        except ReplayedPacket:
            pass
    # 99 is the highest; 36..99 are within 64 of it, the rest too old
    assert sorted(got) == list(range(36, 100))
    for i in (36, 50, 99):
        with pytest.raises(ReplayedPacket):
            rx.open_untrusted(sealed[i])


def test_sessions_are_independent_and_bounded() -> None:
    rx = Crypto(KEY)
    a, b = Crypto(KEY), Crypto(KEY)
    pa, pb = a.seal(b"a"), b.seal(b"b")  # both counter 1, different sessions
    assert rx.open_untrusted(pa) == b"a" and rx.open_untrusted(pb) == b"b"
    for _ in range(MAX_SESSIONS + 10):
        rx.open_untrusted(Crypto(KEY).seal(b"x"))
    assert len(rx._sessions) == MAX_SESSIONS


def test_the_least_recently_heard_session_is_forgotten_first() -> None:
    rx = Crypto(KEY)
    busy, quiet = Crypto(KEY), Crypto(KEY)
    rx.open_untrusted(busy.seal(b"b"))
    rx.open_untrusted(quiet.seal(b"q"))
    for _ in range(MAX_SESSIONS - 2):
        rx.open_untrusted(Crypto(KEY).seal(b"x"))
    for _ in range(3):  # a run from one sender
        rx.open_untrusted(busy.seal(b"b"))
    rx.open_untrusted(Crypto(KEY).seal(b"x"))  # one too many: the oldest goes
    assert busy._session in rx._sessions and quiet._session not in rx._sessions
    again = busy.seal(b"again")
    assert rx.open_untrusted(again) == b"again"  # its window was kept
    with pytest.raises(ReplayedPacket):
        rx.open_untrusted(again)


def test_nonces_never_repeat_within_a_session() -> None:
    tx = Crypto(KEY)
    nonces = {tx.seal(b"")[1:16] for _ in range(1000)}
    assert len(nonces) == 1000


def test_retransmission_is_not_a_replay() -> None:
    tx, rx = Crypto(KEY), Crypto(KEY)
    for _ in range(3):  # the ring resends the same frame: each seal is new
        assert rx.open_untrusted(tx.seal(b"same frame")) == b"same frame"


def test_replay_window_zero_disables_check() -> None:
    tx, rx = Crypto(KEY), Crypto(KEY, replay_window=0)
    sealed = tx.seal(b"dup")
    assert rx.open_untrusted(sealed) == rx.open_untrusted(sealed) == b"dup"


def test_forgery_with_genuine_nonce_does_not_block_genuine_packet() -> None:
    tx, rx = Crypto(KEY), Crypto(KEY)
    genuine = tx.seal(b"genuine")
    forged = genuine[:16] + Crypto(OTHER_KEY).seal(b"genuine")[16:]
    with pytest.raises(InvalidDigest) as info:
        rx.open_untrusted(forged)
    assert not isinstance(info.value, ReplayedPacket)
    assert rx.open_untrusted(genuine) == b"genuine"


def test_short_key_refused() -> None:
    with pytest.raises(ValueError):
        Crypto(b"short")


# --- coalesced runs (open_run) ------------------------------------------------------------

def _open_each(rx: Crypto, data: bytes, seg: int) -> list[bytes | str]:
    """What opening the datagrams one by one gives: plaintexts, or the error's name."""
    out: list[bytes | str] = []
    for i in range(0, len(data), seg):
        try:
            out.append(rx.open_untrusted(data[i:i + seg]))
        except InvalidDigest as e:
            out.append(type(e).__name__)
    return out


def _sessions(rx: Crypto) -> list[tuple[bytes, list[int]]]:
    return [(k, list(v)) for k, v in rx._sessions.items()]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_open_run_takes_a_run_as_opening_each_datagram_would(data: st.DataObject) -> None:
    """Random runs out of two senders' packets -- in order, with gaps, repeated,
    reordered, mixed, tampered with, older than the window -- go to two
    receivers: one opens each datagram, the other tries ``open_run`` first and
    opens each only when it declines.  Same plaintexts, same replay state
    (bitmaps, order of eviction) after every run; and ``open_run`` never
    declines a clean run of one sender's next packets."""
    window = data.draw(st.sampled_from([0, 8, 64, DEFAULT_REPLAY_WINDOW]))
    one, each = Crypto(KEY, replay_window=window), Crypto(KEY, replay_window=window)
    senders = [Crypto(KEY), Crypto(KEY)]
    sent: list[list[bytes]] = [[], []]
    taken = 0
    for _ in range(data.draw(st.integers(1, 12))):
        who = data.draw(st.integers(0, 1))
        size = data.draw(st.sampled_from([60, 200]))
        fresh = data.draw(st.integers(0, 6))
        for _ in range(data.draw(st.integers(0, 3))):  # a gap: packets this receiver lost
            sent[who].append(senders[who].seal(bytes(size)))
        new = [senders[who].seal(bytes([len(sent[who]) % 256]) * size) for _ in range(fresh)]
        sent[who].extend(new)
        kind = data.draw(st.sampled_from(["clean", "old", "mixed", "shuffled", "tampered"]))
        pool = sent[0] + sent[1]
        if kind == "clean" or not pool:
            run = new
        elif kind == "old":
            run = data.draw(st.lists(st.sampled_from(pool), max_size=5)) + new
        elif kind == "mixed":
            run = new + data.draw(st.lists(st.sampled_from(sent[1 - who] or pool), max_size=3))
        elif kind == "shuffled":
            run = data.draw(st.permutations(new))
        else:
            run = list(new)
            if run:
                k = data.draw(st.integers(0, len(run) - 1))
                bad = bytearray(run[k])
                bad[data.draw(st.integers(0, len(bad) - 1))] ^= 1
                run[k] = bytes(bad)
        if not run or len({len(p) for p in run}) > 1:
            continue  # GRO coalesces only datagrams of one size (the last may be shorter)
        seg, blob = len(run[0]), b"".join(run)
        clean = kind == "clean" and len(run) > 0
        got = one.open_run(blob, seg)
        if got is None:
            assert not (clean and one.backend == "cryptography"), "declined a clean run"
            got_all: list[bytes | str] = _open_each(one, blob, seg)
        else:
            taken += 1
            got_all = list(got)
        assert got_all == _open_each(each, blob, seg)
        assert _sessions(one) == _sessions(each)
        assert (one._last_session, one._last_state) == (each._last_session, each._last_state)
    if one.backend != "cryptography":
        assert taken == 0  # (pycryptodome: always one by one)


def test_open_run_declines_a_replayed_run_and_counts_nothing() -> None:
    tx, rx = Crypto(KEY), Crypto(KEY)
    run = [tx.seal(b"x" * 100) for _ in range(5)]
    blob = b"".join(run)
    first = rx.open_run(blob, len(run[0]))
    if rx.backend != "cryptography":
        assert first is None
        return
    assert first == [b"x" * 100] * 5
    before = _sessions(rx)
    assert rx.open_run(blob, len(run[0])) is None  # the same run again: a replay
    assert _sessions(rx) == before
    with pytest.raises(ReplayedPacket):
        rx.open_untrusted(run[2])


def test_open_run_declines_a_run_that_changes_sender_at_the_next_counter() -> None:
    """Two senders counting alike: the second's third packet follows the first's
    second by counter, but not by session."""
    a, b, rx = Crypto(KEY), Crypto(KEY), Crypto(KEY)
    run = [a.seal(b"a" * 50), a.seal(b"a" * 50)]
    b.seal(b"b" * 50), b.seal(b"b" * 50)
    run.append(b.seal(b"b" * 50))
    assert rx.open_run(b"".join(run), len(run[0])) is None
    assert rx._sessions == {}
