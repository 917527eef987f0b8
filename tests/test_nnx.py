"""zoo.nnx: every registry model as a native NNX module with the Linen model's parameter tree,
outputs, gradients, checks and shipped metrics; train.fit trains NNX modules like Linen ones.
Registry-driven: a new model (with its NNX twin) needs no new test here."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import train
import zoo
import zoo.nnx

MODELS = zoo.list_models()
SHIPPED = [(name, tag) for name, tags in sorted(zoo.available().items()) for tag in sorted(tags)]


def _example(name: str, batch: int = 2):
    spec = zoo.get_spec(name).input
    x = jax.random.uniform(jax.random.key(2), spec.example_shape(batch, free_axis=5))
    if spec.dtype == "int32":
        return (x * zoo.create(name).vocab_size).astype(jnp.int32)
    return x


def _images(batch: int = 2):
    return jax.random.uniform(jax.random.key(3), (batch, 28, 28, 1))


def _close(a, b, tol=1e-6):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def test_import_zoo_leaves_flax_nnx_for_first_use():
    code = ("import sys, zoo; assert 'flax.nnx' not in sys.modules and 'zoo.nnx' not in sys.modules; "
            "assert zoo.nnx.list_models() == zoo.list_models()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_list_models_covers_the_registry():
    assert zoo.nnx.list_models() == MODELS
    assert zoo.nnx.list_models("cnn*", pretrained=True) == zoo.list_models("cnn*", pretrained=True)


@pytest.mark.parametrize("name", MODELS)
def test_parameter_tree_is_the_linen_one(name):
    """Names, shapes, dtypes and collections of a fresh NNX module equal Linen's `zoo.init`."""
    net = zoo.nnx.create(name, rngs=nnx.Rngs(0))
    linen = jax.eval_shape(lambda: zoo.init(zoo.create(name), jax.random.key(0)))
    mine = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), zoo.nnx.variables(net))
    assert jax.tree.structure(mine) == jax.tree.structure(linen)
    assert jax.tree.leaves(mine) == jax.tree.leaves(linen)
    assert nnx.to_pure_dict(nnx.state(net, nnx.Param)).keys() == linen["params"].keys()
    assert sum(a.size for a in jax.tree.leaves(nnx.state(net, nnx.Param))) == zoo.get_spec(name).num_params


# the three recurrent/convolutional-transpose models take 10-12 s each: run with the slow tests
_SLOW_PARITY = ("autoencoder", "lstm", "char_lstm")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW_PARITY else n for n in MODELS])
def test_outputs_and_gradients_equal_linen_on_the_same_weights(name):
    model = zoo.create(name)
    variables = zoo.init(model, jax.random.key(1))
    net = zoo.nnx.from_variables(name, variables)
    _close(zoo.nnx.variables(net), variables, tol=0)  # the weights went in unchanged
    x = _example(name)
    images = _images() if name == "dcgan" else x  # embed of a GAN reads images
    _close(net(x), model.apply(variables, x))
    _close(net.embed(images), model.apply(variables, images, method="embed"))
    _close(net.from_embedding(net.embed(images)), model.apply(
        variables, model.apply(variables, images, method="embed"), method="from_embedding"))

    # train mode draws no randomness in the registry defaults (dropout 0): outputs and the
    # updated BatchNorm statistics agree too
    net.train()
    out, new_state = model.apply(variables, x, train=True, mutable=["batch_stats"])
    _close(net(x), out)
    if "batch_stats" in variables:
        _close(nnx.to_pure_dict(nnx.state(net, nnx.BatchStat)), new_state["batch_stats"])
    net = zoo.nnx.from_variables(name, variables)

    def linen_loss(params):
        out = model.apply({**variables, "params": params}, x)
        return sum(jnp.sum(jnp.sin(o)) for o in jax.tree.leaves(out))

    def nnx_loss(net):
        return sum(jnp.sum(jnp.sin(o)) for o in jax.tree.leaves(net(x)))

    grads = nnx.grad(nnx_loss)(net)
    _close(nnx.to_pure_dict(grads), jax.grad(linen_loss)(variables["params"]), tol=1e-5)


