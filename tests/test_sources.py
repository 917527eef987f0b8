"""Your own data, the file side: image folders and .npz files opened by `train.sources.open_data`.

Layouts, class names, the fixed validation cut, what an item decodes to, and one clear line for
each kind of bad data (docs/data.md). Folders are a few tiny PNGs written with PIL in tmp_path.
"""

from __future__ import annotations

import os
import pickle
import threading

import numpy as np
import pytest
from PIL import Image

from train.sources import open_data
from train.sources.arrays import open_npz
from train.sources.images import ImageFolderSource, ImageReadError, open_folder
from train.sources.userdata import VAL_SEED, validation_cut
from zoo.preprocess import fit_uint8

SHAPE = (8, 8, 1)


def png(path, value=0, size=(8, 8), mode="L"):
    """Writes a solid image of `value` (an int, or a tuple per band) at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def folder(root, counts: dict[str, int], value_of=lambda label, i: 10 * label + i):
    """root/<class>/<i>.png for each class, pixel value 10 * label + i (label: sorted order)."""
    for label, name in enumerate(sorted(counts)):
        for i in range(counts[name]):
            png(root / name / f"{i:03d}.png", value_of(label, i))
    return root


# ---------------------------------------------------------------- image folder layouts


def test_a_flat_folder_gives_sorted_class_names_and_a_fixed_validation_cut(tmp_path):
    folder(tmp_path, {"dog": 12, "cat": 10, "Zebra": 8})
    ud = open_data(tmp_path, image_shape=SHAPE, val_size=6)
    assert ud.kind == "images" and ud.streamed and ud.path == tmp_path
    assert ud.class_names == ("Zebra", "cat", "dog")  # sorted as Python sorts str, like torchvision
    train, val, test = (ud.splits[s] for s in ("train", "validation", "test"))
    assert (len(train), len(val)) == (24, 6) and test is val
    assert not set(train.paths) & set(val.paths)
    for src in (train, val):  # a label is its folder's index in the sorted class names
        assert [ud.class_names[label] for label in src.labels] == [p.parent.name for p in src.paths]
        assert src.labels.dtype == np.int32 and src.image_shape == SHAPE
    # the cut is the fixed shuffle VAL_SEED picks, whatever the run's seed: every run validates on it
    every = sorted(tmp_path.rglob("*.png"), key=lambda p: (p.parent.name, p.name))
    held = np.random.default_rng(VAL_SEED).permutation(30)[:6]
    assert val.paths == tuple(every[i] for i in sorted(held))
    assert open_data(tmp_path, image_shape=SHAPE, val_size=6).splits["validation"].paths == val.paths
    assert ud.notes[:2] == (
        "validation: 6 of the 30 images in the folder, held out by a fixed shuffle (the same for every run and seed)",
        "test: no test/ folder, so the test split is the validation split")


def test_validation_cut_is_a_seeded_shuffle_not_the_tail():
    train, val = validation_cut(100, 10, "--data x", "x")
    assert len(val) == 10 and sorted(set(train) | set(val)) == list(range(100))
    assert val.tolist() != list(range(90, 100))  # a sorted folder's tail is all one class
    assert len(validation_cut(100, None, "w", "x")[1]) == 10  # None: a tenth


def test_split_folders_train_val_test(tmp_path):
    folder(tmp_path / "train", {"a": 5, "b": 4})
    folder(tmp_path / "val", {"a": 2, "b": 1})
    folder(tmp_path / "test", {"a": 3, "b": 3})
    ud = open_folder(tmp_path, image_shape=SHAPE, val_size=1000)  # val/ is there: val_size is not used
    assert ud.class_names == ("a", "b")
    assert {s: len(src) for s, src in ud.splits.items()} == {"train": 9, "validation": 3, "test": 6}
    assert ud.splits["validation"].labels.tolist() == [0, 0, 1]
    assert all(p.parts[-3] == "test" for p in ud.splits["test"].paths)
    assert ud.notes == ()


def test_split_folders_accept_validation_and_cut_it_when_absent(tmp_path):
    folder(tmp_path / "train", {"a": 5, "b": 5})
    folder(tmp_path / "validation", {"a": 1, "b": 1})
    assert len(open_folder(tmp_path, image_shape=SHAPE, val_size=3).splits["validation"]) == 2
    (tmp_path / "validation").rename(tmp_path / "test")
    ud = open_folder(tmp_path, image_shape=SHAPE, val_size=3)
    assert {s: len(src) for s, src in ud.splits.items()} == {"train": 7, "validation": 3, "test": 2}
    assert ud.notes == ("validation: 3 of the 10 images in train/, held out by a fixed shuffle (the same for "
                        "every run and seed)",)
    zero = open_folder(tmp_path, image_shape=SHAPE, val_size=0)  # as for TFDS: validate on test
    assert zero.splits["validation"] is zero.splits["test"] and len(zero.splits["train"]) == 10


def test_val_folder_must_hold_the_training_classes(tmp_path):
    folder(tmp_path / "train", {"cat": 2, "dog": 2})
    folder(tmp_path / "val", {"cat": 1, "bird": 1})
    with pytest.raises(ValueError, match=rf"^--data {tmp_path}: val/ must hold the same class folders as the "
                                         r"training split: val/ lacks dog; val/ has bird, which the training"):
        open_folder(tmp_path, image_shape=SHAPE, val_size=1)


# ---------------------------------------------------------------- items


def test_items_are_uint8_images_as_stored_with_int32_labels(tmp_path):
    folder(tmp_path, {"a": 2, "b": 2}, value_of=lambda label, i: 200 + 10 * label + i)
    src = open_folder(tmp_path, image_shape=SHAPE, val_size=1).splits["train"]
    for i in range(len(src)):
        item = src[np.int64(i)]  # Grain indexes with numpy integers
        assert item["image"].dtype == np.uint8 and item["image"].shape == SHAPE
        assert isinstance(item["label"], np.int32) and item["label"] == src.labels[i]
        # light images stay light: training data is never inverted
        assert (item["image"] == 200 + 10 * int(item["label"]) + int(src.paths[i].stem)).all()


def test_items_take_the_models_channels_and_size_and_lay_alpha_on_white(tmp_path):
    png(tmp_path / "a" / "rgb.png", (255, 0, 0), size=(16, 12), mode="RGB")
    png(tmp_path / "a" / "clear.png", (0, 0, 0, 0), mode="RGBA")  # fully transparent: white
    png(tmp_path / "b" / "gray.png", 100)
    ud = open_folder(tmp_path, image_shape=(8, 8, 3), val_size=1)
    every = {p.name: ImageFolderSource([p], [0], (8, 8, 3))[0]["image"] for p in tmp_path.rglob("*.png")}
    assert (every["rgb.png"] == [255, 0, 0]).all() and every["rgb.png"].shape == (8, 8, 3)
    assert (every["clear.png"] == 255).all()
    assert (every["gray.png"] == 100).all()  # one channel repeated in three
    assert "resized 1 image of other sizes (16x12: 1) to 8x8 (width x height)" in ud.notes
    gray = ImageFolderSource([tmp_path / "a" / "rgb.png"], [0], (4, 4, 1))[0]["image"]
    assert gray.shape == (4, 4, 1) and (gray == np.asarray(Image.new("RGB", (1, 1), (255, 0, 0)).convert("L"))).all()


def test_fit_uint8_applies_exif_orientation(tmp_path):
    picture = Image.new("L", (4, 2), 0)
    picture.paste(255, (0, 0, 2, 2))  # left half white
    exif = picture.getexif()
    exif[0x0112] = 6  # viewers rotate it 90 degrees clockwise: the white half goes on top
    picture.save(tmp_path / "r.png", exif=exif)
    with Image.open(tmp_path / "r.png") as opened:
        image = fit_uint8(opened, (4, 2, 1))
    assert image[:2].min() == 255 and image[2:].max() == 0


def test_a_file_that_fails_to_decode_when_read_is_named(tmp_path):
    folder(tmp_path, {"a": 2, "b": 2})
    broken = tmp_path / "a" / "001.png"
    data = broken.read_bytes()
    broken.write_bytes(data[:data.index(b"IDAT") + 8])  # the header survives, the pixels do not
    src = open_folder(tmp_path, image_shape=SHAPE, val_size=1).splits["train"]  # opening reads headers only
    assert broken in src.paths
    with pytest.raises(ImageReadError, match=rf"^{broken}: cannot read this image \("):
        src[src.paths.index(broken)]


def test_the_source_pickles_and_grain_batches_it(tmp_path):
    import grain

    folder(tmp_path, {"a": 5, "b": 5})
    src = open_folder(tmp_path, image_shape=SHAPE, val_size=2).splits["train"]
    copy = pickle.loads(pickle.dumps(src))
    assert copy.paths == src.paths and (copy.labels == src.labels).all() and repr(copy) == repr(src)
    assert (copy[3]["image"] == src[3]["image"]).all()
    batches = list(grain.MapDataset.source(src).batch(4))
    assert [len(b["label"]) for b in batches] == [4, 4]
    assert batches[0]["image"].shape == (4, *SHAPE) and batches[0]["image"].dtype == np.uint8
    assert batches[1]["label"].tolist() == src.labels[4:8].tolist()


# ---------------------------------------------------------------- bad image folders


def bad_folder(tmp_path, match: str, *, image_shape=SHAPE, val_size=1, error=ValueError):
    with pytest.raises(error, match=rf"^--data {tmp_path}: {match}") as info:
        open_folder(tmp_path, image_shape=image_shape, val_size=val_size)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_empty_folder_and_images_without_class_folders(tmp_path):
    bad_folder(tmp_path, r"the folder is empty; expected class subfolders of images \(PATH/cat/1.png")
    (tmp_path / "README.md").write_text("my data")
    bad_folder(tmp_path, "the folder holds no class subfolders; expected")
    png(tmp_path / "1.png")
    bad_folder(tmp_path, r"the images lie directly in the folder \(1.png, ...\); put each class's images in a "
                         r"subfolder named after the class \(PATH/cat/1.png, ...\)$")
    (tmp_path / "train").mkdir()
    (tmp_path / "1.png").rename(tmp_path / "train" / "1.png")
    bad_folder(tmp_path, r"the images lie directly in train/ \(1.png, ...\); put each class's images in a "
                         r"subfolder named after the class \(train/cat/1.png, ...\)$")


def test_one_class_and_a_class_without_images(tmp_path):
    folder(tmp_path, {"cat": 3})
    bad_folder(tmp_path, r"found one class folder \(cat/\); a classifier needs at least two")
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "notes.txt").write_text("no images here")
    bad_folder(tmp_path, r"the class folder dog/ holds no readable images \(.png, .jpg")


def test_a_model_without_image_input_is_refused(tmp_path):
    folder(tmp_path, {"a": 2, "b": 2})
    bad_folder(tmp_path, r"an image folder trains a model that takes images \(a float \(height, width, 1 or 3\) "
                         "input\\); this model's input is not an image", image_shape=None)


def test_split_layout_mistakes(tmp_path):
    folder(tmp_path / "val", {"a": 1, "b": 1})
    bad_folder(tmp_path, r"has val/ but no train/ folder")
    folder(tmp_path / "train", {"a": 1, "b": 1})
    folder(tmp_path / "validation", {"a": 1, "b": 1})
    bad_folder(tmp_path, "has both val/ and validation/; keep one validation folder")
    (tmp_path / "validation").rename(tmp_path / "extra")
    bad_folder(tmp_path, r"beside train/ expected only val/ \(or validation/\) and test/, found extra/")


def test_val_size_that_leaves_nothing_is_one_line(tmp_path):
    folder(tmp_path, {"a": 2, "b": 2})
    bad_folder(tmp_path, r"--val-size 4 holds out all the images in the folder \(4 examples\), leaving none to "
                         "train on", val_size=4)
    bad_folder(tmp_path, "--val-size 0 and no val/ folder leave nothing to validate on", val_size=0)


def test_unreadable_files_are_named_and_skipped_up_to_one_percent(tmp_path):
    folder(tmp_path, {"a": 60, "b": 60})
    (tmp_path / "a" / "bad.png").write_bytes(b"not a png")
    ud = open_folder(tmp_path, image_shape=SHAPE, val_size=10)
    assert len(ud.splits["train"]) + len(ud.splits["validation"]) == 120
    assert "skipped 1 unreadable image file: a/bad.png (not an image Pillow can read)" in ud.notes
    (tmp_path / "b" / "bad.jpg").write_bytes(b"")
    message = bad_folder(tmp_path, "2 of 122 image files are unreadable, more than the 1% \\(at least one\\) that "
                                   "would be skipped: a/bad.png \\(not an image Pillow can read\\), b/bad.jpg")
    assert message.count("(") == 3


def test_many_unreadable_files_are_counted_past_the_first_few(tmp_path):
    folder(tmp_path, {"a": 2, "b": 2})
    for i in range(5):
        (tmp_path / "a" / f"x{i}.png").write_text("text")
    assert bad_folder(tmp_path, "5 of 9 image files are unreadable").endswith(
        "a/x2.png (not an image Pillow can read) and 2 more")


def test_fifos_and_symlink_loops_do_not_hang(tmp_path):
    folder(tmp_path, {"a": 100, "b": 100})
    os.mkfifo(tmp_path / "a" / "fifo.png")  # opening it for reading would block forever
    os.symlink("loop.png", tmp_path / "b" / "loop.png")
    result = {}
    thread = threading.Thread(target=lambda: result.update(ud=open_folder(tmp_path, image_shape=SHAPE, val_size=10)),
                              daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "opening a folder with a FIFO in it hung"
    notes = result["ud"].notes
    assert notes[2].startswith("skipped 2 unreadable image files: a/fifo.png (is a FIFO, not a regular file), "
                               "b/loop.png (Too many levels of symbolic links)")
    with pytest.raises(ImageReadError, match="fifo.png: cannot read this image \\(is a FIFO"):
        ImageFolderSource([tmp_path / "a" / "fifo.png"], [0], SHAPE)[0]


def test_hidden_and_other_files_are_ignored_and_counted(tmp_path):
    folder(tmp_path, {"a": 2, "b": 2})
    for name in ("README.md", "a/.DS_Store", "a/._001.png", "b/labels.csv"):
        (tmp_path / name).write_text("x")
    (tmp_path / "a" / ".ipynb_checkpoints").mkdir()
    png(tmp_path / "b" / "nested" / "UPPER.PNG", 5)  # subfolders of a class folder are its images too
    ud = open_folder(tmp_path, image_shape=SHAPE, val_size=1)
    assert len(ud.splits["train"]) + len(ud.splits["validation"]) == 5
    assert ud.notes[2] == ("ignored 5 files, hidden or not images (.png, .jpg, .jpeg, .bmp, .gif, .tif, .tiff, "
                           ".webp): README.md, a/.ipynb_checkpoints, a/.DS_Store, ...")


# ---------------------------------------------------------------- .npz files


def test_npz_image_label_is_tfds_style_with_a_channel_axis_added(tmp_path):
    images = np.arange(20 * 4 * 4, dtype=np.uint8).reshape(20, 4, 4)
    np.savez(tmp_path / "d.npz", image=images, label=np.arange(20) % 4, class_names=np.array(list("wxyz")))
    ud = open_data(tmp_path / "d.npz", image_shape=SHAPE, val_size=5)
    assert ud.kind == "arrays" and not ud.streamed and ud.class_names == ("w", "x", "y", "z")
    train, val = ud.splits["train"], ud.splits["validation"]
    assert train["image"].shape == (15, 4, 4, 1) and train["label"].dtype == np.int32
    assert ud.splits["test"] is val
    held = np.sort(np.random.default_rng(VAL_SEED).permutation(20)[:5])  # the folders' fixed cut
    assert (val["image"][..., 0] == images[held]).all() and val["label"].tolist() == (held % 4).tolist()
    assert ud.notes == ("validation: 5 of the 20 examples in image/label, held out by a fixed shuffle (the same "
                        "for every run and seed)", "test: no image_test array, so the test split is the validation split")


def test_npz_x_y_per_split_are_used_as_given(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {"x_train": rng.random((6, 3), dtype=np.float32), "y_train": np.array([0, 1, 0, 1, 0, 1], np.uint8),
              "x_validation": rng.random((2, 3)), "y_validation": np.array([1, 0]),
              "x_test": rng.random((3, 3)), "y_test": np.array([0, 0, 1])}
    np.savez(tmp_path / "d.npz", **arrays)
    ud = open_npz(tmp_path / "d.npz", val_size=1000)
    assert list(ud.splits) == ["train", "validation", "test"] and ud.class_names is None and ud.notes == ()
    for split, suffix in (("train", "_train"), ("validation", "_validation"), ("test", "_test")):
        for key in ("x", "y"):
            got, given = ud.splits[split][key], arrays[key + suffix]
            assert got.dtype == given.dtype and (got == given).all()


def test_npz_x_without_y_and_val_from_test(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=np.ones((4, 2), np.float32), x_test=np.zeros((2, 2), np.float32))
    ud = open_npz(tmp_path / "d.npz", val_size=0)
    assert set(ud.splits["train"]) == {"x"} and ud.splits["validation"] is ud.splits["test"]


def bad_npz(tmp_path, match: str, val_size=1, **arrays):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=rf"^--data {path}: {match}") as info:
        open_npz(path, val_size=val_size)
    assert "\n" not in str(info.value)


def test_npz_missing_and_unexpected_keys_name_what_was_found(tmp_path):
    bad_npz(tmp_path, r"expected the arrays image and label .* or x and y .*; found data, targets",
            data=np.zeros(3), targets=np.zeros(3))
    bad_npz(tmp_path, r"unexpected arrays meta; expected", x=np.zeros(3), y=np.zeros(3, int), meta=np.zeros(1))
    bad_npz(tmp_path, r"holds both image/label and x/y arrays", x=np.zeros(3), image=np.zeros((3, 2, 2), np.uint8))
    bad_npz(tmp_path, r"holds both x/y and per-split arrays", x=np.zeros(3), x_train=np.zeros(3))
    bad_npz(tmp_path, r"per-split arrays need x_train", x_test=np.zeros(3))
    bad_npz(tmp_path, r"holds both _val and _validation arrays", x_train=np.zeros(3), x_val=np.zeros(1),
            x_validation=np.zeros(1))
    bad_npz(tmp_path, r"image has no label beside it", image=np.zeros((3, 2, 2), np.uint8))
    bad_npz(tmp_path, r"y has no x beside it", y=np.zeros(3, int))


def test_npz_bad_arrays_are_one_line(tmp_path):
    bad_npz(tmp_path, r"x has 3 examples but y has 2", x=np.zeros((3, 2)), y=np.zeros(2, int))
    bad_npz(tmp_path, r"y must hold integer class labels, got dtype float64", x=np.zeros((3, 2)), y=np.zeros(3))
    bad_npz(tmp_path, r"label must hold integer class labels", image=np.zeros((3, 2, 2), np.uint8),
            label=np.array(["a", "b", "c"]))
    bad_npz(tmp_path, r"y holds the negative label -1", x=np.zeros((3, 2)), y=np.array([0, -1, 1]))
    bad_npz(tmp_path, r"x is empty \(shape \(0, 2\)\)", x=np.zeros((0, 2)), y=np.zeros(0, int))
    bad_npz(tmp_path, r"image must hold uint8 images \(0-255\), got float32; float inputs go in x",
            image=np.zeros((3, 2, 2), np.float32), label=np.zeros(3, int))
    bad_npz(tmp_path, r"image must be images \(N, H, W, C\) or \(N, H, W\), got shape \(3, 4\)",
            image=np.zeros((3, 4), np.uint8), label=np.zeros(3, int))
    bad_npz(tmp_path, r"the labels go up to 2 but class_names names 2 classes", x=np.zeros((3, 2)),
            y=np.array([0, 1, 2]), class_names=np.array(["a", "b"]))
    bad_npz(tmp_path, r"--val-size 3 holds out all the examples in x/y \(3 examples\)", val_size=3,
            x=np.zeros((3, 2)), y=np.zeros(3, int))


class _Touch:
    """Unpickling it would create `path`: proof that nothing is unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_npz_is_read_without_unpickling_anything(tmp_path):
    marker = tmp_path / "unpickled"
    objects = np.empty(2, dtype=object)
    objects[:] = [_Touch(marker), 1]
    bad_npz(tmp_path, r"the array 'x' holds Python objects, which are never unpickled", x=objects,
            y=np.zeros(2, int))
    (tmp_path / "p.npz").write_bytes(pickle.dumps({"x": _Touch(marker)}))
    with pytest.raises(ValueError, match=r"p.npz: not an .npz archive of arrays \(np.savez writes one\)"):
        open_npz(tmp_path / "p.npz", val_size=1)
    np.save(tmp_path / "a.npy", np.zeros(3))
    (tmp_path / "a.npy").rename(tmp_path / "a.npz")
    with pytest.raises(ValueError, match=r"a.npz: holds a single .npy array, not an .npz archive"):
        open_npz(tmp_path / "a.npz", val_size=1)
    assert not marker.exists()


def test_open_data_dispatches_by_layout(tmp_path):
    folder(tmp_path / "imgs", {"a": 2, "b": 2})
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]))
    assert open_data(tmp_path / "imgs", image_shape=SHAPE, val_size=1).kind == "images"
    assert open_data(tmp_path / "d.npz", image_shape=SHAPE, val_size=1).kind == "arrays"


def test_a_folder_that_cannot_be_listed_is_one_line(tmp_path, monkeypatch):
    folder(tmp_path, {"a": 2, "b": 2})
    real_scandir = os.scandir

    def scandir(path="."):  # as running without read permission on b/ would (tests may run as root)
        if os.fspath(path).endswith(f"{os.sep}b"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(OSError, match=rf"^--data {tmp_path}: cannot list b/: Permission denied$"):
        open_folder(tmp_path, image_shape=SHAPE, val_size=1)
