"""Train/eval steps, optimizers and the divergence guard (train/steps.py, state.py, tasks.py, loop.py).

Everything runs on tiny synthetic batches (tests/fixtures.py) on one CPU device, except the
divergence tests, which run the real `fit` loop on 256 MNIST images from the session data dir.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zoo
from tests.fixtures import TASK_MODELS, build, flat_params, task_arrays, tiny_fit_cfg
from train import parallel, steps, tasks
from train.config import Config
from train.state import OPTIMIZERS, SCHEDULES, glorot_reinit, make_optimizer, make_schedule

N_STEPS = 25
# Adam; the tiny LSTMs need a larger step to show progress within N_STEPS.
LEARNING_RATES = {"language_model": 1e-2, "sequence_classification": 1e-2, "gan": 2e-3}


# ---------------------------------------------------------------- every task learns


def test_every_registry_task_is_covered():
    registered = {zoo.get_spec(name).task for name in zoo.list_models()}
    assert registered <= set(TASK_MODELS), f"no step test for tasks {registered - set(TASK_MODELS)}"
    assert set(TASK_MODELS) == set(tasks.TASKS)


@pytest.mark.parametrize("task", sorted(TASK_MODELS))
def test_step_learns_one_fixed_batch(task):
    """~25 jitted steps on one fixed batch: the loss must fall (GAN: both players update, finite)."""
    model, state, cfg = build(task, lr=LEARNING_RATES.get(task, 1e-3))
    batch = jax.tree.map(jnp.asarray, task_arrays(task, 20))
    step = jax.jit(tasks.get(task).train_step(model, cfg))
    initial = jax.device_get(state.params)
    history = []
    for _ in range(N_STEPS):
        state, metrics = step(state, batch)
        history.append(jax.device_get(metrics))
    losses = np.array([m["loss"] for m in history])
    assert np.all(np.isfinite(losses)), losses
    assert int(state.step) == N_STEPS
    if task == "gan":
        for key in ("d_loss", "g_loss", "d_real", "d_fake"):
            assert np.all(np.isfinite([m[key] for m in history])), key
        for part in ("generator", "discriminator"):
            assert not np.allclose(flat_params(state.params[part]), flat_params(initial[part])), part
        assert set(state.model_state) == {"batch_stats"}  # BatchNorm running statistics were carried along
        # The discriminator separates 20 fixed real images from fresh fakes quickly.
        assert history[-1]["d_real"] > history[-1]["d_fake"]
    else:
        assert losses[-1] < losses[0], losses
        # Reconstruction trains on BCE, whose minimum is the pixels' own entropy, not 0: judge
        # it by its MSE metric. Everything else: the loss itself.
        key = "mse" if task == "reconstruction" else "loss"
        curve = np.array([m[key] for m in history])
        assert curve[-1] < 0.7 * curve[0], (key, curve)
    assert np.all(np.isfinite(flat_params(state.params)))


def test_metrics_match_the_loss_definitions():
    """Metrics are batch means of the per-example definitions (classification)."""
    model, state, cfg = build("classification")
    batch = jax.tree.map(jnp.asarray, task_arrays("classification", 12))
    logits = model.apply(state.variables(), batch["x"].astype(jnp.float32) / 255.0)
    _, metrics = jax.jit(tasks.get("classification").train_step(model, cfg))(state, batch)
    want_loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    want_acc = (jnp.argmax(logits, -1) == batch["y"]).mean()
    np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], want_acc)


def test_multitask_loss_is_sum_of_heads():
    model, state, cfg = build("multitask")
    batch = jax.tree.map(jnp.asarray, task_arrays("multitask", 12))
    _, m = jax.jit(tasks.get("multitask").train_step(model, cfg))(state, batch)
    np.testing.assert_allclose(m["loss"], m["digit_loss"] + m["parity_loss"], rtol=1e-5)
    assert {"digit_accuracy", "parity_accuracy"} <= set(m)


def test_step_randomness_is_a_function_of_base_key_and_step():
    """Dropout draws fold_in(base key, step): replaying a step from the same state is exact,
    and successive steps draw different masks."""
    model, state, cfg = build("classification", dropout_rate=0.5)
    batch = jax.tree.map(jnp.asarray, task_arrays("classification", 8))
    step = jax.jit(tasks.get("classification").train_step(model, cfg))
    a, ma = step(state, batch)
    b, mb = step(state, batch)
    np.testing.assert_array_equal(flat_params(a.params), flat_params(b.params))
    assert float(ma["loss"]) == float(mb["loss"])
    # Same params, next step number: a different dropout mask, so a different loss.
    _, mc = step(state.replace(step=state.step + 1), batch)
    assert float(mc["loss"]) != float(ma["loss"])


# ---------------------------------------------------------------- compile once


def test_jitted_step_compiles_once():
    model, state, cfg = build("classification")
    step = jax.jit(tasks.get("classification").train_step(model, cfg), donate_argnums=0)
    for seed in range(4):
        batch = jax.tree.map(jnp.asarray, task_arrays("classification", 8, seed=seed))
        state, _ = step(state, batch)
    assert step._cache_size() == 1


@pytest.mark.parametrize("task", ["classification", "gan"])
def test_strategy_chunk_compiles_once(task):
    """The production path (JitStrategy.run_chunk with donation, on 1 device) never recompiles."""
    model, state, cfg = build(task)
    strategy = parallel.JitStrategy(tasks.get(task).train_step(model, cfg), parallel.make_mesh(jax.devices()[:1]))
    state = strategy.place_state(state)
    data = strategy.place_data(task_arrays(task, 16))
    for i in range(3):
        state, metrics = strategy.run_chunk(state, data, np.arange(8).reshape(1, 8) + 8 * (i % 2))
    assert strategy.compiles() == 1
    assert metrics["loss"].shape == (1,)
    assert int(state.step) == 3


# ---------------------------------------------------------------- eval steps


def test_eval_sums_ignore_masked_padding():
    """Padding examples with mask 0 change neither the sums nor the confusion matrix."""
    model, state, _ = build("classification")
    arrays = task_arrays("classification", 13, seed=3)
    eval_fn = jax.jit(tasks.get("classification").eval_step(model))
    real = jax.tree.map(lambda a: jnp.asarray(a[:9]), arrays)
    padded = jax.tree.map(jnp.asarray, arrays)  # 4 extra, different examples, masked out
    mask = jnp.asarray((np.arange(13) < 9).astype(np.float32))
    a = jax.device_get(eval_fn(state.variables(), real, jnp.ones(9)))
    b = jax.device_get(eval_fn(state.variables(), padded, mask))
    assert a["count"] == b["count"] == 9
    np.testing.assert_array_equal(a["confusion"], b["confusion"])
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6)
    # The sums are sums: they equal the per-example definitions.
    logits = model.apply(state.variables(), real["x"].astype(jnp.float32) / 255.0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, real["y"])
    np.testing.assert_allclose(a["loss"], ce.sum(), rtol=1e-5)
    assert a["accuracy"] == float((jnp.argmax(logits, -1) == real["y"]).sum())


def test_confusion_matrix_counts_every_example():
    model, state, _ = build("classification")
    arrays = jax.tree.map(jnp.asarray, task_arrays("classification", 24, seed=5))
    sums = jax.device_get(jax.jit(tasks.get("classification").eval_step(model))(state.variables(), arrays, jnp.ones(24)))
    confusion = sums["confusion"]
    assert confusion.shape == (10, 10)
    assert confusion.sum() == sums["count"] == 24
    np.testing.assert_array_equal(confusion.sum(1), np.bincount(np.asarray(arrays["y"]), minlength=10))
    assert np.trace(confusion) == sums["accuracy"]


@pytest.mark.parametrize("task", sorted(TASK_MODELS))
def test_evaluator_padded_means_are_exact(task):
    """make_evaluator pads the last batch (10 examples, batches of 4 -> 2 padded, masked):
    the summarized means equal the means over the 10 examples in one unpadded batch."""
    model, state, _ = build(task)
    arrays = task_arrays(task, 10, seed=7)
    eval_fn = tasks.get(task).eval_step(model)
    mesh = parallel.make_mesh(jax.devices()[:1])
    on_device = jax.tree.map(jnp.asarray, arrays)
    padded = tasks.summarize(parallel.make_evaluator(eval_fn, mesh)(state.variables(), on_device, 10, 4))
    whole = tasks.summarize(jax.jit(eval_fn)(state.variables(), on_device, jnp.ones(10)))
    assert padded["count"] == whole["count"] == 10
    for key, value in whole.items():
        if isinstance(value, float):
            np.testing.assert_allclose(padded[key], value, rtol=1e-5, atol=1e-7, err_msg=key)
    if task in ("classification", "sequence_classification"):
        assert padded["confusion"] == whole["confusion"]


def test_classification_report_known_values():
    # rows = true class, cols = predicted
    confusion = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 0]])
    r = tasks.classification_report(confusion)
    c0, c1, c2 = (r["per_class"][str(c)] for c in range(3))
    assert c0 == pytest.approx({"precision": 5 / 7, "recall": 5 / 6, "f1": 2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6), "support": 6})
    assert c1 == pytest.approx({"precision": 3 / 4, "recall": 3 / 6, "f1": 0.6, "support": 6})
    # class 2: predicted once (wrongly), never present: precision 0, recall 0 (no 0/0 NaN)
    assert c2 == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["macro_f1"] == pytest.approx((c0["f1"] + c1["f1"] + 0.0) / 3)
    assert r["confusion"] == confusion.tolist()


def test_summarize_turns_sums_into_means():
    out = tasks.summarize({"loss": np.float32(6.0), "accuracy": np.float32(3.0), "count": np.float32(4.0)})
    assert out == {"loss": 1.5, "accuracy": 0.75, "count": 4}


# ---------------------------------------------------------------- optimizers and schedules


def _quadratic():
    params = {"dense": {"kernel": jnp.full((3, 2), 2.0), "bias": jnp.full((2,), -1.0)}}
    loss = lambda p: sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(p))  # noqa: E731
    return params, loss


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_and_schedule_steps(name, schedule):
    params, loss = _quadratic()
    lr = make_schedule(schedule, 0.05, total_steps=10, warmup_steps=2 if schedule == "cosine" else 0)
    tx = make_optimizer(name, lr)
    opt_state = tx.init(params)
    first = float(loss(params))
    for _ in range(3):
        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    assert np.all(np.isfinite(flat_params(params)))
    assert float(loss(params)) < first


def _closed_form_updates(name: str, lr: float, p0: np.ndarray, grads: list, wd: float) -> list:
    """The first updates of each optimizer, written out (float64): PyTorch's heavy-ball momentum
    (buf = m * buf + g), Adam with bias correction, AdamW's decoupled decay, and PyTorch's
    RMSprop (alpha 0.99, eps 1e-8 outside the square root), as train.state.make_optimizer builds them."""
    p, m, v, trace, out = p0.copy(), 0.0, 0.0, 0.0, []
    for t, g in enumerate(grads, start=1):
        if name == "sgd":
            u = -lr * g
        elif name == "momentum":
            trace = 0.9 * trace + g
            u = -lr * trace
        elif name in ("adam", "adamw"):
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g**2
            u = -lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
            if name == "adamw":
                u = u - lr * wd * p
        else:  # rmsprop
            v = 0.99 * v + 0.01 * g**2
            u = -lr * g / (np.sqrt(v) + 1e-8)
        out.append(u)
        p = p + u
    return out


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_first_updates_match_the_closed_form(name):
    """Two updates from fixed gradients (the second differs in sign and size, so momentum and
    second-moment terms show) equal the optimizer's textbook update rule."""
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=7)
    grads = [rng.normal(size=7), -2.0 * rng.normal(size=7)]
    wd = 0.1 if name == "adamw" else 0.0
    tx = make_optimizer(name, 0.05, weight_decay=wd)
    params = jnp.asarray(p0, jnp.float32)
    opt_state = tx.init(params)
    for g, want in zip(grads, _closed_form_updates(name, 0.05, p0, grads, wd)):
        updates, opt_state = tx.update(jnp.asarray(g, jnp.float32), opt_state, params)
        np.testing.assert_allclose(np.asarray(updates), want, rtol=2e-5, atol=1e-7)
        params = optax.apply_updates(params, updates)


