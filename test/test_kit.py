"""The service kit of the host (``ais.services.base``, ``ais.executive``): in-process, manual clock.

mcast_retried, conn_of / conns, defer and reply's bool, members / is_lowest,
LowestMemberTimers, forward() and host.model, each with a toy service.
"""
from __future__ import annotations

import struct
from pathlib import Path

import pytest
from helpers_exec import FakeConn

from ais.config import AmfModel, load_groups_conf
from ais.executive import ServiceHost, create_host, decode_ring_message_untrusted
from ais.services.base import (
    DEFERRED,
    NO_TAG,
    LowestMemberTimers,
    ReplyTag,
    Service,
    exec_handler,
    forward,
    lib_handler,
)
from ais.testing import FakeBus, FakePort, ManualScheduler
from ais.totem.events import SendQueueFull
from saf.errors import SA_OK, Timeout, TryAgain

MSG_NOTE, MSG_ASK, MSG_ARM, MSG_EXPIRE, MSG_FWD, MSG_FWD_T = 1, 2, 3, 4, 5, 6
REQ_ASK, REQ_ASK_T, REQ_FWD, REQ_FWD_T, REQ_CONNS = 1, 2, 3, 4, 5
#: ARM payload: delay in ms, then the key
ARM = struct.Struct("!I")


class Toy(Service):
    """Records what it is given; every request kind exercises one part of the kit."""

    name = "toy-kit"
    service_id = 79

    def __init__(self) -> None:
        self.notes: list[bytes] = []
        self.replied: list[bool] = []  # what host.reply returned, on this node
        self.expired: list[tuple[bytes, int]] = []  # (key, sender)
        self.forwarded: list[tuple[int, bytes, ReplyTag]] = []

    def exec_init(self, host):
        super().exec_init(host)
        self.timers = LowestMemberTimers(self, MSG_EXPIRE)

    @lib_handler(REQ_ASK, hold_during_sync=True)
    def lib_ask(self, conn, req):
        self.host.mcast(self, MSG_ASK, req.body, tag=req.tag)
        return DEFERRED

    @lib_handler(REQ_ASK_T, hold_during_sync=True)
    def lib_ask_timed(self, conn, req):
        self.host.mcast(self, MSG_ASK, req.body, tag=req.tag)
        return self.host.defer(req.tag, 1.0)

    lib_fwd = forward(REQ_FWD, MSG_FWD)
    lib_fwd_t = forward(REQ_FWD_T, MSG_FWD_T, hold_during_sync=False, timeout=0.5)

    @exec_handler(MSG_NOTE)
    def exec_note(self, msg):
        self.notes.append(msg.payload)

    @exec_handler(MSG_ASK)
    def exec_ask(self, msg):
        # every node answers; only the asking node's answer reaches a client
        self.replied.append(self.host.reply(msg.tag, msg.payload,
                                            safe=msg.payload.startswith(b"safe")))

    @exec_handler(MSG_ARM)
    def exec_arm(self, msg):
        (ms,) = ARM.unpack_from(msg.payload)
        key = msg.payload[ARM.size:]
        self.timers.set(key, self.host.now() + ms / 1000, key)

    @exec_handler(MSG_EXPIRE)
    def exec_expire(self, msg):
        if msg.payload in self.timers:  # idempotent: a second sender finds it gone
            self.timers.cancel(msg.payload)
            self.expired.append((msg.payload, msg.sender))

    @exec_handler(MSG_FWD)
    def exec_fwd(self, msg):
        self.forwarded.append((MSG_FWD, msg.payload, msg.tag))
        self.host.reply(msg.tag, b"fwd:" + msg.payload)

    @exec_handler(MSG_FWD_T)
    def exec_fwd_t(self, msg):
        self.forwarded.append((MSG_FWD_T, msg.payload, msg.tag))
        self.replied.append(self.host.reply(msg.tag, msg.payload))


