"""Image folders: class subfolders of images, opened by their file headers, decoded one at a time.

    ud = open_folder(Path("pets"), image_shape=(64, 64, 3), val_size=500)
    src = ud.splits["train"]           # an ImageFolderSource: len(src), src[i] -> {"image", "label"}
    src.labels                         # int32 (N,), known without decoding a pixel

Layouts (docs/data.md): PATH/<class>/<image>, or PATH/train/<class>/<image> with optional
PATH/val/ (or validation/) and PATH/test/ of the same class folders. Class names are the train
split's folder names, sorted; hidden files and files that are not images are ignored (counted).
Opening reads each file's header only (PIL opens lazily); a file whose header cannot be read is
named and skipped, and more than `MAX_UNREADABLE_PERCENT` % of them (at least one is allowed)
refuses the folder. Pixels are decoded when an item is read, in Grain's worker processes.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from train.sources.userdata import UserData, validation_cut
from zoo.files import NotARegularFileError, open_regular_file
from zoo.preprocess import fit_uint8

__all__ = ["open_folder", "ImageFolderSource", "ImageReadError", "IMAGE_SUFFIXES", "MAX_UNREADABLE_PERCENT"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")  # compared lower-cased
MAX_UNREADABLE_PERCENT = 1  # more unreadable image files than this (and more than one) refuse the folder
SHOWN = 3  # files named in a message; the rest are counted
_SPLITS = {"train": ("train",), "validation": ("val", "validation"), "test": ("test",)}


class ImageReadError(ValueError):
    """An image file that cannot be decoded when it is read (its header was fine when opened)."""


class ImageFolderSource:
    """One split of an image folder, as a Grain RandomAccessDataSource (picklable: paths and labels).

    `src[i]` -> {"image": uint8 (H, W, C) of `image_shape`, "label": np.int32}: the file decoded
    with its EXIF orientation, transparency laid on white, converted to the model's channels and
    resized bilinearly (`zoo.preprocess.fit_uint8`), never inverted.
    """

    def __init__(self, paths, labels, image_shape: tuple[int, int, int]):
        self.paths = tuple(Path(p) for p in paths)
        self.labels = np.asarray(labels, np.int32)
        self.image_shape = tuple(int(d) for d in image_shape)
        if self.labels.shape != (len(self.paths),):
            raise ValueError(f"{len(self.paths)} paths but labels of shape {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index) -> dict:
        index = int(index)
        return {"image": read_image(self.paths[index], self.image_shape), "label": self.labels[index]}

    def __repr__(self) -> str:  # Grain names a source by its repr in checkpoints: keep it deterministic
        first = os.fspath(self.paths[0]) if self.paths else None
        return f"ImageFolderSource(n={len(self)}, image_shape={self.image_shape}, first={first!r})"


def read_image(path: Path, image_shape: tuple[int, int, int]) -> np.ndarray:
    """The image file `path` as uint8 `image_shape`; ImageReadError naming the file if it cannot be."""
    from PIL import Image

    try:
        with open_regular_file(path, "an image file") as f, Image.open(f) as picture:
            return fit_uint8(picture, image_shape)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: cannot read this image ({_reason(e)})") from e


def _reason(error: BaseException) -> str:
    """Why a file could not be read, in a few words."""
    from PIL import UnidentifiedImageError

    if isinstance(error, NotARegularFileError):
        return f"is {error.kind}, not a regular file"
    if isinstance(error, UnidentifiedImageError):
        return "not an image Pillow can read"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _probe(path: Path) -> tuple[int, int] | str:
    """The (width, height) in an image file's header (no pixels decoded), or why it cannot be read."""
    from PIL import Image

    try:
        with open_regular_file(path, "an image file") as f, Image.open(f) as picture:
            return picture.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return _reason(e)


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'s' * (n != 1)}"


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


