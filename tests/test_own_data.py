"""Your own data through the engine: `--data` on zoo train/eval/sweep and train.fit, image folders
streamed with Grain (same metrics and steps as in memory, exact kill -9 resume), and `--data-dir`
refusing a folder of the user's files.

Image folders are tiny folders of real PNGs, opened by `train.sources.open_data`
(train/sources/images.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def write_folder(root: Path, per_class: int = 40, names=("cat", "dog"), seed: int = 0) -> Path:
    """`per_class` 28x28 grey PNGs per class subfolder; class c has a bright bar at its own place."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(names):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = rng.integers(0, 60, (28, 28), dtype=np.uint8)
            a[4 * c + 2: 4 * c + 8, :] += 180
            Image.fromarray(a).save(root / name / f"{i:04d}.png")
    return root


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "pets")


TINY = ("--epochs", "1", "--batch-size", "16", "--val-size", "16", "--data-workers", "0", "--eval-batch-size", "12")


def test_train_and_eval_on_an_image_folder(cli, folder, tmp_path):
    workdir = tmp_path / "run"
    code, out, err = cli("train", "cnn", "--data", folder, *TINY, "--workdir", workdir)
    assert code == 0, err
    assert f"training cnn on {folder}" in out
    config = json.loads((workdir / "config.json").read_text())
    assert config["data"] == str(folder.absolute())
    assert config["class_names"] == ["cat", "dog"]
    assert config["model_overrides"]["num_classes"] == 2  # the head follows the folder's classes
    code, out, err = cli("eval", "cnn", "--workdir", workdir)
    assert code == 0, err
    assert f"cnn on {folder}/test (16 examples" in out and "accuracy:" in out

    other = write_folder(tmp_path / "other", per_class=10, names=("cat", "cow"))
    code, out, err = cli("eval", "cnn", "--workdir", workdir, "--data", other)
    assert code == 2 and err.count("\n") == 1
    assert "cat, cow are not the cat, dog the model was trained on" in err


def test_resuming_on_other_data_is_refused(cli, folder, tmp_path):
    workdir = tmp_path / "run"
    assert cli("train", "cnn", "--data", folder, *TINY, "--workdir", workdir)[0] == 0
    other = write_folder(tmp_path / "other", per_class=20)
    code, out, err = cli("train", "cnn", "--data", other, *TINY, "--epochs", "2", "--workdir", workdir)
    assert code == 2 and err.count("\n") == 1
    assert f"the workdir holds a run with data='{folder}'" in err
    write_folder(folder, per_class=45)  # 5 more images of each class: another order
    code, out, err = cli("train", "cnn", "--data", folder, *TINY, "--epochs", "2", "--workdir", workdir)
    assert code == 2 and err.count("\n") == 1
    assert "read 64 training images (epoch 1, step 0) but --data now gives 74" in err


def test_train_fit_takes_a_folder_path_and_classes_subset_the_names(folder):
    import train

    result = train.fit("cnn", str(folder), max_steps=2, batch_size=16, val_size=16, data_workers=0, log=lambda m: None)
    assert result.config.class_names == ["cat", "dog"]
    assert result.variables["params"]["head"]["kernel"].shape[-1] == 2
    result = train.fit("cnn", folder, classes=[1, 0], max_steps=2, batch_size=16, val_size=16, data_workers=0,
                       log=lambda m: None)
    assert result.config.class_names == ["dog", "cat"]


def _splits(folder, image_shape=(28, 28, 1), workers=0):
    """The folder as a streamed Splits and as the same examples in memory."""
    from train import sources, tasks
    from train.sources.stream import StreamedSplit

    ud = sources.open_data(folder, image_shape=image_shape, val_size=24)
    task = tasks.get("classification")
    streamed = [StreamedSplit.of(ud.splits[s], task.view, workers=workers) for s in ("train", "validation")]
    in_memory = [task.view({"image": np.stack([src[i]["image"] for i in range(len(src))]), "label": src.labels})
                 for src in (ud.splits["train"], ud.splits["validation"])]
    return task, tasks.Splits(streamed[0], streamed[1], streamed[1]), tasks.Splits(in_memory[0], in_memory[1], in_memory[1])


