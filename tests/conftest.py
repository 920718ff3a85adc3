"""Shared test settings: one torch thread keeps the suite fast and deterministic on 2-core machines."""
import os
import signal

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest-xdist's workers ignore SIGINT; the Ctrl-C tests need Python's own
    signal.signal(signal.SIGINT, signal.default_int_handler)

try:
    import torch
except ImportError:  # the registry tests run without torch
    torch = None
else:
    torch.set_num_threads(1)
