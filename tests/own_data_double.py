"""A stand-in for train/sources/images.py (written in parallel) with the same contract: an image
folder of class subfolders opened as a streamed `UserData` (docs in train/sources/__init__.py).

`install(monkeypatch)` routes `train.sources.open_data` on folders here; arrays and text go to
the real functions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class FolderSource:
    """Grain random-access source: item i = {"image": uint8 (H, W, C), "label": int32}. Picklable."""

    def __init__(self, paths, labels, image_shape):
        self.paths = tuple(paths)
        self.labels = np.asarray(labels, np.int32)
        self.image_shape = tuple(image_shape)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        h, w, c = self.image_shape
        with Image.open(self.paths[i]) as im:
            im = im.convert("L" if c == 1 else "RGB")
            if im.size != (w, h):
                im = im.resize((w, h))
            image = np.asarray(im, np.uint8).reshape(h, w, c)
        return {"image": image, "label": np.int32(self.labels[i])}


def open_folder(p: Path, *, image_shape, val_size: int):
    from train.sources import UserData

    names = sorted(d.name for d in p.iterdir() if d.is_dir())
    if len(names) < 2:
        raise ValueError(f"--data {p}: expected at least 2 class subfolders of images")
    files = [(f, c) for c, n in enumerate(names) for f in sorted((p / n).iterdir()) if f.suffix == ".png"]
    order = np.random.default_rng(0).permutation(len(files))  # validation: a mix of classes
    files = [files[i] for i in order]
    cut = len(files) - (val_size if val_size is not None else max(1, len(files) // 10))
    paths, labels = zip(*files)
    train = FolderSource(paths[:cut], labels[:cut], image_shape)
    val = FolderSource(paths[cut:], labels[cut:], image_shape)
    return UserData("images", p, {"train": train, "validation": val, "test": val}, tuple(names),
                    notes=(f"validation: {val_size} images held out of {len(files)}",))


def open_data(path, *, image_shape, val_size, text=False, seq_len=None):
    import os

    from train import sources

    p = Path(path).expanduser().absolute()
    if p.is_dir() and not text:
        if not p.exists():
            raise FileNotFoundError(f"--data {os.fspath(path)}: no such file or folder")
        return open_folder(p, image_shape=image_shape, val_size=val_size)
    return _REAL(path, image_shape=image_shape, val_size=val_size, text=text, seq_len=seq_len)


from train import sources as _sources  # noqa: E402

_REAL = _sources.open_data


def install(monkeypatch=None) -> None:
    if monkeypatch is None:
        _sources.open_data = open_data
    else:
        monkeypatch.setattr(_sources, "open_data", open_data)