def _onecycle(lr: float, total: int, t: int) -> float:
    # cosine rise from lr/25 to lr over the first 30% of steps, then cosine fall to lr/25/1e4
    cos = lambda start, end, frac: end + (start - end) * (1 + math.cos(math.pi * frac)) / 2  # noqa: E731
    rise = int(0.3 * total)
    return cos(lr / 25, lr, t / rise) if t < rise else cos(lr, lr / 25 / 1e4, (t - rise) / (total - rise))


@pytest.mark.parametrize(
    "schedule,warmup,expected",
    [
        ("constant", 0, lambda t: 0.1),
        ("cosine", 0, lambda t: 0.05 * (1 + math.cos(math.pi * t / 20))),
        # linear warmup 0 -> 0.1 over 4 steps, then cosine over the remaining 16
        ("cosine", 4, lambda t: 0.1 * t / 4 if t < 4 else 0.05 * (1 + math.cos(math.pi * (t - 4) / 16))),
        ("onecycle", 0, lambda t: _onecycle(0.1, 20, t)),
    ],
    ids=["constant", "cosine", "cosine-warmup", "onecycle"],
)
def test_schedule_learning_rate_at_given_steps(schedule, warmup, expected):
    lr = make_schedule(schedule, 0.1, total_steps=20, warmup_steps=warmup)
    for t in (0, 1, 2, 4, 5, 6, 10, 13, 19, 20):
        assert float(lr(t)) == pytest.approx(expected(t), rel=1e-5, abs=1e-9), (schedule, t)


