"""Datasets for the zoo: TFDS preparation, an array cache, host-side views, on-device augmentation.

TensorFlow Datasets (TFDS) is the data layer. `load_split` returns whole splits as numpy arrays:

* image datasets (`mnist`, `fashion_mnist`, `cifar10`): {"image": uint8 (N, H, W, C), "label": int32 (N,)}
* `tiny_shakespeare`: {"text": uint8 (num_bytes,)}, the split's ASCII text as bytes. A byte array
  rather than a `str` so every split is a plain numpy array that the `.npz` cache can hold without
  pickling; `zoo.rnn.encode` accepts it directly, `bytes(arr).decode("ascii")` gives the `str`.

Offline preparation: files vendored in the package under `train/vendored/` (listed in its
`SHA256SUMS`, currently mnist and tiny_shakespeare; package data, so installed copies have them too)
are sha256-verified and handed to TFDS as its manual directory, so TFDS builds the
dataset without touching the network. TFDS looks a URL's file up in the manual directory under the
file name registered with the URL's checksum (`DownloadManager._get_manually_downloaded_path`), then
validates the checksum. Vendored files are matched to the registered URLs by sha256 and symlinked
under those names in a temporary directory, so the vendored layout does not matter to TFDS.
Files of other datasets can come from any folder: `prepare(name, from_dir=DIR)` (`zoo prepare NAME --from DIR`).

Machines without TensorFlow: every split loaded through TFDS is also written to
`<data_dir>/zoo_arrays/<name>/<split>.npz`; without `tensorflow_datasets` (or when TFDS has not
prepared the dataset but the cache exists) `load_split` reads that file instead. Prepare it with
`python -m train.data mnist tiny_shakespeare` on a machine with TFDS and copy the `zoo_arrays` folder.

This module imports TensorFlow/TFDS only inside the functions that need them.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import tempfile
import urllib.parse
from pathlib import Path
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from zoo.files import sha256_file

# The 65 characters of tiny_shakespeare, sorted(set(text)), defined once in zoo.rnn.
from zoo.rnn import TINY_SHAKESPEARE_VOCAB as CHAR_VOCAB  # noqa: F401 - one vocabulary for data and model

IMAGE_DATASETS = ("mnist", "fashion_mnist", "cifar10")
TEXT_DATASETS = ("tiny_shakespeare",)
# Plain split names only: they name cache files. Slice the returned arrays for sub-splits.
SPLITS = {
    "mnist": ("train", "test"),
    "fashion_mnist": ("train", "test"),
    "cifar10": ("train", "test"),
    "tiny_shakespeare": ("train", "validation", "test"),
}

# Package data (pyproject.toml), so a checkout, an editable and a regular install all find it here.
VENDORED_DIR = Path(__file__).resolve().parent / "vendored"
CACHE_DIRNAME = "zoo_arrays"
# A dropped-packet firewall would otherwise leave TFDS waiting on connects it retries 10 times.
_PROBE_TIMEOUT_S = 5.0


class DatasetUnavailableError(OSError):
    """The dataset can be neither loaded nor prepared here; the message says what to provide.

    An OSError (like a failed download), so the `zoo` command prints it as one `error:` line."""


class ChecksumMismatchError(ValueError):
    """A vendored data file does not have the sha256 recorded in its SHA256SUMS."""


# --------------------------------------------------------------------------------------------------
# Locations


def default_data_dir() -> Path:
    """The standard TFDS data directory: $TFDS_DATA_DIR, else ~/tensorflow_datasets.

    Resolved without importing TFDS so machines without it find the same array cache.
    """
    return Path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def _resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


def cache_path(name: str, split: str, *, data_dir: str | os.PathLike | None = None) -> Path:
    """Path of the array cache for one split.

    Args:
      name: TFDS dataset name.
      split: split name, e.g. "train".
      data_dir: TFDS data directory; default `default_data_dir()`.

    Returns:
      `<data_dir>/zoo_arrays/<name>/<split>.npz`.
    """
    return _resolve_data_dir(data_dir) / CACHE_DIRNAME / name / f"{split}.npz"


def manual_dir(name: str, *, data_dir: str | os.PathLike | None = None) -> Path:
    """Where to put manually downloaded files for a dataset that is not vendored (`VENDORED_DIR`).

    One folder per dataset, because mnist and fashion_mnist use identical file names.

    Args:
      name: TFDS dataset name.
      data_dir: TFDS data directory; default `default_data_dir()`.

    Returns:
      `<data_dir>/downloads/manual/<name>`.
    """
    return _resolve_data_dir(data_dir) / "downloads" / "manual" / name


def _check_name_split(name: str, split: str | None = None) -> None:
    if name not in SPLITS:
        raise ValueError(f"unknown dataset {name!r}; supported: {sorted(SPLITS)}")
    if split is not None and split not in SPLITS[name]:
        raise ValueError(f"unknown split {split!r} of {name}; available: {list(SPLITS[name])}")


# --------------------------------------------------------------------------------------------------
# Vendored files


def read_sha256sums(vendored_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Parses `<vendored_dir>/SHA256SUMS` (sha256sum format).

    Args:
      vendored_dir: folder holding SHA256SUMS; default `VENDORED_DIR`.

    Returns:
      {path relative to vendored_dir: lowercase hex sha256}; empty if there is no SHA256SUMS.
    """
    sums_file = Path(vendored_dir or VENDORED_DIR) / "SHA256SUMS"
    if not sums_file.exists():
        return {}
    sums = {}
    for line in sums_file.read_text().splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            sums[rel.lstrip("*")] = digest.lower()  # '*' marks binary mode in sha256sum output
    return sums


