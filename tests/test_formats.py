"""Export formats beside Orbax: safetensors (written and loaded back) and ONNX (checked with onnxruntime).

Every shipped model round-trips bit-exactly through safetensors; every registered model (with
its shipped weights where there are some) gives onnxruntime outputs equal to zoo's within 1e-4
at two batch sizes; the `zoo export`
command converts shipped weights in one call.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

import zoo
from zoo.files import sha256_file
from zoo.formats.onnx_export import write_onnx
from zoo.formats.safetensors_export import SAFETENSORS_FORMAT, read_safetensors, write_safetensors

REPO = Path(__file__).resolve().parents[1]
SHIPPED = [(model, tag) for model, tags in sorted(zoo.available().items()) for tag in sorted(tags)]

safetensors = pytest.importorskip("safetensors")


def _assert_same_tree(a, b):
    flat_a, flat_b = (flatten_dict(jax.device_get(t), sep="/") for t in (a, b))
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        assert flat_a[key].dtype == flat_b[key].dtype, key
        np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=key)


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory):
    """cnn.mnist as a .safetensors export."""
    _, variables = zoo.load("cnn", pretrained="mnist")
    path = tmp_path_factory.mktemp("st") / "cnn.safetensors"
    return write_safetensors(path, "cnn", variables, dataset="mnist",
                                     metric={"name": "accuracy", "value": 0.99, "split": "test"})


# ---------------------------------------------------------------- safetensors


@pytest.mark.parametrize("model,tag", SHIPPED, ids=[f"{m}.{t}" for m, t in SHIPPED])
def test_safetensors_round_trip_is_bit_exact(model, tag, tmp_path):
    manifest = zoo.pretrained.read_manifest(model, tag)
    net, variables = zoo.load(model, pretrained=tag)
    path = write_safetensors(tmp_path / f"{model}.safetensors", model, variables,
                                     model_overrides=manifest["model_overrides"], dataset=manifest["dataset"],
                                     metric=manifest["metric"])
    loaded_net, loaded = zoo.load(model, path=path)
    assert loaded_net == net
    _assert_same_tree(variables, loaded)
    # the keys are the flat parameter paths
    with safetensors.safe_open(path, framework="np") as f:
        assert set(f.keys()) == set(flatten_dict(jax.device_get(variables), sep="/"))


def test_safetensors_header_holds_the_manifest_fields(cnn_file):
    with safetensors.safe_open(cnn_file, framework="np") as f:
        meta = f.metadata()
        assert "params/conv_0/kernel" in f.keys()
    assert meta["format"] == SAFETENSORS_FORMAT and meta["model"] == "cnn" and meta["dataset"] == "mnist"
    assert json.loads(meta["model_overrides"]) == {}
    assert json.loads(meta["metric"]) == {"name": "accuracy", "value": 0.99, "split": "test"}
    assert json.loads(meta["versions"])["jax"] == jax.__version__
    manifest = zoo.pretrained.read_manifest("cnn", path=cnn_file)
    assert manifest["model"] == "cnn" and manifest["metric"]["value"] == 0.99 and manifest["dataset"] == "mnist"


def test_safetensors_keeps_model_overrides(tmp_path):
    model = zoo.create("mlp", hidden=(16,))
    variables = zoo.init(model, jax.random.key(1))
    path = write_safetensors(tmp_path / "m.safetensors", "mlp", variables, model_overrides={"hidden": (16,)})
    loaded_model, loaded = zoo.load("mlp", path=path)
    assert loaded_model.hidden == (16,)
    _assert_same_tree(variables, loaded)


def test_safetensors_load_with_a_new_head(cnn_file):
    with pytest.warns(UserWarning, match="head"):
        model, variables = zoo.load("cnn", path=cnn_file, num_classes=5)
    assert model.num_classes == 5 and variables["params"]["head"]["kernel"].shape[-1] == 5


def _rewrite_header(src: Path, dst: Path, edit) -> None:
    """Copies a safetensors file with its JSON header changed by `edit(header) -> header`."""
    data = src.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = edit(json.loads(data[8:8 + n]))
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data aligned
    dst.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def test_safetensors_wrong_model_is_named(cnn_file):
    with pytest.raises(ValueError, match=r"holds weights for model 'cnn', not 'mlp'.*zoo.load\('cnn'"):
        zoo.load("mlp", path=cnn_file)


def test_safetensors_tampered_model_in_header_fails_the_tree_check(cnn_file, tmp_path):
    bad = tmp_path / "bad.safetensors"
    _rewrite_header(cnn_file, bad, lambda h: {**h, "__metadata__": {**h["__metadata__"], "model": "mlp"}})
    with pytest.raises(ValueError, match=r"(?s)does not match model 'mlp':\n.*params/conv_0/kernel: unexpected"):
        zoo.load("mlp", path=bad)


def test_safetensors_corrupt_header_is_a_value_error(cnn_file, tmp_path):
    bad = tmp_path / "bad.safetensors"
    data = bytearray(cnn_file.read_bytes())
    data[8] = ord("[")  # the header is no longer a JSON object
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"bad.safetensors: not a valid safetensors file"):
        zoo.load("cnn", path=bad)
    bad.write_bytes(bytes(data[:100]))  # truncated
    with pytest.raises(ValueError, match=r"not a valid safetensors file"):
        zoo.load("cnn", path=bad)


def test_safetensors_bad_metadata_is_named(cnn_file, tmp_path):
    bad = tmp_path / "bad.safetensors"
    _rewrite_header(cnn_file, bad, lambda h: {**h, "__metadata__": {**h["__metadata__"], "metric": "{oops"}})
    with pytest.raises(ValueError, match=r"__metadata__ 'metric' must be JSON"):
        zoo.load("cnn", path=bad)
    _rewrite_header(cnn_file, bad, lambda h: {k: v for k, v in h.items() if k != "__metadata__"})
    with pytest.raises(ValueError, match=r"not a zoo safetensors export.*format='zoo-safetensors-1', got None"):
        zoo.load("cnn", path=bad)


def test_safetensors_missing_and_reshaped_tensors_are_named(cnn_file, tmp_path):
    from safetensors.numpy import save_file

    with safetensors.safe_open(cnn_file, framework="np") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    missing = {k: v for k, v in tensors.items() if k != "params/head/bias"}
    save_file(missing, tmp_path / "missing.safetensors", metadata=meta)
    with pytest.raises(ValueError, match=r"does not match model 'cnn':\n  params/head/bias: missing \(expected shape \(10,\) float32\)"):
        zoo.load("cnn", path=tmp_path / "missing.safetensors")
    reshaped = {**tensors, "params/head/bias": np.zeros((3,), np.float32)}
    save_file(reshaped, tmp_path / "reshaped.safetensors", metadata=meta)
    with pytest.raises(ValueError, match=r"params/head/bias: expected shape \(10,\) float32, found shape \(3,\) float32"):
        zoo.load("cnn", path=tmp_path / "reshaped.safetensors")


def test_safetensors_sha256_pin(cnn_file):
    zoo.load("cnn", path=cnn_file, sha256=sha256_file(cnn_file))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        zoo.load("cnn", path=cnn_file, sha256="0" * 64)


def test_safetensors_missing_file_names_it(tmp_path):
    with pytest.raises(OSError, match="nope.safetensors"):
        zoo.load("cnn", path=tmp_path / "nope.safetensors")


@pytest.mark.parametrize("kind, found", [("FIFO", "a FIFO"), ("directory", "a directory")])
def test_safetensors_path_that_is_not_a_regular_file_is_refused_promptly(kind, found, tmp_path):
    """Opening a FIFO blocks until a writer comes; a directory failed with 'No such device'.
    In a subprocess: safetensors' native open holds the GIL while it blocks, so a thread could
    not time it out."""
    path = tmp_path / "x.safetensors"
    os.mkfifo(path) if kind == "FIFO" else path.mkdir()
    code = ("import sys, zoo\n"
            "calls = [lambda: zoo.load('cnn', path=sys.argv[1]), lambda: zoo.load('cnn', path=sys.argv[1], sha256='0' * 64),\n"
            "         lambda: zoo.pretrained.read_manifest(path=sys.argv[1])]\n"
            "for call in calls:\n"
            "    try:\n"
            "        call()\n"
            "    except ValueError as e:\n"
            "        print(e)\n")
    result = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                            capture_output=True, text=True, timeout=120)
    expected = f"{path}: is {found}, not a regular file (expected a .safetensors file)"
    assert result.stdout.splitlines() == [expected] * 3, result.stdout + result.stderr[-2000:]


def nonfinite_safetensors(source: Path, path: Path) -> Path:
    """`source`'s header and tensors, with 2 NaN and 1 inf written into params/head/kernel."""
    from safetensors.numpy import save_file

    with safetensors.safe_open(source, framework="np") as f:
        metadata, tensors = f.metadata(), {key: f.get_tensor(key) for key in f.keys()}
    kernel = tensors["params/head/kernel"].copy()
    kernel.flat[[1, 2]] = np.nan
    kernel.flat[3] = np.inf
    save_file({**tensors, "params/head/kernel": kernel}, path, metadata=metadata)
    return path


