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
import time
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
    assert (workdir / "device.txt").read_text().startswith("2 x cpu (cpu), jax ")  # the run's, both hosts'
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


@pytest.mark.slow  # two processes; the healthy one waits out the heartbeat timeout
def test_a_process_failing_alone_ends_every_process_within_the_heartbeat_timeout(tfds_dir, cli_env, tmp_path):
    """Process 1 gets a bad --lr after joining: it reports the one line and exits 2 at once, not
    waiting at JAX's shutdown barrier (300 s) for process 0, which is blocked in a collective;
    process 0 is stopped when process 1's heartbeats stop (ZOO_HEARTBEAT_TIMEOUT seconds)."""
    heartbeat = 5
    coordinator = f"127.0.0.1:{_free_port()}"
    env = {**cli_env, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_NUM_CPU_DEVICES": "1",
           "ZOO_HEARTBEAT_TIMEOUT": str(heartbeat)}
    join = ["--coordinator", coordinator, "--num-processes", 2, "--process-id"]
    cmds = [zoo_cmd(tfds_dir, tmp_path / "w", *join, 0), zoo_cmd(tfds_dir, tmp_path / "w", *join, 1, "--lr=-1")]
    start = time.monotonic()
    procs = [subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in cmds]
    ended: dict[int, float] = {}
    try:
        while len(ended) < 2 and time.monotonic() - start < 280:
            ended.update({i: time.monotonic() - start for i, p in enumerate(procs) if i not in ended and p.poll() is not None})
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    outs = [p.communicate(timeout=60) for p in procs]
    print(f"process 1 ended after {ended.get(1)} s, process 0 after {ended.get(0)} s")
    assert procs[1].returncode == 2, outs[1]
    errors = [line for line in outs[1][1].splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--lr" in errors[0] and "Traceback" not in outs[1][1], outs[1][1][-3000:]
    assert procs[0].returncode != 0, outs[0]
    # before: both ended only after ~128 s; process 1 now ends once it has joined and read
    # its flags (seconds, more on a loaded machine), process 0 a heartbeat timeout later
    assert ended[1] < 60, ended
    assert ended[0] - ended[1] < heartbeat + 30, ended
