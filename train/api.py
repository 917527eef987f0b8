"""`train.fit`: the engine from Python, on a registry dataset or on your own arrays.

    import train
    result = train.fit("cnn", "mnist", epochs=1)                       # a registry recipe
    result = train.fit("cnn", {"x": images, "y": labels}, epochs=3)    # your arrays
    result = train.fit(my_module, {"x": x, "y": y}, task="classification", lr=3e-4)
    logits = result.model.apply(result.variables, images)
    result = train.fit(nnx_net, data, ...)          # an nnx.Module: trained in place, returned
    logits = result.model(images)                     # (result.model is nnx_net)

The same engine as `zoo train`: jit + NamedSharding over all devices, the task's steps, early
stopping; with `workdir=` it checkpoints and resumes exactly as the CLI does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx

import zoo
from train import loop, tasks
from train import config as config_fields
from train.config import Config, build_model, resolve
from train.nnx_adapter import LinenView


@dataclasses.dataclass
class FitResult:
    """A finished `train.fit`.

    Attributes:
      model: the trained flax module: a Linen module, or the nnx.Module you passed, updated in
        place with the trained weights (in eval mode).
      variables: the variables ({"params": ..., maybe "batch_stats"}), ready for a Linen
        `model.apply` (for an NNX module: `zoo.nnx.variables(result.model)`).
      metrics: the last epoch's record (train_* means, val_* metrics, timings).
      history: every epoch's record, in order.
      config: the resolved training config.
      workdir: where checkpoints and logs live (None: a temporary directory, removed).
    """

    model: Any
    variables: dict
    metrics: dict
    history: list
    config: Config
    workdir: Path | None


def _task_of(model, task) -> tasks.Task:
    if isinstance(task, tasks.Task):
        return task
    if task is not None:
        return tasks.get(task)
    cls = type(model)
    if isinstance(model, LinenView):  # an NNX twin of a zoo model has its Linen class's task
        cls = getattr(type(model.net), "linen", type(model.net))
    labels = {zoo.get_spec(n).task for n in zoo.list_models() if zoo.get_spec(n).module is cls}
    if len(labels) != 1:
        raise ValueError(f"train.fit({cls.__name__}): pass task= (one of {', '.join(sorted(tasks.TASKS))})")
    return tasks.get(labels.pop())


def _as_split(arrays: Mapping, what: str) -> dict:
    if not isinstance(arrays, Mapping) or "x" not in arrays:
        raise ValueError(f"{what} must be a dict with 'x' (inputs) and, for supervised tasks, 'y' (targets)")
    out = {k: np.asarray(v) if not isinstance(v, Mapping) else {h: np.asarray(a) for h, a in v.items()}
           for k, v in arrays.items() if k in ("x", "y")}
    n = len(out["x"])
    for key, value in out.items():
        for name, a in (value.items() if isinstance(value, dict) else [(key, value)]):
            if len(a) != n:
                raise ValueError(f"{what}: {name} has {len(a)} examples but x has {n}")
            if a.dtype.kind not in "biuf":
                raise ValueError(f"{what}: {name} must be numeric, got dtype {a.dtype}")
            if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                raise ValueError(f"{what}: {name} holds NaN or inf values")
    if "y" in out and not isinstance(out["y"], dict) and out["y"].dtype.kind == "f":
        raise ValueError(f"{what}: y must hold integer class labels, got dtype {out['y'].dtype}")
    return out


def _check_targets(task: tasks.Task, splits: tasks.Splits) -> None:
    for name, split in (("train", splits.train), ("validation", splits.val)):
        if task.targets and "y" not in split:
            raise ValueError(f"data: the {task.name} task learns targets: give {{'x': inputs, 'y': targets}} "
                             f"(the {name} split has no 'y')")


def user_splits(data: Mapping, cfg: Config, *, val_size_given: bool) -> tasks.Splits:
    """Splits from the user's arrays: {"x", "y"} (validation: the last `val_size` examples, or
    the last 10% unless val_size was given), or {"train": {...}, "validation": {...}}."""
    if "train" in data:
        train_split = _as_split(data["train"], "data['train']")
        if "validation" not in data:
            raise ValueError("data with a 'train' split needs a 'validation' split too")
        val = _as_split(data["validation"], "data['validation']")
    else:
        full = _as_split(data, "data")
        n = len(full["x"])
        cut = n - (cfg.val_size if val_size_given else max(1, n // 10))
        if not 0 < cut < n:
            raise ValueError(f"val_size={n - cut} leaves no training or no validation examples of {n}")
        train_split, val = (jax.tree.map(lambda a: a[sl], full) for sl in (slice(0, cut), slice(cut, n)))
    if cfg.train_limit:
        train_split = jax.tree.map(lambda a: a[: cfg.train_limit], train_split)
    return tasks.Splits(train_split, val, val)


def fit(
    model: str | Any,
    data: str | Mapping = "mnist",
    *,
    task: str | tasks.Task | None = None,
    config: Config | Mapping | None = None,
    workdir: str | Path | None = None,
    log=print,
    **overrides,
) -> FitResult:
    """Trains a registry model (by name) or a flax module, and returns it with its variables.

    Args:
      model: a registry name ("cnn"; its recipe in train/configs gives the defaults), a
        flax.linen.Module, or an nnx.Module (a zoo model, or your own: then pass `task`). An
        NNX module starts from its current weights (`init="glorot"` and `init_from` apply as
        for Linen) and is trained through `nnx.split`: the jitted step is the Linen one, a pure
        function of the variables; the trained weights are written back into it.
      data: a dataset name ("mnist", "tiny_shakespeare", ...), the path of your data (a folder of
        class subfolders of images, an .npz, a text file: as `zoo train --data`), or your host arrays:
        {"x": inputs, "y": labels} (uint8 images are scaled to [0, 1] on device; the last 10%
        become the validation split unless `val_size=` says how many) or
        {"train": {"x", "y"}, "validation": {"x", "y"}}.
      task: the task label ("classification", "reconstruction", ...) for your own module.
      config: a Config or a dict of Config fields, applied over the recipe.
      workdir: checkpoint and log directory; an existing run there is resumed. None: a
        temporary directory that is removed afterwards.
      log: where progress lines go (print by default).
      **overrides: Config fields (epochs=3, lr=1e-3, batch_size=128, classes=[0, 1, 2], ...).
        The model's own fields are not Config fields: change them with `model_overrides`,
        e.g. a 10-class head: `model_overrides={"num_classes": 10}`.

    Returns:
      A FitResult with the trained model and variables, the last metrics and the history.

    Raises:
      ValueError / TypeError: a bad argument, named as the Python argument (`classes`, not
        the CLI's `--classes`).
    """
    with config_fields.python_names():
        return _fit(model, data, task=task, config=config, workdir=workdir, log=log, **overrides)


def _own_path(data) -> str | None:
    """`data` as the path of the user's data (an os.PathLike, or a str that names an existing
    file or folder and no registry dataset), else None."""
    from train.data import SPLITS

    if isinstance(data, os.PathLike) or (isinstance(data, str) and data not in SPLITS and Path(data).expanduser().exists()):
        return os.fspath(Path(data).expanduser().absolute())
    return None


def _fit(model, data, *, task, config, workdir, log, **overrides) -> FitResult:
    if not isinstance(data, (str, os.PathLike, Mapping)):
        raise TypeError("data must be a dataset name (e.g. 'mnist') or a dict of arrays {'x': inputs, 'y': targets}, "
                        f"or the path of your data (an image folder, an .npz, a text file), got {type(data).__name__}")
    values = dict(config.to_json() if isinstance(config, Config) else config or {})
    values.update(overrides)
    view = LinenView(model) if isinstance(model, nnx.Module) else None
    if view is not None:
        model = view
    if isinstance(model, str):
        name, module = model, None
        the_task = tasks.get(task) if isinstance(task, str) else task or tasks.of_model(name)
    else:
        the_task = _task_of(model, task)
        name, module = values.pop("model", None) or (view.name if view else type(model).__name__), model
        if values.get("model_overrides") or values.get("classes"):
            raise ValueError("model_overrides and classes apply to registry names; build your module with the fields you want")
    values.pop("model", None)
    if (own := _own_path(data)) is not None:
        values["data"], data = own, None
    elif isinstance(data, str):
        values["dataset"] = data
    if module is None:
        cfg = resolve(name, values)
        config_fields.check_model(cfg)  # a model too large for memory is refused before any data loads
    else:  # your own module: no recipe, no registry model to build
        unknown = [k for k in values if k not in config_fields.FIELDS]
        if unknown:
            raise ValueError(config_fields.unknown_key(unknown[0]))
        cfg = Config(**{"model": name, **values}).validate(registered=False)
    splits = None
    if isinstance(data, Mapping):
        splits = user_splits(data, cfg, val_size_given="val_size" in values)
        _check_targets(the_task, splits)
        splits = tasks.select_classes(the_task, splits, cfg.classes)
        cfg = dataclasses.replace(cfg, dataset="arrays")
    with tempfile.TemporaryDirectory(prefix="zoo-fit-") as tmp:
        where = Path(workdir) if workdir is not None else Path(tmp)
        result = loop.fit(cfg, where, log=log, model=module, task=the_task, splits=splits)
        cfg = result.config or cfg
        history_file = where / "metrics.jsonl"
        history = [json.loads(line) for line in history_file.read_text().splitlines()] if history_file.exists() else []
    trained = jax.device_get(result.state.variables())
    built = view.update_net(trained) if view else module if module is not None else build_model(cfg)
    return FitResult(built, trained, result.record or (history[-1] if history else {}),
                     history, cfg, Path(workdir) if workdir is not None else None)
