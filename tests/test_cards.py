"""Model cards (`zoo.model_card`, `zoo info`) and the listing (`zoo list PATTERN --pretrained`).

A card prints what is recorded and nothing else: these tests read the same sources (the shipped
manifests, bench/results/train_all.json, train/vendored/README.md) and check the card against them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import zoo
from zoo import cards
from zoo.files import sha256_file
from zoo.formats.common import model_from_manifest
from zoo.trees import expected_variables
from zoo.pretrained import weights_dir

REPO = Path(__file__).resolve().parents[1]
SHIPPED = [(model, tag) for model, tags in zoo.available().items() for tag in tags]


def card_fields(card: str) -> dict[str, str]:
    """'key: value' lines of a card (indented lines under their own key)."""
    return {m["key"]: m["value"] for m in re.finditer(r"^ *(?P<key>[a-z0-9 ._]+): (?P<value>.*)$", card, re.MULTILINE)}


def zoo_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("model, tag", SHIPPED, ids=[f"{m}.{t}" for m, t in SHIPPED])
def test_card_of_shipped_weights_states_the_manifest(model, tag):
    directory = weights_dir() / zoo.available(model)[tag]["dir"]
    manifest = json.loads((directory / "manifest.json").read_text())
    fields = card_fields(zoo.model_card(model, tag))
    assert fields["manifest sha256"] == sha256_file(directory / "manifest.json")
    assert fields["recipe"] == manifest["command"]
    assert fields["dataset"] == manifest["dataset"]
    metric = manifest["metric"]
    assert fields["metric"].startswith(f"{metric['name']} {metric['value']:.6g} ({metric['split']} split")
    assert fields["follows"] == zoo.get_spec(model).follows
    built = model_from_manifest(manifest)
    assert fields["input"] == str(built.input_spec())
    assert fields["parameters"] == f"{zoo.param_count(expected_variables(built)):,}"
    source = cards.DATASETS[manifest["dataset"]]
    assert fields["source"] == f"{source['source']}, {source['url']}"
    assert fields["license"] == cards.LICENSE_NOTE


@pytest.mark.parametrize("model, tag", SHIPPED, ids=[f"{m}.{t}" for m, t in SHIPPED])
def test_training_device_time_and_recipe_come_from_the_manifest(model, tag):
    """The card's training lines are the manifest's "training" record, no repository file; the
    shipped ones were recorded after the fact from bench/results/train_all.json's run with the same
    metric (the record says so), and recipes hold no machine paths."""
    manifest = json.loads((weights_dir() / zoo.available(model)[tag]["dir"] / "manifest.json").read_text())
    training = manifest["training"]
    fields = card_fields(zoo.model_card(model, tag))
    assert fields["training device"] == (training["device"] or "not recorded")
    assert fields["training wall time"] == (f"{training['wall_s']:g} s" if training["wall_s"] is not None else "not recorded")
    assert fields["recorded"] == training["recorded"]
    assert "--workdir" not in fields["recipe"] and "/tmp" not in fields["recipe"]
    runs = [r for r in json.loads((REPO / "bench" / "results" / "train_all.json").read_text()).values()
            if r["tag"] == f"{model}.{tag}" and r["metric"] == manifest["metric"]]
    if runs:
        assert (training["device"], training["wall_s"]) == (runs[0]["device"], runs[0]["train_wall_s"])
        assert training["recorded"].startswith("2026-12-07, after the export, from bench/results/train_all.json")
    else:  # dcgan.mnist: its run is not in the record, and the card does not pretend otherwise
        assert training["device"] is None and training["wall_s"] is None
        assert "no run with this metric" in training["recorded"]


def test_card_uses_the_weights_overrides_not_the_registry_defaults():
    fields = card_fields(zoo.model_card("mlp_binary", "mnist_parity"))
    assert fields["input"].startswith("shape (batch, 28, 28, 1) float32")
    assert fields["architecture"] == "zoo.mlp.MLP (overrides: in_shape=[28, 28, 1])"
    assert fields["parameters"] == f"{28 * 28 * 5 + 5 + 5 + 1:,}"  # 784-5-1, not the registry's 10-5-1 (61)


def test_card_without_a_tag_lists_the_spec_and_each_shipped_tag():
    card = zoo.model_card("cnn")
    spec = zoo.get_spec("cnn")
    fields = card_fields(card)
    assert fields["parameters"] == f"{spec.num_params:,}" and fields["task"] == spec.task
    assert fields["classes"] == " ".join(spec.class_names)
    assert fields["embedding"].startswith("(3136,)")
    for tag in spec.pretrained:
        assert fields[f"cnn.{tag}"].startswith(f"mnist, accuracy {zoo.available('cnn')[tag]['metric']['value']:.6g}")
    assert card_fields(zoo.model_card("cnn_cifar"))["pretrained"] == "none shipped"


def test_card_errors_name_what_exists():
    with pytest.raises(ValueError, match=r"unknown pretrained tag 'nope' for 'cnn'; shipped tags: mnist, mnist_aug"):
        zoo.model_card("cnn", "nope")
    with pytest.raises(zoo.UnknownModelError, match="Did you mean 'cnn'"):
        zoo.model_card("cnnn")


def test_dataset_sources_match_the_vendored_readme():
    readme = " ".join((REPO / "train" / "vendored" / "README.md").read_text().split())
    for info in cards.DATASETS.values():
        assert info["source"] in readme and info["url"] in readme
    # the card says "not stated"; if the README gains license terms, cards.py must state them
    assert "licen" not in readme.lower()


def test_pretrained_inputs_differ_only_where_overrides_change_them():
    assert zoo.pretrained_inputs("mlp_binary")["mnist_parity"].shape == (28, 28, 1)
    assert zoo.get_spec("mlp_binary").input.shape == (10,)
    assert {t: s.shape for t, s in zoo.pretrained_inputs("cnn").items()} == {"mnist": (28, 28, 1), "mnist_aug": (28, 28, 1)}
    assert zoo.pretrained_inputs("cnn_cifar") == {}


def test_cli_info_prints_the_card():
    result = zoo_cli("info", "cnn.mnist")
    assert result.returncode == 0, result.stderr
    assert result.stdout == zoo.model_card("cnn", "mnist") + "\n"
    assert zoo_cli("info", "cnn").stdout == zoo.model_card("cnn") + "\n"
    bad = zoo_cli("info", "cnn.nope")
    assert bad.returncode == 2 and "shipped tags: mnist, mnist_aug" in bad.stderr


def test_cli_list_filters_and_shows_the_shipped_input():
    rows = {line.split()[0]: line for line in zoo_cli("list", "--pretrained").stdout.splitlines()[1:]}
    assert list(rows) == zoo.list_models(pretrained=True)
    assert "mnist_parity (input (28, 28, 1))" in rows["mlp_binary"]
    assert "(10) float32" in rows["mlp_binary"]  # the registry default stays in the input column
    assert "input" not in rows["cnn"].split("float32", 1)[1]  # no note where the weights match
    listed = [line.split()[0] for line in zoo_cli("list", "*lstm").stdout.splitlines()[1:]]
    assert listed == zoo.list_models("*lstm") == ["char_lstm", "lstm"]
    none = zoo_cli("list", "zz*")
    assert none.returncode == 1 and "no model matches 'zz*'" in none.stderr


def test_a_card_reads_json_only():
    code = ("import sys, zoo; zoo.model_card('mlp_binary', 'mnist_parity'); zoo.model_card('cnn'); "
            "print(sorted(m for m in ('orbax', 'tensorflow', 'tensorflow_datasets', 'optax', 'torch', 'train') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_an_own_data_export_names_its_data_by_name_not_place():
    """`--data /home/me/pets` is recorded as the recipe `--data pets` and the dataset "own data
    (pets)", with no source or license block (those are the user's to state)."""
    from train.config import resolve
    from train.export import dataset_name, recipe
    from zoo.cards import _dataset_lines

    assert recipe(["zoo", "train", "cnn", "--data", "/home/me/pets", "--workdir", "/w"]) == "zoo train cnn --data pets"
    assert recipe(["zoo", "train", "cnn", "--data=/home/me/x.npz"]) == "zoo train cnn --data x.npz"
    assert recipe(["zoo", "train", "cnn", "--data-workers", "2"]) == "zoo train cnn --data-workers 2"
    assert dataset_name(resolve("cnn", {"data": "/home/me/pets"})) == "own data (pets)"
    assert dataset_name(resolve("cnn", {})) == "mnist"
    assert _dataset_lines("own data (pets)") == ["dataset: own data (pets)"]
