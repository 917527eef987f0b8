"""Every `zoo train` value is checked before any work (issue 11 item 9): one-line errors naming
the flag (or file), the value and what is allowed; the --config file; flag help from Config.

The attack list runs through `train.cli.main` in-process (fast) and, for a sample, through the
real CLI in a subprocess (exit code, no traceback, nothing written).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from train import cli, config
from train.config import Config, Integer, Number, OneOf, resolve
import zoo
from tests.fixtures import returns_promptly

REPO = Path(__file__).resolve().parents[1]

# (flags, text the one error line must contain: the flag, the value, and what is allowed)
ATTACKS = [
    (["--checkpoint-every", "0"], ["--checkpoint-every 0", ">= 1"]),
    (["--epochs", "0"], ["--epochs 0", ">= 1"]),
    (["--epochs", "-1"], ["--epochs -1", ">= 1"]),
    (["--batch-size", "-64"], ["--batch-size -64", ">= 1"]),
    (["--batch-size", "0"], ["--batch-size 0", ">= 1"]),
    (["--max-steps", "-1"], ["--max-steps -1", ">= 0"]),
    (["--num-devices", "-1"], ["--num-devices -1", ">= 0"]),
    (["--steps-per-dispatch", "-1"], ["--steps-per-dispatch -1", ">= 0"]),
    (["--set", "num_classes=0"], ["--set num_classes=0"]),
    (["--set", "hidden=[1,2"], ["--set hidden=[1,2", "malformed JSON", "line 1 column"]),
    (["--set", "dropout_rate=NaN"], ["--set dropout_rate=NaN", "not a finite number"]),
    (["--set", "hiden=3"], ["--set hiden=3", "hidden"]),
    (["--augment-rotate", "nan"], ["--augment-rotate nan", "[0, 360)"]),
    (["--lr", "-1"], ["--lr -1", "> 0"]),
    (["--lr", "inf"], ["--lr inf", "finite"]),
    (["--clip-norm", "-1"], ["--clip-norm -1", ">= 0"]),
    (["--train-limit", "-5"], ["--train-limit -5", ">= 0"]),
    (["--optimizer", "adma"], ["--optimizer 'adma'", "sgd, momentum, adam, adamw, rmsprop", "did you mean adam"]),
    (["--schedule", "linear"], ["--schedule 'linear'", "constant, cosine, onecycle"]),
    (["--strategy", "ddp"], ["--strategy 'ddp'", "jit, pmap"]),
    (["--init", "xavier"], ["--init 'xavier'", "default, glorot"]),
    (["--dataset", "mnsit"], ["--dataset 'mnsit'", "mnist", "tiny_shakespeare", "did you mean mnist"]),
    (["--val-size", "-1"], ["--val-size -1", ">= 0"]),
    (["--log-every", "0"], ["--log-every 0", ">= 1"]),
    (["--keep-checkpoints", "0"], ["--keep-checkpoints 0", ">= 1"]),
    (["--eval-batch-size", "0"], ["--eval-batch-size 0", ">= 1"]),
    (["--warmup-steps", "-1"], ["--warmup-steps -1", ">= 0"]),
    (["--warmup-steps", "10", "--schedule", "onecycle"], ["--warmup-steps 10", "only --schedule cosine", "onecycle"]),
    (["--momentum", "1"], ["--momentum 1", "[0, 1)"]),
    (["--momentum", "-0.1"], ["--momentum -0.1", "[0, 1)"]),
    (["--b1", "1.5"], ["--b1 1.5", "[0, 1)"]),
    (["--weight-decay", "-1"], ["--weight-decay -1", ">= 0"]),
    (["--seq-len", "0"], ["--seq-len 0", ">= 1"]),
    (["--early-stop-patience", "-1"], ["--early-stop-patience -1", ">= 0"]),
    (["--sample-every", "-1"], ["--sample-every -1", ">= 0"]),
    (["--seed", "-1"], ["--seed -1"]),
    (["--learning-rate", "1"], ["unrecognized arguments: --learning-rate 1", "did you mean --lr"]),
    (["--epoch", "3"], ["unrecognized arguments: --epoch 3", "did you mean --epochs"]),  # no abbreviations
    (["--epochs", "three"], ["--epochs", "three"]),
    (["--classes", "0,99999999999999999999"], ["--classes", "99999999999999999999", "[0, 2**31)"]),
    # 4 TB of weights: refused from shapes alone (no out-of-memory traceback), naming the number
    (["--set", "hidden=[1000000,1000000]"], ["--set hidden=[1000000, 1000000]", "1,000,796,000,010 parameters",
                                              "4003.2 GB float32", "ZOO_MAX_PARAM_BYTES"]),
]


def _id(case) -> str:
    return " ".join(case[0])


# Each run gets --data-dir TMP/data: a check that failed to fire costs a temp dir, not ~/tensorflow_datasets.


def _one_error_line(rc: int, stderr: str, expected: list[str]) -> None:
    assert rc == 2, f"exit {rc}\n{stderr}"
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert "Traceback" not in stderr


@pytest.fixture
def no_jax_setup(monkeypatch):
    """main() in-process: no persistent compilation cache, no multi-host init."""
    monkeypatch.setenv("ZOO_COMPILATION_CACHE", "off")
    for key in ("JAX_COORDINATOR_ADDRESS", "ZOO_DEBUG"):
        monkeypatch.delenv(key, raising=False)


@pytest.mark.parametrize("flags, expected", ATTACKS, ids=[_id(c) for c in ATTACKS])
def test_attack_exits_2_with_one_line_before_any_work(flags, expected, tmp_path, capsys, no_jax_setup):
    workdir = tmp_path / "run"
    try:
        rc = cli.main(["train", "mlp", "--workdir", str(workdir), "--data-dir", str(tmp_path / "data"), *flags])
    except SystemExit as e:  # argparse errors
        rc = e.code
    out, err = capsys.readouterr()
    _one_error_line(rc, err, expected)
    assert not workdir.exists() and "training" not in out


@pytest.mark.parametrize("model", ["char_lstm", "autoencoder", "multitask"])
def test_classes_on_a_model_without_classes_is_one_line(model, tmp_path, capsys, no_jax_setup):
    workdir = tmp_path / "run"
    rc = cli.main(["train", model, "--classes", "0,1", "--workdir", str(workdir), "--data-dir", str(tmp_path / "data")])
    _one_error_line(rc, capsys.readouterr().err, ["--classes 0,1", model, "no class labels"])
    assert not workdir.exists()
    with pytest.raises(ValueError, match=f"{model} .* has no class labels"):
        resolve(model, {"classes": [0, 1]})


def test_classes_absent_from_the_data_are_refused_naming_the_labels_present():
    import train

    rng = np.random.default_rng(0)
    data = {"x": rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8), "y": np.arange(64, dtype=np.int32) % 10}
    with pytest.raises(ValueError, match=r"^classes 0,10: no training example has label 10; the labels present are 0-9$"):
        train.fit("mlp", data, classes=[0, 10], log=lambda m: None)
    with pytest.raises(ValueError, match=r"label 11, 12; the labels present are 0-9$"):
        train.fit("mlp", data, classes=[12, 3, 11], log=lambda m: None)


def test_cli_classes_absent_from_mnist_exit_2(tmp_path, capsys, tfds_dir, no_jax_setup):
    rc = cli.main(["train", "mlp", "--classes", "0,10", "--workdir", str(tmp_path / "run"), "--data-dir", str(tfds_dir)])
    out, err = capsys.readouterr()
    _one_error_line(rc, err, ["--classes 0,10: no training example has label 10", "labels present are 0-9"])
    assert "val_accuracy" not in out


# A sample through the real CLI: the process boundary (exit code, stderr, no traceback).
SUBPROCESS = ["--checkpoint-every 0", "--batch-size -64", "--set num_classes=0", "--set hidden=[1,2",
              "--augment-rotate nan", "--learning-rate 1"]


@pytest.mark.parametrize("flags, expected", [c for c in ATTACKS if _id(c) in SUBPROCESS],
                         ids=[_id(c) for c in ATTACKS if _id(c) in SUBPROCESS])
def test_attack_through_the_real_cli(flags, expected, tmp_path, cli_env):
    workdir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "train.cli", "train", "mlp", "--workdir", str(workdir),
                             "--data-dir", str(tmp_path / "data"), *flags],
                            env=cli_env, cwd=REPO, capture_output=True, text=True, timeout=120)
    _one_error_line(result.returncode, result.stderr, expected)
    assert not workdir.exists()


def test_bad_config_file_through_the_real_cli(tmp_path, cli_env):
    bad = tmp_path / "bad.json"
    bad.write_text('{"epochs": 2,\n "lr": }')
    result = subprocess.run([sys.executable, "-m", "train.cli", "train", "mlp", "--workdir", str(tmp_path / "run"),
                             "--data-dir", str(tmp_path / "data"), "--config", str(bad)],
                            env=cli_env, cwd=REPO, capture_output=True, text=True, timeout=120)
    _one_error_line(result.returncode, result.stderr, [str(bad), "invalid JSON", "line 2 column"])
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- resolve() and Config.validate()


def test_resolve_suggests_the_field_for_an_unknown_key():
    with pytest.raises(ValueError, match=r"^unknown config key 'learning_rate'. Did you mean 'lr'\?$"):
        resolve("mlp", {"learning_rate": 1})
    with pytest.raises(ValueError, match="unknown config key 'batchsize'. Did you mean 'batch_size'"):
        resolve("mlp", {"batchsize": 1})
    with pytest.raises(ValueError, match="unknown config key 'xyzzy'.$"):  # nothing close: no hint
        resolve("mlp", {"xyzzy": 1})


def test_resolve_uses_the_flag_spelling():
    with pytest.raises(ValueError, match=r"^--checkpoint-every 0: must be an integer >= 1$"):
        resolve("mlp", {"checkpoint_every": 0})


@pytest.mark.parametrize("field, value", [("epochs", "3"), ("epochs", 3.0), ("epochs", True), ("lr", True),
                                          ("lr", "0.1"), ("augment_flip", 1), ("model_overrides", [1]),
                                          ("init_from", 3), ("data_dir", 5)])
def test_resolve_rejects_wrong_types(field, value):
    with pytest.raises(ValueError, match=f"^{config.flag(field)} {re.escape(repr(value))}: must be "):
        resolve("mlp", {field: value})


def test_resolve_rejects_an_unknown_model_with_the_registry_hint():
    with pytest.raises(ValueError, match="unknown model 'mpl'. Did you mean 'mlp'"):
        resolve("mpl")


def test_resolve_rejects_an_override_naming_another_model():
    with pytest.raises(ValueError, match="'cnn'"):
        resolve("mlp", {"model": "cnn"})


@pytest.mark.parametrize("model", sorted(p.stem for p in config.CONFIG_DIR.glob("*.json")))
def test_every_recipe_resolves(model):
    cfg = resolve(model)
    assert cfg.model == model
    assert all(getattr(cfg, k) == v for k, v in config.recipe(model).items())


def test_every_shipped_train_config_resolves():
    """zoo eval --pretrained resolves the manifest's train_config: it must stay valid."""
    manifests = sorted((REPO / "zoo" / "weights").glob("*/manifest.json"))
    assert manifests
    for path in manifests:
        manifest = json.loads(path.read_text())
        train_config = {k: v for k, v in manifest["train_config"].items() if k != "model"}
        resolved = resolve(manifest["model"], train_config).to_json()
        # Fields added since the weights shipped take their defaults.
        defaults = Config(model=manifest["model"]).to_json()
        assert resolved == {**defaults, **manifest["train_config"]}


