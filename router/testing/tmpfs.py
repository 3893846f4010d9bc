"""A tiny tmpfs that tests fill up, to see what a full disk does (needs root).

::

    with tiny_tmpfs(1024 * 1024) as disk:
        db = disk.path / "weave.db"
        ...
        disk.fill()        # a filler file takes every free block: writes get ENOSPC
        ...
        disk.release()     # the filler goes: there is room again

The mount is made in a fresh temporary directory and unmounted (then the directory
removed) when the block ends, even if it fails; a mount left behind by a killed test
is found by its directory prefix (``wr-tmpfs-<pid>-``) and is unmounted by
:func:`cleanup_stale_tmpfs`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

FILL_CHUNK = 4096  # bytes per write while filling: one tmpfs page
PREFIX = "wr-tmpfs-"


class TinyDisk:
    """A mounted tmpfs of ``size`` bytes at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> int:
        """Write the filler file until the disk is full; the bytes it took."""
        written = 0
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (FILL_CHUNK, 1):  # pages, then whatever partial page is left
                while True:
                    try:
                        written += os.write(fd, b"\0" * chunk)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        return written

    def release(self) -> None:
        """Remove the filler: the space it took is free again."""
        self.filler.unlink(missing_ok=True)

    def free_bytes(self) -> int:
        """Bytes free on the tmpfs now."""
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize


@contextlib.contextmanager
def tiny_tmpfs(size: int) -> Iterator[TinyDisk]:
    """Mount a tmpfs of ``size`` bytes in a new temporary directory for the block."""
    cleanup_stale_tmpfs()
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                        str(path)], check=True, capture_output=True, text=True, timeout=10)
    except subprocess.CalledProcessError as exc:
        path.rmdir()
        raise RuntimeError(f"cannot mount a tmpfs (needs root): {exc.stderr.strip()}") from exc
    try:
        yield TinyDisk(path)
    finally:
        _unmount(path)


def _unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=10)
    with contextlib.suppress(OSError):
        path.rmdir()


def cleanup_stale_tmpfs() -> None:
    """Unmount tmpfs test disks left by processes that no longer exist."""
    tmp = Path(tempfile.gettempdir())
    for entry in tmp.glob(f"{PREFIX}*"):
        pid = entry.name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _unmount(entry)
