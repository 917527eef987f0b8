"""Registry-driven model checks: every registered model gets all of these, no boilerplate."""

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import zoo
from train.config import CONFIG_DIR
from zoo import autoencoder, cnn, gan, mlp, multitask, registry, rnn

MODELS = zoo.list_models()
# Each model has a recipe (train/configs/<name>.json): a model lost from the registry (its
# family not imported) or a recipe without a model shows here, with no list to keep by hand.
RECIPES = {p.stem for p in CONFIG_DIR.glob("*.json")}


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


def test_registry_lists_every_model_with_a_recipe():
    assert set(MODELS) == RECIPES
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
    """The registry builds its class with its defaults, and reads its input spec from it."""
    spec, model, _ = built
    direct = spec.module(**spec.defaults)
    assert model == direct
    assert type(model) is spec.module
    assert spec.input == direct.input_spec()


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


def test_init_refuses_a_model_too_large_for_memory():
    """Options asking for terabytes of weights fail from their shapes (nothing allocated) with the
    number, not with an out-of-memory traceback; ZOO_MAX_PARAM_BYTES sets the limit."""
    huge = zoo.create("cnn", num_classes=10**8)  # a 3136 x 1e8 head: 1.25 TB of float32
    with pytest.raises(ValueError, match=r"^CNN with these options has 313,700,[\d,]+ parameters \(1254.[\d] GB float32\); "
                                         r"the limit is [\d.]+ [kMG]B \(half of this machine's memory; "
                                         r"set ZOO_MAX_PARAM_BYTES to change it\)$"):
        zoo.init(huge, jax.random.key(0))


def test_max_param_bytes_setting(monkeypatch):
    model = zoo.create("mlp", hidden=(8,))  # 784*8 + 8 + 8*10 + 10 = 6370 float32 parameters
    monkeypatch.setenv("ZOO_MAX_PARAM_BYTES", str(6370 * 4))
    assert registry.param_count(zoo.init(model, jax.random.key(0))) == 6370  # at the limit: fine
    monkeypatch.setenv("ZOO_MAX_PARAM_BYTES", str(6370 * 4 - 1))
    with pytest.raises(ValueError, match=r"^MLP with these options has 6,370 parameters \(25.5 kB float32\); "
                                         r"the limit is 25.5 kB \(ZOO_MAX_PARAM_BYTES\)$"):
        zoo.init(model, jax.random.key(0))
    monkeypatch.setenv("ZOO_MAX_PARAM_BYTES", "lots")
    with pytest.raises(ValueError, match="^ZOO_MAX_PARAM_BYTES must be a positive number of bytes, got 'lots'$"):
        zoo.init(model, jax.random.key(0))


def test_direct_use_without_registry():
    net = cnn.CNN(num_classes=10)
    variables = zoo.init(net, jax.random.key(0))
    assert zoo.param_count(variables) == 50_186
    assert mlp.MLP().apply(zoo.init(mlp.MLP(), jax.random.key(0)), jnp.zeros((1, 28, 28, 1))).shape == (1, 10)


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


# ---------------------------------------------------------------- embed


def _embed_input(spec, model, batch=3):
    """What `embed` reads: the model's input, except the DCGAN's (images for its discriminator)."""
    if hasattr(model, "discriminate"):
        return jax.random.uniform(jax.random.key(4), (batch, 28, 28, 1), jnp.float32)
    return _example(spec, batch)


def test_embed_shape_and_head_of_embed_is_the_forward_pass(built):
    spec, model, variables = built
    x = _embed_input(spec, model)
    feats = model.apply(variables, x, method="embed")
    assert feats.shape == _expected_shapes(spec.embedding, 3)
    head_of_embed = model.apply(variables, feats, method="from_embedding")
    full = model.apply(variables, x, method="discriminate" if spec.name == "dcgan" else None)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), head_of_embed, full)
    assert "embed" not in {f.name for f in dataclasses.fields(spec.module)}  # no field shadows the method