def verify_vendored(name: str, *, vendored_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Checks the vendored files of a dataset against SHA256SUMS.

    Args:
      name: dataset name; its files are the SHA256SUMS entries under `<name>/`.
      vendored_dir: folder holding SHA256SUMS and the files; default `VENDORED_DIR`.

    Returns:
      {sha256: path} of the verified files; empty if the dataset has no vendored files.

    Raises:
      FileNotFoundError: a listed file is missing.
      ChecksumMismatchError: a file's sha256 differs, naming the file, expected and found hash.
    """
    root = Path(vendored_dir or VENDORED_DIR)
    verified = {}
    for rel, expected in read_sha256sums(root).items():
        if not rel.startswith(f"{name}/"):
            continue
        path = root / rel
        if not path.exists():
            raise FileNotFoundError(f"vendored file {path} is listed in {root / 'SHA256SUMS'} but missing")
        found = sha256_file(path)
        if found != expected:
            raise ChecksumMismatchError(
                f"vendored file {path} is corrupt or was modified: sha256 expected {expected}, found {found}"
            )
        verified[found] = path
    return verified


# --------------------------------------------------------------------------------------------------
# TFDS preparation


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return None
    return tfds


def _host_reachable(url: str) -> OSError | None:
    """Opens (and closes) a TCP connection to the URL's host; returns the error if that fails."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as e:
        return e
    return None


def _offline_message(name: str, user_dir: Path, data_dir: Path, missing: Mapping[str, object], cause: object) -> str:
    # One line (the CLI prints it as `error: ...`), naming only paths and commands that exist here.
    files = ", ".join(f"{info.filename} ({int(info.size)} bytes, sha256 {info.checksum}, {url})"
                      for url, info in missing.items())
    return (
        f"cannot download {name} ({cause}); to prepare it offline, put {files} into {user_dir}/ "
        f"or into any folder DIR and run `zoo prepare {name} --from DIR`, "
        f"or copy a prepared array cache into {data_dir / CACHE_DIRNAME / name}/<split>.npz"
    )


def prepare(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    vendored_dir: str | os.PathLike | None = None,
    from_dir: str | os.PathLike | None = None,
):
    """Makes TFDS build `name` in `data_dir` unless it already has; offline when files are available.

    Vendored files (`VENDORED_DIR`, sha256-verified), files in `from_dir` and in `manual_dir(name)`
    are given to TFDS as its manual directory, so it downloads only what none holds; then nothing
    is downloaded at all.

    Args:
      name: TFDS dataset name.
      data_dir: TFDS data directory; default `default_data_dir()`.
      vendored_dir: folder with SHA256SUMS and vendored files; default `VENDORED_DIR`.
      from_dir: a folder holding the dataset's files under the names TFDS registers (directly or
        in a `<name>/` subfolder); TFDS checks their sha256.

    Returns:
      The prepared `tfds.core.DatasetBuilder`.

    Raises:
      DatasetUnavailableError: TFDS is missing, or files are missing and cannot be downloaded.
      ChecksumMismatchError, FileNotFoundError: a vendored file is broken (see `verify_vendored`).
    """
    _check_name_split(name)
    check_data_dir(data_dir)
    tfds = _tfds_for_preparing(name, from_dir)
    data_dir = _resolve_data_dir(data_dir)
    builder = tfds.builder(name, data_dir=os.fspath(data_dir))
    if builder.is_prepared():
        return builder

    vendored = verify_vendored(name, vendored_dir=vendored_dir)
    user_dir = manual_dir(name, data_dir=data_dir)
    download_dir = data_dir / "downloads"
    download_dir.mkdir(parents=True, exist_ok=True)
    # TFDS finds a manual file by its registered name; link vendored files (matched by sha256) and
    # user-provided ones under those names. Extraction also goes to a private temporary folder:
    # TFDS names extracted manual files after the file alone, so mnist and fashion_mnist would collide.
    with tempfile.TemporaryDirectory(dir=download_dir, prefix=f"zoo_{name}_") as tmp:
        links, extract_dir = Path(tmp) / "manual", Path(tmp) / "extracted"
        links.mkdir()
        given = [Path(from_dir), Path(from_dir) / name] if from_dir is not None else []
        missing = _link_manual_files(builder, links, vendored, [*given, user_dir])
        for url in missing:
            if (error := _host_reachable(url)) is not None:
                raise DatasetUnavailableError(_offline_message(name, user_dir, data_dir, missing, error))
        config = tfds.download.DownloadConfig(
            manual_dir=os.fspath(links), extract_dir=os.fspath(extract_dir), try_download_gcs=False
        )
        try:
            builder.download_and_prepare(download_dir=os.fspath(download_dir), download_config=config)
        except OSError as e:  # requests' ConnectionError is an OSError
            if not missing:
                raise
            raise DatasetUnavailableError(_offline_message(name, user_dir, data_dir, missing, e)) from e
    return builder


_VERSION = re.compile(r"\d+\.\d+\.\d+")


def _dataset_entry(entry: Path) -> bool:
    """Whether a data dir's entry is TFDS's or zoo's: hidden, downloads/, the array cache, or a
    dataset folder (version folders such as 3.0.1/, directly or under a config folder)."""
    if entry.name.startswith(".") or entry.name in ("downloads", CACHE_DIRNAME):
        return True
    if not entry.is_dir():
        return False
    subs = list(entry.iterdir())
    if not subs:  # nothing of the user's in it
        return True
    for sub in (s for s in subs if s.is_dir()):  # 3.0.1/, incomplete.XYZ_3.0.1/, or config/3.0.1/
        if _VERSION.search(sub.name) or any(_VERSION.search(t.name) for t in sub.iterdir() if t.is_dir()):
            return True
    return False


def check_data_dir(data_dir: str | os.PathLike | None) -> None:
    """Raises ValueError unless `data_dir` is missing, empty, or holds only TFDS datasets and zoo's
    array cache: TFDS data is never prepared among a user's own files (e.g. a folder of images).
    None (the default data dir, TFDS's own) passes."""
    path = Path(data_dir).expanduser() if data_dir is not None else None
    if path is None or not path.is_dir():
        return
    other = next((e for e in sorted(path.iterdir()) if not _dataset_entry(e)), None)
    if other is not None:
        raise ValueError(f"--data-dir {os.fspath(data_dir)}: holds {other.name!r}, which is neither a TFDS dataset "
                         "nor zoo's array cache; TFDS data is prepared only in an empty folder or a TFDS data dir "
                         f"(to train or evaluate on your own files, use --data {os.fspath(data_dir)})")


def _tfds_for_preparing(name: str, from_dir) -> object:
    """tensorflow_datasets, once `from_dir` (if given) is a folder; else the error naming what is missing."""
    if from_dir is not None and not Path(from_dir).is_dir():
        raise NotADirectoryError(f"--from {from_dir}: not a directory (expected a folder holding {name}'s files)")
    tfds = _import_tfds()
    if tfds is None:
        raise DatasetUnavailableError(f"preparing {name} needs tensorflow_datasets, which is not installed")
    return tfds


def _link_manual_files(builder, links: Path, vendored: dict, folders: list[Path]) -> dict:
    """Links each file `builder` downloads into `links` under its TFDS name, from the vendored
    files (by sha256) or the first of `folders` holding it; returns {url: info} of those none has."""
    missing = {}
    for url, info in (builder.url_infos or {}).items():
        candidates = [d / info.filename for d in folders]
        source = vendored.get(info.checksum) or next((c for c in candidates if c.is_file()), candidates[-1])
        if source.exists():
            (links / info.filename).symlink_to(source.resolve())
        else:
            missing[url] = info
    return missing


# --------------------------------------------------------------------------------------------------
# Loading


def _read_tfds_split(builder, name: str, split: str) -> dict[str, np.ndarray]:
    # Batches rather than batch_size=-1: the latter aborts the process under tfds.testing.mock_data.
    ds = builder.as_dataset(split=split, shuffle_files=False).batch(8192)
    batches = list(_import_tfds().as_numpy(ds))
    if name in TEXT_DATASETS:
        text = b"".join(t for batch in batches for t in batch["text"])
        return {"text": np.frombuffer(text, dtype=np.uint8).copy()}
    return {
        "image": np.concatenate([b["image"] for b in batches]).astype(np.uint8, copy=False),
        "label": np.concatenate([b["label"] for b in batches]).astype(np.int32),
    }


def _write_cache(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    # Temp file in the same folder + os.replace: readers never see a partial file.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            # Compressed: mnist shrinks from 55 MB to ~11 MB, which matters for small file copies.
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _read_cache(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {key: z[key] for key in z.files}


def load_split(name: str, split: str, *, data_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Loads one whole split into memory.

    With TFDS: reads the TFDS-prepared dataset (preparing it first, see `prepare`, unless only the
    array cache exists) and writes the array cache if absent. Without TFDS: reads the array cache.

    Args:
      name: one of "mnist", "fashion_mnist", "cifar10", "tiny_shakespeare".
      split: a split of that dataset (see `SPLITS`).
      data_dir: TFDS data directory; default `default_data_dir()` ($TFDS_DATA_DIR or ~/tensorflow_datasets).

    Returns:
      Image datasets: {"image": uint8 (N, H, W, C), "label": int32 (N,)}.
      tiny_shakespeare: {"text": uint8 (num_bytes,)} holding ASCII text.

    Raises:
      DatasetUnavailableError: neither TFDS nor the array cache can provide the split.
    """
    _check_name_split(name, split)
    cache = cache_path(name, split, data_dir=data_dir)
    tfds = _import_tfds()
    if tfds is None:
        if cache.exists():
            return _read_cache(cache)
        raise DatasetUnavailableError(
            f"tensorflow_datasets is not installed and there is no array cache at {cache}. "
            "On a machine with tensorflow-datasets, run `python -m train.data "
            f"{name} --data-dir DIR` once, then copy DIR/{CACHE_DIRNAME}/ into {cache.parents[1]} here "
            "(or point TFDS_DATA_DIR / data_dir at the folder holding it)."
        )
    if cache.exists():  # the arrays TFDS produced before: far faster than decoding the records again
        return _read_cache(cache)
    builder = tfds.builder(name, data_dir=os.fspath(_resolve_data_dir(data_dir)))
    if not builder.is_prepared():
        builder = prepare(name, data_dir=data_dir)
    arrays = _read_tfds_split(builder, name, split)
    if not cache.exists():
        _write_cache(cache, arrays)
    return arrays


# --------------------------------------------------------------------------------------------------
# Host-side views (numpy)


def image_classification(arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of an image dataset split, kept uint8 on the host (4x less memory/transfer).

    Args:
      arrays: output of `load_split` for an image dataset.

    Returns:
      (images uint8 (N, H, W, C), labels int32 (N,)).
    """
    images, labels = np.asarray(arrays["image"]), np.asarray(arrays["label"])
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 NHWC images, got {images.dtype} {images.shape}")
    return images, labels.astype(np.int32, copy=False)


def rows_as_sequence(images: np.ndarray) -> np.ndarray:
    """Single-channel images as sequences: time = rows, features = columns.

    Args:
      images: (N, H, W, 1), e.g. MNIST uint8 (N, 28, 28, 1).

    Returns:
      (N, H, W) view with the same dtype.
    """
    if images.ndim != 4 or images.shape[-1] != 1:
        raise ValueError(f"expected single-channel NHWC images, got shape {images.shape}")
    return images[..., 0]


def binary_labels(labels: np.ndarray) -> np.ndarray:
    """Digit parity as a binary target.

    Args:
      labels: integer digit labels (N,).

    Returns:
      int32 (N,): 1 for odd digits, 0 for even.
    """
    return (np.asarray(labels) % 2).astype(np.int32)


def multitask_labels(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Targets for the multitask model.

    Args:
      labels: integer digit labels (N,).

    Returns:
      {"digit": int32 (N,) the labels, "parity": int32 (N,) 1 = odd}.
    """
    return {"digit": np.asarray(labels).astype(np.int32), "parity": binary_labels(labels)}


def char_windows(tokens: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping next-character training windows.

    Args:
      tokens: int (T,) token ids.
      seq_len: window length.

    Returns:
      (inputs, targets), each int32 (M, seq_len) with M = (T - 1) // seq_len and
      targets[m, t] = inputs[m, t + 1] = tokens[m * seq_len + t + 1]; the tail that fits no window is dropped.
    """
    tokens = np.asarray(tokens, dtype=np.int32).reshape(-1)
    m = (tokens.size - 1) // seq_len
    if seq_len < 1 or m < 1:
        raise ValueError(f"{tokens.size} tokens give no window of seq_len={seq_len} (need seq_len + 1)")
    inputs = tokens[: m * seq_len].reshape(m, seq_len)
    targets = tokens[1 : m * seq_len + 1].reshape(m, seq_len)
    return inputs, targets


# --------------------------------------------------------------------------------------------------
# On-device augmentation (pure JAX; images float32 NHWC in [0, 1])
#
# Configuration arguments (flip, degrees, pixels) are Python values: static under jit.


def epoch_order(seed: int, epoch: int, n: int) -> jax.Array:
    """Example order of one epoch, a pure function of (seed, epoch) so resumed runs replay it.

    Args:
      seed: run seed.
      epoch: epoch number.
      n: number of examples.

    Returns:
      int32 (n,) permutation of range(n).
    """
    return jax.random.permutation(jax.random.fold_in(jax.random.key(seed), epoch), n)


def random_flip(rng: jax.Array, x: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2.

    Args:
      rng: jax random key.
      x: (N, H, W, C) images.

    Returns:
      Same shape and dtype.
    """
    flip = jax.random.bernoulli(rng, 0.5, (x.shape[0],))
    return jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


@jax.jit  # also called eagerly (tests, notebooks): one compiled kernel instead of dozens of op dispatches
def _affine_sample(x: jax.Array, angles: jax.Array, shifts: jax.Array) -> jax.Array:
    """Rotates each image about its centre by `angles` (radians) then shifts by `shifts` (dy, dx) pixels.

    Bilinear sampling, zero outside the image. A zero angle with integer shifts hits pixel centres
    exactly, so it moves pixels without blurring them.
    """
    n, h, w, _ = x.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    ii, jj = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    # Inverse map: for each output pixel, the source position it reads.
    dy = ii[None] - cy - shifts[:, 0, None, None]
    dx = jj[None] - cx - shifts[:, 1, None, None]
    cos, sin = jnp.cos(angles)[:, None, None], jnp.sin(angles)[:, None, None]
    ys = cy + cos * dy - sin * dx
    xs = cx + sin * dy + cos * dx
    y0, x0 = jnp.floor(ys), jnp.floor(xs)
    wy, wx = ys - y0, xs - x0
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
    batch = jnp.arange(n)[:, None, None]
    out = jnp.zeros_like(x)
    for oy, wy_k in ((0, 1.0 - wy), (1, wy)):
        for ox, wx_k in ((0, 1.0 - wx), (1, wx)):
            yi, xi = y0 + oy, x0 + ox
            inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
            corner = x[batch, jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)]
            out = out + corner * (wy_k * wx_k * inside).astype(x.dtype)[..., None]
    return out


def augment(
    rng: jax.Array,
    x: jax.Array,
    *,
    flip: bool = False,
    rotate_degrees: float = 0.0,
    shift_pixels: int = 0,
) -> jax.Array:
    """Training-time augmentation with per-example randomness drawn from one key.

    Rotation and shift are resampled once, together, so the image is interpolated a single time.

    Args:
      rng: jax random key (e.g. fold_in of the step's key).
      x: float32 (N, H, W, C) images in [0, 1].
      flip: random horizontal flips (not for digits: a mirrored 2 is not a 2).
      rotate_degrees: largest random rotation; 0 disables.
      shift_pixels: largest random translation per axis; 0 disables.

    Returns:
      Augmented images, same shape and dtype, still in [0, 1] up to float rounding.
    """
    flip_key, rotate_key, shift_key = jax.random.split(rng, 3)
    if flip:
        x = random_flip(flip_key, x)
    if rotate_degrees or shift_pixels:
        n = x.shape[0]
        angles = jnp.deg2rad(jax.random.uniform(rotate_key, (n,), minval=-rotate_degrees, maxval=rotate_degrees))
        shifts = jax.random.randint(shift_key, (n, 2), -shift_pixels, shift_pixels + 1).astype(jnp.float32)
        x = _affine_sample(x, angles, shifts)
    return x


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """CLI: prepare datasets with TFDS and write their array caches for machines without TFDS."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("names", nargs="+", choices=sorted(SPLITS))
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    parser.add_argument("--from", dest="from_dir", default=None, metavar="DIR",
                        help="a folder holding the datasets' files under TFDS's names (offline preparation)")
    args = parser.parse_args(argv)
    for name in args.names:
        if args.from_dir is not None:
            prepare(name, data_dir=args.data_dir, from_dir=args.from_dir)
        for split in SPLITS[name]:
            arrays = load_split(name, split, data_dir=args.data_dir)
            path = cache_path(name, split, data_dir=args.data_dir)
            shapes = {k: (v.shape, str(v.dtype)) for k, v in arrays.items()}
            print(f"{name}/{split}: {shapes} -> {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
