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


# --- 8-ary cache-line layout: capacities around multiples of 8, exact node boundaries, pickles, pure Python ---


def binary_reference(leaves, values):
    """Textbook binary sum tree (parent = left + right, zero padding to a power of two) and its prefix search."""
    size = 1 << max(0, (len(leaves) - 1).bit_length())
    sums = np.zeros(2 * size)
    sums[size : size + len(leaves)] = leaves
    for node in range(size - 1, 0, -1):
        sums[node] = sums[2 * node] + sums[2 * node + 1]
    found = []
    for v in values:
        node = 1
        while node < size:
            left = sums[2 * node]
            go_right = v >= left and sums[2 * node + 1] > 0.0
            v -= left * go_right
            node = 2 * node + go_right
        found.append(node - size)
    return sums[1], np.array(found)


@pytest.mark.parametrize("capacity", [1, 2, 7, 8, 9, 63, 64, 65, 511, 512, 513, 4097])
def test_integer_leaves_exact_boundaries(capacity):
    leaves = (np.arange(capacity) % 5).astype(float)  # integers: every prefix sum is exact; zeros every 5th leaf
    if not leaves.any():
        leaves[-1] = 3.0
    tree = SumTree(capacity)
    tree.update(np.arange(capacity), leaves)
    assert tree.total() == leaves.sum()
    assert tree.min() == leaves[leaves > 0].min()
    positive = np.flatnonzero(leaves > 0)
    starts = np.cumsum(leaves) - leaves
    # A value exactly at the start of a positive leaf's interval returns that leaf (not the zero leaves before it).
    np.testing.assert_array_equal(tree.find_prefixsum(starts[positive]), positive)
    np.testing.assert_array_equal(tree.find_prefixsum(starts[positive] + leaves[positive] - 0.5), positive)
    last = positive[-1]
    np.testing.assert_array_equal(tree.find_prefixsum([tree.total(), 10 * tree.total()]), [last, last])


def test_capacity_one():
    tree = SumTree(1)
    tree.update([0], [2.5])
    assert (tree.total(), tree.min()) == (2.5, 2.5)
    assert tree.find_prefixsum([0.0, 2.4, 2.5, 1e9]).tolist() == [0, 0, 0, 0]
    tree.update([0], [0.0])
    assert (tree.total(), tree.min()) == (0.0, math.inf)
    with pytest.raises(ValueError, match="empty"):
        tree.find_prefixsum([0.0])


def test_positive_leaves_straddling_a_cache_line():
    tree = SumTree(16)  # leaves 0-7 fill one line, 8-15 the next
    tree.update([7, 8], [1.0, 2.0])
    assert tree.find_prefixsum([0.0, 0.999, 1.0, 2.9, 3.0, 100.0]).tolist() == [7, 7, 8, 8, 8, 8]
    assert tree.min() == 1.0


def test_single_positive_leaf_behind_zero_subtrees():
    tree = SumTree(8**3 + 1)  # four levels; leaf 512 is alone in the last line of every level
    tree.update([512], [0.25])
    assert tree.find_prefixsum([0.0, 0.1, 0.25, 1e300]).tolist() == [512] * 4
    assert (tree.total(), tree.min()) == (0.25, 0.25)


@pytest.mark.parametrize("capacity", [5, 8, 100, 1000])
def test_bitwise_equal_to_a_binary_sum_tree(capacity):
    rng = np.random.default_rng(capacity)
    leaves = rng.exponential(1.0, capacity) * (rng.random(capacity) < 0.7)  # about 30% zeros
    leaves[rng.integers(0, capacity)] = 1.0  # at least one positive leaf
    tree = SumTree(capacity)
    tree.update(np.arange(capacity), leaves)
    values = np.concatenate([rng.random(300) * tree.total(), [0.0, tree.total()]])
    total, found = binary_reference(leaves, values)
    assert tree.total() == total
    np.testing.assert_array_equal(tree.find_prefixsum(values), found)


def test_nbytes_and_alignment():
    tree = SumTree(2**20)
    # sums: levels of 2**20, 2**17, 2**14, 2**11, 2**8, 32, 4 (padded to 8) slots and the root's line;
    # mins: the same without the leaf level. About 10.3 bytes per leaf.
    assert tree.nbytes == 8 * (1_198_384 + 149_808) == 10_785_536
    assert tree._sums.ctypes.data % 64 == 0 and tree._mins.ctypes.data % 64 == 0
    copy = pickle.loads(pickle.dumps(tree))
    assert copy._sums.ctypes.data % 64 == 0 and copy.nbytes == tree.nbytes


def test_pickle_keeps_only_leaves_and_rebuilds_min():
    tree = SumTree(20)
    tree.update([3, 9, 19], [4.0, 0.5, 2.0])
    assert set(tree.__getstate__()) == {"capacity", "leaves"}
    copy = pickle.loads(pickle.dumps(tree))
    assert (copy.total(), copy.min()) == (6.5, 0.5)
    np.testing.assert_array_equal(copy._sums, tree._sums)
    np.testing.assert_array_equal(copy._mins, tree._mins)


def test_unpickles_the_earlier_binary_layout():
    # State as pickled by the binary tree this layout replaced: leaf i at _sums[_size + i].
    sums = np.zeros(16)
    sums[8:13] = [1.0, 0.0, 2.0, 0.5, 0.0]
    for node in range(7, 0, -1):
        sums[node] = sums[2 * node] + sums[2 * node + 1]
    tree = SumTree.__new__(SumTree)
    tree.__setstate__({"capacity": 5, "_size": 8, "_sums": sums, "_mins": np.full(16, np.inf)})
    assert tree.leaves.tolist() == [1.0, 0.0, 2.0, 0.5, 0.0]
    assert (tree.total(), tree.min()) == (3.5, 0.5)
    assert tree.find_prefixsum([1.0, 3.4, 9.0]).tolist() == [2, 3, 3]


def test_index_and_value_inputs_of_any_shape_and_integer_type():
    tree = SumTree(10)
    tree.update(np.arange(10, dtype=np.uint32)[::2], np.full((5, 1), 2.0))  # strided uint32, column of values
    assert tree.leaves.tolist() == [2.0, 0.0] * 5
    tree.update(np.array([[1, 3]]), [1.0, 1.0])  # 2-D indices, list of values
    assert tree.total() == 12.0
    assert tree.find_prefixsum(np.array([[0.0], [2.5]])).tolist() == [0, 1]
    assert tree.find_prefixsum(5.0).tolist() == [3]  # a scalar


def test_pure_python_kernels_agree(monkeypatch):
    """The kernels as plain Python (what runs without numba) build the same trees and find the same leaves."""
    import buffers.sum_tree as module

    if not hasattr(module._find_kernel, "py_func"):
        pytest.skip("numba is not installed: the kernels already run as Python")

    def build_and_search():
        rng = np.random.default_rng(2)
        tree = SumTree(77)
        for _ in range(5):
            tree.update(rng.integers(0, 77, 20), rng.exponential(1.0, 20) * (rng.random(20) < 0.8))
        return tree, tree.find_prefixsum(rng.random(50) * tree.total())

    jitted, found = build_and_search()
    for name in ("_find_kernel", "_update_kernel", "_pos"):
        monkeypatch.setattr(module, name, getattr(module, name).py_func)
    python, python_found = build_and_search()
    np.testing.assert_array_equal(python._sums, jitted._sums)
    np.testing.assert_array_equal(python._mins, jitted._mins)
    np.testing.assert_array_equal(python_found, found)