def test_embed_is_what_the_head_reads():
    """Spot checks that `embed` is the layer before the head, not just any tensor of that shape."""
    x = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))
    net = cnn.CNN()
    v = zoo.init(net, jax.random.key(1))
    feats = net.apply(v, x, method="embed")
    want = v["params"]["head"]["bias"] + feats @ v["params"]["head"]["kernel"]
    np.testing.assert_allclose(net.apply(v, x), want, rtol=1e-5, atol=1e-5)
    assert float(feats.min()) >= 0.0  # ReLU + max pool features

    lm = rnn.CharLSTM(embed_dim=8, hidden=16, num_layers=2)
    toks = jnp.asarray(rnn.encode("To be"))[None]
    lv = zoo.init(lm, jax.random.key(2), toks)
    hs = lm.apply(lv, toks, method="embed")  # (1, 5, 16)
    _, finals = lm.apply(lv, toks, return_carries=True)
    np.testing.assert_allclose(hs[:, -1], finals[-1][0], rtol=1e-6)  # top layer's last h

    ae = autoencoder.ConvAutoencoder()
    av = zoo.init(ae, jax.random.key(3))
    code = ae.apply(av, x, method="embed")
    np.testing.assert_array_equal(code, ae.apply(av, x, method="encode"))
    np.testing.assert_allclose(ae.apply(av, code, method="decode"), ae.apply(av, x), rtol=1e-6, atol=1e-6)


def test_cnn_embed_has_no_dropout():
    net = cnn.CNN(dropout_rate=0.5)
    x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
    v = zoo.init(net, jax.random.key(1))
    rngs = {"dropout": jax.random.key(2)}
    np.testing.assert_array_equal(net.apply(v, x, train=True, rngs=rngs, method="embed"), net.apply(v, x, method="embed"))
    # ... while the forward pass in train mode does drop features before the head
    assert not np.allclose(net.apply(v, x, train=True, rngs=rngs), net.apply(v, x))


# ---------------------------------------------------------------- precision


def test_bfloat16_compute_float32_params(built):
    spec, model, variables = built
    x = _example(spec)
    if spec.name == "dcgan":
        x = jax.random.normal(jax.random.key(1), x.shape)
    low = zoo.create(spec.name, dtype=jnp.bfloat16)
    assert low.param_dtype == jnp.float32
    shapes = jax.eval_shape(lambda: zoo.init(low, jax.random.key(0)))
    assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
    out32 = model.apply(variables, x)
    out16 = low.apply(variables, x)
    for lo, hi in zip(jax.tree.leaves(out16), jax.tree.leaves(out32)):
        assert lo.dtype == jnp.bfloat16
        assert bool(jnp.all(jnp.isfinite(lo)))
        # bfloat16 keeps ~3 significant digits; measured errors are <= 0.5% of the output's scale
        scale = float(jnp.max(jnp.abs(hi)))
        np.testing.assert_allclose(np.asarray(lo, np.float32), hi, rtol=0, atol=0.03 * scale)
    assert not np.array_equal(np.asarray(jax.tree.leaves(out16)[0], np.float32), jax.tree.leaves(out32)[0])


def test_param_dtype_is_used():
    net = mlp.MLP(hidden=(8,), param_dtype=jnp.bfloat16)
    v = zoo.init(net, jax.random.key(0))
    assert {leaf.dtype for leaf in jax.tree.leaves(v)} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.expected_skip("token-input models (lstm, char_lstm) have no float input to cast")
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_low_precision_input_is_cast_to_the_compute_dtype(built, dtype):
    spec, model, variables = built
    if spec.input.dtype != "float32":
        pytest.skip("token input")
    x = _example(spec).astype(dtype)
    out = model.apply(variables, x)
    same = model.apply(variables, x.astype(jnp.float32))  # the same values, given as float32
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(same)):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- input validation


