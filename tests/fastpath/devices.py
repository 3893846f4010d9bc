"""Real devices for the thread tests: TAPs and sockets in throwaway network namespaces.

Only what the data-plane tests need (the router's own plumbing is ``router/kernel/``):

* :class:`Namespaces` creates namespaces named ``wrfp<pid><suffix>`` (loopback up) and
  deletes them on close, even after a failure; deleting a namespace removes its links.
* :func:`in_netns` runs a function in a short-lived thread that has entered a namespace
  (``setns`` changes only the calling thread), so sockets and TAPs are created there and
  then used from any thread.
* :func:`open_tap` opens ``/dev/net/tun`` as a TAP with a vnet header and TSO offloads,
  exactly as the router's capture device is opened.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import subprocess
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
_libc = ctypes.CDLL(None, use_errno=True)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Namespaces:
    """Network namespaces ``wrfp<pid><suffix>``; ``close()`` deletes every one."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add(self, suffix: str) -> str:
        name = f"wrfp{os.getpid()}{suffix}"
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        ip("netns", "add", name)
        self.names.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def close(self) -> None:
        for name in reversed(self.names):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        self.names.clear()

    def __enter__(self) -> Namespaces:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def in_netns(netns: str, fn: Callable[[], T]) -> T:
    """``fn()`` run in a thread that entered network namespace ``netns``."""
    result: list[T] = []
    errors: list[BaseException] = []

    def enter_and_run() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {netns} failed")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:  # handed to the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=enter_and_run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def open_tap(netns: str, ifname: str, address: str) -> int:
    """A TAP fd (vnet header, TSO) for a new device in ``netns`` with ``address``, up."""

    def create() -> int:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(),
                                                   IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
            fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        except BaseException:
            os.close(fd)
            raise
        return fd

    fd = in_netns(netns, create)
    ip("-n", netns, "addr", "add", address, "dev", ifname)
    ip("-n", netns, "link", "set", ifname, "up")
    return fd