def cluster(n: int):
    sched = ManualScheduler()
    bus = FakeBus(sched)
    hosts = {i: ServiceHost(i, [Toy()], sched) for i in range(1, n + 1)}
    for h in hosts.values():
        bus.port(h)
    return sched, bus, hosts


def toy(host: ServiceHost) -> Toy:
    return host.service_by_id(Toy.service_id)


def connect(host: ServiceHost) -> FakeConn:
    conn = FakeConn(host.new_conn_id(), Toy.service_id)
    host.lib_connect(conn)
    return conn


class FlakyPort(FakePort):
    """A port whose ring refuses the next ``refuse`` sends (a full send queue)."""

    def __init__(self, bus: FakeBus, node_id: int) -> None:
        super().__init__(bus, node_id)
        self.refuse = 0
        self.refused = 0

    def mcast(self, payload: bytes, awaited: bool = False) -> None:
        if self.refuse:
            self.refuse -= 1
            self.refused += 1
            raise SendQueueFull
        super().mcast(payload)


# --- mcast_retried -------------------------------------------------------------------------------


def flaky_pair(refuse: int) -> tuple[ManualScheduler, dict[int, ServiceHost], FlakyPort]:
    """A ring of two whose node 1 sends through a port refusing its next ``refuse``."""
    sched, bus, hosts = cluster(2)
    bus.reconfigure([1, 2])
    sched.run()
    port = FlakyPort(bus, 1)
    hosts[1].attach_ring(port)
    port.refuse = refuse
    return sched, hosts, port


@pytest.mark.timeout(20)
def test_mcast_retried_sends_in_order_while_the_ring_refuses():
    sched, hosts, port = flaky_pair(3)
    h1 = hosts[1]
    for i in range(5):
        h1.mcast_retried(toy(h1), MSG_NOTE, bytes([i]))  # never raises
    sched.run()
    assert toy(hosts[2]).notes == [] and port.refused == 1  # one try, then one retry timer
    sched.advance(0.1)
    assert port.refused == 3
    assert toy(h1).notes == toy(hosts[2]).notes == [bytes([i]) for i in range(5)]
    # a later message, with nothing queued, goes out at once
    h1.mcast_retried(toy(h1), MSG_NOTE, b"x")
    sched.run()
    assert toy(hosts[2]).notes[-1] == b"x"


@pytest.mark.timeout(20)
def test_mcast_waits_behind_the_services_retried_messages():
    """While a service's ``mcast_retried`` messages wait for room, its direct ``mcast``
    is refused (TryAgain) rather than sent ahead of them: the service's order holds."""
    sched, hosts, _ = flaky_pair(1)
    h1 = hosts[1]
    h1.mcast_retried(toy(h1), MSG_NOTE, b"first")  # refused: waits for its retry
    with pytest.raises(TryAgain):
        h1.mcast(toy(h1), MSG_NOTE, b"second")  # the ring has room, but not before it
    sched.advance(0.1)
    h1.mcast(toy(h1), MSG_NOTE, b"second")
    sched.run()
    assert toy(h1).notes == toy(hosts[2]).notes == [b"first", b"second"]


@pytest.mark.timeout(20)
def test_mcast_retried_before_the_ring_exists_is_sent_once_it_does():
    sched, bus, hosts = cluster(1)
    h1 = hosts[1]
    h1.mcast_retried(toy(h1), MSG_NOTE, b"a")  # no configuration yet: the bus refuses
    h1.mcast_retried(toy(h1), MSG_NOTE, b"b")
    sched.advance(0.5)
    assert toy(h1).notes == []
    bus.reconfigure([1])
    sched.advance(0.5)
    assert toy(h1).notes == [b"a", b"b"]


