"""A private podman for tests: its own storage, config and locks, optionally inside a
network namespace, and a from-scratch busybox image (no registry is reachable here).

Each :class:`Podman` keeps everything under one directory (``root``,
``tmp`` and its ``containers.conf``), so two instances (two tests, two engineers, the
CNI tests and an image build) never share state:

* storage driver ``vfs`` by default (nothing mounted on the host; ``overlay`` is
  faster for big images but mounts), file locks under ``tmp``
  (``lock_type = "file"``: podman's default shared-memory locks are one segment per
  machine, and a fresh ``tmp`` makes podman free *every* lock in it),
* ``runc`` (crun fails on this machine's hybrid cgroups), ``cgroupfs``, file events,
  and explicit ``default_ulimits`` (podman's defaults fail here too),
* with ``cni_plugin_dirs`` / ``network_config_dir``: the CNI network backend (netavark
  does not run custom plugins) reading conflists from that directory only.

With ``namespace``, every command runs as ``nsenter --net=/run/netns/NAME podman ...``:
the containers' namespaces are podman's own (``/run/netns/netns-*``, visible machine-wide),
but the CNI plugins podman runs (and so what they dial, e.g. a router on ``127.0.0.1``)
are in that network namespace. Usage::

    image = busybox_image(ROOT / "build" / "images")       # cached tarball
    with Podman(tmp / "podman", namespace=host, cni_plugin_dirs=[bin_dir],
                network_config_dir=conf_dir) as podman:
        podman.load(image)
        podman.run("run", "-d", "--network", "weave", IMAGE, "sleep", "600")

:meth:`Podman.close` removes every container and pod it made and deletes the directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from router.testing.namespace import CommandError, Namespace, run_command

__all__ = ["BUSYBOX", "IMAGE", "Podman", "busybox_image", "busybox_rootfs",
           "netavark_chains", "no_new_netavark_chains"]

BUSYBOX = Path("/usr/bin/busybox")  # Debian's busybox-static: no shared libraries
IMAGE = "localhost/wr-busybox:latest"
APPLETS = ("sh", "ping", "ip", "sleep", "cat", "ls", "hostname", "ifconfig", "route",
           "wget", "nc", "true", "env", "ps", "kill")
ULIMITS = ("nofile=1024:1024", "nproc=4096:4096")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def busybox_rootfs(dest: Path) -> Path:
    """A root filesystem at ``dest``: ``/bin/busybox`` (static) and links for the applets,
    plus the empty directories a runtime mounts onto. Rebuilt when busybox changed."""
    stamp = dest / ".busybox"
    digest = _digest(BUSYBOX)
    if stamp.exists() and stamp.read_text() == digest:
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    for sub in ("bin", "etc", "proc", "sys", "dev", "tmp", "run"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    for applet in APPLETS:
        (dest / "bin" / applet).symlink_to("busybox")
    (dest / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (dest / "etc" / "group").write_text("root:x:0:\n")
    stamp.write_text(digest)
    return dest


def busybox_image(cache_dir: Path) -> Path:
    """``cache_dir/busybox-<digest>.tar``: the rootfs of :func:`busybox_rootfs` as a tarball
    for ``podman import`` (built once per busybox binary, then reused)."""
    tar = cache_dir / f"busybox-{_digest(BUSYBOX)}.tar"
    if tar.exists():
        return tar
    rootfs = busybox_rootfs(cache_dir / "busybox-rootfs")
    partial = tar.with_suffix(f".{os.getpid()}.part")
    with tarfile.open(partial, "w") as out:
        for entry in sorted(rootfs.iterdir()):
            if entry.name != ".busybox":
                out.add(entry, arcname=entry.name)
    partial.rename(tar)
    return tar


class Podman:
    """One podman installation of its own under ``state_dir`` (see the module doc)."""

    def __init__(self, state_dir: Path, *, namespace: Namespace | None = None,
                 cni_plugin_dirs: Sequence[Path] = (), network_config_dir: Path | None = None,
                 runtime: str = "runc", storage_driver: str = "vfs",
                 env: Mapping[str, str] | None = None) -> None:
        self.dir = state_dir
        self.storage_driver = storage_driver
        self.namespace = namespace
        self.conf = state_dir / "containers.conf"
        self.network_config_dir = network_config_dir
        for sub in ("root", "tmp"):
            (state_dir / sub).mkdir(parents=True, exist_ok=True)
        # podman refuses a runroot longer than 50 characters: a short one of its own
        self.runroot = Path(tempfile.mkdtemp(prefix="wrpod-", dir="/tmp"))
        self.conf.write_text(_containers_conf(runtime, cni_plugin_dirs, network_config_dir,
                                              state_dir / "tmp"))
        self._env = {**(env or os.environ), "CONTAINERS_CONF": str(self.conf)}
        self._closed = False

    def argv(self, *args: str) -> list[str]:
        podman = ["podman", "--root", str(self.dir / "root"),
                  "--runroot", str(self.runroot), "--tmpdir", str(self.dir / "tmp"),
                  "--storage-driver", self.storage_driver, *args]
        if self.namespace is None:
            return podman
        # nsenter, not `ip netns exec`: that one runs podman in a mount namespace of its own
        # (a slave of the host's), so the /run/netns/* mounts podman makes for its
        # containers would be invisible to the CNI plugins' router
        return ["nsenter", f"--net=/run/netns/{self.namespace.name}", *podman]

    def run(self, *args: str, check: bool = True, timeout: float = 60.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """``podman ARGS``; :class:`CommandError` on a non-zero exit with ``check``."""
        return run_command(self.argv(*args), check=check, timeout=timeout, input=input,
                           env=self._env)

    def load(self, tarball: Path, ref: str = IMAGE) -> str:
        """``podman import`` a rootfs tarball as ``ref`` (the image id), with ``PATH`` set
        (``podman kube play`` gives a container none of its own)."""
        out = self.run("import", "--change", "ENV PATH=/bin", "--change", 'CMD ["sh"]',
                       str(tarball), ref)
        return out.stdout.strip().splitlines()[-1]

    def inspect(self, *names: str) -> list[dict[str, object]]:
        out = json.loads(self.run("inspect", *names).stdout)
        assert isinstance(out, list)
        return out

    def close(self) -> None:
        """Remove every container and pod of this podman, then its directory."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(CommandError):
            self.run("pod", "rm", "--all", "--force", "--time", "0", check=False, timeout=60)
        with contextlib.suppress(CommandError):
            self.run("rm", "--all", "--force", "--time", "0", check=False, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.runroot, ignore_errors=True)

    def __enter__(self) -> Podman:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def netavark_chains() -> set[str]:
    """The netavark chains (``NETAVARK-*``, ``NETAVARK_*``, put there through iptables-nft)
    in the nftables ruleset of the namespace the caller runs in (the tests': the root one).

    podman 4.3 with netavark (Debian's default backend) adds them, in ``table ip nat`` and
    ``table ip filter``, the first time it gives a container its default network; they
    stay after the container is gone. Tests ask for a network explicitly (``--network
    none|host|ns:PATH``, or the CNI backend of :class:`Podman`), so none should appear.
    """
    out = subprocess.run(["nft", "list", "chains"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    return {line.split()[1] for line in out.splitlines()
            if line.strip().startswith("chain NETAVARK")}


@contextlib.contextmanager
def no_new_netavark_chains(what: str) -> Iterator[None]:
    """AssertionError after the body if it left a new netavark chain in this namespace."""
    before = netavark_chains()
    yield
    new = netavark_chains() - before
    assert not new, (f"{what} left netavark's firewall chains {' '.join(sorted(new))} in the "
                     "root network namespace: some podman call ran a container on netavark's "
                     "default network (give it --network or a CNI config)")


def _toml_list(items: Sequence[object]) -> str:
    return "[" + ", ".join(json.dumps(str(i)) for i in items) + "]"


def _containers_conf(runtime: str, plugin_dirs: Sequence[Path], config_dir: Path | None,
                     tmp: Path) -> str:
    events = json.dumps(str(tmp / "events.log"))
    lines = ["[containers]", f"default_ulimits = {_toml_list(ULIMITS)}", "pids_limit = 0",
             "[engine]", f"runtime = {json.dumps(runtime)}", 'cgroup_manager = "cgroupfs"',
             'events_logger = "file"', f"events_logfile_path = {events}",
             'lock_type = "file"', "[network]"]
    if config_dir is not None:
        lines += ['network_backend = "cni"', f"network_config_dir = {json.dumps(str(config_dir))}"]
    if plugin_dirs:
        lines.append(f"cni_plugin_dirs = {_toml_list(list(plugin_dirs))}")
    return "\n".join(lines) + "\n"
