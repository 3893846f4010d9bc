"""fastdp heartbeats in the data plane (both backends): a frame of ethertype 0x88B5 to our
heartbeat MAC read from the TAP is passed up, never forwarded; others are ordinary frames;
Python writes frames into the TAP with write_tap()."""

from __future__ import annotations

import pytest

from router.dataplane.backend import Backend
from router.errors import LocalProtocolError
from router.overlay.fastdp import heartbeat
from tests.fastpath.mesh import HEARTBEAT_TYPE, VNET_PLAIN, Mesh, heartbeat_mac, mac


def _hb(dst: bytes, src: bytes = b"\x7a\x00\x00\x00\x00\x09") -> bytes:
    return dst + src + HEARTBEAT_TYPE + bytes(46)


def test_constants_match_the_heartbeat_codec(backend: Backend) -> None:
    assert backend.HEARTBEAT_ETHERTYPE == heartbeat.ETHERTYPE
    assert heartbeat.ETHERTYPE.to_bytes(2, "big") == HEARTBEAT_TYPE
    assert backend.UPCALL_HEARTBEAT not in (backend.UPCALL_CONTROL,
                                            backend.UPCALL_UNKNOWN_CONN)


def test_a_heartbeat_to_our_mac_goes_up_not_over_the_sleeve(backend: Backend) -> None:
    m = Mesh(backend, 2, [(1, 2)])
    hb = _hb(heartbeat_mac(1))
    out = m.nodes[1].dp.egress([VNET_PLAIN + hb], 1.0)
    assert out == []
    assert m.nodes[1].dp.get_upcalls(0.0) == [(backend.UPCALL_HEARTBEAT, ("", 0), hb)]
    stats = m.stats(1)
    assert stats["upcalls"] == 1 and stats["frames_captured"] == 1
    assert m.nodes[1].dp.lookup_mac(hb[6:12], 1.0) is None  # its source is not learnt


@pytest.mark.parametrize("dst", ["another heartbeat MAC", "a container"])
def test_other_frames_of_the_ethertype_are_forwarded(backend: Backend, dst: str) -> None:
    m = Mesh(backend, 2, [(1, 2)])
    to = heartbeat_mac(2) if dst == "another heartbeat MAC" else mac(2)
    m.send(1, [VNET_PLAIN + _hb(to, mac(1))], 1.0)
    assert m.take(2) == [VNET_PLAIN + _hb(to, mac(1))]
    assert m.nodes[1].upcalls == [] and m.stats(1)["upcalls"] == 0


def test_no_heartbeat_mac_no_upcall(backend: Backend) -> None:
    m = Mesh(backend, 2, [(1, 2)])
    m.nodes[1].dp.set_heartbeat_mac(None)
    m.send(1, [VNET_PLAIN + _hb(heartbeat_mac(1))], 1.0)
    assert m.nodes[1].upcalls == [] and len(m.take(2)) == 1


def test_heartbeat_upcalls_are_bounded_and_counted(backend: Backend) -> None:
    m = Mesh(backend, 2, [(1, 2)])
    dp = m.nodes[1].dp
    hb = VNET_PLAIN + _hb(heartbeat_mac(1))
    assert dp.egress([hb] * 200, 1.0) == []
    got = dp.get_upcalls(0.0, 256)
    assert len(got) == 128
    stats = dp.statistics()
    assert stats["upcalls"] == 128 and stats["drops"]["queue_full"] == 72
    dp.egress([hb], 2.0)  # room again once drained
    assert len(dp.get_upcalls(0.0)) == 1


def test_write_tap_without_threads_waits_for_take_local(backend: Backend) -> None:
    dp = backend.Dataplane(5)
    hb = _hb(heartbeat_mac(9))
    assert dp.write_tap(hb) is True
    assert dp.take_local() == [VNET_PLAIN + hb]
    for bad in (b"x" * 13, bytes(65554)):
        with pytest.raises(LocalProtocolError):
            dp.write_tap(bad)
    assert dp.take_local() == []
