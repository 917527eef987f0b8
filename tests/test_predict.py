"""zoo.preprocess (pictures -> model-ready batches), `zoo predict` and `zoo sample --n`."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

import zoo

Image = pytest.importorskip("PIL.Image")
ImageDraw = pytest.importorskip("PIL.ImageDraw")


def drawn_zero(size: int = 200) -> "Image.Image":
    """A thick black ring on white paper, as a person would draw a 0 (cnn.mnist: p(0) > 0.99)."""
    image = Image.new("L", (size, size), 255)
    ImageDraw.Draw(image).ellipse([(0.3 * size, 0.175 * size), (0.7 * size, 0.825 * size)], outline=0,
                                  width=int(0.09 * size))
    return image


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    zero = drawn_zero()
    paths = {"png": tmp_path / "zero.png", "jpg": tmp_path / "zero.jpg", "bmp": tmp_path / "zero.bmp",
             "text": tmp_path / "notes.png", "missing": tmp_path / "missing.png", "dir": tmp_path / "a_dir"}
    zero.save(paths["png"])
    zero.convert("RGB").save(paths["jpg"], quality=95)
    zero.save(paths["bmp"])
    paths["text"].write_text("this is not an image")
    paths["dir"].mkdir()
    return paths


# ---------------------------------------------------------------- zoo.preprocess


def test_preprocess_gives_the_models_input():
    batch = zoo.preprocess("cnn", drawn_zero())
    assert batch.shape == (1, 28, 28, 1) and batch.dtype == np.float32
    assert 0.0 <= batch.min() and batch.max() <= 1.0
    # inverted to MNIST's polarity: a dark background, a light ring
    assert batch[0, 0, 0, 0] == 0.0 and batch.max() > 0.9
    rgb = zoo.preprocess("cnn_cifar", Image.new("RGB", (50, 40), (255, 0, 0)))
    assert rgb.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(rgb[0, 5, 5], [1.0, 0.0, 0.0])  # RGB models are not auto-inverted


def test_preprocess_invert_rule():
    dark_on_light = drawn_zero()
    light_on_dark = Image.eval(dark_on_light, lambda v: 255 - v)
    pre = lambda image, **kw: zoo.preprocess("cnn", image, center=False, **kw)  # noqa: E731  (inversion alone)
    raw = pre(dark_on_light, invert=False)
    np.testing.assert_allclose(pre(dark_on_light), 1.0 - raw, atol=1e-6)
    np.testing.assert_allclose(pre(dark_on_light, invert=True), 1.0 - raw, atol=1e-6)
    np.testing.assert_allclose(pre(light_on_dark), pre(light_on_dark, invert=False))
    # the rule looks at the border's mean: a mid-grey just above/below 0.5 decides
    grey = lambda v: Image.new("L", (28, 28), v)  # noqa: E731
    assert pre(grey(130))[0, 0, 0, 0] == pytest.approx(1 - 130 / 255)
    assert pre(grey(125))[0, 0, 0, 0] == pytest.approx(125 / 255)


def test_preprocess_accepts_arrays_and_transparency():
    zero = drawn_zero(28)
    from_pil = zoo.preprocess("cnn", zero)
    np.testing.assert_allclose(zoo.preprocess("cnn", np.asarray(zero)), from_pil)
    np.testing.assert_allclose(zoo.preprocess("cnn", np.asarray(zero, np.float32) / 255), from_pil, atol=1e-6)
    np.testing.assert_allclose(zoo.preprocess("cnn", np.asarray(zero)[..., None]), from_pil)
    # a black ring on a transparent background looks like black on white
    rgba = Image.new("RGBA", (28, 28), (0, 0, 0, 0))
    rgba.putalpha(Image.eval(zero, lambda v: 255 - v))
    np.testing.assert_allclose(zoo.preprocess("cnn", rgba), from_pil, atol=1 / 255)


def test_preprocess_uses_a_loaded_models_input_shape():
    model = zoo.create("mlp_binary", in_shape=(28, 28, 1))
    assert zoo.preprocess(model, drawn_zero()).shape == (1, 28, 28, 1)


def test_preprocess_errors():
    with pytest.raises(ValueError, match=r"MLP does not take images: its input is shape \(batch, 10\)"):
        zoo.preprocess("mlp_binary", drawn_zero())
    with pytest.raises(ValueError, match="does not take images"):
        zoo.preprocess("lstm", drawn_zero())
    with pytest.raises(ValueError, match=r"invert must be 'auto', True or False, got 'yes'"):
        zoo.preprocess("cnn", drawn_zero(), invert="yes")
    with pytest.raises(ValueError, match=r"must be \(H, W\) or \(H, W, 1\|3\|4\), got shape \(2, 3, 5\)"):
        zoo.preprocess("cnn", np.zeros((2, 3, 5), np.uint8))
    with pytest.raises(ValueError, match=r"values in \[0, 1\], got \[0.0, 2.0\]"):
        zoo.preprocess("cnn", np.array([[0.0, 2.0]], np.float32))
    with pytest.raises(ValueError, match="uint8 .* or float .*, got dtype int64"):
        zoo.preprocess("cnn", np.zeros((4, 4), np.int64))
    with pytest.raises(zoo.UnknownModelError):
        zoo.preprocess("cnnn", drawn_zero())


def pattern() -> np.ndarray:
    """A 28x28 uint8 picture no flip or rotation maps onto itself: a light L with grey levels and
    a dot, on black (MNIST polarity, so "auto" never inverts it)."""
    x = np.zeros((28, 28), np.uint8)
    x[4:24, 5:9] = np.linspace(60, 255, 20, dtype=np.uint8)[:, None]
    x[20:24, 9:21] = 200
    x[4, 20] = 130
    return x


def exif_oriented(upright: np.ndarray, orientation: int) -> "Image.Image":
    """The stored picture whose EXIF orientation tag shows `upright` in a viewer (6: the viewer
    turns it 90 degrees clockwise, 8: counter-clockwise, 3: half a turn)."""
    turns = {3: 2, 6: 1, 8: -1}[orientation]  # np.rot90 turns counter-clockwise
    image = Image.fromarray(np.ascontiguousarray(np.rot90(upright, turns)))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.info["exif"] = exif.tobytes()
    return image


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_preprocess_applies_the_exif_orientation(tmp_path, orientation):
    upright = pattern()
    expected = upright[None, :, :, None] / np.float32(255)
    stored = exif_oriented(upright, orientation)
    png = tmp_path / "photo.png"
    stored.save(png, exif=stored.info["exif"])
    with Image.open(png) as image:
        np.testing.assert_array_equal(zoo.preprocess("cnn", image, invert=False, center=False), expected)
    jpg = tmp_path / "photo.jpg"
    stored.save(jpg, exif=stored.info["exif"], quality=100)
    with Image.open(jpg) as image:
        got = zoo.preprocess("cnn", image, invert=False, center=False)
    assert np.abs(got - expected).mean() < 0.01  # JPEG is lossy; unrotated it would be far off
    assert np.abs(np.asarray(stored, np.float32)[None, :, :, None] / 255 - expected).mean() > 0.1


def deep_pictures(tmp_path) -> dict[str, Path]:
    """pattern() saved in modes deeper than 8 bits, each with the 8-bit picture's values."""
    v = pattern().astype(np.float64)
    arrays = {"F01.tiff": (v / 255).astype(np.float32), "F1000.tiff": (v * 1000 / 255).astype(np.float32),
              "I8.tiff": v.astype(np.int32), "I16.tiff": (v * 257).astype(np.int32),
              "Ineg.tiff": (v * 4 - 1000).astype(np.int32), "sixteen.png": (v * 257).astype(np.uint16)}
    paths = {}
    for name, array in arrays.items():
        paths[name] = tmp_path / name
        Image.fromarray(array).save(paths[name])
    return paths


