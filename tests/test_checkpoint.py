"""train.checkpoint: roundtrips, retention, kill -9 mid save, device-count changes, clear errors."""

import functools
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tests._ckpt_child import tree_for
from train.checkpoint import Checkpointer, CheckpointError

CHILD = Path(__file__).with_name("_ckpt_child.py")
ONE = jax.sharding.SingleDeviceSharding(jax.devices()[0])


def on_one_device(tree):
    """Restore target: `tree`'s shapes and dtypes, placed on the first device."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=ONE), tree)


def _bits(x):
    x = np.asarray(x)
    return x.view(f"u{x.dtype.itemsize}") if x.dtype.itemsize in (1, 2, 4, 8) else x


def assert_bitwise_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert np.shape(x) == np.shape(y) and np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(_bits(x), _bits(y))


@functools.partial(jax.jit, static_argnames=("seed", "head"))  # one compile, not dozens of eager ops
def _train_state(seed=0, head=3):
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {"body": {"kernel": jax.random.normal(k1, (5, 4))},
              "head": {"kernel": jax.random.normal(k2, (4, head)), "bias": jnp.zeros(head, jnp.bfloat16)}}
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = tx.update(grads, opt_state, params)  # non-trivial mu/nu/count
    return {"step": jnp.asarray(7, jnp.int32), "params": params, "model_state": {},
            "opt_state": opt_state, "rng": jax.random.key_data(jax.random.key(seed + 1))}


def test_roundtrip_meta_and_relative_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state = _train_state()
    meta = {"epoch": 3, "config": {"model": "mlp", "lr": 0.1, "layers": [1, 2]}, "data": {"pos": 12}}
    with Checkpointer("ckpts") as ckpt:
        assert ckpt.directory == tmp_path / "ckpts" and ckpt.directory.is_absolute()
        assert ckpt.latest_step() is None and ckpt.all_steps() == []
        assert ckpt.save(7, state, meta)
        assert not ckpt.save(7, state, meta)  # repeat call: a no-op, not an error
        with pytest.raises(ValueError, match="older than the latest"):
            ckpt.save(6, state, meta)
        restored, got_meta = ckpt.restore(on_one_device(state))
    assert_bitwise_equal(restored, state)
    assert type(restored["opt_state"][0]) is type(state["opt_state"][0])  # optax NamedTuple
    assert restored["rng"].dtype == jnp.uint32 and got_meta == meta
    again = Checkpointer(tmp_path / "ckpts")  # reopen: everything read back from disk
    assert again.latest_step() == 7
    restored, got_meta = again.restore(state)  # concrete arrays as target
    assert_bitwise_equal(restored, state)
    assert got_meta == meta
    again.close()


@pytest.mark.parametrize("mode", ["max", "min"])
def test_keeps_latest_and_best(tmp_path, mode):
    state = {"w": jnp.arange(4.0)}
    worse = [0.9, 0.8, 0.7, 0.6, 0.5] if mode == "max" else [0.1, 0.2, 0.3, 0.4, 0.5]
    with Checkpointer(tmp_path, max_to_keep=2, best_metric="val_accuracy", best_mode=mode) as ckpt:
        for step, value in enumerate(worse, start=1):
            ckpt.save(step, state, {}, {"val_accuracy": value})
            ckpt.wait()
            # The orbax trap: ranking by metric alone would delete the step just saved.
            assert ckpt.latest_step() == step and step in ckpt.all_steps()
            assert ckpt.best_step() == 1 and 1 in ckpt.all_steps()
        ckpt.save(6, state, {})  # no metrics: kept as latest, never ranked
        ckpt.save(7, state, {}, {"val_accuracy": float("nan")})
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [1, 6, 7]
    reopened = Checkpointer(tmp_path, max_to_keep=2, best_metric="val_accuracy", best_mode=mode)
    assert reopened.all_steps() == [1, 6, 7] and reopened.best_step() == 1 and reopened.latest_step() == 7
    reopened.close()


def _mesh(n):
    return Mesh(np.array(jax.devices()[:n]), ("data",))


def _sharded_tree(mesh):
    rep, dat = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return {"replicated": jax.device_put(jnp.arange(12.0).reshape(3, 4), rep),
            "sharded": jax.device_put(jnp.arange(24, dtype=jnp.int32).reshape(8, 3), dat),
            "scalar": jax.device_put(jnp.float32(2.5), rep)}


def _target(tree, mesh):
    rep, dat = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    shardings = {"replicated": rep, "sharded": dat, "scalar": rep}
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k]) for k, v in tree.items()}


@pytest.mark.parametrize("n_save,n_restore", [(4, 1), (1, 4)])
def test_restore_across_device_counts(tmp_path, n_save, n_restore):
    tree = _sharded_tree(_mesh(n_save))
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, tree, {"devices": n_save})
    with Checkpointer(tmp_path) as ckpt:
        target = _target(tree, _mesh(n_restore))
        restored, meta = ckpt.restore(target)
    assert meta == {"devices": n_save}
    assert_bitwise_equal(jax.device_get(restored), jax.device_get(tree))
    for k, v in restored.items():
        assert v.sharding == target[k].sharding and len(v.sharding.device_set) == n_restore


def test_wrong_architecture_names_path_and_shapes(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, _train_state(head=3), {})
        # Targets as the loop builds them: eval_shape (no compute) + the current sharding.
        wrong = on_one_device(jax.eval_shape(functools.partial(_train_state, head=5)))
        with pytest.raises(ValueError) as err:
            ckpt.restore(wrong)
        msg = str(err.value)
        assert "params/head/kernel" in msg and "(4, 5)" in msg and "(4, 3)" in msg
        assert "opt_state/0/mu/head/kernel" in msg and str(tmp_path / "1") in msg
        renamed = on_one_device(jax.eval_shape(_train_state))
        renamed["params"]["neck"] = renamed["params"].pop("body")
        with pytest.raises(ValueError, match=r"params/neck/kernel: missing \(expected shape \(5, 4\) float32\)"):
            ckpt.restore(renamed)
        with pytest.raises(ValueError, match=r"params/body/kernel: unexpected \(found shape \(5, 4\) float32\)"):
            ckpt.restore(renamed)


def _damage(step_dir: Path, how: str):
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
    biggest = max(files, key=lambda p: p.stat().st_size)  # the array data
    if how == "truncate":
        with open(biggest, "r+b") as f:
            f.truncate(biggest.stat().st_size // 2)
    elif how == "delete":
        (step_dir / "state" / "manifest.ocdbt").unlink()
    elif how == "flip":  # decodes without error in orbax itself: caught by the fingerprints
        data = bytearray(biggest.read_bytes())
        data[len(data) // 2] ^= 0x10
        biggest.write_bytes(bytes(data))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax leaks a coroutine
@pytest.mark.parametrize("how", ["truncate", "delete", "flip"])
def test_damaged_checkpoint_raises_checkpoint_error(tmp_path, how):
    rng = np.random.default_rng(0)
    tree = {"params": {"w": jnp.asarray(rng.standard_normal((256, 256), np.float32))}, "n": jnp.int32(3)}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, tree, {"a": 1})
        ckpt.save(2, tree, {"a": 2})
    _damage(tmp_path / "2", how)
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 2
        with pytest.raises(CheckpointError, match=str(tmp_path / "2")):
            ckpt.restore(on_one_device(tree))
        assert_bitwise_equal(ckpt.restore(on_one_device(tree), step=1)[0], tree)  # older step intact


class _Child:
    """A child process saving in a loop; stdout lines go to a queue (stderr to a file)."""

    def __init__(self, directory, n, log, *args):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(log, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, str(CHILD), str(directory), str(n), *args],
                                         stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(x.strip()) for x in self.proc.stdout], daemon=True).start()

    def wait_for(self, prefix, timeout=60.0):
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if line.startswith(prefix):
                return line


N_BIG = 16_000_000  # 64 MB of float32: an async save takes a sizeable fraction of a second


def test_kill9_mid_async_save_keeps_last_finalized(tmp_path):
    rnd = random.Random(1234)
    saved_before = 0
    for _ in range(2):  # each round: a new child resumes from the survivor, is killed again
        child = _Child(tmp_path, N_BIG, tmp_path.parent / "child.log")
        try:
            child.wait_for("SAVING")  # an async save has started (the one before is finalized)
            time.sleep(rnd.uniform(0.0, 0.6))
        finally:
            child.proc.send_signal(signal.SIGKILL)
            child.proc.wait()
        lines = []
        while not child.lines.empty():
            lines.append(child.lines.get())
        saved = [int(x.split()[1]) for x in lines if x.startswith("SAVED")]
        with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
            latest = ckpt.latest_step()
            # Everything the child reported as finalized survives; nothing half-written shows.
            assert latest is not None and latest >= max(saved + [saved_before])
            tree, meta = ckpt.restore(on_one_device(tree_for(latest, N_BIG)))
            assert meta == {"step": latest}
            assert_bitwise_equal(jax.device_get(tree), tree_for(latest, N_BIG))
        saved_before = latest
    # A fresh manager after the crashes cleans up tmp dirs and saves again.
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        ckpt.save(latest + 1, {"w": jnp.ones(3)}, {"after": "crash"})
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.restore({"w": jnp.ones(3)})[1] == {"after": "crash"}


def test_unclosed_async_save_still_finalizes_at_exit(tmp_path):
    child = _Child(tmp_path, 4_000_000, tmp_path.parent / "child.log", "exit")
    assert child.proc.wait(timeout=120) == 0
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 1
        tree, _ = ckpt.restore(on_one_device(tree_for(1, 4_000_000)))
    assert_bitwise_equal(jax.device_get(tree), tree_for(1, 4_000_000))


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_read_only_reader_sees_committed_steps_and_changes_nothing(tmp_path):
    """A reader beside a live run: the writer's in-flight save (a `*.orbax-checkpoint-tmp` dir)
    is neither listed, read nor removed (a writer-style manager removes it at creation, which
    crashed the run), and the reader writes, moves and deletes nothing."""
    state = _train_state()
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        ckpt.save(7, state, {"epoch": 1})
    in_flight = tmp_path / "9.orbax-checkpoint-tmp" / "state"
    in_flight.mkdir(parents=True)
    (in_flight / "_sharding").write_text("half-written by the live run")
    before = _snapshot(tmp_path)
    with Checkpointer(tmp_path, max_to_keep=2, best_metric="val_accuracy", read_only=True) as reader:
        assert reader.all_steps() == [7] and reader.best_step() is None
        restored, meta = reader.restore(None)
        with pytest.raises(ValueError, match="read-only"):
            reader.save(10, state, {"epoch": 2})
    assert meta == {"epoch": 1} and int(restored["step"]) == 7
    for a, b in zip(jax.tree.leaves(restored["params"]), jax.tree.leaves(state["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert _snapshot(tmp_path) == before


def test_read_only_reader_never_moves_a_damaged_step_aside(tmp_path):
    with Checkpointer(tmp_path / "c") as ckpt:
        ckpt.save(7, _train_state(), {"epoch": 1})
    next(p for p in (tmp_path / "c" / "7" / "meta").rglob("*") if p.is_file()).write_text("{garbled")
    with Checkpointer(tmp_path / "c", read_only=True) as reader:
        with pytest.raises(CheckpointError, match="damaged"):
            reader.restore_intact(None, log=lambda *_: None)
    assert (tmp_path / "c" / "7").is_dir() and not (tmp_path / "c.damaged").exists()
