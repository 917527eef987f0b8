"""An .npz of arrays as in-memory splits (read with `allow_pickle=False`: nothing is unpickled).

Keys (docs/data.md), one style per file:

* `image`, `label`: TFDS-style uint8 images (N, H, W, C), or (N, H, W) grayscale (a channel axis
  is added), and integer class labels (N,); the task's view applies, as for MNIST.
* `x`, `y`: `train.fit`-style model inputs and integer labels, used as given (`y` may be left
  out for models that learn without labels, e.g. autoencoders).
* per split: the same names with `_train`, `_val` (or `_validation`) and `_test` appended
  (`x_train`, `y_train`, `x_test`, ..., as Keras' mnist.npz has them); without a validation split,
  `val_size` training examples are held out by a fixed shuffle; without a test split, the test
  split is the validation split.
* optional `class_names`: a string array naming the labels 0..k-1.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from train.sources.userdata import UserData, validation_cut
from zoo.files import open_regular_file

__all__ = ["open_npz", "STYLES", "SPLIT_SUFFIXES"]

STYLES = (("image", "label"), ("x", "y"))  # (inputs, labels) key names
SPLIT_SUFFIXES = {"train": ("_train",), "validation": ("_val", "_validation"), "test": ("_test",)}
_EXPECTED = ("image and label (uint8 images, integer labels) or x and y (model inputs, integer labels), "
             "optionally per split (x_train, y_train, x_val, y_val, x_test, y_test), and class_names")


def _read(path: Path, where: str) -> dict[str, np.ndarray]:
    """Every array in the .npz at `path`; ValueError for anything else (a pickle, an object array)."""
    with open_regular_file(path, "an .npz file") as f:
        try:
            archive = np.load(f, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{where}: not an .npz archive of arrays (np.savez writes one): {e}") from None
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError(f"{where}: holds a single .npy array, not an .npz archive of named arrays (np.savez)")
        with archive:
            arrays = {}
            for name in archive.files:
                try:
                    arrays[name] = archive[name]
                except ValueError as e:  # allow_pickle=False refuses object arrays
                    raise ValueError(f"{where}: the array {name!r} holds Python objects, which are never unpickled; "
                                     "save numbers (and class_names as a string array)") from e
                except (OSError, EOFError, zipfile.BadZipFile) as e:
                    raise ValueError(f"{where}: the array {name!r} cannot be read: {e}") from e
    return arrays


def _layout(names: set[str], where: str) -> tuple[tuple[str, str], dict[str, str]]:
    """((inputs key, labels key), {split: key suffix}) of the arrays' names; ValueError if they fit no layout."""
    found = "found " + (", ".join(sorted(names)) if names else "no arrays")
    styles = [s for s in STYLES if names & {k + suffix for k in s for suffix in ("", *sum(SPLIT_SUFFIXES.values(), ()))}]
    if not styles:
        raise ValueError(f"{where}: expected the arrays {_EXPECTED}; {found}")
    if len(styles) > 1:
        raise ValueError(f"{where}: holds both image/label and x/y arrays; use one pair ({found})")
    inputs, labels = style = styles[0]
    split = {}
    for name, options in SPLIT_SUFFIXES.items():
        present = [suffix for suffix in options if {inputs + suffix, labels + suffix} & names]
        if len(present) > 1:
            raise ValueError(f"{where}: holds both {' and '.join(present)} arrays; keep one {name} split ({found})")
        split.update({name: suffix for suffix in present})
    flat = bool({inputs, labels} & names)
    if flat and split:
        raise ValueError(f"{where}: holds both {inputs}/{labels} and per-split arrays ({found}); use one or the other")
    suffixes = {"train": ""} if flat else split
    if "train" not in suffixes:
        raise ValueError(f"{where}: per-split arrays need {inputs}_train ({found})")
    known = {k + suffix for k in style for suffix in suffixes.values()} | {"class_names"}
    unknown = sorted(names - known)
    if unknown:
        raise ValueError(f"{where}: unexpected arrays {', '.join(unknown)}; expected {_EXPECTED} ({found})")
    return style, suffixes


