"""Sample quality of generative models, measured by the shipped MNIST classifier.

The shipped `cnn.mnist` plays the role Inception plays in FID: images go through its `embed`
(the flattened conv features before the head, 7*7*64 = 3,136 numbers) and its head.
  * frechet: the Fréchet distance between Gaussians fitted to the features of the images and
    of reference images (lower is better; two MNIST samples give the floor, bench/gen_metrics.py);
  * confident_share: the share of images the classifier assigns to one digit with softmax
    probability > CONFIDENCE (a recognisable digit);
  * classes_covered: how many digit classes those confident images fall into (mode coverage).
The numbers are comparable only at the same image count: the estimate of the distance is
biased upward for small counts.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import zoo

CLASSIFIER = ("cnn", "mnist")  # registry name, pretrained tag
CONFIDENCE = 0.9
NUM_IMAGES = 10_000  # the count the bench and `zoo eval` report at (MNIST's test split)


@functools.lru_cache(maxsize=1)
def _classifier():
    model, variables = zoo.load(*CLASSIFIER)

    @jax.jit
    def run(images):
        feats = model.apply(variables, images, method="embed")  # (B, 3136)
        probs = jax.nn.softmax(model.apply(variables, feats, method="from_embedding"), -1)  # (B, 10)
        return feats, probs

    return run


def classify(images, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(features float64 (N, D), class probabilities (N, 10)) of images under cnn.mnist.

    Args:
      images: (N, 28, 28, 1) float in [0, 1] or uint8 pixels.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (28, 28, 1):
        raise ValueError(f"images must be (N, 28, 28, 1) MNIST-like images, got shape {images.shape}")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    run = _classifier()
    feats, probs = zip(*(jax.device_get(run(jnp.asarray(images[i:i + batch_size], jnp.float32)))
                         for i in range(0, len(images), batch_size)))
    return np.concatenate(feats).astype(np.float64), np.concatenate(probs)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature rows `a` (N, D) and `b` (M, D).

    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)). The trace of the matrix square root
    is the sum of the square roots of the eigenvalues of S_a S_b, which are real and >= 0.
    With A, B the centered rows, S_a S_b = A^T A B^T B / ((N-1)(M-1)), whose nonzero
    eigenvalues are those of (A B^T)(A B^T)^T: the trace is the sum of the singular values of
    A B^T / sqrt((N-1)(M-1)). That (N, M) matrix is used when one side has fewer rows than D
    (cnn.mnist's D is 3,136: a quality check on 64 images costs an SVD of 64 values, not two
    eigendecompositions of a 3,136 x 3,136 matrix); otherwise the eigenvalues of
    S_a^(1/2) S_b S_a^(1/2), from symmetric eigendecompositions in D dimensions.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"expected two (N>=2, D) feature matrices of the same D, got shapes {a.shape} and {b.shape}")
    (n, d), m = a.shape, len(b)
    mu = a.mean(0) - b.mean(0)
    ca, cb = a - a.mean(0), b - b.mean(0)
    trace_a, trace_b = np.sum(ca * ca) / (n - 1), np.sum(cb * cb) / (m - 1)
    if min(n, m) < d:
        trace_root = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / np.sqrt((n - 1) * (m - 1))
    else:
        sa, sb = ca.T @ ca / (n - 1), cb.T @ cb / (m - 1)  # (D, D)
        w, v = np.linalg.eigh(sa)
        root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S_a^(1/2)
        trace_root = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ sb @ root_a), 0, None)).sum()
    return float(mu @ mu + trace_a + trace_b - 2 * trace_root)


def quality(images, reference) -> dict:
    """{"frechet", "confident_share", "classes_covered", "quality_n"} of `images` against
    `reference` images (both (N, 28, 28, 1), float in [0, 1] or uint8)."""
    feats, probs = classify(images)
    confident = probs.max(-1) > CONFIDENCE
    return {
        "frechet": frechet_distance(feats, classify(reference)[0]),
        "confident_share": float(confident.mean()),
        "classes_covered": int(len(np.unique(probs.argmax(-1)[confident]))),
        "quality_n": int(len(feats)),
    }


def quality_line(metrics: dict) -> str:
    """How `zoo eval` prints the class coverage of `quality` metrics (after the other numbers)."""
    classes = len(zoo.get_spec(CLASSIFIER[0]).class_names)
    return (f"classes_covered: {metrics['classes_covered']} of {classes} digits ({'.'.join(CLASSIFIER)} confidence > "
            f"{CONFIDENCE:g}), over {metrics['quality_n']} images")


def _count(n: int, available: int) -> int:
    if n < 2:
        raise ValueError(f"the quality image count must be at least 2, got {n}")
    return min(n, available)


def gan_quality(model, variables, arrays: dict, n: int = NUM_IMAGES, seed: int = 0, batch_size: int = 1000,
                *, batch_stats: bool = False) -> dict:
    """quality() of `n` generated samples (z ~ N(0, 1) from key(seed)) against the first `n`
    images of `arrays["x"]` (capped at their count).

    batch_stats: generate with BatchNorm normalizing by each batch's own statistics (batches of
    `batch_size`), as the PyTorch tutorial's generator samples (it stays in train mode), instead
    of the running averages (`generate`'s default, eval mode).
    """
    n = _count(n, len(arrays["x"]))
    z = jax.random.normal(jax.random.key(seed), (n, model.latent_dim))
    if batch_stats:
        gen = jax.jit(lambda v, z: model.apply(v, z, method="generate", train=True, mutable=["batch_stats"])[0])
    else:
        gen = jax.jit(lambda v, z: model.apply(v, z, method="generate"))
    samples = np.concatenate([jax.device_get(gen(variables, z[i:i + batch_size])) for i in range(0, n, batch_size)])
    return quality(samples, arrays["x"][:n])


def reconstruction_quality(model, variables, arrays: dict, n: int = NUM_IMAGES, seed: int = 0,
                           batch_size: int = 1000) -> dict:
    """quality() of the reconstructions of the first `n` images of `arrays["x"]` against those
    images (`seed` unused: reconstruction is deterministic)."""
    n = _count(n, len(arrays["x"]))
    x = np.asarray(arrays["x"][:n])
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x
    rec = jax.jit(lambda v, x: model.apply(v, x))
    recon = np.concatenate([jax.device_get(rec(variables, x[i:i + batch_size])) for i in range(0, n, batch_size)])
    return quality(recon, x)