def test_the_schedule_drives_the_optimizer_step():
    """The optimizer scales its t-th update by the schedule's value at t (count starts at 0)."""
    schedule = make_schedule("cosine", 0.1, total_steps=20, warmup_steps=4)
    tx = make_optimizer("sgd", schedule)
    params = jnp.zeros(3)
    opt_state = tx.init(params)
    for t in range(6):
        updates, opt_state = tx.update(jnp.ones(3), opt_state, params)
        np.testing.assert_allclose(np.asarray(updates), -float(schedule(t)), rtol=1e-6)


def test_schedule_shapes():
    assert float(make_schedule("constant", 0.1, 100)(50)) == pytest.approx(0.1)
    cos = make_schedule("cosine", 0.1, 100)
    assert float(cos(0)) == pytest.approx(0.1) and float(cos(100)) == pytest.approx(0.0, abs=1e-7)
    warm = make_schedule("cosine", 0.1, 100, warmup_steps=10)
    assert float(warm(0)) == 0.0 and float(warm(10)) == pytest.approx(0.1)
    one = make_schedule("onecycle", 0.1, 100)
    assert float(one(0)) < 0.1 and max(float(one(s)) for s in range(100)) == pytest.approx(0.1, rel=1e-3)
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("linear", 0.1, 10)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("lamb", 0.1)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adamw"])
def test_weight_decay_with_zero_gradient(name):
    """With a zero gradient the first update is pure decay: -lr * wd * p
    (L2 added to the gradient for SGD/momentum, decoupled for AdamW)."""
    params, _ = _quadratic()
    lr, wd = 0.1, 0.01
    tx = make_optimizer(name, lr, weight_decay=wd)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    jax.tree.map(lambda u, p: np.testing.assert_allclose(u, -lr * wd * p, rtol=1e-6), updates, params)
    # ...and without weight decay nothing moves.
    tx0 = make_optimizer(name, lr)
    updates0, _ = tx0.update(zeros, tx0.init(params), params)
    assert not np.any(flat_params(updates0))