def test_batch_size_zero_is_a_clear_error(built):
    spec, model, variables = built
    empty = jnp.zeros(spec.input.example_shape(0), spec.input.dtype)
    with pytest.raises(ValueError, match="batch size 0"):
        model.apply(variables, empty)
    with pytest.raises(ValueError, match="batch size 0"):
        model.apply(variables, jnp.zeros((0,) + _embed_input(spec, model).shape[1:], empty.dtype), method="embed")
    with pytest.raises(ValueError, match="batch size 0"):
        zoo.init(model, jax.random.key(0), empty)


@pytest.fixture(scope="module")
def char_lstm():
    model = rnn.CharLSTM(embed_dim=8, hidden=16, num_layers=1)
    return model, zoo.init(model, jax.random.key(0))


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.integers(65, 2**31 - 1), st.integers(-(2**31), -1)))
@example(65)
@example(10**6)
@example(-1)
def test_char_lstm_rejects_out_of_range_tokens(char_lstm, bad):
    model, variables = char_lstm
    tokens = np.array([[1, 2, bad, 3]], np.int32)
    with pytest.raises(ValueError, match=rf"token ids in \[0, 65\); got {bad} at index \(0, 2\)"):
        model.apply(variables, tokens)
    with pytest.raises(ValueError, match=r"token ids in \[0, 65\)"):
        model.apply(variables, jnp.asarray(tokens), method="embed")
    with pytest.raises(ValueError, match=r"token ids in \[0, 65\)"):
        model.apply(variables, jax.random.key(0), tokens, 3, method="generate")


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(0, 64), min_size=4, max_size=4))
def test_char_lstm_accepts_every_in_range_token(char_lstm, ids):
    model, variables = char_lstm
    out = model.apply(variables, np.array([ids], np.int32))
    assert out.shape == (1, 4, 65)


def test_char_lstm_tokens_are_not_checked_under_jit(char_lstm):
    """Inside jit the values are unknown: no host check (it would cost a sync per step)."""
    model, variables = char_lstm
    out = jax.jit(model.apply)(variables, jnp.array([[1, 70]], jnp.int32))
    assert out.shape == (1, 2, 65)


# ---------------------------------------------------------------- configuration validation

# (model, field) pairs that are sizes or counts: each must be an integer >= 1.
SIZE_FIELDS = [
    ("mlp", "num_classes"), ("cnn", "num_classes"), ("lstm", "num_classes"), ("lstm", "hidden"),
    ("lstm", "num_layers"), ("char_lstm", "vocab_size"), ("char_lstm", "embed_dim"),
    ("char_lstm", "hidden"), ("char_lstm", "num_layers"), ("autoencoder", "latent"),
    ("dcgan", "latent_dim"),
]
# (model, field, a bad value) for tuple-of-sizes fields
TUPLE_FIELDS = [
    ("mlp", "hidden", (500, 0)), ("mlp", "in_shape", ()), ("cnn", "features", ()),
    ("cnn", "features", (32, -1)), ("cnn", "in_shape", (28, 28)), ("lstm", "in_shape", (28, 0)),
    ("autoencoder", "features", (32, 64, 128)), ("dcgan", "g_features", (128, 0)),
    ("dcgan", "d_features", (32,)), ("multitask", "trunk", ()), ("multitask", "in_shape", (0,)),
]


def _rejects(name, field, value, what):
    spec = zoo.get_spec(name)
    for build in (lambda: zoo.create(name, **{field: value}), lambda: spec.module(**{**spec.defaults, field: value})):
        with pytest.raises(ValueError) as err:
            build()
        msg = str(err.value)
        assert field in msg and repr(value) in msg and what in msg and spec.module.__name__ in msg, msg


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(SIZE_FIELDS), st.one_of(st.integers(max_value=0), st.floats(0.5, 10), st.just(True)))
def test_sizes_must_be_positive_integers(field, value):
    _rejects(*field, value, "integer >= 1")


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(SIZE_FIELDS), st.integers(1, 10**6))
def test_positive_sizes_are_accepted(field, value):
    name, key = field
    assert getattr(zoo.create(name, **{key: value}), key) == value


