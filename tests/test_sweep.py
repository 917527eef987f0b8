"""`zoo sweep` (train/sweep.py): specs and names checked before any trial, trials as real runs,
results/best.json/plots, pruning through loop.fit's on_epoch hook, and workers sharing one storage."""

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from train import sweep  # noqa: E402
from train.cli import main  # noqa: E402
from train.config import Config, resolve  # noqa: E402
from tests.fixtures import kill_after_first_epoch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def tiny(tfds_dir, epochs=2) -> dict:
    """Config values of a seconds-long mlp_small run (4 fake devices: batch sizes divisible by 4)."""
    return {"epochs": epochs, "batch_size": 32, "train_limit": 256, "val_size": 256, "data_dir": str(tfds_dir),
            "schedule": "constant", "log_every": 1000, "num_devices": 1}


def tiny_flags(tfds_dir, epochs=2) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in tiny(tfds_dir, epochs).items()]


# ---------------------------------------------------------------- specs and names


def test_parse_spec_kinds():
    lr = sweep.parse_spec("lr", "loguniform:1e-4:1e-2")
    assert (lr.low, lr.high, lr.log) == (1e-4, 1e-2, True)
    u = sweep.parse_spec("momentum", "uniform:0.5:0.99")
    assert (u.low, u.high, u.log) == (0.5, 0.99, False)
    n = sweep.parse_spec("epochs", "int:1:4")
    assert (n.low, n.high) == (1, 4) and isinstance(n, optuna.distributions.IntDistribution)
    c = sweep.parse_spec("batch_size", "choice:64,128,256")
    assert c.choices == (64, 128, 256)
    words = sweep.parse_spec("optimizer", "choice:adam,sgd")
    assert words.choices == ("adam", "sgd")
    lists = sweep.parse_spec("set.hidden", "choice:[32],[64,32]")  # JSON lists travel as JSON text
    assert [sweep.decode(v) for v in lists.choices] == [[32], [64, 32]]


@pytest.mark.parametrize("spec, message", [
    ("logunifrm:1e-4:1e-2", "did you mean loguniform"),
    ("loguniform:1e-2:1e-4", "empty or inverted"),
    ("uniform:0.5:0.5", "empty or inverted"),
    ("int:4:1", "empty or inverted"),
    ("loguniform:0:1", "must be > 0"),
    ("uniform:a:1", "'a' is not a number"),
    ("int:1.5:4", "'1.5' is not an integer"),
    ("uniform:1", "needs two bounds"),
    ("choice:", "comma-separated values"),
    ("choice:1,,2", "comma-separated values"),
    ("choice:1,1", "repeat"),
    ("uniform:0:inf", "not a finite number"),
])
def test_parse_spec_rejects(spec, message):
    with pytest.raises(ValueError, match=message) as e:
        sweep.parse_spec("lr", spec)
    assert f"--param lr={spec}" in str(e.value)


def test_parse_param_and_space_file(tmp_path):
    assert sweep.parse_param("lr=loguniform:1e-4:1e-2") == ("lr", "loguniform:1e-4:1e-2")
    with pytest.raises(ValueError, match="must be NAME=SPEC"):
        sweep.parse_param("lr")
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"lr": "loguniform:1e-4:1e-2", "batch_size": [32, 64], "optimizer": ["adam", "sgd"]}))
    assert sweep.read_space(path) == {"lr": "loguniform:1e-4:1e-2", "batch_size": "choice:32,64",
                                      "optimizer": "choice:adam,sgd"}
    path.write_text(json.dumps({"lr": 0.1}))
    with pytest.raises(ValueError, match="spec string"):
        sweep.read_space(path)
    path.write_text("[1]")
    with pytest.raises(ValueError, match="JSON object"):
        sweep.read_space(path)


def test_check_name():
    assert sweep.check_name("mlp_small", "lr") == "lr"
    assert sweep.check_name("mlp_small", "learning_rate") == "lr"  # a Config alias
    assert sweep.check_name("mlp_small", "set.dropout_rate") == "set.dropout_rate"
    with pytest.raises(ValueError, match=r"unknown parameter \(did you mean lr\?\)"):
        sweep.check_name("mlp_small", "lrr")
    with pytest.raises(ValueError, match=r"no field 'dropout' \(did you mean set.dropout_rate\?\)"):
        sweep.check_name("mlp_small", "set.dropout")
    with pytest.raises(ValueError, match="unknown parameter"):
        sweep.check_name("mlp_small", "model")


