"""Fixtures of the data-plane suite: every test runs against both backends.

``backend`` is the module ``load_backend`` returns: the compiled ``router._fastpath``
("native") and the pure-Python twin ("reference"). A missing extension fails the native
half of every test (never a skip): ``make build`` compiles it.
"""

from __future__ import annotations

import pytest

from router.dataplane.backend import BACKENDS, Backend, load_backend


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    return load_backend(request.param)


@pytest.fixture
def native() -> Backend:
    return load_backend("native")


@pytest.fixture
def reference() -> Backend:
    return load_backend("reference")