@pytest.mark.parametrize("name,field,value", TUPLE_FIELDS)
def test_size_tuples_are_checked(name, field, value):
    _rejects(name, field, value, "integers >= 1")


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["mlp", "cnn"]), st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0), st.just(float("nan"))))
def test_dropout_rate_outside_unit_interval_is_rejected(name, rate):
    _rejects(name, "dropout_rate", rate, "[0, 1)")


@settings(max_examples=20, deadline=None)
@given(st.floats(0.0, 1.0, exclude_max=True))
def test_dropout_rate_in_unit_interval_is_accepted(rate):
    assert zoo.create("cnn", dropout_rate=rate).dropout_rate == rate


@pytest.mark.parametrize("heads", [(), (("digit", 0),), (("a", 2), ("a", 3)), (("", 2),), ("digit",)])
def test_multitask_heads_are_checked(heads):
    with pytest.raises(ValueError, match="heads"):
        multitask.MultiTaskNet(heads=heads)


def test_json_lists_are_valid_sizes():
    """Recipes give tuples as JSON lists (e.g. "in_shape": [28, 28, 1])."""
    net = zoo.create("mlp_binary", in_shape=[28, 28, 1])
    assert net.input_spec().shape == (28, 28, 1)


# ---------------------------------------------------------------- metadata


def test_class_names():
    digits = tuple(str(d) for d in range(10))
    for name in ("mlp", "mlp_small", "cnn", "lstm"):
        assert zoo.get_spec(name).class_names == digits
    assert zoo.get_spec("mlp_binary").class_names == ("even", "odd")
    assert zoo.get_spec("multitask").class_names == {"digit": digits, "parity": ("even", "odd")}
    assert "".join(zoo.get_spec("char_lstm").class_names) == rnn.TINY_SHAKESPEARE_VOCAB
    assert len(zoo.get_spec("char_lstm").class_names) == 65
    assert zoo.get_spec("cnn_cifar").class_names[:2] == ("airplane", "automobile")
    assert zoo.get_spec("autoencoder").class_names is None and zoo.get_spec("dcgan").class_names is None


def test_class_names_match_the_logits(built):
    spec, _, _ = built
    names, output = spec.class_names, spec.output
    if names is None:
        return
    if isinstance(names, dict):
        assert set(names) == set(output)
        pairs = [(names[k], output[k]) for k in names]
    else:
        pairs = [(names, output)]
    for labels, shape in pairs:
        logits = shape[-1]
        assert len(labels) == (2 if logits == 1 else logits)  # one logit: a binary classifier
        assert len(set(labels)) == len(labels)


def test_preprocessing_is_documented(built):
    spec, _, _ = built
    pre = spec.preprocessing
    assert pre and isinstance(pre, dict)
    if spec.input.dtype == "float32" and spec.name != "mlp_binary" and spec.task != "gan":
        assert pre["range"] == (0.0, 1.0)
        assert tuple(pre["shape"]) == spec.input.shape
    if spec.name in ("mlp", "cnn", "autoencoder", "multitask", "lstm"):
        assert "white digit on black" in pre["polarity"] and "1 - x" in pre["polarity"]
    if len(spec.input.shape) == 3:
        assert pre["layout"] == "NHWC"


def test_list_models_filters():
    assert zoo.list_models() == sorted(RECIPES)
    assert zoo.list_models("cnn*") == ["cnn", "cnn_cifar"]
    assert zoo.list_models("*lstm") == ["char_lstm", "lstm"]
    assert zoo.list_models("resnet*") == []
    shipped = zoo.list_models(pretrained=True)
    assert shipped == sorted(n for n in MODELS if zoo.get_spec(n).pretrained)
    assert "cnn" in shipped and "cnn_cifar" not in shipped  # cnn_cifar ships no weights
    assert zoo.list_models("cnn*", pretrained=True) == ["cnn"]


