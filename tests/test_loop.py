"""The loop's features from the outside: early stopping, steps per dispatch (the lax.scan path),
refusing to resume another run, the validation split, augmentation in the step, the progress
bar only on a terminal, --init-from an export dir, and zoo.load without TensorFlow.

In-process runs of the real engine on 128 MNIST images (tiny mlp_small), seconds each."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from tests.fixtures import build, flat_params, task_arrays, tiny_fit_cfg
from train import data, report, tasks

REPO = Path(__file__).resolve().parents[1]


tiny_cfg = tiny_fit_cfg


def quiet(*args, **kwargs):
    pass


def records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def final_params(workdir: Path):
    from train.evaluate import restore_workdir

    return restore_workdir(workdir, "latest")[2]["params"]


# ---------------------------------------------------------------- early stopping


def test_early_stopping_ends_the_run_after_patience_epochs(tfds_dir, tmp_path):
    """A learning rate too small to change a prediction leaves val_accuracy flat: with patience 1
    the run stops after epoch 2 of 4 and says why."""
    from train.loop import fit

    logs = []
    fit(tiny_cfg(tfds_dir, epochs=4, lr=1e-12, early_stop_patience=1), tmp_path, log=logs.append)
    assert [r["epoch"] for r in records(tmp_path)] == [1, 2]
    assert any(line.startswith("early stop: val_accuracy has not improved for 1 epochs (best ") and "at epoch 1)" in line
               for line in logs), logs


# ---------------------------------------------------------------- steps per dispatch


@pytest.fixture(scope="module")
def one_step_per_dispatch(tfds_dir, tmp_path_factory):
    from train.loop import fit

    workdir = tmp_path_factory.mktemp("dispatch1")
    fit(tiny_cfg(tfds_dir, epochs=2, steps_per_dispatch=1, schedule="cosine"), workdir, log=quiet)
    return workdir


@pytest.mark.parametrize("per_dispatch", [2, 4], ids=["2-steps", "whole-epoch"])
def test_steps_per_dispatch_equals_one_step_per_dispatch(one_step_per_dispatch, tfds_dir, tmp_path, per_dispatch):
    """Several steps in one compiled lax.scan (4 = the whole epoch, the GPU default) train the same
    model as one step per dispatch, up to float reassociation."""
    from train.loop import fit

    fit(tiny_cfg(tfds_dir, epochs=2, steps_per_dispatch=per_dispatch, schedule="cosine"), tmp_path, log=quiet)
    np.testing.assert_allclose(flat_params(final_params(tmp_path)), flat_params(final_params(one_step_per_dispatch)),
                               rtol=1e-5, atol=1e-6)
    for got, want in zip(records(tmp_path), records(one_step_per_dispatch)):
        assert got["step"] == want["step"]
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key


# ---------------------------------------------------------------- resuming another run


@pytest.mark.parametrize("change,message", [
    (dict(batch_size=16), "the workdir holds a run with batch_size=32 but this run has batch_size=16"),
    (dict(seed=1), "the workdir holds a run with seed=0 but this run has seed=1"),
    (dict(model_overrides={"hidden": [8]}), "the workdir holds a run with model_overrides="),
    (dict(model="mlp", model_overrides={}), "the workdir holds a run with model='mlp_small' but this run has model='mlp'"),
], ids=["batch-size", "seed", "model-overrides", "model"])
def test_resume_refuses_a_different_run(one_step_per_dispatch, tfds_dir, tmp_path, change, message):
    from train.loop import fit

    workdir = tmp_path / "run"
    shutil.copytree(one_step_per_dispatch, workdir)
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    with pytest.raises(ValueError, match=message):
        fit(tiny_cfg(tfds_dir, epochs=3, steps_per_dispatch=1, schedule="cosine", **change), workdir, log=quiet)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before
    assert records(workdir) == records(one_step_per_dispatch)


# ---------------------------------------------------------------- which examples are which


def test_validation_split_is_the_last_val_size_train_examples(tfds_dir):
    """MNIST has no validation split: it is the last val_size examples of train, never in the
    training slice, whatever train_limit says; the test split stays the test split."""
    splits = tasks.load_splits(tasks.get("classification"), tiny_cfg(tfds_dir, val_size=100, train_limit=50))
    full, test = data.load_split("mnist", "train", data_dir=tfds_dir), data.load_split("mnist", "test", data_dir=tfds_dir)
    np.testing.assert_array_equal(splits.val["x"], full["image"][-100:])
    np.testing.assert_array_equal(splits.val["y"], full["label"][-100:])
    np.testing.assert_array_equal(splits.train["x"], full["image"][:50])
    np.testing.assert_array_equal(splits.test["y"], test["label"])
    whole = tasks.load_splits(tasks.get("classification"), tiny_cfg(tfds_dir, val_size=100, train_limit=0))
    assert len(whole.train["x"]) == len(full["image"]) - 100


# ---------------------------------------------------------------- augmentation


def test_augmentation_flags_change_the_batches():
    """At the same parameters the step's loss is a function of the batch it saw: with augmentation
    off it is the same at every step; with --augment-shift/--augment-rotate it differs from the plain
    batch's and from step to step (a fresh draw per step)."""
    model, state, cfg = build("classification")
    batch = jax.tree.map(jnp.asarray, task_arrays("classification", 16, seed=1))
    task = tasks.get("classification")

    def first_losses(cfg) -> tuple[float, float]:
        step = jax.jit(task.train_step(model, cfg))
        fresh = lambda s: jax.tree.map(lambda a: jnp.array(a, copy=True), s)  # noqa: E731
        at0 = float(step(fresh(state), batch)[1]["loss"])
        at1 = float(step(fresh(state).replace(step=jnp.ones((), jnp.int32)), batch)[1]["loss"])
        return at0, at1

    plain = first_losses(cfg)
    shifted = first_losses(dataclasses.replace(cfg, augment_shift=3, augment_rotate=15.0))
    assert plain[0] == plain[1]
    assert shifted[0] != shifted[1]
    assert abs(shifted[0] - plain[0]) > 1e-4 and abs(shifted[1] - plain[0]) > 1e-4