@pytest.mark.slow  # two GAN programs compiled (16 s); the dcgan parity case above runs by default
def test_gan_players_and_dropout_train_mode():
    g = zoo.nnx.gan.Generator(rngs=nnx.Rngs(0))
    d = zoo.nnx.gan.Discriminator(rngs=nnx.Rngs(1))
    images = g(jnp.zeros((2, 100)))
    assert images.shape == (2, 28, 28, 1) and d(images).shape == (2, 1)
    assert isinstance(d.bn_1.mean, nnx.BatchStat)

    net = zoo.nnx.cnn.CNN(dropout_rate=0.5, rngs=nnx.Rngs(0, dropout=5))
    x = _images()
    assert net.dropout.deterministic  # built in eval mode, as Linen's train=False default
    np.testing.assert_array_equal(net(x), net(x))
    net.train()
    a, b = net(x), net(x)  # dropout keys drawn from the module's nnx.Rngs stream
    assert not np.allclose(a, b)
    net.eval()
    np.testing.assert_allclose(net(x), zoo.create("cnn", dropout_rate=0.5).apply(zoo.nnx.variables(net), x), atol=1e-6)


def test_char_lstm_generate_matches_linen():
    model = zoo.create("char_lstm", hidden=16, embed_dim=8)
    variables = zoo.init(model, jax.random.key(0))
    net = zoo.nnx.from_variables(model, variables)
    assert isinstance(net.table, nnx.Embed) and "embed" in nnx.to_pure_dict(nnx.state(net, nnx.Param))
    prompt = jnp.asarray(zoo.rnn.encode("ROMEO:"))[None]
    ours = net.generate(jax.random.key(4), prompt, 12)
    theirs = model.apply(variables, jax.random.key(4), prompt, 12, method="generate")
    np.testing.assert_array_equal(ours, theirs)
    assert ours.shape == (1, 12)


def _message(fn):
    with pytest.raises((ValueError, TypeError)) as info:
        fn()
    return type(info.value), str(info.value)


@pytest.mark.parametrize("bad", [dict(num_classes=0), dict(features=()), dict(dropout_rate=1.0), dict(featurs=(8,))],
                         ids=["num_classes", "features", "rate", "typo"])
def test_options_are_checked_with_the_linen_messages(bad):
    ours = _message(lambda: zoo.nnx.create("cnn", rngs=nnx.Rngs(0), **bad))
    assert ours == _message(lambda: zoo.create("cnn", **bad))
    direct = _message(lambda: zoo.nnx.cnn.CNN(rngs=nnx.Rngs(0), **bad))
    assert direct[0] == ours[0] and ("featurs" in direct[1] if "featurs" in bad else direct == ours)


def test_inputs_are_checked_with_the_linen_messages():
    model, net = zoo.create("cnn"), zoo.nnx.create("cnn", rngs=nnx.Rngs(0))
    variables = zoo.nnx.variables(net)
    bad = jnp.zeros((2, 32, 32, 3))
    assert _message(lambda: net(bad)) == _message(lambda: model.apply(variables, bad))
    lm = zoo.nnx.create("char_lstm", rngs=nnx.Rngs(0), hidden=8, embed_dim=4)
    tokens = jnp.array([[1, 99]])
    assert _message(lambda: lm(tokens)) == _message(lambda: lm.to_linen().apply(zoo.nnx.variables(lm), tokens))
    with pytest.raises(zoo.UnknownModelError, match="Did you mean 'cnn'"):
        zoo.nnx.create("cnnn", rngs=nnx.Rngs(0))


def test_from_variables_is_strict():
    variables = zoo.init(zoo.create("mlp_small"), jax.random.key(0))
    wrong = {"params": {**variables["params"], "head": {"kernel": jnp.zeros((64, 3)), "bias": jnp.zeros(3)}}}
    with pytest.raises(ValueError, match=r"params/head/bias: expected shape \(10,\), found \(3,\)"):
        zoo.nnx.from_variables("mlp_small", wrong)
    missing = {"params": {k: v for k, v in variables["params"].items() if k != "head"}}
    with pytest.raises(ValueError, match="params/head/bias: missing"):
        zoo.nnx.from_variables("mlp_small", missing)


def test_load_with_a_new_head_and_export_round_trip(tmp_path):
    net = zoo.nnx.load("cnn", pretrained="mnist", num_classes=3)
    assert net.head.kernel.shape == (3136, 3) and net.num_classes == 3
    shipped = zoo.nnx.load("cnn", pretrained="mnist")
    _, linen_vars = zoo.load("cnn", pretrained="mnist")
    _close(zoo.nnx.variables(shipped), jax.tree.map(jnp.asarray, linen_vars), tol=0)
    from zoo.formats.safetensors_export import write_safetensors

    write_safetensors(tmp_path / "cnn.safetensors", "cnn", zoo.nnx.variables(shipped))
    again = zoo.nnx.load("cnn", path=str(tmp_path / "cnn.safetensors"))
    _close(zoo.nnx.variables(again), zoo.nnx.variables(shipped), tol=0)