def test_task_is_a_free_label(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    kw = dict(output=(2,), embedding=(3,), num_params=0, description="d", follows="f", class_names=None, preprocessing={})
    spec = registry.register("probe", mlp.MLP, task="my-research-label", **kw)
    assert spec.task == "my-research-label" and "probe" in zoo.list_models()
    for bad in ("", None):
        with pytest.raises(ValueError, match="task must be a non-empty string"):
            registry.register(f"probe_{bad}", mlp.MLP, task=bad, **kw)


def test_import_zoo_is_light():
    code = (
        "import sys, zoo; heavy = [m for m in ('tensorflow', 'tensorflow_datasets', 'optax', 'orbax', "
        "'orbax.checkpoint', 'torch', 'train') if m in sys.modules]; print(heavy); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_init_compiles_fast_on_cpu_and_works_inside_a_trace():
    """zoo.init compiles its one-shot program without LLVM optimization on CPU; called inside
    another trace (jit, eval_shape) it becomes part of that program, with the same values up
    to the last bit of rounding."""
    assert registry.init_compiler_options() == (registry.INIT_CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu"
                                                else None)
    key = jax.random.key(3)
    top = zoo.init("cnn", key)
    inside = jax.jit(lambda k: zoo.init("cnn", k))(key)
    shapes = jax.eval_shape(lambda k: zoo.init("cnn", k), key)
    assert jax.tree.structure(top) == jax.tree.structure(inside) == jax.tree.structure(shapes)
    for a, b in zip(jax.tree.leaves(top), jax.tree.leaves(inside)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    again = zoo.init("cnn", key)  # deterministic
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(top), jax.tree.leaves(again)))


# ---------------------------------------------------------------- a new family


def test_a_new_family_converts_to_and_from_torch(monkeypatch):
    """A family declared outside zoo/ (tests/tiny_family.py), registered with nothing else edited,
    gets zoo.create, zoo.torch_model, zoo.to_torch and zoo.from_torch."""
    torch = pytest.importorskip("torch")
    from tests import tiny_family

    for table in ("_REGISTRY", "_TORCH", "_TWIN_CLASSES"):
        monkeypatch.setattr(registry, table, dict(getattr(registry, table)))
    tiny_family.register()
    assert "tiny" in zoo.list_models() and tiny_family.TinyNet in registry.torch_modules()

    model = zoo.create("tiny", num_classes=4)
    net = zoo.torch_model("tiny", num_classes=4).eval()
    variables = zoo.from_torch(model, net.state_dict())
    assert zoo.param_count(variables) == sum(p.numel() for p in net.parameters())
    x = np.random.default_rng(0).random((2, 4, 4, 2), np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(np.asarray(model.apply(variables, x)), want, rtol=1e-5, atol=1e-5)
    state = zoo.to_torch(model, variables)
    assert list(state) == list(net.state_dict())
    for key, value in net.state_dict().items():  # back to torch bit for bit (the Linear's rows permuted twice)
        assert torch.equal(state[key], value), key


@pytest.mark.slow  # a pytest subprocess importing jax and torch (~30 s on 2 cores)
def test_a_new_family_gets_the_registry_driven_checks():
    """The registry-driven tests of this file and of tests/test_torch_port.py run for a family
    registered from outside zoo/ (as a pytest plugin, before collection) and pass."""
    root = Path(__file__).resolve().parents[1]
    port = "tests/test_torch_port.py"
    select = "tiny or test_twins_take_every_architecture_field or test_twin_parameter_counts"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.tiny_family", "-v",
           "tests/test_models.py", port, "-k", select]
    run = subprocess.run(cmd, cwd=root, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(root), "ZOO_ALLOW_SKIPS": ""})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    passed = set(re.findall(r"^(\S+) PASSED", run.stdout, re.M))
    want = {
        "tests/test_models.py::test_param_count_is_pinned[tiny]",
        "tests/test_models.py::test_output_shape_and_finite[tiny]",
        "tests/test_models.py::test_jit_equals_eager_and_compiles_once[tiny]",
        "tests/test_models.py::test_spec_matches_direct_use[tiny]",
        "tests/test_models.py::test_embed_shape_and_head_of_embed_is_the_forward_pass[tiny]",
        "tests/test_models.py::test_bfloat16_compute_float32_params[tiny]",
        "tests/test_models.py::test_bad_input_rank_and_dtype[tiny]",
        "tests/test_models.py::test_batch_size_zero_is_a_clear_error[tiny]",
        "tests/test_models.py::test_train_mode_runs[tiny]",
        "tests/test_models.py::test_low_precision_input_is_cast_to_the_compute_dtype[tiny-float16]",
        "tests/test_models.py::test_class_names_match_the_logits[tiny]",
        "tests/test_models.py::test_preprocessing_is_documented[tiny]",
        f"{port}::test_from_torch_twin_parity[tiny]",
        f"{port}::test_to_torch_loads_strictly_and_round_trips[tiny]",
        f"{port}::test_twins_take_every_architecture_field",
        f"{port}::test_twin_parameter_counts",
    }
    assert want <= passed, sorted(want - passed)


