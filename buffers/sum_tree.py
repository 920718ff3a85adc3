"""A sum tree (with a companion min tree) over an array, for proportional prioritised sampling.

Layout: an 8-ary tree stored level by level in one float64 array, leaves first. The 8 children of a node are
contiguous and start on a 64-byte boundary, so they fill exactly one cache line: at capacity 2**20 a search reads
7 lines (a binary tree: 20 nodes, the lower ones each a cache miss) and an update recomputes 7 parents, not 20.
Level ``l`` starts at ``offsets[l]`` and is padded to a multiple of 8 slots (padding holds 0 in the sum tree and
``inf`` in the min tree, so it never changes a parent); node ``j`` of level ``l >= 1`` covers the slots
``offsets[l - 1] + 8 * j ... + 7``. The top level holds only the root. The min tree stores levels ``1 ..`` only: its
leaves are read from the sum tree (a leaf of 0 counts as ``inf``). Both trees take about 10.3 bytes per leaf at
large capacities (the binary layout took 32 at a power-of-two capacity, up to 64 otherwise).

Parents are always *recomputed* from their children in float64, never incremented, so long runs do not drift. The
8 children are added pairwise, ((c0 + c1) + (c2 + c3)) + ((c4 + c5) + (c6 + c7)), and the search takes three binary
steps inside each line with the same pairwise sums: sums and search results are bit for bit those of a binary sum
tree whose parents are left + right (zero padding adds exactly 0).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from buffers._jit import njit

BRANCH = 8  # children per node: 8 float64 = one 64-byte cache line
_LINE_BYTES = 64
# ``(i & _NONNEG) << 3`` is the first slot of row i: the mask proves to the compiler that the index is >= 0 (it is,
# for any real array), so numba drops its negative-index wraparound code from the hot loops.
_NONNEG = (1 << 59) - 1


@njit
def _pos(v: float) -> float:
    # A leaf's contribution to the min tree: itself when positive, else inf (absent).
    return v if v > 0.0 else np.inf


@njit
def _update_kernel(
    sums: np.ndarray, mins: np.ndarray, offsets: np.ndarray, capacity: int, indices: np.ndarray, values: np.ndarray
) -> int:
    # Validate the whole batch first (returns an error code, writes nothing), then write.
    n = indices.shape[0]
    if values.shape[0] != n:
        return 3
    for k in range(n):
        if indices[k] < 0 or indices[k] >= capacity:
            return 1
        if not (values[k] >= 0.0 and values[k] < np.inf):  # also False for NaN
            return 2
    # Write leaves in batch order, so for a repeated index the last occurrence wins.
    for k in range(n):
        sums[indices[k]] = values[k]  # level 0 starts at offset 0
    # Then recompute parents level by level (independent loads across the batch overlap their cache misses).
    # Each parent reads its BRANCH children (one cache line) and adds them pairwise (see the module docstring).
    # The min tree has no leaf level: at level 1 it reads the leaves from the sum tree, a 0 (absent) counting as inf.
    nodes = indices.copy()
    off1 = offsets[1]
    for level in range(1, offsets.shape[0]):
        rows, parents = offsets[level - 1] >> 3, offsets[level]
        min_rows, min_parents = (offsets[level - 1] - off1) >> 3, parents - off1
        previous = -1
        for k in range(n):
            node = nodes[k] >> 3
            nodes[k] = node
            if node == previous:  # a sorted batch shares its upper parents: recompute each run of them once
                continue
            previous = node
            f = ((rows + node) & _NONNEG) << 3
            sums[parents + node] = (((sums[f] + sums[f + 1]) + (sums[f + 2] + sums[f + 3]))
                                    + ((sums[f + 4] + sums[f + 5]) + (sums[f + 6] + sums[f + 7])))
            if level == 1:
                low = min(min(min(_pos(sums[f]), _pos(sums[f + 1])), min(_pos(sums[f + 2]), _pos(sums[f + 3]))),
                          min(min(_pos(sums[f + 4]), _pos(sums[f + 5])), min(_pos(sums[f + 6]), _pos(sums[f + 7]))))
            else:
                g = ((min_rows + node) & _NONNEG) << 3
                low = min(min(min(mins[g], mins[g + 1]), min(mins[g + 2], mins[g + 3])),
                          min(min(mins[g + 4], mins[g + 5]), min(mins[g + 6], mins[g + 7])))
            mins[min_parents + node] = low
    return 0


@njit
def _find_kernel(sums: np.ndarray, offsets: np.ndarray, values: np.ndarray, nodes: np.ndarray) -> int:
    # Leaf i is chosen when prefix(i) <= v < prefix(i + 1); never descend into a zero-sum child, so a value at or
    # past the total (or pushed there by rounding) lands on the last leaf with positive priority. Within a node's
    # line: three binary steps on the pairwise sums, computed on the fly in the update's order.
    # Writes the leaves into ``nodes``; returns 0, or 1 for an empty tree, 2 for bad values (nothing written).
    if not sums[offsets[-1]] > 0.0:
        return 1
    n = values.shape[0]
    for k in range(n):
        if not (values[k] >= 0.0 and values[k] < np.inf):
            return 2
    rest = values.copy()
    nodes[:] = 0  # every search starts at the root (node 0 of the top level)
    # All searches advance one level at a time: their loads are independent, so cache misses overlap.
    for level in range(offsets.shape[0] - 1, 0, -1):
        rows = offsets[level - 1] >> 3
        touch = 0.0  # first pass: start every search's line load (few instructions each, so many misses overlap)
        for k in range(n):
            touch += sums[((rows + nodes[k]) & _NONNEG) << 3]
        if touch < 0.0:  # never true (sums are >= 0); keeps the loads from being optimised away
            return 2
        for k in range(n):
            node = nodes[k]
            f = ((rows + node) & _NONNEG) << 3
            r = rest[k]
            # Three binary steps (halves, quarters, children): go right when rest >= left and right > 0. Every
            # decision feeds arithmetic only, so the compiler emits no data-dependent branches (random values would
            # mispredict half of them). min(left, r) is left whenever it is subtracted, and keeps 0 * inf out.
            left = (sums[f] + sums[f + 1]) + (sums[f + 2] + sums[f + 3])
            go = (r >= left) & ((sums[f + 4] + sums[f + 5]) + (sums[f + 6] + sums[f + 7]) > 0.0)
            r -= min(left, r) * go
            f += 4 * go
            left = sums[f] + sums[f + 1]
            go = (r >= left) & (sums[f + 2] + sums[f + 3] > 0.0)
            r -= min(left, r) * go
            f += 2 * go
            left = sums[f]
            go = (r >= left) & (sums[f + 1] > 0.0)
            r -= min(left, r) * go
            rest[k] = r
            nodes[k] = BRANCH * node + (f & 7) + go
    return 0


def _level_offsets(capacity: int) -> np.ndarray:
    """Start of each level (leaves first, root last), each level padded to a multiple of BRANCH slots."""
    offsets, count, start = [], capacity, 0
    while True:
        offsets.append(start)
        start += -(-count // BRANCH) * BRANCH
        if count == 1 and len(offsets) > 1:  # the root; capacity 1 still gets one level above its leaf
            break
        count = -(-count // BRANCH)
    return np.array(offsets, dtype=np.int64)


def _aligned_full(n: int, fill: float) -> np.ndarray:
    """A float64 array of ``n`` slots filled with ``fill`` whose first slot starts a 64-byte cache line."""
    raw = np.zeros(n + _LINE_BYTES // 8, dtype=np.float64)  # zeros: large arrays stay lazily mapped
    start = (-raw.ctypes.data % _LINE_BYTES) // 8
    out = raw[start : start + n]
    if fill != 0.0:
        out.fill(fill)
    return out


class SumTree:
    """Batched sum tree over ``capacity`` non-negative leaves, with the minimum positive leaf kept alongside.

    ``update`` and ``find_prefixsum`` take whole batches (numba loops); ``total()`` and ``min()`` are O(1).
    A leaf of 0 is "absent": it is never returned by ``find_prefixsum`` and does not count in ``min()``.
    """

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        self.capacity = int(capacity)
        self._offsets = _level_offsets(self.capacity)
        self._root = int(self._offsets[-1])
        self._sums = _aligned_full(self._root + BRANCH, 0.0)
        self._mins = _aligned_full(self._root + BRANCH - int(self._offsets[1]), np.inf)  # levels 1.. only

    # Pickle only the leaves and rebuild the parents on load, into fresh cache-line-aligned arrays.
    def __getstate__(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "leaves": self.leaves.copy()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "_size" in state:  # pickled by the earlier binary layout (leaf i at _sums[_size + i])
            size, capacity = int(state["_size"]), int(state["capacity"])
            state = {"capacity": capacity, "leaves": np.asarray(state["_sums"])[size : size + capacity]}
        self.__init__(int(state["capacity"]))  # type: ignore[misc]
        self.update(np.arange(self.capacity), state["leaves"])  # recomputes every parent, validates the leaves

    @staticmethod
    def _as_index_array(indices: np.ndarray | list[int] | int) -> np.ndarray:
        """``indices`` as a contiguous 1-D int64 array (copies only when needed); ``ValueError`` unless integer."""
        idx = np.ascontiguousarray(indices)
        if idx.dtype.kind not in "iu":  # bool is kind "b": rejected like floats
            raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
        if idx.dtype != np.int64:
            idx = idx.astype(np.int64)
        return idx if idx.ndim == 1 else idx.reshape(-1)

    @staticmethod
    def _as_float_array(values: np.ndarray | list[float] | float) -> np.ndarray:
        """``values`` as a contiguous 1-D float64 array (copies only when needed)."""
        vals = np.ascontiguousarray(values, dtype=np.float64)
        return vals if vals.ndim == 1 else vals.reshape(-1)

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
        values = self._as_float_array(priorities)
        code = _update_kernel(self._sums, self._mins, self._offsets, self.capacity, idx, values)
        if code == 1:
            raise self._range_error(idx)
        if code == 2:
            raise ValueError("priorities must be finite and non-negative (got NaN, inf or a negative value)")
        if code == 3:
            raise ValueError(f"indices and priorities must have the same length, got {idx.size} and {values.size}")

    def find_prefixsum(self, values: np.ndarray | list[float] | float) -> np.ndarray:
        """For each ``v`` in ``values`` return the leaf ``i`` with ``prefix(i) <= v < prefix(i + 1)``.

        ``v >= total()`` returns the last leaf with positive priority (defined edge case, no IndexError).
        """
        vals = self._as_float_array(values)
        out = np.empty(vals.shape[0], dtype=np.int64)
        code = _find_kernel(self._sums, self._offsets, vals, out)
        if code == 1:
            raise ValueError("cannot search an empty sum tree (total priority is 0)")
        if code:
            raise ValueError("search values must be finite and non-negative")
        return out

    def total(self) -> float:
        """Sum of all leaves."""
        return float(self._sums[self._root])

    def min(self) -> float:
        """Smallest positive leaf (``inf`` when every leaf is 0); gives the largest importance weight."""
        return float(self._mins[-BRANCH])

    def __getitem__(self, indices: np.ndarray | list[int] | int) -> np.ndarray:
        """Leaf values at ``indices`` (always a float64 array)."""
        return self.leaves[self._check_indices(indices)]

    @property
    def leaves(self) -> np.ndarray:
        """Read-only view of the ``capacity`` leaf values."""
        view = self._sums[: self.capacity]
        view.flags.writeable = False
        return view

    @property
    def nbytes(self) -> int:
        """Memory held by the two trees."""
        return int(self._sums.nbytes + self._mins.nbytes)