@pytest.mark.slow  # ten full test-split evaluations; the Linen twin of each runs in the default suite
@pytest.mark.parametrize("name,tag", SHIPPED, ids=[f"{n}.{t}" for n, t in SHIPPED])
def test_shipped_weights_reproduce_their_metric_through_nnx(name, tag, tfds_dir):
    """tests/test_shipped.py's check, with the forward pass computed by the NNX module."""
    from tests.test_shipped import assert_reproduces
    from train.evaluate import evaluate_run
    from train.config import resolve
    from train.nnx_adapter import LinenView
    from zoo.pretrained import read_manifest

    net = zoo.nnx.load(name, pretrained=tag)
    manifest = read_manifest(name, tag)
    overrides = {k: v for k, v in (manifest.get("train_config") or {}).items() if k != "model"}
    cfg = resolve(name, {**overrides, "data_dir": str(tfds_dir)})
    metrics = evaluate_run(cfg, LinenView(net), zoo.nnx.variables(net), manifest["metric"]["split"])
    assert_reproduces(name, tag, manifest["metric"], metrics)


# ---------------------------------------------------------------- the engine


def _arrays(n=96, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.random((n, 28, 28, 1), dtype=np.float32), "y": rng.integers(0, 10, n)}


TIMING = ("epoch_s", "compile_s", "examples_per_s")


def _history(result):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in result.history]


def test_fit_an_nnx_cnn_gives_the_linen_history_and_updates_the_module():
    """Same seed, same starting weights (init="glorot" redraws every kernel from the seed;
    biases start at zero in both): the same metrics, epoch by epoch, and the same weights."""
    common = dict(epochs=2, batch_size=16, lr=1e-3, init="glorot", seed=3, log=lambda *_: None)
    linen = train.fit(zoo.create("cnn", features=(4, 8)), _arrays(), **common)
    net = zoo.nnx.create("cnn", features=(4, 8), rngs=nnx.Rngs(0))
    result = train.fit(net, _arrays(), **common)
    assert result.model is net and net.dropout.deterministic  # trained in place, back in eval mode
    assert len(result.history) == 2
    assert _history(result) == _history(linen)
    _close(zoo.nnx.variables(net), linen.variables, tol=0)


def test_fit_a_user_written_nnx_module():
    class Tiny(nnx.Module):
        def __init__(self, rngs):
            self.hidden = nnx.Linear(784, 32, rngs=rngs)
            self.drop = nnx.Dropout(0.1, rngs=rngs)
            self.norm = nnx.BatchNorm(32, rngs=rngs)
            self.out = nnx.Linear(32, 2, rngs=rngs)

        def __call__(self, x):
            h = self.norm(nnx.relu(self.hidden(x.reshape(x.shape[0], -1))))
            return self.out(self.drop(h))

    data = _arrays(256)
    data["y"] = data["y"] % 2
    data["x"] = data["x"] * 0.2
    data["x"][:, :14] += data["y"][:, None, None, None] * 0.5  # the class shows in the top half
    net = Tiny(nnx.Rngs(0))
    before = np.asarray(net.hidden.kernel[...]).copy()
    result = train.fit(net, data, task="classification", epochs=4, batch_size=32, lr=3e-3, log=lambda *_: None)
    assert result.model is net and not np.allclose(before, net.hidden.kernel[...])
    assert result.metrics["val_accuracy"] >= 0.9, result.history
    assert not np.allclose(nnx.to_pure_dict(nnx.state(net, nnx.BatchStat))["norm"]["var"], 1.0)  # stats trained
    with pytest.raises(ValueError, match="pass task="):
        train.fit(Tiny(nnx.Rngs(0)), data, epochs=1)


_CHILD = textwrap.dedent("""
    import sys, jax, numpy as np
    from flax import nnx
    import train, zoo.nnx
    rng = np.random.default_rng(0)
    data = {"x": rng.random((640, 28, 28, 1), dtype=np.float32), "y": rng.integers(0, 10, 640)}
    net = zoo.nnx.create("cnn", features=(4, 8), dropout_rate=0.3, rngs=nnx.Rngs(0))
    train.fit(net, data, workdir=sys.argv[1], epochs=3, batch_size=32, seed=1, log_every=1,
              checkpoint_steps=3, keep_checkpoints=50, num_devices=1)
    np.savez(sys.argv[1] + "/final.npz", *[np.asarray(a) for a in jax.tree.leaves(zoo.nnx.variables(net))])
""")


