"""Pure helpers for the ring: the receive store, the send queue and reassembly.

Nothing here knows about states or timers; ``srp.py`` composes these.
"""
from __future__ import annotations

from collections import deque
from typing import NamedTuple

from .events import RingId
from .wire import FRAGMENT_ITEM, ITEM_FRAGMENT, ITEM_WHOLE, WHOLE_ITEM

_pack_fragment = FRAGMENT_ITEM.pack
_unpack_fragment = FRAGMENT_ITEM.unpack_from


class Frame(NamedTuple):
    """A received (or own) frame: who sent it, its flags and its packed payload."""

    sender: int
    flags: int
    payload: bytes


class RxStore:
    """Frames of one ring that are received and not yet freed.

    ``aru`` (all received up to) is the highest seq below which every frame is
    here or was freed; ``delivered`` is how far delivery has gone; ``freed`` is
    how far frames have been discarded as stable.  Invariant:
    ``freed <= aru`` and ``freed <= delivered`` while the ring is operational.
    """

    __slots__ = ("ring_id", "frames", "aru", "high", "delivered", "freed")

    def __init__(self, ring_id: RingId) -> None:
        self.ring_id = ring_id
        self.frames: dict[int, Frame] = {}
        self.aru = 0
        self.high = 0
        self.delivered = 0
        self.freed = 0

    def add(self, seq: int, frame: Frame) -> bool:
        """Store a frame; False if it is a duplicate or already freed."""
        if seq <= self.aru:
            return False
        frames = self.frames
        if seq in frames:
            return False
        frames[seq] = frame
        if seq > self.high:
            self.high = seq
        if seq == self.aru + 1:
            a = seq
            while a + 1 in frames:
                a += 1
            self.aru = a
        return True

    def missing(self, upto: int, limit: int) -> list[int]:
        """Up to ``limit`` seqs in (aru, upto] not received.

        Bounded by ``limit`` plus the number of held frames, whatever ``upto``
        a (possibly hostile) token claims.
        """
        out: list[int] = []
        frames = self.frames
        s = self.aru + 1
        while s <= upto and len(out) < limit:
            if s not in frames:
                out.append(s)
            s += 1
        return out

    def free(self, upto: int) -> None:
        """Discard frames up to ``upto`` (they are stable: everyone has them)."""
        if upto <= self.freed:
            return
        frames = self.frames
        if upto - self.freed > len(frames):
            for s in [s for s in frames if s <= upto]:
                del frames[s]
        else:
            for s in range(self.freed + 1, upto + 1):
                frames.pop(s, None)
        self.freed = upto


