"""A sum tree (with a companion min tree) over an array, for proportional prioritised sampling.

Layout: a complete binary tree stored in one array, root at 1, leaf ``i`` at ``size + i`` where ``size`` is the
capacity rounded up to a power of two (padding leaves hold 0). Internal nodes are always *recomputed* from their two
children in float64, never incremented, so long runs do not drift.
"""
from __future__ import annotations

import numpy as np

from buffers._jit import njit


@njit
def _update_kernel(
    sums: np.ndarray, mins: np.ndarray, size: int, capacity: int, indices: np.ndarray, values: np.ndarray
) -> int:
    # Validate the whole batch first (returns an error code, writes nothing), then write.
    for k in range(indices.shape[0]):
        if indices[k] < 0 or indices[k] >= capacity:
            return 1
        if not (values[k] >= 0.0 and values[k] < np.inf):  # also False for NaN
            return 2
    # Write leaves in batch order, so for a repeated index the last occurrence wins.
    nodes = indices + size
    for k in range(nodes.shape[0]):
        sums[nodes[k]] = values[k]
        mins[nodes[k]] = values[k] if values[k] > 0.0 else np.inf  # zero = not sampleable, so not in the min
    # Then recompute parents level by level (independent loads across the batch overlap their cache misses).
    level = size
    while level > 1:
        level //= 2
        for k in range(nodes.shape[0]):
            node = nodes[k] // 2
            nodes[k] = node
            sums[node] = sums[2 * node] + sums[2 * node + 1]
            mins[node] = min(mins[2 * node], mins[2 * node + 1])
    return 0


@njit
def _find_kernel(sums: np.ndarray, size: int, values: np.ndarray) -> np.ndarray:
    # Leaf i is chosen when prefix(i) <= v < prefix(i + 1); never descend into a zero-sum subtree, so a value at or
    # past the total (or pushed there by rounding) lands on the last leaf with positive priority.
    for k in range(values.shape[0]):
        if not (values[k] >= 0.0 and values[k] < np.inf):
            return np.empty(0, dtype=np.int64)  # signals bad input to the caller
    # All searches advance one level at a time: their loads are independent, so cache misses overlap.
    rest = values.copy()
    nodes = np.ones(values.shape[0], dtype=np.int64)
    level = 1
    while level < size:
        level *= 2
        for k in range(nodes.shape[0]):
            left_child = 2 * nodes[k]
            left = sums[left_child]
            go_right = (rest[k] >= left) & (sums[left_child + 1] > 0.0)  # branch-free: no mispredicted flushes
            rest[k] -= left * go_right
            nodes[k] = left_child + go_right
    return nodes - size


class SumTree:
    """Batched sum tree over ``capacity`` non-negative leaves, with the minimum positive leaf kept alongside.

    ``update`` and ``find_prefixsum`` take whole batches (numba loops); ``total()`` and ``min()`` are O(1).
    A leaf of 0 is "absent": it is never returned by ``find_prefixsum`` and does not count in ``min()``.
    """

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        self.capacity = int(capacity)
        self._size = 1 << (self.capacity - 1).bit_length()  # leaves, rounded up to a power of two
        self._sums = np.zeros(2 * self._size, dtype=np.float64)
        self._mins = np.full(2 * self._size, np.inf, dtype=np.float64)

    @staticmethod
    def _as_index_array(indices: np.ndarray | list[int] | int) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.dtype == np.bool_ or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
        return np.ascontiguousarray(idx.reshape(-1), dtype=np.int64)

    def _range_error(self, idx: np.ndarray) -> ValueError:
        return ValueError(f"indices must lie in [0, {self.capacity}), got min {idx.min()} max {idx.max()}")

    def _check_indices(self, indices: np.ndarray | list[int] | int) -> np.ndarray:
        idx = self._as_index_array(indices)
        if idx.size and (idx.min() < 0 or idx.max() >= self.capacity):
            raise self._range_error(idx)
        return idx

    def update(self, indices: np.ndarray | list[int] | int, priorities: np.ndarray | list[float] | float) -> None:
        """Set leaves ``indices`` to ``priorities`` (finite, >= 0). A repeated index takes its LAST value.

        Everything is validated before anything is written, so a ``ValueError`` leaves the tree unchanged.
        """
        idx = self._as_index_array(indices)
        values = np.ascontiguousarray(np.asarray(priorities, dtype=np.float64).reshape(-1))
        if values.shape != idx.shape:
            raise ValueError(f"indices and priorities must have the same length, got {idx.size} and {values.size}")
        code = _update_kernel(self._sums, self._mins, self._size, self.capacity, idx, values)
        if code == 1:
            raise self._range_error(idx)
        if code == 2:
            raise ValueError("priorities must be finite and non-negative (got NaN, inf or a negative value)")

    def find_prefixsum(self, values: np.ndarray | list[float] | float) -> np.ndarray:
        """For each ``v`` in ``values`` return the leaf ``i`` with ``prefix(i) <= v < prefix(i + 1)``.

        ``v >= total()`` returns the last leaf with positive priority (defined edge case, no IndexError).
        """
        vals = np.ascontiguousarray(np.asarray(values, dtype=np.float64).reshape(-1))
        if not self._sums[1] > 0.0:
            raise ValueError("cannot search an empty sum tree (total priority is 0)")
        out = _find_kernel(self._sums, self._size, vals)
        if out.shape[0] != vals.shape[0]:
            raise ValueError("search values must be finite and non-negative")
        return out

    def total(self) -> float:
        """Sum of all leaves."""
        return float(self._sums[1])

    def min(self) -> float:
        """Smallest positive leaf (``inf`` when every leaf is 0); gives the largest importance weight."""
        return float(self._mins[1])

    def __getitem__(self, indices: np.ndarray | list[int] | int) -> np.ndarray:
        """Leaf values at ``indices`` (always a float64 array)."""
        return self.leaves[self._check_indices(indices)]

    @property
    def leaves(self) -> np.ndarray:
        """Read-only view of the ``capacity`` leaf values."""
        view = self._sums[self._size : self._size + self.capacity]
        view.flags.writeable = False
        return view

    @property
    def nbytes(self) -> int:
        """Memory held by the two trees."""
        return int(self._sums.nbytes + self._mins.nbytes)
