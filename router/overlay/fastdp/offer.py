"""The fastdp offer in the handshake: each router says whether it offers fastdp.

It travels in the Hello's ``overlays`` map beside the sleeve's parameters (where the
sleeve announces ``pmtu_probes``), under its own overlay name::

    "fastdp-vxlan": {"offered": True, "port": 6784, "vni": 6782}   # fastdp on
    "fastdp-vxlan": {"offered": False}                              # --no-fastdp

The name is not Go Weave's: Go Weave's fastdp (openvswitch, the peers' short ids in the
VNI) cannot talk to one kernel VXLAN device with one VNI, so a Go Weave peer, or an older
router of ours that says nothing, is "no fastdp offered". So is a peer whose VXLAN port or
VNI differs from ours (both ends' devices must agree), or whose parameters are malformed
(values of the wrong type or out of range: a peer's mistake, never an error here).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from router.kernel.port import VNI_MAX
from router.overlay.fastdp.plan import LocalConfig
from router.wire.messages import OverlayParams

__all__ = ["OVERLAY", "FastdpOffer", "offer_overlays", "offered_by", "remote_offer"]

OVERLAY = "fastdp-vxlan"  # Hello.overlays key


@dataclass(frozen=True)
class FastdpOffer:
    """What a peer's Hello offers: its VXLAN device's UDP port and VNI."""

    port: int
    vni: int


def offer_overlays(config: LocalConfig | None) -> dict[str, OverlayParams]:
    """Our Hello's fastdp entry: the offer of ``config``'s device, or None: not offered."""
    if config is None:
        return {OVERLAY: {"offered": False}}
    return {OVERLAY: {"offered": True, "port": config.port, "vni": config.vni}}


def _int(value: object, low: int, high: int) -> int | None:
    if type(value) is not int or not low <= value <= high:  # bool is not a port
        return None
    return value


def remote_offer(overlays: Mapping[str, OverlayParams]) -> FastdpOffer | None:
    """The peer's offer from its Hello's overlays; None if it offers none (or says
    nothing, or says it malformed)."""
    params = overlays.get(OVERLAY)
    if params is None or params.get("offered") is not True:
        return None
    port = _int(params.get("port"), 1, 65535)
    vni = _int(params.get("vni"), 0, VNI_MAX)
    if port is None or vni is None:
        return None
    return FastdpOffer(port, vni)


def offered_by(overlays: Mapping[str, OverlayParams], config: LocalConfig | None) -> bool:
    """Does the peer offer fastdp we can use (for ``OverlaySwitch.peer_offers``)?
    False when we offer none ourselves (``config`` None) or the devices would not agree."""
    offer = remote_offer(overlays)
    return config is not None and offer == FastdpOffer(config.port, config.vni)
