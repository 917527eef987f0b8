"""What `zoo export` records beside the weights: the metric, recipe, device and quality of a
run's checkpoint (or the fields of the export it converts). The formats live in zoo/formats/."""

from __future__ import annotations

import json
from pathlib import Path

# Fields an export's manifest carries over when it is converted (zoo export --pretrained/--path).
FIELDS = ("model_overrides", "dataset", "metric", "command", "train_config", "quality", "training", "class_names")

# Flags that name places on this machine, not the recipe: dropped from the recorded command.
_MACHINE_FLAGS = ("--workdir", "--data-dir")


def recipe(argv: list[str]) -> str:
    """`zoo train ...` as recorded in exports: the command without its machine paths (_MACHINE_FLAGS)."""
    kept, skip, data = [], False, False
    for arg in argv:
        if skip:
            skip = False
        elif data:  # --data PATH: the dataset's name (its last path part) is the recipe, not where it lies
            kept.append(Path(arg).name)
            data = False
        elif arg == "--data" or arg.startswith("--data="):
            kept.append("--data")
            data = arg == "--data"
            if not data:
                kept.append(Path(arg.split("=", 1)[1]).name)
        elif arg in _MACHINE_FLAGS:
            skip = True
        elif not arg.startswith(tuple(f"{f}=" for f in _MACHINE_FLAGS)):
            kept.append(arg)
    return " ".join(kept)


def dataset_name(cfg) -> str:
    """What an export records as its dataset: the TFDS name, or "own data (NAME)" for `--data`
    (the folder's or file's name, not where it lies on this machine)."""
    from zoo.cards import OWN_DATA

    return f"{OWN_DATA} ({Path(cfg.data).name})" if cfg.data else cfg.dataset


def device_description(devices=None) -> str:
    """`devices` (default: all of JAX's), as exports record them: '1 x cpu (cpu), jax 0.10.2, matmul precision default'."""
    import jax

    d = jax.devices() if devices is None else list(devices)
    precision = getattr(jax.config, "jax_default_matmul_precision", None) or "default"
    return f"{len(d)} x {d[0].device_kind} ({d[0].platform}), jax {jax.__version__}, matmul precision {precision}"


def record_device(workdir: Path, devices=None) -> None:
    """Writes WORKDIR/device.txt, which `zoo export` puts on model cards, unless it exists: a
    resumed run keeps the device it started on. Only the writer process (process 0) writes."""
    from train import report
    from zoo.files import write_text_atomic

    path = Path(workdir) / "device.txt"
    if report.is_writer() and not path.exists():
        write_text_atomic(path, device_description(devices) + "\n")


def fields_from_export(name: str, pretrained: str | None, path=None) -> tuple[dict, dict]:
    """(variables, export fields) of shipped weights (`pretrained` tag) or an export (`path`)."""
    from zoo.pretrained import load, read_manifest

    manifest = read_manifest(name, pretrained, path=path)
    _, variables = load(name, pretrained, path=path)
    return variables, {key: manifest.get(key) for key in FIELDS}


def fields_from_run(name: str, workdir: Path, which: str | None, split: str, *, quality_n: int = 0) -> tuple:
    """(variables, export fields, step) of a run's best (or `which`) checkpoint, evaluated on `split`."""
    from train import gen_metrics, tasks
    from train.config import class_names_of
    from train.evaluate import evaluate_run, restore_workdir

    cfg, model, variables, step = restore_workdir(workdir, which)
    if cfg.model != name:
        raise ValueError(f"{workdir} holds a {cfg.model!r} run, not {name!r}")
    metrics = evaluate_run(cfg, model, variables, split, quality_n=quality_n)  # the checkpoint restored above
    metric = tasks.of_model(name).val_metric  # the metric the run was selected on
    command = recipe((workdir / "command.txt").read_text().split()) if (workdir / "command.txt").exists() else None
    fields = {
        # --classes sets num_classes when the model is built (config.build_model): the export must say so
        "model_overrides": {**cfg.model_overrides, **({"num_classes": len(cfg.classes)} if cfg.classes else {})},
        "dataset": dataset_name(cfg),
        "metric": {"name": metric, "value": metrics[metric], "split": split, "count": metrics["count"], "step": step},
        "command": command,
        "train_config": cfg.to_json(),
        # evaluate_run scored the samples where the task has a quality measure for its dataset
        "quality": ({**{k: metrics[k] for k in ("frechet", "confident_share", "classes_covered", "quality_n")},
                     "classifier": ".".join(gen_metrics.CLASSIFIER), "split": split} if "frechet" in metrics else None),
        "training": training_record(workdir, step),
        "class_names": class_names_of(cfg),  # None: the model's outputs are not named classes
    }
    return variables, fields, step


def training_record(workdir: Path, step: int) -> dict | None:
    """The run's device (device.txt) and wall time (its epoch times in metrics.jsonl up to `step`)."""
    device = (workdir / "device.txt").read_text().strip() if (workdir / "device.txt").exists() else None
    log = workdir / "metrics.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    epoch_s = [r["epoch_s"] for r in records if "epoch_s" in r and r.get("step", 0) <= step]
    if device is None and not epoch_s:
        return None
    return {"device": device, "wall_s": round(sum(epoch_s), 1) if epoch_s else None,
            "recorded": f"by zoo export from the run: device at its start, wall time = its epoch times up to step {step}"}