def test_validate_returns_the_config():
    cfg = Config(model="mlp")
    assert cfg.validate() is cfg


def test_check_model_names_the_override_that_fails():
    # The model's own field check (zoo.create) or, for fields it does not check, its init.
    with pytest.raises(ValueError, match=r"^--set num_classes=0: MLP: num_classes must be an integer >= 1, got 0"):
        config.check_model(Config(model="mlp", model_overrides={"num_classes": 0}))
    config.check_model(Config(model="mlp", model_overrides={"hidden": [32]}))  # fine


# ---------------------------------------------------------------- properties per field


def _fields(kind):
    return [f.name for f in dataclasses.fields(Config) if isinstance(f.metadata.get("check"), kind)]


def _expect_rejected(name, value):
    with pytest.raises(ValueError) as e:
        Config(model="mlp", **{name: value}).validate()
    assert str(e.value).startswith(f"{config.flag(name)} {value!r}: must be ")


@pytest.mark.parametrize("name", _fields(Integer))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_integer_fields(name, data):
    check = config.FIELDS[name].metadata["check"]
    _expect_rejected(name, data.draw(st.integers(max_value=check.lo - 1), "below"))
    if check.hi is not None:
        _expect_rejected(name, data.draw(st.integers(min_value=check.hi + 1), "above"))
    valid = data.draw(st.integers(min_value=check.lo, max_value=check.hi if check.hi is not None else 10**9), "valid")
    extra = {"schedule": "cosine"} if name == "warmup_steps" else {}  # only cosine warms up
    assert getattr(Config(model="mlp", **{name: valid}, **extra).validate(), name) == valid


