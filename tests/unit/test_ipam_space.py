"""Space: owned ranges, lowest-free allocation, claim, free, donation; against a naive set."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.errors import BrokenError, LocalProtocolError
from router.ipam.space import RangeSet, Space, biggest_cidr_block


def test_allocates_lowest_free_in_range_and_reuses_freed() -> None:
    space = Space()
    space.add_ranges([(100, 110)])
    assert [space.allocate(100, 110) for _ in range(3)] == [100, 101, 102]
    space.free(101)
    assert space.allocate(100, 110) == 101
    assert space.allocate(105, 107) == 105
    assert space.allocate(0, 100) is None
    assert space.num_allocated() == 4
    assert space.num_free() == 6


def test_claim_and_free_errors() -> None:
    space = Space()
    space.add_ranges([(0, 4)])
    assert space.claim(2)
    assert not space.claim(2)  # already allocated
    assert not space.claim(9)  # not ours
    with pytest.raises(LocalProtocolError):
        space.free(3)
    space.free(2)
    assert space.is_free(2)


def test_set_ranges_grows_and_shrinks_but_never_drops_allocations() -> None:
    space = Space()
    space.set_ranges([(0, 8)])
    assert space.claim(6)
    space.set_ranges([(4, 16)])
    assert space.owned_ranges() == [(4, 16)]
    assert space.is_allocated(6)
    assert space.num_free() == 11
    with pytest.raises(BrokenError):
        space.set_ranges([(0, 6)])


def test_donation_is_cidr_aligned_and_at_most_half() -> None:
    space = Space()
    space.add_ranges([(0, 256)])
    assert space.donate(0, 256) == (128, 256)  # the whole block is more than half: upper half
    assert space.owned_ranges() == [(0, 128)]
    space.claim(0)
    assert space.biggest_free_range(0, 256) == (64, 128)
    assert space.donate(0, 256) == (96, 128)
    assert space.donate(1000, 2000) is None
    single = Space()
    single.add_ranges([(7, 8)])
    assert single.donate(7, 8) == (7, 8)  # one address: never an empty donation


def test_biggest_cidr_block() -> None:
    assert biggest_cidr_block(0, 256) == (0, 256)
    assert biggest_cidr_block(1, 256) == (128, 256)
    assert biggest_cidr_block(3, 9) == (4, 8)
    assert biggest_cidr_block(5, 6) == (5, 6)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 60), st.integers(0, 20)), max_size=30))
def test_rangeset_matches_a_python_set(ops: list[tuple[bool, int, int]]) -> None:
    ranges, model = RangeSet(), set()
    for add, start, length in ops:
        if add:
            ranges.add(start, start + length)
            model |= set(range(start, start + length))
        else:
            ranges.remove(start, start + length)
            model -= set(range(start, start + length))
        bounds = [b for r in ranges for b in r]
        assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds)  # coalesced
        assert {i for lo, hi in ranges for i in range(lo, hi)} == model
        assert ranges.size() == len(model)
        assert all((i in ranges) == (i in model) for i in range(-1, 82))
        assert ranges.size_in(10, 30) == len(model & set(range(10, 30)))


_op = st.one_of(
    st.tuples(st.just("alloc"), st.integers(0, 64), st.integers(1, 64)),
    st.tuples(st.just("claim"), st.integers(0, 70), st.just(0)),
    st.tuples(st.just("free"), st.integers(0, 70), st.just(0)),
    st.tuples(st.just("donate"), st.integers(0, 64), st.integers(1, 64)),
    st.tuples(st.just("grow"), st.integers(0, 64), st.integers(1, 16)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_op, max_size=60))
def test_space_matches_a_naive_model(ops: list[tuple[str, int, int]]) -> None:
    space, owned, allocated = Space(), set(range(0, 32)), set[int]()
    space.add_ranges([(0, 32)])
    for kind, a, b in ops:
        if kind == "alloc":
            got = space.allocate(a, a + b)
            lowest = sorted((owned - allocated) & set(range(a, a + b)))
            assert got == (lowest[0] if lowest else None)
            if got is not None:
                allocated.add(got)
        elif kind == "claim":
            assert space.claim(a) == (a in owned and a not in allocated)
            if a in owned:
                allocated.add(a)
        elif kind == "free":
            if a in allocated:
                space.free(a)
                allocated.discard(a)
        elif kind == "donate":
            chunk = space.donate(a, a + b)
            free_there = (owned - allocated) & set(range(a, a + b))
            if chunk is None:
                assert not free_there
            else:
                lo, hi = chunk
                size = hi - lo
                assert set(range(lo, hi)) <= free_there
                assert size & (size - 1) == 0 and lo % size == 0  # CIDR-aligned
                assert size <= max(1, (len(free_there) + 1) // 2)
                owned -= set(range(lo, hi))
        else:
            space.add_ranges([(a, a + b)])
            owned |= set(range(a, a + b))
        assert {x for lo, hi in space.owned_ranges() for x in range(lo, hi)} == owned
        assert set(space.allocated()) == allocated
        assert space.num_free() == len(owned) - len(allocated)
