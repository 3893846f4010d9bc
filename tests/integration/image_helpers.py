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
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
# What `python -m build` turns into the sdist and the wheel.
WHEEL_INPUTS = ("router", "cli", "_fastpath", "setup.py", "pyproject.toml", "MANIFEST.in",
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
