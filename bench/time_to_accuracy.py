"""Time to accuracy: wall time for the MNIST CNN to reach a test accuracy (default 99.0%).

Two contestants, one process, same machine, same data already in memory:

    zoo    the zoo's fast recipe (ZOO_RECIPE below: batch, Adam, one-cycle schedule), trained
           the way the engine trains (train.tasks step, jit + donation, dispatch size of
           the engine: 1 step per call on CPU, a whole chunk under lax.scan on GPU).
    torch  the PyTorch tutorial recipe (Adam 1e-3, batch 64, constant rate) with tensors
           already on the device (bench/compare.py's "torch-mem" trainer).

Both are evaluated on the full 10,000-image test set at the same points, every
`--evals-per-epoch` of an epoch; the clock runs only while training (evaluation and the
first, compiling call are excluded and reported separately). Each side stops at the first
evaluation at or above the target, or after `--max-epochs`.

    python bench/time_to_accuracy.py                       # CPU here, or the GPU if jax sees one
    python bench/time_to_accuracy.py --target 0.99 --max-epochs 8

Writes bench/results/time_to_accuracy[_<device>].json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import compare  # noqa: E402  (bench/compare.py: the trainers and data loading)

# The zoo's fast CNN recipe: larger batch than the tutorial, Adam with a one-cycle schedule
# over `epochs` (the schedule needs the run length up front). CPU: batch 64, because XLA:CPU's
# cost per example rises past 64 (`python bench/cpu_probe.py batch`, results/cpu_probe.txt).
ZOO_RECIPE = {
    "cpu": dict(batch_size=64, lr=3e-3, schedule="onecycle", epochs=3),
    # GPU: bfloat16 compute (float32 parameters), batch 512: 0.16 s to 99.03% on an H200, against
    # 0.47 s for the float32 batch-256 recipe of the H100 round (bench/results/gpu/time_to_accuracy_h200.md)
    "gpu": dict(batch_size=512, lr=6e-3, schedule="onecycle", epochs=4, dtype="bfloat16"),
}


def race(trainer, steps_per_eval: int, max_evals: int, target: float, log) -> dict:
    """Trains in rounds of `steps_per_eval`, evaluating after each; returns the timeline."""
    first = trainer.run(trainer.spd)  # compile (zoo) / first step, untimed
    trained_s, steps, timeline = 0.0, trainer.spd, []
    reached = None
    for k in range(max_evals):
        todo = steps_per_eval - (steps if k == 0 else 0)
        trained_s += trainer.run(todo) if todo else 0.0
        steps += todo
        t0 = time.perf_counter()
        acc = trainer.evaluate()["accuracy"]
        eval_s = time.perf_counter() - t0
        timeline.append({"steps": steps, "examples": steps * trainer.batch, "train_s": trained_s, "accuracy": acc, "eval_s": eval_s})
        log(f"  {trainer.name}: {steps} steps, {trained_s:.2f} s training, test accuracy {acc:.4f}")
        if acc >= target:
            reached = timeline[-1]
            break
    # The first call's steps are counted as trained but its time is compile: add back a
    # steady-state estimate of them so both sides' clocks cover every step.
    per_step = trained_s / max(steps - trainer.spd, 1)
    for t in timeline:
        t["train_s"] += per_step * trainer.spd
    return {"first_call_s": first, "timeline": timeline, "reached": reached}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", type=float, default=0.99)
    p.add_argument("--max-epochs", type=int, default=6)
    p.add_argument("--evals-per-epoch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    p.add_argument("--zoo-recipe", type=json.loads, default=None,
                   help='JSON overrides of the zoo recipe, e.g. \'{"batch_size": 128, "epochs": 3}\'')
    p.add_argument("--zoo-grid", type=json.loads, default=None,
                   help="JSON list of zoo recipe overrides to race one after another; the fastest to the target is "
                        "the zoo side, every race is kept in the JSON")
    p.add_argument("--no-torch", dest="torch", action="store_false", help="race the zoo side(s) only")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)

    import jax
    import torch

    compare.setup_torch(args.threads)
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    backend = "cpu" if jax.default_backend() == "cpu" else "gpu"
    device = "CPU" if backend == "cpu" else jax.devices()[0].device_kind
    data = compare.load_mnist()
    n = len(data["train_x"])
    res = {"command": "python bench/time_to_accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "target": args.target, "device": device, "machine": compare.machine(),
           "versions": {"jax": jax.__version__, "torch": torch.__version__}, "torch_threads": torch.get_num_threads(),
           "jax_default_matmul_precision": jax.config.jax_default_matmul_precision or "default",
           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "sides": {}}

    from train.config import Config

    def zoo_race(overrides: dict) -> dict:
        recipe = {**ZOO_RECIPE[backend], **overrides}
        spe = n // recipe["batch_size"]
        per_eval = spe // args.evals_per_epoch
        chunk = 1 if backend == "cpu" else per_eval  # GPU: one dispatch per evaluation interval
        log(f"zoo recipe {recipe} on {device}: {per_eval} steps between evaluations")
        cfg = Config(model="cnn", dataset="mnist", optimizer="adam", **recipe)
        tr = compare.ZooTrainer("cnn", data, cfg=cfg, total_steps=spe * recipe["epochs"], steps_per_dispatch=chunk)
        return {"recipe": recipe, **race(tr, per_eval, min(args.max_epochs, recipe["epochs"]) * args.evals_per_epoch,
                                         args.target, log)}

    if args.zoo_grid:
        res["zoo_grid"] = []
        partial = Path(args.out) / "time_to_accuracy_grid_partial.json"
        partial.parent.mkdir(parents=True, exist_ok=True)
        for g in args.zoo_grid:  # each race saved as it ends: a cut-off run keeps what it measured
            res["zoo_grid"].append(zoo_race({**(args.zoo_recipe or {}), **g}))
            partial.write_text(json.dumps(res, indent=2))
        reached = [r for r in res["zoo_grid"] if r["reached"]]
        res["sides"]["zoo"] = min(reached, key=lambda r: r["reached"]["train_s"]) if reached else res["zoo_grid"][0]
    else:
        res["sides"]["zoo"] = zoo_race(args.zoo_recipe or {})
    if not args.torch:
        res["sides"]["torch"] = {"recipe": "not run (--no-torch)", "first_call_s": float("nan"), "reached": None}

    if args.torch:
        race_torch(res, data, n, args, log)
    finish(res, args, backend, device, log)


def race_torch(res: dict, data: dict, n: int, args, log) -> None:
    # Warm PyTorch up on a throwaway model first (its first few hundred steps run slower
    # while oneDNN/cuDNN and the allocator settle; measured: 13.8 s vs 4 s for the first 234).
    warm = compare.TorchTrainer("cnn", data, loader=False)
    warm.run(300)
    del warm
    torch_tr = compare.TorchTrainer("cnn", data, loader=False)
    tutorial = {"batch_size": torch_tr.batch, "lr": compare.RECIPES["cnn"]["lr"], "schedule": "constant", "optimizer": "adam"}
    per_eval_t = (n // torch_tr.batch) // args.evals_per_epoch
    log(f"torch tutorial recipe {tutorial} on {torch_tr.device}: {per_eval_t} steps between evaluations")
    res["sides"]["torch"] = {"recipe": tutorial, "device": str(torch_tr.device),
                             **race(torch_tr, per_eval_t, args.max_epochs * args.evals_per_epoch, args.target, log)}


def finish(res: dict, args, backend: str, device: str, log) -> None:
    z, t = res["sides"]["zoo"]["reached"], res["sides"]["torch"]["reached"]
    res["ratio_zoo_over_torch"] = z["train_s"] / t["train_s"] if z and t else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if backend == "cpu" else "_gpu"
    (out / f"time_to_accuracy{suffix}.json").write_text(json.dumps(res, indent=2))
    cell = lambda r: f"{r['train_s']:.2f} s ({r['examples']:,} examples, {100 * r['accuracy']:.2f}%)" if r else "not reached"  # noqa: E731
    lines = [f"Time to {100 * args.target:.1f}% MNIST test accuracy on {device} (training time only; compile and evaluation excluded)", "",
             "| side | recipe | time to target | first call (compile) s | target incl. compile s |", "|---|---|---|---|---|"]
    rows = [("zoo", res["sides"]["zoo"]), ("torch", res["sides"]["torch"])]
    rows += [("zoo grid", r) for r in res.get("zoo_grid", []) if r is not res["sides"]["zoo"]]
    for side, r in rows:
        total = f"{r['reached']['train_s'] + r['first_call_s']:.2f}" if r["reached"] else "-"
        lines.append(f"| {side} | {r['recipe']} | {cell(r['reached'])} | {r['first_call_s']:.2f} | {total} |")
    ratio = res["ratio_zoo_over_torch"]
    lines += ["", f"zoo / torch time: {ratio:.2f}" if ratio else "zoo / torch time: n/a (a side did not reach the target)"]
    (out / f"time_to_accuracy{suffix}.md").write_text("\n".join(lines) + "\n")
    log("\n".join(lines))


if __name__ == "__main__":
    main()
