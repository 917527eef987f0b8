"""Shared by the examples: the MNIST slice they run on (`--quick`: a few hundred images)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

QUICK = "--quick" in sys.argv  # the test suite's setting: a small slice, seconds per example


def mnist(split: str = "train", n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (N, 28, 28, 1) in [0, 1], labels int32 (N,)) from TFDS ($TFDS_DATA_DIR)."""
    from train.data import load_split

    n = n or (256 if QUICK else None)
    arrays = load_split("mnist", split)
    return arrays["image"][:n].astype(np.float32) / 255.0, arrays["label"][:n].astype(np.int32)


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int):
    """Shuffled (x, y) batches of one epoch; the order is a function of the seed (drop the rest)."""
    order = np.random.default_rng(seed).permutation(len(x))
    for i in range(len(x) // batch_size):
        idx = order[i * batch_size:(i + 1) * batch_size]
        yield x[idx], y[idx]
