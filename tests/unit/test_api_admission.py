"""``router/control/admission.py`` (lanes, per-client cap, eviction) driven with ``now``,
and ``peer_cred.py`` against real sockets (root and ``nobody``)."""

from __future__ import annotations

import socket
import subprocess
import sys

from router.control.admission import Admission, Admitted, LaneLimit, Refused, Slot
from router.control.peer_cred import parse_diag_reply, tcp_peer_uid, unix_peer_uid

LIMITS = {"unix": LaneLimit(2, 2), "root": LaneLimit(2, 2), "general": LaneLimit(4, 2)}


def _admit(adm: Admission, lane: str, client: str, now: float) -> Slot:
    got = adm.admit(lane, client, now, ready=True)
    assert isinstance(got, Admitted), got
    adm.settled(got.slot)  # the server read from it
    return got.slot


def test_a_full_lane_evicts_its_longest_reading_connection() -> None:
    adm = Admission(dict(LIMITS))
    first, second = _admit(adm, "root", "uid 0", 1.0), _admit(adm, "root", "uid 0", 2.0)
    adm.busy(first, 3.0)
    assert isinstance(adm.admit("root", "uid 0", 3.5), Refused)  # a slow one waits
    got = adm.admit("root", "uid 0", 4.0, ready=True)
    assert isinstance(got, Admitted) and got.evict == (second,)  # first is busy: kept
    assert second.evicted and adm.connected("root") == 2
    adm.settled(got.slot)
    adm.busy(got.slot, 5.0)
    refused = adm.admit("root", "uid 0", 6.0, ready=True)
    assert refused == Refused("too many API requests in progress (limit 2)")
    adm.reading(first, 7.0)  # answered: waiting for its next request, evictable again
    again = adm.admit("root", "uid 0", 8.0, ready=True)
    assert isinstance(again, Admitted) and again.evict == (first,)


def test_lanes_never_take_each_others_slots() -> None:
    adm = Admission(dict(LIMITS))
    for now, client in enumerate(["uid 1", "uid 1", "uid 2", "uid 2"]):
        adm.busy(_admit(adm, "general", client, float(now)), float(now))
    assert isinstance(adm.admit("general", "uid 3", 9.0, ready=True), Refused)
    for lane in ("unix", "root"):
        slot = _admit(adm, lane, "uid 0", 9.0)
        assert slot.lane == lane
    assert adm.statistics()["general_connected"] == 4


def test_one_client_only_pushes_out_its_own_connections() -> None:
    adm = Admission(dict(LIMITS))
    other = _admit(adm, "general", "uid 7", 0.0)
    mine = [_admit(adm, "general", "uid 65534", float(t)) for t in (1, 2)]
    for t in range(3, 50):  # a reconnect storm of one uid
        got = adm.admit("general", "uid 65534", float(t), ready=True)
        assert isinstance(got, Admitted) and got.evict and got.evict[0].client == "uid 65534"
        adm.settled(got.slot)
        mine.append(got.slot)
    assert not other.evicted and all(s.evicted for s in mine[:-2])
    for slot in mine[-2:]:
        adm.busy(slot, 60.0)
    refused = adm.admit("general", "uid 65534", 61.0, ready=True)
    assert refused == Refused("too many API requests in progress from uid 65534 (limit 2)")
    assert isinstance(adm.admit("general", "uid 8", 62.0), Admitted)


def test_a_quick_newcomer_is_not_evicted_before_it_was_read_from() -> None:
    adm = Admission({"root": LaneLimit(2, 2)})
    fresh = [adm.admit("root", "uid 0", t, ready=True) for t in (0.0, 1.0)]
    assert adm.admit("root", "uid 0", 2.0, ready=True) == Refused(
        "too many API requests in progress (limit 2)")
    first = fresh[0]
    assert isinstance(first, Admitted)
    adm.settled(first.slot)
    got = adm.admit("root", "uid 0", 3.0, ready=True)
    assert isinstance(got, Admitted) and got.evict == (first.slot,)


def test_slow_newcomers_never_push_anyone_out() -> None:
    adm = Admission({"root": LaneLimit(2, 2)})
    for t in (0.0, 1.0):
        _admit(adm, "root", "uid 0", t)
    for t in range(2, 20):
        assert isinstance(adm.admit("root", "uid 0", float(t)), Refused)
    assert adm.statistics()["evicted"] == 0


def test_a_quick_newcomer_may_push_out_a_slow_one_not_yet_read_from() -> None:
    adm = Admission({"root": LaneLimit(2, 2)})
    quick, slow = adm.admit("root", "uid 0", 0.0, ready=True), adm.admit("root", "uid 0", 1.0)
    assert isinstance(quick, Admitted) and isinstance(slow, Admitted)
    assert isinstance(adm.admit("root", "uid 0", 2.0), Refused)  # slow: waits its turn
    got = adm.admit("root", "uid 0", 3.0, ready=True)  # quick: the slow one makes room
    assert isinstance(got, Admitted) and got.evict == (slow.slot,)
    assert isinstance(adm.admit("root", "uid 0", 4.0, ready=True), Refused)  # never a quick one


def test_release_after_eviction_is_harmless() -> None:
    adm = Admission({"root": LaneLimit(1, 1)})
    first = _admit(adm, "root", "uid 0", 0.0)
    _admit(adm, "root", "uid 0", 1.0)  # quick: evicts the first
    adm.release(first)
    assert adm.connected("root") == 1
    assert adm.statistics()["evicted"] == 1


def test_tcp_peer_uid_names_the_client_sockets_owner() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            accepted, _ = server.accept()
            with accepted:
                assert tcp_peer_uid(accepted) == 0
        code = (f"import socket, sys; c = socket.create_connection(('127.0.0.1', {port})); "
                "sys.stdin.read()")
        child = subprocess.Popen(["setpriv", "--reuid", "nobody", "--regid", "nogroup",
                                  "--clear-groups", sys.executable, "-c", code],
                                 stdin=subprocess.PIPE)
        try:
            accepted, _ = server.accept()
            with accepted:
                assert tcp_peer_uid(accepted) == 65534
        finally:
            child.communicate(b"", timeout=10)


def test_unix_peer_uid() -> None:
    left, right = socket.socketpair()
    with left, right:
        assert unix_peer_uid(left) == 0


def test_a_diag_error_or_short_reply_is_no_uid() -> None:
    assert parse_diag_reply(b"") is None
    error = (36).to_bytes(4, "little") + (2).to_bytes(2, "little") + bytes(30)
    assert parse_diag_reply(error) is None