# --- conn_of / conns -----------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_conn_of_and_conns_name_this_nodes_open_connections():
    sched, bus, hosts = cluster(2)
    bus.reconfigure([1, 2])
    sched.run()
    h1, h2 = hosts[1], hosts[2]
    a, b = connect(h1), connect(h1)
    other = connect(h2)
    assert h1.conns(toy(h1)) == [a, b] and h2.conns(toy(h2)) == [other]
    assert h1.conn_of(ReplyTag(1, a.conn_id, 7)) is a
    assert h1.conn_of(ReplyTag(2, a.conn_id, 7)) is None  # another node's client
    assert h1.conn_of(NO_TAG) is None
    h1.lib_exit(a)
    assert h1.conn_of(ReplyTag(1, a.conn_id, 7)) is None
    assert h1.conns(toy(h1)) == [b]


# --- defer and reply's bool ----------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_reply_is_true_only_on_the_asking_node_and_only_once():
    sched, bus, hosts = cluster(2)
    bus.reconfigure([1, 2])
    sched.run()
    h1 = hosts[1]
    conn = connect(h1)
    h1.lib_request(conn, REQ_ASK, 1, b"q")
    sched.run()
    assert [(f.seq, f.error, f.body) for f in conn.responses] == [(1, SA_OK, b"q")]
    assert toy(h1).replied == [True] and toy(hosts[2]).replied == [False]
    tag = ReplyTag(1, conn.conn_id, 1)
    assert h1.reply(tag, b"again") is False  # already answered
    assert h1.reply_error(tag, Timeout()) is False
    assert len(conn.responses) == 1


@pytest.mark.timeout(20)
def test_reply_is_false_when_the_client_is_gone():
    sched, bus, hosts = cluster(1)
    bus.reconfigure([1])
    sched.run()
    h1 = hosts[1]
    conn = connect(h1)
    bus.pause()
    h1.lib_request(conn, REQ_ASK, 1, b"q")
    h1.lib_exit(conn)
    bus.resume()
    sched.run()
    assert toy(h1).replied == [False] and conn.responses == []


@pytest.mark.timeout(20)
def test_defer_answers_timeout_and_a_later_reply_returns_false():
    sched, bus, hosts = cluster(2)
    bus.reconfigure([1, 2])
    sched.run()
    h1 = hosts[1]
    conn = connect(h1)
    bus.pause()  # the ring stalls: the message is not delivered in time
    h1.lib_request(conn, REQ_ASK_T, 1, b"slow")
    sched.advance(0.99)
    assert conn.responses == []
    sched.advance(0.02)
    assert [(f.seq, f.error) for f in conn.responses] == [(1, Timeout.code)]
    bus.resume()
    sched.run()
    assert toy(h1).replied == [False]  # the caller timed out: undo what nobody waits for
    assert len(conn.responses) == 1


@pytest.mark.timeout(20)
def test_defer_answered_in_time_sends_no_timeout():
    sched, bus, hosts = cluster(2)
    bus.reconfigure([1, 2])
    sched.run()
    h1 = hosts[1]
    conn = connect(h1)
    h1.lib_request(conn, REQ_ASK_T, 1, b"fast")
    sched.run()
    sched.advance(5.0)
    assert toy(h1).replied == [True]
    assert [(f.seq, f.error, f.body) for f in conn.responses] == [(1, SA_OK, b"fast")]


@pytest.mark.timeout(20)
def test_a_safe_reply_claims_the_request_so_its_timeout_no_longer_runs():
    sched, bus, hosts = cluster(2)
    bus.reconfigure([1, 2])
    sched.run()
    h1 = hosts[1]
    conn = connect(h1)
    bus.hold_stable = True  # the answer waits until every member holds the message
    h1.lib_request(conn, REQ_ASK_T, 1, b"safe")
    sched.run()
    assert toy(h1).replied == [True] and conn.responses == []
    sched.advance(2.0)  # past the 1 s timeout: the request was answered, not timed out
    assert conn.responses == []
    bus.stabilize()
    assert [(f.seq, f.error, f.body) for f in conn.responses] == [(1, SA_OK, b"safe")]


# --- members, is_lowest and LowestMemberTimers --------------------------------------------------


