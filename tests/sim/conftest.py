"""Simulations run under trio's virtual clock: minutes of protocol time in milliseconds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from router.testing.sim import Sim


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Sim]:
    async with trio.open_nursery() as nursery:
        simulation = Sim(nursery, tmp_path)
        try:
            yield simulation
        finally:
            nursery.cancel_scope.cancel()
            simulation.close()