@pytest.mark.parametrize("name", _fields(Number))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_number_fields(name, data):
    check = config.FIELDS[name].metadata["check"]
    _expect_rejected(name, data.draw(st.sampled_from([math.nan, math.inf, -math.inf]), "non-finite"))
    below = st.floats(max_value=check.lo, allow_nan=False, allow_infinity=False).filter(
        lambda v: v < check.lo or (v == check.lo and not check.lo_inclusive))  # -0.0 == 0.0 is not below
    _expect_rejected(name, data.draw(below, "below"))
    if check.hi is not None:
        _expect_rejected(name, data.draw(st.floats(min_value=check.hi, allow_nan=False, allow_infinity=False), "above"))
    valid = st.floats(min_value=check.lo, exclude_min=not check.lo_inclusive,
                      max_value=check.hi if check.hi is not None else 1e6, exclude_max=check.hi is not None)
    value = data.draw(valid, "valid")
    assert getattr(Config(model="mlp", **{name: value}).validate(), name) == value


@pytest.mark.parametrize("name", _fields(OneOf))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_name_fields(name, data):
    names = config.FIELDS[name].metadata["check"].names()
    _expect_rejected(name, data.draw(st.text().filter(lambda s: s not in names), "unknown"))
    value = data.draw(st.sampled_from(names), "valid")
    assert getattr(Config(model="mlp", **{name: value}).validate(), name) == value


