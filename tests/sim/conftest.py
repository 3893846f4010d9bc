"""Simulations run under trio's virtual clock: minutes of protocol time in milliseconds.

Every simulation test takes pytest-trio's ``autojump_clock`` fixture as an argument (the
clock is only used when a test requests it by name).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from router.testing.sim import Sim


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Sim]:
    async with trio.open_nursery() as nursery:
        simulation = Sim(nursery, tmp_path)
        try:
            yield simulation
        finally:
            nursery.cancel_scope.cancel()
            simulation.close()
