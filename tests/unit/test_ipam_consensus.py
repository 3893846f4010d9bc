"""Paxos over gossip: electors exchanging their tables through a lossy, duplicating,
reordering network with partitions and restarts never decide two different values."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.errors import DecodeError, LocalProtocolError
from router.ipam.consensus import Paxos, encode_state, quorum_for, state_from_wire
from router.mesh.names import PeerName
from router.wire import cbor


def _names(n: int) -> list[PeerName]:
    return [PeerName(0x10 + i) for i in range(n)]


def test_quorum_as_weave_computes_it() -> None:
    assert quorum_for(3, 0) == 2
    assert quorum_for(4, 9) == 3
    assert quorum_for(1, 5) == 1
    assert quorum_for(None, 0) == 1  # alone: decide at once
    assert quorum_for(None, 2) == 2  # launch HOST2 HOST3
    assert quorum_for(None, 4) == 3
    with pytest.raises(LocalProtocolError):
        quorum_for(0, 0)


def test_alone_with_quorum_one_decides_on_proposing() -> None:
    node = Paxos(PeerName(1), 1)
    assert node.consensus() is None
    node.propose()
    assert node.consensus() == (PeerName(1),)


class Cluster:
    """Electors and the payloads in flight between them (CBOR, as on the wire)."""

    def __init__(self, n: int, quorum: int, rng: random.Random) -> None:
        self.names = _names(n)
        self.nodes = {name: Paxos(name, quorum) for name in self.names}
        self.disk = {name: self.nodes[name].persistent() for name in self.names}
        self.in_flight: list[tuple[PeerName, PeerName, bytes]] = []  # src, dst, payload
        self.rng = rng
        self.decided: set[tuple[PeerName, ...]] = set()
        self.groups: list[set[PeerName]] = [set(self.names)]

    def connected(self, a: PeerName, b: PeerName) -> bool:
        return any(a in g and b in g for g in self.groups)

    def broadcast(self, src: PeerName) -> None:
        self.disk[src] = self.nodes[src].persistent()  # durable before it is said
        payload = cbor.encode(self.nodes[src].to_wire())
        for dst in self.names:
            if dst != src:
                self.in_flight.append((src, dst, payload))

    def deliverable(self) -> list[int]:
        """Messages whose sender and receiver are on the same side of any partition."""
        return [i for i, (s, d, _) in enumerate(self.in_flight) if self.connected(s, d)]

    def deliver(self, index: int, *, keep: bool = False, drop: bool = False) -> None:
        ready = self.deliverable()
        if not ready:
            return
        i = ready[index % len(ready)]
        _src, dst, payload = self.in_flight[i] if keep else self.in_flight.pop(i)
        if drop:
            return
        node = self.nodes[dst]
        state = state_from_wire(cbor.decode_untrusted(payload))
        changed = node.update(state)
        if node.think() or changed:
            self.broadcast(dst)
        self.note(dst)

    def propose(self, name: PeerName) -> None:
        self.nodes[name].propose()
        self.broadcast(name)
        self.note(name)

    def restart(self, name: PeerName) -> None:
        quorum = self.nodes[name].quorum
        self.nodes[name] = Paxos.restore(name, quorum, self.disk[name])

    def note(self, name: PeerName) -> None:
        value = self.nodes[name].consensus()
        if value is not None:
            self.decided.add(value)
            assert len(self.decided) == 1, f"two decisions: {self.decided}"

    def run(self, steps: int) -> None:
        """Deliver what can be delivered, in random order, until quiet or out of steps."""
        for _ in range(steps):
            if not self.deliverable():
                return
            self.deliver(self.rng.randrange(1 << 30))


def test_three_electors_agree() -> None:
    cluster = Cluster(3, 2, random.Random(3))
    cluster.propose(cluster.names[0])
    cluster.run(1000)
    values = {node.consensus() for node in cluster.nodes.values()}
    assert len(values) == 1
    (value,) = values
    # the proposer picks the electors it knew once a quorum promised: at least a quorum
    assert value is not None and cluster.names[0] in value and len(value) >= 2


def test_a_minority_never_decides_and_the_majority_does() -> None:
    cluster = Cluster(5, 3, random.Random(5))
    minority, majority = set(cluster.names[:2]), set(cluster.names[2:])
    cluster.groups = [minority, majority]
    for _ in range(5):
        for name in sorted(minority):
            cluster.propose(name)
        cluster.run(200)
    assert all(cluster.nodes[n].consensus() is None for n in minority)
    status = cluster.nodes[cluster.names[0]]
    assert status.quorum == 3 and status.known == 2  # "awaiting consensus (quorum: 3, known: 2)"
    cluster.propose(cluster.names[4])
    cluster.run(2000)
    decided = {cluster.nodes[n].consensus() for n in majority}
    assert len(decided) == 1 and None not in decided
    # heal: what was said across the partition arrives late; the minority agrees
    cluster.groups = [set(cluster.names)]
    cluster.run(5000)
    assert {node.consensus() for node in cluster.nodes.values()} == decided


def test_restored_elector_keeps_promises_and_never_reuses_a_round() -> None:
    name = PeerName(7)
    node = Paxos(name, 2)
    node.propose()
    node.propose()
    saved = node.persistent()
    again = Paxos.restore(name, 2, saved)
    assert again.claims == node.claims
    again.propose()
    assert again.claims.promise.round == 3
    with pytest.raises(DecodeError):
        Paxos.restore(PeerName(8), 2, saved)  # another peer's claims
    with pytest.raises(DecodeError):
        Paxos.restore(name, 2, b"\xa0")


@pytest.mark.parametrize(
    "raw",
    [
        [[1, [0, 0], [1, 1], [0, 0], [1]]],  # accepted without origin
        [[1, [0, 0], [1, 1], [1, 1], []]],  # accepted without value
        [[1, [0, 0], [0, 0], [0, 0], [1]]],  # value without acceptance
        [[1, [0, 0], [0, 0], [0, 0], []], [1, [0, 0], [0, 0], [0, 0], []]],  # twice
        [[1, [0], [0, 0], [0, 0], []]],
        [[1 << 48, [0, 0], [0, 0], [0, 0], []]],
        {"a": 1},
    ],
)
def test_malformed_tables_are_decode_errors(raw: object) -> None:
    with pytest.raises(DecodeError):
        state_from_wire(raw)


_junk = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 1 << 49) | st.text(max_size=2),
    lambda inner: st.lists(inner, max_size=6),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_junk)
def test_state_from_wire_raises_only_decode_error(raw: object) -> None:
    with contextlib.suppress(DecodeError):
        state = state_from_wire(raw)
        assert state_from_wire(encode_state(state)) == state


_steps = st.lists(
    st.tuples(
        st.sampled_from(["propose", "deliver", "deliver", "deliver", "dup", "drop", "restart",
                         "split", "heal"]),
        st.integers(0, 1000),
    ),
    max_size=120,
)


@settings(max_examples=120, deadline=None)
@given(st.integers(3, 6), st.integers(0, 2), _steps, st.integers(0, 1000))
def test_no_two_different_decisions(
    n: int, extra_quorum: int, steps: list[tuple[str, int]], seed: int
) -> None:
    quorum = min(n, n // 2 + 1 + extra_quorum)
    cluster = Cluster(n, quorum, random.Random(seed))
    names = cluster.names
    for kind, x in steps:
        name = names[x % n]
        if kind == "propose":
            cluster.propose(name)
        elif kind in ("deliver", "dup", "drop"):
            cluster.deliver(x, keep=kind == "dup", drop=kind == "drop")
        elif kind == "restart":
            cluster.restart(name)
        elif kind == "split":
            cut = 1 + x % (n - 1)
            cluster.groups = [set(names[:cut]), set(names[cut:])]
        elif kind == "heal":
            cluster.groups = [set(names)]
    cluster.groups = [set(names)]
    for name in names:  # everyone speaks once more; the network then delivers everything
        if cluster.decided:
            cluster.broadcast(name)
        else:
            cluster.propose(name)
    cluster.run(20000)
    values = {node.consensus() for node in cluster.nodes.values()}
    assert len(values) == 1 and None not in values
    (value,) = values
    assert value is not None and len(value) >= quorum
