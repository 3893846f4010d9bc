"""The wheel: ``python -m build`` makes an sdist and a wheel with the compiled data plane;
installed into a fresh venv, its ``weave-router`` runs a mesh with ``--dataplane native``.

The wheel is built (from a copy of the tree's package sources, with build isolation, as a
user would) once per source digest and cached in ``build/wheels/<digest>/``; every run
installs it into a new venv in a temporary directory. A cold build takes about a minute.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from router.testing.netns import Mesh, run_parallel
from tests.integration.image_helpers import (
    WHEEL_INPUTS,
    cached,
    copy_sources,
    digest,
    source_files,
)

BUILD_TIMEOUT = 900.0  # seconds: a cold build on two busy cores
# The test that first needs the wheel builds it (when the cache misses): give it the time.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(BUILD_TIMEOUT + 300)]
MakeMesh = Callable[..., Mesh]
PASSWORD = "wheel-test-password"


def _run(argv: list[str], *, timeout: float, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env)
    assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}\n" \
        f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    return proc


def _build_env() -> dict[str, str]:
    """Ours, with this venv's bin first (``python -m build`` runs pkg-config, cc)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEAVE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _make_dists(out: Path) -> None:
    src = copy_sources(source_files(WHEEL_INPUTS), out / "src")
    started = time.monotonic()
    _run(["nice", sys.executable, "-m", "build", "--outdir", str(out), str(src)],
         timeout=BUILD_TIMEOUT, env=_build_env())
    (out / "build-seconds").write_text(f"{time.monotonic() - started:.1f}\n")
    shutil.rmtree(src)


@pytest.fixture(scope="module")
def dists() -> Path:
    """The directory with the sdist and the wheel of the current sources."""
    entry, _ = cached("wheels", digest(source_files(WHEEL_INPUTS)), _make_dists)
    return entry


def _one(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {directory}, found {found}"
    return found[0]


@pytest.fixture(scope="module")
def venv(dists: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv (the system Python, no packages) with the wheel installed."""
    root = tmp_path_factory.mktemp("wheel-venv") / "venv"
    base = Path(sysconfig.get_config_var("BINDIR") or "/usr/bin") / "python3"
    _run([str(base), "-m", "venv", str(root)], timeout=120)
    _run([str(root / "bin" / "pip"), "install", "-q", str(_one(dists, "weave_router-*.whl"))],
         timeout=600, cwd=root)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_build_makes_an_sdist_with_the_cython_sources_and_a_platform_wheel(dists: Path) -> None:
    sdist = _one(dists, "weave_router-*.tar.gz")
    wheel = _one(dists, "weave_router-*.whl")
    assert re.fullmatch(r"weave_router-0\.1\.0-cp3\d+-cp3\d+-linux_x86_64\.whl", wheel.name)
    names = _run(["tar", "tzf", str(sdist)], timeout=30).stdout.split()
    assert any(n.endswith("/_fastpath/fastpath.pyx") for n in names), names
    assert not any(n.endswith(".c") or n.endswith(".so") for n in names), names
    listing = _run([sys.executable, "-m", "zipfile", "-l", str(wheel)], timeout=30).stdout
    assert re.search(r"^router/_fastpath\.cpython-3\d+-x86_64-linux-gnu\.so ", listing, re.M)
    assert "cli/main.py" in listing and "router/_fastpath.pyi" in listing


def test_the_installed_command_reports_the_compiled_data_plane(venv: Path) -> None:
    out = _run([str(venv / "bin" / "weave-router"), "version"], timeout=60, cwd=venv).stdout
    lines = out.splitlines()
    assert "dataplane native (compiled router._fastpath), ciphers aes256gcm secretbox" in lines
    ext = [line for line in lines if line.startswith("extension ")]
    assert len(ext) == 1 and ext[0].startswith(f"extension {venv}/lib/python3."), out
    assert "/site-packages/router/_fastpath.cpython-" in ext[0], out
    assert any(re.fullmatch(r"libsodium \d+\.\d+\.\d+ \(/\S+\)", line) for line in lines), out
    assert any(line.startswith("encryption offers ") for line in lines), out


def test_a_two_host_mesh_from_the_wheel_pings_over_the_native_sleeve(
        venv: Path, make_mesh: MakeMesh) -> None:
    mesh = make_mesh(2, router_bin=venv / "bin" / "weave-router")
    h1, h2 = mesh.hosts
    c1, c2 = mesh.add_bare_container(h1), mesh.add_bare_container(h2)
    launch = ("--dataplane", "native", "--password", PASSWORD)
    h1.launch(*launch)
    h2.launch(*launch, h1.ip)
    lines = h1.wait_established(1)
    assert "sleeve" in lines[0].text and "encrypted" in lines[0].text, lines
    pid = h1.listener_pid()
    assert pid is not None
    maps = Path(f"/proc/{pid}/maps").read_text()  # the router runs the wheel's extension
    loaded = {line.split()[-1] for line in maps.splitlines() if "_fastpath" in line}
    assert len(loaded) == 1 and next(iter(loaded)).startswith(f"{venv}/lib/"), loaded
    run_parallel(lambda: c1.attach("ip:10.40.1.1/16"), lambda: c2.attach("ip:10.40.1.2/16"))
    c1.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.40.1.2"], timeout=30)


def test_a_build_without_libsodium_stops_with_one_line(tmp_path: Path) -> None:
    """pkg-config sees only libcrypto: the build fails before any compiler runs."""
    pcdir = subprocess.run(["pkg-config", "--variable", "pcfiledir", "libcrypto"],
                           capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    only_crypto = tmp_path / "pkgconfig"
    only_crypto.mkdir()
    shutil.copy(Path(pcdir) / "libcrypto.pc", only_crypto)
    src = copy_sources(source_files(WHEEL_INPUTS), tmp_path / "src")
    env = {**_build_env(), "PKG_CONFIG_LIBDIR": str(only_crypto), "PKG_CONFIG_PATH": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
         str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    errors = [line for line in output.splitlines() if "libsodium" in line]
    assert errors == ["error: libsodium (secretbox in the data plane) was not found by "
                      "pkg-config: apt-get install libsodium-dev, or set PKG_CONFIG_PATH to "
                      "the folder of its libsodium.pc"], output
    assert "Traceback" not in output and "sodium.h" not in output, output
    assert not list((tmp_path / "dist").glob("*.whl"))