def queued_toy_ids(bus: FakeBus) -> list[tuple[int, int]]:
    """(sender, msg id) of the toy messages queued on the bus, not yet delivered."""
    out = []
    for kind, arg in bus._queue:
        if kind == "msg":
            m = decode_ring_message_untrusted(arg[1])
            if m.service == Toy.service_id:
                out.append((arg[0], m.msg_id))
    return out


def arm(host: ServiceHost, conn: FakeConn, key: bytes, ms: int) -> None:
    host.mcast(toy(host), MSG_ARM, ARM.pack(ms) + key)


@pytest.mark.timeout(20)
def test_members_and_is_lowest_follow_completed_sync_rounds():
    sched, bus, hosts = cluster(3)
    assert hosts[1].members == () and not hosts[1].is_lowest
    bus.reconfigure([2, 3], [1])
    sched.run()
    assert hosts[2].members == (2, 3) and hosts[2].is_lowest and not hosts[3].is_lowest
    assert hosts[1].members == (1,) and hosts[1].is_lowest
    bus.pause()
    bus.reconfigure([1, 2, 3])
    assert bus.step()  # the configuration: its round has not ended yet
    assert hosts[2].members == (2, 3) and hosts[2].is_lowest
    bus.resume()
    sched.run()
    assert all(h.members == (1, 2, 3) for h in hosts.values())
    assert [h.is_lowest for h in hosts.values()] == [True, False, False]


@pytest.mark.timeout(20)
def test_only_the_lowest_member_sends_a_passed_deadline():
    sched, bus, hosts = cluster(3)
    bus.reconfigure([1, 2, 3])
    sched.run()
    before = bus.delivered
    arm(hosts[2], None, b"k", 500)
    sched.run()
    assert all(b"k" in toy(h).timers for h in hosts.values())
    sched.advance(0.4)
    assert all(toy(h).expired == [] for h in hosts.values())
    sched.advance(0.2)
    assert all(toy(h).expired == [(b"k", 1)] for h in hosts.values())
    assert all(b"k" not in toy(h).timers for h in hosts.values())
    assert bus.delivered - before == 2 * 3  # ARM and one EXPIRE, to three nodes


@pytest.mark.timeout(20)
def test_a_new_lowest_member_sends_deadlines_past_after_its_sync_round():
    sched, bus, hosts = cluster(3)
    bus.reconfigure([1, 2, 3])
    sched.run()
    arm(hosts[3], None, b"k", 100)
    sched.run()
    bus.pause()
    sched.advance(0.2)  # node 1 sends its EXPIRE ...
    assert queued_toy_ids(bus) == [(1, MSG_EXPIRE)]
    bus.take_queued()  # ... which dies with it
    bus.remove(1)
    bus.reconfigure([2, 3])
    bus.resume()
    sched.run()
    assert toy(hosts[2]).expired == toy(hosts[3]).expired == [(b"k", 2)]
    assert hosts[2].is_lowest


@pytest.mark.timeout(20)
def test_no_deadline_is_sent_during_a_sync_round_the_round_end_sends_it():
    sched, bus, hosts = cluster(2)
    bus.reconfigure([1], [2])
    sched.run()
    arm(hosts[1], None, b"k", 100)
    sched.run()
    bus.pause()
    bus.reconfigure([1, 2])
    assert bus.step()  # node 1's round has started, not ended
    assert hosts[1].syncing
    sched.advance(0.2)  # the deadline passes during the round
    assert queued_toy_ids(bus) == []  # nobody sent it
    bus.resume()
    sched.run()
    # node 2 never set the key (it was on the other side), so only node 1 records it
    assert toy(hosts[1]).expired == [(b"k", 1)] and toy(hosts[2]).expired == []


@pytest.mark.timeout(20)
def test_cancel_and_set_again_replace_a_deadline():
    sched, bus, hosts = cluster(1)
    bus.reconfigure([1])
    sched.run()
    t = toy(hosts[1]).timers
    now = hosts[1].now()
    t.set(b"a", now + 1.0, b"a")
    t.set(b"b", now + 1.0, b"b")
    t.cancel(b"a")
    t.set(b"b", now + 3.0, b"b")
    assert t.deadline(b"b") == now + 3.0 and t.deadline(b"a") is None and len(t) == 1
    sched.advance(2.0)
    assert toy(hosts[1]).expired == []
    sched.advance(1.5)
    assert toy(hosts[1]).expired == [(b"b", 1)]