# ---------------------------------------------------------------- char_lstm's vocabulary field


def test_char_lstm_vocab_is_a_field_and_vocab_size_follows():
    model = zoo.create("char_lstm", vocab="abc\n", embed_dim=4, hidden=8, num_layers=1)
    assert (model.vocab, model.vocab_size) == ("abc\n", 4)
    assert model.clone(hidden=6).vocab == "abc\n"  # resolved fields survive a clone
    assert zoo.init(model, jax.random.key(0))["params"]["head"]["kernel"].shape == (8, 4)
    default = zoo.create("char_lstm")
    assert (default.vocab, default.vocab_size) == (rnn.TINY_SHAKESPEARE_VOCAB, 65)
    assert zoo.create("char_lstm", vocab_size=65).vocab == rnn.TINY_SHAKESPEARE_VOCAB  # older configs
    bare = zoo.create("char_lstm", vocab_size=11)  # older configs: ids only, no characters
    assert (bare.vocab, bare.vocab_size) == (None, 11)
    with pytest.raises(ValueError, match="no vocabulary"):
        rnn.vocab_of(bare)


@pytest.mark.parametrize("fields,message", [
    (dict(vocab="abc", vocab_size=4), "vocab_size=4 disagrees with vocab \\(3 characters\\)"),
    (dict(vocab="aba"), "'a' appears twice"),
    (dict(vocab="ab\u00e9"), "ASCII characters only, got '\u00e9' at position 2"),
    (dict(vocab=""), "non-empty string"),
])
def test_char_lstm_bad_vocab_is_one_clear_error(fields, message):
    with pytest.raises(ValueError, match=message) as e:
        zoo.create("char_lstm", **fields)
    assert "\n" not in str(e.value)


def test_char_lstm_shipped_weights_load_unchanged_and_the_nnx_twin_follows_vocab():
    from flax import nnx

    from zoo.nnx import rnn as nnx_rnn

    model, _ = zoo.load("char_lstm", pretrained="tiny_shakespeare")
    assert (model.vocab, model.vocab_size) == (rnn.TINY_SHAKESPEARE_VOCAB, 65)
    twin = nnx_rnn.CharLSTM(rngs=nnx.Rngs(0), vocab="xyz", embed_dim=4, hidden=8, num_layers=1)
    assert (twin.vocab, twin.vocab_size, twin.head.out_features) == ("xyz", 3, 3)
    assert twin.to_linen().vocab == "xyz"
