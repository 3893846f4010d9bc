"""Helpers of the packaging tests (``test_wheel.py``, ``test_image.py``): what the wheel
and the image are built from, and caches under ``build/`` keyed by a digest of it.

A cache entry is a directory ``build/<kind>/<digest>/``, filled in a temporary sibling
and renamed into place, so an interrupted build never leaves a half entry; older entries
of the same kind are removed once a new one is in place. A lock file serialises two test
runs that would build the same thing at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
# What `python -m build` turns into the sdist and the wheel.
WHEEL_INPUTS = ("router", "cli", "_fastpath", "_wire", "setup.py", "pyproject.toml", "MANIFEST.in",
                "README.md")


def source_files(roots: Iterable[str]) -> list[str]:
    """The files under ``roots`` that git tracks or would track (committed or not, not
    ignored), relative to the tree, sorted."""
    out = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard",
         "-z", "--", *roots],
        check=True, capture_output=True, timeout=30,
    ).stdout
    names = {name.decode() for name in out.split(b"\0") if name}
    return sorted(n for n in names if (ROOT / n).is_file())


def digest(files: Iterable[str], *extra: str) -> str:
    """A short digest of the names and contents of ``files`` (and of ``extra`` strings)."""
    h = hashlib.sha256()
    for name in files:
        h.update(name.encode() + b"\0" + (ROOT / name).read_bytes() + b"\0")
    for text in extra:
        h.update(text.encode() + b"\0")
    return h.hexdigest()[:16]


def copy_sources(files: Iterable[str], dest: Path) -> Path:
    """Copy ``files`` (relative to the tree) into ``dest``, keeping their paths and modes."""
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return dest


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created) for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached(kind: str, key: str, make: Callable[[Path], None]) -> tuple[Path, bool]:
    """``build/<kind>/<key>/``, made by ``make(directory)`` unless it exists already.

    Returns the directory and whether it was built now (False: taken from the cache).
    """
    base = BUILD / kind
    entry = base / key
    with locked(base / ".lock"):
        if entry.is_dir():
            return entry, False
        for stale in base.glob(".*-*"):  # an interrupted build's (we hold the lock)
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=base))
        try:
            make(work)
            work.rename(entry)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        for old in base.iterdir():
            if old.is_dir() and old != entry and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
    return entry, True


# --- the image -------------------------------------------------------------------------

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
IMAGE_INPUTS = (*WHEEL_INPUTS, "cni", "Containerfile", ".containerignore", "image")
PODMAN_DIR = BUILD / "podman-pkg"  # this suite's own podman storage (not the system's)
CONTAINERS_CONF = ROOT / "image" / "containers.conf"  # runc, cgroupfs, explicit ulimits
IMAGE_BUILD_TIMEOUT = 1800.0  # seconds: a cold build (apt in both stages) on busy cores


class Podman:
    """``podman`` with storage under ``build/`` and :data:`CONTAINERS_CONF`, plus
    ``netns = "none"``: a container gets the network it asks for (``--network host`` to
    build, ``ns:PATH`` for a router) or none, never netavark's default bridge network,
    whose firewall chains (``NETAVARK-*`` in ``table ip nat`` / ``ip filter``) would stay
    in the root network namespace."""

    def __init__(self, base: Path = PODMAN_DIR) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.conf = base / "containers.conf"
        text = f"\n{CONTAINERS_CONF.read_text()}"
        assert "\n[containers]\n" in text, f"{CONTAINERS_CONF} has no [containers] table"
        part = base / f".containers.conf.{os.getpid()}"  # renamed: readers never see half
        part.write_text(text.replace("\n[containers]\n", '\n[containers]\nnetns = "none"\n',
                                     1).lstrip("\n"))
        part.rename(self.conf)

    def argv(self, *args: str) -> list[str]:
        return ["podman", "--root", str(self.base / "root"), "--runroot",
                str(self.base / "runroot"), "--storage-driver", "overlay", *args]

    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True, timeout: float = 60.0,
            nice: bool = False) -> subprocess.CompletedProcess[str]:
        argv = (["nice"] if nice else []) + self.argv(*args)
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=self.env())
        if check and proc.returncode != 0:
            raise AssertionError(f"`{' '.join(argv)}` exited {proc.returncode}\n"
                                 f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
        return proc

    def remove_build_leftovers(self) -> None:
        """Remove the working containers an interrupted ``podman build`` left in storage
        (callers hold the storage's lock, so no build of ours is running)."""
        ids = self.run("ps", "-a", "--external", "--format",
                       "{{.ID}} {{.Command}}").stdout.split("\n")
        stale = [line.split()[0] for line in ids if line.endswith(" buildah")]
        if stale:
            self.run("rm", "-f", *stale, check=False, timeout=120)

    def exists(self, image: str) -> bool:
        return self.run("image", "exists", image, check=False).returncode == 0


def base_tarball() -> tuple[Path, bool]:
    """``build/image-base/<key>/rootfs.tar`` (debootstrap); whether it was made now."""
    key = digest(["image/base.sh"], SUITE, MIRROR)

    def make(out: Path) -> None:
        subprocess.run(["nice", str(ROOT / "image/base.sh"), str(out / "rootfs.tar"), SUITE,
                        MIRROR], check=True, timeout=IMAGE_BUILD_TIMEOUT)

    entry, made = cached("image-base", key, make)
    return entry / "rootfs.tar", made


def ensure_image(podman: Podman) -> tuple[str, dict[str, float]]:
    """The image of the current sources (``localhost/weave-router:<digest>``), built unless
    this storage has it; and the seconds each step took now (empty when all was cached)."""
    times: dict[str, float] = {}
    with locked(podman.base / ".lock"):
        started = time.monotonic()
        tarball, made = base_tarball()
        if made:
            times["debootstrap"] = time.monotonic() - started
        base = f"localhost/weave-router-base:{tarball.parent.name}"
        if not podman.exists(base):
            started = time.monotonic()
            podman.run("import", str(tarball), base, timeout=300)
            times["import"] = time.monotonic() - started
        subprocess.run([sys.executable, str(ROOT / "image/wheelhouse.py"),
                        str(BUILD / "wheelhouse")], check=True, timeout=600)
        tag = f"localhost/weave-router:{digest(source_files(IMAGE_INPUTS), base)}"
        if not podman.exists(tag):
            podman.remove_build_leftovers()
            started = time.monotonic()
            podman.run("build", "--network", "host", "--pull=never", "--build-arg",
                       f"BASE={base}", "-t", tag, "-f", str(ROOT / "Containerfile"), str(ROOT),
                       timeout=IMAGE_BUILD_TIMEOUT, nice=True)
            times["build"] = time.monotonic() - started
            _drop_older_images(podman, tag)
    return tag, times


def _drop_older_images(podman: Podman, keep: str) -> None:
    """Untag the images of earlier sources; their layers go with ``image prune``."""
    out = podman.run("images", "--format", "{{.Repository}}:{{.Tag}}",
                     "localhost/weave-router").stdout.split()
    for name in out:
        if name != keep and name.startswith("localhost/weave-router:"):
            podman.run("rmi", "-f", name, check=False)
