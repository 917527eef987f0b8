"""Your own data: a folder of images, an .npz of arrays, or text files, as the engine trains on them.

    ud = sources.open_data("pets/", image_shape=(64, 64, 3), val_size=5000)
    ud.splits["train"]      # an ImageFolderSource (streamed with Grain) or a dict of numpy arrays
    ud.class_names          # ("cat", "dog"): the subfolder names, sorted
    ud.vocab                # text: the sorted characters of the training text

What each layout gives (docs/data.md):

* a folder of class subfolders of images (optionally `train/`, `val/`, `test/` folders of class
  subfolders): `images.ImageFolderSource` per split, decoded one image at a time (in Grain worker
  processes when training), never all in memory; items are TFDS-style
  {"image": uint8 (H, W, C), "label": int32 ()}.
* an `.npz`: `image`/`label` arrays are TFDS-style (the task's view applies, as for MNIST);
  `x`/`y` arrays are `train.fit`-style (already the model's input). In memory.
* a text file or a folder of `.txt` files: {"text": uint8 bytes} per split, in memory, with the
  vocabulary built from the training text.
"""

from __future__ import annotations

import os
from pathlib import Path

from train.sources.userdata import UserData  # its own module: the readers import it without a cycle

__all__ = ["UserData", "open_data"]


def open_data(path: str | os.PathLike, *, image_shape: tuple[int, int, int] | None, val_size: int | None,
              text: bool = False, seq_len: int | None = None) -> UserData:
    """Opens a user's dataset by its layout.

    Args:
      path: an image folder, an .npz file, or (with `text`) a text file or folder of .txt files.
      image_shape: (height, width, channels) images are decoded to (the model's input;
        `zoo.preprocess.image_shape`); None for models that do not take images.
      val_size: examples held out for validation where the data has no validation split (by a
        fixed shuffle, the same for every run: `userdata.validation_cut`); None: a tenth.
      text: the model is a language model: read `path` as text.
      seq_len: text: the training window; every split must hold at least one window.

    Raises:
      FileNotFoundError, ValueError: one line naming the path and what was expected.
    """
    p = Path(path).expanduser().absolute()
    if not p.exists():
        raise FileNotFoundError(f"--data {os.fspath(path)}: no such file or folder")
    if text:
        from train.sources import text as text_files

        return text_files.open_text(p, val_size=val_size, seq_len=seq_len)
    if p.is_file() and p.suffix == ".npz":
        from train.sources import arrays

        return arrays.open_npz(p, val_size=val_size)
    if p.is_dir():
        from train.sources import images

        return images.open_folder(p, image_shape=image_shape, val_size=val_size)
    raise ValueError(f"--data {os.fspath(path)}: expected a folder of class subfolders of images or an .npz "
                     "file (a text file trains a language model such as char_lstm)")