# ---------------------------------------------------------------- progress bar


@pytest.mark.parametrize("tty", [True, False])
def test_progress_bar_only_on_a_terminal(monkeypatch, tty):
    class Stderr:
        def __init__(self):
            self.text = ""

        def isatty(self):
            return tty

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    fake = Stderr()
    monkeypatch.setattr(sys, "stderr", fake)
    bar = report.Progress(10, "epoch 1", 32)
    bar.update(3, 0.5)
    assert bar.bar.disable is (not tty)  # (tqdm's close() disables every bar)
    bar.close()
    assert ("epoch 1:" in fake.text and "/10 [" in fake.text and "loss=0.5000" in fake.text) is tty, fake.text
    assert tty or fake.text == ""


# ---------------------------------------------------------------- --init-from an export dir


def test_init_from_an_export_dir_starts_from_its_weights(tfds_dir, tmp_path):
    """An exported checkpoint (zoo.formats.orbax_export.write_export) is the run's starting point: one step at a
    negligible learning rate leaves the export's weights (and not the seed's init) in place."""
    from train.loop import fit
    from zoo.formats.orbax_export import write_export

    model = zoo.create("mlp_small", hidden=(16,))
    exported = jax.device_get(zoo.init(model, jax.random.key(123)))
    out = write_export(tmp_path / "export", "mlp_small", exported, model_overrides={"hidden": [16]}, dataset="mnist")
    logs = []
    fit(tiny_cfg(tfds_dir, lr=1e-12, max_steps=1, init_from=str(out)), tmp_path / "run", log=logs.append)
    got = flat_params(final_params(tmp_path / "run"))
    np.testing.assert_allclose(got, flat_params(exported["params"]), atol=1e-8)
    seeded = jax.device_get(zoo.init(model, jax.random.key(0)))
    assert np.max(np.abs(got - flat_params(seeded["params"]))) > 1e-3


# ---------------------------------------------------------------- zoo.load without TensorFlow


def test_zoo_load_works_with_tensorflow_absent():
    """zoo.load (shipped weights) in a process where tensorflow and tfds are absent: a None entry in
    sys.modules makes `import` raise ModuleNotFoundError and importlib.util.find_spec return None,
    as for a package that is not installed (etils asks find_spec whether TF is there)."""
    code = textwrap.dedent('''
        import importlib.util, sys

        BLOCKED = ("tensorflow", "tensorflow_datasets")
        for name in BLOCKED:
            sys.modules[name] = None
        for name in BLOCKED:
            assert importlib.util.find_spec(name) is None
            try:
                __import__(name)
            except ModuleNotFoundError:
                pass
            else:
                raise AssertionError(f"{name} was not blocked")
        import numpy as np, jax, zoo
        model, variables = zoo.load("cnn", pretrained="mnist")
        print(model.apply(variables, np.zeros((2, 28, 28, 1), np.float32)).shape)
        assert all(sys.modules[name] is None for name in BLOCKED)
        assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED and m not in BLOCKED]
    ''')
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "(2, 10)"


# ---------------------------------------------------------------- a signal in an epoch's last dispatch


@pytest.mark.parametrize("last_epoch", [False, True], ids=["first-epoch", "last-epoch"])
def test_a_signal_in_an_epochs_last_step_still_evaluates_that_epoch(tfds_dir, tmp_path, monkeypatch, last_epoch):
    """SIGTERM during the last step of an epoch saves that step and stops before the evaluation;
    the resumed run evaluates that epoch first (it used to skip it: no metrics line, no epoch
    checkpoint, and after the run's last step nothing at all), so its log equals the
    uninterrupted run's."""
    import signal

    from train import loop
    from train.loop import Preempted, fit

    cfg = tiny_cfg(tfds_dir, epochs=2, steps_per_dispatch=1)
    fit(cfg, tmp_path / "ref", log=quiet)
    stop_at = (8 if last_epoch else 4) - 1  # 4 steps per epoch: the step before the epoch's end
    setup = loop.setup

    def signalled_setup(*args, **kwargs):
        run = setup(*args, **kwargs)
        run_chunk = run.strategy.run_chunk

        def chunk(state, data_, idx):
            if run.step == stop_at:
                run.signals.signum = signal.SIGTERM
            return run_chunk(state, data_, idx)

        run.strategy.run_chunk = chunk
        return run

    monkeypatch.setattr(loop, "setup", signalled_setup)
    with pytest.raises(Preempted):
        fit(cfg, tmp_path / "w", log=quiet)
    monkeypatch.setattr(loop, "setup", setup)
    fit(cfg, tmp_path / "w", log=quiet)
    keys = ("epoch", "step", "train_loss", "val_loss", "val_accuracy")
    assert [{k: r[k] for k in keys} for r in records(tmp_path / "w")] == \
        [{k: r[k] for k in keys} for r in records(tmp_path / "ref")]
