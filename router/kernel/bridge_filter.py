"""fastdp's bridge filter: frames never cross between the TAP and the VXLAN device.

The ``weave`` bridge has two ways to other hosts: the TAP (``vethwe-pcap``, the sleeve's
data plane) and ``vxlan-6784`` (fastdp, the kernel). A frame that came in through one must
not go out through the other, or the mesh would carry it twice (a broadcast from a fastdp
peer flooded into the TAP would go on over the sleeve, and back). Only fastdp heartbeats
(ethertype 0x88B5) cross, TAP -> VXLAN and VXLAN -> TAP, as they must to prove the path;
a heartbeat from any other port (a container forging one) is dropped before the TAP.

Kept in one nftables table of the bridge family, ``weave-fastdp``, replaced whole on every
apply (idempotent) and deleted by ``reset`` (``router/overlay/fastdp/service.py`` runs
``nft``: :func:`install_filter`, :func:`remove_filter`). It is written by the ``nft`` binary
(Debian's ``nftables`` package): nftables has no stable Python binding here, and this
table changes only when fastdp starts or is reset, never per packet.
"""

from __future__ import annotations

import shutil

TABLE = "weave-fastdp"
FAMILY = "bridge"
HEARTBEAT_ETHERTYPE = 0x88B5


def filter_script(vxlan: str, tap: str) -> str:
    """The nft script that (re)creates the table for these two bridge ports."""
    ethertype = f"0x{HEARTBEAT_ETHERTYPE:04x}"
    return "\n".join([
        f"table {FAMILY} {TABLE}",  # so that the delete below never fails
        f"delete table {FAMILY} {TABLE}",
        f"table {FAMILY} {TABLE} {{",
        "  chain forward {",
        "    type filter hook forward priority 0; policy accept;",
        f'    iifname "{vxlan}" oifname "{tap}" ether type != {ethertype} drop',
        f'    iifname "{tap}" oifname "{vxlan}" ether type != {ethertype} drop',
        f'    iifname != "{vxlan}" oifname "{tap}" ether type {ethertype} drop',
        "  }",
        "}",
        "",
    ])


def nft_binary() -> str | None:
    """Where ``nft`` is, or None."""
    return shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if shutil.which(p)), None)


def removal_script() -> str:
    """The nft script that deletes the table (and succeeds when there is none)."""
    return f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"
