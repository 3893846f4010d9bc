"""The kernel tells a listener of nftables changes in its namespace (``kernel/nft_events.py``),
and only of those: the router reads its tables back when told, not every second.

A small program runs inside a host namespace of a one-host mesh (no router): it listens,
reports the generation after a quiet half second, after an ``nft add table``, after
``nft list ruleset`` (a read: no change) and after ``nft flush ruleset``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import pytest

from router.testing.netns import Mesh

pytestmark = pytest.mark.integration

PROGRAM = r'''
import json, trio
from router.kernel.nft_events import NftEvents

async def main():
    events = NftEvents.open()
    seen = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(events.run)
        seen["quiet"] = await events.wait(0, 0.5)
        for name, argv in (("add", ["nft", "add", "table", "inet", "t-events"]),
                           ("read", ["nft", "list", "ruleset"]),
                           ("flush", ["nft", "flush", "ruleset"])):
            before = events.generation
            await trio.run_process(argv, capture_stdout=True)
            await trio.sleep(0.2)  # whatever else the change says is heard by then
            seen[name] = await events.wait(before, 2.0) - before
        nursery.cancel_scope.cancel()
    print(json.dumps(seen))

trio.run(main)
'''


def test_changes_are_heard_and_reads_are_not(make_mesh: Callable[..., Mesh]) -> None:
    [host] = make_mesh(1).hosts
    out = host.run([sys.executable, "-c", PROGRAM], timeout=30).stdout
    seen = json.loads(out)
    assert seen["quiet"] == 0, seen  # nothing changed: nothing heard
    assert seen["add"] >= 1, seen
    assert seen["read"] == 0, seen  # a read is not a change: no read-back loop
    assert seen["flush"] >= 1, seen
