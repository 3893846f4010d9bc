"""The sleeve UDP wire format in one place: every size and number, and the size arithmetic.

Pure: imports neither :mod:`router.dataplane` nor :mod:`router.overlay` (both import
this), only the standard library. The compiled data plane has its own copy of the
numbers (the ``cdef enum`` in ``_fastpath/wire.pxi``), exported by
``router._fastpath.wire_constants()`` under the names used here;
``tests/unit/test_sleeve_wire.py`` compares the two, so they cannot drift. The full
layout, with the heartbeat body and the fragment rules, is in ``docs/wire-format.md``
("UDP (sleeve)" and "Sleeve frames"). All integers big-endian except the vnet header
(virtio byte order, little-endian)::

    sleeve header (HEADER_SIZE = 20), every datagram
      0  1  version        VERSION = 1
      1  1  type           PacketType: 1 heartbeat, 2 frames, 3 fragment
      2  2  reserved       0
      4  8  connection id
     12  8  counter        heartbeats from 0, frames from FRAME_COUNTER_BASE = 2**63
    sealed (encrypted only, SEALED_OVERHEAD = 20)
     20 16  MAC            MAC_SIZE
     36  4  header[0:4]    BOUND_SIZE, inside the sealed box
    heartbeat body (type 1): names (HEARTBEAT_BODY_SIZE = 12) [| PMTU record (4) | padding]
    frames body (type 2, BODY): flags (1, FLAG_BROADCAST) | ttl (1, INITIAL_TTL) |
      source (6) | destination (6)  = BODY_SIZE 14, then records to the end:
      frame length n (RECORD_HEADER_SIZE = 2) | vnet header (VNET_HEADER_SIZE = 10) | frame
      (MIN_FRAME = 14 .. MAX_FRAME_SIZE = 65553 bytes)
    fragment header (type 3, FRAG, FRAG_HEADER_SIZE = 8), after the sleeve header:
      payload length (4) | fragment size (2) | index (1) | count (1, <= MAX_FRAGMENTS)

    datagram (UDP payload)  MIN_DATAGRAM = 512 .. MAX_DATAGRAM = 65507 bytes
    IP datagram             UDP payload + IPV4_UDP_OVERHEAD (28), at most MAX_IP_DATAGRAM

Sizes: :func:`frame_mtu` (the largest IP packet one datagram carries),
:func:`overlay_mtu` (the same for a path MTU, what ``status connections`` shows) and
:func:`max_datagram` (the ``max_datagram`` the data plane gets for a path MTU).
"""

from __future__ import annotations

import struct
from enum import IntEnum

__all__ = [
    "BODY",
    "BODY_SIZE",
    "BOUND_SIZE",
    "ETH_HEADER_SIZE",
    "FLAG_BROADCAST",
    "FRAG",
    "FRAG_HEADER_SIZE",
    "FRAME_COUNTER_BASE",
    "HEADER",
    "HEADER_SIZE",
    "HEARTBEAT_BODY_SIZE",
    "INITIAL_TTL",
    "IPV4_UDP_OVERHEAD",
    "MAC_SIZE",
    "MAX_DATAGRAM",
    "MAX_ELEMENT_SIZE",
    "MAX_FRAGMENTS",
    "MAX_FRAME_SIZE",
    "MAX_IP_DATAGRAM",
    "MAX_PAYLOAD",
    "MIN_DATAGRAM",
    "MIN_FRAME",
    "PMTU_RECORD_SIZE",
    "RECORD_HEADER_SIZE",
    "SEALED_OVERHEAD",
    "VERSION",
    "VNET_HEADER_SIZE",
    "PacketType",
    "frame_mtu",
    "max_datagram",
    "overlay_mtu",
]


class PacketType(IntEnum):
    """Byte 1 of the sleeve header."""

    HEARTBEAT = 1
    FRAMES = 2  # carried by the data plane, never decoded by the overlay
    FRAGMENT = 3  # a piece of a large frame, ditto


# -- the sleeve header and sealing ------------------------------------------------------