def test_streamed_and_in_memory_evaluation_give_the_same_metrics(folder):
    import zoo
    from train.evaluate import evaluate_arrays

    task, streamed, in_memory = _splits(folder)
    model = zoo.create("cnn", num_classes=2)
    variables = zoo.init(model, jax.random.key(3))
    a = evaluate_arrays(task, model, variables, streamed.val, batch_size=10)  # 24 = 10 + 10 + 4 (padded)
    b = evaluate_arrays(task, model, variables, in_memory.val, batch_size=10)
    assert a["count"] == b["count"] == 24
    floats = {k for k, v in b.items() if isinstance(v, float)}
    assert {k: a[k] for k in floats} == pytest.approx({k: b[k] for k in floats}, rel=1e-6)
    assert (a["confusion"], a["per_class"]) == (b["confusion"], b["per_class"])


def test_streamed_training_takes_the_in_memory_steps(folder, tmp_path):
    from train import loop
    from train.config import resolve

    task, streamed, in_memory = _splits(folder)
    cfg = resolve("cnn", {"epochs": 2, "batch_size": 16, "eval_batch_size": 10, "model_overrides": {"num_classes": 2},
                          "data_workers": 0})
    quiet = lambda m: None  # noqa: E731
    a = loop.fit(cfg, tmp_path / "streamed", task=task, splits=streamed, log=quiet)
    b = loop.fit(cfg, tmp_path / "memory", task=task, splits=in_memory, log=quiet)
    assert int(a.state.step) == int(b.state.step) == 2 * (56 // 16)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6),
                 a.state.params, b.state.params)
    assert a.record["val_accuracy"] == pytest.approx(b.record["val_accuracy"])
    from train.checkpoint import Checkpointer

    with Checkpointer(tmp_path / "streamed" / "checkpoints", read_only=True) as ckpt:
        _, meta = ckpt.restore(None, ckpt.latest_step())
    assert {k: meta["loader"][k] for k in ("epoch", "position", "examples")} == {"epoch": 2, "position": 0, "examples": 56}


def test_a_run_reads_its_training_data_through_one_pipeline(folder, tmp_path, monkeypatch):
    import dataclasses

    from train import loop
    from train.config import resolve
    from train.sources.stream import StreamedSplit

    calls = []
    real = StreamedSplit.batches

    def spy(self, positions):  # records who asked, then reads in this process (no worker start-up here)
        calls.append((self.workers, positions.copy()))
        return real(dataclasses.replace(self, workers=0), positions)

    monkeypatch.setattr(StreamedSplit, "batches", spy)
    task, streamed, _ = _splits(folder, workers=1)
    settings = {"epochs": 3, "batch_size": 16, "eval_batch_size": 10, "model_overrides": {"num_classes": 2}}
    order = [loop.epoch_batches(resolve("cnn", settings), 0, e, 56, 3) for e in range(3)]  # 3 steps per epoch
    quiet = lambda m: None  # noqa: E731
    loop.fit(resolve("cnn", {**settings, "max_steps": 4}), tmp_path / "run", task=task, splits=streamed, log=quiet)
    loop.fit(resolve("cnn", settings), tmp_path / "run", task=task, splits=streamed, log=quiet)  # resumed at step 4
    training = [rows for workers, rows in calls if workers]
    assert len(training) == 2  # one per run, whatever its epochs
    np.testing.assert_array_equal(training[0], np.concatenate(order)[:4])
    np.testing.assert_array_equal(training[1], np.concatenate(order)[4:])  # mid epoch 2 to the end of epoch 3
    evaluations = [rows for workers, rows in calls if not workers]
    assert len(evaluations) == 2 + 2  # epochs 1 and 2 (at max_steps), then 2 and 3: all in this process


