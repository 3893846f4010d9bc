"""ICMP "fragmentation needed" for DF packets too big for a peer's path (Python twin of
``_fastpath/icmp.pxi``; the layout of the reply is documented there).

A container's unicast IPv4 packet with DF set, not GSO, not a fragment, not an ICMP
error and from a unicast source, longer than :func:`overlay_mtu` of its next hop
(:func:`router.wire.sleeve.frame_mtu` of its ``max_datagram``), is
answered with ICMP type 3 code 4 carrying that MTU, as a router on the path would
(RFC 792, RFC 1191); the data plane writes the reply into the local TAP and drops the
packet. Anything else that is too big is carried in pieces.
"""

from __future__ import annotations

import struct

from router.wire.sleeve import ETH_HEADER_SIZE as ETH_HEADER
from router.wire.sleeve import VNET_HEADER_SIZE as VNET_HEADER
from router.wire.sleeve import frame_mtu as overlay_mtu

__all__ = ["frag_needed", "inet_checksum", "overlay_mtu"]

ICMP_QUOTE = 8  # payload bytes quoted after the refused packet's IP header
_ICMP_ERRORS = frozenset((3, 4, 5, 11, 12))


def inet_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def frag_needed(element: bytes, mtu: int) -> bytes | None:
    """The reply element (zero vnet header + frame) for ``element`` (vnet header in wire
    order + frame), or None when none is due."""
    frame = element[VNET_HEADER:]
    if element[1] & 0x7F or len(frame) < ETH_HEADER + 20 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[ETH_HEADER:]
    ihl = (ip[0] & 15) * 4
    total = int.from_bytes(ip[2:4], "big")
    if ip[0] >> 4 != 4 or ihl < 20 or not ihl <= total <= len(ip) or total <= mtu:
        return None
    if not ip[6] & 0x40 or int.from_bytes(ip[6:8], "big") & 0x3FFF:
        return None  # no DF, or a fragment
    if ip[12] == 0 or ip[12] >= 224:
        return None  # no source, or not unicast
    if ip[9] == 1 and total > ihl and ip[ihl] in _ICMP_ERRORS:
        return None  # never answer an ICMP error
    quote = ip[:ihl + min(ICMP_QUOTE, total - ihl)]
    icmp = bytearray(struct.pack(">BBHHH", 3, 4, 0, 0, mtu) + quote)
    icmp[2:4] = inet_checksum(bytes(icmp)).to_bytes(2, "big")
    header = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0,
                                   ip[16:20], ip[12:16]))
    header[10:12] = inet_checksum(bytes(header)).to_bytes(2, "big")
    ethernet = frame[6:12] + frame[0:6] + b"\x08\x00"
    return bytes(VNET_HEADER) + ethernet + bytes(header) + bytes(icmp)