class SendQueue:
    """Application messages waiting for the token, packed into frames on demand.

    Small messages are packed several to a frame; a message too large for one
    frame is split into fragments, each starting a fresh frame, numbered so the
    receiver can join them again and detect a broken sequence.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < FRAGMENT_ITEM.size + 16:
            raise ValueError("frame capacity too small")
        self.capacity = capacity
        self.msgs: deque[bytes] = deque()
        #: per queued message: whether a local client waits for it (``Srp.mcast``)
        self.awaited: deque[bool] = deque()
        #: awaited messages framed whole since the caller last reset this
        self.awaited_framed = 0
        self.bytes = 0
        self._offset = 0  # bytes of the head message already framed
        self._index = 0  # next fragment index of the head message
        self._msg_no = 0  # per-sender number of fragmented messages
        self._count = 0  # fragments of the head message (set at its first)
        self._chunk = capacity - FRAGMENT_ITEM.size  # message bytes a fragment carries

    def __len__(self) -> int:
        return len(self.msgs)

    def push(self, payload: bytes, awaited: bool = False) -> None:
        self.msgs.append(payload)
        self.awaited.append(awaited)
        self.bytes += len(payload)

    def push_front(self, payloads: list[bytes]) -> None:
        """Queue ``payloads`` ahead of everything queued, in their order (nothing of
        the head message may be framed yet: see ``partly_framed``)."""
        assert not self._offset
        self.msgs.extendleft(reversed(payloads))
        self.awaited.extendleft([False] * len(payloads))
        self.bytes += sum(len(p) for p in payloads)

    @property
    def partly_framed(self) -> bool:
        """Some fragments of the head message have been taken."""
        return bool(self._offset)

    def _pop(self) -> None:
        self.bytes -= len(self.msgs.popleft())
        if self.awaited.popleft():
            self.awaited_framed += 1

    def frames_pending(self) -> int:
        """A cheap estimate of how many frames the queue needs."""
        if not self.msgs:
            return 0
        return max(1, (self.bytes + 8 * len(self.msgs)) // self.capacity + 1)

    def restart_partial(self) -> None:
        """Forget that the head message was partly sent: it goes again, whole.

        Used when the ring changes in the middle of a fragmented message; its
        fragments on the old ring are incomplete and discarded by everyone.
        """
        self._offset = 0
        self._index = 0

    def take_frame(self) -> bytes | None:
        """The next frame's payload, or None if nothing is queued."""
        msgs = self.msgs
        if not msgs:
            return None
        cap = self.capacity
        whole_size = WHOLE_ITEM.size
        if self._offset or len(msgs[0]) + whole_size > cap:
            return self._fragment()
        parts: list[bytes] = []
        space = cap
        pack = WHOLE_ITEM.pack
        while msgs:
            m = msgs[0]
            need = len(m) + whole_size
            if need > space:
                break
            parts.append(pack(ITEM_WHOLE, len(m)))
            parts.append(m)
            space -= need
            self._pop()
        return b"".join(parts)

    def _fragment(self) -> bytes:
        # (every frame of a large message comes through here: kept lean)
        m = self.msgs[0]
        chunk = self._chunk
        off = self._offset
        if off == 0:
            self._msg_no = (self._msg_no + 1) & 0xFFFFFFFF
            self._index = 0
            self._count = -(-len(m) // chunk)
        end = off + chunk
        data = m[off:end]
        index = self._index
        item = _pack_fragment(ITEM_FRAGMENT, len(data), self._msg_no, index, self._count)
        if end >= len(m):
            self._pop()
            self._offset = 0
            self._index = 0
        else:
            self._offset = end
            self._index = index + 1
        return item + data


class Reassembler:
    """Unpacks frame payloads into application messages, joining fragments.

    A fragment that does not continue its sender's current message (a hole
    left by a failed sender, delivered in a transitional configuration)
    discards the partial message: every node sees the same frames in the same
    order, so every node discards the same ones.
    """

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._partial: dict[int, list] = {}  # sender -> [msg_no, next_index, count, parts, size]
        self.malformed = 0

    def reset(self) -> None:
        self._partial.clear()

    def unpack(self, sender: int, payload: bytes) -> list[bytes]:
        out: list[bytes] = []
        end = len(payload)
        frag_size = FRAGMENT_ITEM.size
        if end > frag_size and payload[0] == ITEM_FRAGMENT:
            # The frames of a large message: one fragment filling the frame.
            _, n, no, idx, count = _unpack_fragment(payload)
            if frag_size + n == end:
                p = self._partial.get(sender)
                if p is not None and 0 < idx == p[1] < count - 1 and p[0] == no \
                        and p[2] == count and p[4] + n <= self.max_message:
                    # the middle of the message being joined (``_fragment``'s
                    # outcome, without its general checks)
                    p[3].append(payload[frag_size:])
                    p[1] = idx + 1
                    p[4] += n
                    return out
                self._fragment(sender, no, idx, count, payload[frag_size:], out)
                return out
        off = 0
        whole_size = WHOLE_ITEM.size
        unpack_whole = WHOLE_ITEM.unpack_from
        while off < end:
            kind = payload[off]
            if kind == ITEM_WHOLE and off + whole_size <= end:
                _, n = unpack_whole(payload, off)
                off += whole_size
                if off + n > end:
                    break
                out.append(payload[off:off + n])
                off += n
            elif kind == ITEM_FRAGMENT and off + frag_size <= end:
                _, n, no, idx, count = FRAGMENT_ITEM.unpack_from(payload, off)
                off += frag_size
                if off + n > end:
                    break
                self._fragment(sender, no, idx, count, payload[off:off + n], out)
                off += n
            else:
                break
        if off != end:
            # A key holder sent something we cannot parse; every node drops the
            # same tail, so order and agreement are kept.
            self.malformed += 1
        return out

    def _fragment(self, sender: int, no: int, idx: int, count: int, data: bytes,
                  out: list[bytes]) -> None:
        p = self._partial.get(sender)
        if idx == 0:
            if count == 1:
                self._partial.pop(sender, None)
                out.append(data)
            else:
                self._partial[sender] = [no, 1, count, [data], len(data)]
            return
        if p is None or p[0] != no or p[1] != idx or p[2] != count:
            self._partial.pop(sender, None)
            return
        p[3].append(data)
        p[1] += 1
        p[4] += len(data)
        if p[4] > self.max_message:
            del self._partial[sender]
        elif p[1] == count:
            del self._partial[sender]
            out.append(b"".join(p[3]))