def test_weight_decay_is_l2_for_adam():
    """Adam's weight_decay is L2 on the gradient (PyTorch semantics): normalized by Adam, the
    first update is -lr * sign(p) for a zero gradient."""
    params, _ = _quadratic()
    tx = make_optimizer("adam", 0.1, weight_decay=0.01)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    jax.tree.map(lambda u, p: np.testing.assert_allclose(u, -0.1 * jnp.sign(p), rtol=1e-4), updates, params)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_clip_norm_bounds_the_gradient(name):
    """Gradients are clipped to global norm `clip_norm` before the optimizer sees them: the
    update equals the plain optimizer's update for the clipped gradient; for SGD its norm is
    lr * clip_norm."""
    params, _ = _quadratic()
    huge = jax.tree.map(lambda p: jnp.full_like(p, 1e6), params)
    tx = make_optimizer(name, 1.0, clip_norm=0.5)
    updates, _ = tx.update(huge, tx.init(params), params)
    plain = make_optimizer(name, 1.0)
    clipped = jax.tree.map(lambda g: g * (0.5 / optax.tree.norm(huge)), huge)
    expected, _ = plain.update(clipped, plain.init(params), params)
    jax.tree.map(lambda u, e: np.testing.assert_allclose(u, e, rtol=1e-5), updates, expected)
    if name in ("sgd", "momentum"):
        assert float(optax.tree.norm(updates)) == pytest.approx(0.5, rel=1e-5)
        assert float(optax.tree.norm(plain.update(huge, plain.init(params), params)[0])) > 1e5


