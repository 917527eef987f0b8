"""Populations (train/population.py, `zoo sweep --population K`): K members trained in one
program give exactly what K separate `train.loop.fit` runs give, and each member's folder is a
normal run folder."""

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.fixtures import flat_params, kill_after_first_epoch, tiny_fit_cfg
from train import loop, population
from train.state import make_optimizer

TOL = 1e-5
METRIC_PREFIXES = ("train_", "val_")


def _records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(pop_dir, plain_dir, pop_params, plain_params):
    got, want = _records(pop_dir), _records(plain_dir)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want):
        keys = sorted(k for k in b if k.startswith(METRIC_PREFIXES))
        assert sorted(k for k in a if k.startswith(METRIC_PREFIXES)) == keys
        for k in keys:
            assert a[k] == pytest.approx(b[k], abs=TOL), (k, a["epoch"])
    np.testing.assert_allclose(flat_params(pop_params), flat_params(plain_params), rtol=0, atol=TOL)


def _fit_both(cfgs, tmp_path):
    result = population.fit_population(cfgs, [tmp_path / f"pop{i}" for i in range(len(cfgs))], log=lambda m: None)
    plain = [loop.fit(c, tmp_path / f"plain{i}", log=lambda m: None) for i, c in enumerate(cfgs)]
    return result, plain


def test_mlp_population_equals_separate_runs(tfds_dir, tmp_path):
    # 800 examples / 32 = 25 steps per epoch, 2 epochs = 50 steps; member 3 clips, the others
    # (no clipping in their own runs) get max_norm=inf in the shared optimizer.
    values = [dict(lr=1e-3, seed=0), dict(lr=3e-3, seed=1, weight_decay=1e-3), dict(lr=1e-3, seed=2, b1=0.8),
              dict(lr=2e-3, seed=3, clip_norm=0.5)]
    cfgs = [tiny_fit_cfg(tfds_dir, epochs=2, train_limit=800, **v) for v in values]
    result, plain = _fit_both(cfgs, tmp_path)
    assert [m.status for m in result.members] == ["complete"] * 4
    for i in range(4):
        _assert_same_run(tmp_path / f"pop{i}", tmp_path / f"plain{i}", result.variables(i)["params"],
                         plain[i].state.params)
        assert _records(tmp_path / f"pop{i}")[-1]["step"] == 50
        assert json.loads((tmp_path / f"pop{i}" / "config.json").read_text()) == cfgs[i].to_json()
    # the members really differ (a shared value or seed would make these equal)
    finals = [flat_params(result.variables(i)["params"]) for i in range(4)]
    assert all(not np.allclose(finals[0], f) for f in finals[1:])

    # each member folder is an ordinary run: zoo eval reads it, and zoo train resumes it with
    # the optimizer state a separate run has (member 0 did not clip; the shared chain did)
    from train.evaluate import restore_workdir

    _, _, variables, step = restore_workdir(tmp_path / "pop0")
    assert step == 50
    np.testing.assert_array_equal(flat_params(variables["params"]), flat_params(result.variables(0)["params"]))
    run = loop.setup(dataclasses.replace(cfgs[0], epochs=3), tmp_path / "pop0", log=lambda m: None)
    try:
        assert run.step == 50 and run.book.epoch == 2
        assert jax.tree.structure(run.state.opt_state) == jax.tree.structure(plain[0].state.opt_state)
        np.testing.assert_allclose(flat_params(run.state.opt_state), flat_params(plain[0].state.opt_state),
                                   rtol=1e-4, atol=TOL)
    finally:
        run.close()


