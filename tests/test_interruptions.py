"""A run survives interruptions: no hang on several CPU devices, SIGINT like
SIGTERM, one run per workdir, resume past a damaged checkpoint, metrics.jsonl identical after
kills, and multi-host runs refusing an unshared workdir. Real `zoo train` processes."""

from __future__ import annotations

import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("epoch_s", "compile_s", "examples_per_s")


def _zoo(*args) -> list[str]:
    return [sys.executable, "-m", "train.cli", *map(str, args)]


def _tiny(data_dir, workdir, *extra) -> list[str]:
    """mlp_small, 3 epochs of 24 steps, a checkpoint every 5 steps: many save points, seconds."""
    return _zoo("train", "mlp_small", "--data-dir", data_dir, "--workdir", workdir, "--epochs", 3,
                "--train-limit", 768, "--val-size", 256, "--batch-size", 32, "--log-every", 1,
                "--checkpoint-steps", 5, "--keep-checkpoints", 50, "--num-devices", 1, *extra)


def _run(cmd, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _records(workdir: Path) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def _steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _wait_for(predicate, proc, timeout=240, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {what}:\n{proc.stdout.read()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def _start(cmd, env):
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def uninterrupted(tfds_dir, cli_env, tmp_path_factory):
    """The reference: the tiny run, never interrupted."""
    workdir = tmp_path_factory.mktemp("ref") / "w"
    _ok(_run(_tiny(tfds_dir, workdir), cli_env))
    return workdir


# ---------------------------------------------------------------- 1: several CPU devices


def test_a_real_epoch_on_four_cpu_devices_with_the_default_strategy(tfds_dir, cli_env, tmp_path):
    """XLA:CPU deadlocked once ~90 sharded steps were queued; a whole MNIST epoch of 430 steps
    (batch 128 over 4 devices, log every 1000 steps) must finish."""
    out = _ok(_run(_zoo("train", "mlp_small", "--data-dir", tfds_dir, "--workdir", tmp_path / "w", "--epochs", 1,
                        "--batch-size", 128, "--log-every", 1000, "--sample-every", 0), cli_env, timeout=600)).stdout
    record = json.loads((tmp_path / "w" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == (60000 - 5000) // 128, out
    assert record["val_accuracy"] > 0.9


# ---------------------------------------------------------------- 3: SIGINT and SIGTERM


@pytest.mark.slow  # a CLI run signalled, then resumed
@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 0)], ids=["sigint", "sigterm"])
def test_a_signal_saves_the_step_it_arrived_at_and_exits(tfds_dir, cli_env, tmp_path, uninterrupted, signum, code):
    """Three signals at random moments (often during an async save): each run exits with the
    right code within seconds, saved exactly the step it reports, and the resumed run's log and
    final weights equal the uninterrupted run's."""
    workdir = tmp_path / "w"
    cmd = _tiny(tfds_dir, workdir)
    rng = random.Random(signum)
    for _ in range(3):
        proc = _start(cmd, cli_env)
        if not _wait_for_new_checkpoint(workdir, proc):
            break
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signum)
        t = time.time()
        out, _ = proc.communicate(timeout=60)
        assert time.time() - t < 30
        assert proc.returncode == code, out
        saved = int(out.split("saved step ")[1].split()[0])
        assert saved == _steps(workdir)[-1], out
    _ok(_run(cmd, cli_env))
    assert _records(workdir) == _records(uninterrupted)
    _assert_same_final_weights(workdir, uninterrupted)


def _wait_for_new_checkpoint(workdir: Path, proc) -> bool:
    """Waits for the running `proc` to finalize a new checkpoint; False (after letting it finish)
    when that checkpoint is near the end of the run, where a signal could land after training."""
    before = len(_steps_or_none(workdir))
    deadline = time.time() + 240
    while len(_steps_or_none(workdir)) <= before and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None and len(_steps_or_none(workdir)) <= before:
        # A kill after the last checkpoint was saved leaves a finished run: rerunning it has
        # nothing to train and ends without a new checkpoint.
        out = proc.stdout.read()
        assert proc.returncode == 0 and _steps(workdir)[-1] == 72, out
        return False
    if time.time() >= deadline:
        proc.kill()
        pytest.fail("timed out waiting for a new checkpoint")
    if _steps(workdir)[-1] >= 60:  # of 72 steps
        _ok(subprocess.CompletedProcess(proc.args, proc.wait(timeout=120), proc.stdout.read(), ""))
        return False
    return True


def _assert_same_final_weights(a: Path, b: Path) -> None:
    from train.evaluate import restore_workdir

    (_, _, va, sa), (_, _, vb, sb) = restore_workdir(a, "latest"), restore_workdir(b, "latest")
    assert sa == sb
    for x, y in zip(jax.tree.leaves(va), jax.tree.leaves(vb)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------- 7: kill -9 and metrics.jsonl


@pytest.mark.slow  # a kill -9 / resume loop
def test_kill_9_at_random_moments_logs_exactly_the_uninterrupted_run(tfds_dir, cli_env, tmp_path, uninterrupted):
    """Kills land between an epoch's log line and its checkpoint, mid-epoch, or mid-save: the
    resumed log repeats no line and its train means cover the whole epoch."""
    workdir = tmp_path / "w"
    cmd = _tiny(tfds_dir, workdir)
    rng = random.Random(7)
    for _ in range(4):
        proc = _start(cmd, cli_env)
        if not _wait_for_new_checkpoint(workdir, proc):
            break
        time.sleep(rng.uniform(0.0, 1.5))
        proc.kill()
        proc.communicate(timeout=60)
    _ok(_run(cmd, cli_env))
    assert _records(workdir) == _records(uninterrupted)
    _assert_same_final_weights(workdir, uninterrupted)


def _steps_or_none(workdir: Path) -> list[int]:
    return _steps(workdir) if (workdir / "checkpoints").exists() else []


# ---------------------------------------------------------------- 4: one run per workdir


def test_a_second_run_on_a_busy_workdir_refuses_and_a_dead_runs_lock_is_taken_over(tfds_dir, cli_env, tmp_path):
    workdir = tmp_path / "w"
    cmd = _tiny(tfds_dir, workdir)
    first = _start(cmd, cli_env)
    _wait_for(lambda: (workdir / ".lock").exists() and (workdir / ".lock").stat().st_size > 0, first, what="the lock")
    second = _run(cmd, cli_env, timeout=120)
    assert second.returncode == 2
    assert f"in use by process {first.pid} on host {socket.gethostname()}" in second.stderr
    assert "Traceback" not in second.stderr
    first.kill()  # a stale lock file stays behind; the kernel released the lock itself
    first.communicate(timeout=60)
    assert (workdir / ".lock").exists()
    _ok(_run(cmd, cli_env))


# ---------------------------------------------------------------- 6: damaged checkpoints


def _damage(step_dir: Path, kind: str) -> None:
    state = step_dir / "state"
    data_files = sorted((p for p in state.rglob("*") if p.is_file() and p.stat().st_size > 0 and "d" in p.parts),
                        key=lambda p: -p.stat().st_size)
    if kind == "truncate":
        with open(data_files[0], "r+b") as f:
            f.truncate(data_files[0].stat().st_size // 2)
    elif kind == "empty":
        data_files[0].write_bytes(b"")
    elif kind == "delete":
        data_files[0].unlink()
    elif kind == "flip":
        raw = bytearray(data_files[0].read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data_files[0].write_bytes(bytes(raw))
    elif kind == "json":
        (step_dir / "meta" / "metadata").write_text("{not json")
    elif kind == "no_metadata":
        (step_dir / "_CHECKPOINT_METADATA").unlink()
    elif kind == "no_state":
        shutil.rmtree(state)
    elif kind == "empty_dir":
        shutil.rmtree(step_dir)
        step_dir.mkdir()
    elif kind == "array_metadata":
        (state / "_METADATA").unlink()
    else:
        raise AssertionError(kind)


DAMAGE = ("truncate", "empty", "delete", "flip", "json", "no_metadata", "no_state", "empty_dir", "array_metadata")


@pytest.fixture(scope="module")
def finished_run(tfds_dir, cli_env, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("finished") / "w"
    _ok(_run(_tiny(tfds_dir, workdir, "--epochs", 1), cli_env))
    return workdir


@pytest.mark.parametrize("kind", DAMAGE)
def test_resume_falls_back_past_a_damaged_latest_checkpoint(finished_run, kind, tmp_path):
    """In-process (fast): the newest intact step is restored, the damaged one is moved aside."""
    from train.checkpoint import Checkpointer

    workdir = tmp_path / "w"
    shutil.copytree(finished_run, workdir)
    steps = _steps(workdir)
    _damage(workdir / "checkpoints" / str(steps[-1]), kind)
    warnings = []
    with Checkpointer(workdir / "checkpoints") as ckpt:
        tree, meta = ckpt.restore_intact(None, log=warnings.append)
    if kind == "no_metadata":  # Orbax's step metadata (timestamps, metrics) only: the arrays verify
        assert meta["step"] == steps[-1] and int(tree["step"]) == steps[-1] and not warnings
        return
    assert meta["step"] == steps[-2] and int(tree["step"]) == steps[-2]
    assert len(warnings) == 1 and f"step {steps[-1]} is damaged" in warnings[0]
    assert (workdir / "checkpoints.damaged" / str(steps[-1])).is_dir()  # kept, not deleted
    assert _steps(workdir) == steps[:-1]


def test_cli_resumes_past_damage_and_says_so_once_nothing_is_intact(finished_run, tfds_dir, cli_env, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(finished_run, workdir)
    steps = _steps(workdir)
    _damage(workdir / "checkpoints" / str(steps[-1]), "truncate")
    out = _ok(_run(_tiny(tfds_dir, workdir, "--epochs", 2), cli_env)).stdout
    assert f"checkpoint step {steps[-1]} is damaged" in out and f"resumed from step {steps[-2]}" in out

    for step in _steps(workdir):
        _damage(workdir / "checkpoints" / str(step), "flip")
    result = _run(_tiny(tfds_dir, workdir, "--epochs", 3), cli_env)
    assert result.returncode == 2
    assert "no intact checkpoint in" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_fallback_past_an_emptied_file_prints_no_background_traceback(finished_run, tfds_dir, cli_env, tmp_path):
    """An emptied array file made Orbax's background thread log an asyncio traceback on stderr
    after the fallback had been said; the user sees the one warning line and the run."""
    workdir = tmp_path / "w"
    shutil.copytree(finished_run, workdir)
    steps = _steps(workdir)
    _damage(workdir / "checkpoints" / str(steps[-1]), "empty")
    result = _ok(_run(_tiny(tfds_dir, workdir, "--epochs", 2), cli_env))
    assert f"checkpoint step {steps[-1]} is damaged" in result.stdout
    assert "Traceback" not in result.stderr and "ERROR" not in result.stderr, result.stderr[-3000:]


# ---------------------------------------------------------------- 10: multi-host, unshared workdir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multihost_with_unshared_workdirs_fails_fast_on_every_process(tfds_dir, cli_env, tmp_path):
    env = {**cli_env, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_NUM_CPU_DEVICES": "1",
           "ZOO_SHARED_WORKDIR_TIMEOUT": "5"}
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [
        _start(_tiny(tfds_dir, tmp_path / f"w{i}", "--num-devices", 2, "--coordinator", coordinator,
                     "--num-processes", 2, "--process-id", i), env)
        for i in range(2)
    ]
    t = time.time()
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert time.time() - t < 120
    for p, out in zip(procs, outs):
        assert p.returncode == 2, out
        assert "must be on storage shared by all processes" in out and "Traceback" not in out
