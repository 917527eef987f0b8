"""Evaluation of finished runs (best or latest checkpoint) and of exported/pretrained weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np

import zoo
from train import parallel, tasks
from train.checkpoint import Checkpointer
from train.config import Config, resolve
from train.loop import build_model, evaluate, initial_state, state_tree


def _read_config(workdir: Path) -> Config:
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"no run in {workdir} (missing config.json); train first: zoo train MODEL --workdir {workdir}")
    return Config(**json.loads(path.read_text()))


def restore_workdir(workdir: Path, which: str | None = None):
    """(cfg, model, variables, step) from a run directory's best (default) or latest checkpoint."""
    workdir = Path(workdir).absolute()
    cfg = _read_config(workdir)
    task = zoo.get_spec(cfg.model).task
    model = build_model(cfg)
    spec = model.input_spec()
    example = np.zeros(spec.example_shape(1, free_axis=cfg.seq_len), np.int32 if spec.dtype == "int32" else np.float32)
    metric, mode = tasks.VAL_METRIC[task]
    state = initial_state(cfg.__class__(**{**cfg.to_json(), "init_from": ""}), model, task, example, 1)
    with Checkpointer(workdir / "checkpoints", best_metric=f"val_{metric}", best_mode=mode) as ckpt:
        step = ckpt.best_step() if which in (None, "best") else None
        if step is None:
            if which == "best":
                raise ValueError(f"no best checkpoint tracked in {ckpt.directory}")
            step = ckpt.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
        replicated = parallel.NamedSharding(parallel.make_mesh(jax.devices()[:1]), parallel.P())
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), state_tree(state))
        restored, _ = ckpt.restore(target, step)
    variables = {"params": restored["params"], **restored["model_state"]}
    return cfg, model, variables, step


def _eval_arrays(task: str, cfg: Config, split: str) -> dict:
    splits = tasks.load_splits(task, cfg)
    if split == "test":
        return splits.test
    if split in ("val", "validation"):
        return splits.val
    if split == "train":
        return splits.train
    raise ValueError(f"split must be train, validation or test, got {split!r}")


def _finish(result: dict, out: Path | None) -> dict:
    if out is not None and jax.process_index() == 0:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, out)
        result["saved"] = str(out)
    return result


def evaluate_workdir(name: str, workdir, *, split: str = "test", which: str | None = None, out=None) -> dict:
    """Evaluates a `zoo train` run on `split`; saves WORKDIR/eval_<split>.json unless `out` says otherwise."""
    cfg, model, variables, step = restore_workdir(Path(workdir), which)
    if cfg.model != name:
        raise ValueError(f"{workdir} holds a {cfg.model!r} run, not {name!r}")
    metrics = evaluate_run(cfg, model, variables, split)
    result = {"model": name, "dataset": cfg.dataset, "split": split, "source": f"{workdir} step {step}", "step": step, "metrics": metrics}
    return _finish(result, Path(out) if out else Path(workdir) / f"eval_{split}.json")


def evaluate_run(cfg: Config, model, variables: dict, split: str) -> dict:
    """Metrics of a run's restored `variables` on `split` of the data view its config trained on."""
    task = zoo.get_spec(cfg.model).task
    return evaluate(task, model, variables, _eval_arrays(task, cfg, split), batch_size=cfg.eval_batch_size)


def evaluate_pretrained(name: str, tag: str | None, *, path=None, split: str = "test", data_dir=None, out=None) -> dict:
    """Evaluates shipped (`tag`) or exported (`path`) weights on the dataset they were trained on."""
    from zoo.pretrained import load, read_manifest

    model, variables = load(name, pretrained=tag, path=path)
    manifest = read_manifest(name, pretrained=tag, path=path)
    overrides = dict(manifest.get("train_config") or {})
    cfg = resolve(name, {**{k: v for k, v in overrides.items() if k not in ("model",)}, "data_dir": data_dir})
    task = zoo.get_spec(name).task
    metrics = evaluate(task, model, variables, _eval_arrays(task, cfg, split), batch_size=cfg.eval_batch_size)
    source = f"pretrained {name}.{tag}" if tag else f"export {path}"
    return _finish({"model": name, "dataset": cfg.dataset, "split": split, "source": source, "metrics": metrics}, out)


def variables_for(name: str, *, pretrained=None, path=None, workdir=None):
    """(model, variables) from shipped weights, an export, or a run directory."""
    if pretrained or path:
        from zoo.pretrained import load

        return load(name, pretrained=pretrained, path=path)
    _, model, variables, _ = restore_workdir(Path(workdir or Path("runs") / name))
    return model, variables
