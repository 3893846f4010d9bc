"""Authenticated but hostile peers (the project's own Handshake and Session, scripted by
the test) against real routers in the simulation: whatever they send, only their own
connection ends; the router and its other connections live on."""

from __future__ import annotations

import logging
from ipaddress import IPv4Network
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from router.config import DEFAULT_PORT
from router.errors import BrokenError
from router.mesh.gossip import GossipData
from router.mesh.names import PeerName
from router.mesh.topology import VERSION_CEILING
from router.testing.peer import identity, open_peer
from router.testing.sim import Sim
from router.wire import cbor
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


def _forged_record(sender: PeerName, about: PeerName, nickname: str, version: int) -> bytes:
    """A topology update (layout in router/mesh/topology.py) with one lie: ``about`` at
    ``version``, with no connections."""
    record = [int(about), nickname, 12345, 7, version, []]
    return cbor.encode({"v": 1, "from": int(sender), "kind": "update", "peers": [record]})


@pytest.mark.parametrize("version", [(1 << 62) - 1, 1 << 20])
async def test_a_forged_topology_record_partitions_nobody(
    sim: Sim, autojump_clock: MockClock, version: int
) -> None:
    """issue 9 item 2: h2 bumped itself past the decode limit; h1 then refused it for good."""
    h1 = await sim.add("10.0.0.1")
    h2 = await sim.add("10.0.0.2", peers=("10.0.0.1",))
    await sim.wait_until(sim.full_mesh, timeout=30, what="two connected routers")
    h2_name = PeerName.parse(h2.status().router.name)
    me = identity(PeerName(0x7A0000000099), "liar", None)
    async with open_peer(sim.net.host(LIAR_IP), "10.0.0.1", DEFAULT_PORT, me) as liar:
        liar.send(Gossip("topology", me.name, _forged_record(me.name, h2_name, "10.0.0.2",
                                                             version)))
        await liar.flush()
        await trio.sleep(5)

    def h1_agrees_with_h2() -> bool:
        assert h1.router is not None and h2.router is not None
        return h1.router.mesh.topology.peers().get(h2_name) == \
            h2.router.mesh.topology.local_entry()

    await sim.wait_until(h1_agrees_with_h2, timeout=60, what="h1 to hold h2's own record")
    assert h2.router is not None
    assert h2.router.mesh.topology.local_entry().version < VERSION_CEILING
    # h2's later changes still reach h1, and the two stay connected throughout.
    before = h2.router.mesh.topology.local_entry().version
    await sim.add("10.0.0.3", peers=("10.0.0.2",))
    await sim.wait_until(sim.full_mesh, timeout=60, what="a full mesh of 3")
    await sim.wait_until(h1_agrees_with_h2, timeout=60, what="h1 to follow h2's updates")
    assert h2.router.mesh.topology.local_entry().version > before
    deleted = h1.status().router.connections
    assert all(c.state == "established" for c in deleted), deleted


async def test_a_peer_claiming_a_connected_name_does_not_displace_it(
    sim: Sim, autojump_clock: MockClock
) -> None:
    """issue 9 item 6: the liar's connection replaced the real one (8 s of total loss).
    The names make Weave's tie-break favour the liar's inbound connection at h1."""
    h1 = await sim.add("10.0.0.1", name=PeerName(0x7A0000000001))
    h2 = await sim.add("10.0.0.2", ("10.0.0.1",), name=PeerName(0x7A0000000002))
    await sim.wait_until(sim.full_mesh, timeout=30, what="two connected routers")
    await trio.sleep(20)  # settled
    (real,) = h1.status().router.connections
    me = identity(PeerName(0x7A0000000002), "liar", None)
    async with open_peer(sim.net.host(LIAR_IP), "10.0.0.1", DEFAULT_PORT, me) as liar:
        assert await liar.wait_closed(timeout=10), "the liar's connection was kept"
    assert h1.status().router.connections == (real,)
    assert h1.status().router.connections[0].peer_nickname == "10.0.0.2"
    assert h2.status().router.connections[0].state == "established"


async def test_gossiped_addresses_are_bounded_and_never_host_names(
    sim: Sim, autojump_clock: MockClock
) -> None:
    """issue 9 item 8: discovery dialled whatever gossip said (10,000 strings, names too)."""
    h1 = await sim.add("10.0.0.1")
    me = identity(PeerName(0x7A0000000099), "liar", None)
    conns = [[0x7B0000000000 + i, f"10.9.{i // 250}.{i % 250 + 1}:6783", True, True]
             for i in range(2000)]
    conns += [[0x7C0000000000 + i, f"evil{i}.example:6783", True, True] for i in range(40)]
    record = [int(me.name), "liar", me.uid, me.short_id, 5, conns]
    payload = cbor.encode({"v": 1, "from": int(me.name), "kind": "update", "peers": [record]})
    async with open_peer(sim.net.host(LIAR_IP), "10.0.0.1", DEFAULT_PORT, me) as liar:
        await trio.sleep(1)
        liar.send(Gossip("topology", me.name, payload))
        await liar.flush()
        await trio.sleep(5)
        targets = [c.address for c in h1.status().router.connections if c.outbound]
        assert 100 < len(targets) <= 1024, len(targets)
        assert not [t for t in targets if "example" in t]


async def test_a_forged_ipam_ring_does_not_kill_the_router(
    sim: Sim, autojump_clock: MockClock
) -> None:
    """issue 9 item 1 as reported: the victim's own ring sent back at version 2**62-1
    with empty seeds made IPAM raise BrokenError, which took the process down."""
    options = {"ipalloc_init": "consensus=1", "ipalloc_range": IPv4Network("10.32.0.0/24")}
    h1 = await sim.add("10.0.0.1", router_options=options)
    h2 = await sim.add("10.0.0.2", ("10.0.0.1",), router_options=options)
    await sim.wait_until(sim.full_mesh, timeout=30, what="two connected routers")
    assert h1.router is not None
    await h1.router.ipam.allocate("c1")  # the ring exists now
    me = identity(PeerName(0x7A0000000099), "liar", None)
    async with open_peer(sim.net.host(LIAR_IP), "10.0.0.1", DEFAULT_PORT, me) as liar:
        await sim.wait_until(lambda: any(_ring_of(m) for m in liar.received), timeout=60,
                             what="the victim's IPAM state")
        state = next(s for s in map(_ring_of, liar.received) if s)
        for entry in state["ring"]["entries"]:
            entry[2] = (1 << 62) - 1
        state["ring"]["seeds"] = []
        liar.send(Gossip("ipam", me.name, cbor.encode(state)))
        await liar.flush()
        await liar.wait_closed(timeout=10)
        await trio.sleep(5)
    assert h1.router is not None, "the victim died"
    assert sim.full_mesh([h1, h2]), "the honest connection was hurt"


def _ring_of(msg: object) -> dict[str, Any] | None:
    """The decoded IPAM state with a ring, if ``msg`` carries one."""
    if not isinstance(msg, Gossip | GossipBroadcast | GossipUnicast) or msg.channel != "ipam":
        return None
    state = cbor.decode_untrusted(msg.payload, max_size=1 << 22, max_depth=16)
    ok = isinstance(state, dict) and state.get("k") == "state" and state.get("ring")
    return state if ok else None
