"""Exported checkpoints: export -> load round trips, sha256 verification, strict tree checks,
URL downloads through the cache, shipped weights, and a light `import zoo`.

Variables are random numpy arrays of the model's shapes (no jit-compiled init), so the
whole file runs in seconds on CPU.
"""

from __future__ import annotations

import errno
import functools
import gzip
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import zoo  # noqa: E402
from zoo import pretrained  # noqa: E402
from zoo.files import write_json_atomic  # noqa: E402
from zoo.formats import common, orbax_export  # noqa: E402
from zoo.formats.archive import archive, extract_archive  # noqa: E402
from zoo.formats.orbax_export import write_export  # noqa: E402
from zoo.trees import expected_variables  # noqa: E402
from zoo.weights_index import publish  # noqa: E402
from zoo.pretrained import available, load, register_pretrained  # noqa: E402


def random_variables(name: str, seed: int = 0, **overrides) -> dict:
    """Random numpy variables with the exact tree of `zoo.create(name, **overrides)`."""
    rng = np.random.default_rng(seed)
    shapes = expected_variables(zoo.create(name, **overrides))
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
    out = write_export(
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
    # tests that call register_pretrained() on a fake weights dir must not leak its tags
    monkeypatch.undo()
    register_pretrained()


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cnn", "dcgan"])  # dcgan: batch_stats and nested modules
def test_export_load_round_trip(name, tmp_path):
    variables = random_variables(name, seed=3)
    out = write_export(tmp_path / name, name, variables)
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
    _, loaded = load("cnn", path=write_export(tmp_path / "cnn", "cnn", sharded))
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
    out = write_export(tmp_path / "mlp", "mlp", random_variables("mlp", hidden=(16, 8)), model_overrides={"hidden": (16, 8)})
    assert json.loads((out / "manifest.json").read_text())["model_overrides"] == {"hidden": [16, 8]}
    model, variables = load("mlp", path=out)
    assert model.hidden == (16, 8)
    assert model.apply(variables, model.input_spec().example(2)).shape == (2, 10)


def test_export_refuses_existing_dir_unless_overwrite(cnn_copy):
    new = random_variables("cnn", seed=1)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_export(cnn_copy, "cnn", new)
    write_export(cnn_copy, "cnn", new, overwrite=True)
    assert_same(load("cnn", path=cnn_copy)[1], new)
    assert [p.name for p in cnn_copy.parent.iterdir()] == ["cnn"]


def test_export_checks_variables_against_the_model(tmp_path):
    with pytest.raises(ValueError, match=r"params/dense_0/kernel: expected shape \(784, 500\) float32, found shape \(784, 128\)"):
        write_export(tmp_path / "x", "mlp", random_variables("mlp_small"))
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


def _make_special(path: Path, kind: str) -> None:
    if kind == "FIFO":
        os.mkfifo(path)
    elif kind == "socket":
        os.mknod(path, stat.S_IFSOCK | 0o600)
    else:  # a character device like /dev/null: needs CAP_MKNOD
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("creating a character device needs CAP_MKNOD")


def _load_in_thread(path, timeout: float = 30.0) -> Exception | None:
    """The exception load() raised, or None; fails if it is still blocked after `timeout`."""
    outcome = []

    def run():
        try:
            load("cnn", path=path)
            outcome.append(None)
        except Exception as e:  # noqa: BLE001 - handed to the test
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"load({path}) still blocked after {timeout} s"
    return outcome[0]


@pytest.mark.parametrize("kind", ["FIFO", "socket", pytest.param("character device", marks=pytest.mark.expected_skip("needs CAP_MKNOD"))])
def test_special_file_is_refused_before_it_is_opened(cnn_copy, kind):
    # Opening a FIFO for reading blocks until a writer appears: a hash-everything loader hangs.
    _make_special(cnn_copy / "params" / "special", kind)
    error = _load_in_thread(cnn_copy)
    assert isinstance(error, ValueError) and f"params/special: is a {kind} (exports hold only regular files)" in str(error)
    with pytest.raises(ValueError, match=f"params/special: is a {kind}"):
        archive(cnn_copy, cnn_copy.parent / "cnn.tar.gz")


def test_fifo_manifest_is_refused_before_it_is_opened(cnn_copy):
    (cnn_copy / "manifest.json").unlink()
    os.mkfifo(cnn_copy / "manifest.json")
    error = _load_in_thread(cnn_copy)
    assert isinstance(error, ValueError) and "manifest.json: is a FIFO, not a regular file" in str(error)


def test_os_error_names_the_export(cnn_copy, monkeypatch):
    target = data_files(cnn_copy)[0]

    def failing_sha256(path):
        if Path(path) == target:
            raise OSError(errno.EIO, "Input/output error", str(path))
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    monkeypatch.setattr(orbax_export, "sha256_file", failing_sha256)
    with pytest.raises(OSError) as caught:
        load("cnn", path=cnn_copy)
    assert caught.value.errno == errno.EIO and caught.value.filename == str(target)
    assert str(caught.value) == f"[Errno 5] cannot load {cnn_copy}: Input/output error: '{target}'"


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
    out = write_export(tmp_path / "x", source, random_variables(source))
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


def test_new_head_too_large_for_memory_is_refused(cnn_export):
    with pytest.raises(ValueError, match=r"^CNN with these options has [\d,]+ parameters \(1254.[\d] GB float32\)"):
        load("cnn", path=cnn_export[0], num_classes=10**8)


# --- non-finite weights: refused wherever weights come in, the leaves named --------------------


def nonfinite_variables(name: str = "cnn") -> dict:
    """Random variables of `name` with 3 NaN and 1 inf in params/head/kernel (cnn: 31360 values)."""
    variables = random_variables(name)
    kernel = variables["params"]["head"]["kernel"]
    kernel.flat[[5, 50, 500]] = np.nan
    kernel.flat[7] = -np.inf
    return variables


NONFINITE = r"non-finite weights \(NaN or inf\) in params/head/kernel \(3 NaN and 1 inf of 31360 values\); refusing them"


def write_unchecked(monkeypatch, write, *args, **kwargs):
    """`write(*args, **kwargs)` with the finiteness check off: how a damaged or hostile file is made."""
    with monkeypatch.context() as m:
        m.setattr(common, "check_finite", lambda variables, what: None, raising=False)  # the writers' check
        return write(*args, **kwargs)


def test_nonfinite_export_is_refused_at_load(tmp_path, monkeypatch):
    out = write_unchecked(monkeypatch, write_export, tmp_path / "nan", "cnn", nonfinite_variables(),
                          metric={"name": "accuracy", "value": 0.99, "split": "test"})
    with pytest.raises(ValueError, match=f"^checkpoint {re.escape(str(out))}: {NONFINITE}$"):
        load("cnn", path=out)
    with pytest.raises(ValueError, match=NONFINITE):  # nor published
        publish(out, "nan", weights_dir=tmp_path / "weights")


def test_nonfinite_archive_is_refused_at_load(tmp_path, monkeypatch, server):
    www, url, _ = server
    out = write_unchecked(monkeypatch, write_export, tmp_path / "nan", "cnn", nonfinite_variables())
    sha = archive(out, www / "nan.tar.gz")
    with pytest.raises(ValueError, match=NONFINITE):
        load("cnn", path=f"{url}/nan.tar.gz", sha256=sha)


def test_nonfinite_variables_are_not_exported(tmp_path):
    with pytest.raises(ValueError, match=f"^variables of 'cnn': {NONFINITE}$"):
        write_export(tmp_path / "nan", "cnn", nonfinite_variables())
    assert not list(tmp_path.iterdir())  # not even a temporary


# --- URLs and the download cache ------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the fixture's www dir, plus hostile endpoints a download must survive."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        hostile = {"/endless": self._endless, "/huge": self._huge, "/trickle": self._trickle, "/stall": self._stall,
                   "/slow_trickle": self._slow_trickle,
                   "/short": self._short, "/loop": self._loop}
        if self.path not in hostile:
            return super().do_GET()
        try:
            hostile[self.path]()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up: what we want
            pass

    # Each endpoint gives up after a while (64 MiB, 10 s) so that a regression fails the
    # test instead of hanging it.
    def _endless(self):  # a body that does not end, without a Content-Length
        self.send_response(200)
        self.end_headers()
        for _ in range(1024):
            self.wfile.write(bytes(1 << 16))

    def _huge(self):  # announces 1 TB
        self.send_response(200)
        self.send_header("Content-Length", str(10**12))
        self.end_headers()
        for _ in range(1024):
            self.wfile.write(bytes(1 << 16))

    def _trickle(self):  # one byte every 50 ms: each read succeeds, the whole takes long
        self.send_response(200)
        self.end_headers()
        for _ in range(200):
            self.wfile.write(b"\0")
            self.wfile.flush()
            time.sleep(0.05)

    def _slow_trickle(self):  # one byte every 0.2 s for up to 2 minutes: a download a signal must interrupt
        self.send_response(200)
        self.end_headers()
        try:
            for _ in range(600):
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:  # the client went away (killed): stop
            pass

    def _stall(self):  # headers, then silence
        self.send_response(200)
        self.end_headers()
        self.wfile.flush()
        time.sleep(5)

    def _short(self):  # announces 1000 bytes, sends 10, hangs up
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(bytes(10))

    def _loop(self):
        self.send_response(302)
        self.send_header("Location", "/loop")
        self.end_headers()


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


