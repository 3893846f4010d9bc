"""Opening a TAP device with a virtio-net header and offloads: the capture device of sleeve.

Blocking system calls, no trio: ``router/kernel/netlink.py`` calls :func:`open_tap` on its
worker thread, inside the namespace the device must live in (a TAP is created in the
namespace of the thread that opens ``/dev/net/tun``).

Steps, each an ``ioctl(2)`` on ``/dev/net/tun``:

1. ``TUNSETIFF`` with ``struct ifreq`` (40 bytes)::

       0               16      18                                     40
       +---------------+-------+--------------------------------------+
       | ifr_name[16]  | flags | padding (rest of the ifreq union)    |
       +---------------+-------+--------------------------------------+
       name: NUL-padded ASCII; flags: u16, native order
       = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR

   Frames then carry no packet-information prefix, and every frame read or written starts
   with a ``struct virtio_net_hdr`` (10 bytes: flags u8, gso_type u8, hdr_len u16,
   gso_size u16, csum_start u16, csum_offset u16; little endian).
2. ``TUNSETVNETHDRSZ`` with a pointer to an ``int``: the header length, 10.
3. ``TUNSETOFFLOAD`` with the flags *by value*: ``TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6``.
   The kernel may now hand us frames with partial checksums and TCP super-frames up to
   64 KiB (described by the header), which is what lets the data plane move big batches;
   ``ethtool -k`` on the device then shows tx-checksumming and TSO on.

The device is not persistent: closing the descriptor removes it.
"""

from __future__ import annotations

import fcntl
import os
import struct

from router.errors import KernelError, LocalProtocolError

TUN_PATH = "/dev/net/tun"
IFNAMSIZ = 16
IFREQ_SIZE = 40  # sizeof(struct ifreq) on Linux x86-64/arm64

# ioctl numbers: _IOW('T', nr, int) = 1 << 30 | 4 << 16 | ord('T') << 8 | nr
TUNSETIFF = 0x400454CA  # nr 202
TUNSETOFFLOAD = 0x400454D0  # nr 208
TUNSETVNETHDRSZ = 0x400454D8  # nr 216

IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

TUN_F_CSUM = 0x01  # we accept frames with a partial checksum
TUN_F_TSO4 = 0x02  # ... TCP/IPv4 super-frames
TUN_F_TSO6 = 0x04  # ... TCP/IPv6 super-frames
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6

VNET_HDR_LEN = 10  # bytes, struct virtio_net_hdr (no num_buffers field)


def ifreq(name: str, flags: int) -> bytes:
    """The ``struct ifreq`` for TUNSETIFF (layout in the module docstring)."""
    raw = name.encode("ascii")
    if not raw or len(raw) >= IFNAMSIZ:
        raise LocalProtocolError(f"invalid TAP name {name!r}")
    return struct.pack(f"{IFNAMSIZ}sH{IFREQ_SIZE - IFNAMSIZ - 2}x", raw, flags)


def open_tap(name: str, *, vnet_hdr_len: int = VNET_HDR_LEN, offloads: int = OFFLOADS) -> int:
    """Create/attach TAP ``name`` in the calling thread's namespace; return its descriptor.

    The descriptor is blocking and close-on-exec; the caller owns it. Raises KernelError
    (``EBUSY`` if another descriptor has the device open, ``EINVAL`` if a non-TAP link has
    that name, ``EPERM`` without CAP_NET_ADMIN).
    """
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise KernelError(exc.errno or 0, f"open {TUN_PATH}: {exc.strerror}") from None
    try:
        _ioctl(fd, TUNSETIFF, ifreq(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR), name)
        _ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", vnet_hdr_len), name)
        _ioctl(fd, TUNSETOFFLOAD, offloads, name)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _ioctl(fd: int, request: int, arg: bytes | int, name: str) -> None:
    try:
        fcntl.ioctl(fd, request, arg)
    except OSError as exc:
        raise KernelError(exc.errno or 0, f"TAP {name}: ioctl {request:#x}: {exc.strerror}") \
            from None


class Tap:
    """An open TAP device (see :class:`router.kernel.port.TapDevice`)."""

    def __init__(self, name: str, fd: int) -> None:
        self._name = name
        self._fd = fd

    @property
    def name(self) -> str:
        """The device name."""
        return self._name

    def fileno(self) -> int:
        """The descriptor; -1 once closed."""
        return self._fd

    def close(self) -> None:
        """Close the descriptor, which removes the device. Idempotent."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __repr__(self) -> str:
        return f"<Tap {self._name} fd={self._fd}>"