def test_a_long_run_reads_its_order_in_windows_of_epochs(folder, monkeypatch):
    from train.sources import stream

    class Strategy:
        def run_batches(self, state, batches):
            return state + [batches["index"]], None

    orders = [np.random.default_rng(e).permutation(56)[:48].reshape(3, 16) for e in range(4)]
    _, streamed, _ = _splits(folder)
    monkeypatch.setattr(stream, "MAX_PIPELINE_POSITIONS", 2 * 48)  # this epoch's rest and one more
    built = []
    monkeypatch.setattr(stream.StreamedSplit, "batches", lambda self, rows: built.append(len(rows)) or iter(
        {"index": r} for r in rows))
    feeder, seen = stream.Feeder(Strategy(), streamed.train, orders.__getitem__, total_steps=11), []
    for epoch, order in enumerate(orders):
        feeder.start_epoch(epoch, order)
        for pos in range(0, 3 if epoch < 3 else 2, 2):  # chunks of 2 steps (the last epoch: 2 of its 3)
            seen, _ = feeder.run_chunk(seen, None, order[pos: pos + 2][: 11 - 3 * epoch - pos])
    np.testing.assert_array_equal(np.concatenate(seen), np.concatenate(orders)[:11])
    assert built == [6, 5]  # epochs 1-2, then 3-4 up to step 11


def _assert_quiet(err: str) -> None:
    for word in ("leaked", "Warning", "Traceback"):
        assert word not in err, err


