"""Exported checkpoints: export -> load round trips, sha256 verification, strict tree checks,
URL downloads through the cache, shipped weights, and a light `import zoo`.

Variables are random numpy arrays of the model's shapes (no jit-compiled init), so the
whole file runs in seconds on CPU.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import zoo  # noqa: E402
from train.export import archive, export, ship  # noqa: E402
from zoo import pretrained  # noqa: E402
from zoo.pretrained import available, load, register_shipped  # noqa: E402


def random_variables(name: str, seed: int = 0, **overrides) -> dict:
    """Random numpy variables with the exact tree of `zoo.create(name, **overrides)`."""
    rng = np.random.default_rng(seed)
    shapes = pretrained.expected_variables(zoo.create(name, **overrides))
    return jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(s.dtype), shapes)


def assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def data_files(directory: Path) -> list[Path]:
    """The export's array data files (ocdbt chunks), largest first."""
    files = [p for p in (directory / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
    return sorted(files, key=lambda p: -p.stat().st_size)


def rewrite_manifest(directory: Path, **changes) -> None:
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest.update(changes)
    (directory / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def cnn_export(tmp_path_factory):
    """(export dir, variables) of a random cnn; copy it before changing anything."""
    variables = random_variables("cnn")
    out = export(
        tmp_path_factory.mktemp("exports") / "cnn",
        "cnn",
        variables,
        dataset="mnist",
        metric={"name": "accuracy", "value": 0.5, "split": "test"},
        command=["zoo", "train", "cnn", "--epochs", "1"],
    )
    return out, variables


@pytest.fixture
def cnn_copy(cnn_export, tmp_path):
    return Path(shutil.copytree(cnn_export[0], tmp_path / "cnn"))


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Every test gets its own download cache and an empty shipped-weights directory."""
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ZOO_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    yield
    # tests that call register_shipped() on a fake weights dir must not leak its tags
    monkeypatch.undo()
    register_shipped()


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cnn", "dcgan"])  # dcgan: batch_stats and nested modules
def test_export_load_round_trip(name, tmp_path):
    variables = random_variables(name, seed=3)
    out = export(tmp_path / name, name, variables)
    model, loaded = load(name, path=out)

    assert type(model) is zoo.get_spec(name).module
    assert set(loaded) == set(variables)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(loaded))
    assert_same(loaded, variables)
    x = model.input_spec().example(2) + 0.5
    np.testing.assert_array_equal(model.apply(loaded, x), model.apply(variables, x))
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary siblings left


def test_export_of_sharded_variables_loads_on_one_device(tmp_path):
    variables = random_variables("cnn", seed=4)
    mesh = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4])
    sharded = jax.tree.map(lambda x: jax.device_put(x, jax.NamedSharding(mesh, jax.P())), variables)
    sharded["params"]["head"]["kernel"] = jax.device_put(  # (3136, 10) split over 4 devices
        variables["params"]["head"]["kernel"], jax.NamedSharding(mesh, jax.P("data"))
    )
    _, loaded = load("cnn", path=export(tmp_path / "cnn", "cnn", sharded))
    assert_same(loaded, variables)
    assert all(len(x.devices()) == 1 for x in jax.tree.leaves(loaded))


def test_manifest_contents(cnn_export):
    out, _ = cnn_export
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == 1 and manifest["model"] == "cnn" and manifest["model_overrides"] == {}
    assert manifest["dataset"] == "mnist"
    assert manifest["metric"] == {"name": "accuracy", "value": 0.5, "split": "test"}
    assert manifest["command"] == "zoo train cnn --epochs 1"
    assert {"python", "jax", "flax", "orbax", "numpy", "zoo"} <= set(manifest["versions"])
    assert manifest["created"].endswith("+00:00")
    on_disk = {p.relative_to(out).as_posix(): p for p in out.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == set(on_disk) - {"manifest.json"}
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256(on_disk[rel].read_bytes()).hexdigest() == digest
    assert not any(p.suffix in (".pkl", ".pickle", ".msgpack") for p in on_disk.values())


def test_overrides_round_trip_as_tuples(tmp_path):
    out = export(tmp_path / "mlp", "mlp", random_variables("mlp", hidden=(16, 8)), model_overrides={"hidden": (16, 8)})
    assert json.loads((out / "manifest.json").read_text())["model_overrides"] == {"hidden": [16, 8]}
    model, variables = load("mlp", path=out)
    assert model.hidden == (16, 8)
    assert model.apply(variables, model.input_spec().example(2)).shape == (2, 10)


def test_export_refuses_existing_dir_unless_overwrite(cnn_copy):
    new = random_variables("cnn", seed=1)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export(cnn_copy, "cnn", new)
    export(cnn_copy, "cnn", new, overwrite=True)
    assert_same(load("cnn", path=cnn_copy)[1], new)
    assert [p.name for p in cnn_copy.parent.iterdir()] == ["cnn"]


def test_export_checks_variables_against_the_model(tmp_path):
    with pytest.raises(ValueError, match=r"params/dense_0/kernel: expected shape \(784, 500\) float32, found shape \(784, 128\)"):
        export(tmp_path / "x", "mlp", random_variables("mlp_small"))
    assert not list(tmp_path.iterdir())


# --- verification ----------------------------------------------------------------------------


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


@pytest.mark.parametrize("damage", [_flip_byte, _truncate], ids=["tampered", "truncated"])
def test_changed_file_is_refused(cnn_copy, damage):
    target = data_files(cnn_copy)[0]
    rel = target.relative_to(cnn_copy).as_posix()
    expected = json.loads((cnn_copy / "manifest.json").read_text())["files"][rel]
    damage(target)
    found = hashlib.sha256(target.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match=f"{rel}: sha256 mismatch: expected {expected}, found {found}"):
        load("cnn", path=cnn_copy)


def test_missing_file_is_refused(cnn_copy):
    target = data_files(cnn_copy)[-1]
    target.unlink()
    with pytest.raises(ValueError, match=f"{target.relative_to(cnn_copy).as_posix()}: missing"):
        load("cnn", path=cnn_copy)


@pytest.mark.parametrize("extra", ["extra.txt", "params/d/0123456789abcdef"])
def test_unlisted_file_is_refused(cnn_copy, extra):
    (cnn_copy / extra).write_text("hello")
    with pytest.raises(ValueError, match=f"{extra}: not listed in manifest.json"):
        load("cnn", path=cnn_copy)


def test_symlink_is_refused(cnn_copy, tmp_path):
    (tmp_path / "outside").write_text("x")
    (cnn_copy / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(ValueError, match="link: is a symlink"):
        load("cnn", path=cnn_copy)


def test_manifest_pin(cnn_copy):
    digest = hashlib.sha256((cnn_copy / "manifest.json").read_bytes()).hexdigest()
    load("cnn", path=cnn_copy, sha256=digest.upper())
    rewrite_manifest(cnn_copy, dataset="something else")
    with pytest.raises(ValueError, match=f"manifest.json: sha256 mismatch: expected {digest}"):
        load("cnn", path=cnn_copy, sha256=digest)


def test_not_an_export(tmp_path):
    with pytest.raises(ValueError, match="no manifest.json"):
        load("cnn", path=tmp_path)
    with pytest.raises(ValueError, match="not a directory"):
        load("cnn", path=tmp_path / "nope")


# --- strict structure ------------------------------------------------------------------------


def test_checkpoint_of_another_model_is_refused(cnn_export):
    with pytest.raises(ValueError, match=r"model 'cnn', not 'mlp'; load it with zoo.load\('cnn'"):
        load("mlp", path=cnn_export[0])


@pytest.mark.parametrize(
    "model,overrides,message",
    [
        # mlp_small's weights under mlp's name: every dense layer has the wrong shape
        ("mlp", {}, r"params/dense_0/kernel: expected shape \(784, 500\) float32, found shape \(784, 128\) float32"),
        # an extra conv block in the model that the checkpoint lacks
        ("cnn", {"features": [32, 64, 128]}, r"params/conv_2/kernel: missing \(expected shape \(3, 3, 64, 128\)"),
        # a checkpoint with more layers than the model
        ("mlp", {"hidden": [128]}, r"params/dense_1/kernel: unexpected \(found shape \(128, 64\)"),
    ],
)
def test_tree_mismatch_names_path_and_shapes(tmp_path, model, overrides, message):
    # Export a valid mlp_small/cnn, then edit its (unpinned) manifest to claim another model.
    source = "cnn" if model == "cnn" else "mlp_small"
    out = export(tmp_path / "x", source, random_variables(source))
    rewrite_manifest(out, model=model, model_overrides=overrides)
    with pytest.raises(ValueError, match=message):
        load(model, path=out)


def test_load_arguments(cnn_export):
    with pytest.raises(ValueError, match="exactly one of pretrained="):
        load("cnn")
    with pytest.raises(ValueError, match="exactly one of pretrained="):
        load("cnn", pretrained="mnist", path=cnn_export[0])
    with pytest.raises(ValueError, match="64 hex digits"):
        load("cnn", path=cnn_export[0], sha256="abc")
    with pytest.raises(zoo.UnknownModelError, match="Did you mean 'cnn'"):
        load("cnnn", path=cnn_export[0])


# --- URLs and the download cache ------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A local HTTP server for tmp_path/www; yields (www dir, base url, stop())."""
    www = tmp_path / "www"
    www.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    stopped = []

    def stop():
        if not stopped:
            httpd.shutdown()
            httpd.server_close()
            thread.join()
            stopped.append(True)

    yield www, f"http://127.0.0.1:{httpd.server_address[1]}", stop
    stop()


def cache_contents(tmp_path) -> list[str]:
    cache = tmp_path / "cache"
    return sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*")) if cache.exists() else []


def test_url_load_verifies_and_caches(cnn_export, server, tmp_path):
    www, url, stop = server
    sha = archive(cnn_export[0], www / "cnn.tar.gz")
    model, variables = load("cnn", path=f"{url}/cnn.tar.gz", sha256=sha)
    assert_same(variables, cnn_export[1])
    cached = [p for p in (tmp_path / "cache" / "exports").iterdir()]
    assert len(cached) == 1 and (cached[0] / "manifest.json").is_file()
    assert not [p for p in cache_contents(tmp_path) if "/." in p or p.startswith(".")]  # no temporaries

    stop()  # a second load must not touch the network
    assert_same(load("cnn", path=f"{url}/cnn.tar.gz", sha256=sha)[1], cnn_export[1])
    before = cache_contents(tmp_path)
    with pytest.raises(OSError):  # ...while a new download would fail, leaving nothing behind
        load("cnn", path=f"{url}/other.tar.gz")
    assert cache_contents(tmp_path) == before


def test_url_without_pin_and_archive_is_reproducible(cnn_export, server, tmp_path):
    www, url, _ = server
    assert archive(cnn_export[0], www / "a.tar.gz") == archive(cnn_export[0], tmp_path / "b.tar.gz")
    assert_same(load("cnn", path=f"{url}/a.tar.gz")[1], cnn_export[1])


def test_url_bad_sha256_leaves_nothing(cnn_export, server, tmp_path):
    www, url, _ = server
    sha = archive(cnn_export[0], www / "cnn.tar.gz")
    wrong = ("0" if sha[0] != "0" else "1") + sha[1:]
    with pytest.raises(ValueError, match=f"sha256 mismatch: expected {wrong}, found {sha}"):
        load("cnn", path=f"{url}/cnn.tar.gz", sha256=wrong)
    assert cache_contents(tmp_path) in ([], ["exports"])


def test_url_archive_with_bad_file_leaves_nothing(cnn_copy, server, tmp_path):
    www, url, _ = server
    _flip_byte(data_files(cnn_copy)[0])
    with tarfile.open(www / "bad.tar.gz", "w:gz") as tar:
        tar.add(cnn_copy, arcname="cnn")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load("cnn", path=f"{url}/bad.tar.gz")
    assert cache_contents(tmp_path) in ([], ["exports"])


def _tar_with(path: Path, name: str, kind: str) -> None:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(name)
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))


@pytest.mark.parametrize(
    "name,kind",
    [("../evil", "file"), ("cnn/../../evil", "file"), ("/tmp/evil", "file"), ("cnn/link", "symlink")],
)
def test_url_unsafe_archive_is_refused(server, tmp_path, name, kind):
    www, url, _ = server
    _tar_with(www / "evil.tar.gz", name, kind)
    with pytest.raises(ValueError, match="refusing archive member"):
        load("cnn", path=f"{url}/evil.tar.gz")
    assert cache_contents(tmp_path) in ([], ["exports"])
    assert not (tmp_path / "evil").exists() and not (tmp_path / "cache" / "evil").exists()


# --- shipped weights -------------------------------------------------------------------------


@pytest.fixture
def shipped(cnn_export, tmp_path, monkeypatch):
    """A fake package weights dir (ZOO_WEIGHTS_DIR) with cnn.mnist shipped; registry restored after."""
    entry = ship(cnn_export[0], "mnist")
    yield tmp_path / "weights", entry
    monkeypatch.undo()
    register_shipped()


def test_shipped_weights_load(shipped, cnn_export):
    weights, entry = shipped
    package = json.loads((weights / "manifest.json").read_text())
    assert package == {"format": 1, "weights": {"cnn.mnist": entry}}
    assert entry["dir"] == "cnn.mnist" and entry["metric"]["name"] == "accuracy" and entry["size_bytes"] > 0
    assert available("cnn") == {"mnist": entry} and available() == {"cnn": {"mnist": entry}}
    assert available("mlp") == {}

    model, variables = load("cnn", pretrained="mnist")
    assert_same(variables, cnn_export[1])

    register_shipped()
    assert zoo.get_spec("cnn").pretrained == ("mnist",) and zoo.get_spec("mlp").pretrained == ()


def test_unknown_tag_lists_the_shipped_ones(shipped):
    with pytest.raises(ValueError, match="cnn has pretrained weights: mnist"):
        load("cnn", pretrained="cifar10")
    with pytest.raises(ValueError, match=r"mlp has no pretrained weights shipped yet \(models with weights: cnn\)"):
        load("mlp", pretrained="mnist")


def test_no_weights_shipped_message():
    with pytest.raises(ValueError, match=r"none shipped yet"):
        load("cnn", pretrained="mnist")


def test_shipped_export_is_pinned_by_the_package(shipped):
    weights, entry = shipped
    rewrite_manifest(weights / "cnn.mnist", metric={"name": "accuracy", "value": 1.0})
    with pytest.raises(ValueError, match=f"manifest.json: sha256 mismatch: expected {entry['manifest_sha256']}"):
        load("cnn", pretrained="mnist")


def test_ship_refuses_duplicates(shipped, cnn_export):
    with pytest.raises(FileExistsError, match="cnn.mnist is already shipped"):
        ship(cnn_export[0], "mnist")
    with pytest.raises(ValueError, match="tag must be"):
        ship(cnn_export[0], "mn.ist")


def test_tampered_cache_entry_names_the_cache(cnn_export, server, tmp_path):
    www, url, _ = server
    sha = archive(cnn_export[0], www / "cnn.tar.gz")
    load("cnn", path=f"{url}/cnn.tar.gz", sha256=sha)
    (cached,) = (tmp_path / "cache" / "exports").iterdir()
    _flip_byte(data_files(cached)[0])
    with pytest.raises(ValueError, match=rf"(?s)sha256 mismatch.*delete {re.escape(str(cached))} to fetch it again"):
        load("cnn", path=f"{url}/cnn.tar.gz", sha256=sha)


def test_manifest_of_unregistered_model_warns(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    entry = {"dir": "nosuch.mnist", "manifest_sha256": "0" * 64, "metric": None, "size_bytes": 0}
    (weights / "manifest.json").write_text(json.dumps({"format": 1, "weights": {"nosuch.mnist": entry}}))
    with pytest.warns(UserWarning, match="'nosuch', which is not a registered model"):
        register_shipped()
    (weights / "manifest.json").write_text(json.dumps({"format": 2}))
    with pytest.raises(ValueError, match="not a zoo weights manifest"):
        available()


def test_package_weights_are_consistent(monkeypatch):
    """The real zoo/weights: every entry is a registered model whose export verifies and loads."""
    monkeypatch.delenv("ZOO_WEIGHTS_DIR")
    weights = pretrained.weights_dir()
    assert weights == Path(zoo.__file__).parent / "weights"
    shipped = available()
    dirs = {p.name for p in weights.iterdir() if p.is_dir() and not p.name.startswith("__")} if weights.is_dir() else set()
    assert dirs == {e["dir"] for tags in shipped.values() for e in tags.values()}, "unlisted or missing weight dirs"
    for model, tags in shipped.items():
        assert model in zoo.list_models()
        for tag in tags:
            load(model, pretrained=tag)  # verifies every file, checks the tree strictly, restores


# --- import cost -----------------------------------------------------------------------------


def test_import_zoo_and_pretrained_is_light():
    code = (
        "import sys, zoo, zoo.pretrained; zoo.pretrained.register_shipped(); zoo.pretrained.available(); "
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('orbax', 'tensorflow', 'tensorflow_datasets', 'optax', 'torch', 'train')]; "
        "print(heavy); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