# --- hostile downloads: every one ends in seconds, with a one-line error and no temporaries ------


def temporaries(tmp_path) -> list[str]:
    exports_dir = tmp_path / "cache" / "exports"
    return sorted(p.name for p in exports_dir.iterdir() if p.name.startswith((".download-", ".extract-"))) if exports_dir.exists() else []


def _timed_load(path, **kwargs):
    """load("cnn", path=...) -> (exception, seconds); the load must fail."""
    start = time.monotonic()
    with pytest.raises(Exception) as caught:
        load("cnn", path=path, **kwargs)
    return caught.value, time.monotonic() - start


def test_url_404_names_url_and_status(server, tmp_path):
    _, url, _ = server
    error, _ = _timed_load(f"{url}/missing.tar.gz")
    assert type(error) is OSError and str(error) == f"{url}/missing.tar.gz: HTTP 404 File not found"
    assert temporaries(tmp_path) == []


def test_url_cut_off_body_is_a_network_error(server, tmp_path):
    _, url, _ = server
    error, _ = _timed_load(f"{url}/short")
    assert type(error) is OSError and str(error) == f"{url}/short: the connection closed after 10 of 1000 bytes"
    assert temporaries(tmp_path) == []


def test_url_redirect_loop_is_refused(server, tmp_path):
    _, url, _ = server
    error, seconds = _timed_load(f"{url}/loop")
    assert type(error) is OSError and str(error).startswith(f"{url}/loop: HTTP 302 ") and "infinite loop" in str(error)
    assert "\n" not in str(error)
    assert seconds < 10 and temporaries(tmp_path) == []


