"""Authenticated but hostile peers (the project's own Handshake and Session, scripted by
the test) against real routers in the simulation: whatever they send, only their own
connection ends; the router and its other connections live on."""

from __future__ import annotations

import logging

import pytest
import trio
from trio.testing import MockClock

from router.config import DEFAULT_PORT
from router.errors import BrokenError
from router.mesh.gossip import GossipData
from router.mesh.names import PeerName
from router.testing.peer import identity, open_peer
from router.testing.sim import Sim
from router.wire.messages import Gossip, GossipBroadcast, GossipUnicast

LIAR_IP = "10.0.9.9"


class Exploding:
    """A gossiper that fails the way IPAM did on a forged ring (or any bug would)."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.calls = 0

    def on_gossip_unicast(self, src: PeerName, payload: bytes) -> None:
        self.calls += 1
        raise self.exc

    def on_gossip_broadcast(self, src: PeerName, payload: bytes) -> GossipData | None:
        self.calls += 1
        raise self.exc

    def gossip(self) -> GossipData | None:
        return None

    def on_gossip(self, payload: bytes) -> GossipData | None:
        self.calls += 1
        raise self.exc


@pytest.mark.parametrize("exc", [BrokenError("Merge of incoming data causes: version out of "
                                             "range"), ValueError("bad"), KeyError(3)])
async def test_a_gossiper_exception_drops_only_the_sender(
    sim: Sim, autojump_clock: MockClock, exc: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="weave-router.mesh")
    a = await sim.add("10.0.0.1")
    await sim.add("10.0.0.2", peers=("10.0.0.1",))
    await sim.wait_until(sim.full_mesh, timeout=30, what="two connected routers")
    assert a.router is not None
    boom = Exploding(exc)
    a.router.mesh.register_gossiper("boom", boom)
    me = identity(PeerName(0x7A0000000099), "liar", None)
    for msg in (Gossip("boom", me.name, b"x"), GossipBroadcast("boom", me.name, b"x"),
                GossipUnicast("boom", me.name, PeerName.parse(a.status().router.name), b"x")):
        async with open_peer(sim.net.host(LIAR_IP), "10.0.0.1", DEFAULT_PORT, me) as liar:
            await trio.sleep(1)
            liar.send(msg)
            await liar.flush()
            assert await liar.wait_closed(timeout=10), "the liar's connection stayed up"
        assert a.router is not None, "the router died"
    assert boom.calls == 3
    assert sim.full_mesh(), "the honest connection was hurt"
    deleted = [r.getMessage() for r in caplog.records if "connection deleted" in r.getMessage()
               and "liar" in r.getMessage()]
    assert len(deleted) == 3 and all("gossip channel 'boom'" in m for m in deleted), deleted


class Unencodable:
    """Gossip data that fails when it is encoded for the next neighbour (a bug of ours)."""

    def encode(self) -> list[bytes]:
        raise ValueError("cannot encode")

    def merge(self, other: GossipData) -> GossipData:
        return self


class Relaying(Exploding):
    def on_gossip(self, payload: bytes) -> GossipData | None:
        self.calls += 1
        return Unencodable()


async def test_an_exception_while_sending_closes_that_connection_only(
    sim: Sim, autojump_clock: MockClock
) -> None:
    a = await sim.add("10.0.0.1")
    await sim.add("10.0.0.2", peers=("10.0.0.1",))
    await sim.wait_until(sim.full_mesh, timeout=30, what="two connected routers")
    assert a.router is not None
    a.router.mesh.register_gossiper("relay", Relaying(ValueError()))
    me = identity(PeerName(0x7A0000000099), "liar", None)
    async with open_peer(sim.net.host(LIAR_IP), "10.0.0.1", DEFAULT_PORT, me) as liar:
        await trio.sleep(1)
        liar.send(Gossip("relay", me.name, b"x"))
        await liar.flush()
        await trio.sleep(1)
    assert a.router is not None, "the router died"
    await sim.wait_until(sim.full_mesh, timeout=60, what="the honest connection to come back")
