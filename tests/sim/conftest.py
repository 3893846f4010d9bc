"""Simulations run under trio's virtual clock: minutes of protocol time in milliseconds.

Every simulation test takes pytest-trio's ``autojump_clock`` fixture as an argument (the
clock is only used when a test requests it by name).

``stall_guard`` (use it with ``pytest.mark.usefixtures("stall_guard")``): a livelock
under the autojump clock (tasks that keep each other busy, so virtual time never moves
on) would hang the test for good. The guard fails the test instead once the virtual
clock has stood still for :data:`STALL_SECONDS` of wall time, naming the tasks that ran
most in that time and where the busiest one was.
"""

from __future__ import annotations

import _thread
import faulthandler
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from router.testing.sim import Sim

STALL_SECONDS = float(os.environ.get("SIM_STALL_SECONDS", "30"))


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Sim]:
    async with trio.open_nursery() as nursery:
        simulation = Sim(nursery, tmp_path)
        try:
            yield simulation
        finally:
            nursery.cancel_scope.cancel()
            simulation.close()


class StallGuard(trio.abc.Instrument):
    """Counts task steps since the virtual clock last moved; a watchdog thread checks."""

    def __init__(self, clock: MockClock, limit: float) -> None:
        self.clock = clock
        self.limit = limit
        self.token = trio.lowlevel.current_trio_token()
        self.steps: Counter[str] = Counter()
        self.tasks: dict[str, trio.lowlevel.Task] = {}
        self.stalled = trio.Event()
        self.message = ""
        self._seen = clock.current_time()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="sim-stall-guard",
                                        daemon=True)

    # -- in trio's thread ---------------------------------------------------------------

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        now = self.clock.current_time()
        if now != self._seen:
            self._seen = now
            self.steps.clear()
            self.tasks.clear()
        self.steps[task.name] += 1
        self.tasks[task.name] = task

    def _report(self) -> None:
        """Runs in trio (run_sync_soon): describe who kept the clock from moving."""
        busiest = self.steps.most_common(5)
        where = ""
        if busiest:
            task = self.tasks[busiest[0][0]]
            frames = [f"{f.f_code.co_filename.rsplit('/', 2)[-1]}:{line} {f.f_code.co_name}"
                      for f, line in task.iter_await_frames()]
            where = f"; the busiest was waiting at {' <- '.join(reversed(frames[-6:]))}"
        self.message = (
            f"virtual time stood still at {self._seen:.3f} s for {self.limit:g} s of wall "
            f"time (a livelock); task steps since it last moved: {busiest}{where}")
        self.stalled.set()

    async def fail_on_stall(self) -> None:
        await self.stalled.wait()
        raise AssertionError(self.message)

    # -- the watchdog thread -------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        last, since = self.clock.current_time(), time.monotonic()
        while not self._done.wait(1.0):
            now = self.clock.current_time()
            if now != last:
                last, since = now, time.monotonic()
                continue
            if time.monotonic() - since < self.limit:
                continue
            try:
                self.token.run_sync_soon(self._report)
            except trio.RunFinishedError:
                return
            if self._done.wait(15.0) or self.stalled.is_set():
                return
            # trio never got to run the report: one task step that never ends
            sys.stderr.write(f"\nsimulation stuck in one task step for {self.limit:g} s:\n")
            faulthandler.dump_traceback(all_threads=True)
            _thread.interrupt_main()
            return


@pytest.fixture
async def stall_guard(autojump_clock: MockClock) -> AsyncIterator[StallGuard]:
    guard = StallGuard(autojump_clock, STALL_SECONDS)
    trio.lowlevel.add_instrument(guard)
    guard.start()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(guard.fail_on_stall)
            yield guard
            nursery.cancel_scope.cancel()
    finally:
        guard.stop()
        trio.lowlevel.remove_instrument(guard)
