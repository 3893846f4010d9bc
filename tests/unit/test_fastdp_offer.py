"""The fastdp offer through two real handshakes back to back (router/overlay/fastdp/offer.py)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from router.mesh.handshake import HandshakeResult, LocalIdentity
from router.overlay.fastdp.offer import (
    OVERLAY,
    FastdpOffer,
    offer_overlays,
    offered_by,
    remote_offer,
)
from router.overlay.fastdp.plan import LocalConfig
from router.wire.messages import OverlayParams
from tests.unit.test_handshake import complete, identity, pair

SLEEVE: OverlayParams = {"udp_port": 6783, "pmtu_probes": True}


def config(host: int, **kw: int) -> LocalConfig:
    return LocalConfig(local=ipaddress.IPv4Address(f"10.0.0.{host}"), mtu=1376, **kw)


def me(name: int, fastdp: LocalConfig | None, *, say: bool = True) -> LocalIdentity:
    overlays = {"sleeve": SLEEVE, **(offer_overlays(fastdp) if say else {})}
    return replace(identity(name), overlays=overlays)


def shake(a: LocalIdentity, b: LocalIdentity) -> tuple[HandshakeResult, HandshakeResult]:
    ha, hb = pair(a, b)
    complete(ha, hb)
    ra, rb = ha.result, hb.result
    assert ra is not None and rb is not None
    return ra, rb


def test_both_offer_and_each_sees_the_others_port_and_vni() -> None:
    ca, cb = config(1), config(2)
    ra, rb = shake(me(1, ca), me(2, cb))
    assert ra.remote_overlays == {"sleeve": SLEEVE,
                                  OVERLAY: {"offered": True, "port": 6784, "vni": 0x1A7E}}
    assert remote_offer(ra.remote_overlays) == FastdpOffer(6784, 0x1A7E)
    assert offered_by(ra.remote_overlays, ca) and offered_by(rb.remote_overlays, cb)


def test_no_fastdp_says_so_and_an_older_peer_says_nothing() -> None:
    ca = config(1)
    for other in (me(2, None), me(2, None, say=False)):  # --no-fastdp; an older router
        ra, rb = shake(me(1, ca), other)
        assert remote_offer(ra.remote_overlays) is None
        assert not offered_by(ra.remote_overlays, ca)
        assert remote_offer(rb.remote_overlays) == FastdpOffer(6784, 0x1A7E)
        assert not offered_by(rb.remote_overlays, None)  # it offers none itself
    ra, _ = shake(me(1, ca), me(2, None))
    assert ra.remote_overlays[OVERLAY] == {"offered": False}


@pytest.mark.parametrize("kw", [{"port": 6790}, {"vni": 7}])
def test_devices_that_would_not_agree_are_no_offer(kw: dict[str, int]) -> None:
    ca = config(1)
    ra, rb = shake(me(1, ca), me(2, config(2, **kw)))
    assert remote_offer(ra.remote_overlays) is not None
    assert not offered_by(ra.remote_overlays, ca)
    assert not offered_by(rb.remote_overlays, config(2, **kw))


@pytest.mark.parametrize("params", [
    {"offered": "yes", "port": 6784, "vni": 0x1A7E},
    {"offered": True, "port": True, "vni": 0x1A7E},
    {"offered": True, "port": 0, "vni": 0x1A7E},
    {"offered": True, "port": 6784, "vni": 1 << 24},
    {"offered": True, "port": 6784},
    {"offered": True, "port": "6784", "vni": 0x1A7E},
])
def test_a_malformed_offer_is_no_offer(params: OverlayParams) -> None:
    a = me(1, config(1))
    b = replace(identity(2), overlays={"sleeve": SLEEVE, OVERLAY: params})
    ra, _ = shake(a, b)
    assert ra.remote_overlays[OVERLAY] == params
    assert remote_offer(ra.remote_overlays) is None