def test_cnn_with_dropout_momentum_population(tfds_dir, tmp_path):
    # dropout draws from each member's own key; momentum is a per-member array
    base = dict(model="cnn", model_overrides={"features": [4, 8], "dropout_rate": 0.5}, optimizer="momentum",
                train_limit=96, epochs=1, lr=0.05)
    cfgs = [tiny_fit_cfg(tfds_dir, seed=5, momentum=0.9, **base), tiny_fit_cfg(tfds_dir, seed=6, momentum=0.5, **base)]
    result, plain = _fit_both(cfgs, tmp_path)
    for i in range(2):
        _assert_same_run(tmp_path / f"pop{i}", tmp_path / f"plain{i}", result.variables(i)["params"],
                         plain[i].state.params)


def test_population_across_two_devices(tfds_dir, tmp_path):
    # member axis replicated, each member's batch split over the 2 devices (the conftest's fake CPUs)
    cfgs = [tiny_fit_cfg(tfds_dir, num_devices=2, seed=s, lr=lr) for s, lr in ((0, 1e-3), (1, 4e-3))]
    result, plain = _fit_both(cfgs, tmp_path)
    for i in range(2):
        _assert_same_run(tmp_path / f"pop{i}", tmp_path / f"plain{i}", result.variables(i)["params"],
                         plain[i].state.params)


def test_diverged_member_fails_alone(tfds_dir, tmp_path):
    cfgs = [tiny_fit_cfg(tfds_dir, optimizer="sgd", lr=lr, epochs=2) for lr in (1e-2, 1e38)]
    result = population.fit_population(cfgs, [tmp_path / "a", tmp_path / "b"], log=lambda m: None)
    assert [m.status for m in result.members] == ["complete", "diverged"]
    assert "non-finite" in result.members[1].error
    assert len(_records(tmp_path / "a")) == 2 and not (tmp_path / "b" / "metrics.jsonl").exists()
    assert not any((tmp_path / "b" / "checkpoints").iterdir())  # no checkpoint of non-finite parameters


def test_on_epoch_stops_a_member(tfds_dir, tmp_path):
    cfgs = [tiny_fit_cfg(tfds_dir, seed=s, epochs=3) for s in (0, 1)]
    seen = []

    def on_epoch(i, record):
        seen.append((i, record["epoch"]))
        return i == 1  # member 1 is pruned after its first epoch

    result = population.fit_population(cfgs, [tmp_path / "a", tmp_path / "b"], log=lambda m: None, on_epoch=on_epoch)
    assert [m.status for m in result.members] == ["complete", "pruned"]
    assert seen == [(0, 1), (1, 1), (0, 2), (0, 3)]
    assert len(_records(tmp_path / "a")) == 3 and len(_records(tmp_path / "b")) == 1


def test_population_epochs_run_the_single_run_loop(tfds_dir, tmp_path, monkeypatch):
    # one dispatch loop: a population's epochs go through loop.run_epoch, as a run's do
    epochs, stock = [], loop.run_epoch

    def counted(run):
        epochs.append(len(run.books))
        return stock(run)

    monkeypatch.setattr(loop, "run_epoch", counted)
    cfgs = [tiny_fit_cfg(tfds_dir, seed=s, epochs=2) for s in (0, 1)]
    result = population.fit_population(cfgs, [tmp_path / "a", tmp_path / "b"], log=lambda m: None)
    assert [m.status for m in result.members] == ["complete"] * 2
    assert epochs == [2, 2]  # two epochs, each over both members' books


