"""The data plane and fastdp's kernel peers (both backends): frames from an origin the
kernel delivers (``set_kernel_peers``) that arrive over the sleeve are relayed as usual,
but not delivered into the TAP (a ``kernel_peer`` drop), so none arrives twice."""

from __future__ import annotations

import pytest

from router.dataplane.backend import Backend
from router.errors import LocalProtocolError
from tests.fastpath.mesh import BROADCAST_MAC, Mesh, chain, frame, mac, name_of


def test_a_kernel_peers_frames_are_relayed_not_delivered(backend: Backend) -> None:
    m = Mesh(backend, 3, chain(3))  # 1 - 2 - 3: node 2 relays between 1 and 3
    m.nodes[2].dp.set_kernel_peers([name_of(1)])
    m.send(1, [frame(BROADCAST_MAC, mac(1), 60)], 1.0)
    assert m.take(2) == []  # the kernel delivered it to node 2's bridge already
    assert len(m.take(3)) == 1  # node 3 is not on fastdp with node 1: the sleeve's copy
    assert m.drops(2)["kernel_peer"] == 1
    m.send(1, [frame(mac(2), mac(1), 60)], 2.0)  # unicast: the same
    assert m.take(2) == [] and m.drops(2)["kernel_peer"] == 2
    assert m.nodes[2].dp.lookup_mac(mac(1), 2.0) == name_of(1)  # still learnt

    m.send(3, [frame(BROADCAST_MAC, mac(3), 60)], 3.0)  # another origin: delivered
    assert len(m.take(2)) == 1
    m.nodes[2].dp.set_kernel_peers([])
    m.send(1, [frame(BROADCAST_MAC, mac(1), 60)], 4.0)
    assert len(m.take(2)) == 1 and m.drops(2)["kernel_peer"] == 2


def test_kernel_peers_are_peer_names(backend: Backend) -> None:
    dp = backend.Dataplane(5)
    with pytest.raises(LocalProtocolError):
        dp.set_kernel_peers([1 << 48])
    dp.set_kernel_peers(range(1, 4097))
    with pytest.raises(LocalProtocolError):
        dp.set_kernel_peers(range(1, 4098))