NONFINITE = r"non-finite weights \(NaN or inf\) in params/head/kernel \(2 NaN and 1 inf of 31360 values\); refusing them"


def test_nonfinite_safetensors_are_refused_naming_the_leaf(cnn_file, tmp_path):
    path = nonfinite_safetensors(cnn_file, tmp_path / "nan.safetensors")
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: {NONFINITE}$"):
        zoo.load("cnn", path=path)
    _, variables = zoo.load("cnn", path=cnn_file)
    variables = jax.tree.map(np.array, variables)
    variables["params"]["conv_0"]["bias"][0] = np.nan
    with pytest.raises(ValueError, match=r"^variables of 'cnn': non-finite .* in params/conv_0/bias \(1 NaN of 32 values\)"):
        write_safetensors(tmp_path / "out.safetensors", "cnn", variables)
    assert not (tmp_path / "out.safetensors").exists()


def test_write_safetensors_refuses_bad_input(cnn_file, tmp_path):
    _, variables = zoo.load("cnn", path=cnn_file)
    with pytest.raises(ValueError, match=r"ending in .safetensors, got '.*cnn.st'"):
        write_safetensors(tmp_path / "cnn.st", "cnn", variables)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_safetensors(cnn_file, "cnn", variables)
    with pytest.raises(ValueError, match=r"variables do not match model 'mlp'"):
        write_safetensors(tmp_path / "x.safetensors", "mlp", variables)
    assert not (tmp_path / "x.safetensors").exists()


