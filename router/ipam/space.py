"""The addresses this peer owns, which are allocated, and to whom (sans-IO, pure).

Addresses are plain ints (an IPv4 address as a 32-bit number). A :class:`Space` holds
two disjoint sets of half-open ranges ``[start, end)``:

* *allocated*: given to a container (by :meth:`Space.allocate` or :meth:`Space.claim`);
* *free*: owned by us and not allocated.

Their union is what the ring says we own (:meth:`Space.set_ranges` keeps the two in
step). Both sets are kept as sorted boundary lists of coalesced ranges, so the cost of
every operation grows with the number of ranges, not the number of addresses.

Allocation takes the lowest free address of the requested range. A donation (space
given to a peer that asked for it) is the biggest CIDR-aligned free block in the
requested range, but never more than half of our free space there (rounded up, so a
donation is never empty), as Weave does.

:class:`Holdings` records which container (ident) holds which addresses.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from ipaddress import IPv4Interface, IPv4Network

from router.errors import BrokenError, LocalProtocolError
from router.ipam import OwnedRecord

Range = tuple[int, int]  # [start, end)


class RangeSet:
    """A set of ints as sorted, coalesced, half-open ranges.

    ``_bounds`` alternates starts and ends: ``[s0, e0, s1, e1, ...]`` with
    ``s0 < e0 < s1 < e1 ...`` (adjacent ranges are always merged).
    """

    __slots__ = ("_bounds",)

    def __init__(self, ranges: Iterable[Range] = ()) -> None:
        self._bounds: list[int] = []
        for start, end in ranges:
            self.add(start, end)

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int):
            return False
        return bisect.bisect_right(self._bounds, value) % 2 == 1

    def __bool__(self) -> bool:
        return bool(self._bounds)

    def __iter__(self) -> Iterator[Range]:
        b = self._bounds
        return ((b[i], b[i + 1]) for i in range(0, len(b), 2))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and self._bounds == other._bounds

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RangeSet({list(self)!r})"

    def copy(self) -> RangeSet:
        """An independent copy."""
        other = RangeSet()
        other._bounds = list(self._bounds)
        return other

    def add(self, start: int, end: int) -> None:
        """Union with ``[start, end)``."""
        self._edit(start, end, inside=False)

    def remove(self, start: int, end: int) -> None:
        """Subtract ``[start, end)``."""
        self._edit(start, end, inside=True)

    def _edit(self, start: int, end: int, *, inside: bool) -> None:
        if start >= end:
            return
        b = self._bounds
        lo = bisect.bisect_left(b, start)
        hi = bisect.bisect_right(b, end)
        middle: list[int] = []
        # Adding: start becomes a boundary if it falls outside every range (lo even).
        # Removing: start becomes a boundary if it falls inside a range (lo odd).
        if (lo % 2 == 1) == inside:
            middle.append(start)
        if (hi % 2 == 1) == inside:
            middle.append(end)
        b[lo:hi] = middle

    def clear(self) -> None:
        """Remove everything."""
        self._bounds.clear()

    def size(self) -> int:
        """How many ints are in the set."""
        b = self._bounds
        return sum(b[i + 1] - b[i] for i in range(0, len(b), 2))

    def overlapping(self, start: int, end: int) -> Iterator[Range]:
        """The parts of the set inside ``[start, end)``, lowest first."""
        if start >= end:
            return
        b = self._bounds
        i = bisect.bisect_right(b, start)
        i -= i % 2  # back to the start of the range containing ``start``, if any
        while i < len(b) and b[i] < end:
            lo, hi = max(b[i], start), min(b[i + 1], end)
            if lo < hi:
                yield lo, hi
            i += 2

    def size_in(self, start: int, end: int) -> int:
        """How many ints of the set lie in ``[start, end)``."""
        return sum(hi - lo for lo, hi in self.overlapping(start, end))

    def intersects(self, start: int, end: int) -> bool:
        """Whether any int of ``[start, end)`` is in the set."""
        return next(self.overlapping(start, end), None) is not None


def biggest_cidr_block(start: int, end: int) -> Range:
    """The biggest ``[s, s + 2**k)`` with ``s`` a multiple of ``2**k`` inside ``[start, end)``.

    The lowest such block wins a tie. ``start < end`` is required.
    """
    best = (start, start)
    pos = start
    while pos < end:
        size = 1 << ((end - pos).bit_length() - 1)  # biggest power of two that fits
        if pos:
            size = min(size, pos & -pos)  # ... and keeps ``pos`` aligned
        if size > best[1] - best[0]:
            best = (pos, pos + size)
        pos += size
    return best


class Space:
    """Owned ranges of one peer and the allocations in them (see module doc)."""

    def __init__(self) -> None:
        self._free = RangeSet()
        self._allocated = RangeSet()

    # -- ownership ------------------------------------------------------------------------

    def owned_ranges(self) -> list[Range]:
        """Everything we own, allocated or not, as coalesced ranges, lowest first."""
        owned = self._free.copy()
        for start, end in self._allocated:
            owned.add(start, end)
        return list(owned)

    def set_ranges(self, ranges: Iterable[Range]) -> None:
        """Make ``ranges`` exactly what we own.

        New space becomes free; space no longer ours is dropped, which must never take
        an allocated address with it (the ring refuses merges that would):
        :class:`BrokenError` if it does.
        """
        wanted = RangeSet(ranges)
        for start, end in self._allocated:
            if wanted.size_in(start, end) != end - start:
                raise BrokenError(f"allocated addresses in [{start}, {end}) are no longer owned")
        for start, end in self._allocated:
            wanted.remove(start, end)
        self._free = wanted

    def add_ranges(self, ranges: Iterable[Range]) -> None:
        """Add ``ranges`` (parts not already owned become free)."""
        for start, end in ranges:
            self._free.add(start, end)
            for lo, hi in list(self._allocated.overlapping(start, end)):
                self._free.remove(lo, hi)

    def clear(self) -> None:
        """Forget everything (after handing our space to another peer)."""
        self._free.clear()
        self._allocated.clear()

    def owns(self, addr: int) -> bool:
        """Whether ``addr`` is ours (free or allocated)."""
        return addr in self._free or addr in self._allocated

    # -- allocation -----------------------------------------------------------------------

    def allocate(self, start: int, end: int) -> int | None:
        """Allocate the lowest free address in ``[start, end)``; None if there is none."""
        chunk = next(self._free.overlapping(start, end), None)
        if chunk is None:
            return None
        addr = chunk[0]
        self._free.remove(addr, addr + 1)
        self._allocated.add(addr, addr + 1)
        return addr

    def claim(self, addr: int) -> bool:
        """Allocate exactly ``addr``; False if it is not ours or already allocated."""
        if addr not in self._free:
            return False
        self._free.remove(addr, addr + 1)
        self._allocated.add(addr, addr + 1)
        return True

    def free(self, addr: int) -> None:
        """Return ``addr`` to the free space; LocalProtocolError if it was not allocated."""
        if addr not in self._allocated:
            raise LocalProtocolError(f"address {addr} is not allocated here")
        self._allocated.remove(addr, addr + 1)
        self._free.add(addr, addr + 1)

    def is_allocated(self, addr: int) -> bool:
        """Whether ``addr`` is allocated."""
        return addr in self._allocated

    def is_free(self, addr: int) -> bool:
        """Whether ``addr`` is ours and free."""
        return addr in self._free

    def has_allocations(self, start: int, end: int) -> bool:
        """Whether any address of ``[start, end)`` is allocated."""
        return self._allocated.intersects(start, end)

    def num_free(self, start: int | None = None, end: int | None = None) -> int:
        """Free addresses (in ``[start, end)`` when given)."""
        if start is None or end is None:
            return self._free.size()
        return self._free.size_in(start, end)

    def num_allocated(self, start: int | None = None, end: int | None = None) -> int:
        """Allocated addresses (in ``[start, end)`` when given)."""
        if start is None or end is None:
            return self._allocated.size()
        return self._allocated.size_in(start, end)

    def allocated(self) -> Iterator[int]:
        """Every allocated address, lowest first."""
        for start, end in self._allocated:
            yield from range(start, end)

    # -- donation -------------------------------------------------------------------------

    def biggest_free_range(self, start: int, end: int) -> Range | None:
        """The biggest CIDR-aligned free block in ``[start, end)`` (lowest on a tie)."""
        best: Range | None = None
        for lo, hi in self._free.overlapping(start, end):
            if best is not None and hi - lo <= best[1] - best[0]:
                continue  # a block inside this chunk cannot beat the best one
            block = biggest_cidr_block(lo, hi)
            if best is None or block[1] - block[0] > best[1] - best[0]:
                best = block
        return best

    def donate(self, start: int, end: int) -> Range | None:
        """Give away free space in ``[start, end)``: it stops being ours; None if none.

        The biggest CIDR-aligned free block, cut to its upper half when it is more than
        half of our free space in the range.
        """
        block = self.biggest_free_range(start, end)
        if block is None:
            return None
        lo, hi = block
        if hi - lo > self._free.size_in(start, end) // 2:
            lo += (hi - lo) // 2
        self._free.remove(lo, hi)
        return lo, hi


class Holdings:
    """Who holds which address: ident (a container id, usually) -> its addresses.

    Each address has at most one holder (:meth:`holder` is the reverse index). This is
    what the driver persists per ident; addresses outside the allocation range (claimed
    by the user's choice) are held here but never enter a :class:`Space`.
    """

    def __init__(self) -> None:
        self._cidrs: dict[str, list[IPv4Interface]] = {}
        self._containers: dict[str, bool] = {}
        self._by_addr: dict[int, str] = {}

    def __contains__(self, ident: object) -> bool:
        return ident in self._cidrs

    def idents(self, *, containers_only: bool = False) -> list[str]:
        """Every ident holding an address (only containers' if asked), sorted."""
        return sorted(i for i in self._cidrs if self._containers[i] or not containers_only)

    def holder(self, addr: int) -> str | None:
        """The ident holding ``addr``, if any."""
        return self._by_addr.get(addr)

    def lookup(self, ident: str, subnet: IPv4Network | None = None) -> list[IPv4Interface]:
        """The addresses ``ident`` holds (in ``subnet`` if given), oldest first."""
        return [c for c in self._cidrs.get(ident, ()) if subnet is None or c.ip in subnet]

    def record(self, ident: str) -> OwnedRecord | None:
        """What to persist for ``ident`` (None: nothing held)."""
        if ident not in self._cidrs:
            return None
        return OwnedRecord(tuple(self._cidrs[ident]), self._containers[ident])

    def add(self, ident: str, cidr: IPv4Interface, is_container: bool) -> None:
        """``ident`` now holds ``cidr``; LocalProtocolError if another ident holds it."""
        addr = int(cidr.ip)
        if self._by_addr.get(addr, ident) != ident:
            raise LocalProtocolError(f"{cidr.ip} is already held by {self._by_addr[addr]}")
        self._cidrs.setdefault(ident, []).append(cidr)
        self._containers.setdefault(ident, is_container)
        self._by_addr[addr] = ident

    def remove(self, ident: str, cidr: IPv4Interface) -> None:
        """``ident`` no longer holds ``cidr``."""
        cidrs = self._cidrs[ident]
        cidrs.remove(cidr)
        if not cidrs:
            del self._cidrs[ident]
            del self._containers[ident]
        if self._by_addr.get(int(cidr.ip)) == ident:
            del self._by_addr[int(cidr.ip)]
