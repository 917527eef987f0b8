"""`UserData`, what `train.sources.open_data` returns (in its own module so that the readers,
which `open_data` imports, can build one without an import cycle)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

__all__ = ["UserData"]


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