def _split(arrays: dict, style: tuple[str, str], suffix: str, where: str) -> dict[str, np.ndarray]:
    """One split's {"image", "label"} or {"x", "y"}, checked: lengths, label dtype, image dtype and rank."""
    inputs, labels = style
    x_key, y_key = inputs + suffix, labels + suffix
    if x_key not in arrays:
        raise ValueError(f"{where}: {y_key} has no {x_key} beside it (found {', '.join(sorted(arrays))})")
    x = arrays[x_key]
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"{where}: {x_key} is empty (shape {x.shape})")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{where}: {x_key} must be numeric, got dtype {x.dtype}")
    if inputs == "image":
        if x.dtype != np.uint8:
            raise ValueError(f"{where}: {x_key} must hold uint8 images (0-255), got {x.dtype}; float inputs go in "
                             "x (with y), which are used as given")
        if x.ndim == 3:  # (N, H, W) grayscale
            x = x[..., None]
        if x.ndim != 4:
            raise ValueError(f"{where}: {x_key} must be images (N, H, W, C) or (N, H, W), got shape {x.shape}")
    out = {inputs: x}
    if y_key in arrays:
        y = arrays[y_key]
        if y.ndim == 0 or len(y) != len(x):
            raise ValueError(f"{where}: {x_key} has {len(x)} examples but {y_key} has "
                             f"{len(y) if y.ndim else 'none (a scalar)'}")
        if y.dtype.kind not in "iu":
            raise ValueError(f"{where}: {y_key} must hold integer class labels, got dtype {y.dtype}")
        if y.size and int(y.min()) < 0:
            raise ValueError(f"{where}: {y_key} holds the negative label {int(y.min())}; labels are 0..k-1")
        out[labels] = y.astype(np.int32) if inputs == "image" else y
    elif inputs == "image":
        raise ValueError(f"{where}: {x_key} has no {y_key} beside it; image arrays need integer labels")
    return out


def _class_names(arrays: dict, splits: dict, where: str) -> tuple[str, ...] | None:
    """The `class_names` array as a tuple of str, checked against the labels; None when absent."""
    if "class_names" not in arrays:
        return None
    names = arrays["class_names"]
    if names.dtype.kind not in "US" or names.ndim != 1:
        raise ValueError(f"{where}: class_names must be a 1-D string array, got {names.dtype} {names.shape}")
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())
    if len(set(names)) != len(names) or not all(names):
        raise ValueError(f"{where}: class_names must be distinct non-empty names, got {', '.join(map(repr, names))}")
    labels = [s[key] for s in splits.values() for key in ("label", "y") if key in s]
    top = max((int(y.max()) for y in labels if y.size), default=-1)
    if top >= len(names):
        raise ValueError(f"{where}: the labels go up to {top} but class_names names {len(names)} classes")
    return names


def open_npz(path: Path, *, val_size: int | None) -> UserData:
    """Opens an .npz of arrays (the module docstring's keys) as in-memory splits.

    Args:
      path: the .npz file.
      val_size: training examples held out for validation when the file has no validation split,
        by a fixed shuffle (the same for every run); None: a tenth. 0 with a test split:
        validation is the test split.

    Returns:
      UserData(kind="arrays"), splits "train", "validation", "test" of {"image", "label"} or {"x", "y"}.

    Raises:
      ValueError: one line starting "--data PATH:" (keys, shapes, dtypes, val_size).
    """
    path = Path(path)
    where = f"--data {path}"
    arrays = _read(path, where)
    style, suffixes = _layout(set(arrays), where)
    splits = {name: _split(arrays, style, suffix, where) for name, suffix in suffixes.items()}
    notes = []
    n = len(splits["train"][style[0]])
    train_name = "/".join(k + suffixes["train"] for k in style if k + suffixes["train"] in arrays)
    if "validation" not in splits:
        if val_size == 0:
            if "test" not in splits:
                raise ValueError(f"{where}: --val-size 0 and no validation arrays leave nothing to validate on; "
                                 f"give --val-size N or {style[0]}_val arrays")
            splits["validation"] = splits["test"]
            notes.append("validation: the test arrays (--val-size 0, no validation arrays)")
        else:
            keep, held = validation_cut(n, val_size, where, f"all the examples in {train_name}")
            full = splits["train"]
            splits["train"], splits["validation"] = ({k: a[rows] for k, a in full.items()} for rows in (keep, held))
            notes.append(f"validation: {len(held)} of the {n} examples in {train_name}, held out by a fixed shuffle "
                         "(the same for every run and seed)")
    if "test" not in splits:
        splits["test"] = splits["validation"]
        notes.append(f"test: no {style[0]}_test array, so the test split is the validation split")
    splits = {name: splits[name] for name in ("train", "validation", "test")}
    return UserData(kind="arrays", path=path, splits=splits, class_names=_class_names(arrays, splits, where),
                    notes=tuple(notes))