@pytest.mark.timeout(20)
def test_setting_an_unchanged_deadline_replaces_only_the_payload():
    sched, bus, hosts = cluster(1)
    bus.reconfigure([1])
    sched.run()
    t = toy(hosts[1]).timers
    d = hosts[1].now() + 1.0
    t.set(b"k", d, b"stale")  # (Toy's handler ignores a payload that names no key)
    t.set(b"k", d, b"k")
    sched.advance(1.1)
    assert toy(hosts[1]).expired == [(b"k", 1)]


# --- forward() -----------------------------------------------------------------------------------


def test_forward_declares_library_handlers():
    assert Toy.lib_handlers[REQ_FWD].hold_during_sync is True
    assert Toy.lib_handlers[REQ_FWD_T].hold_during_sync is False
    with pytest.raises(TypeError, match="two library handlers"):
        class Twice(Service):
            name = "toy-twice"
            service_id = 80
            lib_a = forward(1, 1)
            lib_b = forward(1, 2)


@pytest.mark.timeout(20)
def test_forward_multicasts_the_body_with_the_tag_and_holds_during_sync():
    sched, bus, hosts = cluster(2)
    h1 = hosts[1]
    conn = connect(h1)
    h1.lib_request(conn, REQ_FWD, 1, b"body")  # before the first round: held
    sched.run()
    assert toy(h1).forwarded == []
    bus.reconfigure([1, 2])
    sched.run()
    tag = ReplyTag(1, conn.conn_id, 1)
    assert toy(h1).forwarded == toy(hosts[2]).forwarded == [(MSG_FWD, b"body", tag)]
    assert [(f.seq, f.error, f.body) for f in conn.responses] == [(1, SA_OK, b"fwd:body")]


@pytest.mark.timeout(20)
def test_forward_with_a_timeout_answers_timeout():
    sched, bus, hosts = cluster(1)
    bus.reconfigure([1])
    sched.run()
    h1 = hosts[1]
    conn = connect(h1)
    bus.pause()
    h1.lib_request(conn, REQ_FWD_T, 1, b"t")
    sched.advance(0.6)
    assert [(f.seq, f.error) for f in conn.responses] == [(1, Timeout.code)]
    bus.resume()
    sched.run()
    assert toy(h1).replied == [False]


def test_forward_body_checks_and_builds_the_payload():
    from saf.errors import InvalidParam

    def upper(svc, conn, req):
        if not req.body:
            raise InvalidParam("empty")
        return req.body.upper()

    class Checked(Toy):
        name = "toy-checked"
        service_id = 81
        lib_fwd = forward(REQ_FWD, MSG_FWD, body=upper)

    sched = ManualScheduler()
    bus = FakeBus(sched)
    h = ServiceHost(1, [Checked()], sched)
    bus.port(h)
    bus.reconfigure([1])
    sched.run()
    conn = FakeConn(h.new_conn_id(), Checked.service_id)
    h.lib_connect(conn)
    h.lib_request(conn, REQ_FWD, 1, b"")
    h.lib_request(conn, REQ_FWD, 2, b"abc")
    sched.run()
    assert [(f.seq, f.error, f.body) for f in conn.responses] == [
        (1, InvalidParam.code, b""), (2, SA_OK, b"fwd:ABC")]


# --- host.model ----------------------------------------------------------------------------------


def test_host_model_is_empty_by_default_and_passed_by_create_host():
    sched = ManualScheduler()
    assert ServiceHost(1, [], sched).model == AmfModel(())
    model = load_groups_conf(str(Path(__file__).resolve().parent.parent / "conf" / "groups.conf"))
    assert model.groups
    host = create_host(1, sched, model=model)
    assert host.model is model


