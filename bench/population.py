"""Population throughput: K members trained in one program (train/population.py) against K
separate runs of `train.loop.fit` with the same values (what K `zoo train` runs do).

    python bench/population.py                      # CPU mode: K=8 mlp, 1 epoch, population vs 8 sequential runs
    python bench/population.py --train-limit 12800  # the same on a cut epoch
    python bench/population.py --gpu-sweep          # K=1,8,32 for mlp and cnn: wall per epoch, ratio to K=1

Members differ in lr (log-spaced) and seed. Data comes from train.data.load_split (TFDS, or its
npz array cache without tensorflow). Timing: `epoch_s` is the engine's own epoch timer, which
includes the first (compiling) dispatch; `steady_s` is epoch_s minus that first dispatch on CPU
(1 step per dispatch), and the second epoch's epoch_s in --gpu-sweep (a whole epoch is one
dispatch there). `wall_s` is everything: init, compile, train, eval, checkpoints.

Writes population_<mode>_<device>.json under --out (default bench/results/) and prints it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from train import loop, population, tasks  # noqa: E402
from train.config import resolve  # noqa: E402


def member_configs(model: str, k: int, args, epochs: int) -> list:
    """K configs of `model`'s recipe: lr log-spaced over [3e-4, 3e-3], seeds 0..K-1."""
    lrs = np.geomspace(3e-4, 3e-3, k) if k > 1 else [1e-3]
    return [resolve(model, {"epochs": epochs, "lr": float(lr), "seed": i, "data_dir": args.data_dir,
                            "train_limit": args.train_limit, "sample_every": 0, "num_devices": 1,
                            "log_every": 1000, "checkpoint_every": epochs})
            for i, lr in enumerate(lrs)]


def _quiet(message: str) -> None:
    pass


def run_population(cfgs, splits, task, workdir: Path) -> dict:
    t0 = time.perf_counter()
    result = population.fit_population(cfgs, [workdir / f"member{i}" for i in range(len(cfgs))], log=_quiet,
                                       task=task, splits=splits)
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (workdir / "member0" / "metrics.jsonl").read_text().splitlines()]
    return {"wall_s": wall, "records": records, "val": [m.record[f"val_{task.val_metric}"] for m in result.members]}


def cpu_mode(args) -> dict:
    """K mlp members for one epoch: one population vs K sequential loop.fit runs."""
    k, model = args.k, "mlp"
    cfgs = member_configs(model, k, args, epochs=1)
    task = tasks.of_model(model)
    splits = tasks.load_splits(task, cfgs[0])
    steps = len(splits.train["x"]) // cfgs[0].batch_size
    with tempfile.TemporaryDirectory() as tmp:
        pop = run_population(cfgs, splits, task, Path(tmp) / "population")
        seq_wall, seq_epoch, seq_compile, seq_val = 0.0, 0.0, 0.0, []
        for i, cfg in enumerate(cfgs):
            t0 = time.perf_counter()
            r = loop.fit(cfg, Path(tmp) / f"run{i}", log=_quiet, task=task, splits=splits)
            seq_wall += time.perf_counter() - t0
            seq_epoch += r.record["epoch_s"]
            seq_compile += r.record["compile_s"]
            seq_val.append(r.record[f"val_{task.val_metric}"])
    rec = pop["records"][0]
    pop_steady = rec["epoch_s"] - rec["compile_s"]
    examples = steps * cfgs[0].batch_size
    return {
        "model": model, "k": k, "epochs": 1, "steps_per_epoch": steps, "batch_size": cfgs[0].batch_size,
        "train_limit": args.train_limit,
        "population": {"wall_s": pop["wall_s"], "epoch_s": rec["epoch_s"], "compile_s": rec["compile_s"],
                       "steady_s": pop_steady, "examples_per_s_per_member": examples / pop_steady},
        "sequential": {"wall_s": seq_wall, "epoch_s": seq_epoch, "compile_s": seq_compile,
                       "steady_s": seq_epoch - seq_compile,
                       "examples_per_s_per_run": examples * k / (seq_epoch - seq_compile)},
        "wall_ratio_sequential_over_population": seq_wall / pop["wall_s"],
        "steady_ratio_sequential_over_population": (seq_epoch - seq_compile) / pop_steady,
        "max_val_difference": float(np.max(np.abs(np.asarray(pop["val"]) - np.asarray(seq_val)))),
    }


def gpu_sweep(args) -> dict:
    """K = 1, 8, 32 members of mlp and cnn for 2 epochs; the second epoch's wall per K."""
    out = {}
    for model in args.models:
        task = tasks.of_model(model)
        rows = []
        splits = None
        for k in args.ks:
            cfgs = member_configs(model, k, args, epochs=2)
            splits = splits or tasks.load_splits(task, cfgs[0])
            with tempfile.TemporaryDirectory() as tmp:
                pop = run_population(cfgs, splits, task, Path(tmp))
            first, second = pop["records"][0], pop["records"][-1]
            steps = len(splits.train["x"]) // cfgs[0].batch_size
            rows.append({"k": k, "wall_s": pop["wall_s"], "first_epoch_s": first["epoch_s"],
                         "epoch_s": second["epoch_s"], "steps_per_epoch": steps, "batch_size": cfgs[0].batch_size,
                         "examples_per_s_per_member": steps * cfgs[0].batch_size / second["epoch_s"]})
            print(f"{model} K={k}: epoch {second['epoch_s']:.3f} s (first {first['epoch_s']:.2f} s), "
                  f"wall {pop['wall_s']:.1f} s", flush=True)
        for row in rows:
            row["epoch_ratio_to_k1"] = row["epoch_s"] / rows[0]["epoch_s"]
        out[model] = rows
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu-sweep", action="store_true", help="K=1,8,32 for mlp and cnn (for an accelerator)")
    parser.add_argument("--k", type=int, default=8, help="members in the CPU mode [8]")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 8, 32], help="members in --gpu-sweep [1 8 32]")
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], help="models in --gpu-sweep [mlp cnn]")
    parser.add_argument("--train-limit", type=int, default=0, help="cut the epoch to N examples (0: all)")
    parser.add_argument("--data-dir", help="TFDS data dir (or one holding its zoo_arrays npz cache)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    device = jax.devices()[0]
    result = {"mode": "gpu-sweep" if args.gpu_sweep else "cpu", "device": device.device_kind,
              "platform": device.platform, "devices_used": 1, "jax": jax.__version__, "python": platform.python_version(),
              "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    result.update({"models": gpu_sweep(args)} if args.gpu_sweep else cpu_mode(args))
    result["total_s"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"population_{'gpu' if args.gpu_sweep else 'cpu'}_{device.platform}.json"
    (args.out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