def test_a_streamed_run_exits_without_warnings(cli_env, tmp_path):
    folder = write_folder(tmp_path / "pets", per_class=24)
    args = ("train", "cnn", "--data", folder, "--epochs", "2", "--batch-size", "16", "--val-size", "16",
            "--data-workers", "1", "--set", "features=[4,8]")
    env = {**cli_env, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(_zoo(*args, "--workdir", tmp_path / "run"), env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "epoch 2 step 4" in done.stdout
    _assert_quiet(done.stderr)
    bad = folder / "dog" / "0007.png"
    bad.write_bytes(bad.read_bytes()[:100])  # its header reads, its pixels do not: fails in a worker
    failed = subprocess.run(_zoo(*args, "--workdir", tmp_path / "failed"), env=env, capture_output=True, text=True,
                            timeout=300)
    assert failed.returncode == 2
    assert failed.stderr == f"error: {bad}: cannot read this image (image file is truncated)\n"


@pytest.mark.slow  # a real `zoo train` with Grain workers, interrupted with SIGINT and SIGTERM
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_streamed_run_exits_without_warnings(cli_env, tmp_path, signum):
    folder = write_folder(tmp_path / "pets", per_class=96)
    workdir = tmp_path / "run"
    args = ("train", "cnn", "--data", folder, "--epochs", "50", "--batch-size", "16", "--val-size", "32",
            "--data-workers", "1", "--checkpoint-steps", "2", "--workdir", workdir)
    proc = subprocess.Popen(_zoo(*args), env={**cli_env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not _steps(workdir) and time.monotonic() < deadline:  # training, its workers running
        time.sleep(0.05)
    os.killpg(proc.pid, signum)  # as Ctrl-C does: the run and its workers
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == (130 if signum == signal.SIGINT else 0), err
    assert f"preempted: {signal.Signals(signum).name}: saved step" in out
    _assert_quiet(err)


def test_data_dir_holding_other_files_is_refused(cli, tmp_path):
    from train import data

    pets = write_folder(tmp_path / "pets", per_class=2)
    before = sorted(p.relative_to(pets) for p in pets.rglob("*"))
    code, out, err = cli("prepare", "mnist", "--data-dir", pets)
    assert code == 2 and err.count("\n") == 1
    assert f"use --data {pets}" in err and "'cat'" in err
    assert sorted(p.relative_to(pets) for p in pets.rglob("*")) == before  # nothing prepared among the images
    tfds_like = tmp_path / "tfds"
    for d in ("mnist/3.0.1", "fashion_mnist/incomplete.AB12_3.0.1", "zoo_arrays/mnist", "downloads"):
        (tfds_like / d).mkdir(parents=True)
    data.check_data_dir(tfds_like)  # TFDS's layout and zoo's cache are a data dir
    data.check_data_dir(tmp_path / "missing")


# ---------------------------------------------------------------- kill -9 on the Grain path

def _zoo(*args) -> list[str]:
    return [sys.executable, "-m", "train.cli", *map(str, args)]


def _steps(workdir: Path) -> list[int]:
    ckpt = workdir / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.exists() else []


def _final_params(workdir: Path):
    from train.checkpoint import Checkpointer

    with Checkpointer(workdir / "checkpoints", read_only=True) as ckpt:
        restored, _ = ckpt.restore(None, ckpt.latest_step())
    return restored["params"]


@pytest.mark.slow  # three real `zoo train` processes with Grain workers, one killed with SIGKILL
def test_kill_9_mid_epoch_resumes_a_streamed_run_exactly(cli_env, tmp_path):
    folder = write_folder(tmp_path / "pets", per_class=96)
    args = ("train", "cnn", "--data", folder, "--epochs", "2", "--batch-size", "16", "--val-size", "32",
            "--data-workers", "1", "--checkpoint-steps", "2", "--log-every", "1", "--eval-batch-size", "16")
    env = {**cli_env, "PYTHONPATH": str(ROOT)}
    whole = tmp_path / "whole"
    done = subprocess.run(_zoo(*args, "--workdir", whole), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_zoo(*args, "--workdir", killed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not [s for s in _steps(killed) if 2 <= s < 10] and time.monotonic() < deadline:  # mid epoch 1 (10 steps)
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its Grain workers
    proc.wait()
    assert [s for s in _steps(killed) if s < 10], "no mid-epoch checkpoint before the kill"
    resumed = subprocess.run(_zoo(*args, "--workdir", killed), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step" in resumed.stdout
    a, b = _final_params(whole), _final_params(killed)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


# ---------------------------------------------------------------- every layout, end to end


def _image_layout(tmp_path: Path, layout: str) -> Path:
    """`layout` of the cat/dog images: one folder, train/val/test folders, or an .npz with names."""
    if layout == "folder":
        return write_folder(tmp_path / "pets")
    if layout == "split_folders":
        for split, n, seed in (("train", 40, 0), ("val", 8, 1), ("test", 8, 2)):
            write_folder(tmp_path / "pets" / split, per_class=n, seed=seed)
        return tmp_path / "pets"
    from PIL import Image

    files = sorted(write_folder(tmp_path / "png").rglob("*.png"))
    images = np.stack([np.asarray(Image.open(f)) for f in files])
    labels = np.array([0 if f.parent.name == "cat" else 1 for f in files])
    np.savez(tmp_path / "pets.npz", image=images, label=labels, class_names=np.array(["cat", "dog"]))
    return tmp_path / "pets.npz"


# the folder layout runs by default; the other two are the same flow through other readers
@pytest.mark.parametrize("layout", ["folder", pytest.param("split_folders", marks=pytest.mark.slow),
                                    pytest.param("npz", marks=pytest.mark.slow)])
def test_each_image_layout_trains_evaluates_exports_loads_and_predicts_with_its_names(cli, tmp_path, layout):
    import zoo
    from zoo.pretrained import read_manifest

    data, workdir, export = _image_layout(tmp_path, layout), tmp_path / "run", tmp_path / "exp"
    code, out, err = cli("train", "cnn", "--data", data, *TINY, "--workdir", workdir, "--set", "features=[4,8]")
    assert code == 0, err
    code, out, err = cli("eval", "cnn", "--workdir", workdir)
    assert code == 0, err
    assert "'cat'" in out and "'dog'" in out  # the per-class table names the classes
    assert cli("export", "cnn", export, "--workdir", workdir)[0] == 0
    model, _ = zoo.load("cnn", path=export)
    manifest = read_manifest("cnn", path=export)
    assert model.num_classes == 2 and manifest["class_names"] == ["cat", "dog"]
    code, card, err = cli("info", "cnn", "--path", export)
    assert code == 0, err
    assert "classes: cat dog" in card and f"dataset: own data ({data.name})" in card
    assert str(data) not in card and "LeCun" not in card  # the data's name, not its place; no MNIST source
    picture = next((tmp_path / ("png" if layout == "npz" else "pets")).rglob("dog/*.png"))
    for source in (("--path", export), ("--workdir", workdir)):
        code, out, err = cli("predict", "cnn", picture, *source)
        assert code == 0, err
        assert out.split(": ", 1)[1].split()[0] in ("cat", "dog"), out
    # a dark-on-light picture is fed as the folder's images were, not inverted to MNIST's convention
    from PIL import Image

    from train import predict

    assert predict.trained_on_own_data(predict.provenance("cnn", path=export))
    assert predict.trained_on_own_data(predict.provenance("cnn", workdir=workdir))
    assert not predict.trained_on_own_data(predict.provenance("cnn", pretrained="mnist"))
    # the one record names the classes too, alike from the export's manifest and the run's config
    assert predict.provenance("cnn", path=export).class_names == predict.provenance("cnn", workdir=workdir).class_names

    paper = np.full((28, 28), 250, np.uint8)
    paper[10:16, :] = 20
    Image.fromarray(paper).save(tmp_path / "paper.png")
    for source in (("--path", export), ("--workdir", workdir)):
        as_is = cli("predict", "cnn", tmp_path / "paper.png", "--no-invert", *source)
        assert cli("predict", "cnn", tmp_path / "paper.png", *source) == as_is


def test_a_text_file_trains_and_its_vocabulary_reaches_export_load_and_sample(cli, tmp_path):
    import zoo

    text = tmp_path / "song.txt"
    text.write_text("la di da, la di do.\n" * 200)
    workdir, export = tmp_path / "run", tmp_path / "exp"
    tiny = ("--set", "hidden=16", "--set", "embed_dim=8", "--set", "num_layers=1", "--seq-len", "16")
    code, out, err = cli("train", "char_lstm", "--data", text, "--epochs", "1", "--batch-size", "8", *tiny,
                         "--workdir", workdir)
    assert code == 0, err
    vocab = "".join(sorted(set(text.read_text())))
    assert json.loads((workdir / "config.json").read_text())["model_overrides"]["vocab"] == vocab
    assert cli("export", "char_lstm", export, "--workdir", workdir)[0] == 0
    model, _ = zoo.load("char_lstm", path=export)
    assert model.vocab == vocab and model.vocab_size == len(vocab)
    code, card, err = cli("info", "char_lstm", "--path", export)
    assert code == 0 and "dataset: own data (song.txt)" in card, err
    code, out, err = cli("sample", "char_lstm", "--path", export, "--prompt", "la ", "--length", "40")
    assert code == 0, err
    assert out.strip() and set(out.strip()) <= set(vocab)
    code, out, err = cli("sample", "char_lstm", "--path", export, "--prompt", "LA")
    assert code == 2 and "'L'" in err  # a character outside the text's vocabulary


@pytest.mark.slow  # two whole trials: the default suite's own-data flow is the folder test above
def test_a_sweep_trains_each_trial_on_the_folder(cli, folder, tmp_path):
    """`zoo sweep --data`: every trial opens the folder and records its classes."""
    pytest.importorskip("optuna")
    workdir = tmp_path / "sweep"
    code, out, err = cli("sweep", "cnn", "--param", "lr=choice:0.001,0.003", "--sampler", "grid", "--trials", "2",
                         "--data", folder, *TINY, "--set", "features=[4,8]", "--workdir", workdir)
    assert code == 0, err
    configs = sorted(workdir.rglob("config.json"))
    assert len(configs) == 2
    for path in configs:
        config = json.loads(path.read_text())
        assert config["data"] == str(folder) and config["class_names"] == ["cat", "dog"]
        assert config["model_overrides"]["num_classes"] == 2
    code, out, err = cli("sweep", "cnn", "--param", "lr=choice:0.001,0.003", "--population", "2", "--data", folder,
                         "--workdir", tmp_path / "pop")
    assert code == 2 and err.count("\n") == 1 and "--data" in err