def test_build_space_checks_every_value_before_any_trial():
    space = sweep.build_space("mlp_small", {"lr": "loguniform:1e-4:1e-2", "batch_size": "int:32:128"})
    assert space["batch_size"].step == 4  # the 4 test devices: only divisible batch sizes are sampled
    with pytest.raises(ValueError, match=r"--param momentum=uniform:0.5:1.5: value 1.5: --momentum 1.5: must be"):
        sweep.build_space("mlp_small", {"momentum": "uniform:0.5:1.5"})
    with pytest.raises(ValueError, match="not divisible by the 4 devices"):
        sweep.build_space("mlp_small", {"batch_size": "choice:64,66"})
    with pytest.raises(ValueError, match=r"value 'sgdd'.*did you mean sgd"):
        sweep.build_space("mlp_small", {"optimizer": "choice:adam,sgdd"})
    with pytest.raises(ValueError, match=r"--param set.hidden=choice:\[0\]: value '\[0\]'"):
        sweep.build_space("mlp_small", {"set.hidden": "choice:[0]"})
    with pytest.raises(ValueError, match="given twice"):
        sweep.build_space("mlp_small", {"lr": "uniform:0.1:0.2", "learning_rate": "uniform:0.1:0.2"})
    with pytest.raises(ValueError, match="nothing to search"):
        sweep.build_space("mlp_small", {})


def test_grid_needs_discrete_values():
    space = sweep.build_space("mlp_small", {"batch_size": "choice:32,64", "epochs": "int:1:3"})
    assert sweep.grid_of(space) == {"batch_size": [32, 64], "epochs": [1, 2, 3]}
    with pytest.raises(ValueError, match="lr is a continuous range"):
        sweep.grid_of(sweep.build_space("mlp_small", {"lr": "uniform:0.1:0.2"}))


def test_unreachable_storage(tmp_path):
    with pytest.raises(ValueError, match=r"--storage sqlite:///.*cannot open the storage"):
        sweep.open_storage(f"sqlite:///{tmp_path}/missing/dir/study.db")
    with pytest.raises(ValueError, match=r"--storage postgresql://.*cannot open the storage"):
        sweep.open_storage("postgresql://nobody@127.0.0.1:1/none")


def test_study_with_another_space_or_fixed_values(tmp_path):
    storage = sweep.open_storage(f"sqlite:///{tmp_path}/study.db")
    space = sweep.build_space("mlp_small", {"lr": "uniform:0.1:0.2"})
    sweep.open_study("mlp_small", space, storage=storage, study_name="s", fixed={"epochs": 2})
    sweep.open_study("mlp_small", space, storage=storage, study_name="s", fixed={"epochs": 2})  # joins
    other = sweep.build_space("mlp_small", {"lr": "uniform:0.1:0.3"})
    with pytest.raises(ValueError, match="study 's' exists with model 'mlp_small' and space"):
        sweep.open_study("mlp_small", other, storage=storage, study_name="s", fixed={"epochs": 2})
    with pytest.raises(ValueError, match="other fixed values: epochs 2 there, 3 here"):
        sweep.open_study("mlp_small", space, storage=storage, study_name="s", fixed={"epochs": 3})


def test_cli_bad_input_fails_before_any_work(tmp_path, capsys):
    workdir = tmp_path / "sweep"
    assert main(["sweep", "mlp_small", "--param", "lrr=uniform:0.1:0.2", "--workdir", str(workdir)]) == 2
    assert "did you mean lr?" in capsys.readouterr().err
    assert main(["sweep", "mlp_small", "--param", "lr=uniform:0.2:0.1", "--workdir", str(workdir)]) == 2
    assert "empty or inverted" in capsys.readouterr().err
    assert main(["sweep", "mlp_small", "--param", "lr=uniform:0.1:0.2", "--sampler", "grid", "--workdir", str(workdir)]) == 2
    assert "continuous range" in capsys.readouterr().err
    assert not workdir.exists()