VERSION = 1
HEADER = struct.Struct(">BBHQQ")  # version, type, reserved, connection id, counter
HEADER_SIZE = HEADER.size  # 20 bytes
MAC_SIZE = 16  # Poly1305 / GCM tag (router.crypto.keys.MAC_SIZE), first in the payload
BOUND_SIZE = 4  # header bytes repeated inside the sealed box: version, type, reserved
SEALED_OVERHEAD = MAC_SIZE + BOUND_SIZE  # 20 bytes more than unencrypted, either cipher
#: Frames share a connection's key and nonce space with heartbeats: the data plane counts
#: frames from 2**63 up, heartbeats count from 0 and must stay below it.
FRAME_COUNTER_BASE = 1 << 63

# -- heartbeats (type 1) ----------------------------------------------------------------

HEARTBEAT_BODY_SIZE = 12  # two peer names, before the PMTU record and padding
PMTU_RECORD_SIZE = 4  # kind, reserved, size: after the names in probes and acks

# -- frames (type 2) and fragments (type 3) ---------------------------------------------

BODY = struct.Struct(">BB6s6s")  # flags, ttl, source, destination
BODY_SIZE = BODY.size  # 14 bytes
FLAG_BROADCAST = 2  # the only flag; all other bits 0
INITIAL_TTL = 16  # hops a frame may take across the mesh
RECORD_HEADER_SIZE = 2  # the frame length before each record
VNET_HEADER_SIZE = 10  # struct virtio_net_hdr without num_buffers, before every frame
ETH_HEADER_SIZE = 14
MIN_FRAME = ETH_HEADER_SIZE  # an Ethernet header
MAX_FRAME_SIZE = 65553  # 64 KiB IP packet + Ethernet header + one 802.1Q tag
MAX_ELEMENT_SIZE = VNET_HEADER_SIZE + MAX_FRAME_SIZE  # what the TAP reads: 65563
MAX_PAYLOAD = SEALED_OVERHEAD + BODY_SIZE + MAX_ELEMENT_SIZE  # a fragmented element: 65597
FRAG = struct.Struct(">IHBB")  # payload length, fragment size, index, count
FRAG_HEADER_SIZE = FRAG.size  # 8 bytes
MAX_FRAGMENTS = 255

# -- datagrams --------------------------------------------------------------------------

MAX_IP_DATAGRAM = 65535  # bytes: the IPv4 total length field
IPV4_UDP_OVERHEAD = 28  # bytes: IPv4 (20) + UDP (8) headers
MAX_DATAGRAM = MAX_IP_DATAGRAM - IPV4_UDP_OVERHEAD  # 65507: the IPv4 UDP payload limit
MIN_DATAGRAM = 512  # the smallest max_datagram a peer may have


def frame_mtu(max_datagram: int, encrypted: bool) -> int:
    """The largest IP packet a frame carries in one datagram of ``max_datagram`` bytes:
    ``max_datagram - 20 (header) - 20 (sealed only) - 14 (body) - 2 (record) - 10 (vnet)
    - 14 (Ethernet)``; what the data plane's ICMP "fragmentation needed" names."""
    return (max_datagram - HEADER_SIZE - (SEALED_OVERHEAD if encrypted else 0) - BODY_SIZE
            - RECORD_HEADER_SIZE - VNET_HEADER_SIZE - ETH_HEADER_SIZE)


def overlay_mtu(path_mtu: int, *, encrypted: bool, ip_overhead: int = IPV4_UDP_OVERHEAD) -> int:
    """The largest IP packet a container sends over a path of ``path_mtu`` in one datagram
    (:func:`frame_mtu` of ``path_mtu - ip_overhead``, never below 0): 1412 plain and 1392
    sealed on a 1500-byte path."""
    return max(0, frame_mtu(path_mtu - ip_overhead, encrypted))


def max_datagram(path_mtu: int, ip_overhead: int = IPV4_UDP_OVERHEAD) -> int:
    """The ``max_datagram`` (largest UDP payload) of a path of ``path_mtu``, clamped to
    :data:`MIN_DATAGRAM` .. :data:`MAX_DATAGRAM`: 1472 on a 1500-byte IPv4 path."""
    return max(MIN_DATAGRAM, min(MAX_DATAGRAM, path_mtu - ip_overhead))
