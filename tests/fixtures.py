"""Small synthetic models and batches for the training-engine tests (no data files, no network).

One entry per registry task: a registered model shrunk with constructor overrides (the
registry path, but seconds instead of minutes on 2 CPU cores) and a batch builder that
gives the task's host arrays, shaped as `train.tasks.load_splits` would give them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import zoo
from train import data, tasks
from train.config import Config
from train.state import create_state, make_optimizer

# task -> (registry name, overrides that keep it small)
TASK_MODELS = {
    "classification": ("cnn", {"features": (8, 16)}),
    "binary": ("mlp_binary", {"in_shape": (28, 28, 1), "hidden": (16,)}),  # the recipe's 784-wide input
    "sequence_classification": ("lstm", {"hidden": 32, "num_layers": 1}),
    "language_model": ("char_lstm", {"embed_dim": 16, "hidden": 64, "num_layers": 1}),
    "reconstruction": ("autoencoder", {"features": (8, 16), "latent": 8}),
    "multitask": ("multitask", {"trunk": (64,)}),
    "gan": ("dcgan", {"latent_dim": 16, "g_features": (32, 16), "d_features": (16, 32)}),
}


def digit_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 28, 28, 1) images whose class (label i % 10) is a bright band at row 2 * label,
    on low noise: learnable in a few steps, unlike pure noise."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.int32)
    x = rng.integers(0, 40, (n, 28, 28, 1), dtype=np.uint8)
    for i, c in enumerate(labels):
        x[i, 2 * c + 2 : 2 * c + 6, 4:24] = rng.integers(200, 256, (4, 20, 1), dtype=np.uint8)
    return x, labels


def char_tokens(n: int, seq_len: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """int32 (n, seq_len) windows of a counting sequence (next token = token + 1 mod vocab)."""
    vocab = len(data.CHAR_VOCAB)
    start = np.random.default_rng(seed).integers(0, vocab, (n, 1))
    seq = (start + np.arange(seq_len + 1)) % vocab
    return seq[:, :-1].astype(np.int32), seq[:, 1:].astype(np.int32)


def task_arrays(task: str, n: int, seed: int = 0, seq_len: int = 16) -> dict:
    """Host arrays {"x": ..., maybe "y"} for `task`, as the data layer shapes them."""
    if task == "language_model":
        x, y = char_tokens(n, seq_len, seed)
        return {"x": x, "y": y}
    x, y = digit_images(n, seed)
    return tasks.get(task).view({"image": x, "label": y})


@functools.lru_cache(maxsize=None)
def _initial_variables(task: str, overrides: tuple, seed: int) -> dict:
    # zoo.init compiles model.init (seconds each on a loaded 2-core box): once per model.
    name, small = TASK_MODELS[task]
    model = zoo.create(name, **{**small, **dict(overrides)})
    x = None
    if task != "gan":
        x = jnp.asarray(task_arrays(task, 1)["x"])
        x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x
    return jax.device_get(zoo.init(model, jax.random.split(jax.random.key(seed))[0], x))


def build(task: str, *, optimizer: str = "adam", lr: float = 1e-3, seed: int = 0, **overrides):
    """(model, TrainState, Config) for the task's small model; fresh device buffers every call
    (safe to donate)."""
    name, small = TASK_MODELS[task]
    model = zoo.create(name, **{**small, **overrides})
    variables = jax.tree.map(lambda a: jnp.array(a, copy=True), _initial_variables(task, tuple(sorted(overrides.items())), seed))
    state_key = jax.random.split(jax.random.key(seed))[1]
    state = create_state(model, variables, make_optimizer(optimizer, lr), state_key, players=tasks.get(task).players)
    return model, state, Config(model=name, optimizer=optimizer, lr=lr, seed=seed)


def flat_params(tree) -> np.ndarray:
    """All leaves of a pytree, as one float64 host vector (for tolerances and checksums)."""
    return np.concatenate([np.asarray(jax.device_get(a), np.float64).ravel() for a in jax.tree.leaves(tree)])


def tiny_fit_cfg(tfds_dir, **kw) -> Config:
    """A Config for a real `fit` in seconds: mlp_small with 16 hidden units, 4 steps of 32 per
    epoch on MNIST, 64 validation images, one device."""
    base = dict(
        model="mlp_small", dataset="mnist", epochs=1, batch_size=32, optimizer="adam", lr=1e-3, val_size=64,
        train_limit=128, eval_batch_size=64, sample_every=0, num_devices=1, data_dir=str(tfds_dir),
        model_overrides={"hidden": [16]},
    )
    return Config(**{**base, **kw})


def kill_after_first_epoch(victim, metrics) -> None:
    """SIGKILLs the process `victim` (a Popen) once `metrics` (a metrics.jsonl) holds a record
    (or after 300 s), and waits for it: a worker killed mid-run."""
    import os
    import signal
    import time

    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1) and time.time() < deadline:
        time.sleep(0.2)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()


def returns_promptly(fn, *args, timeout: float = 60.0, fifos=(), **kwargs):
    """What `fn(*args, **kwargs)` returned, or the exception it raised (returned, not raised).

    Runs it in a thread and fails the test if it is still running after `timeout` seconds (a
    reader blocked on a FIFO waits forever); a reader stuck on one of `fifos` is then released
    (a writer opens and closes it), so the thread ends. The call must release the GIL while it
    blocks, as Python's own file opening does; a native open that holds it (safetensors') needs
    a subprocess instead.
    """
    import os
    import threading

    outcome = []

    def run():
        try:
            outcome.append(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to the test (SystemExit included)
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        thread.join(10)
        raise AssertionError(f"{getattr(fn, '__name__', fn)}{args} still running after {timeout} s (blocked?)")
    return outcome[0]
