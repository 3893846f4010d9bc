"""The sleeve frames format in Python, for the reference data plane
(``router/dataplane/reference.py``): the vnet header check, records, and the argument
checks both backends share (the compiled twin is ``_fastpath/wire.pxi``). The format's
sizes and numbers live in :mod:`router.wire.sleeve`. Layout: ``docs/wire-format.md``,
"Sleeve frames"."""

from __future__ import annotations

import ipaddress
import struct
import sys

from router.dataplane.backend import Address
from router.errors import LocalProtocolError
from router.wire.sleeve import BODY, MIN_FRAME, RECORD_HEADER_SIZE, VNET_HEADER_SIZE

VNET_WIRE, VNET_HOST = struct.Struct("<BBHHHH"), struct.Struct("=BBHHHH")


def peer_name_arg(value: object, what: str) -> int:
    """``value`` if it is a 48-bit peer name; LocalProtocolError otherwise."""
    if not isinstance(value, int) or not 0 <= value < (1 << 48):
        raise LocalProtocolError(f"{what} must be a 48-bit peer name, got {value!r}")
    return value


def mac_arg(mac: object) -> int:
    """A 6-byte MAC as an int; LocalProtocolError otherwise."""
    if not isinstance(mac, bytes | bytearray) or len(mac) != 6:
        raise LocalProtocolError(f"a MAC address has 6 bytes, got {mac!r}")
    return int.from_bytes(mac, "big")


def swap_vnet(element: bytes, src: struct.Struct, dst: struct.Struct) -> bytes:
    """The element with its vnet header converted between byte orders (a no-op on
    little-endian hosts, where virtio and host order agree)."""
    if sys.byteorder == "little":
        return element
    return dst.pack(*src.unpack_from(element)) + element[VNET_HEADER_SIZE:]


def vnet_ok(meta: bytes, frame_len: int) -> bool:
    """Is a received vnet header (wire order) one the kernel accepts for this frame?"""
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET_WIRE.unpack_from(meta)
    gso = gso_type & 0x7F
    if flags & ~3 or gso not in (0, 1, 3, 4, 5) or (gso == 0 and gso_type & 0x80):
        return False
    if (gso and gso_size == 0) or hdr_len > frame_len:
        return False
    return not (flags & 1 and csum_start + csum_offset + 2 > frame_len)


def record(element: bytes) -> bytes:
    """One record of a type-2 body: frame length (2), then the element."""
    return struct.pack(">H", len(element) - VNET_HEADER_SIZE) + element


def split_records(body: bytes) -> list[bytes] | None:
    """The elements of a whole-frames body, or None if it does not split exactly."""
    records: list[bytes] = []
    pos = BODY.size
    while pos < len(body):
        if len(body) - pos < RECORD_HEADER_SIZE + VNET_HEADER_SIZE:
            return None
        (flen,) = struct.unpack_from(">H", body, pos)
        start = pos + RECORD_HEADER_SIZE
        end = start + VNET_HEADER_SIZE + flen
        if flen < MIN_FRAME or end > len(body) or not vnet_ok(body[start:], flen):
            return None
        records.append(body[start:end])
        pos = end
    return records or None


def address_arg(addr: object) -> Address:
    """(host, port) of a peer address: an IP literal (no scope) and a port."""
    host: object = None
    port: object = None
    if isinstance(addr, tuple) and len(addr) == 2:
        host, port = addr
    if (not isinstance(host, str) or "%" in host or not _ip_literal(host)
            or not isinstance(port, int) or not 0 < port < 65536):
        raise LocalProtocolError(f"peer address must be (IP literal, port): {addr!r}")
    return host, port


def same_address(addr: Address, registered: Address) -> bool:
    """Is ``addr`` (a datagram's source) the registered (IP literal, port) of a peer?"""
    try:
        return (addr[1] == registered[1]
                and ipaddress.ip_address(addr[0]) == ipaddress.ip_address(registered[0]))
    except (TypeError, ValueError, IndexError):
        return False


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
