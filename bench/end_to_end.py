"""End to end: `zoo train MODEL` as a whole process vs the PyTorch twin's whole process.

What a user waits for, side by side in one run: interpreter start, imports, data, compile,
training, per-epoch validation (and for zoo its checkpoints and logs).

    zoo    `python -m train.cli train MODEL --workdir TMP [--epochs E] [extra flags]`, the model's
           own recipe (train/configs/MODEL.json). A fresh persistent compilation cache per run
           (cold); `--warm` runs it again on the cache the cold run filled. `--variant NAME=JSON`
           (repeatable) sets ZOO_XLA_OPTIONS for that run (train/parallel.py), to A/B XLA options.
           The compile time is read from metrics.jsonl: the first dispatch of epoch 1 minus the
           first dispatch of epoch 2 (on an accelerator a dispatch is a whole epoch, so the epoch's
           run time cancels); with one epoch, epoch 1's first dispatch (an upper bound).
    torch  this script's `--_torch` child: the PyTorch twin (zoo.torch_model, same architecture),
           same batch size, Adam (lr, betas), schedule (constant or per-step cosine), gradient
           clipping, epochs, train/validation split, validation after each epoch; tensors in
           memory on the device. The twin is built from the flax definition, so the child imports
           zoo (and with it jax); that import is timed and subtracted (`torch_s`), since a PyTorch
           script would define its network inline. Both the raw wall and the corrected one are kept.

    python bench/end_to_end.py --models cnn lstm autoencoder --epochs 1          # CPU target
    python bench/end_to_end.py --warm --variant default={} \\
        --variant autotune0='{"xla_gpu_autotune_level": 0}'                     # GPU, default recipes

Writes OUT/end_to_end[_TAG].json and .md (default OUT bench/results).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import compare  # noqa: E402  (the PyTorch twins' trainer, the machine description)

MODELS = ("mlp", "cnn", "lstm", "autoencoder", "dcgan")
METRICS = {"mlp": "val_accuracy", "cnn": "val_accuracy", "lstm": "val_accuracy", "autoencoder": "val_mse",
           "dcgan": None}


def recipe(model: str, epochs: int | None, extra: list[str]) -> dict:
    """The zoo recipe the CLI will train (defaults, train/configs/MODEL.json, flags) as plain values."""
    from train import cli
    from train.config import tfds_val_size

    args = cli.build_parser().parse_args(["train", model, *(["--epochs", str(epochs)] if epochs else []), *extra])
    cfg = cli.train_config(args)
    if cfg.optimizer != "adam":
        raise ValueError(f"{model}: the PyTorch twin trains Adam; the recipe uses {cfg.optimizer!r}")
    return {"epochs": cfg.epochs, "batch": cfg.batch_size, "lr": cfg.lr, "betas": (cfg.b1, 0.999),
            "schedule": cfg.schedule, "clip_norm": cfg.clip_norm, "val_size": tfds_val_size(cfg), "dtype": cfg.dtype,
            "train_limit": cfg.train_limit}


def _pythonpath() -> str:
    """This checkout first, then whatever PYTHONPATH already holds (a GPU box's wheels)."""
    return os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])


# ------------------------------------------------------------------------------------------ zoo side


def zoo_run(model: str, epochs: int | None, extra: list[str], cache: str, options: str, tmp: str) -> dict:
    workdir = tempfile.mkdtemp(prefix=f"wd_{model}_", dir=tmp)
    cmd = [sys.executable, "-m", "train.cli", "train", model, "--workdir", workdir,
           *(["--epochs", str(epochs)] if epochs else []), *extra]
    env = {**os.environ, "ZOO_COMPILATION_CACHE": cache, "ZOO_XLA_OPTIONS": options, "PYTHONPATH": _pythonpath(),
           "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return {"error": (p.stdout + p.stderr)[-3000:], "wall_s": wall}
    records = [json.loads(line) for line in Path(workdir, "metrics.jsonl").read_text().splitlines()]
    first = [r.get("compile_s", 0.0) for r in records]
    compile_s = first[0] - first[1] if len(first) > 1 else first[0]
    metric = METRICS[model]
    return {"wall_s": wall, "compile_s": compile_s, "first_dispatch_s": first,
            "train_s": sum(r.get("epoch_s", 0.0) for r in records),
            "metric": records[-1].get(metric) if metric else None, "epochs": len(records)}


# ------------------------------------------------------------------------------------------ torch side


def child_torch(model: str, rec: dict, npz: str) -> dict:
    """The PyTorch twin's whole run; prints phase times (this process's own clock)."""
    t0 = time.perf_counter()
    import torch

    info = compare.setup_torch(int(os.environ.get("ZOO_BENCH_TORCH_THREADS", "0")) or torch.get_num_threads())
    t_torch = time.perf_counter()
    import zoo  # noqa: F401  (the twin is built from the flax definition: imports jax/flax)

    zoo_import_s = time.perf_counter() - t_torch
    d = np.load(npz)
    n_val = rec["val_size"] if model != "dcgan" else 0
    x, y = d["train_x"], d["train_y"]
    cut = len(x) - n_val
    if rec["train_limit"]:  # as the engine: the first train_limit examples of the training part
        cut = min(cut, rec["train_limit"])
    data = {"train_x": x[:cut], "train_y": y[:cut], "test_x": x[cut:] if n_val else d["test_x"][:1000],
            "test_y": y[cut:] if n_val else d["test_y"][:1000]}
    tr = compare.TorchTrainer(model, data, loader=False, recipe=rec)
    steps = tr.n // tr.batch  # the engine drops the last partial batch
    total = steps * rec["epochs"]
    if model != "dcgan":
        base_step = tr._step
        sched = None
        if rec["schedule"] == "cosine":
            sched = torch.optim.lr_scheduler.LambdaLR(tr.opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total)))
        elif rec["schedule"] != "constant":
            raise ValueError(f"{model}: schedule {rec['schedule']!r} has no twin here")

        def step(xb, yb):
            if not rec["clip_norm"]:
                loss = base_step(xb, yb)
            else:  # as the zoo chain: clip the global norm, then Adam
                tr.opt.zero_grad()
                out = tr.net(xb)
                loss = tr.criterion(out, xb) if model == "autoencoder" else tr.criterion(out, yb)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(tr.net.parameters(), rec["clip_norm"])
                tr.opt.step()
            if sched is not None:
                sched.step()
            return loss

        tr._step = step
    t_ready = time.perf_counter()
    metric = None
    for _ in range(rec["epochs"]):
        tr.run(steps)
        metric = tr.evaluate()  # the validation split (test split for dcgan: nothing to score)
    t_end = time.perf_counter()
    return {"torch_import_s": t_torch - t0, "zoo_import_s": zoo_import_s, "setup_s": t_ready - t_torch - zoo_import_s,
            "train_eval_s": t_end - t_ready, "metric": metric, "steps": total, **info}


