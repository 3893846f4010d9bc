"""The topology on its gossip channel (``"topology"``): the adapter between
:class:`~router.mesh.topology.Topology` (the sans-IO peer graph and its codec) and
:class:`~router.mesh.gossip.GossipRouter`. Sans-IO like both.

Digests (neighbours whose connection negotiated protocol version 2 or later, told by
:meth:`TopologyGossiper.speaks_digests`). Periodic gossip and a new connection would
otherwise send the whole topology, N records of up to N connections each. Instead:

* periodic gossip to such a neighbour is a "summary" (a count and one hash over every
  record held: O(1) bytes). A neighbour whose own summary differs answers with its
  "digest" (name -> version and record hash, ~17 bytes a peer) asking to be pushed to;
* a new neighbour gets our digest at once (both ends send theirs);
* a digest is compared with what we hold: records it has newer (or at the same version
  with another hash) are asked for by name ("want"); if it asks to be pushed to, the
  records it lacks or holds older are sent as gossip. A "want" is answered with those
  records, as gossip;
* an update naming peers we do not know asks its sender for those names ("want") rather
  than for everything ("request-full").

Every message is gossip to one neighbour, merged with what is pending for it and encoded
when its connection can write, so the digest and records sent are the newest. Any of
them lost is repaired by the next round: every round compares the whole state. Records
that arrive are merged exactly as full-state gossip merges them (refusals and the
owner's bump included), and their news is relayed as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from router.errors import DecodeError, LocalProtocolError
from router.mesh.gossip import GossipChannel, GossipData, GossipRouter
from router.mesh.names import PeerName
from router.mesh.topology import TOPOLOGY_CHANNEL, ConnectionSummary, Topology, UpdateResult
from router.mesh.topology_codec import DigestKind, DigestMessage, SummaryMessage

__all__ = ["DIGEST_PROTOCOL_VERSION", "TopologyGossiper", "TopologyUpdate"]

DIGEST_PROTOCOL_VERSION = 2  # connections that negotiated this or later exchange digests


class TopologyUpdate:
    """Gossip data of the topology channel: the names of entries to send and, for one
    neighbour that speaks digests, a summary, a digest (``push``: None for none) and the
    names we want.

    Everything is encoded when the message is actually sent, so a queued update always
    carries the newest versions and digest; merging is the union of each part.
    """

    def __init__(self, topology: Topology, names: Iterable[PeerName] = (), *,
                 summary: bool = False, push: bool | None = None,
                 want: Iterable[PeerName] = ()) -> None:
        self.topology = topology
        self.names = frozenset(names)
        self.summary = summary
        self.push = push
        self.want = frozenset(want)

    def encode(self) -> list[bytes]:
        """The current entries of the names still known, in frame-sized payloads; then
        the want, then the digest or else the summary."""
        out = self.topology.encode_chunks(self.names) if self.names else []
        if self.want:
            out.append(self.topology.encode_want(self.want))
        if self.push is not None:
            out.append(self.topology.encode_digest(push=self.push))
        elif self.summary:
            out.append(self.topology.encode_summary())
        return out

    def merge(self, other: GossipData) -> GossipData:
        """Union of the parts (a digest that asks to be pushed to wins)."""
        if not isinstance(other, TopologyUpdate):
            raise LocalProtocolError("topology gossip merged with foreign data")
        push = self.push if other.push is None else other.push if self.push is None \
            else self.push or other.push
        return TopologyUpdate(self.topology, self.names | other.names,
                              summary=self.summary or other.summary, push=push,
                              want=self.want | other.want)


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
        self._digest_peers: set[PeerName] = set()

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

    def speaks_digests(self, neighbour: PeerName, digests: bool) -> None:
        """Whether our connection to ``neighbour`` negotiated digests (protocol version 2).

        Call it before the router lists ``neighbour`` among its neighbours, so that the
        new neighbour gets a digest rather than the full topology."""
        if digests:
            self._digest_peers.add(neighbour)
        else:
            self._digest_peers.discard(neighbour)

    def on_gossip_unicast(self, src: PeerName, payload: bytes) -> None:
        """A request-full (answered) or a full topology (merged and flooded)."""
        delta = self._apply(payload, src, may_request=False, digests=False)
        if delta is not None:
            self._channel.gossip_update(delta)

    def on_gossip_broadcast(self, src: PeerName, payload: bytes) -> GossipData | None:
        """Broadcasts are not how we send topology, but are accepted like gossip."""
        return self._apply(payload, src, may_request=True, digests=False)

    def gossip(self) -> GossipData | None:
        """The full topology."""
        return TopologyUpdate(self._topology, self._topology.peers())

    def gossip_to_neighbour(self, neighbour: PeerName, *, new: bool) -> GossipData | None:
        """What periodic gossip (``new``: a new connection) sends ``neighbour``: a summary
        (our digest, to a new one) if it speaks digests, else the full topology."""
        if neighbour not in self._digest_peers:
            return self.gossip()
        if new:
            return TopologyUpdate(self._topology, push=False)
        return TopologyUpdate(self._topology, summary=True)

    def on_gossip(self, payload: bytes) -> GossipData | None:
        """Merge; the entries that were new to us go on to our other neighbours."""
        return self._apply(payload, None, may_request=True, digests=True)

    def _apply(
        self, payload: bytes, reply_to: PeerName | None, *, may_request: bool, digests: bool
    ) -> TopologyUpdate | None:
        """Merge one payload; answer requests, ask for what is missing, GC, return the delta.

        A full topology that arrives as the answer to our request (a unicast) never
        triggers another request, so two peers cannot ping-pong requests.
        """
        result = self._topology.receive_untrusted(payload)
        if not isinstance(result, UpdateResult):
            self._answer_digest(result, digests)
            return None
        peer = reply_to if reply_to is not None else result.sender
        if result.wants_full:
            if peer != self._topology.ourself:
                for chunk in self._topology.encode_chunks():
                    self._channel.send_unicast(peer, chunk)
            return None
        neighbour = self._channel.sender
        if result.unknown and may_request and digests and neighbour in self._digest_peers:
            assert neighbour is not None
            self._channel.gossip_to(neighbour, TopologyUpdate(self._topology,
                                                              want=result.unknown))
        elif result.unknown and may_request and peer != self._topology.ourself:
            self._channel.send_unicast(peer, self._topology.encode_request_full())
        if not result.changed:
            return None
        if self._on_change is not None:
            self._on_change()
        return TopologyUpdate(self._topology, result.changed)

    def _answer_digest(self, message: DigestKind, digests: bool) -> None:
        """A summary, digest or want from the neighbour delivering it (see the module doc).

        Only gossip from a neighbour whose connection negotiated digests may carry them:
        anything else is refused as a version-1 peer would refuse it."""
        neighbour = self._channel.sender
        if not digests or neighbour is None or neighbour not in self._digest_peers:
            raise DecodeError(f"topology payload: {type(message).__name__} from a peer "
                              "that did not negotiate digests")
        topology = self._topology
        if isinstance(message, SummaryMessage):
            if not topology.summary_matches(message.count, message.hash):
                self._channel.gossip_to(neighbour, TopologyUpdate(topology, push=True))
        elif isinstance(message, DigestMessage):
            wanted, newer = topology.compare_digest(message)
            reply = TopologyUpdate(topology, newer if message.push else (), want=wanted)
            if reply.names or reply.want:
                self._channel.gossip_to(neighbour, reply)
        elif message.names:
            self._channel.gossip_to(neighbour, TopologyUpdate(topology, message.names))
