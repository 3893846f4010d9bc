"""Who is on the other end of an API connection: the uid that owns the client's socket.

* unix socket: ``SO_PEERCRED`` (the kernel's record of the connecting process);
* TCP from this host (same network namespace): the client's own socket, looked up by its
  exact address pair through ``NETLINK_SOCK_DIAG`` (one hash lookup in the kernel, not a
  walk of ``/proc/net/tcp``, whose size a reconnect storm inflates);
* TCP from elsewhere: unknown (None); ``server.py`` then names the client by its address.

Wire layout of the sock_diag exchange (``linux/inet_diag.h``), all host byte order
except where marked::

    nlmsghdr          len u32, type u16 (20 SOCK_DIAG_BY_FAMILY), flags u16 (1 REQUEST),
                      seq u32, pid u32
    inet_diag_req_v2  family u8, protocol u8 (6 TCP), ext u8, pad u8, states u32,
                      sockid: sport be16, dport be16, src 16 bytes, dst 16 bytes,
                              if u32, cookie 2 x u32 (~0: none)
    reply inet_diag_msg  family u8, state u8, timer u8, retrans u8, sockid (48 bytes),
                      expires u32, rqueue u32, wqueue u32, uid u32, inode u32
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any, Protocol

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
DIAG_TIMEOUT = 0.05  # seconds: the kernel answers at once; never stall the API on it
_NLMSGHDR = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBBBI")
_SOCKID = struct.Struct("!HH16s16s")
_SOCKID_TAIL = struct.Struct("=III")  # if, cookie[2]
_MSG_UID_OFFSET = 4 + 48 + 12  # in inet_diag_msg
NO_COOKIE = 0xFFFFFFFF
ALL_STATES = 0xFFFFFFFF


class Sock(Protocol):
    """What is asked of a socket here (a stdlib or a trio socket)."""

    @property
    def family(self) -> int: ...

    def getsockname(self) -> Any: ...

    def getpeername(self) -> Any: ...

    def getsockopt(self, level: int, optname: int, buflen: int) -> bytes: ...


def unix_peer_uid(sock: Sock) -> int | None:
    """The uid of the process that connected to our unix socket."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def diag_request(family: int, local: tuple[str, int], remote: tuple[str, int],
                 seq: int = 1) -> bytes:
    """The sock_diag request for the TCP socket bound to ``local`` and connected to ``remote``."""
    src, dst = _packed(family, local[0]), _packed(family, remote[0])
    body = (_REQ.pack(family, socket.IPPROTO_TCP, 0, 0, ALL_STATES)
            + _SOCKID.pack(local[1], remote[1], src, dst)
            + _SOCKID_TAIL.pack(0, NO_COOKIE, NO_COOKIE))
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST,
                          seq, 0) + body


def parse_diag_reply(data: bytes) -> int | None:
    """The socket owner's uid from a sock_diag reply; None for an error or a short reply."""
    if len(data) < _NLMSGHDR.size:
        return None
    length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data)
    offset = _NLMSGHDR.size + _MSG_UID_OFFSET
    if kind != SOCK_DIAG_BY_FAMILY or length < offset + 4 or len(data) < offset + 4:
        return None  # NLMSG_ERROR: no such socket (it lives elsewhere, or already closed)
    return int(struct.unpack_from("=I", data, offset)[0])


def tcp_peer_uid(sock: Sock) -> int | None:
    """The uid owning the client end of our accepted TCP socket ``sock``, if it is on this
    host (in our network namespace); None if it is not, or cannot be told."""
    try:
        family = sock.family
        ours, theirs = sock.getsockname(), sock.getpeername()
        request = diag_request(family, (theirs[0], theirs[1]), (ours[0], ours[1]))
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as diag:
            diag.settimeout(DIAG_TIMEOUT)
            diag.send(request)
            return parse_diag_reply(diag.recv(4096))
    except (OSError, ValueError):
        return None


def _packed(family: int, host: str) -> bytes:
    """An address as the 16 bytes of ``sockid`` (IPv4 in the first 4, network order)."""
    address = ipaddress.ip_address(host.split("%", 1)[0])
    raw = address.packed
    if family == socket.AF_INET and len(raw) != 4:
        raise ValueError(f"{host} is not IPv4")
    return raw.ljust(16, b"\0")
