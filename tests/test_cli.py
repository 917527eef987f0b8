"""End-to-end: the real `zoo` CLI in subprocesses, on tiny configs, with MNIST/tiny_shakespeare
prepared offline once per session (conftest.tfds_dir) and a shared compilation cache (cli_env).

Subprocesses see 4 fake CPU devices (cli_env): the CNN runs are data-parallel over 4 devices;
the sample-writing runs use --num-devices 1 (less compile time; parallelism is covered elsewhere).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import zoo

REPO = Path(__file__).resolve().parents[1]


def run_zoo(*args, env, timeout: int = 300, console_script: bool = False) -> subprocess.CompletedProcess:
    """Runs `zoo ARGS` (or `python -m train.cli ARGS`); a hang fails after `timeout` seconds."""
    exe = [str(Path(sys.executable).with_name("zoo"))] if console_script else [sys.executable, "-m", "train.cli"]
    return subprocess.run([*exe, *map(str, args)], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    return result


# accuracy the 1-epoch tiny CNN run (cnn_run, 8 steps) exceeds: it reaches 0.53 (val) / 0.54 (test)
# here; a constant predictor gets ~0.11, chance 0.1
CNN_MIN_ACCURACY = 0.3


def tiny(data_dir, *extra) -> list:
    """512 training images, 256 held out, batches of 64 (16 per device), constant LR."""
    return ["--data-dir", data_dir, "--train-limit", 512, "--val-size", 256, "--batch-size", 64, "--schedule", "constant", *extra]


def grid_cells(png: Path, n: int, size: int = 28) -> np.ndarray:
    """The first `n` images of a train.report.save_grid PNG (8 per row, 2-pixel borders), in [0, 1]."""
    from PIL import Image

    with Image.open(png) as image:
        pixels = np.asarray(image, np.float32) / 255.0
    cells = [divmod(i, 8) for i in range(n)]
    return np.stack([pixels[2 + r * (size + 2) : 2 + r * (size + 2) + size, 2 + c * (size + 2) : 2 + c * (size + 2) + size]
                     for r, c in cells])


def correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image Pearson correlation of two stacks of images (NaN for a constant image)."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def read_metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _restored(workdir: Path, which: str = "latest"):
    """(step, model, variables) of a run's checkpoint."""
    from train.evaluate import restore_workdir

    cfg, model, variables, step = restore_workdir(workdir, which)
    return step, model, variables


def restored_params(workdir: Path, which: str = "latest"):
    from train.evaluate import restore_workdir

    cfg, model, variables, step = restore_workdir(workdir, which)
    return step, jax.device_get(variables)


# ---------------------------------------------------------------- list


def test_list_prints_every_model(cli_env):
    out = ok(run_zoo("list", env=cli_env, console_script=True)).stdout
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["name", "task"]
    names = [line.split()[0] for line in lines[1:]]
    assert names == zoo.list_models()
    for name in names:
        row = next(line for line in lines if line.split()[0] == name)
        assert zoo.get_spec(name).task in row and f"{zoo.get_spec(name).num_params:,}" in row


def test_list_input_column_shows_the_input_shape(cli_env):
    out = ok(run_zoo("list", env=cli_env)).stdout
    row = next(line for line in out.splitlines() if line.startswith("cnn "))
    assert "28, 28, 1" in row


# ---------------------------------------------------------------- train, resume, eval (cnn)


@pytest.fixture(scope="module")
def cnn_run(tfds_dir, cli_env, tmp_path_factory):
    """One epoch of the CNN (8 steps of 64 over 4 devices), then the test split (--test): the
    README's main command. (`python -m train.cli`, not the console script: that imports the
    installed checkout, which need not be the one under test.)"""
    workdir = tmp_path_factory.mktemp("cnn_run")
    result = ok(run_zoo("train", "cnn", "--workdir", workdir, "--epochs", 1, "--test", *tiny(tfds_dir), env=cli_env))
    return workdir, result


def test_train_test_flag_evaluates_the_final_model_on_the_test_split(cnn_run):
    _, result = cnn_run
    out = result.stdout
    assert "cnn on mnist/test (10000 examples" in out, out
    accuracy = float(next(line for line in out.splitlines() if line.startswith("  accuracy: ")).split()[-1])
    assert accuracy > CNN_MIN_ACCURACY, out
    assert out.index("epoch 1 step 8") < out.index("cnn on mnist/test")


