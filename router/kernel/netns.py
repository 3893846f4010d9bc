"""Naming network namespaces: what a user typed -> the path of a namespace file.

Re-exported by ``router/kernel/port.py`` (its callers import it from there).
"""

from __future__ import annotations

import fcntl
import os

from router.errors import ConfigError

NETNS_RUN_DIR = "/run/netns"  # where `ip netns add NAME` binds namespaces
_NS_GET_NSTYPE = 0xB703  # ioctl(2) on an nsfs file: which kind of namespace it is
_CLONE_NEWNET = 0x40000000


def resolve_netns(spec: str, *, run_dir: str = NETNS_RUN_DIR, allow_own: bool = False) -> str:
    """The path of the network namespace a user named by ``spec``.

    ``spec`` is a name from ``ip netns`` (``c1`` -> ``/run/netns/c1``), a path to a
    namespace file (``/proc/1234/ns/net``, ``/run/netns/c1``), or a PID (``1234`` ->
    ``/proc/1234/ns/net``). The path must open and be a network namespace; unless
    ``allow_own``, it must not be the caller's own namespace (a container there could not be
    attached: the veth would land in the host). Raises ConfigError naming ``spec``.
    """
    spec = spec.strip()
    if not spec:
        raise ConfigError("container: empty namespace name")
    if spec.isdigit():
        path = f"/proc/{int(spec)}/ns/net"
        if not os.path.exists(f"/proc/{int(spec)}"):
            raise ConfigError(f"container {spec}: no process with that PID")
    elif "/" in spec:
        path = spec
    elif spec in (".", ".."):
        raise ConfigError(f"container {spec!r}: not a namespace name")
    else:
        path = os.path.join(run_dir, spec)
    ino = _netns_inode(spec, path)
    if not allow_own and ino == _netns_inode("own", "/proc/thread-self/ns/net"):
        raise ConfigError(
            f"container {spec}: that is this router's own network namespace; "
            "attach a container with its own namespace"
        )
    return path


def netns_inode(path: str) -> int:
    """The inode number that identifies the namespace at ``path`` (ConfigError if none)."""
    return _netns_inode(path, path)


def _netns_inode(spec: str, path: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"container {spec}: no network namespace at {path}") from None
    except OSError as exc:
        raise ConfigError(f"container {spec}: cannot open {path}: {exc.strerror}") from None
    try:
        try:
            kind = fcntl.ioctl(fd, _NS_GET_NSTYPE)
        except OSError:
            kind = -1
        if kind != _CLONE_NEWNET:
            raise ConfigError(f"container {spec}: {path} is not a network namespace")
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)