def test_name_lists_come_from_their_modules():
    from train import data, parallel, state

    names = {name: config.FIELDS[name].metadata["check"].names() for name in _fields(OneOf)}
    assert names == {"dataset": tuple(sorted(data.SPLITS)), "optimizer": state.OPTIMIZERS,
                     "schedule": state.SCHEDULES, "strategy": parallel.STRATEGIES, "init": config.INITS,
                     "dtype": config.DTYPES, "recipe": config.RECIPES}


# ---------------------------------------------------------------- recipe and --config files


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_file_sits_between_recipe_and_flags(tmp_path):
    recipe = config.recipe("mlp_binary")  # epochs 5, lr 0.003, model_overrides {"in_shape": ...}
    file = _write(tmp_path / "c.json", json.dumps({"_comment": "ignored", "epochs": 7, "lr": 0.01,
                                                   "model_overrides": {"dropout_rate": 0.1}}))
    cfg = resolve("mlp_binary", {"lr": 0.02, "model_overrides": {"dropout_rate": 0.2}}, config_file=file)
    assert cfg.epochs == 7  # file over recipe
    assert cfg.lr == 0.02  # flags over file
    assert cfg.batch_size == recipe["batch_size"]  # recipe over defaults
    assert cfg.weight_decay == Config(model="x").weight_decay  # defaults
    # model overrides merge key by key: the recipe's in_shape stays
    assert cfg.model_overrides == {"in_shape": recipe["model_overrides"]["in_shape"], "dropout_rate": 0.2}


def test_config_flag_reaches_resolve(tmp_path):
    file = _write(tmp_path / "c.json", '{"epochs": 7, "lr": 0.01}')
    args = cli.build_parser().parse_args(["train", "mlp", "--config", str(file), "--lr", "0.5"])
    cfg = cli.train_config(args)
    assert (cfg.epochs, cfg.lr) == (7, 0.5)


