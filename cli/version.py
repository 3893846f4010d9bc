"""``weave-router version``: the versions of the parts, one per line, as ``weave version`` does.

::

    weave-router 0.1.0
    python 3.11.2
    trio 0.35.0
    dataplane native (compiled router._fastpath), ciphers aes256gcm secretbox
    dataplane reference (pure Python), ciphers aes256gcm secretbox
    libsodium 1.0.18 (/lib/x86_64-linux-gnu/libsodium.so.23)
    OpenSSL 3.0.19 27 Jan 2026 (/lib/x86_64-linux-gnu/libcrypto.so.3)
    extension /usr/local/lib/python3.11/site-packages/router/_fastpath.cpython-311-....so
    encryption offers aes256gcm secretbox (this CPU has AES and PCLMULQDQ)

The library lines name the libsodium and libcrypto the compiled data plane was linked
against: found in this process's memory map once the extension is loaded, and asked for
their version (``sodium_version_string``, ``OpenSSL_version``). Without the extension,
its line says why and the library and extension lines are left out. The extension line
is the file that was loaded (which install this is: a checkout, a wheel, an image); the
last line is what a router with a password offers its peers on this machine (AES-256-GCM
only with AES in hardware, ``router/crypto/ciphers.py``).
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Iterable
from pathlib import Path

import trio

from router import __version__
from router.crypto.ciphers import hardware_aes, offered
from router.dataplane.backend import load_backend
from router.errors import ConfigError

PROG = "weave-router"
OPENSSL_VERSION = 0  # OpenSSL_version(OPENSSL_VERSION): "OpenSSL 3.0.19 27 Jan 2026"
_LIBRARIES = (("libsodium", "libsodium.so", "sodium_version_string", ()),
              ("OpenSSL", "libcrypto.so", "OpenSSL_version", (OPENSSL_VERSION,)))


def _mapped_libraries(maps: str = "/proc/self/maps") -> list[str]:
    """Paths of the shared objects mapped into this process."""
    try:
        text = Path(maps).read_text()
    except OSError:
        return []
    fields = (line.split(maxsplit=5) for line in text.splitlines())
    return list(dict.fromkeys(f[5].strip() for f in fields if len(f) == 6 and ".so" in f[5]))


def _library_version(path: str, symbol: str, args: Iterable[int]) -> str | None:
    try:
        function = getattr(ctypes.CDLL(path), symbol)
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_char_p
    value = function(*args)
    return value.decode("ascii", "replace") if isinstance(value, bytes) else None


def library_lines(paths: Iterable[str]) -> list[str]:
    """``libsodium 1.0.18 (path)`` and ``OpenSSL ... (path)`` for the libraries loaded."""
    paths = list(paths)
    lines = []
    for label, stem, symbol, args in _LIBRARIES:
        for path in paths:
            if Path(path).name.startswith(stem):
                version = _library_version(path, symbol, args)
                if version is not None:
                    text = version if version.startswith(label) else f"{label} {version}"
                    lines.append(f"{text} ({path})")
                    break
    return lines


def version_lines() -> list[str]:
    """Every line of ``weave-router version``."""
    lines = [f"{PROG} {__version__}", f"python {platform.python_version()}",
             f"trio {trio.__version__}"]
    extension: list[str] = []
    try:
        native = load_backend("native")
    except ConfigError as exc:
        lines.append(f"dataplane native: not available ({exc})")
    else:
        lines.append("dataplane native (compiled router._fastpath), ciphers "
                     + " ".join(native.CIPHERS))
        extension.append(f"extension {getattr(native, '__file__', '?')}")
    reference = load_backend("reference")
    lines.append("dataplane reference (pure Python), ciphers " + " ".join(reference.CIPHERS))
    cpu = ("this CPU has AES and PCLMULQDQ" if hardware_aes()
           else "no AES in this CPU's hardware: AES-256-GCM not offered")
    return [*lines, *library_lines(_mapped_libraries()), *extension,
            f"encryption offers {' '.join(offered())} ({cpu})"]