class _Scan:
    """What opening a folder finds: files ignored, files unreadable, image sizes."""

    def __init__(self, root: Path, image_shape: tuple[int, int, int]):
        self.root, self.image_shape = root, image_shape
        self.ignored: dict[str, None] = {}  # an ordered set: the root is listed twice in a flat layout
        self.unreadable: list[tuple[str, str]] = []  # (relative path, reason)
        self.sizes: Counter = Counter()  # (width, height) -> images of a size other than the model's
        self.images = 0

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def folders(self, directory: Path, where: str) -> list[str]:
        """The sorted class (or split) folder names in `directory`; its other entries are ignored.

        Raises ValueError when it has none (empty, or the images lie directly in it)."""
        try:
            with os.scandir(directory) as entries:
                entries = sorted(entries, key=lambda e: e.name)
        except OSError as e:
            raise self.unlisted(e, where) from e
        names = [e.name for e in entries if not e.name.startswith(".") and e.is_dir()]
        others = [e.name for e in entries if e.name not in names]
        label = f"{self.rel(directory)}/" if directory != self.root else "the folder"
        if not names:
            images = [n for n in others if _is_image(n)]
            if images:
                raise ValueError(f"{where}: the images lie directly in {label} ({images[0]}, ...); put each class's "
                                 f"images in a subfolder named after the class ({label if directory != self.root else 'PATH/'}cat/1.png, ...)")
            state = "is empty" if not others else "holds no class subfolders"
            raise ValueError(f"{where}: {label} {state}; expected class subfolders of images (PATH/cat/1.png, "
                             "PATH/dog/2.png) or PATH/train/<class>/..., optionally with PATH/val/ and PATH/test/")
        self.ignored.update(dict.fromkeys(self.rel(directory / n) for n in others))
        return names

    def unlisted(self, error: OSError, where: str) -> OSError:
        """One line for a folder that cannot be listed (e.g. no permission)."""
        folder = Path(error.filename or self.root)
        label = f"{self.rel(folder)}/" if folder != self.root else "the folder"
        return OSError(f"{where}: cannot list {label}: {error.strerror or error}")

    def images_in(self, class_dir: Path, where: str) -> list[Path]:
        """The readable image files under `class_dir` (subfolders too, links to folders not followed)."""
        def fail(error: OSError) -> None:  # os.walk skips unreadable folders unless told
            raise self.unlisted(error, where) from error

        found = []
        for folder, dirs, files in os.walk(class_dir, onerror=fail):
            folder = Path(folder)
            self.ignored.update(dict.fromkeys(self.rel(folder / d) for d in dirs if d.startswith(".") or (folder / d).is_symlink()))
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (folder / d).is_symlink())
            for name in sorted(files):
                path = folder / name
                if not _is_image(name):
                    self.ignored[self.rel(path)] = None
                    continue
                self.images += 1
                size = _probe(path)
                if isinstance(size, str):
                    self.unreadable.append((self.rel(path), size))
                    continue
                if size != self.image_shape[1::-1]:
                    self.sizes[size] += 1
                found.append(path)
        return found

    def notes(self, where: str) -> list[str]:
        """Notes on files skipped, ignored and resized; ValueError if too many are unreadable."""
        notes, bad = [], self.unreadable
        named = ", ".join(f"{rel} ({why})" for rel, why in bad[:SHOWN]) + (f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else "")
        if len(bad) > max(1, self.images * MAX_UNREADABLE_PERCENT // 100):
            raise ValueError(f"{where}: {len(bad)} of {self.images} image files are unreadable, more than the "
                             f"{MAX_UNREADABLE_PERCENT}% (at least one) that would be skipped: {named}")
        if bad:
            notes.append(f"skipped {_count(len(bad), 'unreadable image file')}: {named}")
        if self.ignored:
            ignored = list(self.ignored)
            shown = ", ".join(ignored[:SHOWN]) + (", ..." if len(ignored) > SHOWN else "")
            notes.append(f"ignored {_count(len(ignored), 'file')}, hidden or not images ({', '.join(IMAGE_SUFFIXES)}): "
                         f"{shown}")
        if self.sizes:
            height, width = self.image_shape[:2]
            common = ", ".join(f"{w}x{h}: {k}" for (w, h), k in self.sizes.most_common(SHOWN))
            notes.append(f"resized {_count(sum(self.sizes.values()), 'image')} of other sizes ({common}{', ...' if len(self.sizes) > SHOWN else ''}) "
                         f"to {width}x{height} (width x height)")
        return notes


def _split_folders(scan: _Scan, where: str) -> dict[str, Path]:
    """{"train": folder, and "validation"/"test" where the folder has them}, by the layout."""
    root = scan.root
    names = scan.folders(root, where)
    split_names = [n for names_ in _SPLITS.values() for n in names_ if n in names]
    if "train" not in names:
        if split_names:
            raise ValueError(f"{where}: has {', '.join(n + '/' for n in split_names)} but no train/ folder; expected "
                             "train/ (and optionally val/ and test/) holding class subfolders")
        return {"train": root}
    others = sorted(set(names) - set(split_names))
    if others:
        raise ValueError(f"{where}: beside train/ expected only val/ (or validation/) and test/, found "
                         f"{', '.join(n + '/' for n in others)}")
    if "val" in names and "validation" in names:
        raise ValueError(f"{where}: has both val/ and validation/; keep one validation folder")
    return {split: root / n for split, options in _SPLITS.items() for n in options if n in names}


def _split_images(scan: _Scan, folders: dict[str, Path], where: str) -> tuple[list[str], dict]:
    """(class names, {split: (paths, labels)}); every split must hold the train split's classes."""
    classes = scan.folders(folders["train"], where)
    if len(classes) < 2:
        raise ValueError(f"{where}: found one class folder ({classes[0]}/); a classifier needs at least two, "
                         "one subfolder of images per class")
    found = {}
    for split, folder in folders.items():
        names = classes if split == "train" else scan.folders(folder, where)
        if names != classes:
            label = scan.rel(folder)
            lacks, extra = sorted(set(classes) - set(names)), sorted(set(names) - set(classes))
            parts = ([f"{label}/ lacks {', '.join(lacks)}"] if lacks else []) + (
                [f"{label}/ has {', '.join(extra)}, which the training classes lack"] if extra else [])
            raise ValueError(f"{where}: {label}/ must hold the same class folders as the training split: "
                             + "; ".join(parts))
        paths, labels = [], []
        for label, name in enumerate(classes):
            images = scan.images_in(folder / name, where)
            if not images:
                raise ValueError(f"{where}: the class folder {scan.rel(folder / name)}/ holds no readable images "
                                 f"({', '.join(IMAGE_SUFFIXES)})")
            paths += images
            labels += [label] * len(images)
        found[split] = (paths, labels)
    return classes, found


def open_folder(path: Path, *, image_shape: tuple[int, int, int] | None, val_size: int | None) -> UserData:
    """Opens an image folder (the module docstring's layouts) as streamed splits.

    Args:
      path: the folder.
      image_shape: (height, width, channels) of the model's input; None: the model takes no images.
      val_size: images held out from the training images for validation when there is no val/
        folder, by a fixed shuffle (the same for every run); None: a tenth of them. 0 with a
        test/ folder: validation is the test split.

    Returns:
      UserData(kind="images"), splits "train", "validation", "test" of `ImageFolderSource`;
      no test/ folder: the test split is the validation split (said in `notes`).

    Raises:
      ValueError: one line starting "--data PATH:" (layout, classes, unreadable files, val_size).
    """
    root = Path(path)
    where = f"--data {root}"
    if image_shape is None:
        raise ValueError(f"{where}: an image folder trains a model that takes images (a float (height, width, "
                         "1 or 3) input); this model's input is not an image")
    scan = _Scan(root, tuple(image_shape))
    folders = _split_folders(scan, where)
    classes, found = _split_images(scan, folders, where)
    notes = scan.notes(where)
    train_name = "the folder" if folders["train"] == root else "train/"
    found, more = _validation_and_test(found, train_name, val_size, where)
    made = {}  # id of a (paths, labels) pair -> its source: "test" may be the validation split itself
    splits = {split: made.setdefault(id(pair), ImageFolderSource(*pair, image_shape)) for split, pair in found.items()}
    return UserData(kind="images", path=root, splits=splits, class_names=tuple(classes), notes=tuple(more + notes))


def _validation_and_test(found: dict, train_name: str, val_size: int | None, where: str) -> tuple[dict, list[str]]:
    """`found` with "validation" and "test" filled in where the folder has no such split, and notes saying how."""
    notes = []
    if "validation" not in found:
        if val_size == 0:
            if "test" not in found:
                raise ValueError(f"{where}: --val-size 0 and no val/ folder leave nothing to validate on; give "
                                 "--val-size N or a val/ folder")
            found["validation"] = found["test"]
            notes.append("validation: the test/ images (--val-size 0, no val/ folder)")
        else:
            paths, labels = found["train"]
            keep, held = validation_cut(len(paths), val_size, where, f"all the images in {train_name}")
            found["train"] = ([paths[i] for i in keep], [labels[i] for i in keep])
            found["validation"] = ([paths[i] for i in held], [labels[i] for i in held])
            notes.append(f"validation: {len(held)} of the {len(paths)} images in {train_name}, held out by a fixed "
                         "shuffle (the same for every run and seed)")
    if "test" not in found:
        found["test"] = found["validation"]
        notes.append("test: no test/ folder, so the test split is the validation split")
    return found, notes
