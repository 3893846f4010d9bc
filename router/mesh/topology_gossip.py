"""The topology on its gossip channel (``"topology"``): the adapter between
:class:`~router.mesh.topology.Topology` (the sans-IO peer graph and its codec) and
:class:`~router.mesh.gossip.GossipRouter`. Sans-IO like both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from router.errors import LocalProtocolError
from router.mesh.gossip import GossipChannel, GossipData, GossipRouter
from router.mesh.names import PeerName
from router.mesh.topology import TOPOLOGY_CHANNEL, ConnectionSummary, Topology

__all__ = ["TopologyGossiper", "TopologyUpdate"]


class TopologyUpdate:
    """Gossip data of the topology channel: the names of entries to send.

    Entries are encoded when the message is actually sent, so a queued update always
    carries the newest version; merging is the union of names.
    """

    def __init__(self, topology: Topology, names: Iterable[PeerName]) -> None:
        self.topology = topology
        self.names = frozenset(names)

    def encode(self) -> list[bytes]:
        """The current entries of the names still known, in frame-sized payloads."""
        return self.topology.encode_chunks(self.names)

    def merge(self, other: GossipData) -> GossipData:
        """Union of the two name sets."""
        if not isinstance(other, TopologyUpdate):
            raise LocalProtocolError("topology gossip merged with foreign data")
        return TopologyUpdate(self.topology, self.names | other.names)


class TopologyGossiper:
    """The topology on gossip channel ``"topology"``, like any other gossiper.

    * Local changes (:meth:`set_local_connections`) and every change learnt from a
      neighbour are flooded to all neighbours as gossip deltas; a peer forwards only what
      was new to it, so floods stop.
    * Periodic gossip and every new neighbour get the full topology (``gossip()``).
    * An update (gossip) whose new entries reference peers we do not know makes us
      unicast a "request-full" to its sender; a "request-full" is answered by unicasting
      the full topology back, which is merged and flooded on.
    * After every merge that changed something we call ``on_change``: the driver
      recomputes routes and garbage collects there, once per burst of changes (a
      reachability walk per merged update would dominate a large mesh). Changes made
      through :meth:`set_local_connections` and :meth:`note_direct_peer` do not call it:
      the caller knows.

    Constructing it registers the channel on ``router``.
    """

    def __init__(
        self,
        topology: Topology,
        router: GossipRouter,
        *,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._topology = topology
        self._on_change = on_change
        self._channel: GossipChannel = router.register(TOPOLOGY_CHANNEL, self)

    @property
    def topology(self) -> Topology:
        """The topology this gossiper carries."""
        return self._topology

    @property
    def channel(self) -> GossipChannel:
        """The ``"topology"`` channel."""
        return self._channel

    def set_local_connections(self, conns: Iterable[ConnectionSummary]) -> bool:
        """Replace our connections, garbage collect, flood the change; True if changed."""
        if self._topology.set_local_connections(conns) is None:
            return False
        self._topology.garbage_collect()
        self._channel.gossip_update(TopologyUpdate(self._topology, [self._topology.ourself]))
        return True

    def note_direct_peer(self, name: PeerName, nickname: str, uid: int, short_id: int) -> None:
        """Adopt a neighbour's identity after a handshake.

        Call it once the router lists ``name`` among its neighbours (:meth:`GossipRouter.
        set_routes`): a superseded old-incarnation record is unicast to that neighbour so
        it bumps its version at once (otherwise it learns it later through gossip).
        """
        stale = self._topology.note_direct_peer(name, nickname, uid, short_id)
        if stale is not None:
            self._channel.send_unicast(name, stale)

    def on_gossip_unicast(self, src: PeerName, payload: bytes) -> None:
        """A request-full (answered) or a full topology (merged and flooded)."""
        delta = self._apply(payload, src, may_request=False)
        if delta is not None:
            self._channel.gossip_update(delta)

    def on_gossip_broadcast(self, src: PeerName, payload: bytes) -> GossipData | None:
        """Broadcasts are not how we send topology, but are accepted like gossip."""
        return self._apply(payload, src, may_request=True)

    def gossip(self) -> GossipData | None:
        """The full topology."""
        return TopologyUpdate(self._topology, self._topology.peers())

    def on_gossip(self, payload: bytes) -> GossipData | None:
        """Merge; the entries that were new to us go on to our other neighbours."""
        return self._apply(payload, None, may_request=True)

    def _apply(
        self, payload: bytes, reply_to: PeerName | None, *, may_request: bool
    ) -> TopologyUpdate | None:
        """Merge one payload; answer requests, ask for what is missing, GC, return the delta.

        A full topology that arrives as the answer to our request (a unicast) never
        triggers another request, so two peers cannot ping-pong requests.
        """
        result = self._topology.apply_update_untrusted(payload)
        peer = reply_to if reply_to is not None else result.sender
        if result.wants_full:
            if peer != self._topology.ourself:
                for chunk in self._topology.encode_chunks():
                    self._channel.send_unicast(peer, chunk)
            return None
        if result.unknown and may_request and peer != self._topology.ourself:
            self._channel.send_unicast(peer, self._topology.encode_request_full())
        if not result.changed:
            return None
        if self._on_change is not None:
            self._on_change()
        return TopologyUpdate(self._topology, result.changed)