def test_preprocess_scales_deep_pictures_by_their_range(tmp_path):
    expected = pattern()[None, :, :, None] / np.float32(255)
    modes = {}
    for name, path in deep_pictures(tmp_path).items():
        with Image.open(path) as image:
            modes[name] = image.mode
            np.testing.assert_allclose(zoo.preprocess("cnn", image, invert=False, center=False), expected, atol=0.5 / 255,
                                       err_msg=f"{name} ({image.mode})")
    assert set(modes.values()) == {"F", "I", "I;16"}  # what the test means to cover
    with pytest.raises(ValueError, match="'F' image must hold finite values"):
        zoo.preprocess("cnn", Image.fromarray(np.array([[0.0, np.nan]], np.float32)))
    flat = zoo.preprocess("cnn", Image.fromarray(np.full((28, 28), 7.5, np.float32)), invert=False, center=False)
    assert (flat == 0).all()  # no range to stretch: black, not a division by zero


def test_predict_feeds_the_oriented_and_scaled_picture(cli, tmp_path, monkeypatch):
    import sys

    module = sys.modules["zoo.preprocess"]  # the module; zoo.preprocess is the function
    fed = []
    real = module.preprocess
    monkeypatch.setattr(module, "preprocess", lambda *a, **k: fed.append(real(*a, **k)) or fed[-1])
    stored = exif_oriented(pattern(), 6)
    stored.save(tmp_path / "photo.png", exif=stored.info["exif"])
    paths = [tmp_path / "photo.png", *deep_pictures(tmp_path).values()]
    code, out, err = cli("predict", "cnn", *paths, "--pretrained", "mnist", "--no-invert", "--no-center")
    assert code == 0 and err == "" and len(fed) == len(paths)
    for path, batch in zip(paths, fed):
        np.testing.assert_allclose(batch, pattern()[None, :, :, None] / 255, atol=0.5 / 255, err_msg=path.name)


