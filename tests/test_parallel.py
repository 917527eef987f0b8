"""Data parallelism (train/parallel.py): device-count invariance of the jit strategy, pmap vs jit,
batch-size checks, and a real 2-process run on localhost (gloo CPU collectives).

Tolerances: results across device counts / strategies are equal up to float32 reduction order,
not bitwise. With the batch split over 4 devices the gradient (and BatchNorm statistics) are
sums of 4 partial sums combined by an all-reduce, instead of one sum over 16 examples; float
addition is not associative, so the last bits differ and Adam (which divides by sqrt(v)) carries
those ~1e-7 relative differences into the parameters. After 5 steps they stay below 1e-5
(see test_jit_one_device_equals_four for the one case where Adam amplifies them).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.fixtures import build, flat_params, task_arrays
from train import parallel, tasks

REPO = Path(__file__).resolve().parents[1]
RTOL = ATOL = 1e-5
GLOBAL_BATCH = 16
N_STEPS = 5

pytestmark = pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 (fake CPU) devices: see conftest.py")


def _indices(steps: int = N_STEPS, n: int = 32) -> np.ndarray:
    return np.random.default_rng(1).permutation(np.tile(np.arange(n), 4))[: steps * GLOBAL_BATCH].reshape(steps, GLOBAL_BATCH)


def _run(task: str, strategy_name: str, num_devices: int, steps: int = N_STEPS, **overrides):
    """Trains the task's small model for `steps` steps; returns (host state, per-step losses)."""
    model, state, cfg = build(task, **overrides)
    mesh = parallel.make_mesh(jax.devices()[:num_devices])
    strategy = parallel.make_strategy(strategy_name, tasks.get(task).train_step(model, cfg), mesh)
    state = strategy.place_state(state)
    data = strategy.place_data(task_arrays(task, 32, seed=2))
    losses = []
    for idx in _indices(steps):
        state, metrics = strategy.run_chunk(state, data, idx[None])
        losses.append(float(np.asarray(metrics["loss"])[0]))
    if strategy_name == "pmap":  # every replica holds the same state after the pmean'd update
        for leaf in jax.tree.leaves(state):
            host = np.asarray(leaf)
            for d in range(1, num_devices):
                np.testing.assert_array_equal(host[d], host[0])
    assert strategy.compiles() in (1, -1)
    return jax.device_get(strategy.unreplicate(state)), losses


def _assert_close(a, b, rtol=RTOL, atol=ATOL):
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol,
                                   err_msg=jax.tree_util.keystr(path))


# ---------------------------------------------------------------- jit: 1 device == 4 devices


@pytest.mark.parametrize(
    "task,overrides",
    [
        ("classification", {"dropout_rate": 0.3}),  # dropout masks must not depend on the sharding
        # BatchNorm: under jit its statistics are over the global batch. SGD, not Adam: Adam's
        # first steps are ~lr * sign(g), so a gradient entry near 0 whose sign flips with the
        # reduction order moves by up to 2 * lr (seen: 1.3e-5 on 2 of 43730 entries at step 3).
        # lr 0.02, not 0.05: at 0.05 the losses swing between 3 and 22 and amplify the last bits
        # of the all-reduce to 1.8e-5 by step 5 (1e-7 at 0.02).
        ("gan", {"optimizer": "sgd", "lr": 0.02}),
    ],
    ids=["cnn_dropout", "dcgan_batchnorm"],
)
def test_jit_one_device_equals_four(task, overrides):
    one, losses1 = _run(task, "jit", 1, **overrides)
    four, losses4 = _run(task, "jit", 4, **overrides)
    assert int(one.step) == int(four.step) == N_STEPS
    np.testing.assert_allclose(losses1, losses4, rtol=RTOL)
    _assert_close(one.params, four.params)
    _assert_close(one.model_state, four.model_state)
    _assert_close(one.opt_state, four.opt_state)
    assert not np.allclose(flat_params(one.params), flat_params(build(task, **overrides)[1].params))  # it trained


# ---------------------------------------------------------------- pmap vs jit


def test_pmap_equals_jit_on_four_devices():
    """No BatchNorm, no dropout: the pmean'd per-device gradients are the global gradient."""
    jit_state, jit_losses = _run("classification", "jit", 4)
    pmap_state, pmap_losses = _run("classification", "pmap", 4)
    np.testing.assert_allclose(jit_losses, pmap_losses, rtol=RTOL)
    _assert_close(jit_state.params, pmap_state.params)
    _assert_close(jit_state.opt_state, pmap_state.opt_state)


def test_pmap_gan_one_device_equals_jit():
    """On one device pmap and jit are the same computation, noise included (pmap takes its
    device's rows of the global batch's noise)."""
    # see test_jit_one_device_equals_four: Adam amplifies ulps, and SGD at lr 0.05 swings the
    # loss to 22 at step 2, which grew pmap's and jit's last-bit differences to 5.6e-5 once the
    # initial values changed in their last bit (zoo.init's fast-compiled program); at 0.02: 3e-8
    sgd = {"optimizer": "sgd", "lr": 0.02}
    jit_state, jit_losses = _run("gan", "jit", 1, steps=3, **sgd)
    pmap_state, pmap_losses = _run("gan", "pmap", 1, steps=3, **sgd)
    np.testing.assert_allclose(jit_losses, pmap_losses, rtol=RTOL)
    _assert_close(jit_state.params, pmap_state.params)
    _assert_close(jit_state.model_state, pmap_state.model_state)