def test_glorot_reinit_changes_only_kernels_with_the_right_limit():
    cnn_params = build("classification")[1].params  # conv kernels (3, 3, in, out) + dense head
    lstm_params = build("language_model")[1].params  # embedding, LSTM wi/wh/b, dense head
    for params in (cnn_params, lstm_params):
        new = glorot_reinit(params, jax.random.key(1))
        old_flat = dict(jax.tree_util.tree_flatten_with_path(params)[0])
        for path, leaf in jax.tree_util.tree_flatten_with_path(new)[0]:
            name = path[-1].key
            old = np.asarray(old_flat[path])
            leaf = np.asarray(leaf)
            assert leaf.shape == old.shape and leaf.dtype == old.dtype
            if name in ("kernel", "wi", "wh"):
                receptive = int(np.prod(leaf.shape[:-2]))
                fan_in, fan_out = leaf.shape[-2] * receptive, leaf.shape[-1] * receptive
                limit = math.sqrt(6.0 / (fan_in + fan_out))
                assert not np.array_equal(leaf, old), path
                assert np.abs(leaf).max() <= limit, path
                if leaf.size >= 500:  # a uniform sample fills its range and has std limit/sqrt(3)
                    assert np.abs(leaf).max() > 0.95 * limit, path
                    assert leaf.std() == pytest.approx(limit / math.sqrt(3), rel=0.1), path
            else:  # biases, embeddings
                np.testing.assert_array_equal(leaf, old, err_msg=str(path))
    # The 3x3 conv 8 -> 16: fan_in = 8 * 9, fan_out = 16 * 9 (PyTorch's xavier_uniform_ convention).
    k = np.asarray(glorot_reinit(cnn_params, jax.random.key(1))["conv_1"]["kernel"])
    assert k.shape == (3, 3, 8, 16)
    assert np.abs(k).max() <= math.sqrt(6.0 / (9 * (8 + 16))) < np.abs(k).max() / 0.95
    assert set(lstm_params["lstm_0"]) == {"wi", "wh", "b"} and "embedding" in lstm_params["embed"]


# ---------------------------------------------------------------- divergence


def _tiny_fit_cfg(tfds_dir, **kw) -> Config:
    return tiny_fit_cfg(tfds_dir, **kw)


def _checkpoint_params_finite(workdir) -> dict[int, bool]:
    """{step: all params finite} for every finalized checkpoint of a run (restored as numpy)."""
    from train.checkpoint import Checkpointer

    with Checkpointer(workdir / "checkpoints") as ckpt:
        out = {}
        for step in ckpt.all_steps():
            meta = ckpt._mgr.item_metadata(step)["state"].tree
            target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta)
            tree, _ = ckpt.restore(target, step)
            out[step] = bool(np.all(np.isfinite(flat_params(tree["params"]))))
        return out


