"""`UserData`, what `train.sources.open_data` returns, and the validation cut the readers share
(in their own module so that the readers, which `open_data` imports, use them without an import
cycle)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["UserData", "validation_cut", "VAL_SEED"]

# Not the run's seed: every run and sweep trial validates on the same held-out examples.
VAL_SEED = 0


@dataclasses.dataclass(frozen=True)
class UserData:
    """A user's dataset, opened.

    Attributes:
      kind: "images" (a folder of class subfolders), "arrays" (an .npz) or "text".
      path: the path given, absolute.
      splits: {"train", "validation", "test"} -> an `images.ImageFolderSource` (streamed) or a
        dict of numpy arrays (in memory): {"image", "label"} or {"x", "y"} or {"text"}.
      class_names: names of the labels 0..k-1, or None (an .npz without `class_names`, text).
      vocab: text: the vocabulary (sorted distinct characters of the training text); else None.
      notes: one-line facts said once when the data is opened (files skipped, images resized,
        where validation came from).
    """

    kind: str
    path: Path
    splits: dict[str, Any]
    class_names: tuple[str, ...] | None = None
    vocab: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def streamed(self) -> bool:
        """True when the training split is read from files while training (Grain), not held in memory."""
        return not isinstance(self.splits["train"], dict)


def validation_cut(n: int, val_size: int | None, where: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices of `n` examples, each sorted: `val_size` of them (None: a
    tenth, at least one) picked by a fixed shuffle (`VAL_SEED`), the rest for training.

    Raises:
      ValueError: "`where`: ..." naming `what` was cut when no training example would be left.
    """
    size = max(1, n // 10) if val_size is None else val_size
    if not 0 <= size < n:
        raise ValueError(f"{where}: --val-size {size} holds out {what} ({n} examples), leaving none to train on; "
                         "give a smaller --val-size or a validation split")
    order = np.random.default_rng(VAL_SEED).permutation(n)
    return np.sort(order[size:]), np.sort(order[:size])