@pytest.mark.slow  # several training processes, killed and resumed
def test_kill_9_resume_of_an_nnx_run_is_exact(tmp_path):
    import random
    import time

    from tests.test_interruptions import _records, _wait_for_new_checkpoint

    cmd = [sys.executable, "-c", _CHILD]
    ref = tmp_path / "ref"
    subprocess.run(cmd + [str(ref)], check=True, capture_output=True, timeout=600)
    workdir = tmp_path / "w"
    rng = random.Random(3)
    for _ in range(3):
        proc = subprocess.Popen(cmd + [str(workdir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if not _wait_for_new_checkpoint(workdir, proc):
            break
        time.sleep(rng.uniform(0.0, 1.0))
        proc.kill()
        proc.communicate(timeout=60)
    subprocess.run(cmd + [str(workdir)], check=True, capture_output=True, timeout=600)
    assert _records(workdir) == _records(ref)
    final, expected = np.load(workdir / "final.npz"), np.load(ref / "final.npz")
    assert len(final.files) == len(expected.files) > 0
    for key in expected.files:
        np.testing.assert_array_equal(final[key], expected[key])


def _compiled_op_counts(model, variables, x, y) -> dict:
    """Counts of each HLO op in the compiled loss-and-gradient program of `model.apply`."""
    import collections
    import re

    import optax

    def loss(v):
        logits = model.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    text = jax.jit(jax.value_and_grad(loss)).lower(variables).compile().as_text()
    return collections.Counter(re.findall(r"= \S+ (\w[\w-]*)\(", text))


@pytest.mark.parametrize("name", ["cnn", "lstm"])
def test_train_fit_compiles_the_nnx_model_to_the_linen_program(name):
    """The engine's view of an NNX net merges it inside the trace, so XLA gets the Linen program:
    no per-step cost for NNX in train.fit beyond noise (bench/nnx_overhead.py times it)."""
    from train.nnx_adapter import LinenView

    linen = zoo.create(name)
    variables = zoo.init(linen, jax.random.key(0))
    spec = linen.input_spec()
    x = jnp.zeros(spec.example_shape(8), spec.dtype)
    y = jnp.zeros((8,), jnp.int32)
    view = LinenView(zoo.nnx.from_variables(name, variables))
    assert _compiled_op_counts(view, variables, x, y) == _compiled_op_counts(linen, variables, x, y)


def test_the_writers_take_an_nnx_net_as_it_is(tmp_path):
    """What an NNX user holds is the net: every format writes it without a conversion step."""
    from zoo import formats

    net = zoo.nnx.create("cnn", rngs=nnx.Rngs(3))
    expected = zoo.nnx.variables(net)
    for fmt, path in (("orbax", tmp_path / "export"), ("safetensors", tmp_path / "cnn.safetensors")):
        formats.write(fmt, path, "cnn", net)
        _, loaded = zoo.load("cnn", path=path)
        for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(loaded)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _fit_both(name: str, data: dict, **fields):
    """train.fit on the Linen model and on its NNX twin (the same model fields, seed and glorot
    redraw): (Linen result, NNX result, the NNX net)."""
    common = dict(epochs=2, batch_size=16, lr=1e-3, init="glorot", seed=3, log=lambda *_: None)
    linen = train.fit(zoo.create(name, **fields), data, **common)
    net = zoo.nnx.create(name, rngs=nnx.Rngs(0), **fields)
    return linen, train.fit(net, data, **common), net


@pytest.mark.slow  # compiles the GAN's two-player train and eval programs twice (Linen, NNX): ~30 s idle
def test_fit_an_nnx_dcgan_gives_the_linen_history_and_weights():
    """Two players, two optimizer states: both trained as in Linen, both written back into the net."""
    linen, result, net = _fit_both("dcgan", {"x": _arrays(64)["x"]}, latent_dim=8, g_features=(8, 4),
                                   d_features=(4, 8))
    assert result.model is net and len(result.history) == 2
    assert _history(result) == _history(linen)
    _close(zoo.nnx.variables(net), linen.variables, tol=0)
    assert net.generator(jnp.zeros((2, 8))).shape == (2, 28, 28, 1)  # the trained net samples


@pytest.mark.slow  # two trainings compiled; the cnn test above covers train.fit on NNX by default
def test_fit_an_nnx_multitask_net_gives_the_linen_history_and_weights():
    """Dict targets, one head per task: the same per-head metrics and weights as in Linen."""
    data = _arrays()
    data["y"] = {"digit": data["y"], "parity": data["y"] % 2}
    linen, result, net = _fit_both("multitask", data, trunk=(16,))
    assert result.model is net and len(result.history) == 2
    assert {"val_digit_accuracy", "val_parity_accuracy"} <= result.history[-1].keys()
    assert _history(result) == _history(linen)
    _close(zoo.nnx.variables(net), linen.variables, tol=0)