def test_cli_seed_is_the_samplers_and_train_flags_fix_values():
    from train import cli

    args = cli.build_parser().parse_args(["sweep", "mlp", "--seed", "3", "--param", "lr=uniform:0.1:0.2",
                                          "--epochs", "2", "--set", "dropout_rate=0.1"])
    assert args.sampler_seed == 3 and args.seed is None and args.param == ["lr=uniform:0.1:0.2"]
    overrides = cli._overrides(args)
    assert overrides["epochs"] == 2 and overrides["model_overrides"] == {"dropout_rate": 0.1}


# ---------------------------------------------------------------- trials as runs


def test_on_epoch_hook_stops_the_run(tfds_dir, tmp_path):
    from train import loop

    cfg = resolve("mlp_small", tiny(tfds_dir, epochs=3))
    seen = []
    result = loop.fit(cfg, tmp_path / "run", log=lambda m: None, on_epoch=lambda r: seen.append(r["epoch"]) or r["epoch"] == 1)
    assert seen == [1] and result.record["epoch"] == 1
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_sweep_end_to_end(tfds_dir, tmp_path):
    workdir = tmp_path / "sweep"
    params = {"lr": "loguniform:1e-4:1e-1", "set.dropout_rate": "uniform:0:0.5"}
    result = sweep.run_sweep("mlp_small", params, trials=3, workdir=workdir, sampler="random", pruner="none",
                             seed=1, overrides=tiny(tfds_dir), log=lambda m: None)
    trials = result.study.trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    for t in trials:  # each trial is a real run in its own folder, with the sampled values
        run = workdir / "trials" / str(t.number)
        config = json.loads((run / "config.json").read_text())
        assert config["lr"] == t.params["lr"] and config["model_overrides"]["dropout_rate"] == t.params["set.dropout_rate"]
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert len(lines) == 2 and lines[-1]["val_accuracy"] == t.value
        assert t.intermediate_values == {1: lines[0]["val_accuracy"], 2: lines[1]["val_accuracy"]}

    rows = list(csv.DictReader((workdir / "results.csv").open()))
    assert len(rows) == 3 and {r["state"] for r in rows} == {"complete"}
    values = [float(r["value"]) for r in rows]
    assert values == sorted(values, reverse=True)  # accuracy: best first
    assert float(rows[0]["wall_s"]) > 0 and rows[0]["lr"]
    md = (workdir / "results.md").read_text()
    assert "| trial | state | val_accuracy |" in md and md.count("| complete |") == 3

    # best.json is a recipe: zoo train --config best.json reproduces the best trial
    best = result.study.best_trial
    recipe = json.loads((workdir / "best.json").read_text())
    assert recipe["lr"] == best.params["lr"] and "model" not in recipe
    from train import loop

    assert "data_dir" not in recipe  # machine-specific: given by flag
    cfg = resolve("mlp_small", {"data_dir": str(tfds_dir)}, config_file=workdir / "best.json")
    again = loop.fit(cfg, tmp_path / "again", log=lambda m: None)
    assert again.record["val_accuracy"] == pytest.approx(best.value, abs=1e-6)
    for name in ("history", "importances", "parallel_coordinates"):
        assert (workdir / f"{name}.png").stat().st_size > 1000

    # a rerun continues the study: nothing left at --trials 3, one more at --trials 4
    again = sweep.run_sweep("mlp_small", params, trials=3, workdir=workdir, sampler="random", pruner="none", seed=1,
                            overrides=tiny(tfds_dir), log=lambda m: None)
    assert len(again.study.trials) == 3
    more = sweep.run_sweep("mlp_small", params, trials=4, workdir=workdir, sampler="random", pruner="none", seed=2,
                           overrides=tiny(tfds_dir), log=lambda m: None)
    assert len(more.study.trials) == 4 and (workdir / "trials" / "3" / "metrics.jsonl").exists()
    with pytest.raises(ValueError, match="other fixed values: epochs 2 there, 3 here"):
        sweep.run_sweep("mlp_small", params, trials=5, workdir=workdir, overrides=tiny(tfds_dir, epochs=3), log=lambda m: None)


class _PruneAfterFirst(optuna.pruners.BasePruner):
    """Prunes every trial but the first at its first report (the median pruner needs many trials)."""

    def prune(self, study, trial):
        return trial.number > 0


