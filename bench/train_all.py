"""Trains every default recipe, evaluates it on the test split, and (optionally) publishes the weights.

This is the script behind the README's accuracy table: it runs the real CLI
(`zoo train`, then `zoo export`) for each model, timing the wall clock, and writes
bench/results/train_all.json and a markdown table.

    python bench/train_all.py                      # all recipes into runs/
    python bench/train_all.py cnn mlp --publish    # some models, published as pretrained weights in zoo/weights

Extra `zoo train` flags per entry are listed in RUNS (e.g. the augmented CNN).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (registry model, extra train flags, tag to publish under, extra export flags)
RUNS = {
    "cnn": ("cnn", [], "mnist", []),
    "mlp": ("mlp", [], "mnist", []),
    "mlp_small": ("mlp_small", [], "mnist", []),
    "lstm": ("lstm", [], "mnist", []),
    "autoencoder": ("autoencoder", [], "mnist", []),
    "char_lstm": ("char_lstm", [], "tiny_shakespeare", ["--split", "validation"]),
    "dcgan": ("dcgan", ["--epochs", "50"], "mnist", ["--which", "latest"]),
    "cnn_aug": ("cnn", ["--epochs", "10", "--augment-rotate", "10", "--augment-shift", "2"], "mnist_aug", []),
    "multitask": ("multitask", [], "mnist", []),
    "mlp_binary": ("mlp_binary", [], "mnist_parity", []),
}


def device() -> str:
    """The accelerator the child runs train on, e.g. "1 x NVIDIA H100 80GB HBM3 (gpu), jax 0.11.2, ...".

    Asked in a separate process: importing jax here would claim the GPU's memory before the children.
    """
    code = (
        "import jax; d = jax.devices(); p = getattr(jax.config, 'jax_default_matmul_precision', None) or 'default'; "
        "print(f'{len(d)} x {d[0].device_kind} ({d[0].platform}), jax {jax.__version__}, matmul precision {p}')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    lines = out.stdout.strip().splitlines()
    return lines[-1] if out.returncode == 0 and lines else "unknown"


def run(cmd: list[str], log: Path) -> float:
    t = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    return time.perf_counter() - t


def markdown_table(results: dict) -> str:
    """bench/results/train_all.md: one row per recorded run."""
    lines = ["| run | command | metric (test; char_lstm: validation) | train wall time | device |", "|---|---|---|---|---|"]
    for name, r in results.items():
        m = r["metric"]
        value = f"{100 * m['value']:.2f}%" if "accuracy" in m["name"] else f"{m['value']:.4f}"
        cmd = " ".join(["zoo train", r["model"], *r["flags"]])
        lines.append(f"| {name} | `{cmd}` | {m['name']} {value} | {r['train_wall_s']:.0f} s | {r.get('device', 'not recorded')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", default=list(RUNS))
    parser.add_argument("--runs", default="runs", help="parent of the workdirs")
    parser.add_argument("--publish", action="store_true", help="publish the exports as pretrained weights in zoo/weights (MODEL.TAG)")
    args = parser.parse_args()
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "train_all.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    zoo_cli = [sys.executable, "-m", "train.cli"]
    accelerator = device()
    print(f"device: {accelerator}", flush=True)
    for name in args.names:
        model, flags, tag, export_flags = RUNS[name]
        workdir = Path(args.runs) / name
        log = Path(args.runs) / f"{name}.log"
        workdir.parent.mkdir(parents=True, exist_ok=True)
        try:
            train_s = run(zoo_cli + ["train", model, "--workdir", str(workdir), *flags], log)
        except subprocess.CalledProcessError as e:
            print(f"{name}: training failed ({e}); see {log}", flush=True)
            continue
        export_dir = Path(args.runs) / f"{name}.export"
        export_cmd = zoo_cli + ["export", model, str(export_dir), "--workdir", str(workdir), "--overwrite", *export_flags]
        if args.publish:
            export_cmd += ["--publish", tag]
        try:
            run(export_cmd, log)
        except subprocess.CalledProcessError as e:
            print(f"{name}: export failed ({e}); see {log}", flush=True)
            continue
        manifest = json.loads((export_dir / "manifest.json").read_text())
        results[name] = {
            "model": model,
            "flags": flags,
            "metric": manifest["metric"],
            "train_wall_s": round(train_s, 1),
            "tag": f"{model}.{tag}",
            "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_version()}",
            "device": accelerator,
        }
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        m = manifest["metric"]
        print(f"{name}: {m['name']}={m['value']:.4f} on {m['split']} in {train_s:.0f}s", flush=True)
    table = markdown_table(results)
    (out_dir / "train_all.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