# --- the worked example of ais.services.base's docstring runs as written -------------------------

MSG_TAKE, MSG_DROP = 1, 2
REQ_TAKE, REQ_GIVE_BACK = 1, 2
CB_LOST = 1
TAKE = struct.Struct("!I")  # milliseconds, then the name


def _lease_class() -> type[Service]:
    import textwrap

    from ais.services import base
    from saf.errors import Exist, IpcProtocolError, NotExist

    doc = base.__doc__
    start = doc.index("::\n", doc.index("A worked example")) + 3
    lines = []
    for line in doc[start:].splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    code = "from __future__ import annotations\n" + textwrap.dedent("\n".join(lines))

    def decode_take_untrusted(body: bytes) -> tuple[bytes, float]:
        if len(body) <= TAKE.size:
            raise IpcProtocolError("TAKE too short")
        return body[TAKE.size:], TAKE.unpack_from(body)[0] / 1000

    ns = {name: getattr(base, name) for name in base.__all__}
    ns.update(register_service=lambda cls: cls, Exist=Exist, NotExist=NotExist,
              decode_take_untrusted=decode_take_untrusted, MSG_TAKE=MSG_TAKE,
              MSG_DROP=MSG_DROP, MSG_EXPIRE=MSG_EXPIRE, REQ_TAKE=REQ_TAKE,
              REQ_GIVE_BACK=REQ_GIVE_BACK, CB_LOST=CB_LOST)
    # the docstring is this repository's own text: running it keeps the example true
    exec(compile(code, "ais/services/base.py docstring", "exec"), ns)  # noqa: S102
    return ns["LeaseService"]


@pytest.mark.timeout(20)
def test_the_worked_example_of_the_kit_works():
    from saf.errors import Exist, NotExist

    lease = _lease_class()
    sched = ManualScheduler()
    bus = FakeBus(sched)
    h1, h2 = (ServiceHost(i, [lease()], sched) for i in (1, 2))
    for h in (h1, h2):
        bus.port(h)
    bus.reconfigure([1, 2])
    sched.run()

    def owners():
        return [sorted(h.service_by_id(lease.service_id).owner) for h in (h1, h2)]

    def conn(h):
        c = FakeConn(h.new_conn_id(), lease.service_id)
        h.lib_connect(c)
        return c

    def ask(h, c, seq, req, body):
        h.lib_request(c, req, seq, body)
        sched.run()
        return next((f.error for f in c.responses if f.seq == seq), None)

    c1, c2 = conn(h1), conn(h2)
    assert ask(h1, c1, 1, REQ_TAKE, TAKE.pack(1000) + b"a") == SA_OK
    assert ask(h2, c2, 1, REQ_TAKE, TAKE.pack(1000) + b"a") == Exist.code
    sched.advance(1.1)  # the lease ends: node 1 (lowest) decides, its client is told
    assert owners() == [[], []]
    assert [(f.msg_id, f.body) for f in c1.callbacks] == [(CB_LOST, b"a")]
    assert ask(h2, c2, 2, REQ_TAKE, TAKE.pack(9000) + b"b") == SA_OK
    assert ask(h2, c2, 3, REQ_GIVE_BACK, b"b") == SA_OK
    assert ask(h2, c2, 4, REQ_GIVE_BACK, b"b") == NotExist.code
    assert ask(h2, c2, 5, REQ_TAKE, TAKE.pack(9000) + b"c") == SA_OK
    assert owners() == [[b"c"], [b"c"]]
    h2.lib_exit(c2)  # its leases go back
    sched.run()
    assert owners() == [[], []]
    bus.pause()
    h1.lib_request(c1, REQ_TAKE, 2, TAKE.pack(9000) + b"d")
    sched.advance(2.1)  # the ring stalls past the 2 s limit: TIMEOUT ...
    assert c1.responses[-1].seq == 2 and c1.responses[-1].error == Timeout.code
    bus.resume()
    sched.run()
    assert owners() == [[], []]  # ... and the lease nobody waits for goes back
