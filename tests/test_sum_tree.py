"""SumTree against a brute-force array: sums, minimum, prefix search, edge cases and bad input."""
import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buffers import SumTree

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


@st.composite
def trees_with_updates(draw):
    """A capacity and a list of update batches (duplicates and zeros included)."""
    capacity = draw(st.integers(1, 70))
    batches = []
    for _ in range(draw(st.integers(1, 5))):
        n = draw(st.integers(0, 12))
        idx = draw(st.lists(st.integers(0, capacity - 1), min_size=n, max_size=n))
        val = draw(st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 1e3)), min_size=n, max_size=n))
        batches.append((idx, val))
    return capacity, batches


def build(capacity, batches):
    tree, ref = SumTree(capacity), np.zeros(capacity)
    for idx, val in batches:
        tree.update(np.array(idx, dtype=np.int64), np.array(val))
        for i, v in zip(idx, val):  # reference: sequential, so the last duplicate wins
            ref[i] = v
    return tree, ref


@SETTINGS
@given(trees_with_updates())
def test_matches_brute_force(case):
    tree, ref = build(*case)
    np.testing.assert_array_equal(tree.leaves, ref)
    assert tree.total() == pytest.approx(math.fsum(ref), rel=1e-12, abs=0)
    positive = ref[ref > 0]
    assert tree.min() == (positive.min() if positive.size else math.inf)


@SETTINGS
@given(trees_with_updates(), st.lists(st.floats(0.0, 1.0), min_size=1, max_size=20))
def test_find_prefixsum_matches_brute_force(case, fractions):
    tree, ref = build(*case)
    if not (ref > 0).any():
        with pytest.raises(ValueError, match="empty"):
            tree.find_prefixsum([0.0])
        return
    cum = np.cumsum(ref)
    positive = np.flatnonzero(ref > 0)
    # The middle of each positive leaf's interval must map to that leaf exactly.
    mids = cum[positive] - 0.5 * ref[positive]
    np.testing.assert_array_equal(tree.find_prefixsum(mids), positive)
    # Arbitrary values (including exactly the total) land on a positive leaf whose interval holds them.
    values = np.array(fractions) * tree.total()
    found = tree.find_prefixsum(values)
    assert (ref[found] > 0).all()
    tol = 1e-9 * cum[-1]
    assert (cum[found] - ref[found] <= values + tol).all()
    assert ((values < cum[found] + tol) | (found == positive[-1])).all()


def test_value_at_or_past_total_gives_last_positive_leaf():
    tree = SumTree(5)  # not a power of two: three zero padding leaves follow
    tree.update([0, 2, 3], [1.0, 2.0, 0.5])
    out = tree.find_prefixsum([tree.total(), np.nextafter(tree.total(), np.inf), 10 * tree.total(), 0.0])
    np.testing.assert_array_equal(out, [3, 3, 3, 0])


def test_zero_leaves_are_never_found():
    tree = SumTree(64)
    tree.update(np.arange(0, 64, 3), np.full(22, 0.1))
    found = tree.find_prefixsum(np.linspace(0.0, tree.total(), 1001))
    assert set(found.tolist()) == set(range(0, 64, 3))


def test_duplicate_indices_last_occurrence_wins():
    tree = SumTree(8)
    tree.update([3, 1, 3, 3], [1.0, 7.0, 2.0, 5.0])
    assert tree[[3, 1]].tolist() == [5.0, 7.0]
    assert tree.total() == 12.0


def test_no_drift_after_many_updates():
    rng = np.random.default_rng(0)
    tree, ref = SumTree(1000), np.zeros(1000)
    for _ in range(500):
        idx = rng.integers(0, 1000, 64)
        val = rng.random(64) * 10.0 ** rng.integers(-6, 6)
        tree.update(idx, val)
        for i, v in zip(idx, val):
            ref[i] = v
    assert tree.total() == pytest.approx(math.fsum(ref), rel=1e-12)
    assert tree.min() == ref[ref > 0].min()


@pytest.mark.parametrize(
    "indices, priorities, match",
    [
        ([0, 1, 2], [1.0, -0.5, 1.0], "non-negative"),
        ([0, 1, 2], [1.0, 2.0, np.nan], "finite"),
        ([0, 1, 2], [np.inf, 2.0, 1.0], "finite"),
        ([0, 1, 10], [1.0, 1.0, 1.0], r"\[0, 10\)"),
        ([-1, 1, 2], [1.0, 1.0, 1.0], r"\[0, 10\)"),
        ([0.0, 1.0], [1.0, 1.0], "integers"),
        ([0, 1], [1.0, 1.0, 1.0], "same length"),
    ],
)
def test_bad_update_raises_and_leaves_tree_unchanged(indices, priorities, match):
    tree = SumTree(10)
    tree.update(np.arange(10), np.arange(1.0, 11.0))
    before = (tree._sums.copy(), tree._mins.copy())
    with pytest.raises(ValueError, match=match):
        tree.update(indices, priorities)
    np.testing.assert_array_equal(tree._sums, before[0])
    np.testing.assert_array_equal(tree._mins, before[1])


@pytest.mark.parametrize("values", [[-1.0], [np.nan], [np.inf]])
def test_bad_search_values_raise(values):
    tree = SumTree(4)
    tree.update([0], [1.0])
    with pytest.raises(ValueError, match="non-negative"):
        tree.find_prefixsum(values)


@pytest.mark.parametrize("capacity", [0, -3, 2.5, True, "8"])
def test_bad_capacity_raises(capacity):
    with pytest.raises(ValueError, match="capacity"):
        SumTree(capacity)


def test_pickle_round_trip():
    tree = SumTree(33)
    tree.update([0, 5, 32], [0.5, 2.0, 3.0])
    copy = pickle.loads(pickle.dumps(tree))
    np.testing.assert_array_equal(copy.leaves, tree.leaves)
    assert (copy.total(), copy.min()) == (5.5, 0.5)
    assert copy.find_prefixsum([5.4]).tolist() == [32]