@pytest.mark.parametrize("checkpoint_steps", [0, 1])
def test_nonfinite_loss_stops_training_without_a_bad_checkpoint(tfds_dir, tmp_path, checkpoint_steps):
    """A good epoch is saved; resuming it with lr=1e30 (Adam) diverges: fit raises
    TrainingDiverged, every checkpoint left holds finite parameters and the newest one is the
    "last good checkpoint" the message names; also when step checkpoints are due between the
    loss checks (checkpoint_steps=1, log_every=100).

    (SGD with lr=1e6, or even 1e20, does not reach NaN here: it kills the ReLUs and leaves
    huge but finite losses.)"""
    from train.loop import TrainingDiverged, fit

    fit(_tiny_fit_cfg(tfds_dir), tmp_path, log=lambda *a: None)
    good = 128 // 32
    logs = []
    with pytest.raises(TrainingDiverged, match="non-finite") as raised:
        fit(_tiny_fit_cfg(tfds_dir, epochs=4, lr=1e30, checkpoint_steps=checkpoint_steps), tmp_path, log=logs.append)
    assert any(f"resumed from step {good}" in line for line in logs), logs
    finite = _checkpoint_params_finite(tmp_path)
    assert all(finite.values()), finite
    assert f"Last good checkpoint: step {max(finite)} " in str(raised.value)
    if not checkpoint_steps:
        assert max(finite) == good, finite


def test_resume_with_more_epochs_continues_a_finished_run(tfds_dir, tmp_path):
    """A run that completed its epochs is not final: rerun with a larger --epochs it trains on."""
    from train.loop import fit

    fit(_tiny_fit_cfg(tfds_dir), tmp_path, log=lambda *a: None)
    logs = []
    record = fit(_tiny_fit_cfg(tfds_dir, epochs=2), tmp_path, log=logs.append).record
    assert any("resumed from step 4" in line for line in logs), logs
    assert record["epoch"] == 2 and record["step"] == 8
    assert max(_checkpoint_params_finite(tmp_path)) == 8


def test_resume_after_a_crash_replays_the_uninterrupted_run(tfds_dir, tmp_path):
    """Cosine schedule, dropout: losing the last checkpoint (a crash after epoch 1) and rerunning
    the same command reproduces the uninterrupted run's parameters bit for bit."""
    import shutil

    from train.loop import fit

    cfg = _tiny_fit_cfg(tfds_dir, epochs=2, schedule="cosine", model_overrides={"hidden": [16], "dropout_rate": 0.2})
    fit(cfg, tmp_path, log=lambda *a: None)
    final = _checkpoint_params(tmp_path, 8)
    shutil.rmtree(tmp_path / "checkpoints" / "8")
    logs = []
    fit(cfg, tmp_path, log=logs.append)
    assert any("resumed from step 4" in line for line in logs), logs
    replayed = _checkpoint_params(tmp_path, 8)
    jax.tree.map(np.testing.assert_array_equal, replayed, final)


def _checkpoint_params(workdir, step):
    from train.checkpoint import Checkpointer

    with Checkpointer(workdir / "checkpoints") as ckpt:
        meta = ckpt._mgr.item_metadata(step)["state"].tree
        tree, _ = ckpt.restore(jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta), step)
    return tree["params"]


# ---------------------------------------------------------------- GAN step semantics


def test_gan_step_matches_direct_formulation():
    """gan_step runs G forward once and pulls the generator gradient back through that pass
    (jax.vjp). Its result must equal the direct formulation: D updated on (real, G(z)), then
    G updated by differentiating BCE(D'(G(z)), 1) end to end; G's BatchNorm statistics are
    updated by exactly one forward pass. (Plain SGD, so parameter updates are linear in the
    gradients; Adam's first step, g / (|g| + eps), would amplify rounding in tiny gradients.)"""
    model, state, cfg = build("gan", optimizer="sgd", lr=0.1)
    batch = jax.tree.map(jnp.asarray, task_arrays("gan", 8, seed=2))
    new_state, metrics = jax.jit(tasks.get("gan").train_step(model, cfg))(state, batch)

    real = batch["x"].astype(jnp.float32) / 255.0
    z = steps.latents(state.key, jnp.arange(8), model.latent_dim)  # the step's noise: one draw per example
    apply, params, ms = state.apply_fn, state.params, state.model_state
    fake, g_upd = apply({"params": params, **ms}, z, train=True, method="generate", mutable=["batch_stats"])

    def d_loss(d):
        p = {**params, "discriminator": d}
        r, upd = apply({"params": p, **g_upd}, real, train=True, method="discriminate", mutable=["batch_stats"])
        f, upd = apply({"params": p, **upd}, fake, train=True, method="discriminate", mutable=["batch_stats"])
        return optax.sigmoid_binary_cross_entropy(r, 1.0).mean() + optax.sigmoid_binary_cross_entropy(f, 0.0).mean()

    d_grads = jax.grad(d_loss)(params["discriminator"])
    upd, _ = state.tx.update(d_grads, state.opt_state["discriminator"], params["discriminator"])
    d_new = optax.apply_updates(params["discriminator"], upd)

    def g_loss(g):
        p = {"generator": g, "discriminator": d_new}
        out, _ = apply({"params": p, **ms}, z, train=True, method="generate", mutable=["batch_stats"])
        logits, _ = apply({"params": p, **g_upd}, out, train=True, method="discriminate", mutable=["batch_stats"])
        return optax.sigmoid_binary_cross_entropy(logits, 1.0).mean()

    g_grads = jax.grad(g_loss)(params["generator"])
    upd, _ = state.tx.update(g_grads, state.opt_state["generator"], params["generator"])
    g_new = optax.apply_updates(params["generator"], upd)

    close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)  # noqa: E731
    jax.tree.map(close, new_state.params["discriminator"], d_new)
    jax.tree.map(close, new_state.params["generator"], g_new)
    jax.tree.map(close, new_state.model_state["batch_stats"]["generator"], g_upd["batch_stats"]["generator"])
    np.testing.assert_allclose(float(metrics["g_loss"]), float(g_loss(params["generator"])), rtol=1e-5)


