"""The API's unix socket: root only (mode 0660, owner and group of the router).

Binding (:func:`bind_unix_socket`):

1. ``PATH`` exists and is not a socket: refuse (ConfigError naming ``--socket``);
2. ``PATH`` is a socket another router answers on: refuse (``OSError(EADDRINUSE)``);
   one nobody answers on is a leftover of a router that died, and is replaced;
3. bind a temporary name in the same directory, ``chmod 0660``, then rename it onto
   ``PATH``: the socket is never reachable with looser permissions, and the switch from
   a leftover is atomic. The directory is created (0755) if missing.

On the way out, :func:`remove_unix_socket` deletes ``PATH`` if it is still ours (a newer
router may have replaced it).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

import trio

from router.errors import ConfigError

SOCKET_MODE = 0o660
DIR_MODE = 0o755
PROBE_TIMEOUT = 1.0  # seconds to see whether another router answers on the socket
MAX_PATH_BYTES = 107  # sun_path holds 108 bytes with the terminating NUL
LISTEN_BACKLOG = 128


async def bind_unix_socket(path: Path) -> tuple[socket.socket, int]:
    """A listening (non-blocking) socket on ``path`` (module doc) and the inode it got."""
    if len(os.fsencode(path)) > MAX_PATH_BYTES:
        raise ConfigError(f"--socket: {path} is longer than {MAX_PATH_BYTES} bytes")
    await _refuse_if_taken(path)
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(temporary))
        os.chmod(temporary, SOCKET_MODE)
        os.rename(temporary, path)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
        return sock, os.stat(path).st_ino
    except BaseException:
        sock.close()
        temporary.unlink(missing_ok=True)
        raise


async def _refuse_if_taken(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"--socket: {path} exists and is not a socket")
    probe = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        with trio.move_on_after(PROBE_TIMEOUT):  # a timeout: it listens, but is busy
            await probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return  # a leftover: nobody listens
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"another router answers on {path}")


def remove_unix_socket(path: Path, inode: int) -> None:
    """Delete ``path`` if it is still the socket we bound (inode ``inode``)."""
    try:
        if os.lstat(path).st_ino == inode:
            path.unlink()
    except FileNotFoundError:
        pass
