"""Optional numba JIT: the sum-tree kernels are plain loops, compiled when numba is installed.

Without numba the same loops run as ordinary Python (correct, but about 100x slower), and a warning says so.
The n-step and priority kernels are compiled by assignment (``kernel = njit(loop)``), so the loop itself stays a
plain function that the mutation run (``bench/mutation.sh``, with ``NUMBA_DISABLE_JIT=1``) can mutate.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

try:
    from numba import njit as _numba_njit
except ImportError:  # pragma: no cover - exercised only where numba is missing
    _numba_njit = None

HAS_NUMBA = _numba_njit is not None


def njit(func: Callable[..., Any]) -> Callable[..., Any]:
    """Compile ``func`` with numba (nopython, cached) or return it unchanged when numba is missing."""
    if _numba_njit is None:  # pragma: no cover
        warnings.warn("numba is not installed: buffers.SumTree runs as slow pure Python", stacklevel=2)
        return func
    return _numba_njit(cache=True, nogil=True)(func)