def test_nonfinite_loss_exits_3_and_keeps_the_last_good_checkpoint(cnn_run, tfds_dir, cli_env, tmp_path):
    """Resuming the finished run with Adam at lr 1e30 diverges: exit 3, one error line naming the
    last good checkpoint, whose weights are the finished run's, untouched."""
    workdir = tmp_path / "run"
    shutil.copytree(cnn_run[0], workdir)
    result = run_zoo("train", "cnn", "--workdir", workdir, "--epochs", 2, *tiny(tfds_dir, "--lr", "1e30"), env=cli_env)
    assert result.returncode == 3, f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    assert result.stderr.startswith("error: ") and "non-finite" in result.stderr, result.stderr
    assert "Last good checkpoint: step 8 " in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    step, params = restored_params(workdir)
    _, original = restored_params(cnn_run[0])
    assert step == 8
    jax.tree.map(np.testing.assert_array_equal, params, original)


def test_train_writes_metrics_config_tensorboard_checkpoints(cnn_run, tfds_dir):
    workdir, result = cnn_run
    assert "epoch 1 step 8" in result.stdout
    record = read_metrics(workdir)[0]
    assert record["epoch"] == 1 and record["step"] == 8
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1", "epoch_s", "compile_s"):
        assert np.isfinite(record[key]), key
    # 8 Adam steps on 512 digits: far above the ~0.1 of a constant or random predictor
    assert record["val_accuracy"] > CNN_MIN_ACCURACY, record
    assert record["train_loss"] < np.log(10), record  # below a uniform prediction's loss
    config = json.loads((workdir / "config.json").read_text())
    assert config["model"] == "cnn" and config["epochs"] == 1 and config["batch_size"] == 64
    assert config["train_limit"] == 512 and config["data_dir"] == str(tfds_dir)
    assert list((workdir / "tb").glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert (workdir / "checkpoints" / "8").is_dir()
    assert (workdir / "command.txt").read_text().startswith("zoo train cnn")


def test_eval_prints_accuracy_and_per_class_table(cnn_run, cli_env):
    workdir, _ = cnn_run
    out = ok(run_zoo("eval", "cnn", "--workdir", workdir, env=cli_env)).stdout
    assert "cnn on mnist/test (10000 examples" in out
    assert "  accuracy: " in out
    assert "class  precision  recall  f1      support" in out
    assert len([line for line in out.splitlines() if line.strip()[:1].isdigit() and line.count(".") >= 3]) == 10
    report = json.loads((workdir / "eval_test.json").read_text())
    metrics = report["metrics"]
    assert metrics["count"] == 10000 and report["step"] == 8
    assert metrics["accuracy"] > CNN_MIN_ACCURACY, metrics["accuracy"]
    # per-class recall: most digits are recognised (a constant predictor has nine zeros)
    assert sum(r["recall"] > 0.2 for r in metrics["per_class"].values()) >= 5, metrics["per_class"]
    assert sum(r["support"] for r in metrics["per_class"].values()) == 10000
    assert np.asarray(metrics["confusion"]).sum() == 10000


def test_export_writes_the_best_checkpoint_and_publishes_it(cnn_run, cli_env, tmp_path):
    workdir, _ = cnn_run
    out, weights = tmp_path / "export", tmp_path / "weights"
    env = dict(cli_env, ZOO_WEIGHTS_DIR=str(weights))
    printed = ok(run_zoo("export", "cnn", out, "--workdir", workdir, "--publish", "tiny", env=env)).stdout
    step, best = restored_params(workdir, "best")
    assert f"exported cnn step {step} (accuracy=" in printed and f"to {out}" in printed
    assert "published as pretrained cnn.tiny" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "cnn" and manifest["dataset"] == "mnist"
    assert manifest["metric"]["name"] == "accuracy" and manifest["metric"]["step"] == step
    assert manifest["metric"]["split"] == "test" and manifest["metric"]["count"] == 10000
    assert manifest["command"].startswith("zoo train cnn --epochs 1 --test")
    # the recipe, not this machine's paths; device and wall time recorded at export (model cards show them)
    assert "--workdir" not in manifest["command"] and "--data-dir" not in manifest["command"]
    assert str(workdir) not in json.dumps(manifest) and str(tmp_path) not in json.dumps(manifest)
    epoch_s = [r["epoch_s"] for r in read_metrics(workdir) if r["step"] <= step]
    assert manifest["training"]["device"].startswith("4 x cpu (cpu), jax ")
    assert manifest["training"]["wall_s"] == round(sum(epoch_s), 1) > 0
    card = ok(run_zoo("info", "cnn.tiny", env=env)).stdout
    assert f"training device: {manifest['training']['device']}\n" in card
    assert f"training wall time: {manifest['training']['wall_s']:g} s\n" in card
    assert f"  recorded: by zoo export from the run: device at its start, wall time = its epoch times up to step {step}\n" in card
    assert f"recipe: {manifest['command']}\n" in card
    assert (weights / "cnn.tiny" / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()
    _, exported = zoo.load("cnn", path=out)
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(exported)[0], jax.tree.leaves(best)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
    # an existing export is not replaced without --overwrite: one line, exit 2
    again = run_zoo("export", "cnn", out, "--workdir", workdir, env=env)
    assert again.returncode == 2 and again.stderr == f"error: {out} already exists (pass overwrite=True to replace it)\n"


def test_resume_equals_uninterrupted_run(cnn_run, tfds_dir, cli_env, tmp_path):
    """Rerunning the finished 1-epoch run with --epochs 2 resumes from its checkpoint and ends
    bit-identical to a fresh 2-epoch run (same data order, same step keys, same program).

    The schedule is constant here on purpose: a cosine schedule's horizon is epochs * steps,
    so extending --epochs changes the learning rates of the steps already taken."""
    workdir = tmp_path / "resumed"
    shutil.copytree(cnn_run[0], workdir)  # leaves the fixture's run as it was for the other tests
    resumed = ok(run_zoo("train", "cnn", "--workdir", workdir, "--epochs", 2, *tiny(tfds_dir), env=cli_env))
    assert "resumed from step 8 (epoch 1)" in resumed.stdout
    assert "epoch 2 step 16" in resumed.stdout
    fresh_dir = tmp_path / "fresh"
    fresh = ok(run_zoo("train", "cnn", "--workdir", fresh_dir, "--epochs", 2, *tiny(tfds_dir), env=cli_env))
    assert "resumed" not in fresh.stdout

    step_a, a = restored_params(workdir)
    step_b, b = restored_params(fresh_dir)
    assert step_a == step_b == 16
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
    # The logged epoch-2 metrics are identical too.
    resumed_rec, fresh_rec = read_metrics(workdir)[-1], read_metrics(fresh_dir)[-1]
    for key in ("epoch", "step", "train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        assert resumed_rec[key] == fresh_rec[key], key


# ---------------------------------------------------------------- other tasks


AE_MIN_CORRELATION = 0.5


def test_autoencoder_writes_reconstruction_png(tfds_dir, cli_env, tmp_path):
    from PIL import Image

    # 64 steps at lr 1e-2: enough for the small autoencoder's reconstructions to resemble their
    # inputs (median correlation 0.75 here; after 4 steps it is still negative)
    ok(run_zoo("train", "autoencoder", "--workdir", tmp_path, "--epochs", 2,
               *tiny(tfds_dir, "--train-limit", 2048, "--num-devices", 1, "--lr", "1e-2"), "--set", "features=[8,16]", env=cli_env))
    pngs = sorted((tmp_path / "samples").glob("*.png"))
    assert [p.name for p in pngs] == ["recon_epoch001.png", "recon_epoch002.png"]
    with Image.open(pngs[-1]) as image:
        assert image.mode == "L" and image.size == (8 * 30 + 2, 8 * 30 + 2)  # 32 originals, then their reconstructions
    cells = grid_cells(pngs[-1], 64)
    originals, recon = cells[:32], cells[32:]
    # the originals are the first validation images: the validation split is the last
    # --val-size (256) examples of MNIST's train split, whatever --train-limit says
    from train import data

    expected = data.load_split("mnist", "train", data_dir=tfds_dir)["image"][-256:-224, ..., 0] / 255.0
    np.testing.assert_allclose(originals, expected, atol=1 / 255 + 1e-6)
    # reconstructions resemble their own originals (an all-black or all-alike grid fails)
    corr = correlations(originals, recon)
    assert np.median(corr) > AE_MIN_CORRELATION and np.all(np.isfinite(corr)), corr
    assert np.median(corr) > np.median(correlations(originals, np.roll(recon, 1, axis=0))) + 0.1, "reconstructions do not match their own inputs"
    assert "train_mse" in read_metrics(tmp_path)[0]


def test_dcgan_writes_sample_png(tfds_dir, cli_env, tmp_path):
    from PIL import Image

    ok(run_zoo("train", "dcgan", "--workdir", tmp_path, "--epochs", 1, *tiny(tfds_dir, "--train-limit", 256, "--num-devices", 1),
               "--set", "latent_dim=16", "--set", "g_features=[32,16]", "--set", "d_features=[16,32]", env=cli_env))
    pngs = sorted((tmp_path / "samples").glob("*.png"))
    assert [p.name for p in pngs] == ["samples_epoch001.png"]
    with Image.open(pngs[0]) as image:
        assert image.size == (8 * 30 + 2, 8 * 30 + 2)  # 64 samples in an 8x8 grid
    record = read_metrics(tmp_path)[0]
    assert np.isfinite(record["train_d_loss"]) and np.isfinite(record["val_g_loss"])
    # the grid's pixels are the trained generator's images of the run's fixed noise (seed 0)
    step, model, variables = _restored(tmp_path)
    z = jax.random.normal(jax.random.key(0 + 1_000_003), (64, model.latent_dim))
    expected = np.asarray(model.apply(variables, z, method="generate"))[..., 0]
    np.testing.assert_allclose(grid_cells(pngs[0], 64), expected, atol=1 / 255 + 1e-3)
    assert expected.std(axis=0).mean() > 1e-3  # 64 different images (4 steps in: near-grey, not yet digits)

    # zoo sample: NUM images of noise from --seed, as a grid at --out
    out = tmp_path / "sampled.png"
    printed = ok(run_zoo("sample", "dcgan", "--workdir", tmp_path, "--num", 16, "--seed", 2, "--out", out, env=cli_env)).stdout
    assert printed.strip() == f"saved {out}"
    with Image.open(out) as image:
        assert image.size == (8 * 30 + 2, 2 * 30 + 2)
    z = jax.random.normal(jax.random.key(2), (16, model.latent_dim))
    np.testing.assert_allclose(grid_cells(out, 16), np.asarray(model.apply(variables, z, method="generate"))[..., 0],
                               atol=1 / 255 + 1e-3)


def test_char_lstm_prints_a_sample(tfds_dir, cli_env, tmp_path):
    out = ok(run_zoo("train", "char_lstm", "--workdir", tmp_path, "--epochs", 1, "--data-dir", tfds_dir,
                     "--train-limit", 64, "--seq-len", 32, "--batch-size", 16, "--num-devices", 1,
                     "--set", "hidden=32", "--set", "embed_dim=16", env=cli_env)).stdout
    assert "sample: ROMEO:" in out
    assert (tmp_path / "samples" / "text_epoch001.txt").read_text().startswith("ROMEO:")
    # zoo sample: the prompt, then LENGTH characters drawn from the trained model with --seed
    from train.tasks import sample_text

    printed = ok(run_zoo("sample", "char_lstm", "--workdir", tmp_path, "--prompt", "JULIET:", "--length", 40, "--seed", 3,
                         env=cli_env)).stdout
    _, model, variables = _restored(tmp_path)
    expected = sample_text(model, variables, "JULIET:", 40, jax.random.key(3), 0.8)
    assert printed == expected + "\n"
    assert len(expected) == len("JULIET:") + 40


# ---------------------------------------------------------------- bad input


def test_unknown_model_suggests_close_names(cli_env, tmp_path):
    result = run_zoo("train", "cnnn", "--workdir", tmp_path / "w", env=cli_env)
    assert result.returncode != 0
    assert "unknown model 'cnnn'" in result.stderr and "Did you mean 'cnn'" in result.stderr
    result = run_zoo("train", "nosuchmodel", "--workdir", tmp_path / "w2", env=cli_env)
    assert result.returncode != 0
    assert "unknown model 'nosuchmodel'" in result.stderr and "Available: autoencoder" in result.stderr


def test_unknown_model_leaves_no_workdir(cli_env, tmp_path):
    result = run_zoo("train", "nosuchmodel", "--workdir", tmp_path / "w", env=cli_env)
    assert result.returncode != 0
    assert not (tmp_path / "w").exists()


def test_batch_not_divisible_by_devices_is_a_clear_error(tfds_dir, cli_env, tmp_path):
    result = run_zoo("train", "cnn", "--workdir", tmp_path, *tiny(tfds_dir, "--batch-size", 6, "--num-devices", 4), env=cli_env)
    assert result.returncode == 2
    assert "error: batch size 6 is not divisible by the 4 devices; use a multiple of 4" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


# ---------------------------------------------------------------- prepare, compilation cache


def test_prepare_writes_the_dataset_and_its_array_cache(tfds_dir, cli_env, tmp_path):
    """`zoo prepare tiny_shakespeare` (offline, from the vendored files) prepares every split into
    --data-dir; what it wrote loads as the session's prepared copy does."""
    from train import data

    out = ok(run_zoo("prepare", "tiny_shakespeare", "--data-dir", tmp_path, env=cli_env)).stdout
    for split in data.SPLITS["tiny_shakespeare"]:
        line = next(line for line in out.splitlines() if line.startswith(f"tiny_shakespeare/{split}: "))
        cache = Path(line.split(" -> ")[1].rsplit(" (", 1)[0])
        assert cache.is_file() and tmp_path in cache.parents, line
        got, want = data.load_split("tiny_shakespeare", split, data_dir=tmp_path), data.load_split("tiny_shakespeare", split, data_dir=tfds_dir)
        assert got.keys() == want.keys()
        for key in got:
            np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.parametrize("setting", ["dir", "off"])
def test_compilation_cache_switch(tfds_dir, cli_env, tmp_path, setting):
    """ZOO_COMPILATION_CACHE=DIR fills DIR with compiled programs; =off writes none (not even to the
    default ~/.cache/zoo/jax)."""
    cache, home = tmp_path / "cache", tmp_path / "home"
    home.mkdir()
    env = dict(cli_env, HOME=str(home), ZOO_COMPILATION_CACHE=str(cache) if setting == "dir" else "off")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    ok(run_zoo("train", "mlp_small", "--workdir", tmp_path / "run", "--max-steps", 2, "--num-devices", 1, "--sample-every", 0,
               *tiny(tfds_dir, "--train-limit", 64, "--val-size", 64, "--batch-size", 32), "--set", "hidden=[8]", env=env))
    written = [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
    if setting == "dir":
        assert len(written) >= 2, written  # at least the train step and the evaluator
    else:
        assert not cache.exists() and not (home / ".cache" / "zoo").exists()


# ---------------------------------------------------------------- failing writes: one line, nothing lost


WRITE_LIMIT = 20_000  # bytes per file: the configs and logs fit, no checkpoint or export does


def run_zoo_with_write_limit(*args, env) -> subprocess.CompletedProcess:
    """`zoo ARGS` whose writes past WRITE_LIMIT bytes in one file fail in the OS (EFBIG), the way
    a full disk fails them (ENOSPC) through the same Orbax/TensorStore and safetensors paths,
    without needing a small filesystem. The compilation cache is off: it would hit the limit too."""
    launcher = ("import os, resource, signal, sys; "
                "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "  # the write fails instead of killing the process
                f"resource.setrlimit(resource.RLIMIT_FSIZE, ({WRITE_LIMIT}, {WRITE_LIMIT})); "
                "os.execv(sys.executable, [sys.executable, '-m', 'train.cli', *sys.argv[1:]])")
    return subprocess.run([sys.executable, "-c", launcher, *map(str, args)], env={**env, "ZOO_COMPILATION_CACHE": "off"},
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr[-3000:]
    assert result.stderr.startswith("error: ")
    return result.stderr


def test_a_train_fit_run_records_its_device_for_export_and_the_card(cli, tfds_dir, tmp_path, monkeypatch):
    """train.fit(workdir=) records the device as zoo train does (zoo export puts it in the manifest,
    the card shows it); a resumed run keeps the device it started on."""
    import train

    workdir = tmp_path / "run"
    fit = dict(data_dir=str(tfds_dir), train_limit=128, val_size=64, batch_size=32, num_devices=1, sample_every=0,
               model_overrides={"hidden": [16]}, workdir=workdir, log=lambda *_: None)
    train.fit("mlp_small", "mnist", epochs=1, **fit)
    device = (workdir / "device.txt").read_text().strip()
    assert device.startswith("1 x cpu (cpu), jax ")  # the run's device, not all of JAX's four
    monkeypatch.setenv("ZOO_WEIGHTS_DIR", str(tmp_path / "weights"))
    code, _, err = cli("export", "mlp_small", tmp_path / "export", "--workdir", workdir, "--publish", "fit")
    assert code == 0, err
    assert json.loads((tmp_path / "export" / "manifest.json").read_text())["training"]["device"] == device
    code, card, err = cli("info", "mlp_small.fit")
    assert code == 0 and f"training device: {device}\n" in card, err
    (workdir / "device.txt").write_text("the first start's device\n")
    train.fit("mlp_small", "mnist", epochs=2, **fit)  # resumes
    assert (workdir / "device.txt").read_text() == "the first start's device\n"


@pytest.mark.parametrize("fmt,name", [("orbax", "out"), ("safetensors", "out.safetensors")])
def test_export_that_cannot_be_written_is_one_line_and_leaves_nothing(cli_env, tmp_path, fmt, name):
    result = run_zoo_with_write_limit("export", "cnn", tmp_path / name, "--pretrained", "mnist", "--format", fmt, env=cli_env)
    line = one_error_line(result)
    assert f"cannot write {'the export ' if fmt == 'orbax' else ''}{tmp_path / name}: File too large" in line
    assert list(tmp_path.iterdir()) == []  # no partial export, no temporary


# a resumed training run in a subprocess (~20 s)
@pytest.mark.slow
def test_checkpoint_that_cannot_be_written_is_one_line_and_keeps_the_earlier_one(cnn_run, tfds_dir, cli_env, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(cnn_run[0], workdir)
    step, before = restored_params(workdir)
    result = run_zoo_with_write_limit("train", "cnn", "--workdir", workdir, "--epochs", 2, *tiny(tfds_dir), env=cli_env)
    line = one_error_line(result)
    assert f"cannot save checkpoint step 16 in {workdir / 'checkpoints'}: File too large" in line
    assert "epoch 2 step 16" in result.stdout  # it trained, then failed to save
    again, after = restored_params(workdir)
    assert again == step == 8
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------- errors outside the commands


def test_dataset_unavailable_is_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # no TFDS and no array cache: offline
    code, _, err = cli("prepare", "mnist", "--data-dir", tmp_path)
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err


def test_ctrl_c_during_start_up_exits_130_in_one_line(cli, monkeypatch):
    import train.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train.cli, "_setup_jax", interrupted)
    assert cli("list", "cnn")[0] == 0  # list does not set up JAX
    assert cli("predict", "cnn", "x.png", "--pretrained", "mnist") == (130, "", "error: interrupted\n")
    monkeypatch.setenv("ZOO_DEBUG", "1")
    with pytest.raises(KeyboardInterrupt):
        cli("predict", "cnn", "x.png", "--pretrained", "mnist")


def test_a_bug_still_shows_its_traceback(cli, monkeypatch):
    def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(zoo, "list_models", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        cli("list")


class _Exited(BaseException):
    pass


def test_a_joined_process_reports_its_error_then_exits_at_once(capsys, monkeypatch):
    """In a multi-process run each error path reports (its one line, or a bug's traceback) and
    ends the process by os._exit with its code: a normal exit would wait at JAX's shutdown
    barrier (tests/test_multihost_cli.py times it with two real processes)."""
    from train import parallel
    from train.cli import main

    def exit_now(code):
        raise _Exited(code)

    def raising(exc):
        def run(*args, **kwargs):
            raise exc
        return run

    monkeypatch.setattr(parallel, "_joined", True)
    monkeypatch.setattr(os, "_exit", exit_now)
    cases = [(ValueError("bad value"), 2, "error: bad value\n"), (KeyboardInterrupt(), 130, "error: interrupted\n"),
             (RuntimeError("a bug"), 1, "RuntimeError: a bug\n")]
    for exc, code, printed in cases:
        monkeypatch.setattr(zoo, "list_models", raising(exc))
        with pytest.raises(_Exited) as exited:
            main(["list"])
        assert exited.value.args == (code,)
        err = capsys.readouterr().err
        assert err.endswith(printed) and ("Traceback" in err) == (code == 1), err

def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", ["the_workdir", "a_parent_of_the_workdir", "the_current_directory", "a_user_folder"])
def test_export_overwrite_never_deletes_the_run_or_user_files(cnn_run, cli, tmp_path, monkeypatch, case):
    """`--overwrite` replaces only an earlier export: OUT = the source run, a folder holding it,
    `.` or any other folder is refused with one line, before any work, and nothing is touched."""
    workdir = Path(shutil.copytree(cnn_run[0], tmp_path / "project" / "run"))
    (tmp_path / "project" / "notes.txt").write_text("mine")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(b"not an export")
    out = {"the_workdir": workdir, "a_parent_of_the_workdir": workdir.parent, "the_current_directory": ".",
           "a_user_folder": photos}[case]
    monkeypatch.chdir(photos)
    before = _files(tmp_path)
    code, printed, err = cli("export", "cnn", out, "--workdir", workdir, "--overwrite", "--quality-n", 0)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert ("source being exported" if case.endswith("workdir") else "refusing to overwrite") in err
    assert _files(tmp_path) == before


def test_eval_and_export_never_touch_the_runs_files(cnn_run, cli, tmp_path):
    """Readers of a workdir (zoo eval, zoo export) see committed steps only and leave the run as
    it was: a save the run has in flight (a `*.orbax-checkpoint-tmp` dir) is not removed (removing
    it crashed the live run); eval adds only its report."""
    workdir = Path(shutil.copytree(cnn_run[0], tmp_path / "run"))
    in_flight = workdir / "checkpoints" / "99.orbax-checkpoint-tmp" / "state"
    in_flight.mkdir(parents=True)
    (in_flight / "_sharding").write_text("being written by the live run")
    before = _files(workdir)
    code, printed, err = cli("eval", "cnn", "--workdir", workdir, "--split", "validation", "--out", tmp_path / "e.json")
    assert code == 0, err
    assert "cnn on mnist/validation (256 examples" in printed and "step 99" not in printed
    code, printed, err = cli("export", "cnn", tmp_path / "export", "--workdir", workdir, "--which", "latest",
                             "--split", "validation", "--quality-n", 0)
    assert code == 0, err
    assert _files(workdir) == before


@pytest.mark.slow  # a training process and several zoo eval processes side by side (~1-2 min)
def test_eval_beside_a_live_run_never_disturbs_it(tfds_dir, cli_env, tmp_path):
    """`zoo eval` run again and again on the workdir of a run that saves a checkpoint every step
    (so a save is nearly always in flight): the run finishes cleanly, each eval succeeds or
    prints one line, and the run leaves no temporary checkpoint dir behind."""
    import time

    workdir = tmp_path / "live"
    train = subprocess.Popen(
        [sys.executable, "-m", "train.cli", "train", "mlp_small", "--workdir", str(workdir), "--data-dir", str(tfds_dir),
         "--epochs", "30", "--train-limit", "256", "--val-size", "64", "--batch-size", "32", "--num-devices", "1",
         "--checkpoint-steps", "1", "--keep-checkpoints", "2", "--sample-every", "0", "--set", "hidden=[16]"],
        env=cli_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reads = []
    try:
        deadline = time.monotonic() + 240
        while train.poll() is None and not any((workdir / "checkpoints").glob("[0-9]*")):
            assert time.monotonic() < deadline, "the run wrote no checkpoint"
            time.sleep(0.5)
        while train.poll() is None and time.monotonic() < deadline:
            reads.append(run_zoo("eval", "mlp_small", "--workdir", workdir, "--split", "validation", "--which", "latest",
                                 "--out", tmp_path / f"eval{len(reads)}.json", env=cli_env, timeout=120))
        out, err = train.communicate(timeout=300)
    finally:
        if train.poll() is None:
            train.kill()
            train.wait()
    assert train.returncode == 0, f"the run was disturbed: exit {train.returncode}\n{out[-2000:]}\n{err[-3000:]}"
    assert "epoch 30 step 240" in out
    assert reads, "no eval ran while the run trained"
    for r in reads:
        assert r.returncode == 0 or (r.returncode == 2 and r.stderr.count("\n") == 1
                                     and r.stderr.startswith("error: ")), r.stderr[-3000:]
    assert sum(r.returncode == 0 for r in reads) >= 1, [r.stderr for r in reads]
    assert not list((workdir / "checkpoints").glob("*.orbax-checkpoint-tmp*"))
    assert _restored(workdir)[0] == 240


# ---------------------------------------------------------------- files that are not what they claim


def test_init_from_a_fifo_is_refused_promptly(tfds_dir, cli_env, tmp_path):
    """A FIFO blocks its reader until a writer comes: --init-from refuses it from its kind. (A
    subprocess: safetensors' native open holds the GIL while it blocks; the timeout fails a hang.)"""
    import os

    fifo = tmp_path / "weights.safetensors"
    os.mkfifo(fifo)
    result = run_zoo("train", "cnn", "--workdir", tmp_path / "run", "--epochs", 1, "--init-from", fifo,
                     *tiny(tfds_dir), env=cli_env, timeout=180)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr == f"error: {fifo}: is a FIFO, not a regular file (expected a .safetensors file)\n"


def test_init_from_nonfinite_weights_names_the_leaf(cli, tfds_dir, tmp_path, monkeypatch):
    """NaN weights used to start training and fail later, blaming the learning rate."""
    from zoo.formats import common
    from zoo.formats.safetensors_export import write_safetensors

    model = zoo.create("cnn")
    variables = jax.tree.map(np.array, zoo.init(model, jax.random.key(0)))
    variables["params"]["head"]["bias"][[1, 4]] = np.inf
    with monkeypatch.context() as m:  # how a damaged file is made: the writer refuses NaN and inf
        m.setattr(common, "check_finite", lambda variables, what: None, raising=False)
        source = write_safetensors(tmp_path / "inf.safetensors", "cnn", variables)
    code, out, err = cli("train", "cnn", "--workdir", tmp_path / "run", "--epochs", 1, "--init-from", source,
                         *tiny(tfds_dir))
    assert code == 2 and "epoch 1" not in out, out
    assert err == (f"error: {source}: non-finite weights (NaN or inf) in params/head/bias (2 inf of 10 values); "
                   "refusing them\n"), err


def test_export_and_eval_refuse_a_checkpoint_with_nonfinite_weights(cli, tfds_dir, tmp_path):
    """A checkpoint whose weights hold NaN (damaged, or written by other code) is not scored or
    exported as if it were fine."""
    from tests.fixtures import tiny_fit_cfg
    from train.checkpoint import Checkpointer
    from train.loop import fit

    workdir = tmp_path / "run"
    fit(tiny_fit_cfg(tfds_dir), workdir, log=lambda line: None)
    with Checkpointer(workdir / "checkpoints") as ckpt:
        step = ckpt.latest_step()
        tree, meta = ckpt.restore(None, step)
        tree = jax.tree.map(np.array, tree)
        tree["params"]["dense_0"]["kernel"][0, :3] = np.nan
        ckpt.save(step + 1, tree, meta)
    expected = (f"error: checkpoint step {step + 1} in {workdir}: non-finite weights (NaN or inf) in "
                f"params/dense_0/kernel (3 NaN of {784 * 16} values); refusing them\n")
    code, out, err = cli("export", "mlp_small", tmp_path / "out", "--workdir", workdir, "--which", "latest")
    assert code == 2 and err == expected and not out, err
    assert not (tmp_path / "out").exists()
    code, out, err = cli("eval", "mlp_small", "--workdir", workdir, "--which", "latest")
    assert code == 2 and err == expected and not out, err


def test_run_config_that_is_a_fifo_is_refused_promptly(tmp_path):
    import os

    from tests.fixtures import returns_promptly
    from train.evaluate import read_config

    os.mkfifo(tmp_path / "config.json")
    error = returns_promptly(read_config, tmp_path, fifos=[tmp_path / "config.json"])
    assert isinstance(error, ValueError) and "config.json: is a FIFO, not a regular file" in str(error), error


# ---------------------------------------------------------------- what travels with a run on own data


def test_char_lstm_vocab_travels_through_the_run_export_load_and_sample(cli, tmp_path):
    """A char_lstm trained on a 10-character vocabulary: its per-epoch sample, export, zoo.load and
    zoo sample all read that vocabulary (the issue: Shakespeare's decoded them into blank lines)."""
    import train
    from zoo.formats.orbax_export import write_export

    vocab = "\nabcdefgh!"
    ids = (np.arange(64 * 7 + 1) % len(vocab)).astype(np.int32)  # "\nabcdefgh!" repeated, as token ids
    x, y = ids[:-1].reshape(64, 7), ids[1:].reshape(64, 7)
    overrides = {"vocab": vocab, "embed_dim": 4, "hidden": 8, "num_layers": 1}
    result = train.fit("char_lstm", {"x": x, "y": y}, model_overrides=overrides, epochs=1, batch_size=16,
                       workdir=tmp_path / "run", log=lambda line: None)
    assert result.model.vocab == vocab
    written = (tmp_path / "run" / "samples" / "text_epoch001.txt").read_text()
    assert len(written) > 200 and set(written) <= set(vocab)  # the model's characters, none blank

    write_export(tmp_path / "export", "char_lstm", result.variables, model_overrides=result.config.model_overrides)
    model, _ = zoo.load("char_lstm", path=tmp_path / "export")
    assert (model.vocab, model.vocab_size) == (vocab, 10)
    code, out, err = cli("sample", "char_lstm", "--path", tmp_path / "export", "--prompt", "abc", "--length", 60)
    assert code == 0, err
    assert out.startswith("abc") and len(out.rstrip("\n")) >= 40 and set(out) <= set(vocab)
    code, out, _ = cli("sample", "char_lstm", "--path", tmp_path / "export", "--length", 5)  # default prompt: vocab[0]
    assert code == 0 and set(out) <= set(vocab)
    code, _, err = cli("sample", "char_lstm", "--path", tmp_path / "export", "--prompt", "ROMEO:")
    assert code == 2 and "character 'R' at position 0 is not in the vocabulary" in err
    code, out, _ = cli("info", "char_lstm", "--path", tmp_path / "export")
    assert code == 0 and "vocab '\\nabcdefgh!'" in out and "classes: '\\n' a b c d e f g h !" in out


def test_classes_record_their_names_and_class_names_must_fit_the_head():
    from train.config import resolve

    assert resolve("mlp", {"classes": [3, 5]}).class_names == ["3", "5"]  # recorded in config.json
    assert resolve("mlp", {"classes": [3, 5], "class_names": ["three", "five"]}).class_names == ["three", "five"]
    with pytest.raises(ValueError, match="--class-names a,b,c: 3 names for 2 classes"):
        resolve("mlp", {"classes": [3, 5], "class_names": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="no num_classes head"):
        resolve("multitask", {"class_names": ["a", "b"]})


@pytest.mark.slow  # two short trainings, an export and five evaluations/predictions: ~35 s here
def test_class_names_travel_through_eval_export_card_predict_and_init_from(cli, tfds_dir, tmp_path):
    from PIL import Image

    run, out = tmp_path / "run", tmp_path / "export"
    small = ["--data-dir", tfds_dir, "--train-limit", 256, "--val-size", 64, "--batch-size", 32, "--epochs", 1]
    code, _, err = cli("train", "mlp_small", "--workdir", run, "--classes", "3,5", "--class-names", "three,five", *small)
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["class_names"] == ["three", "five"]
    code, printed, err = cli("eval", "mlp_small", "--workdir", run)
    assert code == 0 and "0 'three'" in printed and "1 'five'" in printed, err
    code, _, err = cli("export", "mlp_small", out, "--workdir", run)
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["class_names"] == ["three", "five"]
    assert zoo.pretrained.read_manifest("mlp_small", path=out)["class_names"] == ["three", "five"]
    code, card, _ = cli("info", "mlp_small", "--path", out)
    assert code == 0 and "classes: three five" in card
    code, printed, _ = cli("eval", "mlp_small", "--path", out)
    assert code == 0 and "0 'three'" in printed
    picture = tmp_path / "digit.png"
    Image.new("L", (28, 28), 255).save(picture)
    for source in (["--path", out], ["--workdir", run]):
        code, printed, err = cli("predict", "mlp_small", *source, picture)
        assert code == 0 and "three (" in printed and "five (" in printed and "'3'" not in printed, err
    code, printed, err = cli("train", "mlp_small", "--workdir", tmp_path / "tuned", "--init-from", out,
                             "--classes", "3,5", "--class-names", "cat,dog", "--max-steps", 1, *small)
    assert code == 0, err
    assert "as many classes, but new: cat, dog; the output head is re-initialised" in printed
