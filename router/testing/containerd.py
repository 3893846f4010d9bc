"""A private containerd for tests, started in a host namespace and stopped by the test.

:class:`Containerd` runs ``containerd`` with its own root, state and socket (under a
short directory of its own: unix socket paths are limited to 108 bytes) and the CRI
plugin disabled, in ``namespace``'s network namespace (``nsenter --net``). :meth:`Containerd.ctr`
builds a ``ctr`` command line for it; with ``cni_conf_dir`` / ``cni_bin_dir`` it runs
``ctr`` in a mount namespace of its own where those directories are mounted on
``/etc/cni/net.d`` and ``/opt/cni/bin`` (ctr 1.6's ``--cni`` reads only those, and the
machine's own stay untouched)::

    with Containerd(host) as ctd:
        ctd.ctr("run", "--rm", "--cni", "--rootfs", rootfs, "c1", "sh", cni_conf_dir=...)

containerd 1.6 still puts its shims' sockets in ``/run/containerd/s`` (a fixed path);
they go when the shims exit. :meth:`Containerd.close` kills what is left of its tasks,
stops containerd (SIGTERM, then SIGKILL) and removes its directory.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from router.testing.namespace import CommandError, Namespace, run_command, wait_until

__all__ = ["Containerd"]

STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL


class Containerd:
    """One containerd of its own in ``namespace`` (see the module doc)."""

    def __init__(self, namespace: Namespace, *, start_timeout: float = 20.0) -> None:
        self.namespace = namespace
        self.dir = Path(tempfile.mkdtemp(prefix="wrctd-", dir="/tmp"))
        self.address = self.dir / "c.sock"
        self.config = self.dir / "config.toml"
        self.config.write_text(
            "version = 2\n"
            f'root = "{self.dir / "root"}"\n'
            f'state = "{self.dir / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            "[grpc]\n"
            f'  address = "{self.address}"\n'
            '[plugins."io.containerd.internal.v1.opt"]\n'
            f'  path = "{self.dir / "opt"}"\n'
        )
        self._log = open(self.dir / "containerd.log", "w")  # noqa: SIM115 (closed in close)
        self.proc = subprocess.Popen(self._in_netns(["containerd", "--config", str(self.config)]),
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self._closed = False
        try:
            wait_until("containerd answering", self._probe, timeout=start_timeout,
                       context=self.log_tail)
        except BaseException:
            self.close()
            raise

    def _in_netns(self, argv: list[str]) -> list[str]:
        # nsenter, not `ip netns exec`: that one mounts a fresh /sys without the cgroup
        # hierarchies runc needs
        return ["nsenter", f"--net=/run/netns/{self.namespace.name}", *argv]

    def _probe(self) -> tuple[bool, str]:
        if self.proc.poll() is not None:
            raise CommandError(f"containerd exited {self.proc.returncode}:\n{self.log_tail()}")
        proc = self.run("version", check=False, timeout=5)
        return proc.returncode == 0, proc.stderr.strip()

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.dir / "containerd.log").read_text().splitlines()[-lines:])
        return ""

    def ctr(self, *args: str, cni_conf_dir: Path | None = None,
            cni_bin_dir: Path | None = None) -> list[str]:
        """``ctr --address SOCK ARGS`` in the namespace (with the CNI dirs mounted)."""
        ctr = ["ctr", "--address", str(self.address), *args]
        if cni_conf_dir is None and cni_bin_dir is None:
            return self._in_netns(ctr)
        mounts = []
        if cni_conf_dir is not None:
            mounts.append(f"mount --bind {shlex.quote(str(cni_conf_dir))} /etc/cni/net.d")
        if cni_bin_dir is not None:  # /opt/cni need not exist: a tmpfs over /opt holds it
            mounts += ["mount -t tmpfs wr-cni /opt", "mkdir -p /opt/cni/bin",
                       f"mount --bind {shlex.quote(str(cni_bin_dir))} /opt/cni/bin"]
        script = " && ".join([*mounts, 'exec "$@"'])
        return self._in_netns(["unshare", "--mount", "--propagation", "private",
                               "sh", "-c", script, "ctr", *ctr])

    def io_args(self) -> list[str]:
        """Flags for ``ctr run`` (``--fifo-dir`` also for ``ctr tasks exec``) keeping its
        FIFOs and runc's state in this containerd's directory, not /run/containerd."""
        return ["--fifo-dir", str(self.dir / "fifo"), "--runc-root", str(self.dir / "runc")]

    def run(self, *args: str, check: bool = True,
            timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return run_command(self.ctr(*args), check=check, timeout=timeout)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(CommandError):
            tasks = self.run("tasks", "list", "--quiet", check=False, timeout=10).stdout.split()
            for task in tasks:
                self.run("tasks", "kill", "--signal", "SIGKILL", task, check=False, timeout=10)
        if self.proc.poll() is None:
            self.proc.terminate()
            deadline = time.monotonic() + STOP_GRACE
            while self.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Containerd:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
