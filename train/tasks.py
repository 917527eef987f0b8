"""Per-task glue: which data view, which loss, which eval metric, for each registry task.

Everything here maps a (ModelSpec, Config) to plain data and bound step functions; the
steps themselves (train/steps.py) stay config-free.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import numpy as np

from train import data, steps
from train.config import Config

# (validation metric, mode) used for early stopping and the "best" checkpoint.
VAL_METRIC = {
    "classification": ("accuracy", "max"),
    "sequence_classification": ("accuracy", "max"),
    "binary": ("accuracy", "max"),
    "multitask": ("digit_accuracy", "max"),
    "reconstruction": ("mse", "min"),
    "language_model": ("loss", "min"),
    "gan": ("g_loss", "min"),
}

IMAGE_TASKS = ("classification", "binary", "reconstruction", "gan", "multitask")


@dataclasses.dataclass
class Splits:
    """Host arrays, each a dict {"x": ..., "y": ...}; y may be absent or a dict."""

    train: dict
    val: dict
    test: dict


def image_task_view(arrays: dict, task: str) -> dict:
    """{"image", "label"} arrays of an image dataset -> {"x", "y"} as `task` trains on them."""
    x, y = data.image_classification(arrays)
    if task == "sequence_classification":
        return {"x": data.rows_as_sequence(x), "y": y}
    if task == "binary":
        return {"x": x, "y": data.binary_labels(y)}
    if task == "multitask":
        return {"x": x, "y": data.multitask_labels(y)}
    if task in ("reconstruction", "gan"):
        return {"x": x}
    return {"x": x, "y": y}


def _take(arrays: dict, sl: slice) -> dict:
    import jax

    return jax.tree.map(lambda a: a[sl], arrays)


def load_splits(task: str, cfg: Config) -> Splits:
    """Loads train/validation/test for `task` from TFDS (or the array cache)."""
    if task == "language_model":
        if cfg.dataset not in data.TEXT_DATASETS:
            raise ValueError(f"task {task!r} trains on a text dataset {data.TEXT_DATASETS}, not {cfg.dataset!r}")
        out = {}
        for split in ("train", "validation", "test"):
            tokens = data.encode_chars(data.load_split(cfg.dataset, split, data_dir=cfg.data_dir)["text"])
            x, y = data.char_windows(tokens, cfg.seq_len)
            out[split] = {"x": x, "y": y}
        train = out["train"]
        if cfg.train_limit:
            train = _take(train, slice(0, cfg.train_limit))
        return Splits(train, out["validation"], out["test"])
    if cfg.dataset not in data.IMAGE_DATASETS:
        raise ValueError(f"task {task!r} trains on an image dataset {data.IMAGE_DATASETS}, not {cfg.dataset!r}")
    full = image_task_view(data.load_split(cfg.dataset, "train", data_dir=cfg.data_dir), task)
    test = image_task_view(data.load_split(cfg.dataset, "test", data_dir=cfg.data_dir), task)
    n = len(full["x"])
    if not 0 <= cfg.val_size < n:
        raise ValueError(f"val_size must be in [0, {n}), got {cfg.val_size}")
    cut = n - cfg.val_size
    train = _take(full, slice(0, cut))
    val = _take(full, slice(cut, n)) if cfg.val_size else test
    if cfg.train_limit:
        train = _take(train, slice(0, cfg.train_limit))
    return Splits(train, val, test)


def augment_fn(cfg: Config) -> Callable | None:
    if not (cfg.augment_flip or cfg.augment_rotate or cfg.augment_shift):
        return None
    return functools.partial(
        data.augment, flip=cfg.augment_flip, rotate_degrees=cfg.augment_rotate, shift_pixels=cfg.augment_shift
    )


def latent_dim(model) -> int:
    return getattr(model, "latent_dim", 100)


def train_step(task: str, model, cfg: Config, axis_name: str | None = None) -> Callable:
    """The task's train step with its static arguments bound: (state, batch) -> (state, metrics)."""
    if task == "gan":
        return functools.partial(steps.gan_step, latent_dim=latent_dim(model), axis_name=axis_name)
    return functools.partial(
        steps.train_step, loss_fn=steps.LOSSES[task], augment=augment_fn(cfg), axis_name=axis_name
    )


def eval_step(task: str, model) -> Callable:
    """The task's eval step: (state, batch, mask) -> sums (with "count", maybe "confusion")."""
    if task == "gan":
        return functools.partial(steps.gan_eval_step, latent_dim=latent_dim(model))
    num_classes = getattr(model, "num_classes", 0) if task in ("classification", "sequence_classification") else 0
    return functools.partial(steps.eval_step, loss_fn=steps.LOSSES[task], num_classes=num_classes)


def summarize(sums: dict) -> dict:
    """Device sums -> host means; a confusion matrix becomes per-class precision/recall/F1."""
    sums = {k: np.asarray(v) for k, v in sums.items()}
    count = float(sums.pop("count"))
    confusion = sums.pop("confusion", None)
    out = {k: float(v) / count for k, v in sums.items()}
    out["count"] = int(count)
    if confusion is not None:
        out.update(classification_report(confusion))
    return out


def classification_report(confusion: np.ndarray) -> dict:
    """Per-class precision, recall and F1 (and macro averages) from a confusion matrix."""
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    predicted = confusion.sum(0)
    actual = confusion.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    return {
        "per_class": {
            str(c): {"precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]), "support": int(actual[c])}
            for c in range(len(tp))
        },
        "macro_f1": float(f1.mean()),
        "confusion": confusion.astype(int).tolist(),
    }
