"""Registry-driven model checks: every registered model gets all of these, no boilerplate."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo import cnn, gan, mlp, rnn

MODELS = zoo.list_models()
EXPECTED = {
    "autoencoder", "char_lstm", "cnn", "cnn_cifar", "dcgan",
    "lstm", "mlp", "mlp_binary", "mlp_small", "multitask",
}


def _example(spec, batch=3, seed=1):
    shape = spec.input.example_shape(batch)
    key = jax.random.key(seed)
    if spec.input.dtype == "int32":
        return jax.random.randint(key, shape, 0, 65, jnp.int32)
    return jax.random.uniform(key, shape, jnp.float32)


def _expected_shapes(output, batch, time=8):
    return jax.tree.map(
        lambda s: (batch,) + tuple(time if d is None else d for d in s),
        output,
        is_leaf=lambda s: isinstance(s, tuple),
    )


@pytest.fixture(scope="module", params=MODELS)
def built(request):
    spec = zoo.get_spec(request.param)
    model = zoo.create(spec.name)
    variables = zoo.init(model, jax.random.key(0))
    return spec, model, variables


def test_registry_lists_every_tutorial_model():
    assert set(MODELS) == EXPECTED
    assert MODELS == sorted(MODELS)


def test_param_count_is_pinned(built):
    spec, _, variables = built
    assert zoo.param_count(variables) == spec.num_params


def test_output_shape_and_finite(built):
    spec, model, variables = built
    x = _example(spec)
    out = model.apply(variables, x)
    shapes = jax.tree.map(lambda a: a.shape, out)
    assert shapes == _expected_shapes(spec.output, 3)
    for leaf in jax.tree.leaves(out):
        assert leaf.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(leaf)))


def test_jit_equals_eager_and_compiles_once(built):
    spec, model, variables = built
    x = _example(spec)
    fwd = jax.jit(lambda v, x: model.apply(v, x))
    eager = model.apply(variables, x)
    jitted = fwd(variables, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), eager, jitted)
    fwd(variables, _example(spec, seed=2))  # same shapes: no recompile
    assert fwd._cache_size() == 1


def test_train_mode_runs(built):
    spec, model, variables = built
    x = _example(spec)
    out, updates = model.apply(
        variables, x, train=True, rngs={"dropout": jax.random.key(3)},
        mutable=["batch_stats"],
    )
    if "batch_stats" in variables:  # BatchNorm must update its running statistics in train mode
        changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], updates["batch_stats"])
        assert any(jax.tree.leaves(changed))
    else:
        assert not updates


def test_spec_matches_direct_use(built):
    spec, model, _ = built
    direct = spec.module(**spec.defaults)
    assert direct == model
    assert model.input_spec() == spec.input


@pytest.mark.parametrize("name", MODELS)
def test_bad_input_rank_and_dtype(name):
    spec = zoo.get_spec(name)
    model = zoo.create(name)
    variables = zoo.init(model, jax.random.key(0))
    good = _example(spec)
    with pytest.raises(ValueError, match=r"expects input of shape \(batch"):
        model.apply(variables, good[0])  # no batch axis
    wrong_dtype = good.astype(jnp.float32) if spec.input.dtype == "int32" else (good * 255).astype(jnp.uint8)
    with pytest.raises(ValueError, match="dtype"):
        model.apply(variables, wrong_dtype)
    with pytest.raises(ValueError, match="expects input"):
        zoo.init(model, jax.random.key(0), wrong_dtype)


@pytest.mark.parametrize("name,shape", [
    ("cnn", (2, 32, 32, 1)), ("cnn", (2, 28, 28, 3)), ("cnn_cifar", (2, 28, 28, 1)),
    ("autoencoder", (2, 32, 32, 1)), ("lstm", (2, 28, 20)), ("mlp", (2, 784, 2)),
])
def test_bad_image_size_names_the_spec(name, shape):
    model = zoo.create(name)
    variables = zoo.init(model, jax.random.key(0))
    with pytest.raises(ValueError) as err:
        model.apply(variables, jnp.zeros(shape, jnp.float32))
    msg = str(err.value)
    assert str(zoo.get_spec(name).input) in msg and str(shape) in msg


def test_uint8_hint():
    model = zoo.create("cnn")
    variables = zoo.init(model, jax.random.key(0))
    with pytest.raises(ValueError, match="astype"):
        model.apply(variables, np.zeros((1, 28, 28, 1), np.uint8))


def test_unknown_name_suggests_close_match():
    with pytest.raises(zoo.UnknownModelError, match="Did you mean 'cnn'"):
        zoo.create("ccn")
    with pytest.raises(KeyError):
        zoo.get_spec("resnet50")


def test_unknown_override_suggests_close_field():
    with pytest.raises(TypeError, match="num_classes"):
        zoo.create("cnn", num_clases=5)
    model = zoo.create("cnn", num_classes=5)
    assert model.num_classes == 5
    out = model.apply(zoo.init(model, jax.random.key(0)), jnp.zeros((2, 28, 28, 1)))
    assert out.shape == (2, 5)


def test_direct_use_without_registry():
    net = cnn.CNN(num_classes=10)
    variables = zoo.init(net, jax.random.key(0))
    assert zoo.param_count(variables) == 50_186
    assert mlp.MLP().apply(zoo.init(mlp.MLP(), jax.random.key(0)), jnp.zeros((1, 28, 28, 1))).shape == (1, 10)


def test_max_pool_2x2_matches_reduce_window():
    x = jax.random.normal(jax.random.key(0), (2, 7, 9, 3))
    import flax.linen as nn

    np.testing.assert_array_equal(cnn.max_pool_2x2(x), nn.max_pool(x, (2, 2), (2, 2)))


def test_gan_parts_usable_separately():
    g, d = gan.Generator(), gan.Discriminator()
    z = jax.random.normal(jax.random.key(0), (4, 100))
    gv = zoo.init(g, jax.random.key(1))
    dv = zoo.init(d, jax.random.key(2))
    images = g.apply(gv, z)
    assert images.shape == (4, 28, 28, 1)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert d.apply(dv, images).shape == (4, 1)
    model = zoo.create("dcgan")
    variables = zoo.init(model, jax.random.key(0))
    assert set(variables["params"]) == {"generator", "discriminator"}
    logits = model.apply(variables, model.apply(variables, z), method="discriminate")
    assert logits.shape == (4, 1)


def test_char_lstm_generate():
    model = zoo.create("char_lstm")
    variables = zoo.init(model, jax.random.key(0))
    prompt = jnp.asarray(rnn.encode("ROMEO:"))[None]
    gen = jax.jit(lambda v, r, p: model.apply(v, r, p, 20, method="generate"))
    a = gen(variables, jax.random.key(1), prompt)
    b = gen(variables, jax.random.key(1), prompt)
    assert a.shape == (1, 20) and a.dtype == jnp.int32
    np.testing.assert_array_equal(a, b)
    assert int(a.min()) >= 0 and int(a.max()) < 65
    text = rnn.decode(a[0])
    assert len(text) == 20
    # greedy sampling must follow the model's own argmax, step by step
    greedy = model.apply(variables, jax.random.key(1), prompt, 5, 1e-9, method="generate")
    seq = prompt
    for t in range(5):
        nxt = jnp.argmax(model.apply(variables, seq)[:, -1], -1)
        assert int(nxt[0]) == int(greedy[0, t])
        seq = jnp.concatenate([seq, nxt[:, None].astype(jnp.int32)], 1)


def test_char_vocab_roundtrip_and_unknown():
    assert rnn.decode(rnn.encode("To be, or not")) == "To be, or not"
    with pytest.raises(ValueError, match="'é'"):
        rnn.encode("café")


def test_import_zoo_is_light():
    code = (
        "import sys, zoo; heavy = [m for m in ('tensorflow', 'tensorflow_datasets', 'optax', 'orbax', "
        "'orbax.checkpoint', 'torch', 'train') if m in sys.modules]; print(heavy); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