@pytest.mark.parametrize("endpoint", ["endless", "huge"])  # huge: refused from its Content-Length
def test_url_download_is_capped(server, tmp_path, endpoint):
    _, url, _ = server
    error, seconds = _timed_load(f"{url}/{endpoint}", max_bytes=1 << 20)
    assert type(error) is ValueError and str(error) == (
        f"{url}/{endpoint}: the download is larger than 1048576 bytes (max_bytes=, ZOO_MAX_DOWNLOAD_BYTES); refusing it"
    )
    assert seconds < 10 and temporaries(tmp_path) == []


def test_url_download_cap_from_environment(cnn_export, server, tmp_path, monkeypatch):
    www, url, _ = server
    sha = archive(cnn_export[0], www / "cnn.tar.gz")
    monkeypatch.setenv("ZOO_MAX_DOWNLOAD_BYTES", "1000")
    error, _ = _timed_load(f"{url}/cnn.tar.gz", sha256=sha)
    assert type(error) is ValueError and "larger than 1000 bytes" in str(error)
    monkeypatch.setenv("ZOO_MAX_DOWNLOAD_BYTES", "lots")
    with pytest.raises(ValueError, match="ZOO_MAX_DOWNLOAD_BYTES must be a positive int, got 'lots'"):
        load("cnn", path=f"{url}/cnn.tar.gz")
    monkeypatch.delenv("ZOO_MAX_DOWNLOAD_BYTES")
    assert_same(load("cnn", path=f"{url}/cnn.tar.gz", sha256=sha, max_bytes=1 << 20)[1], cnn_export[1])


