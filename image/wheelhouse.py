"""Fill the image build's wheelhouse: every wheel that installing weave-router needs
(its dependencies and its build requirements), downloaded here with this machine's pip
configuration, so the Containerfile installs offline (``pip install --no-index``).

    python image/wheelhouse.py build/wheelhouse

Binary wheels only, for this Python's version and platform (the image's Debian Python
must be the same minor version: 3.11 for bookworm). Skipped when the directory already
holds the wheels of the current pyproject.toml (its digest is kept in ``.pyproject``).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP = ".pyproject"


def requirements(pyproject: Path) -> list[str]:
    """The build requirements and the runtime dependencies named in ``pyproject``."""
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    return [*data["build-system"]["requires"], *data["project"]["dependencies"]]


def fill(dest: Path, pyproject: Path = ROOT / "pyproject.toml") -> bool:
    """Download into ``dest`` unless it is current; True if it downloaded."""
    digest = hashlib.sha256(pyproject.read_bytes()).hexdigest()
    if (dest / STAMP).is_file() and (dest / STAMP).read_text().strip() == digest:
        return False
    work = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(work),
         *requirements(pyproject)],
        capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        sys.exit(f"image/wheelhouse.py: pip download failed:\n{proc.stderr.strip()}")
    (work / STAMP).write_text(digest + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    work.rename(dest)
    return True


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python image/wheelhouse.py DIR")
    fill(Path(sys.argv[1]))
