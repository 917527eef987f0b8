"""Tests for train/data.py: vendored-file verification, offline TFDS preparation, array cache, views,
augmentation. The real preparation (mnist + tiny_shakespeare, ~40 s) runs once per module."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import data
from zoo import rnn

REPO = Path(__file__).resolve().parents[1]


class NetworkBlocked(OSError):
    pass


def _block_network(mp: pytest.MonkeyPatch, attempts: list) -> None:
    """Makes every socket connect and DNS lookup fail, recording the attempt."""

    def connect(self, address, *args, **kwargs):
        attempts.append(("connect", address))
        raise NetworkBlocked(f"network disabled in tests (connect to {address})")

    def getaddrinfo(host, *args, **kwargs):
        attempts.append(("getaddrinfo", host))
        raise NetworkBlocked(f"network disabled in tests (lookup of {host})")

    mp.setattr(socket.socket, "connect", connect)
    mp.setattr(socket.socket, "connect_ex", connect)
    mp.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """mnist and tiny_shakespeare prepared from the vendored files into a fresh data dir with the network blocked."""
    pytest.importorskip("tensorflow_datasets")
    data_dir = tmp_path_factory.mktemp("tfds")
    attempts: list = []
    arrays, seconds = {}, {}
    with pytest.MonkeyPatch.context() as mp:
        _block_network(mp, attempts)
        for name in ("mnist", "tiny_shakespeare"):
            for split in data.SPLITS[name]:
                start = time.perf_counter()
                arrays[name, split] = data.load_split(name, split, data_dir=data_dir)
                seconds[name, split] = time.perf_counter() - start
    # Visible with `pytest -s`; the first split of each dataset includes its preparation.
    print("\nload_split seconds (first split includes preparation):", {f"{n}/{s}": round(t, 1) for (n, s), t in seconds.items()})
    return {"data_dir": data_dir, "arrays": arrays, "attempts": attempts}


# --------------------------------------------------------------------------------------------------
# Vendored files


def test_vendored_files_match_sha256sums():
    assert len(data.verify_vendored("mnist")) == 4
    assert len(data.verify_vendored("tiny_shakespeare")) == 1
    assert data.verify_vendored("cifar10") == {}  # not vendored


def test_tampered_vendored_file_is_rejected(tmp_path):
    shutil.copy(data.VENDORED_DIR / "SHA256SUMS", tmp_path / "SHA256SUMS")
    (tmp_path / "tiny_shakespeare").mkdir()
    text = (data.VENDORED_DIR / "tiny_shakespeare" / "input.txt").read_bytes()
    (tmp_path / "tiny_shakespeare" / "input.txt").write_bytes(text.replace(b"First Citizen", b"Second Citizen", 1))
    expected = data.read_sha256sums()["tiny_shakespeare/input.txt"]
    with pytest.raises(data.ChecksumMismatchError) as err:
        data.verify_vendored("tiny_shakespeare", vendored_dir=tmp_path)
    message = str(err.value)
    assert "input.txt" in message and expected in message
    assert data.sha256_file(tmp_path / "tiny_shakespeare" / "input.txt") in message


def test_missing_vendored_file_is_rejected(tmp_path):
    shutil.copy(data.VENDORED_DIR / "SHA256SUMS", tmp_path / "SHA256SUMS")
    with pytest.raises(FileNotFoundError, match=r"mnist/t10k-images-idx3-ubyte.gz is listed in .*SHA256SUMS but missing"):
        data.verify_vendored("mnist", vendored_dir=tmp_path)


# --------------------------------------------------------------------------------------------------
# Offline preparation and the array cache


def test_preparation_made_no_network_attempt(prepared):
    assert prepared["attempts"] == []


def test_mnist_arrays(prepared):
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = data.image_classification(prepared["arrays"]["mnist", split])
        assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int32
        assert set(np.unique(labels)) == set(range(10))
        assert images.max() == 255 and images.min() == 0


def test_tiny_shakespeare_arrays(prepared):
    texts = [prepared["arrays"]["tiny_shakespeare", s]["text"] for s in ("train", "validation", "test")]
    assert all(t.dtype == np.uint8 and t.ndim == 1 for t in texts)
    whole = b"".join(t.tobytes() for t in texts)
    assert whole == (data.VENDORED_DIR / "tiny_shakespeare" / "input.txt").read_bytes()
    assert "".join(sorted(set(whole.decode("ascii")))) == data.CHAR_VOCAB
    assert len(texts[0]) == int(len(whole) * 0.9)  # TFDS's 90/5/5 split


def test_array_cache_written(prepared):
    for name in ("mnist", "tiny_shakespeare"):
        for split in data.SPLITS[name]:
            path = data.cache_path(name, split, data_dir=prepared["data_dir"])
            assert path.exists()
            assert not list(path.parent.glob("*.tmp"))  # atomic write left no temp file
    with np.load(data.cache_path("mnist", "test", data_dir=prepared["data_dir"]), allow_pickle=False) as z:
        assert z["image"].shape == (10000, 28, 28, 1)


def test_load_from_cache_without_tfds(prepared, tmp_path, monkeypatch):
    # A GPU machine: only the zoo_arrays folder was copied, and TFDS cannot be imported.
    shutil.copytree(prepared["data_dir"] / data.CACHE_DIRNAME, tmp_path / data.CACHE_DIRNAME)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    for name, split in (("mnist", "test"), ("tiny_shakespeare", "validation")):
        loaded = data.load_split(name, split)
        expected = prepared["arrays"][name, split]
        assert loaded.keys() == expected.keys()
        for key in loaded:
            assert loaded[key].dtype == expected[key].dtype
            np.testing.assert_array_equal(loaded[key], expected[key])


def test_copied_cache_is_used_instead_of_preparing(prepared, tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    shutil.copytree(prepared["data_dir"] / data.CACHE_DIRNAME, tmp_path / data.CACHE_DIRNAME)
    attempts: list = []
    _block_network(monkeypatch, attempts)
    loaded = data.load_split("mnist", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(loaded["label"], prepared["arrays"]["mnist", "test"]["label"])
    assert not (tmp_path / "mnist").exists() and attempts == []


def test_no_tfds_and_no_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(data.DatasetUnavailableError) as err:
        data.load_split("mnist", "train", data_dir=tmp_path)
    message = str(err.value)
    assert str(data.cache_path("mnist", "train", data_dir=tmp_path)) in message
    assert "python -m train.data" in message and "zoo_arrays" in message


def test_cli_writes_caches(prepared, capsys):
    data.main(["tiny_shakespeare", "--data-dir", str(prepared["data_dir"])])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [f"tiny_shakespeare/{s}" for s in ("train", "validation", "test")]


def test_unknown_dataset_or_split():
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load_split("imagenet", "train")
    with pytest.raises(ValueError, match="unknown split"):
        data.load_split("mnist", "validation")


def test_vendored_files_are_package_data():
    """The vendored files live inside the `train` package and pyproject.toml ships them, so an
    installed copy verifies and uses the same files (no repository-root data/ path)."""
    import tomllib

    import train

    package = Path(train.__file__).resolve().parent
    assert data.VENDORED_DIR == package / "vendored"
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["train"]
    listed = set(data.read_sha256sums()) | {"SHA256SUMS"}
    shipped = {str(p.relative_to(data.VENDORED_DIR)) for g in globs for p in package.glob(g) if p.is_file()
               and data.VENDORED_DIR in p.parents}
    assert listed <= shipped, listed - shipped


def test_offline_error_is_one_line_naming_real_paths_and_commands(tmp_path, monkeypatch, cli):
    """Offline and with no files for it, preparing a dataset fails with one `error:` line naming the
    user's manual dir, `zoo prepare NAME --from DIR` and the array cache, not a repository folder."""
    pytest.importorskip("tensorflow_datasets")
    attempts: list = []
    _block_network(monkeypatch, attempts)
    empty = tmp_path / "no_vendored"
    empty.mkdir()
    with pytest.raises(data.DatasetUnavailableError) as err:
        data.prepare("tiny_shakespeare", data_dir=tmp_path / "tfds", vendored_dir=empty)
    message = str(err.value)
    assert "\n" not in message
    assert f"{data.manual_dir('tiny_shakespeare', data_dir=tmp_path / 'tfds')}/" in message
    assert "`zoo prepare tiny_shakespeare --from DIR`" in message
    assert str(tmp_path / "tfds" / data.CACHE_DIRNAME / "tiny_shakespeare") in message
    assert "input.txt (1115394 bytes, sha256 86c4e6aa" in message
    # the CLI: one error line, exit 2, no traceback
    code, _, err_text = cli("prepare", "cifar10", "--data-dir", tmp_path / "tfds2")
    assert code == 2 and err_text.count("\n") == 1 and err_text.startswith("error: cannot download cifar10"), err_text
    assert "zoo prepare cifar10 --from DIR" in err_text