def test_pruned_trials_stop_early(tfds_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "_pruner", lambda name: _PruneAfterFirst())
    workdir = tmp_path / "sweep"
    result = sweep.run_sweep("mlp_small", {"lr": "loguniform:1e-4:1e-2"}, trials=3, workdir=workdir, sampler="random",
                             overrides=tiny(tfds_dir, epochs=3), log=lambda m: None)
    assert [t.state.name for t in result.study.trials] == ["COMPLETE", "PRUNED", "PRUNED"]
    for number, epochs in ((0, 3), (1, 1), (2, 1)):
        assert len((workdir / "trials" / str(number) / "metrics.jsonl").read_text().splitlines()) == epochs
    rows = list(csv.DictReader((workdir / "results.csv").open()))
    assert [r["state"] for r in rows] == ["complete", "pruned", "pruned"]
    assert all(r["value"] for r in rows)  # pruned rows show their last reported metric


def test_cli_grid_sweep(tfds_dir, tmp_path, capsys):
    workdir = tmp_path / "grid"
    code = main(["sweep", "mlp_small", "--param", "batch_size=choice:32,64", "--sampler", "grid", "--trials", "5",
                 "--workdir", str(workdir), *tiny_flags(tfds_dir, epochs=1)])
    assert code == 0
    rows = list(csv.DictReader((workdir / "results.csv").open()))
    assert sorted(int(r["batch_size"]) for r in rows) == [32, 64]  # the grid is exhausted after 2 trials
    assert (workdir / "metric_vs_param.png").stat().st_size > 1000
    assert "wrote" in capsys.readouterr().out


# ---------------------------------------------------------------- continued studies and workers


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_continued_study_samples_new_points(tmp_path, sampler):
    url = f"sqlite:///{tmp_path}/study.db"
    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
             "batch_size": optuna.distributions.IntDistribution(32, 256, step=32)}
    asked = []

    def worker(n: int, finish: bool = True) -> None:
        study = sweep.open_study("mlp_small", space, storage=sweep.open_storage(url), study_name="s", sampler=sampler,
                                 pruner="none", seed=0)
        for _ in range(n):
            trial = study.ask(space)
            asked.append(tuple(sorted(trial.params.items())))
            if finish:
                study.tell(trial, 0.5)

    with pytest.warns(match="Heartbeat"):  # ask() outside optimize(); heartbeats do not matter here
        worker(2)  # the first run
        worker(2)  # rerun with more --trials
        worker(1, finish=False)  # a worker killed mid-trial: its trial stays running
        worker(2)  # the restarted worker
    assert len(set(asked)) == len(asked), asked
    fresh = sweep.open_study("mlp_small", space, storage=sweep.open_storage(f"sqlite:///{tmp_path}/new.db"),
                             study_name="s", sampler=sampler, pruner="none", seed=0)
    with pytest.warns(match="Heartbeat"):
        assert tuple(sorted(fresh.ask(space).params.items())) == asked[0]  # a new study: --seed as given


