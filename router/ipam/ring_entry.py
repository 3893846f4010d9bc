"""One ring entry and its version arithmetic (shared by :mod:`router.ipam.ring` and
:mod:`router.ipam.merge`)."""

from __future__ import annotations

from dataclasses import dataclass

from router.mesh.names import PeerName

MAX_VERSION = 1 << 62  # refused by the decoder at or above
# Incoming versions at or above this are refused (the sender's fault), and our own bumps
# stop below it: honest peers bump by one per change, so it is never reached honestly,
# and whatever a peer sends, nobody is pushed past what the others accept.
VERSION_LIMIT = MAX_VERSION - (1 << 32)


@dataclass(frozen=True)
class Entry:
    """``peer`` owns from ``token`` to the next token; ``free`` of those are free."""

    token: int
    peer: PeerName
    version: int = 0
    free: int = 0

    def key(self) -> tuple[int, int, int]:
        """Merge order for two entries at the same token: the greater wins."""
        return (self.version, self.free, int(self.peer))


def bumped(version: int, by: int = 1) -> int:
    """``version + by``, saturated below :data:`VERSION_LIMIT` (never past it)."""
    return max(version, min(version + by, VERSION_LIMIT - 1))
