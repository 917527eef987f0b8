"""Generative quality measures (train/gen_metrics.py), their task hooks and `zoo eval` output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg

import zoo
from tests.fixtures import digit_images
from train import gen_metrics, tasks


def _reference_frechet(a, b):
    """The textbook formula with a general matrix square root (as FID implementations write it)."""
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = scipy.linalg.sqrtm(sa @ sb).real
    return mu @ mu + np.trace(sa + sb - 2 * root)


def test_frechet_matches_the_textbook_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(300, 6)) * 2.0 + 0.5
    assert gen_metrics.frechet_distance(a, b) == pytest.approx(_reference_frechet(a, b), rel=1e-8)


@pytest.mark.parametrize("n, m", [(5, 400), (12, 9), (300, 7)])
def test_frechet_with_fewer_samples_than_features_matches_the_textbook_formula(n, m):
    """Fewer rows than features on either side: the (N, M) singular-value route gives the
    textbook value (rank-deficient covariances included)."""
    rng = np.random.default_rng(n)
    a = rng.normal(size=(n, 10)) @ rng.normal(size=(10, 10))
    b = rng.normal(size=(m, 10)) * 1.5 - 0.2
    assert gen_metrics.frechet_distance(a, b) == pytest.approx(_reference_frechet(a, b), rel=1e-6)


def test_frechet_routes_agree_at_the_crossover():
    """D-space eigendecompositions (N, M >= D) and the sample-space SVD (one side < D) agree."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(60, 40)), rng.normal(size=(60, 40)) + 0.3  # full-rank covariances
    full = gen_metrics.frechet_distance(a, b)  # N = M > D: the D-space route
    zeros = np.zeros((60, 30))
    padded = gen_metrics.frechet_distance(np.hstack([a, zeros]), np.hstack([b, zeros]))
    assert padded == pytest.approx(full, rel=1e-9)  # D = 70 > N: the sample-space route, same value


def test_frechet_of_a_sample_with_itself_is_zero_and_a_shift_adds_its_square():
    a = np.random.default_rng(1).normal(size=(200, 5))
    assert gen_metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    shift = np.array([1.0, -2.0, 0.0, 0.5, 0.0])
    assert gen_metrics.frechet_distance(a, a + shift) == pytest.approx(shift @ shift, rel=1e-9)


def test_frechet_of_one_dimensional_gaussians():
    """(m1 - m2)^2 + (s1 - s2)^2 for 1-D Gaussians with exactly these sample moments."""
    base = np.random.default_rng(2).normal(size=(1000, 1))
    base = (base - base.mean()) / base.std(ddof=1)
    assert gen_metrics.frechet_distance(base * 2 + 1, base * 0.5 - 1) == pytest.approx(4 + 1.5**2, rel=1e-9)


@pytest.mark.parametrize("a, b", [((10, 3), (10, 4)), ((1, 3), (10, 3)), ((10,), (10,))])
def test_frechet_rejects_mismatched_features(a, b):
    with pytest.raises(ValueError, match="feature matrices"):
        gen_metrics.frechet_distance(np.zeros(a), np.zeros(b))


def test_classify_rejects_non_mnist_images():
    with pytest.raises(ValueError, match=r"\(N, 28, 28, 1\).*\(4, 32, 32, 3\)"):
        gen_metrics.classify(np.zeros((4, 32, 32, 3), np.float32))


def test_quality_uses_the_shipped_classifier():
    x, _ = digit_images(64)
    q = gen_metrics.quality(x, x)
    assert abs(q["frechet"]) < 1e-2  # 64 images, 3,136 features: a rank-63 covariance, round-off only
    assert q["quality_n"] == 64 and 0.0 <= q["confident_share"] <= 1.0 and 0 <= q["classes_covered"] <= 10
    # uint8 and [0, 1] floats are the same images
    same = gen_metrics.quality(x.astype(np.float32) / 255.0, x)
    assert same["confident_share"] == q["confident_share"] and abs(same["frechet"]) < 1e-2
    # blank images are far from digits in cnn.mnist's features
    assert gen_metrics.quality(np.zeros_like(x), x)["frechet"] > 1.0


