"""Fault lookup and chunk sizing, tested synchronously."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rime_trio.testing import Fault
from rime_trio.testing._faults import chunk_sizes, find_fault


def test_find_fault_picks_the_first_armed_for_the_connection() -> None:
    faults = [Fault("stall", frozenset({2}), seconds=1), Fault("stall", seconds=2)]
    assert find_fault(faults, "stall", 2) is faults[0]
    assert find_fault(faults, "stall", 1) is faults[1]
    assert find_fault(faults, "drop", 1) is None


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault kind 'nope'"):
        Fault("nope")  # type: ignore[arg-type]


@given(total=st.integers(0, 20_000), step=st.integers(0, 5000), odd=st.booleans())
def test_chunk_sizes_add_up(total: int, step: int, odd: bool) -> None:
    sizes = chunk_sizes(total, step, odd=odd)
    assert sum(sizes) == total
    assert all(size > 0 for size in sizes)
    if not odd:
        assert all(size == max(1, step) for size in sizes[:-1])


def test_odd_chunks_split_samples() -> None:
    sizes = chunk_sizes(10_000, 1000, odd=True)
    assert 1 in sizes
    assert all(size % 2 for size in sizes[:-1])