def test_pmap_gan_batchnorm_semantics_on_four_devices():
    """What is guaranteed for BatchNorm under pmap, and what is not.

    pmap normalizes each device's 4 examples with that device's own batch statistics (the
    model has no cross-device BatchNorm), while jit normalizes with the statistics of the
    global batch of 16, so activations, gradients and hence parameters differ from jit: they
    cannot be compared. Guaranteed: (1) every replica holds the same state (checked in _run);
    (2) the latent noise is the jit run's global noise split over the devices, so the first
    generator BatchNorm (which sees z directly, before any update) gets the same inputs; its
    running MEAN after one step is linear in the per-device means, whose pmean is the global
    mean, so it equals jit's; its running VARIANCE is the mean of per-device variances, which
    is not the global variance (the between-device spread of the means is missing).
    """
    jit_state, _ = _run("gan", "jit", 4, steps=1)
    pmap_state, pmap_losses = _run("gan", "pmap", 4, steps=1)
    assert np.all(np.isfinite(pmap_losses))
    jit_bn = jit_state.model_state["batch_stats"]["generator"]["bn_0"]
    pmap_bn = pmap_state.model_state["batch_stats"]["generator"]["bn_0"]
    np.testing.assert_allclose(pmap_bn["mean"], jit_bn["mean"], rtol=1e-5, atol=1e-6)
    # One update per step (G runs forward once) with momentum 0.9 from var=1: 0.9 + 0.1 * batch variance.
    jit_var, pmap_var = (jit_bn["var"] - 0.9) / 0.1, (pmap_bn["var"] - 0.9) / 0.1
    assert np.all(pmap_var <= jit_var + 1e-5)  # law of total variance: within-device <= global
    # Measurably smaller (here ~0.4%: statistics run over batch AND the 7x7 positions, and the
    # spatial spread dominates the spread of the per-device means).
    assert pmap_var.mean() < (1 - 1e-3) * jit_var.mean()


# ---------------------------------------------------------------- batch size


def test_batch_size_not_divisible_by_devices():
    with pytest.raises(ValueError, match=r"batch size 6 is not divisible by the 4 devices; use a multiple of 4 \(e\.g\. 4\)"):
        parallel.check_batch_size(6, 4)
    parallel.check_batch_size(8, 4)
    parallel.check_batch_size(6, 1)
    with pytest.raises(ValueError, match="multiple of 4 .e.g. 4."):
        parallel.check_batch_size(3, 4)


def test_make_strategy_rejects_unknown_names():
    mesh = parallel.make_mesh(jax.devices()[:1])
    with pytest.raises(ValueError, match="unknown strategy 'shard'"):
        parallel.make_strategy("shard", lambda s, b: (s, {}), mesh)


def test_init_distributed_single_host_is_a_no_op(monkeypatch):
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "ZOO_DISTRIBUTED_AUTO"):
        monkeypatch.delenv(key, raising=False)
    assert parallel.init_distributed() is False
    with pytest.raises(ValueError, match="needs a coordinator"):
        parallel.init_distributed(num_processes=2)
    with pytest.raises(ValueError, match="needs num_processes and process_id"):
        parallel.init_distributed("127.0.0.1:1234")


def test_heartbeat_timeout_is_read_from_the_environment_and_checked_before_joining(monkeypatch):
    monkeypatch.delenv("ZOO_HEARTBEAT_TIMEOUT", raising=False)
    assert parallel.heartbeat_timeout() == parallel.HEARTBEAT_TIMEOUT_S == 30
    monkeypatch.setenv("ZOO_HEARTBEAT_TIMEOUT", "7")
    assert parallel.heartbeat_timeout() == 7
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: pytest.fail("joined with a bad timeout"))
    for bad in ("0", "-5", "2.5", "soon"):
        monkeypatch.setenv("ZOO_HEARTBEAT_TIMEOUT", bad)
        with pytest.raises(ValueError, match=f"ZOO_HEARTBEAT_TIMEOUT='{bad}': expected a whole number of seconds >= 1"):
            parallel.init_distributed("127.0.0.1:1234", 2, 0)
    assert not parallel.joined()


# ---------------------------------------------------------------- real 2-process run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two jax.distributed processes
@pytest.mark.parametrize("local_devices", [1, 2])
def test_two_process_run_matches_single_process(tmp_path, local_devices):
    """Two processes on localhost (jax.distributed + gloo), `local_devices` CPU devices each,
    train with JitStrategy over the global mesh: both end with bitwise identical parameters,
    equal (within tolerance) to this process training on 2 * local_devices devices."""
    from tests._multihost_child import train

    steps, timeout = 3, 240
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={local_devices}",
        JAX_NUM_CPU_DEVICES=str(local_devices),
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    coordinator = f"127.0.0.1:{_free_port()}"
    child = str(REPO / "tests" / "_multihost_child.py")
    procs = [
        subprocess.Popen([sys.executable, child, coordinator, "2", str(pid), str(steps), str(tmp_path)],
                         env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for pid in (0, 1)
    ]
    outputs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)  # a hang (e.g. a collective never met) fails here
            assert p.returncode == 0, f"child exited {p.returncode}:\n{err[-4000:]}"
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for pid, info in enumerate(outputs):
        assert info["process_index"] == pid
        assert info["process_count"] == 2
        assert info["local_devices"] == local_devices
        assert info["global_devices"] == 2 * local_devices
        assert info["collectives"] == "gloo"
        assert info["step"] == steps
    assert outputs[0]["sha256"] == outputs[1]["sha256"], "the processes disagree on the parameters"
    assert outputs[0]["losses"] == outputs[1]["losses"]

    mesh = parallel.make_mesh(jax.devices()[: 2 * local_devices])
    state, losses = train(lambda step_fn: parallel.JitStrategy(step_fn, mesh), steps)
    reference = flat_params(state.params)
    for pid in (0, 1):
        got = np.load(tmp_path / f"params_{pid}.npy").astype(np.float64)
        np.testing.assert_allclose(got, reference, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(outputs[0]["losses"], losses, rtol=RTOL)