def test_results_show_what_another_worker_did_since(tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"
    space = {"lr": optuna.distributions.FloatDistribution(0.1, 0.2)}
    zero, one = (sweep.open_study("mlp_small", space, storage=sweep.open_storage(url), study_name="s",
                                  sampler="random", pruner="none", seed=i) for i in (0, 1))
    w0, w1, stranger = tmp_path / "w0", tmp_path / "w1", tmp_path / "stranger"
    for folder in (w0, w1, stranger):
        folder.mkdir()
    (stranger / "results.md").write_text("# Sweep other: mlp\n")  # another study's: left alone
    with pytest.warns(match="Heartbeat"):
        mine, theirs, odd = zero.ask(space), one.ask(space), one.ask(space)
    for trial, folder in ((mine, w0), (theirs, w1), (odd, stranger)):
        trial.set_user_attr("workdir", str(folder / "trials" / str(trial.number)))
        trial.set_user_attr("config", Config(model="mlp_small").to_json())  # best.json is made from it
    zero.tell(mine, 0.9)
    sweep.write_results(zero, w0)  # worker 0 is done; worker 1 is still training
    assert (w0 / "results.md").read_text().count("| running |") == 2
    one.tell(theirs, state=optuna.trial.TrialState.PRUNED)
    one.tell(odd, 0.5)
    sweep.write_results(one, w1)
    for folder in (w0, w1):
        md = (folder / "results.md").read_text()
        assert "| running |" not in md and md.count("| pruned |") == 1 and md.count("| complete |") == 2, md
        assert [r["state"] for r in csv.DictReader((folder / "results.csv").open())] == ["complete", "complete", "pruned"]
    assert (stranger / "results.md").read_text() == "# Sweep other: mlp\n"


def test_the_documented_multi_worker_storage_works_in_a_fresh_directory(tfds_dir, tmp_path, monkeypatch):
    import re

    doc = (REPO / "docs" / "sweep.md").read_text()
    url = re.search(r"--storage (sqlite:///\S+)", doc).group(1)
    assert not url.startswith("sqlite:////")  # relative to the current directory, as the docs run it
    monkeypatch.chdir(tmp_path)
    result = sweep.run_sweep("mlp_small", {"lr": "loguniform:1e-4:1e-2"}, trials=1, workdir="runs/w0", sampler="random",
                             pruner="none", storage=url, study_name="mlp-lr", overrides=tiny(tfds_dir, epochs=1),
                             log=lambda m: None)
    assert [t.state.name for t in result.study.trials] == ["COMPLETE"]
    assert (tmp_path / url[len("sqlite:///"):]).is_file()


def test_storage_folder_that_cannot_be_made_is_one_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"--storage sqlite:///.*/file/db/study.db: cannot create the folder"):
        sweep.run_sweep("mlp_small", {"lr": "uniform:0.1:0.2"}, trials=1, workdir=tmp_path / "w",
                        storage=f"sqlite:///{tmp_path}/file/db/study.db", log=lambda m: None)
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------- workers on one storage


def _worker(args, env, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "train.cli", "sweep", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow  # two CLI processes, then a killed one and its rerun: over a minute on 2 cores
def test_two_workers_share_one_study_and_a_killed_trial_is_retried(tfds_dir, cli_env, tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"
    common = ["mlp_small", "--param", "lr=loguniform:1e-4:1e-2", "--sampler", "random", "--pruner", "none",
              "--storage", url, "--study", "shared", "--heartbeat", "1", *tiny_flags(tfds_dir, epochs=2)]
    workers = [_worker([*common, "--trials", 4, "--seed", i, "--workdir", tmp_path / f"w{i}"], cli_env) for i in (0, 1)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="shared", storage=url)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) >= 4 and len({t.number for t in done}) == len(done)
    folders = sorted(int(p.name) for i in (0, 1) for p in (tmp_path / f"w{i}" / "trials").iterdir())
    assert folders == sorted(t.number for t in study.trials)  # every trial ran once, in one worker

    # kill -9 a worker mid-trial (a long one): the rerun fails it (stale heartbeat) and retries its values
    slow = ["mlp_small", "--param", "lr=loguniform:1e-4:1e-2", "--sampler", "random", "--pruner", "none",
            "--storage", f"sqlite:///{tmp_path}/kill.db", "--study", "k", "--heartbeat", "1",
            *tiny_flags(tfds_dir, epochs=40), "--workdir", tmp_path / "k"]
    victim = _worker([*slow, "--trials", 1], cli_env, start_new_session=True)
    metrics = tmp_path / "k" / "trials" / "0" / "metrics.jsonl"
    kill_after_first_epoch(victim, metrics)
    killed = optuna.load_study(study_name="k", storage=f"sqlite:///{tmp_path}/kill.db").trials
    assert [t.state.name for t in killed] == ["RUNNING"]
    time.sleep(3)  # past the grace period (2 heartbeats)
    rerun = _worker([*slow, "--trials", 1], cli_env)
    out = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, out
    trials = optuna.load_study(study_name="k", storage=f"sqlite:///{tmp_path}/kill.db").trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]  # never counted complete
    assert trials[1].params == trials[0].params  # the retry ran the killed trial's values
    assert (tmp_path / "k" / "trials" / "1" / "metrics.jsonl").read_text().count("\n") == 40


def test_space_file_that_is_a_fifo_is_refused_promptly(tmp_path):
    import os

    from tests.fixtures import returns_promptly

    fifo = tmp_path / "space.json"
    os.mkfifo(fifo)
    error = returns_promptly(sweep.read_space, fifo, fifos=[fifo])
    assert isinstance(error, ValueError), error
    assert str(error) == f"{fifo}: is a FIFO, not a regular file (expected a JSON search space)"
