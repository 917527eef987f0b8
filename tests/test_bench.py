"""Smoke tests of the benchmark scripts on real MNIST (tiny settings): they run end to end
and write the files the README's tables are built from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from train import config

ROOT = Path(__file__).resolve().parents[1]


def _run(args, env, cwd):
    out = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow  # fresh processes per model for compile and memory
def test_compare_runs_and_writes_tables(tfds_dir, cli_env, tmp_path):
    env = {**cli_env, "TFDS_DATA_DIR": str(tfds_dir)}
    _run([str(ROOT / "bench" / "compare.py"), "--models", "mlp", "--steps", "3", "--repeats", "1",
          "--no-memory", "--no-eval", "--out", str(tmp_path)], env, tmp_path)
    res = json.loads((tmp_path / "compare.json").read_text())
    mlp = res["models"]["mlp"]
    assert set(mlp["sides"]) == {"zoo", "torch_mem", "torch_dl"}
    assert mlp["epoch_time"] == "extrapolated" and mlp["speedup_vs_mem"]["median"] > 0
    assert "| mlp | 100 |" in (tmp_path / "compare.md").read_text()


@pytest.mark.slow  # whole training processes on both sides
def test_time_to_accuracy_races_both_sides(tfds_dir, cli_env, tmp_path):
    env = {**cli_env, "TFDS_DATA_DIR": str(tfds_dir)}
    _run([str(ROOT / "bench" / "time_to_accuracy.py"), "--target", "0.5", "--max-epochs", "1",
          "--evals-per-epoch", "8", "--out", str(tmp_path)], env, tmp_path)
    res = json.loads((tmp_path / "time_to_accuracy.json").read_text())
    for side in ("zoo", "torch"):
        reached = res["sides"][side]["reached"]
        assert reached and reached["accuracy"] >= 0.5 and reached["train_s"] > 0
    assert res["ratio_zoo_over_torch"] > 0


@pytest.mark.slow  # several whole races
def test_time_to_accuracy_grid_keeps_every_race(tfds_dir, cli_env, tmp_path):
    env = {**cli_env, "TFDS_DATA_DIR": str(tfds_dir)}
    _run([str(ROOT / "bench" / "time_to_accuracy.py"), "--target", "0.3", "--max-epochs", "1", "--no-torch",
          "--evals-per-epoch", "20", "--zoo-grid", '[{"batch_size": 64}, {"batch_size": 128, "dtype": "bfloat16"}]',
          "--out", str(tmp_path)], env, tmp_path)
    res = json.loads((tmp_path / "time_to_accuracy.json").read_text())
    assert [r["recipe"]["batch_size"] for r in res["zoo_grid"]] == [64, 128]
    assert res["sides"]["zoo"] in res["zoo_grid"] and res["sides"]["zoo"]["reached"]
    assert "zoo grid" in (tmp_path / "time_to_accuracy.md").read_text()


@pytest.mark.slow  # whole zoo and PyTorch processes, cold and warm
def test_end_to_end_times_both_whole_processes(tfds_dir, cli_env, tmp_path):
    env = {**cli_env, "TFDS_DATA_DIR": str(tfds_dir)}
    _run([str(ROOT / "bench" / "end_to_end.py"), "--models", "mlp", "--epochs", "2", "--warm",
          "--zoo-args", "--train-limit 1024 --val-size 512", "--variant", "plain={}", "--out", str(tmp_path)],
         env, tmp_path)
    res = json.loads((tmp_path / "end_to_end.json").read_text())
    mlp = res["models"]["mlp"]
    cold, warm = mlp["zoo"]["plain"]["cold"], mlp["zoo"]["plain"]["warm"]
    assert "error" not in cold and "error" not in warm, (cold, warm)
    assert cold["epochs"] == 2 and cold["wall_s"] > cold["train_s"] > 0 and 0 < cold["metric"] <= 1
    torch = mlp["torch"]
    assert "error" not in torch, torch
    assert torch["steps"] == 2 * (1024 // mlp["recipe"]["batch"]) and 0 < torch["metric"]["accuracy"] <= 1
    assert torch["torch_s"] < torch["wall_s"]
    assert "| mlp | 2 | plain |" in (tmp_path / "end_to_end.md").read_text()


@pytest.mark.slow  # a whole process: jax and torch imports, two compiled models, two races (~40 s on 2 cores)
def test_time_to_quality_quick_races_and_records_unreached_targets(tfds_dir, cli_env, tmp_path):
    env = {**cli_env, "TFDS_DATA_DIR": str(tfds_dir)}
    _run([str(ROOT / "bench" / "time_to_quality.py"), "--quick", "--models", "mlp_small,autoencoder",
          "--gan-seeds", "2", "--out", str(tmp_path)], env, tmp_path)
    res = json.loads((tmp_path / "time_to_quality.json").read_text())
    assert res["quick"] and [r["model"] for r in res["races"]] == ["mlp_small", "autoencoder"]
    small, auto = res["races"]
    # zoo races with the model's fast recipe where it has one, else its default one
    assert small["zoo_recipe"]["recipe"] == "default" and auto["zoo_recipe"]["recipe"] == "fast"
    assert auto["zoo_recipe"]["batch_size"] == config.recipe("autoencoder", "fast")["batch_size"]
    for row in res["races"]:
        assert row["zoo_step_compiles"] == 1  # the clock never covers a recompilation
        for side in ("zoo", "torch"):
            s = row[side]
            assert s["train_s"] > 0 and s["first_call_s"] > 0 and s["overhead_s"] > s["first_call_s"]
            assert s["evaluations"] == len(s["timeline"]) >= 1
            assert all(p["eval_s"] > 0 and p["train_s"] > 0 for p in s["timeline"])
    # 2,048 training images and a 3 s budget: 97.5% is out of reach, and the row says so
    for side in ("zoo", "torch"):
        s = small[side]
        assert not s["reached"] and s["time_s"] is None and s["stopped"] in ("budget", "end of recipe", "max epochs")
        accs = [p["accuracy"] for p in s["timeline"]]
        assert s["best"] == max(accs) and 0.1 < s["best"] < 0.975
    # real evaluations: zoo runs its whole 15-epoch recipe (a twin under load may get only one)
    assert len({p["accuracy"] for p in small["zoo"]["timeline"]}) > 1
    assert small["ratio"] is None
    # the relative target: the twin's test MSE after its (quick: 1) tutorial epoch
    twin = auto["torch"]
    assert auto["target_from"] == "twin" and twin["reached"] and twin["stopped"] == "tutorial epochs"
    assert auto["target"] == twin["quality"] == twin["timeline"][-1]["mse"] and 0 < auto["target"] < 0.25
    assert twin["epochs"] == 1.0 and twin["time_s"] == twin["timeline"][-1]["train_s"]
    z = auto["zoo"]
    if z["reached"]:
        assert z["quality"] <= auto["target"] and auto["ratio"] == z["time_s"] / twin["time_s"]
    table = (tmp_path / "time_to_quality.md").read_text()
    assert "| mlp_small | 0 | accuracy >= 0.9750 | not reached (" in table and "| autoencoder | 0 | mse <= " in table
    # the DCGAN comparison: the twin and zoo's two recipes, equal epochs, per seed, scored alike
    gan = json.loads((tmp_path / "dcgan_vs_twin.json").read_text())["gan"]
    assert gan["sides"] == ["torch", "zoo_default", "zoo_fast"] and len(gan["seeds"]) == 2
    for row in gan["seeds"]:
        assert row["recipes"]["zoo_default"]["recipe"] == "default" and row["recipes"]["zoo_fast"]["recipe"] == "fast"
        assert all(r["epochs"] == gan["epochs"] == 1 for r in row["recipes"].values())  # a schedule spans the compared epochs
        for side in gan["sides"]:
            assert row[side]["frechet"] > 0 and row[side]["quality_n"] == gan["quality_n"] and row[f"{side}_train_s"] > 0
    for side in gan["sides"]:
        vals = [row[side]["frechet"] for row in gan["seeds"]]
        assert gan[side]["frechet_mean"] == pytest.approx(sum(vals) / 2) and gan[side]["frechet_min"] == min(vals)
    assert gan["below_twin"]["zoo_fast"] == (gan["zoo_fast"]["frechet_mean"] < gan["torch"]["frechet_mean"])
    assert "| zoo_fast | fast: batch " in (tmp_path / "dcgan_vs_twin.md").read_text()
