"""Running a delegated IPAM plugin's DEL from the router, for a pod that vanished.

The plugin (``cni/delegate.go``) runs the delegated IPAM plugin (e.g. ``host-local``)
for ADD, DEL and CHECK itself. A pod removed while the router was down gets no DEL from
any runtime, so ADD records the plugin's name, ``CNI_PATH`` and config
(:class:`~router.cni.model.Delegate`), and the router (``CniService``, the driver)
runs ``DEL`` once it finds the pod gone, as libcni would: ``CNI_COMMAND=DEL``, the
container id and interface, an empty ``CNI_NETNS`` (the namespace is gone), the config
on stdin. This module is sans-IO but for ``os.stat``: which plugin, what environment.

Because the request that named the plugin came over the control API, the router runs
only what a plugin directory holds: the name (no ``/``) is looked up in ``CNI_PATH``,
and the file and its directory must belong to root (or the router's user) and be
writable by no one else, as ``/opt/cni/bin`` and ``/usr/lib/cni`` are.
"""

from __future__ import annotations

import os
import stat

from router.cni.model import Delegate

DEL_TIMEOUT = 10.0  # seconds a delegated DEL may take


class DelegateError(Exception):
    """The delegated plugin could not be found, or trusted, or its DEL failed."""


def _trusted(st: os.stat_result) -> bool:
    owners = {0, os.geteuid()}
    return st.st_uid in owners and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def find_plugin(delegate: Delegate) -> str:
    """The executable of ``delegate.type`` in its ``CNI_PATH``; DelegateError if there is
    none this router may run (see the module doc)."""
    for directory in delegate.cni_path.split(os.pathsep):
        if not os.path.isabs(directory):
            continue
        path = os.path.join(directory, delegate.type)
        try:
            st, dir_st = os.stat(path), os.stat(directory)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
            continue
        if not (_trusted(st) and _trusted(dir_st)):
            raise DelegateError(f"IPAM plugin {path} (or its directory) is writable by "
                                "others or not root's: not run")
        return path
    raise DelegateError(f"IPAM plugin {delegate.type!r} not found in CNI_PATH "
                        f"{delegate.cni_path!r}")


def del_environment(delegate: Delegate, container_id: str, ifname: str) -> dict[str, str]:
    """The environment of a DEL, as libcni builds it (no ``CNI_NETNS``: it is gone)."""
    return {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": container_id, "CNI_NETNS": "",
            "CNI_IFNAME": ifname, "CNI_PATH": delegate.cni_path,
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}


def del_failure(path: str, returncode: int, stdout: bytes, stderr: bytes) -> DelegateError:
    """The error of a DEL that exited ``returncode`` (its error object or stderr, cut)."""
    out = (stdout or stderr).decode(errors="replace").strip()
    return DelegateError(f"{path} DEL exited {returncode}: {out[:500]}")


__all__ = ["DEL_TIMEOUT", "DelegateError", "del_environment", "del_failure", "find_plugin"]