@pytest.mark.parametrize("text, expected", [
    ('{"epochs": 2,\n  "lr": }', r"invalid JSON: Expecting value: line 2 column 9"),
    ('{"epochs": NaN}', "invalid JSON: NaN is not a finite number"),
    ('{"learning_rate": 0.1}', "unknown config key 'learning_rate'. Did you mean 'lr'"),
    ('{"epochs": "3"}', "epochs '3': must be an integer >= 1"),
    ('{"momentum": 1.0}', r"momentum 1.0: must be a number in \[0, 1\)"),
    ('{"model": "cnn"}', "'model' cannot be set in a config file"),
    ('[1, 2]', "must be a JSON object of config fields, got list"),
])
def test_config_file_errors_name_the_file(tmp_path, text, expected):
    file = _write(tmp_path / "c.json", text)
    with pytest.raises(ValueError, match=f"^{re.escape(str(file))}: {expected}"):
        resolve("mlp", config_file=file)


def test_malformed_recipe_names_the_file(tmp_path, monkeypatch):
    _write(tmp_path / "mlp.json", '{"epochs": 2 "lr": 1}')
    monkeypatch.setattr(config, "CONFIG_DIR", tmp_path)
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path / 'mlp.json'))}: invalid JSON: .*line 1 column 14"):
        resolve("mlp")


def _special(path: Path, kind: str) -> Path:
    if kind == "FIFO":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:  # a link to a device that never ends
        path.symlink_to("/dev/zero")
    return path


@pytest.mark.parametrize("kind, found", [("FIFO", "a FIFO"), ("directory", "a directory")])
def test_config_file_that_is_not_a_regular_file_is_refused_promptly(kind, found, tmp_path, capsys, no_jax_setup):
    """A FIFO blocks its reader until a writer comes: it is refused from its kind, unopened."""
    file = _special(tmp_path / "c.json", kind)
    rc = returns_promptly(cli.main, ["train", "mlp", "--workdir", str(tmp_path / "run"), "--config", str(file)],
                          fifos=[file] if kind == "FIFO" else [])
    _one_error_line(rc, capsys.readouterr().err,
                    [f"{file}: is {found}, not a regular file (expected a JSON config)"])
    assert not (tmp_path / "run").exists()


def test_config_file_linked_to_dev_zero_is_refused(tmp_path, cli_env):
    """/dev/zero never ends: reading it as a config ate all memory. The subprocess gets a 4 GiB
    address-space cap, so a build without the check fails here instead of exhausting the machine."""
    file = _special(tmp_path / "c.json", "link to /dev/zero")
    capped = ["bash", "-c", 'ulimit -v 4194304 && exec "$@"', "zoo"]  # KiB
    result = subprocess.run([*capped, sys.executable, "-m", "train.cli", "train", "mlp", "--workdir",
                             str(tmp_path / "run"), "--config", str(file)],
                            env=cli_env, cwd=REPO, capture_output=True, text=True, timeout=120)
    _one_error_line(result.returncode, result.stderr,
                    [f"{file}: is a character device, not a regular file (expected a JSON config)"])


def test_config_file_over_the_size_cap_is_refused(tmp_path):
    file = _write(tmp_path / "c.json", '{"epochs": 2, "_comment": "' + "x" * config.MAX_CONFIG_BYTES + '"}')
    with pytest.raises(ValueError, match=f"^{re.escape(str(file))}: larger than 1 MiB, the most a JSON config may hold"):
        resolve("mlp", config_file=file)


