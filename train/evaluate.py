"""Evaluation of finished runs (best or latest checkpoint) and of exported/pretrained weights."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax

from train import gen_metrics, parallel, tasks
from train.checkpoint import CheckpointError, Checkpointer
from train.config import Config, build_model, class_names_of, read_config_text, resolve
from zoo.files import write_text_atomic
from zoo.trees import check_finite, check_tree, expected_variables


def evaluate_arrays(task: tasks.Task, model, variables: dict, arrays: dict, *, batch_size: int = 1000,
                    devices=None) -> dict:
    """Metrics of `variables` on host `arrays` ({"x", "y"?}), batches split over `devices`.

    Classification adds per-class precision/recall/F1, macro F1 and the confusion matrix.
    `arrays` may be a streamed split (train/sources/stream.py): read batch by batch, same metrics.
    """
    devices = jax.devices() if devices is None else devices
    mesh = parallel.make_mesh(devices)
    replicated = parallel.NamedSharding(mesh, parallel.P())
    bs = parallel.eval_batch_size(batch_size, len(devices))
    if not isinstance(arrays, dict):
        from train.sources import stream

        variables = jax.tree.map(lambda a: parallel.put_global(a, replicated), variables)
        return tasks.summarize(stream.evaluator(task.eval_step(model), mesh)(variables, arrays, len(arrays), bs))
    variables, on_device = (jax.tree.map(lambda a: parallel.put_global(a, replicated), t) for t in (variables, arrays))
    run = parallel.make_evaluator(task.eval_step(model), mesh)
    return tasks.summarize(run(variables, on_device, len(arrays["x"]), bs))


def read_config(workdir: Path) -> Config:
    """The resolved config a `zoo train` run saved in its workdir."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"no run in {workdir} (missing config.json); train first: zoo train MODEL --workdir {workdir}")
    return Config(**json.loads(read_config_text(path, "a run's config.json")))


def restore_workdir(workdir: Path, which: str | None = None):
    """(cfg, model, variables, step) from a run directory's best or latest checkpoint; by default
    the best, or the latest where the task's validation metric does not rank checkpoints (GAN)."""
    workdir = Path(workdir).absolute()
    cfg = read_config(workdir)
    task = tasks.of_model(cfg.model)
    model = build_model(cfg)
    if which is None and not task.ranks_checkpoints:
        which = "latest"
    for attempt in range(3):
        # Read-only: the run may be training in this workdir right now (it must not be disturbed).
        with Checkpointer(workdir / "checkpoints", best_metric=f"val_{task.val_metric}", best_mode=task.mode,
                          read_only=True) as ckpt:
            step = ckpt.best_step() if which in (None, "best") else None
            if step is None:
                if which == "best":
                    raise ValueError(f"no best checkpoint tracked in {ckpt.directory}")
                step = ckpt.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
            try:
                restored, _ = ckpt.restore(None, step)  # the tree as saved; only its variables are used
                break
            except CheckpointError:
                # A live run's retention may delete the step while it is read: pick again.
                if (ckpt.directory / str(step)).exists() or attempt == 2:
                    raise
    variables = {"params": restored["params"], **restored["model_state"]}
    check_tree(expected_variables(model), variables, f"checkpoint step {step} in {workdir} does not match {cfg.model}")
    check_finite(variables, f"checkpoint step {step} in {workdir}")  # NaN weights would score and export as if fine
    return cfg, model, variables, step


def _eval_arrays(cfg: Config, split: str) -> dict:
    if split not in ("train", "val", "validation", "test"):
        raise ValueError(f"--split must be train, validation or test, got {split!r}")
    if cfg.data:
        splits = _own_splits(cfg)
    else:
        splits = tasks.load_splits(tasks.of_model(cfg.model), cfg)
    return {"test": splits.test, "train": splits.train}.get(split, splits.val)


def _own_splits(cfg: Config) -> tasks.Splits:
    """The splits of the user's data a run is evaluated on; refused when its classes are not the
    ones the run trained on (the model's outputs would be read as other classes)."""
    opened, splits = tasks.own_data(tasks.of_model(cfg.model), dataclasses.replace(cfg, class_names=[]),
                                    log=lambda note: None)
    if cfg.class_names and opened.class_names and opened.class_names != cfg.class_names:
        raise ValueError(f"--data {cfg.data}: its classes {', '.join(opened.class_names)} are not the "
                         f"{', '.join(cfg.class_names)} the model was trained on")
    return splits


def _finish(result: dict, out: Path | None) -> dict:
    if out is not None and jax.process_index() == 0:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps(result, indent=2) + "\n")
        result["saved"] = str(out)
    return result


def class_names(cfg: Config, metrics: dict) -> list[str] | None:
    """The names of `metrics`' per-class rows: the run's (`config.class_names_of`: --class-names,
    else the model's names, of --classes where it trained on a subset). None where they do not
    fit the rows (e.g. num_classes changed with --set)."""
    rows = len(metrics.get("per_class", {}))
    names = class_names_of(cfg) if rows else None
    return names if names is not None and len(names) == rows else None


