"""Build of the native data plane, ``router._fastpath``, and of ``router.wire._cborscan``.

Everything else about the package lives in ``pyproject.toml``. This file only describes
the Cython extensions and their build switches:

* ``WEAVE_FASTPATH_ANNOTATE=1`` writes Cython's HTML annotation next to the sources.
* ``WEAVE_FASTPATH_DEBUG=1`` builds with ``-O0 -g`` and Cython's bounds checks on.

libsodium (secretbox) and OpenSSL's libcrypto (AES-256-GCM) are found through pkg-config
when the extension is compiled (``build_ext``, so making an sdist needs neither); a missing
one stops the build with one line naming it and the Debian package to install. A wheel is
never built without the extension: a tree (or sdist) without ``_fastpath/*.pyx`` is an
error, not a pure-Python wheel that would refuse ``--dataplane native`` at run time.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
SOURCES = sorted(str(p.relative_to(HERE)) for p in (HERE / "_fastpath").glob("*.pyx"))
DEBUG = os.environ.get("WEAVE_FASTPATH_DEBUG") == "1"
# pkg-config name -> (what it is for, Debian package with its .pc file)
LIBRARIES = {"libsodium": ("secretbox", "libsodium-dev"),
             "libcrypto": ("AES-256-GCM", "libssl-dev")}


def _fail(message: str) -> None:
    """Stop the build with one line (no traceback, no compiler run)."""
    sys.exit(f"error: {message}")


def _pkg_config(*args: str) -> list[str]:
    if shutil.which("pkg-config") is None:
        _fail("pkg-config is not installed; the data plane finds libsodium and libcrypto "
              "with it: apt-get install pkg-config libsodium-dev libssl-dev")
    for name, (purpose, package) in LIBRARIES.items():
        found = subprocess.run(["pkg-config", "--exists", name], capture_output=True)
        if found.returncode != 0:
            _fail(f"{name} ({purpose} in the data plane) was not found by pkg-config: "
                  f"apt-get install {package}, or set PKG_CONFIG_PATH to the folder of "
                  f"its {name}.pc")
    out = subprocess.run(["pkg-config", *args, *LIBRARIES], check=True, capture_output=True,
                         text=True).stdout
    return shlex.split(out)


class BuildFastpath(build_ext):
    """``build_ext`` that asks pkg-config for libsodium's and libcrypto's flags first."""

    def run(self) -> None:
        cflags = _pkg_config("--cflags")
        libs = _pkg_config("--libs")
        for ext in self.extensions:
            ext.extra_compile_args = ["-O0", "-g"] if DEBUG else ["-O3"]
            if ext.name == "router._fastpath":  # the CBOR scan needs no library
                ext.extra_compile_args = [*cflags, *ext.extra_compile_args]
                ext.extra_link_args = [*libs, *ext.extra_link_args]
        super().run()


def _extensions() -> list[Extension]:
    if not SOURCES:
        _fail(f"no _fastpath/*.pyx in {HERE}: the compiled data plane cannot be built "
              "(an sdist made without MANIFEST.in?)")
    from Cython.Build import cythonize

    included = [*(HERE / "_fastpath").glob("*.pxi"), *(HERE / "_fastpath").glob("*.h")]
    ext = Extension("router._fastpath", sources=SOURCES,
                    depends=sorted(str(p.relative_to(HERE)) for p in included))
    # the CBOR structure scan of router/wire/cbor.py: plain C
    scan = Extension("router.wire._cborscan", sources=["_wire/cborscan.pyx"])
    return cythonize(
        [ext, scan],
        language_level=3,
        annotate=os.environ.get("WEAVE_FASTPATH_ANNOTATE") == "1",
        compiler_directives={
            "boundscheck": DEBUG,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": DEBUG,
        },
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildFastpath})
