"""What training means for each task: one `Task` record per registry task label.

A record names the task's data view, its train and eval steps, its validation metric and
direction, and its samplers. The loop, the CLI, evaluation and export look the record up once
(`get(label)`) and never compare task names. A new task is one new record (docs/design.md: "Add a task").
The steps themselves (train/steps.py) stay config-free.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

import zoo
from train import data, gen_metrics, report, steps
from train.config import Config, build_model, flag, names_of_classes, override_hint, tfds_val_size


@dataclasses.dataclass(frozen=True)
class Task:
    """One trainable task.

    Attributes:
      name: the registry task label it serves (`zoo.get_spec(model).task`).
      datasets: the TFDS datasets it can train on.
      view: a split's TFDS arrays -> host arrays {"x", and "y" unless unsupervised}.
      train_step: `(model, cfg) -> step`, step = `(state, batch) -> (state, metrics)`.
      eval_step: `model -> eval`, eval = `(variables, batch, mask) -> sums` (with "count").
      val_metric, mode: the validation metric that selects the best checkpoint and drives
        early stopping, and whether "max" or "min" is better.
      players: parameter subtrees with their own optimizer state (a GAN's two players).
      epoch_sample: optional `(model, variables, val, outdir, epoch, seed, log)`, written after
        each `sample_every` epochs (grids, text).
      sample: optional `(model, variables, key, options) -> message` for `zoo sample`.
      labels: the label arrays of a view that hold class ids (validated against the model).
      predicts: what `zoo predict` makes of a picture: "classes" (top-k per head),
        "reconstruction" (a PNG), or "" where the task does not take pictures that way.
      quality: optional `(model, variables, arrays, n, seed) -> metrics` of generated or
        reconstructed images against the first `n` of `arrays["x"]` (train/gen_metrics.py),
        reported by `zoo eval`.
      per_class: its eval metrics hold per-class precision/recall/F1 and the confusion matrix
        (`summarize`), which `zoo eval` prints as a table.
    """

    name: str
    datasets: tuple[str, ...]
    view: Callable[[dict], dict]
    train_step: Callable
    eval_step: Callable
    val_metric: str
    mode: str
    players: tuple[str, ...] = ()
    epoch_sample: Callable | None = None
    sample: Callable | None = None
    labels: Callable[[dict], dict] = lambda arrays: {}
    quality: Callable | None = None
    predicts: str = ""  # what `zoo predict` shows for a picture: "classes", "reconstruction", or "" (not supported)
    targets: bool = True  # its arrays hold "y" (False: it learns from "x" alone)
    # False: the validation metric does not rank checkpoints (a GAN's g_loss says nothing of its
    # samples), so `zoo eval`/`zoo export` take the latest checkpoint unless --which best
    ranks_checkpoints: bool = True
    per_class: bool = False
    tokenizes: bool = False  # its view encodes text: `view(arrays, vocab=the model's vocabulary)`

    def better(self, value: float, best: float | None) -> bool:
        """Whether validation `value` improves on `best` (None: nothing yet)."""
        return best is None or (value > best if self.mode == "max" else value < best)


# ---------------------------------------------------------------- data views


def _images(view: Callable[[np.ndarray, np.ndarray], dict]) -> Callable[[dict], dict]:
    def one(arrays: dict) -> dict:
        return view(*data.image_classification(arrays))

    return one


def _text(arrays: dict, vocab: str = zoo.rnn.TINY_SHAKESPEARE_VOCAB) -> dict:
    return {"tokens": zoo.rnn.encode(arrays["text"], vocab)}  # windows are cut by load_splits


def data_view(task: Task, cfg: Config) -> Callable[[dict], dict]:
    """`task.view` for `cfg`'s model: a text view encodes with the model's vocabulary."""
    if not task.tokenizes:
        return task.view
    from train.config import build_model

    return functools.partial(task.view, vocab=zoo.rnn.vocab_of(build_model(cfg)))


# ---------------------------------------------------------------- steps


def _supervised(loss_fn: Callable, *, confusion: bool = False):
    """(train_step factory, eval_step factory) of a task trained by `loss_fn`."""

    def train_step(model, cfg: Config):
        return functools.partial(steps.train_step, loss_fn=loss_fn, augment=augment_fn(cfg))

    def eval_step(model):
        return functools.partial(steps.eval_step, apply_fn=model.apply, loss_fn=loss_fn, confusion=confusion)

    return train_step, eval_step


def augment_fn(cfg: Config) -> Callable | None:
    """The on-device augmentation `cfg` asks for (None: none)."""
    if not (cfg.augment_flip or cfg.augment_rotate or cfg.augment_shift):
        return None
    return functools.partial(
        data.augment, flip=cfg.augment_flip, rotate_degrees=cfg.augment_rotate, shift_pixels=cfg.augment_shift
    )


# ---------------------------------------------------------------- samplers


def _reconstruction_grid(model, variables, val, outdir: Path, epoch: int, seed: int, log) -> None:
    x = steps.to_input(jnp.asarray(val["x"][:32]))
    report.save_grid(jnp.concatenate([x, model.apply(variables, x)], 0), outdir / f"recon_epoch{epoch:03d}.png")


def _gan_grid(model, variables, val, outdir: Path, epoch: int, seed: int, log) -> None:
    z = jax.random.normal(jax.random.key(seed + 1_000_003), (64, model.latent_dim))
    report.save_grid(model.apply(variables, z, method="generate"), outdir / f"samples_epoch{epoch:03d}.png")


def _gan_sample(model, variables, key, options: dict) -> str:
    z = jax.random.normal(key, (options["num"], model.latent_dim))
    out = report.save_grid(model.apply(variables, z, method="generate"), Path(options.get("out") or "samples.png"))
    return f"saved {out}"


def sample_text(model, variables, prompt: str, length: int, key, temperature: float = 0.8) -> str:
    """Generates `length` characters after `prompt` with a char-level LM."""
    if not prompt:
        raise ValueError("the prompt must be at least one character (the model continues it)")
    vocab = zoo.rnn.vocab_of(model)  # the model's own characters, as its run or export recorded them
    tokens = jnp.asarray(zoo.rnn.encode(prompt, vocab))[None]
    out = jax.jit(lambda v, k, t: model.apply(v, k, t, length, temperature, method="generate"))(variables, key, tokens)
    return prompt + zoo.rnn.decode(out[0], vocab)


def epoch_prompt(vocab: str, val: dict) -> str:
    """The per-epoch sample's prompt: "ROMEO:" where the vocabulary holds it, else the start
    of the first validation window (a prompt the model has seen the like of)."""
    if set("ROMEO:") <= set(vocab):
        return "ROMEO:"
    return zoo.rnn.decode(np.asarray(val["x"][0][:8]), vocab)


def _text_file(model, variables, val, outdir: Path, epoch: int, seed: int, log) -> None:
    if getattr(model, "vocab", None) is None:  # bare token ids: no characters to print
        log(f"sample: none (vocab_size={model.vocab_size} without a vocab: the ids have no characters)")
        return
    text = sample_text(model, variables, epoch_prompt(model.vocab, val), 200, jax.random.key(seed + epoch))
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / f"text_epoch{epoch:03d}.txt").write_text(text)
    log("sample: " + text.replace("\n", "\n        "))


def _text_sample(model, variables, key, options: dict) -> str:
    prompt = options.get("prompt")
    if prompt is None:  # no --prompt: one the model's vocabulary can read
        vocab = zoo.rnn.vocab_of(model)
        prompt = "ROMEO:" if set("ROMEO:") <= set(vocab) else vocab[0]
    return sample_text(model, variables, prompt, options["length"], key, options["temperature"])


# ---------------------------------------------------------------- the records

_IMAGES = data.IMAGE_DATASETS
_classify = _supervised(steps.classification_loss, confusion=True)
_gan = (
    lambda model, cfg: functools.partial(steps.gan_step, latent_dim=model.latent_dim),
    lambda model: functools.partial(steps.gan_eval_step, apply_fn=model.apply, latent_dim=model.latent_dim),
)

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("classification", _IMAGES, _images(lambda x, y: {"x": x, "y": y}), *_classify, "accuracy", "max",
             labels=lambda a: {"y": a["y"]}, predicts="classes", per_class=True),
        Task("sequence_classification", _IMAGES, _images(lambda x, y: {"x": data.rows_as_sequence(x), "y": y}),
             *_classify, "accuracy", "max", labels=lambda a: {"y": a["y"]}, per_class=True),
        Task("binary", _IMAGES, _images(lambda x, y: {"x": x, "y": data.binary_labels(y)}),
             *_supervised(steps.binary_loss), "accuracy", "max", predicts="classes"),
        Task("multitask", _IMAGES, _images(lambda x, y: {"x": x, "y": data.multitask_labels(y)}),
             *_supervised(steps.multitask_loss), "digit_accuracy", "max", labels=lambda a: dict(a["y"]),
             predicts="classes"),
        Task("reconstruction", _IMAGES, _images(lambda x, y: {"x": x}), *_supervised(steps.reconstruction_loss),
             "mse", "min", epoch_sample=_reconstruction_grid, quality=gen_metrics.reconstruction_quality,
             predicts="reconstruction", targets=False),
        Task("language_model", data.TEXT_DATASETS, _text, *_supervised(steps.language_model_loss), "loss", "min",
             epoch_sample=_text_file, sample=_text_sample, tokenizes=True),
        Task("gan", _IMAGES, _images(lambda x, y: {"x": x}), *_gan, "g_loss", "min",
             players=("generator", "discriminator"), epoch_sample=_gan_grid, sample=_gan_sample,
             quality=gen_metrics.gan_quality, ranks_checkpoints=False, targets=False),
    )
}


def get(label: str) -> Task:
    """The Task record for a registry task label."""
    try:
        return TASKS[label]
    except KeyError:
        raise ValueError(f"no training task {label!r}; the engine trains {', '.join(sorted(TASKS))}") from None


def of_model(name: str) -> Task:
    """The Task record of registry model `name`."""
    return get(zoo.get_spec(name).task)


# ---------------------------------------------------------------- splits


@dataclasses.dataclass
class Splits:
    """Host arrays, each a dict {"x": ..., "y"?: ...}; y may be a dict (multitask)."""

    train: dict
    val: dict
    test: dict


def _take(arrays: dict, sl: slice) -> dict:
    return jax.tree.map(lambda a: a[sl], arrays)


def load_splits(task: Task, cfg: Config) -> Splits:
    """Train/validation/test host arrays of `cfg.dataset` (or of the user's `cfg.data`: see
    `own_data`), as `task` trains on them.

    TFDS datasets without a validation split hold out the last `cfg.val_size` (none: 5000) train examples.
    """
    if cfg.data:
        return own_data(task, cfg)[1]
    if cfg.dataset not in task.datasets:
        raise ValueError(f"task {task.name!r} trains on {', '.join(task.datasets)}, not {cfg.dataset!r}")
    load = functools.partial(data.load_split, cfg.dataset, data_dir=cfg.data_dir)
    view = data_view(task, cfg)
    if "validation" in data.SPLITS[cfg.dataset]:
        train, val, test = (view(load(split)) for split in ("train", "validation", "test"))
    else:
        full, test = view(load("train")), view(load("test"))
        n, val_size = len(next(iter(full.values()))), tfds_val_size(cfg)
        if not 0 <= val_size < n:
            raise ValueError(f"val_size must be in [0, {n}), got {val_size}")
        cut = n - val_size
        train = _take(full, slice(0, cut))
        val = _take(full, slice(cut, n)) if val_size else test
    if "tokens" in train:  # text: next-character windows
        train, val, test = (dict(zip(("x", "y"), data.char_windows(s["tokens"], cfg.seq_len))) for s in (train, val, test))
    if cfg.train_limit:
        train = _take(train, slice(0, cfg.train_limit))
    return select_classes(task, Splits(train, val, test), cfg.classes)


def data_name(cfg: Config) -> str:
    """What a run trains on, for its messages: the user's data path, else the dataset name."""
    return cfg.data or cfg.dataset


def split_size(split) -> int:
    """Examples in a split: host arrays or a streamed split (train/sources/stream.py)."""
    return len(split["x"]) if isinstance(split, dict) else len(split)


def own_data(task: Task, cfg: Config, *, model=None, log=print) -> tuple[Config, Splits]:
    """Opens the user's `cfg.data` (train/sources) and returns the config the run trains with and its splits.

    The config records the data's absolute path and class names (unless given), and the
    registry model follows the data: `num_classes` = the number of classes (unless set with
    --set or --classes), a language model's `vocab` = the training text's characters. An image
    folder's splits stay files (`stream.StreamedSplit`); arrays and text are in memory.
    """
    from train import sources
    from train.sources import stream
    from zoo.preprocess import image_shape

    if model is None and cfg.model in zoo.list_models():
        model = build_model(cfg)
    shape = image_shape(model) if model is not None and hasattr(model, "input_spec") else None
    ud = sources.open_data(cfg.data, image_shape=shape, val_size=cfg.val_size, text=task.tokenizes,
                           seq_len=cfg.seq_len)
    for note in ud.notes:
        log(note)
    cfg = _follow_data(cfg, ud, model)
    view = data_view(task, cfg)  # after _follow_data: text is encoded with the data's vocabulary
    parts = [ud.splits["train"], ud.splits.get("validation"), ud.splits.get("test")]
    parts[1] = parts[1] if parts[1] is not None else parts[2]
    parts[2] = parts[2] if parts[2] is not None else parts[1]
    workers = stream.default_workers(cfg.data_workers)
    views = [stream.StreamedSplit.of(p, task.view, workers) if not isinstance(p, dict)
             else p if "x" in p else view(p) for p in parts]
    if isinstance(views[0], dict) and "tokens" in views[0]:  # text: next-character windows
        views = [dict(zip(("x", "y"), data.char_windows(s["tokens"], cfg.seq_len))) for s in views]
    train = views[0]
    if cfg.train_limit:
        train = train.take(slice(0, cfg.train_limit)) if not isinstance(train, dict) else _take(train, slice(0, cfg.train_limit))
    splits = Splits(train, views[1], views[2])
    if cfg.classes and not isinstance(train, dict):
        return cfg, _select_streamed(task, splits, cfg.classes)
    return cfg, select_classes(task, splits, cfg.classes)


def _select_streamed(task: Task, splits: Splits, classes) -> Splits:
    """`select_classes` (the same checks and messages) for streamed splits: keeps their rows of
    `classes`, relabelled 0..k-1."""
    parts = (splits.train, splits.val, splits.test)
    # "x" carries each example's position through the in-memory selection
    kept = select_classes(task, Splits(*({"x": np.arange(len(s)), **s.targets()} for s in parts)), classes)
    return Splits(*(s.take(k["x"], k["y"]) for s, k in zip(parts, (kept.train, kept.val, kept.test))))


def _follow_data(cfg: Config, ud, model) -> Config:
    """`cfg` with the data's absolute path, class names, and the model fields that follow the data."""
    names = list(cfg.class_names)
    if not names and ud.class_names:
        names = names_of_classes(ud.class_names, cfg.classes) if cfg.classes else list(ud.class_names)
    overrides = dict(cfg.model_overrides)
    registered = cfg.model in zoo.list_models() and dataclasses.is_dataclass(model)
    fields = {f.name for f in dataclasses.fields(model)} if registered else set()
    if "num_classes" in fields and ud.class_names and not cfg.classes:
        overrides.setdefault("num_classes", len(ud.class_names))
    if "vocab" in fields and ud.vocab is not None:
        overrides["vocab"] = ud.vocab
    return dataclasses.replace(cfg, data=str(ud.path), class_names=names, model_overrides=overrides)


def select_classes(task: Task, splits: Splits, classes) -> Splits:
    """Keeps the examples of `classes` only, relabelled 0..k-1 in the order given (no-op if empty)."""
    if not classes:
        return splits
    if not isinstance(splits.train.get("y"), np.ndarray) or set(task.labels(splits.train)) != {"y"}:
        raise ValueError(f"{flag('classes')} applies to single-label classification, not to task {task.name!r}")
    parts = (splits.train, splits.val, splits.test)
    present = np.unique(splits.train["y"])
    absent = sorted(set(classes) - set(present.tolist()))
    if absent:  # training on it would give a k-class head that never sees class `absent`
        raise ValueError(f"{flag('classes')} {','.join(map(str, classes))}: no training example has label "
                         f"{', '.join(map(str, absent))}; the labels present are {_label_list(present)}")
    top = max(int(s["y"].max()) for s in parts if len(s["y"]))  # >= every class: all are present
    table = np.full(top + 1, -1)  # label -> new label, -1: dropped
    table[list(classes)] = np.arange(len(classes))

    def keep(split: dict) -> dict:
        y = table[split["y"]]
        rows = np.flatnonzero(y >= 0)
        return {**jax.tree.map(lambda a: a[rows], split), "y": y[rows].astype(np.int32)}

    return Splits(*(keep(s) for s in parts))


def _label_list(labels: np.ndarray) -> str:
    """Sorted int labels as "0, 1, 2" or, for a run of more than 3 consecutive labels, "0-9"."""
    labels = [int(v) for v in labels]
    if not labels:
        return "none"
    if len(labels) > 3 and labels[-1] - labels[0] == len(labels) - 1:
        return f"{labels[0]}-{labels[-1]}"
    shown = ", ".join(map(str, labels[:20]))
    return shown + (f", ... ({len(labels)} labels)" if len(labels) > 20 else "")


def check_labels(task: Task, arrays: dict, model, dataset: str) -> None:
    """Raises ValueError if a class label lies outside [0, num_classes) of `model`.

    Checked once on the host before training: the cross-entropy of an out-of-range label is
    NaN without any error, which would otherwise surface as a "diverged" run.
    """
    counts = dict(getattr(model, "heads", ())) or {"y": getattr(model, "num_classes", None)}
    for name, labels in task.labels(arrays).items():
        n = counts.get(name)
        labels = np.asarray(labels)
        if n is None or labels.size == 0:
            continue
        bad = labels[(labels < 0) | (labels >= n)]
        if bad.size:
            what = "num_classes" if name == "y" else f"the {name!r} head's classes"
            problem = f"{dataset}: label {int(bad[0])} is outside [0, {n}) ({what} = {n}); {bad.size} labels are out of range"
            if labels.min() < 0:  # no num_classes helps: class labels are indices 0..k-1
                raise ValueError(f"{problem}. Class labels must be integers >= 0 (the class index)")
            fix = f"set {what} to at least {int(labels.max()) + 1}"
            if name == "y":
                fix = f"raise num_classes with {override_hint('num_classes', int(labels.max()) + 1)}"
            raise ValueError(f"{problem}. Keep a subset of the classes with {flag('classes')}, or {fix}")


# ---------------------------------------------------------------- metrics


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
