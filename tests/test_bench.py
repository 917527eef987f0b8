"""Smoke tests of the benchmark scripts on real MNIST (tiny settings): they run end to end
and write the files the README's tables are built from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args, env, cwd):
    out = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


def test_compare_runs_and_writes_tables(tfds_dir, cli_env, tmp_path):
    env = {**cli_env, "TFDS_DATA_DIR": str(tfds_dir)}
    _run([str(ROOT / "bench" / "compare.py"), "--models", "mlp", "--steps", "3", "--repeats", "1",
          "--no-memory", "--no-eval", "--out", str(tmp_path)], env, tmp_path)
    res = json.loads((tmp_path / "compare.json").read_text())
    mlp = res["models"]["mlp"]
    assert set(mlp["sides"]) == {"zoo", "torch_mem", "torch_dl"}
    assert mlp["epoch_time"] == "extrapolated" and mlp["speedup_vs_mem"]["median"] > 0
    assert "| mlp | 100 |" in (tmp_path / "compare.md").read_text()


def test_time_to_accuracy_races_both_sides(tfds_dir, cli_env, tmp_path):
    env = {**cli_env, "TFDS_DATA_DIR": str(tfds_dir)}
    _run([str(ROOT / "bench" / "time_to_accuracy.py"), "--target", "0.5", "--max-epochs", "1",
          "--evals-per-epoch", "8", "--out", str(tmp_path)], env, tmp_path)
    res = json.loads((tmp_path / "time_to_accuracy.json").read_text())
    for side in ("zoo", "torch"):
        reached = res["sides"][side]["reached"]
        assert reached and reached["accuracy"] >= 0.5 and reached["train_s"] > 0
    assert res["ratio_zoo_over_torch"] > 0