def test_import_zoo_stays_light():
    code = ("import sys, zoo; heavy = [m for m in ('safetensors', 'onnx', 'onnxruntime', 'jax2onnx', 'PIL') "
            "if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), check=True, timeout=120)


# ---------------------------------------------------------------- ONNX

def _onnx_check(model_name: str, tag: str | None, tmp_path: Path, batch_sizes=(1, 5), time_steps=(16, 7)):
    """Exports shipped weights (or, without a tag, seeded random ones) and compares onnxruntime with zoo."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("jax2onnx")
    if tag is None:
        manifest = {"model_overrides": {}, "dataset": None}
        model = zoo.create(model_name)
        variables = zoo.init(model, jax.random.key(0))
    else:
        manifest = zoo.pretrained.read_manifest(model_name, tag)
        model, variables = zoo.load(model_name, pretrained=tag)
    path = write_onnx(tmp_path / f"{model_name}.onnx", model_name, variables,
                              model_overrides=manifest["model_overrides"], dataset=manifest["dataset"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "input" and inp.shape[0] == "B"  # the batch axis is dynamic
    spec = model.input_spec()
    rng = np.random.default_rng(0)
    for batch, steps in zip(batch_sizes, time_steps):
        shape = spec.example_shape(batch, steps)
        x = (rng.integers(0, model.vocab_size, shape).astype(np.int32) if spec.dtype == "int32"
             else rng.random(shape, dtype=np.float32))
        expected = model.apply(variables, x)
        names = [o.name for o in session.get_outputs()]
        got = dict(zip(names, session.run(None, {"input": x})))
        expected = expected if isinstance(expected, dict) else {"output": expected}
        assert sorted(got) == sorted(expected)
        for key in expected:
            np.testing.assert_allclose(got[key], np.asarray(expected[key]), rtol=0, atol=1e-4, err_msg=f"{key} batch {batch}")
    return path, manifest


@pytest.mark.parametrize("model_name", zoo.list_models())
def test_onnx_matches_zoo_at_two_batch_sizes(model_name, tmp_path):
    import onnx

    tag = next(iter(zoo.get_spec(model_name).pretrained), None)
    path, manifest = _onnx_check(model_name, tag, tmp_path)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["zoo_model"] == model_name
    assert json.loads(props["zoo_dataset"]) == manifest["dataset"]
    assert json.loads(props["zoo_model_overrides"]) == manifest["model_overrides"]


def test_char_lstm_onnx_has_a_dynamic_time_axis(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path, _ = _onnx_check("char_lstm", "tiny_shakespeare", tmp_path, batch_sizes=(2, 3), time_steps=(5, 11))
    assert ort.InferenceSession(str(path)).get_inputs()[0].shape == ["B", "T"]


def test_write_onnx_refuses_a_wrong_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"ending in .onnx"):
        write_onnx(tmp_path / "x.bin", "mlp", zoo.init("mlp", jax.random.key(0)))


# ---------------------------------------------------------------- zoo export


def test_cli_exports_shipped_weights_as_safetensors(cli, tmp_path):
    out = tmp_path / "cnn.safetensors"
    code, stdout, _ = cli("export", "cnn", out, "--pretrained", "mnist", "--format", "safetensors")
    assert code == 0 and "pretrained mnist" in stdout and "as safetensors" in stdout
    _assert_same_tree(zoo.load("cnn", pretrained="mnist")[1], zoo.load("cnn", path=out)[1])
    shipped = zoo.pretrained.read_manifest("cnn", "mnist")
    assert zoo.pretrained.read_manifest("cnn", path=out)["metric"] == shipped["metric"]
    # and back to an Orbax export directory, from the safetensors file
    code, _, _ = cli("export", "cnn", tmp_path / "again", "--path", out)
    assert code == 0
    _assert_same_tree(zoo.load("cnn", path=out)[1], zoo.load("cnn", path=tmp_path / "again")[1])
    assert zoo.pretrained.read_manifest("cnn", path=tmp_path / "again")["metric"] == shipped["metric"]


def test_cli_exports_the_dcgan_generator_as_onnx(cli, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "dcgan.onnx"
    code, _, _ = cli("export", "dcgan", out, "--pretrained", "mnist", "--format", "onnx")
    assert code == 0
    model, variables = zoo.load("dcgan", pretrained="mnist")
    z = np.random.default_rng(1).standard_normal((3, model.latent_dim)).astype(np.float32)
    (images,) = ort.InferenceSession(str(out)).run(None, {"input": z})
    np.testing.assert_allclose(images, np.asarray(model.apply(variables, z, method="generate")), rtol=0, atol=1e-4)


def test_cli_export_refuses_nonfinite_weights(cli, cnn_file, tmp_path):
    """The ONNX export of NaN weights used to carry the file's claimed accuracy."""
    source = nonfinite_safetensors(cnn_file, tmp_path / "nan.safetensors")
    code, out, err = cli("export", "cnn", tmp_path / "nan.onnx", "--path", source, "--format", "onnx")
    assert code == 2 and re.fullmatch(f"error: {re.escape(str(source))}: {NONFINITE}\n", err), err
    assert not (tmp_path / "nan.onnx").exists() and not out


def test_cli_export_errors(cli, tmp_path):
    for flag in ("--publish", "--ship"):  # --ship: the flag's earlier name, still accepted
        code, _, err = cli("export", "cnn", tmp_path / "x.onnx", "--pretrained", "mnist", "--format", "onnx", flag, "t")
        assert code == 2 and "--publish needs --format orbax" in err
    code, _, err = cli("export", "cnn", tmp_path / "x", "--pretrained", "mnist", "--workdir", tmp_path)
    assert code == 2 and "not both" in err
    code, _, err = cli("export", "cnn", tmp_path / "x.safetensors", "--pretrained", "nope", "--format", "safetensors")
    assert code == 2 and "unknown pretrained tag 'nope'" in err
    code, _, err = cli("export", "cnn", tmp_path / "x", "--pretrained", "mnist", "--format", "safetensors")
    assert code == 2 and "ending in .safetensors" in err
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- overwrite


@pytest.mark.parametrize("fmt", ["safetensors", "onnx"])
@pytest.mark.parametrize("case", ["directory", "foreign_file", "symlink"])
def test_overwrite_replaces_only_a_file_zoo_wrote(cnn_file, tmp_path, fmt, case):
    _, variables = zoo.load("cnn", path=cnn_file)
    target = tmp_path / f"x.{fmt}"
    if case == "directory":  # a folder that happens to be named like the output
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    elif case == "foreign_file":  # someone else's model file, or any file with that name
        if fmt == "safetensors":
            from safetensors.numpy import save_file

            save_file({"w": np.ones(3, np.float32)}, str(target))
        else:
            target.write_bytes(b"not zoo's")
    else:
        (tmp_path / "real").write_text("mine")
        target.symlink_to(tmp_path / "real")
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    write = write_safetensors if fmt == "safetensors" else write_onnx
    with pytest.raises(FileExistsError, match=rf"refusing to overwrite {target}: .*only an earlier zoo export"):
        write(target, "cnn", variables, overwrite=True)
    assert {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_overwrite_replaces_a_zoo_safetensors_file(cnn_file, tmp_path):
    _, variables = zoo.load("cnn", path=cnn_file)
    target = write_safetensors(tmp_path / "x.safetensors", "cnn", variables, dataset="old")
    write_safetensors(target, "cnn", variables, dataset="new", overwrite=True)
    assert read_safetensors(target)[0]["dataset"] == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]


def test_the_format_table_drives_export_and_load():
    from train.cli import build_parser
    from zoo import formats

    export = build_parser().commands["export"]
    (choice,) = [a for a in export._actions if "--format" in a.option_strings]
    assert choice.choices == list(formats.FORMATS) == ["orbax", "safetensors", "onnx"]
    assert choice.default == formats.DIRECTORY == "orbax"
    # zoo.load reads a local file by the suffix of a format that has a reader, refuses one of a
    # format without a reader (an .onnx graph); anything else (a directory, a URL's archive) is
    # looked up as an export directory
    assert formats.of_path("w/cnn.safetensors").name == "safetensors"
    assert formats.of_path(Path("cnn.safetensors")).name == "safetensors"
    for path in ("https://host/cnn.safetensors", "w/export", None):
        assert formats.of_path(path).name == "orbax", path
    with pytest.raises(ValueError, match="cannot read onnx files"):
        formats.of_path("w/cnn.onnx")
    with pytest.raises(ValueError, match="unknown export format 'tflite'; formats: orbax, safetensors, onnx"):
        formats.get("tflite")


def test_formats_write_keeps_only_the_fields_a_format_records(tmp_path):
    from zoo import formats

    variables = zoo.init("mlp", jax.random.key(0))
    out = formats.write("safetensors", tmp_path / "m.safetensors", "mlp", variables, dataset="mnist",
                        command="zoo train mlp", train_config={"epochs": 1})  # not recorded in the file
    assert read_safetensors(out)[0]["dataset"] == "mnist"


def test_load_of_an_onnx_file_says_what_load_reads(tmp_path):
    """An .onnx graph is for onnxruntime: zoo.load says so instead of "not a directory"."""
    graph = tmp_path / "cnn.onnx"
    graph.write_bytes(b"not read")
    with pytest.raises(ValueError, match=r"cnn\.onnx: zoo\.load cannot read onnx files .*reads an export directory or "
                                         r"\.safetensors files"):
        zoo.load("cnn", path=graph)