def torch_run(model: str, rec: dict, npz: str) -> dict:
    cmd = [sys.executable, __file__, "--_torch", model, json.dumps(rec), npz]
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return {"error": p.stderr[-3000:], "wall_s": wall}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["wall_s"] = wall
    out["torch_s"] = wall - out["zoo_import_s"]  # the twin's definition costs a PyTorch script nothing
    return out


# ------------------------------------------------------------------------------------------ main


def write_md(res: dict, path: Path) -> None:
    lines = [f"# End to end: `zoo train` vs the PyTorch twin, whole processes ({res['device']})", "",
             f"Machine: {res['machine']}. Command: `{res['command']}`.", "",
             "zoo: `python -m train.cli train MODEL` (its recipe), fresh compilation cache (cold), then the same "
             "cache (warm). torch: the twin's whole process minus its import of zoo/jax (which only builds the "
             "twin). speedup = torch / zoo wall.", "",
             "| model | epochs | variant | zoo cold s | compile cold s | zoo warm s | compile warm s | torch s | "
             "speedup cold | speedup warm | zoo metric | torch metric |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, m in res["models"].items():
        t = m.get("torch", {})
        ts = t.get("torch_s")
        tm = t.get("metric") or {}
        for name, v in m["zoo"].items():
            c, w = v.get("cold", {}), v.get("warm", {})
            f = lambda d, k: "err" if "error" in d else ("-" if d.get(k) is None else f"{d[k]:.2f}")  # noqa: E731
            sp = lambda d: "-" if ts is None or "wall_s" not in d or "error" in d else f"{ts / d['wall_s']:.2f}x"  # noqa: E731
            metric = c.get("metric")
            lines.append(f"| {model} | {m['recipe']['epochs']} | {name} | {f(c, 'wall_s')} | {f(c, 'compile_s')} | "
                         f"{f(w, 'wall_s') if w else '-'} | {f(w, 'compile_s') if w else '-'} | "
                         f"{'err' if 'error' in t else ('-' if ts is None else f'{ts:.2f}')} | {sp(c)} | "
                         f"{sp(w) if w else '-'} | {'-' if metric is None else f'{metric:.4f}'} | "
                         f"{', '.join(f'{k} {v:.4f}' for k, v in tm.items()) or '-'} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                   help="a ZOO_XLA_OPTIONS setting to run zoo with (repeatable; default: one run, the engine's options)")
    p.add_argument("--warm", action="store_true", help="also run zoo on the cache its cold run filled")
    p.add_argument("--no-torch", dest="torch", action="store_false")
    p.add_argument("--zoo-args", default="", help="extra `zoo train` flags, e.g. '--dtype bfloat16'")
    p.add_argument("--tag", default="")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--_torch", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._torch:
        model, rec, npz = args._torch
        print(json.dumps(child_torch(model, json.loads(rec), npz)))
        return
    variants = {}
    for item in args.variant or ["engine="]:
        name, _, raw = item.partition("=")
        if raw:
            json.loads(raw)  # fails here, not in a child
        variants[name] = raw
    extra = args.zoo_args.split()
    import jax

    device = jax.devices()[0].device_kind
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "end_to_end" + (f"_{args.tag}" if args.tag else "")
    res = {"device": device, "machine": compare.machine(), "command": "python bench/end_to_end.py " + " ".join(argv or sys.argv[1:]),
           "models": {}}
    with tempfile.TemporaryDirectory(prefix="e2e_") as tmp:
        npz = str(Path(tmp) / "mnist.npz")
        np.savez(npz, **compare.load_mnist())
        for model in args.models:
            rec = recipe(model, args.epochs, extra)
            m = res["models"][model] = {"recipe": rec, "zoo": {}}
            for name, options in variants.items():
                cache = tempfile.mkdtemp(prefix="cache_", dir=tmp)
                v = m["zoo"][name] = {"cold": zoo_run(model, args.epochs, extra, cache, options, tmp)}
                if args.warm:
                    v["warm"] = zoo_run(model, args.epochs, extra, cache, options, tmp)
                print(f"[{model}] zoo {name}: {json.dumps(v)[:600]}", flush=True)
            if args.torch:
                m["torch"] = torch_run(model, rec, npz)
                print(f"[{model}] torch: {json.dumps(m['torch'])[:600]}", flush=True)
            (out_dir / f"{stem}.json").write_text(json.dumps(res, indent=1))
            write_md(res, out_dir / f"{stem}.md")
    print((out_dir / f"{stem}.md").read_text())


if __name__ == "__main__":
    main()