def test_max_bytes_argument_is_checked(cnn_export):
    with pytest.raises(ValueError, match="max_bytes= applies to an http"):
        load("cnn", path=cnn_export[0], max_bytes=10)
    with pytest.raises(ValueError, match="max_bytes must be a positive int, got 0"):
        load("cnn", path="http://127.0.0.1:9/x.tar.gz", max_bytes=0)


# trickle: 20 bytes a second, every single read succeeds, so only an overall deadline stops it;
# stall: no byte after the headers, so a single read waits until the socket timeout
@pytest.mark.parametrize("endpoint", ["trickle", "stall"])
def test_url_download_has_an_overall_deadline(server, tmp_path, monkeypatch, endpoint):
    _, url, _ = server
    monkeypatch.setenv("ZOO_DOWNLOAD_TIMEOUT", "1")
    error, seconds = _timed_load(f"{url}/{endpoint}")
    assert type(error) is TimeoutError
    assert str(error) == f"{url}/{endpoint}: the download did not finish within 1 s (ZOO_DOWNLOAD_TIMEOUT)"
    assert 1 <= seconds < 3 and temporaries(tmp_path) == []


def _gzip_bomb(path: Path, header: tarfile.TarInfo, size: int) -> None:
    """A tar.gz whose first member header announces `size` bytes of zeros, truncated at the end.

    Concatenated gzip members of 1 MiB of zeros each: 200 MiB cost ~200 KB and no time to
    build. The last member is cut short, so an extractor that decompressed everything before
    checking its limits would fail on the truncation, not on the limit.
    """
    header.size = size
    zeros = gzip.compress(bytes(1 << 20))
    with open(path, "wb") as f:
        f.write(gzip.compress(header.tobuf(format=tarfile.USTAR_FORMAT)))
        for _ in range(size >> 20):
            f.write(zeros)
        f.write(zeros[:-8])


def _pax_header() -> tarfile.TarInfo:
    info = tarfile.TarInfo("././@PaxHeader")  # tarfile reads a pax header into memory whole
    info.type = tarfile.XHDTYPE
    return info


@pytest.mark.parametrize("header", [tarfile.TarInfo("cnn/params/big"), _pax_header()], ids=["file", "pax_header"])
def test_url_gzip_bomb_is_refused_while_extracting(server, tmp_path, header):
    www, url, _ = server
    _gzip_bomb(www / "bomb.tar.gz", header, 200 << 20)
    assert (www / "bomb.tar.gz").stat().st_size < 1 << 20
    error, seconds = _timed_load(f"{url}/bomb.tar.gz", max_bytes=8 << 20)
    assert type(error) is ValueError
    assert str(error) == f"{url}/bomb.tar.gz: the archive expands to more than {8 << 20} bytes; refusing it"
    assert seconds < 10 and temporaries(tmp_path) == []


def _many_files(path: Path, count: int, size: int) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for i in range(count):
            info = tarfile.TarInfo(f"cnn/f{i:04d}")
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))


def test_extraction_stops_at_the_byte_cap(tmp_path):
    _many_files(tmp_path / "many.tar.gz", 64, 1 << 20)  # 64 MiB of files
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ValueError, match=f"many: the archive expands to more than {8 << 20} bytes"):
        extract_archive(tmp_path / "many.tar.gz", dest, "many", max_bytes=8 << 20)
    written = [p.stat().st_size for p in dest.rglob("*") if p.is_file()]
    assert 0 < sum(written) <= 8 << 20  # stopped while extracting, not after