def test_task_hooks_measure_the_shipped_generative_models():
    x, _ = digit_images(48)
    for name in ("dcgan", "autoencoder"):
        task = tasks.of_model(name)
        model, variables = zoo.load(name, pretrained="mnist")
        q = task.quality(model, variables, {"x": x}, 32, 0)
        assert q["quality_n"] == 32 and np.isfinite(q["frechet"]), name
        assert task.quality(model, variables, {"x": x}, 32, 0) == q, f"{name}: not deterministic"
    dcgan, v = zoo.load("dcgan", pretrained="mnist")
    seed0 = tasks.of_model("dcgan").quality(dcgan, v, {"x": x}, 32, 0)
    other_seed = tasks.of_model("dcgan").quality(dcgan, v, {"x": x}, 32, 1)
    assert other_seed["frechet"] != seed0["frechet"]
    # sampled with BatchNorm on each batch's statistics (the tutorial's train-mode sampling): other images
    batch_bn = gen_metrics.gan_quality(dcgan, v, {"x": x}, 32, 0, batch_size=16, batch_stats=True)
    assert batch_bn["quality_n"] == 32 and np.isfinite(batch_bn["frechet"])
    assert batch_bn["frechet"] != seed0["frechet"]
    assert tasks.of_model("cnn").quality is None
    with pytest.raises(ValueError, match="at least 2, got 1"):
        gen_metrics.gan_quality(dcgan, v, {"x": x}, 1)


def test_zoo_eval_reports_quality(tfds_dir, tmp_path, capsys):
    from train.cli import main

    out = tmp_path / "eval.json"
    assert main(["eval", "autoencoder", "--pretrained", "mnist", "--data-dir", str(tfds_dir), "--quality-n", "64",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "frechet:" in text and "mse:" in text and "over 64 images" in text
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["quality_n"] == 64 and metrics["frechet"] > 0 and metrics["classes_covered"] >= 1
    assert main(["eval", "autoencoder", "--pretrained", "mnist", "--data-dir", str(tfds_dir), "--quality-n", "0",
                 "--out", str(out)]) == 0
    assert "frechet" not in json.loads(out.read_text())["metrics"]


def test_zoo_export_records_quality_in_the_manifest(tfds_dir, tmp_path, capsys):
    """A generative run's export carries its sample quality; a classifier's does not; --quality-n 0 turns it off."""
    from train.cli import main
    from zoo.formats.orbax_export import read_manifest

    workdir = tmp_path / "run"
    assert main(["train", "autoencoder", "--workdir", str(workdir), "--data-dir", str(tfds_dir), "--epochs", "1",
                 "--train-limit", "256", "--val-size", "128", "--batch-size", "64"]) == 0
    out = tmp_path / "export"
    assert main(["export", "autoencoder", str(out), "--workdir", str(workdir), "--quality-n", "64"]) == 0
    assert "frechet=" in capsys.readouterr().out
    quality = read_manifest(out)["quality"]
    assert quality["quality_n"] == 64 and quality["frechet"] > 0 and quality["classifier"] == "cnn.mnist"
    again = tmp_path / "again"  # converting an export keeps its quality record
    assert main(["export", "autoencoder", str(again), "--path", str(out)]) == 0
    assert read_manifest(again)["quality"] == quality
    off = tmp_path / "off"
    assert main(["export", "autoencoder", str(off), "--workdir", str(workdir), "--quality-n", "0"]) == 0
    assert "quality" not in read_manifest(off)


def test_a_gan_run_exports_its_latest_checkpoint_by_default(tfds_dir, tmp_path, capsys):
    """A GAN's g_loss does not rank its samples: `zoo export` takes the latest checkpoint unless
    --which best; a classifier's default stays its best."""
    from train import tasks
    from train.cli import main
    from train.evaluate import restore_workdir

    assert not tasks.of_model("dcgan").ranks_checkpoints and tasks.of_model("mlp").ranks_checkpoints
    workdir = tmp_path / "gan"
    assert main(["train", "dcgan", "--workdir", str(workdir), "--data-dir", str(tfds_dir), "--epochs", "3",
                 "--train-limit", "128", "--val-size", "64", "--batch-size", "64", "--set", "latent_dim=8",
                 "--set", "g_features=[16,8]", "--set", "d_features=[8,16]"]) == 0
    steps = [int(line.split()[3]) for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert restore_workdir(workdir)[3] == steps[-1] == restore_workdir(workdir, "latest")[3]
    assert restore_workdir(workdir, "best")[3] in steps


def test_eval_printout_follows_the_task_record():
    from train.evaluate import report_lines

    quality = {"frechet": 12.5, "confident_share": 0.75, "classes_covered": 9, "quality_n": 64}
    gan = {"model": "dcgan", "dataset": "mnist", "split": "test", "source": "run",
           "metrics": {"count": 64, "g_loss": 1.5, **quality}}
    lines = report_lines(gan)
    assert lines[-1] == "  classes_covered: 9 of 10 digits (cnn.mnist confidence > 0.9), over 64 images"
    assert not any("confusion" in line for line in lines)  # a GAN's task has no per-class table
    # quality measured only with --quality-n > 0: no coverage line without it
    assert not any("classes_covered" in line for line in report_lines({**gan, "metrics": {"count": 64, "g_loss": 1.5}}))
    assert tasks.of_model("cnn").per_class and not tasks.of_model("dcgan").per_class
