"""Choosing the data plane: the extension, or the reference twin only when asked by name."""

from __future__ import annotations

import sys

import pytest

from router.dataplane.backend import BACKENDS, load_backend
from router.errors import ConfigError


def test_both_backends_load_and_agree_on_constants() -> None:
    native, reference = (load_backend(name) for name in BACKENDS)
    assert native.THREADED and not reference.THREADED
    for constant in ("DROP_REASONS", "UPCALL_CONTROL", "UPCALL_UNKNOWN_CONN", "VNET_HEADER_SIZE",
                     "MAX_FRAME_SIZE", "MAX_ELEMENT_SIZE", "MIN_DATAGRAM_SIZE",
                     "MAX_DATAGRAM_SIZE", "TTL"):
        assert getattr(native, constant) == getattr(reference, constant), constant


def test_unknown_backend_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown data plane 'fast'"):
        load_backend("fast")


def test_missing_extension_refuses_instead_of_falling_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import router

    monkeypatch.delattr(router, "_fastpath", raising=False)
    monkeypatch.setitem(sys.modules, "router._fastpath", None)  # as if it were not built
    with pytest.raises(ConfigError, match=r"make build.*'reference'"):
        load_backend("native")
    assert not load_backend("reference").THREADED