def test_extraction_stops_at_the_member_cap(tmp_path):
    _many_files(tmp_path / "many.tar.gz", 50, 1)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ValueError, match="many: the archive has more than 5 members; refusing it"):
        extract_archive(tmp_path / "many.tar.gz", dest, "many", max_bytes=1 << 20, max_members=5)
    assert len([p for p in dest.rglob("*") if p.is_file()]) == 5  # the sixth was never written


def _zip_bytes() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("cnn/manifest.json", "{}")
    return out.getvalue()


@pytest.mark.parametrize(
    "body,cause",
    [
        (_zip_bytes(), "Not a gzipped file (b'PK')"),
        (b"<html>Sign in to continue</html>", "Not a gzipped file (b'<h')"),
        (b"", "empty file"),
        (gzip.compress(b"plain text, not a tar archive " * 40), "invalid header"),
        ("truncated", "truncated: Compressed file ended before the end-of-stream marker was reached"),
    ],
    ids=["zip", "html", "empty", "gzip_not_tar", "truncated"],
)
def test_url_bad_archive_is_one_line_naming_url_and_cause(cnn_export, server, tmp_path, body, cause):
    www, url, _ = server
    if body == "truncated":
        archive(cnn_export[0], www / "full.tar.gz")
        body = (www / "full.tar.gz").read_bytes()[:-100]
    (www / "bad.tar.gz").write_bytes(body)
    error, _ = _timed_load(f"{url}/bad.tar.gz")
    assert type(error) is ValueError and str(error) == f"{url}/bad.tar.gz: not a valid tar.gz archive ({cause})"
    assert temporaries(tmp_path) == []


_CHILD_LOAD = "import sys, zoo; print('loading', flush=True); zoo.load('cnn', path=sys.argv[1])"


def _child_downloading(url: str, tmp_path: Path) -> subprocess.Popen:
    """A child process stuck downloading `url` (a trickle), once its temporary file exists."""
    # SIG_DFL for SIGINT: an xdist worker ignores it, children inherit that, and Python then
    # installs no KeyboardInterrupt handler (Ctrl-C would do nothing).
    child = subprocess.Popen([sys.executable, "-c", _CHILD_LOAD, url], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not temporaries(tmp_path):
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the child never started downloading"
        time.sleep(0.05)
    time.sleep(0.3)  # well inside the read loop
    return child


def test_ctrl_c_mid_download_leaves_no_temporaries(server, tmp_path):
    _, url, _ = server
    child = _child_downloading(f"{url}/slow_trickle", tmp_path)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=30)
    assert b"KeyboardInterrupt" in err
    assert temporaries(tmp_path) == []  # removed by the child itself, on its way out


def test_sigterm_mid_download_is_cleaned_up_by_the_next_download(server, tmp_path):
    _, url, _ = server
    child = _child_downloading(f"{url}/slow_trickle", tmp_path)
    child.send_signal(signal.SIGTERM)
    child.communicate(timeout=30)
    assert child.returncode == -signal.SIGTERM
    (left,) = temporaries(tmp_path)  # SIGTERM runs no Python cleanup...
    assert left.startswith(f".download-{socket.gethostname()}-{child.pid}-")
    with pytest.raises(OSError, match="HTTP 404"):  # ...the next download, in any process, does
        load("cnn", path=f"{url}/missing.tar.gz")
    assert temporaries(tmp_path) == []


def test_only_dead_temporaries_are_removed(server, tmp_path):
    _, url, _ = server
    exports_dir = tmp_path / "cache" / "exports"
    exports_dir.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    host = socket.gethostname()
    keep = [f".download-{host}-{os.getpid()}-abc123", f".download-another-host-{dead}-abc123"]  # alive; not ours to judge
    gone = [f".download-{host}-{dead}-abc123", f".extract-{host}-{dead}-x_y9"]
    for name in keep + gone[:1]:
        (exports_dir / name).write_bytes(b"partial")
    (exports_dir / gone[1]).mkdir()
    (exports_dir / gone[1] / "cnn").mkdir()
    with pytest.raises(OSError, match="HTTP 404"):
        load("cnn", path=f"{url}/missing.tar.gz")
    assert temporaries(tmp_path) == sorted(keep)


