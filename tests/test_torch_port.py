"""Parity of zoo models with the PyTorch reference modules through `from_torch`.

Random torch weights -> from_torch -> model.apply must reproduce the torch outputs to
1e-5 (float32) for every registry model.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import zoo  # noqa: E402
from tests.torch_ref import TORCH_MODELS  # noqa: E402
from zoo.torch_port import from_torch  # noqa: E402

TOL = dict(atol=1e-5, rtol=1e-5)
BATCH = 3


def make_torch(name: str, seed: int = 0) -> torch.nn.Module:
    """The torch reference with random weights (BatchNorm affine and running stats too), eval mode."""
    torch.manual_seed(seed)
    net = TORCH_MODELS[name]()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    return net.eval()


def example_input(name: str, rng: np.random.Generator) -> np.ndarray:
    spec = zoo.get_spec(name).input
    if name == "char_lstm":
        return rng.integers(0, 65, size=(BATCH, 24)).astype(np.int32)
    if name == "dcgan":
        return rng.standard_normal((BATCH, 100)).astype(np.float32)
    return rng.random(spec.example_shape(BATCH)).astype(np.float32)  # [0, 1]


def nchw(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x)
    return t.permute(0, 3, 1, 2) if t.ndim == 4 else t


def nhwc(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return (t.permute(0, 2, 3, 1) if t.ndim == 4 else t).numpy()


def test_every_model_has_a_reference():
    assert sorted(TORCH_MODELS) == zoo.list_models()


@pytest.mark.parametrize("name", zoo.list_models())
def test_parity(name):
    assert name in TORCH_MODELS, f"no torch reference for registry model {name!r}"
    net = make_torch(name)
    variables = from_torch(name, net.state_dict())
    leaves = jax.tree_util.tree_leaves(variables)
    assert all(isinstance(a, jax.Array) and a.dtype == np.float32 for a in leaves)
    expected = jax.eval_shape(lambda: zoo.init(name, jax.random.key(0)))
    assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda a: a.shape, expected)

    model = zoo.create(name)
    x = example_input(name, np.random.default_rng(1))
    xt = torch.from_numpy(x).long() if name == "char_lstm" else nchw(x)
    with torch.no_grad():
        want = net(xt)
    got = model.apply(variables, x)
    if name == "dcgan":  # torch keeps the tutorial's tanh range, zoo maps it to [0, 1]
        want = (want + 1) / 2
    if isinstance(want, dict):
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_allclose(np.asarray(got[k]), want[k].numpy(), **TOL, err_msg=k)
    else:
        np.testing.assert_allclose(np.asarray(got), nhwc(want), **TOL)


def test_dcgan_discriminator_parity():
    net = make_torch("dcgan", seed=3)
    variables = from_torch("dcgan", net.state_dict())
    x = np.random.default_rng(2).random((BATCH, 28, 28, 1)).astype(np.float32)
    with torch.no_grad():
        want = net.discriminate(nchw(x) * 2 - 1).numpy()  # zoo's discriminator maps [0, 1] -> [-1, 1]
    got = zoo.create("dcgan").apply(variables, x, method="discriminate")
    assert got.shape == (BATCH, 1)
    np.testing.assert_allclose(np.asarray(got), want, **TOL)


def test_generator_and_discriminator_apart():
    net = make_torch("dcgan", seed=4)
    g_vars = from_torch(zoo.gan.Generator(), net.generator.state_dict())
    d_vars = from_torch(zoo.gan.Discriminator(), net.discriminator.state_dict())
    z = np.random.default_rng(3).standard_normal((2, 100)).astype(np.float32)
    with torch.no_grad():
        images = (net.generator(torch.from_numpy(z)) + 1) / 2
        logits = net.discriminator(images * 2 - 1).numpy()
    got_images = zoo.gan.Generator().apply(g_vars, z)
    np.testing.assert_allclose(np.asarray(got_images), nhwc(images), **TOL)
    np.testing.assert_allclose(np.asarray(zoo.gan.Discriminator().apply(d_vars, nhwc(images))), logits, **TOL)


def test_char_lstm_carries_and_generate():
    net = make_torch("char_lstm", seed=5)
    variables = from_torch("char_lstm", net.state_dict())
    model = zoo.create("char_lstm")
    prompt = np.random.default_rng(4).integers(0, 65, size=(2, 5)).astype(np.int32)

    logits, carries = model.apply(variables, prompt, return_carries=True)
    with torch.no_grad():
        t_logits, (h_n, c_n) = net(torch.from_numpy(prompt).long(), return_state=True)
    np.testing.assert_allclose(np.asarray(logits), t_logits.numpy(), **TOL)
    for k, (h, c) in enumerate(carries):
        np.testing.assert_allclose(np.asarray(h), h_n[k].numpy(), **TOL)
        np.testing.assert_allclose(np.asarray(c), c_n[k].numpy(), **TOL)

    # Near-zero temperature is greedy decoding; torch decodes greedily step by step from
    # the carried state, checking its logits pick the same token at every step.
    length = 12
    toks = model.apply(variables, jax.random.key(0), prompt, length, 1e-6, method="generate")
    toks = np.array(toks)  # a writable copy (torch.from_numpy below)
    # the same with numpy leaves (e.g. from a checkpoint): generate must not index numpy with tracers
    np_vars = jax.tree.map(np.asarray, variables)
    np_toks = model.apply(np_vars, jax.random.key(0), prompt, length, 1e-6, method="generate")
    np.testing.assert_array_equal(np_toks, toks)
    assert toks.shape == (2, length) and toks.dtype == np.int32
    with torch.no_grad():
        step_logits, state = t_logits[:, -1], (h_n, c_n)
        for i in range(length):
            np.testing.assert_array_equal(toks[:, i], step_logits.argmax(-1).numpy(), err_msg=f"step {i}")
            out, state = net(torch.from_numpy(toks[:, i : i + 1]).long(), state, return_state=True)
            step_logits = out[:, -1]


def test_non_default_configs_via_module():
    # An MLP on 3-channel images: torch flattens (C, H, W), zoo (H, W, C).
    from tests.torch_ref import CNN, MLP

    torch.manual_seed(6)
    rng = np.random.default_rng(5)
    cases = [
        (MLP(8 * 8 * 3, (16,), 4), zoo.create("mlp", in_shape=(8, 8, 3), hidden=(16,), num_classes=4), (8, 8, 3)),
        (
            CNN(3, (8, 8, 8), 20, 5),  # 20 -> 10 -> 5 -> 2: the flatten sees (2, 2, 8)
            zoo.create("cnn", in_shape=(20, 20, 3), features=(8, 8, 8), num_classes=5),
            (20, 20, 3),
        ),
    ]
    for net, model, shape in cases:
        variables = from_torch(model, net.eval().state_dict())
        x = rng.random((2, *shape)).astype(np.float32)
        with torch.no_grad():
            want = net(nchw(x)).numpy()
        np.testing.assert_allclose(np.asarray(model.apply(variables, x)), want, **TOL)


def test_wrong_architecture_names_key_and_shapes():
    sd = TORCH_MODELS["mlp_small"]().state_dict()
    with pytest.raises(ValueError) as e:
        from_torch("mlp", sd)
    msg = str(e.value)
    assert "'fc1.weight'" in msg and "(500, 784)" in msg and "(128, 784)" in msg and "'mlp'" in msg

    with pytest.raises(ValueError, match=r"'conv1\.weight': expected shape \(32, 1, 3, 3\), found \(32, 3, 3, 3\)"):
        from_torch("cnn", TORCH_MODELS["cnn_cifar"]().state_dict())


def test_missing_and_unexpected_keys():
    sd = dict(TORCH_MODELS["cnn"]().state_dict())
    missing = dict(sd)
    del missing["conv2.bias"]
    with pytest.raises(ValueError, match=r"missing key 'conv2\.bias' \(expected shape \(64,\)"):
        from_torch("cnn", missing)
    extra = {**sd, "fc2.weight": torch.zeros(3, 3)}
    with pytest.raises(ValueError, match=r"unexpected key 'fc2\.weight' \(shape \(3, 3\)\)"):
        from_torch("cnn", extra)
    # a bias for a use_bias=False layer is unexpected, num_batches_tracked is not
    gan_sd = {**TORCH_MODELS["dcgan"]().state_dict(), "generator.main.0.bias": torch.zeros(256)}
    with pytest.raises(ValueError, match=r"unexpected key 'generator\.main\.0\.bias'"):
        from_torch("dcgan", gan_sd)


def test_accepts_plain_arrays():
    sd = {k: v.numpy() for k, v in TORCH_MODELS["mlp_binary"]().state_dict().items()}
    variables = from_torch("mlp_binary", sd)
    np.testing.assert_array_equal(variables["params"]["dense_0"]["kernel"], sd["fc1.weight"].T)


def test_import_zoo_does_not_import_torch():
    code = (
        "import sys, zoo, zoo.torch_port\n"
        "heavy = [m for m in ('torch', 'tensorflow', 'optax', 'orbax') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})