# ---------------------------------------------------------------- resume: schedule changes


def test_schedule_change_warning_on_resume():
    from train.loop import schedule_change

    saved = Config(model="cnn", epochs=5, schedule="cosine").to_json()
    assert schedule_change(saved, Config(model="cnn", epochs=5, schedule="cosine")) is None
    msg = schedule_change(saved, Config(model="cnn", epochs=10, schedule="cosine"))
    assert "epochs 5 -> 10" in msg and "cosine" in msg
    # A constant rate does not depend on the run length: more epochs are harmless ...
    const = Config(model="cnn", epochs=5).to_json()
    assert schedule_change(const, Config(model="cnn", epochs=10)) is None
    # ... but a different rate or schedule is still a change.
    assert "lr 0.001 -> 0.01" in schedule_change(const, Config(model="cnn", lr=0.01))
    assert "schedule 'constant' -> 'onecycle'" in schedule_change(const, Config(model="cnn", schedule="onecycle"))


def test_gan_generator_learns_to_fool_a_frozen_discriminator():
    """With the discriminator reset to its initial weights after every step (so only G moves), the
    real GAN step raises D0(G(z)) on fresh noise: the generator's gradient points the right way."""
    model, state, cfg = build("gan", lr=2e-3)
    step = jax.jit(tasks.get("gan").train_step(model, cfg))
    batch = jax.tree.map(jnp.asarray, task_arrays("gan", 32, seed=3))
    d0, d0_opt = state.params["discriminator"], state.opt_state["discriminator"]
    z = jax.random.normal(jax.random.key(7), (64, model.latent_dim))

    def fooled(state) -> float:
        """Mean D0(G(z)) (batch statistics in both, as in training)."""
        variables = {"params": {**state.params, "discriminator": d0}, **state.model_state}
        images, _ = state.apply_fn(variables, z, train=True, method="generate", mutable=["batch_stats"])
        logits, _ = state.apply_fn(variables, images, train=True, method="discriminate", mutable=["batch_stats"])
        return float(jax.nn.sigmoid(logits).mean())

    before = fooled(state)
    for _ in range(15):
        state, _ = step(state, batch)
        state = state.replace(params={**state.params, "discriminator": d0}, opt_state={**state.opt_state, "discriminator": d0_opt})
    after = fooled(state)
    assert after > before + 0.1, (before, after)


def test_divergence_before_any_checkpoint_says_none_was_saved(tfds_dir, tmp_path):
    """Diverging in the first epoch: the message says no checkpoint exists (not 'step None')."""
    from train.loop import TrainingDiverged, fit

    with pytest.raises(TrainingDiverged, match="No checkpoint was saved before it") as raised:
        fit(_tiny_fit_cfg(tfds_dir, lr=1e30), tmp_path, log=lambda *a: None)
    assert "step None" not in str(raised.value)
