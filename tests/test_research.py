"""The research API's "done when" scenarios: fine-tuning to 5 classes with a frozen trunk (from
Python and from the CLI, with class names in `zoo eval`), `train.fit` on your arrays, bfloat16
training, and labels checked before training.

MNIST comes from the session's offline-prepared TFDS dir (conftest.tfds_dir); the other runs use
tests/fixtures.py's learnable synthetic digits and shrunk models, so each takes seconds.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train
import zoo
from tests.fixtures import digit_images
from tests.test_cli import ok, run_zoo
from train import loop, tasks
from train.config import Config
from train.evaluate import class_names

FIVE = [0, 1, 2, 3, 4]
QUIET = {"log": lambda line: None}


def _leaves(tree) -> dict:
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}


@pytest.fixture(scope="module")
def pretrained_cnn():
    return _leaves(zoo.load("cnn", pretrained="mnist")[1]["params"])


# ---------------------------------------------------------------- 5 classes, frozen trunk


def test_finetune_five_classes_with_a_frozen_trunk(tfds_dir, pretrained_cnn):
    result = train.fit("cnn", "mnist", data_dir=str(tfds_dir), train_limit=1024, val_size=1000, classes=FIVE,
                       train_only="head", init_from="cnn.mnist", epochs=1, batch_size=64, lr=1e-2, **QUIET)
    assert result.model.num_classes == 5
    assert result.metrics["val_accuracy"] > 0.9, result.metrics
    trained = _leaves(result.variables["params"])
    trunk = [k for k in pretrained_cnn if "head" not in k]
    assert trunk, "no trunk parameters found"
    for key in trunk:  # bit-identical to the shipped weights
        np.testing.assert_array_equal(trained[key], pretrained_cnn[key], err_msg=key)
    # the head moved away from where this run started (cnn.mnist's trunk under a fresh 5-class head)
    start = loop.initial_state(result.config, result.model, tasks.of_model("cnn"), 1, **QUIET)
    start_head = _leaves(jax.device_get(start.params))
    assert start_head["['head']['kernel']"].shape == (3136, 5)
    assert not np.array_equal(trained["['head']['kernel']"], start_head["['head']['kernel']"])


def test_cli_finetune_then_eval_prints_class_names(tfds_dir, cli_env, tmp_path, pretrained_cnn):
    workdir = tmp_path / "cnn5"
    ok(run_zoo("train", "cnn", "--init-from", "cnn.mnist", "--classes", "0,1,2,3,4", "--train-only", "head",
               "--train-limit", 1024, "--val-size", 1000, "--epochs", 1, "--batch-size", 64, "--lr", 0.01,
               "--data-dir", tfds_dir, "--workdir", workdir, env=cli_env))
    out = ok(run_zoo("eval", "cnn", "--workdir", workdir, env=cli_env)).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit() and line.count(".") >= 3]
    assert [row[:2] for row in rows] == [[str(i), f"'{i}'"] for i in FIVE], out
    report = json.loads((workdir / "eval_test.json").read_text())
    assert report["class_names"] == ["0", "1", "2", "3", "4"]
    test_labels = np.asarray(train.data.load_split("mnist", "test", data_dir=tfds_dir)["label"])
    assert report["metrics"]["count"] == int(np.isin(test_labels, FIVE).sum())  # only digits 0-4
    assert report["metrics"]["accuracy"] > 0.9
    from train.evaluate import restore_workdir

    _, _, variables, _ = restore_workdir(workdir)
    trained = _leaves(variables["params"])
    for key in (k for k in pretrained_cnn if "head" not in k):
        np.testing.assert_array_equal(trained[key], pretrained_cnn[key], err_msg=key)


def rows(n: int) -> dict:
    return {"per_class": {str(i): {} for i in range(n)}}


def test_class_names_follow_the_classes_mapping():
    assert class_names(Config(model="cnn", classes=[0, 2, 5]), rows(3)) == ["0", "2", "5"]
    assert class_names(Config(model="cnn"), rows(10)) == list("0123456789")
    assert class_names(Config(model="cnn_cifar", classes=[3, 5]), rows(2)) == ["cat", "dog"]
    assert class_names(Config(model="autoencoder"), {}) is None  # no classes
    assert class_names(Config(model="cnn"), rows(4)) is None  # names do not fit the rows


def test_eval_printout_names_each_row():
    from train.evaluate import report_lines

    per_class = {str(i): {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1} for i in range(3)}
    result = {"model": "cnn", "dataset": "mnist", "split": "test", "source": "run", "class_names": ["0", "2", "5"],
              "metrics": {"count": 3, "accuracy": 1.0, "per_class": per_class, "confusion": np.eye(3, dtype=int).tolist()}}
    printed = "\n".join(report_lines(result))
    rows = [line.split()[:2] for line in printed.splitlines() if line.count(".") >= 3]
    assert rows == [["0", "'0'"], ["1", "'2'"], ["2", "'5'"]]
    assert "  class  precision  recall  f1      support" in printed


# ---------------------------------------------------------------- train.fit on arrays, bfloat16


def test_fit_on_user_arrays_returns_trained_variables():
    x, y = digit_images(640)
    result = train.fit("mlp_small", {"x": x, "y": y}, epochs=3, batch_size=64, **QUIET)
    fresh = zoo.init("mlp_small", jax.random.key(0))
    assert jax.tree.structure(result.variables) == jax.tree.structure(fresh)
    assert jax.tree.map(jnp.shape, result.variables) == jax.tree.map(jnp.shape, fresh)
    assert result.config.dataset == "arrays" and len(result.history) == 3
    held_out = (x[576:].astype(np.float32) / 255.0, y[576:])  # fit's validation split: the last 10%
    accuracy = float((jnp.argmax(result.model.apply(result.variables, held_out[0]), -1) == held_out[1]).mean())
    assert accuracy == pytest.approx(result.metrics["val_accuracy"], abs=1e-6)
    assert accuracy > 0.5


@pytest.mark.parametrize("name, overrides", [("mlp_small", {}), ("cnn", {"features": [8, 16]})])
def test_bfloat16_training_keeps_float32_params_and_learns(name, overrides):
    x, y = digit_images(640)
    result = train.fit(name, {"x": x, "y": y}, dtype="bfloat16", model_overrides=overrides, epochs=3, batch_size=64,
                       **QUIET)
    assert result.model.dtype == "bfloat16"
    assert {leaf.dtype for leaf in jax.tree.leaves(result.variables["params"])} == {jnp.dtype("float32")}
    losses = [record["train_loss"] for record in result.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert result.model.apply(result.variables, x[:4].astype(np.float32) / 255.0).dtype == jnp.bfloat16


# ---------------------------------------------------------------- labels before training


@pytest.mark.parametrize("where", [0, -1], ids=["train split", "validation split"])
def test_an_out_of_range_label_is_named_before_training(where):
    x, y = digit_images(320)
    y = y.copy()
    y[where] = 12
    with pytest.raises(ValueError, match=r"label 12 is outside \[0, 10\) \(num_classes = 10\)") as info:
        train.fit("cnn", {"x": x, "y": y}, epochs=1, batch_size=32, **QUIET)
    assert ("validation split" if where == -1 else "train split") in str(info.value)
    assert "--lr" not in str(info.value)  # a data problem, not an optimization one


def test_a_diverging_optimizer_is_told_to_lower_the_lr():
    x, y = digit_images(320)
    with pytest.raises(loop.TrainingDiverged, match=r"labels and inputs were checked .* lower --lr"):
        train.fit("mlp_small", {"x": x, "y": y}, optimizer="sgd", lr=1e12, epochs=1, batch_size=32, **QUIET)
