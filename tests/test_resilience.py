"""Real `zoo train` processes stopped by SIGTERM and by kill -9 resume; --init-from fine-tunes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cmd(data_dir, workdir, *extra):
    return [
        sys.executable, "-m", "train.cli", "train", "cnn", "--data-dir", str(data_dir), "--workdir", str(workdir),
        "--epochs", "3", "--train-limit", "1024", "--val-size", "256", "--batch-size", "32", "--log-every", "1",
        "--checkpoint-steps", "8", *extra,
    ]


def _start(cmd, env):
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint(workdir: Path, proc, timeout=240):
    """Blocks until the run has finalized at least one checkpoint (a numbered step dir)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = [p for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
        if steps:
            return
        if proc.poll() is not None:
            pytest.fail(f"run ended before its first checkpoint:\n{proc.stdout.read()}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail("no checkpoint appeared in time")


def _finish(cmd, env):
    result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _final_step(workdir: Path) -> int:
    return json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])["step"]


@pytest.mark.slow  # a CLI run signalled, then resumed
def test_sigterm_saves_exits_0_and_resumes(tfds_dir, cli_env, tmp_path):
    workdir = tmp_path / "w"
    cmd = _cmd(tfds_dir, workdir)
    proc = _start(cmd, cli_env)
    _wait_for_checkpoint(workdir, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "preempted" in out
    out = _finish(cmd, cli_env)
    assert "resumed from step" in out
    assert _final_step(workdir) == 3 * (1024 // 32)


@pytest.mark.slow  # a CLI run killed, then resumed
def test_kill_9_leaves_a_resumable_run(tfds_dir, cli_env, tmp_path):
    workdir = tmp_path / "w"
    cmd = _cmd(tfds_dir, workdir)
    proc = _start(cmd, cli_env)
    _wait_for_checkpoint(workdir, proc)
    time.sleep(0.3)  # somewhere in the next steps or the next asynchronous save
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    out = _finish(cmd, cli_env)
    assert "resumed from step" in out
    assert _final_step(workdir) == 3 * (1024 // 32)


def test_init_from_pretrained_declares_the_new_head():
    import zoo
    from train.finetune import merge_pretrained

    _, pretrained = zoo.load("cnn", pretrained="mnist")
    model = zoo.create("cnn", num_classes=5)
    fresh = zoo.init(model, jax.random.key(0))
    lines = []
    merged = merge_pretrained(fresh, pretrained, log=lines.append)
    assert any("params/head/kernel (3136, 10) -> (3136, 5)" in line for line in lines), lines
    np.testing.assert_array_equal(merged["params"]["conv_0"]["kernel"], pretrained["params"]["conv_0"]["kernel"])
    np.testing.assert_array_equal(merged["params"]["head"]["kernel"], fresh["params"]["head"]["kernel"])
    wider = zoo.init(zoo.create("cnn", features=(16, 64)), jax.random.key(0))
    with pytest.raises(ValueError, match=r"params/conv_0/(bias|kernel) has shape \([^)]*32,?\) in the pretrained weights but the model expects \([^)]*16,?\)"):
        merge_pretrained(wider, pretrained)


def test_init_from_cli_starts_from_the_shipped_weights(tfds_dir, cli_env, tmp_path):
    out = _finish(
        [sys.executable, "-m", "train.cli", "train", "cnn", "--data-dir", str(tfds_dir), "--workdir", str(tmp_path / "ft"),
         "--init-from", "cnn.mnist", "--epochs", "1", "--train-limit", "64", "--val-size", "1000", "--lr", "1e-5"],
        cli_env,
    )
    assert "init-from: cnn.mnist" in out
    record = json.loads((tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["val_accuracy"] > 0.97  # 2 tiny steps from scratch would give ~0.1-0.3
