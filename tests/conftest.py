"""Shared test settings: one torch thread keeps the suite fast and deterministic on 2-core machines."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

try:
    import torch
except ImportError:  # the registry tests run without torch
    torch = None
else:
    torch.set_num_threads(1)
