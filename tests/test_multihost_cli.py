"""The CLI's data parallelism end to end: `--strategy pmap`, and a two-process run on localhost,
one process configured by the --coordinator/--num-processes/--process-id flags and the other by
the JAX_* environment variables. Both must train what one process on 2 devices trains; in the
two-process run only process 0 writes logs, the checkpoints it leaves resume, and the test-split
evaluation (--test, and `zoo eval` run as two processes) works.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import flat_params

REPO = Path(__file__).resolve().parents[1]
RTOL, ATOL = 1e-5, 1e-6


def zoo_cmd(data_dir, workdir, *extra) -> list[str]:
    """mlp_small, 2 epochs of 4 steps of 32 (16 per device) on MNIST, 2 devices in all."""
    return [sys.executable, "-m", "train.cli", "train", "mlp_small", "--data-dir", str(data_dir), "--workdir", str(workdir),
            "--epochs", "2", "--train-limit", "128", "--val-size", "64", "--batch-size", "32", "--eval-batch-size", "64",
            "--sample-every", "0", "--num-devices", "2", "--set", "hidden=[16]", *map(str, extra)]


def ok(result) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def params(workdir: Path) -> np.ndarray:
    from train.evaluate import restore_workdir

    _, _, variables, step = restore_workdir(workdir, "latest")
    assert step == 8
    return flat_params(variables["params"])


def records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tfds_dir, cli_env, tmp_path_factory) -> Path:
    """One process, 2 of its 4 fake devices, the default jit strategy."""
    workdir = tmp_path_factory.mktemp("ref") / "w"
    ok(subprocess.run(zoo_cmd(tfds_dir, workdir), env=cli_env, cwd=REPO, capture_output=True, text=True, timeout=300))
    return workdir


def assert_same_training(workdir: Path, reference: Path) -> None:
    np.testing.assert_allclose(params(workdir), params(reference), rtol=RTOL, atol=ATOL)
    got, want = records(workdir), records(reference)
    assert [r["step"] for r in got] == [r["step"] for r in want] == [4, 8]
    for a, b in zip(got, want):
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=RTOL, abs=ATOL), key


def test_pmap_strategy_through_the_cli(reference, tfds_dir, cli_env, tmp_path):
    ok(subprocess.run(zoo_cmd(tfds_dir, tmp_path / "w", "--strategy", "pmap"), env=cli_env, cwd=REPO,
                      capture_output=True, text=True, timeout=300))
    assert json.loads((tmp_path / "w" / "config.json").read_text())["strategy"] == "pmap"
    assert_same_training(tmp_path / "w", reference)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_by_flags_and_by_env_vars(reference, tfds_dir, cli_env, tmp_path):
    workdir = tmp_path / "w"
    coordinator = f"127.0.0.1:{_free_port()}"
    env = {**cli_env, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_NUM_CPU_DEVICES": "1"}
    by_flags = zoo_cmd(tfds_dir, workdir, "--coordinator", coordinator, "--num-processes", 2, "--process-id", 0, "--test")
    by_env = dict(env, JAX_COORDINATOR_ADDRESS=coordinator, JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="1")
    outs = run_together([by_flags, zoo_cmd(tfds_dir, workdir, "--test")], [env, by_env])
    # both print their progress; only process 0 writes the log files: one line per epoch, one
    # TensorBoard file (a second writer would double every metrics.jsonl line)
    assert "epoch 2 step 8" in outs[0] and "epoch 2 step 8" in outs[1]
    assert len(records(workdir)) == 2
    assert len(list((workdir / "tb").glob("events.out.tfevents.*"))) == 1
    assert_same_training(workdir, reference)  # and the checkpoint both wrote restores
    # --test: both processes restore the final checkpoint (each onto its own device) and
    # evaluate the test split over both; so does `zoo eval` run as two processes
    assert printed_test_accuracy(outs[0]) == printed_test_accuracy(outs[1])
    eval_cmd = [sys.executable, "-m", "train.cli", "eval", "mlp_small", "--workdir", str(workdir), "--which", "latest"]
    coordinator = f"127.0.0.1:{_free_port()}"
    evals = run_together([eval_cmd, eval_cmd], [dict(env, JAX_COORDINATOR_ADDRESS=coordinator, JAX_NUM_PROCESSES="2",
                                                     JAX_PROCESS_ID=str(i)) for i in (0, 1)])
    assert printed_test_accuracy(evals[0]) == printed_test_accuracy(evals[1]) == printed_test_accuracy(outs[0])
    assert "step 8" in evals[0]


def run_together(cmds: list[list[str]], envs: list[dict]) -> list[str]:
    """Runs the processes of one multi-process job; returns their stdouts (all must exit 0)."""
    procs = [subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd, env in zip(cmds, envs)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=300)
            outs.append(out)
            assert p.returncode == 0, f"process exited {p.returncode}\n{out[-2000:]}\n{err[-3000:]}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return outs


def printed_test_accuracy(out: str) -> float:
    assert "mlp_small on mnist/test (10000 examples" in out, out[-3000:]
    return float(next(line for line in out.splitlines() if line.startswith("  accuracy: ")).split()[-1])