@pytest.mark.parametrize("case", ["404", "zip", "eio"])
def test_cli_eval_path_errors_are_one_line_and_exit_2(cnn_copy, server, capsys, monkeypatch, case):
    from train.cli import main

    www, url, _ = server
    monkeypatch.setenv("ZOO_COMPILATION_CACHE", "off")
    monkeypatch.delenv("ZOO_DEBUG", raising=False)
    (www / "x.zip").write_bytes(_zip_bytes())
    path = {"404": f"{url}/missing.tar.gz", "zip": f"{url}/x.zip", "eio": str(cnn_copy)}[case]
    if case == "eio":
        def failing_sha256(p):
            raise OSError(errno.EIO, "Input/output error", str(p))

        monkeypatch.setattr(orbax_export, "sha256_file", failing_sha256)
    assert main(["eval", "cnn", "--path", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and (err.startswith(f"error: {path}: ") or err.startswith(f"error: [Errno 5] cannot load {path}: "))


# --- shipped weights -------------------------------------------------------------------------


@pytest.fixture
def shipped(cnn_export, tmp_path, monkeypatch):
    """A fake package weights dir (ZOO_WEIGHTS_DIR) with cnn.mnist shipped; registry restored after."""
    entry = publish(cnn_export[0], "mnist")
    yield tmp_path / "weights", entry
    monkeypatch.undo()
    register_pretrained()


def test_shipped_weights_load(shipped, cnn_export):
    weights, entry = shipped
    package = json.loads((weights / "manifest.json").read_text())
    assert package == {"format": 1, "weights": {"cnn.mnist": entry}}
    assert entry["dir"] == "cnn.mnist" and entry["metric"]["name"] == "accuracy" and entry["size_bytes"] > 0
    assert available("cnn") == {"mnist": entry} and available() == {"cnn": {"mnist": entry}}
    assert available("mlp") == {}

    model, variables = load("cnn", pretrained="mnist")
    assert_same(variables, cnn_export[1])

    register_pretrained()
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


def test_publish_refuses_duplicates(shipped, cnn_export):
    with pytest.raises(FileExistsError, match="cnn.mnist is already shipped"):
        publish(cnn_export[0], "mnist")
    with pytest.raises(ValueError, match="tag must be"):
        publish(cnn_export[0], "mn.ist")


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
        register_pretrained()
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


def test_manifest_layout_is_unchanged(monkeypatch, tmp_path):
    """zoo writes the exact JSON layout (bytes) of the shipped index and export manifests."""
    monkeypatch.delenv("ZOO_WEIGHTS_DIR")
    weights = pretrained.weights_dir()
    entries = [e for tags in available().values() for e in tags.values()]
    assert entries, "no shipped weights to compare with"
    for path in [weights / "manifest.json"] + [weights / e["dir"] / "manifest.json" for e in entries]:
        write_json_atomic(tmp_path / "again.json", json.loads(path.read_text()))
        assert (tmp_path / "again.json").read_bytes() == path.read_bytes(), path


@pytest.mark.parametrize(
    "entry,message",
    [
        ({"dir": "../cnn.mnist", "manifest_sha256": "0" * 64}, "entry 'cnn.mnist' must be a dict whose 'dir' is 'cnn.mnist'"),
        ({"dir": "cnn.mnist", "manifest_sha256": "abc"}, "sha256 must be 64 hex digits, got 'abc'"),
    ],
)
def test_weights_index_entries_are_checked(tmp_path, entry, message):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "manifest.json").write_text(json.dumps({"format": 1, "weights": {"cnn.mnist": entry}}))
    with pytest.raises(ValueError, match=re.escape(message)):
        available()


# --- import cost -----------------------------------------------------------------------------


def test_import_zoo_and_pretrained_is_light():
    code = (
        "import sys, zoo, zoo.formats, zoo.weights_index, zoo.pretrained; zoo.pretrained.register_pretrained(); zoo.pretrained.available(); "
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('orbax', 'tensorflow', 'tensorflow_datasets', 'optax', 'torch', 'train')]; "
        "print(heavy); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --- unclear errors made clear (issue 22) -----------------------------------------------------


def _tar_of(path: Path, members: list[tuple[str, str]]) -> None:
    """A tar.gz of (name, "file" | "dir") members, in order."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = 2
                tar.addfile(info, io.BytesIO(b"{}"))


@pytest.mark.parametrize("members", [
    [("x", "file"), ("x", "dir")],
    [("x", "dir"), ("x", "file")],
    [("x", "file"), ("x/y", "file")],
    [("x/y", "file"), ("x", "file")],
])
def test_url_archive_with_a_file_and_a_directory_of_one_name_names_the_url(server, tmp_path, members):
    www, url, _ = server
    _tar_of(www / "clash.tar.gz", members)
    with pytest.raises(ValueError) as caught:
        load("cnn", path=f"{url}/clash.tar.gz")
    assert str(caught.value).startswith(f"{url}/clash.tar.gz: refusing archive member ")
    assert "a file and a directory of the same name" in str(caught.value)
    assert temporaries(tmp_path) == []


def test_url_scheme_is_case_insensitive(cnn_export, server):
    www, url, _ = server
    archive(cnn_export[0], www / "cnn.tar.gz")
    shouting = url.replace("http://", "HTTP://") + "/cnn.tar.gz"
    assert_same(load("cnn", path=shouting)[1], cnn_export[1])


def test_manifest_overrides_that_are_not_an_object_are_named(cnn_copy):
    rewrite_manifest(cnn_copy, model_overrides="hello")
    rehash = hashlib.sha256((cnn_copy / "manifest.json").read_bytes()).hexdigest()  # a consistent export otherwise
    with pytest.raises(ValueError, match=r"'model_overrides' must be a JSON object of model fields, got str 'hello'"):
        load("cnn", path=cnn_copy, sha256=rehash)


# --- overwrite replaces only an earlier export (never user files, the source or the cwd) ---------


def _tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", ["user_folder", "export_with_user_file", "file", "symlink", "cwd", "parent_of_cwd"])
def test_overwrite_never_replaces_anything_but_an_export(cnn_copy, tmp_path, monkeypatch, case):
    target = tmp_path / "target"
    if case == "user_folder":  # e.g. a run directory or a folder of photos
        target.mkdir()
        (target / "notes.txt").write_text("mine")
        (target / "checkpoints").mkdir()
        (target / "checkpoints" / "7").write_text("a run's step")
    elif case == "export_with_user_file":
        target = cnn_copy
        (target / "notes.txt").write_text("mine")
    elif case == "file":
        target.write_text("mine")
    elif case == "symlink":
        target.symlink_to(cnn_copy, target_is_directory=True)
    elif case in ("cwd", "parent_of_cwd"):
        target = cnn_copy  # a real export; still never the directory the user stands in
        monkeypatch.chdir(cnn_copy if case == "cwd" else (cnn_copy / "params"))
    before = {p: _tree(p) for p in (tmp_path, cnn_copy)} if target.is_dir() or target.is_symlink() else None
    with pytest.raises(FileExistsError, match=r"refusing to overwrite .*overwrite replaces only an earlier zoo export"):
        write_export(target, "cnn", random_variables("cnn", seed=1), overwrite=True)
    if before is not None:
        assert {p: _tree(p) for p in before} == before
    else:
        assert target.read_text() == "mine"
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_overwrite_swaps_in_the_new_export_and_keeps_the_old_if_the_swap_fails(cnn_copy, cnn_export, monkeypatch):
    new = random_variables("cnn", seed=2)
    monkeypatch.setattr(orbax_export, "_swap", lambda tmp, final: False)  # the rename fallback
    real_rename = os.rename

    def failing_rename(src, dst):
        if Path(src).name.startswith(".cnn.tmp-"):
            raise OSError(errno.EIO, "simulated failure moving the new export in")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError, match="simulated failure"):
        write_export(cnn_copy, "cnn", new, overwrite=True)
    monkeypatch.setattr(os, "rename", real_rename)
    assert_same(load("cnn", path=cnn_copy)[1], cnn_export[1])  # the old export, whole
    assert [p.name for p in cnn_copy.parent.iterdir()] == ["cnn"]
    write_export(cnn_copy, "cnn", new, overwrite=True)
    assert_same(load("cnn", path=cnn_copy)[1], new)
    assert [p.name for p in cnn_copy.parent.iterdir()] == ["cnn"]


def test_one_word_for_pretrained_weights_and_the_old_names_still_work():
    from zoo import cards, registry, weights_index

    assert zoo.register is registry.register  # a user model needs no private module
    assert zoo.pretrained_inputs is cards.pretrained_inputs and zoo.shipped_inputs is zoo.pretrained_inputs
    assert pretrained.register_pretrained and pretrained.weights_dir is weights_index.weights_dir
    assert zoo.available is pretrained.available  # pretrained tags: zoo.load(name, pretrained=TAG)


# ---------------------------------------------------------------- class names with --init-from


def _classes_export(tmp_path, names):
    from zoo.formats.orbax_export import write_export

    model = zoo.create("mlp", hidden=(8,), num_classes=len(names))
    variables = zoo.init(model, jax.random.key(1))
    write_export(tmp_path / "src", "mlp", variables, model_overrides={"hidden": [8], "num_classes": len(names)},
                 class_names=names)
    return variables


@pytest.mark.parametrize("ours,says", [
    (["dog", "cat"], "the same classes in another order"),
    (["car", "bus"], "as many classes, but new: car, bus"),  # the bug: a silent wrong mapping
    (["cat", "dog", "fox"], "new: fox"),
])
def test_init_from_says_when_the_class_names_differ_and_reinitialises_the_head(tmp_path, ours, says):
    from train.finetune import init_from

    loaded = _classes_export(tmp_path, ["cat", "dog"])
    model = zoo.create("mlp", hidden=(8,), num_classes=len(ours))
    fresh = zoo.init(model, jax.random.key(7))
    lines = []
    merged = init_from(str(tmp_path / "src"), model, fresh, log=lines.append, class_names=ours)
    line = next(line for line in lines if "classes" in line)
    assert says in line and "(cat, dog)" in line and "head is re-initialised" in line
    np.testing.assert_array_equal(merged["params"]["head"]["kernel"], fresh["params"]["head"]["kernel"])
    np.testing.assert_array_equal(merged["params"]["dense_0"]["kernel"], loaded["params"]["dense_0"]["kernel"])


def test_init_from_with_the_same_class_names_keeps_the_head(tmp_path):
    from train.finetune import init_from

    loaded = _classes_export(tmp_path, ["cat", "dog"])
    model = zoo.create("mlp", hidden=(8,), num_classes=2)
    lines = []
    merged = init_from(str(tmp_path / "src"), model, zoo.init(model, jax.random.key(7)), log=lines.append,
                       class_names=["cat", "dog"])
    assert not any("classes" in line for line in lines)
    np.testing.assert_array_equal(merged["params"]["head"]["kernel"], loaded["params"]["head"]["kernel"])


def test_class_names_are_in_the_manifest_and_read_back_from_each_format(tmp_path):
    from zoo import formats

    model = zoo.create("mlp", hidden=(8,), num_classes=2)
    variables = zoo.init(model, jax.random.key(0))
    fields = {"model_overrides": {"hidden": [8], "num_classes": 2}, "class_names": ["cat", "dog"]}
    formats.write("orbax", tmp_path / "dir", "mlp", variables, **fields)
    formats.write("safetensors", tmp_path / "w.safetensors", "mlp", variables, **fields)
    for path in (tmp_path / "dir", tmp_path / "w.safetensors"):
        assert pretrained.read_manifest("mlp", path=path)["class_names"] == ["cat", "dog"]
    with pytest.raises(ValueError, match="distinct non-empty strings"):
        formats.write("orbax", tmp_path / "bad", "mlp", variables, **{**fields, "class_names": ["cat", "cat"]})