def test_prepare_from_a_folder_offline(tmp_path, monkeypatch, cli):
    """`zoo prepare NAME --from DIR`: files under TFDS's names in DIR (or DIR/NAME/) prepare the
    dataset with the network blocked and without the vendored copy."""
    pytest.importorskip("tensorflow_datasets")
    attempts: list = []
    _block_network(monkeypatch, attempts)
    src = tmp_path / "downloads" / "tiny_shakespeare"
    src.mkdir(parents=True)
    shutil.copy(data.VENDORED_DIR / "tiny_shakespeare" / "input.txt", src / "input.txt")
    monkeypatch.setattr(data, "VENDORED_DIR", tmp_path / "nothing_vendored")
    code, out, err_text = cli("prepare", "tiny_shakespeare", "--data-dir", tmp_path / "tfds", "--from", tmp_path / "downloads")
    assert code == 0, err_text
    assert "tiny_shakespeare/test:" in out and attempts == []
    code, _, err_text = cli("prepare", "tiny_shakespeare", "--data-dir", tmp_path / "tfds3", "--from", tmp_path / "nope")
    assert code == 2 and "not a directory" in err_text


def test_import_does_not_import_tensorflow():
    code = "import sys, train.data; bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]; assert not bad, bad"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, timeout=120)


def test_mock_data_load_path(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    # Pretend the download hosts are reachable: mock_data stands in for a real download.
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: socket.socket())
    with tfds.testing.mock_data(num_examples=7):
        cifar = data.load_split("cifar10", "train", data_dir=tmp_path)
        fashion = data.load_split("fashion_mnist", "test", data_dir=tmp_path)
    images, labels = data.image_classification(cifar)
    assert images.shape == (7, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (7,) and labels.dtype == np.int32 and ((labels >= 0) & (labels < 10)).all()
    assert fashion["image"].shape == (7, 28, 28, 1)
    assert data.cache_path("cifar10", "train", data_dir=tmp_path).exists()


def test_offline_cifar10_says_where_to_put_files(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    attempts: list = []
    _block_network(monkeypatch, attempts)
    start = time.perf_counter()
    with pytest.raises(data.DatasetUnavailableError) as err:
        data.load_split("cifar10", "train", data_dir=tmp_path)
    assert time.perf_counter() - start < 30  # fails fast instead of waiting out TFDS's retries
    message = str(err.value)
    assert str(data.manual_dir("cifar10", data_dir=tmp_path)) in message
    assert "cifar-10-binary.tar.gz" in message and "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd" in message


# --------------------------------------------------------------------------------------------------
# Views


def test_char_encode_decode_roundtrip():
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    tokens = rnn.encode(text)
    assert tokens.dtype == np.int32 and tokens.shape == (len(text),)
    assert rnn.decode(tokens) == text
    np.testing.assert_array_equal(rnn.encode(np.frombuffer(text.encode(), np.uint8)), tokens)
    np.testing.assert_array_equal(rnn.encode(text.encode()), tokens)
    assert rnn.decode(np.arange(len(data.CHAR_VOCAB))) == data.CHAR_VOCAB


@pytest.mark.parametrize("text, bad", [("hello #world", "'#'"), ("caf\u00e9", "'\u00e9'"), (b"a\tb", "'\\t'")])
def test_unknown_char_is_named(text, bad):
    with pytest.raises(ValueError) as err:
        rnn.encode(text)
    assert bad in str(err.value)


def test_decode_rejects_out_of_range_ids():
    with pytest.raises(ValueError):
        rnn.decode([0, len(data.CHAR_VOCAB)])


def test_char_windows_shapes_and_shift():
    tokens = np.arange(23, dtype=np.int32)
    inputs, targets = data.char_windows(tokens, 5)
    assert inputs.shape == targets.shape == (4, 5) and inputs.dtype == np.int32
    np.testing.assert_array_equal(inputs[1], [5, 6, 7, 8, 9])
    np.testing.assert_array_equal(targets, inputs + 1)
    assert data.char_windows(np.arange(21), 5)[0].shape == (4, 5)  # needs seq_len + 1 tokens per window
    with pytest.raises(ValueError):
        data.char_windows(np.arange(5), 5)


def test_labels_views():
    labels = np.arange(10, dtype=np.int64)
    parity = data.binary_labels(labels)
    assert parity.dtype == np.int32
    np.testing.assert_array_equal(parity, [0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    multi = data.multitask_labels(labels)
    assert set(multi) == {"digit", "parity"} and multi["digit"].dtype == np.int32
    np.testing.assert_array_equal(multi["digit"], labels)
    np.testing.assert_array_equal(multi["parity"], parity)


def test_image_views():
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    seq = data.rows_as_sequence(images)
    assert seq.shape == (3, 28, 28) and seq.dtype == np.uint8
    np.testing.assert_array_equal(seq[1, 4], images[1, 4, :, 0])  # time step 4 = row 4
    with pytest.raises(ValueError):
        data.rows_as_sequence(np.zeros((3, 32, 32, 3), np.uint8))


# --------------------------------------------------------------------------------------------------
# Augmentation


@pytest.fixture(scope="module")
def batch():
    return jax.random.uniform(jax.random.key(0), (6, 12, 10, 3))


def test_augment_shapes_dtype_range(batch):
    out = data.augment(jax.random.key(1), batch, flip=True, rotate_degrees=15.0, shift_pixels=2)
    assert out.shape == batch.shape and out.dtype == jnp.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 + 1e-6
    assert not np.allclose(out, batch)


def test_zero_rotation_is_identity(batch):
    np.testing.assert_array_equal(data.augment(jax.random.key(2), batch, rotate_degrees=1e-30), batch)
    np.testing.assert_array_equal(data.augment(jax.random.key(2), batch), batch)


def test_rotation_by_180_degrees():
    # A half turn about the centre maps pixel centres onto pixel centres: checks the sampling geometry.
    x = jax.random.uniform(jax.random.key(3), (4, 9, 7, 1))
    angles = jnp.full((4,), jnp.pi)
    out = data._affine_sample(x, angles, jnp.zeros((4, 2)))
    np.testing.assert_allclose(out, x[:, ::-1, ::-1, :], atol=1e-5)


def test_shift_moves_pixels_and_zero_fills():
    x = jnp.ones((64, 8, 8, 1))
    out = np.asarray(data.augment(jax.random.key(4), x, shift_pixels=2))
    assert set(np.unique(out)) <= {0.0, 1.0}  # whole-pixel shifts do not blur
    assert (out.sum(axis=(1, 2, 3)) >= 36).all()  # at most 2 rows and 2 columns zeroed
    assert (out == 0).any()


def test_flip_twice_with_same_key_is_identity(batch):
    key = jax.random.key(5)
    once = data.random_flip(key, batch)
    np.testing.assert_array_equal(data.random_flip(key, once), batch)
    flipped = [not np.array_equal(once[i], batch[i]) for i in range(batch.shape[0])]
    for i, f in enumerate(flipped):
        np.testing.assert_array_equal(once[i], batch[i, :, ::-1] if f else batch[i])


def test_augment_jits_and_is_deterministic(batch):
    step = jax.jit(lambda rng, x: data.augment(rng, x, flip=True, rotate_degrees=10.0, shift_pixels=1))
    a = step(jax.random.key(6), batch)
    np.testing.assert_array_equal(a, step(jax.random.key(6), batch))
    np.testing.assert_allclose(a, data.augment(jax.random.key(6), batch, flip=True, rotate_degrees=10.0, shift_pixels=1), atol=1e-6)
    assert not np.array_equal(a, step(jax.random.key(7), batch))
    # Per-example randomness: identical images come out differently.
    same = jnp.broadcast_to(batch[:1], batch.shape)
    out = step(jax.random.key(8), same)
    assert not all(np.allclose(out[0], out[i]) for i in range(1, batch.shape[0]))


def test_epoch_order():
    order = np.asarray(data.epoch_order(seed=3, epoch=1, n=1000))
    assert sorted(order.tolist()) == list(range(1000))
    np.testing.assert_array_equal(order, data.epoch_order(3, 1, 1000))
    assert not np.array_equal(order, data.epoch_order(3, 2, 1000))
    assert not np.array_equal(order, data.epoch_order(4, 1, 1000))
