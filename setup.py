"""Build of the native data plane, ``router._fastpath``, and of ``router.wire._cborscan``.

Everything else about the package lives in ``pyproject.toml``. This file only describes
the Cython extensions and their build switches:

* ``WEAVE_FASTPATH_ANNOTATE=1`` writes Cython's HTML annotation next to the sources.
* ``WEAVE_FASTPATH_DEBUG=1`` builds with ``-O0 -g`` and Cython's bounds checks on.

libsodium (secretbox) and OpenSSL's libcrypto (AES-256-GCM) are found through pkg-config;
without them the build stops with a message that names the Debian packages to install.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).parent
SOURCES = sorted(str(p.relative_to(HERE)) for p in (HERE / "_fastpath").glob("*.pyx"))


def _pkg_config(*args: str) -> list[str]:
    try:
        out = subprocess.run(
            ["pkg-config", *args, "libsodium", "libcrypto"],
            check=True, capture_output=True, text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        sys.exit(
            "error: libsodium or libcrypto was not found by pkg-config; install them with "
            "'apt-get install libsodium-dev libssl-dev pkg-config' (or run 'make setup')"
        )
    return shlex.split(out)


def _extensions() -> list[Extension]:
    if not SOURCES:
        return []
    from Cython.Build import cythonize

    debug = os.environ.get("WEAVE_FASTPATH_DEBUG") == "1"
    cflags = _pkg_config("--cflags")
    cflags += ["-O0", "-g"] if debug else ["-O3"]
    ext = Extension(
        "router._fastpath",
        sources=SOURCES,
        extra_compile_args=cflags,
        extra_link_args=_pkg_config("--libs"),
    )
    # the CBOR structure scan (router/wire/cbor.py): plain C, no library
    scan = Extension("router.wire._cborscan", sources=["_wire/cborscan.pyx"],
                     extra_compile_args=["-O0", "-g"] if debug else ["-O3"])
    return cythonize(
        [ext, scan],
        language_level=3,
        annotate=os.environ.get("WEAVE_FASTPATH_ANNOTATE") == "1",
        compiler_directives={
            "boundscheck": debug,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": debug,
        },
    )


setup(ext_modules=_extensions())
