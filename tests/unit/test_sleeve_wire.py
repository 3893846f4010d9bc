"""The sleeve wire format has one Python home, router/wire/sleeve.py, and the compiled data
plane's copy (the enums of _fastpath/wire.pxi, exported by wire_constants()) agrees with it
number for number; the reference backend takes its numbers from it. The module is pure, so
the data plane and the overlay both import it and not each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from router.crypto import ciphers, keys, nonces
from router.dataplane.backend import BACKENDS, load_backend
from router.wire import sleeve

ROUTER = Path(__file__).resolve().parents[2] / "router"
#: Numbers of the format the compiled data plane never needs (it leaves heartbeats and
#: IP/UDP headers to Python and the kernel).
PYTHON_ONLY = {"HEARTBEAT_BODY_SIZE", "PMTU_RECORD_SIZE", "MAX_IP_DATAGRAM",
               "IPV4_UDP_OVERHEAD"}
#: Crypto sizes the compiled format relies on, with their Python homes.
CRYPTO = {"KEY_SIZE": keys.KEY_SIZE, "NONCE_SIZE": nonces.NONCE_SIZE,
          "GCM_NONCE_SIZE": ciphers.GCM_NONCE_SIZE, "PLAIN_CONFIRM": nonces.PLAIN_CONFIRM}


def python_constants() -> dict[str, int]:
    """Every int of router.wire.sleeve, packet types as TYPE_<name>."""
    values = {name: getattr(sleeve, name) for name in sleeve.__all__
              if type(getattr(sleeve, name)) is int}
    values.update({f"TYPE_{t.name}": int(t) for t in sleeve.PacketType})
    return values


def test_compiled_constants_are_the_python_ones() -> None:
    compiled = load_backend("native").wire_constants()
    python = python_constants()
    assert set(compiled) - set(CRYPTO) == set(python) - PYTHON_ONLY
    for name, value in compiled.items():
        assert value == CRYPTO.get(name, python.get(name)), name


def test_a_drifted_constant_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sleeve, "MAX_FRAGMENTS", sleeve.MAX_FRAGMENTS - 1)
    with pytest.raises(AssertionError, match="MAX_FRAGMENTS"):
        test_compiled_constants_are_the_python_ones()


def test_the_python_constants_are_consistent() -> None:
    assert sleeve.MAC_SIZE == keys.MAC_SIZE
    assert (sleeve.HEADER.size, sleeve.BODY.size, sleeve.FRAG.size) == (20, 14, 8)
    assert sleeve.MAX_DATAGRAM == 65507 and sleeve.FRAME_COUNTER_BASE == 2**63
    assert sleeve.MAX_PAYLOAD == 65597 and sleeve.MAX_ELEMENT_SIZE == 65563


@pytest.mark.parametrize("name", BACKENDS)
def test_backends_expose_the_sleeve_numbers(name: str) -> None:
    backend = load_backend(name)
    assert backend.VNET_HEADER_SIZE == sleeve.VNET_HEADER_SIZE
    assert backend.MAX_FRAME_SIZE == sleeve.MAX_FRAME_SIZE
    assert backend.MAX_ELEMENT_SIZE == sleeve.MAX_ELEMENT_SIZE
    assert backend.MIN_DATAGRAM_SIZE == sleeve.MIN_DATAGRAM
    assert backend.MAX_DATAGRAM_SIZE == sleeve.MAX_DATAGRAM
    assert backend.TTL == sleeve.INITIAL_TTL


def test_size_arithmetic() -> None:
    assert sleeve.frame_mtu(1472, encrypted=False) == 1412
    assert sleeve.frame_mtu(1472, encrypted=True) == 1392
    assert sleeve.overlay_mtu(1500, encrypted=True) == 1392
    assert sleeve.overlay_mtu(50, encrypted=False) == 0
    assert sleeve.overlay_mtu(1500, encrypted=False, ip_overhead=48) == 1392
    assert sleeve.max_datagram(1500) == 1472
    assert sleeve.max_datagram(100) == sleeve.MIN_DATAGRAM
    assert sleeve.max_datagram(70000) == sleeve.MAX_DATAGRAM
    assert sleeve.max_datagram(1500, ip_overhead=48) == 1452


def _router_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {name for name in names if name.split(".")[0] == "router"}


def test_the_wire_module_is_pure() -> None:
    assert _router_imports(ROUTER / "wire" / "sleeve.py") == set()


def test_the_data_plane_does_not_import_the_overlay() -> None:
    importers = {str(p.relative_to(ROUTER)): sorted(n for n in _router_imports(p)
                                                    if n.startswith("router.overlay"))
                 for p in sorted((ROUTER / "dataplane").rglob("*.py"))}
    assert {path: names for path, names in importers.items() if names} == {}