def test_members_must_share_static_values(tfds_dir, tmp_path):
    a, b = tiny_fit_cfg(tfds_dir), tiny_fit_cfg(tfds_dir, batch_size=16, optimizer="sgd")
    with pytest.raises(ValueError, match="member 1 differs from member 0 in batch_size, optimizer"):
        population.fit_population([a, b], [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ValueError, match="one workdir per member"):
        population.fit_population([a], [tmp_path / "a", tmp_path / "b"])
    assert population.group([a, b, tiny_fit_cfg(tfds_dir, lr=0.1, seed=3)]) == [[0, 2], [1]]
    with pytest.raises(ValueError, match=r"jit strategy \(member axis replicated, batches sharded\); got --strategy pmap"):
        population.fit_population([tiny_fit_cfg(tfds_dir, strategy="pmap")], [tmp_path / "a"])
    assert not (tmp_path / "a").exists()


def test_a_folder_with_a_checkpoint_is_refused(tfds_dir, tmp_path):
    cfg = tiny_fit_cfg(tfds_dir)
    loop.fit(cfg, tmp_path / "done", log=lambda m: None)
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        population.fit_population([cfg], [tmp_path / "done"], log=lambda m: None)


def test_array_optimizer_values_match_python_values():
    params = {"w": jnp.array([[1.0, -2.0], [3.0, 0.5]])}
    grads = {"w": jnp.array([[4.0, -1.0], [0.25, 2.0]])}

    def update(**kw):
        tx = make_optimizer("adam", 1e-2, **kw)
        return tx.update(grads, tx.init(params), params)[0]["w"]

    # an array clip_norm of 0 means no clipping, bit for bit; other values clip as the float does
    np.testing.assert_array_equal(update(clip_norm=jnp.float32(0)), update(clip_norm=0.0))
    np.testing.assert_array_equal(update(clip_norm=jnp.float32(0.5)), update(clip_norm=0.5))
    np.testing.assert_array_equal(update(weight_decay=jnp.float32(0)), update(weight_decay=0.0))
    np.testing.assert_allclose(update(weight_decay=jnp.float32(0.1)), update(weight_decay=0.1), rtol=1e-7)
    assert not np.array_equal(update(clip_norm=0.5), update())
    # a plain run's chain is unchanged: Python zeros leave clipping and decay out
    assert len(make_optimizer("adam", 1e-2).init(params)) == 1
    assert len(make_optimizer("adam", 1e-2, clip_norm=jnp.float32(0), weight_decay=jnp.float32(0)).init(params)) == 3


# ---------------------------------------------------------------- zoo sweep --population


def _sweep_flags(tfds_dir, epochs=1):
    return ["--epochs", epochs, "--batch-size", 32, "--train-limit", 128, "--val-size", 64, "--data-dir", tfds_dir,
            "--schedule", "constant", "--num-devices", 1, "--set", "hidden=[16]"]


def test_cli_sweep_population(cli, tfds_dir, tmp_path):
    workdir = tmp_path / "sweep"
    code, out, err = cli("sweep", "mlp_small", "--population", 4, "--trials", 4, "--sampler", "random", "--pruner",
                         "none", "--param", "lr=loguniform:1e-4:1e-2", "--param", "seed=int:0:1000",
                         "--param", "batch_size=choice:16,32", "--workdir", workdir, *_sweep_flags(tfds_dir, epochs=2))
    assert code == 0, err
    folders = sorted((workdir / "trials").iterdir(), key=lambda p: int(p.name))
    assert [p.name for p in folders] == ["0", "1", "2", "3"]
    import optuna

    study = optuna.load_study(study_name="sweep-mlp_small", storage=f"sqlite:///{workdir / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    for t, folder in zip(study.trials, folders):
        config = json.loads((folder / "config.json").read_text())
        assert (config["lr"], config["seed"], config["batch_size"]) == (t.params["lr"], t.params["seed"],
                                                                        t.params["batch_size"])
        records = _records(folder)
        assert len(records) == 2 and records[-1]["val_accuracy"] == t.value
        assert t.intermediate_values == {1: records[0]["val_accuracy"], 2: records[1]["val_accuracy"]}
    # one population per batch size among the asked trials
    sizes = sorted(int(line.split("population of ")[1].split(":")[0]) for line in out.splitlines()
                   if line.startswith("population of"))
    assert sum(sizes) == 4 and len(sizes) == len({t.params["batch_size"] for t in study.trials})
    md = (workdir / "results.md").read_text()
    assert md.count("| complete |") == 4
    assert (workdir / "best.json").exists()


def test_sweep_population_prunes_members(tfds_dir, tmp_path, monkeypatch):
    optuna = pytest.importorskip("optuna")
    from train import sweep

    class PruneAfterFirst(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return trial.number > 0

    monkeypatch.setattr(sweep, "_pruner", lambda name: PruneAfterFirst())
    workdir = tmp_path / "sweep"
    overrides = {"epochs": 2, "batch_size": 32, "train_limit": 128, "val_size": 64, "data_dir": str(tfds_dir),
                 "num_devices": 1, "model_overrides": {"hidden": [16]}}
    result = sweep.run_sweep("mlp_small", {"lr": "loguniform:1e-4:1e-2"}, trials=3, workdir=workdir,
                             sampler="random", population=3, overrides=overrides, log=lambda m: None)
    assert [t.state.name for t in result.study.trials] == ["COMPLETE", "PRUNED", "PRUNED"]
    for number, epochs in ((0, 2), (1, 1), (2, 1)):
        assert len(_records(workdir / "trials" / str(number))) == epochs


@pytest.mark.parametrize("value", [0, -2, 1.5, True])
def test_bad_population_fails_before_any_work(tmp_path, value):
    pytest.importorskip("optuna")
    from train import sweep

    with pytest.raises(ValueError, match=r"--population .*must be an integer >= 1"):
        sweep.run_sweep("mlp_small", {"lr": "uniform:0.1:0.2"}, trials=2, workdir=tmp_path / "s", population=value)
    assert not (tmp_path / "s").exists()


def test_population_needs_the_jit_strategy(tmp_path):
    pytest.importorskip("optuna")
    from train import sweep

    with pytest.raises(ValueError, match="--population 2 trains under the jit strategy; got --strategy pmap"):
        sweep.run_sweep("mlp_small", {"lr": "uniform:0.1:0.2"}, trials=2, workdir=tmp_path / "s", population=2,
                        overrides={"strategy": "pmap"})
    assert not (tmp_path / "s").exists()


def test_cli_population_zero(cli, tmp_path):
    code, out, err = cli("sweep", "mlp_small", "--population", 0, "--param", "lr=uniform:0.1:0.2",
                         "--workdir", tmp_path / "s")
    assert code == 2 and "--population 0: must be an integer >= 1" in err
    assert not (tmp_path / "s").exists()


@pytest.mark.slow  # a CLI worker killed mid-population, then its rerun: about a minute on 2 cores
def test_killed_population_worker_trials_fail_and_are_retried(tfds_dir, cli_env, tmp_path):
    optuna = pytest.importorskip("optuna")
    url = f"sqlite:///{tmp_path}/kill.db"
    args = [sys.executable, "-m", "train.cli", "sweep", "mlp_small", "--population", 2, "--trials", 2,
            "--param", "lr=loguniform:1e-4:1e-2", "--sampler", "random", "--pruner", "none", "--storage", url,
            "--study", "k", "--heartbeat", 1, "--checkpoint-every", 100, "--workdir", tmp_path / "k",
            *_sweep_flags(tfds_dir, epochs=30)]
    args = [str(a) for a in args]
    root = Path(__file__).resolve().parents[1]
    victim = subprocess.Popen(args, cwd=root, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    metrics = tmp_path / "k" / "trials" / "0" / "metrics.jsonl"
    kill_after_first_epoch(victim, metrics)
    assert [t.state.name for t in optuna.load_study(study_name="k", storage=url).trials] == ["RUNNING"] * 2
    time.sleep(3)  # past the grace period (2 heartbeats)
    rerun = subprocess.run(args, cwd=root, env=cli_env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    trials = optuna.load_study(study_name="k", storage=url).trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "COMPLETE", "COMPLETE"]  # never counted complete
    assert [t.params for t in trials[2:]] == [t.params for t in trials[:2]]  # the retries ran the killed values
    assert _records(tmp_path / "k" / "trials" / "2")[-1]["epoch"] == 30