# ---------------------------------------------------------------- MNIST-style digits: crop, scale, centre

HAND_DIGITS = Path(__file__).parent / "data" / "hand_digits"  # bench/hand_digits.py --write, seed 0


def ink_box(batch: np.ndarray, level: float = 0.5) -> tuple[int, int]:
    """(height, width) of the pixels brighter than `level` in a (1, H, W, 1) batch."""
    rows, cols = np.flatnonzero((batch[0, ..., 0] > level).any(1)), np.flatnonzero((batch[0, ..., 0] > level).any(0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def centre_of_mass(batch: np.ndarray) -> tuple[float, float]:
    x = batch[0, ..., 0].astype(np.float64)
    return float(x.sum(1) @ np.arange(28)) / x.sum(), float(x.sum(0) @ np.arange(28)) / x.sum()


def test_preprocess_centres_an_off_centre_digit_as_mnist():
    # a lopsided light blob (a 30x12 bar with a dot beside it) in a corner of a 120x100 dark picture
    picture = np.zeros((100, 120), np.uint8)
    picture[8:38, 80:92] = 255
    picture[8:12, 95:99] = 255
    batch = zoo.preprocess("cnn", picture)
    assert batch.shape == (1, 28, 28, 1) and batch.dtype == np.float32 and 0 <= batch.min() and batch.max() <= 1
    row, col = centre_of_mass(batch)
    assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5, (row, col)
    assert ink_box(batch) == (20, 13)  # the ink box 30x19 -> longer side 20, aspect kept
    np.testing.assert_allclose(batch, zoo.preprocess("cnn", picture, center=True))
    # where the digit sits and how large it is drawn no longer matter
    moved = np.zeros((300, 200), np.uint8)
    moved[200:290, 20:56] = 255
    moved[200:212, 65:77] = 255
    assert np.abs(zoo.preprocess("cnn", moved) - batch).mean() < 0.01
    # dark ink on light paper: inverted first, then centred the same way
    np.testing.assert_allclose(zoo.preprocess("cnn", 255 - picture), batch, atol=1e-6)
    # center=False is the plain resize, where the blob stays in its corner
    plain = zoo.preprocess("cnn", picture, center=False)
    assert centre_of_mass(plain)[0] < 7 and centre_of_mass(plain)[1] > 18


def test_preprocess_centring_edge_cases():
    blank = np.full((50, 40), 9, np.uint8)  # no ink: left as plain resizing gives it
    np.testing.assert_array_equal(zoo.preprocess("cnn", blank), zoo.preprocess("cnn", blank, center=False))
    with pytest.raises(ValueError, match=r"center must be 'auto', True or False, got 'yes'"):
        zoo.preprocess("cnn", blank, center="yes")
    with pytest.raises(ValueError, match=r"center=True prepares MNIST-style 28x28 grayscale digits; CNN here takes"):
        zoo.preprocess("cnn_cifar", blank, center=True)


def test_only_mnist_digit_models_are_centred():
    from zoo.preprocess import mnist_style

    assert [n for n in zoo.list_models() if mnist_style(n)] == [
        "autoencoder", "cnn", "dcgan", "mlp", "mlp_small", "multitask"]
    assert "centering as MNIST: ink cropped, longer side scaled to 20 px" in zoo.model_card("cnn")
    assert "centering" not in zoo.model_card("cnn_cifar")
    picture = np.zeros((60, 60, 3), np.uint8)
    picture[5:15, 40:50] = 255
    np.testing.assert_array_equal(zoo.preprocess("cnn_cifar", picture), zoo.preprocess("cnn_cifar", picture, center=False))
    # an instance counts when it is configured as the registered MNIST model, not with another head
    assert mnist_style(zoo.load("cnn", pretrained="mnist")[0])
    three = zoo.create("cnn", num_classes=3)
    assert not mnist_style(three)
    gray = picture[..., 0]
    np.testing.assert_array_equal(zoo.preprocess(three, gray), zoo.preprocess(three, gray, center=False))


def hand_digit_accuracy(model, variables, *, center: bool) -> tuple[float, list[str]]:
    from train.predict import read_image

    apply = jax.jit(lambda x: model.apply(variables, x))
    files = sorted(HAND_DIGITS.glob("*.png"))
    wrong = [f.name for f in files if int(np.argmax(apply(read_image(model, f, center=center))[0])) != int(f.name[0])]
    return 1 - len(wrong) / len(files), wrong


def test_centring_reads_hand_drawn_digits():
    """The 50 drawings of tests/data/hand_digits (small, off-centre, thin and thick, both polarities):
    cnn.mnist reads 48 of them centred (bench/results/hand_digits.json) and 10 only resized."""
    assert len(list(HAND_DIGITS.glob("*.png"))) == 50
    model, variables = zoo.load("cnn", pretrained="mnist")
    centred, wrong = hand_digit_accuracy(model, variables, center=True)
    resized, _ = hand_digit_accuracy(model, variables, center=False)
    assert centred >= 0.9, wrong
    assert resized <= 0.5 and centred - resized >= 0.5
    bench = json.loads((Path(__file__).parents[1] / "bench" / "results" / "hand_digits.json").read_text())
    assert bench["models"]["cnn.mnist"]["centred"]["accuracy"] == pytest.approx(centred)  # the committed table
    assert bench["models"]["cnn.mnist"]["resized"]["accuracy"] == pytest.approx(resized)


def test_hand_digits_fixture_is_reproducible(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("hand_digits", Path(__file__).parents[1] / "bench" / "hand_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.write_fixture(tmp_path, seed=0)
    assert sorted(p.name for p in written) == sorted(p.name for p in HAND_DIGITS.glob("*.png"))
    for path in written:
        with Image.open(path) as new, Image.open(HAND_DIGITS / path.name) as committed:
            np.testing.assert_array_equal(np.asarray(new), np.asarray(committed), err_msg=path.name)


# ---------------------------------------------------------------- zoo predict


def test_predict_classifies_a_drawn_digit(cli, files):
    code, out, err = cli("predict", "cnn", files["png"], files["jpg"], files["bmp"], "--pretrained", "mnist")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 3
    for path, line in zip((files["png"], files["jpg"], files["bmp"]), lines):
        assert line.startswith(f"{path}: 0 (")
        assert float(line.split("(")[1].split(")")[0]) > 0.99
        assert line.count("(") == 3  # --top-k defaults to 3


def test_predict_json_and_top_k(cli, files):
    code, out, _ = cli("predict", "cnn", files["png"], "--pretrained", "mnist", "--json", "--top-k", "10")
    assert code == 0
    (result,) = json.loads(out)
    assert result["file"] == str(files["png"])
    predictions = result["predictions"]
    assert [p["class"] for p in predictions][0] == "0"
    assert sorted(p["class"] for p in predictions) == list("0123456789")
    probs = [p["probability"] for p in predictions]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)
    code, out, _ = cli("predict", "cnn", files["png"], "--pretrained", "mnist", "--json", "--top-k", "2")
    assert len(json.loads(out)[0]["predictions"]) == 2


def test_predict_no_invert_feeds_the_picture_as_is(cli, files):
    _, out, _ = cli("predict", "cnn", files["png"], "--pretrained", "mnist", "--json", "--top-k", "10")
    _, raw, _ = cli("predict", "cnn", files["png"], "--pretrained", "mnist", "--json", "--top-k", "10", "--no-invert",
                    "--no-center")
    by_class = lambda text: {p["class"]: p["probability"] for p in json.loads(text)[0]["predictions"]}  # noqa: E731
    assert by_class(out)["0"] > 0.99 and by_class(raw)["0"] < 0.5


def test_predict_bad_files_are_named_and_skipped(cli, files):
    args = [files["text"], files["png"], files["missing"], files["dir"]]
    code, out, err = cli("predict", "cnn", *args, "--pretrained", "mnist")
    assert code == 2
    assert out.splitlines() == [line for line in out.splitlines() if line.startswith(f"{files['png']}: 0 (")]
    assert len(out.splitlines()) == 1
    assert err.splitlines() == [
        f"error: {files['text']}: not an image Pillow can read (PNG, JPEG, BMP, ...)",
        f"error: {files['missing']}: no such file",
        f"error: {files['dir']}: is a directory, not an image file",
    ]
    code, out, _ = cli("predict", "cnn", *args, "--pretrained", "mnist", "--json")
    assert code == 2
    results = json.loads(out)
    assert [r["file"] for r in results] == [str(a) for a in args]
    assert [("error" in r) for r in results] == [True, False, True, True]


def test_predict_fifo_is_named_and_skipped_promptly(cli, files, tmp_path):
    """A FIFO blocks its reader until a writer comes: it is refused from its kind, unopened."""
    import os

    from tests.fixtures import returns_promptly

    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    code, out, err = returns_promptly(cli, "predict", "cnn", fifo, files["png"], "--pretrained", "mnist", fifos=[fifo])
    assert code == 2 and err == f"error: {fifo}: is a FIFO, not an image file\n", err
    assert out.startswith(f"{files['png']}: 0 (")  # the other file still gets its answer


def test_predict_truncated_image_is_named(cli, files, tmp_path):
    cut = tmp_path / "cut.png"
    cut.write_bytes(files["png"].read_bytes()[:200])
    code, _, err = cli("predict", "cnn", cut, "--pretrained", "mnist")
    assert code == 2 and err.startswith(f"error: {cut}: cannot read the image")


def test_predict_refuses_models_that_do_not_take_images(cli, files):
    code, out, err = cli("predict", "lstm", files["png"], "--pretrained", "mnist")
    assert code == 2 and out == ""
    assert err.strip() == ("error: zoo predict works for image classifiers and the autoencoder; 'lstm' is a "
                           "sequence_classification model (its input: shape (batch, 28, 28) float32 "
                           "(sequences (batch, time, features) in [0, 1]))")
    code, _, err = cli("predict", "dcgan", files["png"], "--pretrained", "mnist")
    assert code == 2 and "'dcgan' is a gan model" in err
    code, _, err = cli("predict", "cnn", files["png"], "--pretrained", "mnist", "--top-k", "0")
    assert code == 2 and "--top-k must be a positive integer, got 0" in err


def test_predict_multitask_and_binary(cli, files):
    code, out, _ = cli("predict", "multitask", files["png"], "--pretrained", "mnist", "--json", "--top-k", "1")
    assert code == 0
    heads = json.loads(out)[0]["predictions"]
    assert [p["class"] for p in heads["digit"]] == ["0"] and [p["class"] for p in heads["parity"]] == ["even"]
    code, out, _ = cli("predict", "mlp_binary", files["png"], "--pretrained", "mnist_parity", "--json")
    assert code == 0
    predictions = json.loads(out)[0]["predictions"]
    assert sorted(p["class"] for p in predictions) == ["even", "odd"]
    assert sum(p["probability"] for p in predictions) == pytest.approx(1.0, abs=1e-6)


def test_predict_autoencoder_writes_input_and_reconstruction(cli, files, tmp_path):
    code, _, err = cli("predict", "autoencoder", files["png"], "--pretrained", "mnist")
    assert code == 2 and "give --out DIR" in err
    out_dir = tmp_path / "recon"
    code, out, _ = cli("predict", "autoencoder", files["png"], "--pretrained", "mnist", "--out", out_dir)
    assert code == 0 and out.startswith(f"{files['png']}: wrote {out_dir / 'zero.png'}")
    grid = np.asarray(Image.open(out_dir / "zero.png"))
    assert grid.shape == (32, 62)  # two 28x28 tiles with 2-pixel borders
    expected_input = np.round(zoo.preprocess("cnn", drawn_zero())[0, :, :, 0] * 255)
    np.testing.assert_array_equal(grid[2:30, 2:30], expected_input)  # the copy of the input, preprocessed


def test_reconstruction_names_never_collide():
    from train.predict import reconstruction_names

    names = reconstruction_names(["a/7.png", "b/7.png", "7.jpg", "7-2.png", "c/8.bmp", "a/7.png"])
    assert names == {"a/7.png": "7.png", "b/7.png": "7-2.png", "7.jpg": "7-3.png", "7-2.png": "7-2-2.png",
                     "c/8.bmp": "8.png"}
    assert len(set(names.values())) == len(names)


def test_predict_autoencoder_keeps_every_reconstruction_of_same_named_files(cli, files, tmp_path):
    """Two inputs named zero.png in different folders: two PNGs, each of its own input."""
    other = tmp_path / "other" / "zero.png"
    other.parent.mkdir()
    Image.new("L", (200, 200), 255).save(other)  # a blank page: a different input
    out_dir = tmp_path / "recon"
    code, out, _ = cli("predict", "autoencoder", files["png"], other, "--pretrained", "mnist", "--out", out_dir)
    assert code == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["zero-2.png", "zero.png"]
    assert f"wrote {out_dir / 'zero-2.png'}" in out
    first, second = (np.asarray(Image.open(out_dir / n))[2:30, 2:30] for n in ("zero.png", "zero-2.png"))
    np.testing.assert_array_equal(first, np.round(zoo.preprocess("cnn", drawn_zero())[0, :, :, 0] * 255))
    assert not np.array_equal(first, second)


# ---------------------------------------------------------------- zoo sample --n


def test_sample_n_is_seeded(cli, tmp_path):
    paths = [tmp_path / f"{name}.png" for name in ("a", "b", "c")]
    assert cli("sample", "dcgan", "--pretrained", "mnist", "--n", 4, "--out", paths[0])[0] == 0
    assert cli("sample", "dcgan", "--pretrained", "mnist", "--num", 4, "--out", paths[1])[0] == 0
    assert cli("sample", "dcgan", "--pretrained", "mnist", "--n", 4, "--seed", 1, "--out", paths[2])[0] == 0
    a, b, c = (np.asarray(Image.open(p)) for p in paths)
    assert a.shape == (32, 8 * 30 + 2)  # one row of the 8-column grid
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # 4 samples: the last four tiles of the row stay blank
    assert (a[2:30, 2 + 4 * 30:] == 255).all() and not (a[2:30, 2:30] == 255).all()


def _png_with_broken_chunk(path: Path) -> None:
    """A PNG whose image data continues in a chunk with an invalid type: Pillow opens it, then
    raises SyntaxError("broken PNG file ...") while decoding."""
    import io
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    noise = np.random.default_rng(0).integers(0, 255, (50, 50), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")
    png = buffer.getvalue()
    at = png.index(b"IDAT")
    data = png[at + 4 : at + 4 + int.from_bytes(png[at - 4 : at], "big")]
    half = len(data) // 2
    path.write_bytes(png[: at - 4] + chunk(b"IDAT", data[:half]) + chunk(b"!!!!", data[half:]) + chunk(b"IEND", b""))


def test_predict_damaged_or_oversized_png_is_named(cli, files, tmp_path, monkeypatch):
    broken = tmp_path / "broken.png"
    _png_with_broken_chunk(broken)
    code, out, err = cli("predict", "cnn", broken, files["png"], "--pretrained", "mnist")
    assert code == 2 and out.startswith(f"{files['png']}: 0 (")
    assert err == f"error: {broken}: cannot read the image (broken PNG file (chunk b'!!!!'))\n"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # zero.png's 200x200 is a "decompression bomb" now
    code, _, err = cli("predict", "cnn", files["png"], "--pretrained", "mnist")
    assert code == 2 and err.startswith(f"error: {files['png']}: cannot read the image (Image size (40000 pixels) exceeds")
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("name", ["two\nlines.png", "\x1b[31mred\x1b[0m.png", "bell\a.png"])
def test_predict_escapes_control_characters_in_file_names(cli, files, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(files["png"].read_bytes())
    missing = tmp_path / f"missing-{name}"
    code, out, err = cli("predict", "cnn", path, missing, "--pretrained", "mnist")
    assert code == 2
    shown = repr(str(path))[1:-1]
    assert out.startswith(f"{shown}: 0 (") and len(out.splitlines()) == 1
    assert err == f"error: {repr(str(missing))[1:-1]}: no such file\n"
    assert "\x1b" not in out + err and "\a" not in out + err


def predictions(cli, *args) -> dict[str, float]:
    code, out, err = cli("predict", *map(str, args), "--json", "--top-k", "10")
    assert code == 0 and err == "", err
    return {p["class"]: p["probability"] for p in json.loads(out)[0]["predictions"]}


def test_predict_centres_a_small_off_centre_digit(cli):
    # a thin dark "7" in the lower left of a 116 px picture: read as 3 when only resized (issue #25)
    seven = HAND_DIGITS / "7_4_thin_dark.png"
    centred = predictions(cli, "cnn", seven, "--pretrained", "mnist")
    assert max(centred, key=centred.get) == "7" and centred["7"] > 0.8
    resized = predictions(cli, "cnn", seven, "--pretrained", "mnist", "--no-center")
    assert max(resized, key=resized.get) == "3"


def test_predict_no_center_gives_the_plain_resize(cli):
    """--no-center feeds what zoo predict fed before centring: grayscale, bilinear resize, inverted."""
    model, variables = zoo.load("cnn", pretrained="mnist")
    for name, dark_on_light in (("7_4_thin_dark.png", True), ("4_2_thin_light.png", False)):
        with Image.open(HAND_DIGITS / name) as image:
            x = np.asarray(image.convert("L").resize((28, 28), Image.Resampling.BILINEAR), np.float32) / 255
        x = 1 - x if dark_on_light else x
        probs = np.asarray(jax.nn.softmax(model.apply(variables, x[None, :, :, None])[0]))
        got = predictions(cli, "cnn", HAND_DIGITS / name, "--pretrained", "mnist", "--no-center")
        np.testing.assert_allclose([got[str(c)] for c in range(10)], probs, atol=1e-5, err_msg=name)


def test_predict_centres_only_weights_trained_on_mnist_digits(tmp_path):
    """The manifest or the run decides: other data, other class names, another dataset -> resized only."""
    from train.config import Config
    from train.predict import centers_digits, provenance
    from zoo import formats

    model, variables = zoo.load("cnn", pretrained="mnist")
    assert centers_digits("cnn", model, provenance("cnn", pretrained="mnist"))
    # never asked for: RGB
    assert not centers_digits("cnn_cifar", zoo.create("cnn_cifar"), provenance("cnn", pretrained="mnist"))
    digits = {"dataset": "mnist", "train_config": {"dataset": "mnist", "class_names": list("0123456789")}}
    subset = {"dataset": "mnist", "train_config": {"dataset": "mnist", "class_names": ["0", "2", "5"]}}  # --classes
    other = {"own data": {"dataset": "mnist", "train_config": {"dataset": "mnist", "data": "/photos"}},
             "other class names": {"dataset": "mnist", "train_config": {"dataset": "mnist", "class_names": ["a", "b"]}},
             "other dataset": {"dataset": "fashion_mnist"}, "not recorded": {}}
    for what, fields in {"digits": digits, "subset": subset, **other}.items():
        out = formats.write(formats.DIRECTORY, tmp_path / what.replace(" ", "_"), "cnn", variables, **fields)
        assert centers_digits("cnn", model, provenance("cnn", path=out)) == (what in ("digits", "subset")), what
    for what, kw in {"digits": {}, "own data": {"data": "/photos"}, "other class names": {"class_names": ["a", "b"]}}.items():
        run = tmp_path / "run" / what.replace(" ", "_")
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps(Config(model="cnn", **kw).to_json()))
        assert centers_digits("cnn", model, provenance("cnn", workdir=run)) == (what == "digits"), what