def test_deeply_nested_json_is_one_clear_line(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    file = _write(tmp_path / "c.json", '{"model_overrides": {"hidden": ' + deep + "}}")
    with pytest.raises(ValueError, match=f"^{re.escape(str(file))}: invalid JSON: nested too deeply$"):
        resolve("mlp", config_file=file)
    args = cli.build_parser().parse_args(["train", "mlp", "--set", "hidden=" + deep])
    with pytest.raises(ValueError, match="^--set hidden=.*: nested too deeply$"):
        cli.train_config(args)


def test_train_fit_refuses_a_model_too_large_for_memory_before_loading_data(monkeypatch):
    import train

    import numpy as np

    monkeypatch.setenv("ZOO_MAX_PARAM_BYTES", "1000000")  # 1 MB: mlp's defaults take more
    data = {"x": np.zeros((16, 28, 28, 1), np.float32), "y": np.zeros(16, np.int32)}
    with pytest.raises(ValueError, match=r"^model_overrides=\{'hidden': \[500\]\}: mlp with these options has [\d,]+ "
                                         r"parameters \([\d.]+ MB float32\); the limit is 1.0 MB \(ZOO_MAX_PARAM_BYTES\)"):
        train.fit("mlp", data, epochs=1, batch_size=8, model_overrides={"hidden": [500]}, log=lambda line: None)


# ---------------------------------------------------------------- --set


def test_set_keeps_a_bare_word_as_a_string():
    args = cli.build_parser().parse_args(["train", "mlp", "--set", "act=relu"])
    with pytest.raises(ValueError, match='^--set act="relu": .*unknown option \'act\''):  # reached the model
        cli.train_config(args)


def test_set_parses_json_values():
    args = cli.build_parser().parse_args(["train", "mlp", "--set", "hidden=[32, 16]", "--set", "dropout_rate=0.5"])
    assert cli.train_config(args).model_overrides == {"hidden": [32, 16], "dropout_rate": 0.5}


@pytest.mark.parametrize("item", ["hidden=[1,2", 'x={"a":', 'x="abc', "x=1.2.3", "x=-1e", "noequals", "=3"])
def test_set_rejects_malformed_values(item):
    args = cli.build_parser().parse_args(["train", "mlp", "--set", item])
    with pytest.raises(ValueError, match=f"^--set {re.escape(item)}: "):
        cli.train_config(args)


# ---------------------------------------------------------------- help


def test_every_train_flag_has_help_from_its_field(capsys):
    train = cli.build_parser().commands["train"]
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for action in train._actions:
        assert action.help, action.option_strings
    for field in dataclasses.fields(Config):
        if field.name in ("model", "model_overrides"):
            continue
        assert config.flag(field.name) in text
        action = next(a for a in train._actions if config.flag(field.name) in a.option_strings)
        assert action.help.startswith(field.metadata["help"])
        if field.type != "bool":
            assert field.metadata["check"].describe() in action.help


def test_help_states_the_allowed_values():
    train = cli.build_parser().commands["train"]
    helps = {a.option_strings[0]: a.help for a in train._actions if a.option_strings}
    assert "a finite number > 0" in helps["--lr"]
    assert "one of sgd, momentum, adam, adamw, rmsprop" in helps["--optimizer"]
    assert "an integer >= 1" in helps["--checkpoint-every"]
    assert "FILE.json" in train.format_usage() and "--config" in helps


# ---------------------------------------------------------------- unclear errors made clear (issue 22)


@pytest.mark.parametrize("args,expected", [
    (["train", "cnn", "--init-from", "../../no-such-dir"], "--init-from '../../no-such-dir': no such file or directory"),
    (["sweep", "cnn", "--param", "init_from=choice:../../no-such-dir"],
     "--init-from '../../no-such-dir': no such file or directory"),
    (["eval", "cnn", "--pretrained", "mnist", "--quality-n", "-1"], "--quality-n must be >= 0"),
    (["export", "cnn", "out", "--pretrained", "mnist", "--quality-n", "-1"], "--quality-n must be >= 0"),
    (["sample", "char_lstm", "--pretrained", "tiny_shakespeare", "--prompt", ""], "--prompt must be at least one character"),
])
def test_cli_errors_name_the_flag_and_the_problem(args, expected, tmp_path, capsys, no_jax_setup, monkeypatch):
    from train.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and expected in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []  # refused before any work


def _digits(n: int = 64, labels=None) -> dict:
    rng = np.random.default_rng(0)
    return {"x": rng.random((n, 28, 28, 1), np.float32),
            "y": np.asarray(labels if labels is not None else rng.integers(0, 10, n), np.int32)}


@pytest.mark.parametrize("data,error,expected", [
    (None, TypeError, "data must be a dataset name (e.g. 'mnist') or a dict of arrays"),
    ([1, 2, 3], TypeError, "data must be a dataset name (e.g. 'mnist') or a dict of arrays"),
    ({"x": np.zeros((64, 28, 28, 1), np.float32)}, ValueError, "the classification task learns targets: give {'x'"),
    (_digits(labels=[-1] * 64), ValueError, "Class labels must be integers >= 0"),
    (_digits(labels=[10] * 64), ValueError,
     "Keep a subset of the classes with classes, or raise num_classes with model_overrides={'num_classes': 11}"),
])
def test_fit_data_errors_are_clear_and_name_python_arguments(data, error, expected):
    import train

    with pytest.raises(error) as caught:
        train.fit("cnn", data, epochs=1, batch_size=16, num_devices=1, log=lambda m: None)
    assert expected in str(caught.value) and "--" not in str(caught.value)


def test_fit_model_field_says_how_to_change_the_model():
    import train

    with pytest.raises(ValueError) as caught:
        train.fit("cnn", _digits(), num_classes=12)
    assert str(caught.value) == ("'num_classes' is a field of the cnn model, not a training setting: "
                                 "set it with model_overrides={'num_classes': 12}")
    with pytest.raises(ValueError, match=r"^lr -1: must be"):  # the argument, not --lr
        train.fit("cnn", _digits(), lr=-1)


def test_channels_first_input_gets_a_transpose_hint():
    model = zoo.create("cnn")
    variables = zoo.init(model, jax.random.key(0))
    with pytest.raises(ValueError, match=r"channels first\? .*x\.transpose\(0, 2, 3, 1\)"):
        model.apply(variables, np.zeros((2, 1, 28, 28), np.float32))


def test_preprocess_of_a_path_says_what_is_wrong(tmp_path):
    with pytest.raises(TypeError, match=r"got the path '.*missing\.png' \(no such file\); open it first"):
        zoo.preprocess("cnn", str(tmp_path / "missing.png"))


def test_empty_prompt_is_refused_by_the_library():
    from train.tasks import sample_text

    model = zoo.create("char_lstm")
    with pytest.raises(ValueError, match="the prompt must be at least one character"):
        sample_text(model, zoo.init(model, jax.random.key(0)), "", 5, jax.random.key(0))


def test_evaluate_run_refuses_a_negative_quality_n():
    from train.evaluate import evaluate_run

    with pytest.raises(ValueError, match=r"quality_n must be an integer >= 0 .*got -1"):
        evaluate_run(None, None, None, "test", quality_n=-1)


FAST = sorted(p.stem for p in (config.CONFIG_DIR / "fast").glob("*.json"))


def test_fast_recipes_are_for_registered_models_with_a_default_recipe():
    assert FAST, "train/configs/fast/ holds no recipe"
    assert set(FAST) <= {p.stem for p in config.CONFIG_DIR.glob("*.json")}


@pytest.mark.parametrize("model", FAST)
def test_every_fast_recipe_resolves_over_the_default_one(model):
    fast = config.read_json_config(config.CONFIG_DIR / "fast" / f"{model}.json")
    cfg = resolve(model, {"recipe": "fast"})
    assert cfg.recipe == "fast"
    assert all(getattr(cfg, k) == v for k, v in fast.items())
    # the fields the fast recipe leaves alone keep the default recipe's values
    base = config.recipe(model)
    assert all(getattr(cfg, k) == v for k, v in base.items() if k not in fast)
    assert resolve(model).recipe == "default"


def test_fast_recipe_sits_under_the_config_file_and_flags(tmp_path):
    model = FAST[0]
    fast = config.recipe(model, "fast")
    file = _write(tmp_path / "c.json", json.dumps({"recipe": "fast", "epochs": 17}))
    cfg = resolve(model, {"seed": 3}, config_file=file)  # the file names the recipe
    assert (cfg.recipe, cfg.epochs, cfg.seed, cfg.lr) == ("fast", 17, 3, fast["lr"])
    args = cli.build_parser().parse_args(["train", model, "--recipe", "fast", "--lr", "0.5"])
    cfg = cli.train_config(args)
    assert (cfg.recipe, cfg.lr, cfg.epochs) == ("fast", 0.5, fast["epochs"])


def test_a_recipe_the_model_lacks_is_refused_naming_the_models_that_have_it():
    lacking = next(m for m in zoo.list_models() if m not in FAST)
    with pytest.raises(ValueError, match=f"--recipe fast: {lacking} has no fast recipe; the models with one: "
                                         f"{re.escape(', '.join(FAST))}"):
        resolve(lacking, {"recipe": "fast"})
    with pytest.raises(ValueError, match="recipe 'quick': must be one of default, fast"):
        resolve(FAST[0], {"recipe": "quick"})