def evaluate_workdir(name: str, workdir, *, split: str = "test", which: str | None = None, out=None,
                     quality_n: int = 0, data=None) -> dict:
    """Evaluates a `zoo train` run on `split`; saves WORKDIR/eval_<split>.json unless `out` says otherwise.
    `quality_n`: see `evaluate_run`. `data`: the user's data to evaluate on (default: the run's)."""
    cfg, model, variables, step = restore_workdir(Path(workdir), which)
    if cfg.model != name:
        raise ValueError(f"{workdir} holds a {cfg.model!r} run, not {name!r}")
    if data is not None:
        cfg = dataclasses.replace(cfg, data=str(Path(data).expanduser().absolute()))
    metrics = evaluate_run(cfg, model, variables, split, quality_n=quality_n)
    result = {"model": name, "dataset": tasks.data_name(cfg), "split": split, "source": f"{workdir} step {step}", "step": step,
              "class_names": class_names(cfg, metrics), "metrics": metrics}
    return _finish(result, Path(out) if out else Path(workdir) / f"eval_{split}.json")


def evaluate_run(cfg: Config, model, variables: dict, split: str, *, quality_n: int = 0) -> dict:
    """Metrics of a run's restored `variables` on `split` of the data view its config trained on.

    `quality_n` > 0: tasks with a quality hook (GAN, autoencoder) trained on MNIST also report
    train/gen_metrics.py's measures of that many generated/reconstructed images.
    """
    if not isinstance(quality_n, int) or isinstance(quality_n, bool) or quality_n < 0:
        raise ValueError(f"quality_n must be an integer >= 0 (images to score; 0 = off), got {quality_n!r}")
    task = tasks.of_model(cfg.model)
    arrays = _eval_arrays(cfg, split)
    metrics = evaluate_arrays(task, model, variables, arrays, batch_size=cfg.eval_batch_size)
    if quality_n and task.quality is not None and cfg.dataset == "mnist" and not cfg.data:
        metrics.update(task.quality(model, variables, arrays, quality_n, 0))  # seed 0: comparable runs
    return metrics


def evaluate_pretrained(name: str, tag: str | None, *, path=None, split: str = "test", data_dir=None, out=None,
                        quality_n: int = 0, data=None) -> dict:
    """Evaluates shipped (`tag`) or exported (`path`) weights on the dataset they were trained on,
    or on the user's `data`. `quality_n`: see `evaluate_run`."""
    from zoo.pretrained import load, read_manifest

    model, variables = load(name, pretrained=tag, path=path)
    manifest = read_manifest(name, pretrained=tag, path=path)
    overrides = dict(manifest.get("train_config") or {})
    for key in ("class_names", "model_overrides"):  # a one-file export records these without a train_config
        if manifest.get(key) and not overrides.get(key):
            overrides[key] = manifest[key]
    cfg = resolve(name, {**{k: v for k, v in overrides.items() if k not in ("model",)}, "data_dir": data_dir,
                         **({"data": str(Path(data).expanduser().absolute())} if data is not None else {})})
    metrics = evaluate_run(cfg, model, variables, split, quality_n=quality_n)
    source = f"pretrained {name}.{tag}" if tag else f"export {path}"
    return _finish({"model": name, "dataset": tasks.data_name(cfg), "split": split, "source": source,
                    "class_names": class_names(cfg, metrics), "metrics": metrics}, out)


def variables_for(name: str, *, pretrained=None, path=None, workdir=None):
    """(model, variables) from shipped weights, an export, or a run directory."""
    if pretrained or path:
        from zoo.pretrained import load

        return load(name, pretrained=pretrained, path=path)
    _, model, variables, _ = restore_workdir(Path(workdir or Path("runs") / name))
    return model, variables


def report_lines(result: dict) -> list[str]:
    """`zoo eval`'s printout of an evaluation result: its numbers, then what the model's task
    reports beside them (a per-class table, the sample-quality coverage where it was measured)."""
    m = result["metrics"]
    task = tasks.of_model(result["model"])
    lines = [f"{result['model']} on {result['dataset']}/{result['split']} ({m['count']} examples, {result['source']}):"]
    lines += [f"  {key}: {value:.6g}" for key, value in m.items() if isinstance(value, float)]
    if task.per_class:
        lines += _class_table(m, result.get("class_names"))
    if task.quality is not None and "quality_n" in m:  # measured where --quality-n > 0 on MNIST
        lines.append("  " + gen_metrics.quality_line(m))
    if result.get("saved"):
        lines.append(f"saved {result['saved']}")
    return lines


def _class_table(m: dict, names: list[str] | None) -> list[str]:
    # "index 'name'": with --classes 0,2,5 row 1 is class '2' of the original labels
    names = names or [None] * len(m["per_class"])
    labels = [c if n is None else f"{c} {n!r}" for c, n in zip(m["per_class"], names)]
    width = max(5, *map(len, labels))
    lines = [f"  {'class':>{width}}  precision  recall  f1      support"]
    for label, r in zip(labels, m["per_class"].values()):
        lines.append(f"  {label:>{width}}  {r['precision']:.4f}     {r['recall']:.4f}  {r['f1']:.4f}  {r['support']}")
    lines.append("  confusion (rows: true, cols: predicted):")
    lines += ["   " + " ".join(f"{v:5d}" for v in row) for row in m["confusion"]]
    return lines
