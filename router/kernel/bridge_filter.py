"""fastdp's bridge filter: frames never cross between the TAP and the VXLAN device.

The ``weave`` bridge has two ways to other hosts: the TAP (``vethwe-pcap``, the sleeve's
data plane) and ``vxlan-6784`` (fastdp, the kernel). A frame that came in through one must
not go out through the other, or the mesh would carry it twice (a broadcast from a fastdp
peer flooded into the TAP would go on over the sleeve, and back). Only fastdp heartbeats
(ethertype 0x88B5) cross, TAP -> VXLAN and VXLAN -> TAP, as they must to prove the path;
a heartbeat from any other port (a container forging one) is dropped before the TAP.

Kept in one nftables table of the bridge family, ``weave-fastdp``, replaced whole on every
apply (idempotent) and deleted by ``reset``. The table is nft JSON (:mod:`router.kernel.nft`)
applied through the same port as the host's table (``kernel/nft_cli.py``, the ``nft``
binary: nftables has no stable Python binding here); it changes only when fastdp starts
or is reset, never per packet.
"""

from __future__ import annotations

from router.kernel.nft import Command, TableRef, meta_match, payload_match

TABLE = TableRef("bridge", "weave-fastdp")
HEARTBEAT_ETHERTYPE = 0x88B5


def filter_commands(vxlan: str, tap: str) -> list[Command]:
    """The table's chain and rules for these two bridge ports (for ``replace_table``)."""
    ref = {"family": TABLE.family, "table": TABLE.name}

    def rule(iif: tuple[str, str], oif: str, ether_op: str) -> Command:
        return {"add": {"rule": {**ref, "chain": "forward", "expr": [
            meta_match("iifname", *iif), meta_match("oifname", "==", oif),
            payload_match("ether", "type", ether_op, HEARTBEAT_ETHERTYPE),
            {"drop": None}]}}}

    return [
        {"add": {"chain": {**ref, "name": "forward", "type": "filter", "hook": "forward",
                           "prio": 0, "policy": "accept"}}},
        rule(("==", vxlan), tap, "!="),  # nothing but heartbeats from the VXLAN to the TAP
        rule(("==", tap), vxlan, "!="),  # ... and from the TAP to the VXLAN
        rule(("!=", vxlan), tap, "=="),  # a heartbeat into the TAP comes from the VXLAN only
    ]


