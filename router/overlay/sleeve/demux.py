"""The sleeve's demultiplexer: the heartbeat paths of all connections, by connection id
(sans-IO).

The trio driver owns one UDP socket; every datagram that is not a frame (the data plane
keeps those) comes here, and :class:`SleeveDemux` hands it to the
:class:`~router.overlay.sleeve.forwarder.HeartbeatPath` of its connection id. Datagrams
too short, malformed or of an unknown connection are counted drops, never exceptions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from router.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from router.overlay.sleeve.forwarder import Address, Datagram, HeartbeatPath, PathStatistics
from router.overlay.sleeve.packet import HEADER_SIZE, decode_header_untrusted

__all__ = ["DEMUX_DROP_REASONS", "MAX_PATHS", "DemuxStatistics", "SleeveDemux"]

#: Drop reasons the demux counts before a path is found.
DEMUX_DROP_REASONS = ("truncated", "malformed", "unknown_conn_id")
MAX_PATHS = 4096  # paths in one demux (conn_limit is far lower)


@dataclass(frozen=True)
class DemuxStatistics:
    """A snapshot of the sleeve demultiplexer and of each of its paths."""

    received: int  # datagrams handed to a path
    drops: Mapping[str, int]  # dropped before reaching a path, by reason
    paths: tuple[PathStatistics, ...]


class SleeveDemux:
    """The heartbeat paths of all connections, by connection id, behind one UDP socket."""

    def __init__(self, *, max_paths: int = MAX_PATHS) -> None:
        self._paths: dict[int, HeartbeatPath] = {}
        self._max_paths = max_paths
        self._received = 0
        self._drops = dict.fromkeys(DEMUX_DROP_REASONS, 0)

    def add(self, path: HeartbeatPath) -> None:
        """Route the datagrams of ``path.conn_id`` to ``path``.

        RemoteProtocolError if another connection already has that id (the peer chose its
        half of the id badly: close the new connection); LocalProtocolError beyond
        ``max_paths``.
        """
        if path.conn_id in self._paths:
            raise RemoteProtocolError(f"connection id {path.conn_id:#018x} already in use")
        if len(self._paths) >= self._max_paths:
            raise LocalProtocolError(f"more than {self._max_paths} sleeve paths")
        self._paths[path.conn_id] = path

    def remove(self, conn_id: int) -> HeartbeatPath | None:
        """Forget a connection's path (None if it was not there)."""
        return self._paths.pop(conn_id, None)

    def get(self, conn_id: int) -> HeartbeatPath | None:
        """The path of a connection, if any."""
        return self._paths.get(conn_id)

    def __len__(self) -> int:
        return len(self._paths)

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Route one datagram to its path by connection id; never raises."""
        if len(data) < HEADER_SIZE:
            self._drops["truncated"] += 1
            return
        try:
            header = decode_header_untrusted(data)
        except DecodeError:
            self._drops["malformed"] += 1
            return
        path = self._paths.get(header.conn_id)
        if path is None:
            self._drops["unknown_conn_id"] += 1
            return
        self._received += 1
        path.receive_datagram(data, addr, now)

    def message_too_big(self, data: bytes, now: float) -> None:
        """Our kernel refused to send ``data`` (one of ours) with EMSGSIZE; never raises."""
        try:
            header = decode_header_untrusted(data)
        except DecodeError:
            return
        path = self._paths.get(header.conn_id)
        if path is not None:
            path.message_too_big(len(data), now)

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        """Every heartbeat, probe and probe ack due at ``now``, across all paths."""
        out: list[Datagram] = []
        for path in self._paths.values():
            out.extend(path.datagrams_to_send(now))
        return out

    def deadline(self) -> float:
        """The earliest deadline of any path; ``math.inf`` if none."""
        return min((p.deadline() for p in self._paths.values()), default=math.inf)

    def handle_timer(self, now: float) -> None:
        """Run every path's failure check."""
        for path in self._paths.values():
            path.handle_timer(now)

    def statistics(self) -> DemuxStatistics:
        """A frozen snapshot of the demux and all its paths."""
        return DemuxStatistics(
            received=self._received,
            drops=dict(self._drops),
            paths=tuple(p.statistics() for p in self._paths.values()),
        )
