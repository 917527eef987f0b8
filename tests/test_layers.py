"""zoo.layers: each fast layer equals its reference (flax / autodiff) and honours dtype/param_dtype."""

import contextlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import layers
from zoo.layers import Conv, ConvTranspose, LSTMLayer, lstm_cell, lstm_layer, lstm_recurrence


CT_SHAPES = [(7, 8, 5, 4, 2, 1), (14, 4, 1, 4, 2, 1), (4, 6, 3, 4, 1, 0), (1, 10, 4, 7, 1, 0), (5, 3, 2, 3, 2, 1), (6, 3, 2, 5, 3, 2), (3, 2, 3, 2, 3, 0)]


def _flax_conv_transpose(cout, k, s, p):
    return nn.ConvTranspose(cout, (k, k), (s, s), padding=((k - 1 - p, k - 1 - p),) * 2, transpose_kernel=True)


def _assert_same_outputs_and_grads(f_mine, f_ref, variables, x):
    """f(variables, x) equal to 1e-5 (near zero: to 1e-6 of the output's largest magnitude, the
    float32 rounding of sums taken in another order), and so are the gradients of a random
    linear function of the output with respect to the variables and the input."""
    want = f_ref(variables, x)
    np.testing.assert_allclose(f_mine(variables, x), want, rtol=1e-5, atol=max(2e-6, 1e-6 * float(jnp.abs(want).max())))
    w = jax.random.normal(jax.random.key(7), want.shape)
    grad = lambda f: jax.grad(lambda v, x: jnp.sum(f(v, x) * w), argnums=(0, 1))(variables, x)  # noqa: E731
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), grad(f_mine), grad(f_ref))


@pytest.mark.parametrize("h,cin,cout,k,s,p", CT_SHAPES)
def test_conv_transpose_matches_flax(h, cin, cout, k, s, p):
    """The layer (with its shape's method) equals flax's, outputs and gradients, same parameters."""
    x = jax.random.normal(jax.random.key(0), (2, h, h + 1, cin))
    ref = _flax_conv_transpose(cout, k, s, p)
    variables = ref.init(jax.random.key(1), x)
    mine = ConvTranspose(cout, k, s, p)
    assert jax.tree.map(jnp.shape, mine.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, variables)
    _assert_same_outputs_and_grads(mine.apply, ref.apply, variables, x)


@pytest.mark.parametrize("method", ["subpixel", "col2im", "conv", "einsum"])
@pytest.mark.parametrize("h,cin,cout,k,s,p", CT_SHAPES + [(7, 16, 9, 4, 2, 1), (1, 3, 2, 4, 1, 0)])
def test_every_transpose_method_matches_lax(method, h, cin, cout, k, s, p):
    """Each formulation, forced on every shape it supports, equals lax.conv_transpose."""
    if (method == "conv" and s != 1) or (method == "einsum" and (h != 1 or p != 0)):
        with pytest.raises(ValueError, match=method):
            layers.conv_transpose(jnp.zeros((1, h, h, cin)), jnp.zeros((k, k, cout, cin)), s, p, method=method)
        return
    x = jax.random.normal(jax.random.key(0), (2, h, 1 if method == "einsum" else h + 1, cin))
    kernel = jax.random.normal(jax.random.key(1), (k, k, cout, cin))
    pad = ((k - 1 - p, k - 1 - p),) * 2

    def ref(kernel, x):
        return jax.lax.conv_transpose(x, kernel, (s, s), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"), transpose_kernel=True)

    _assert_same_outputs_and_grads(lambda kern, x: layers.conv_transpose(x, kern, s, p, method=method), ref, kernel, x)


@pytest.mark.parametrize("h,cin,cout,k,s,p", [(4, 6, 3, 4, 1, 0), (1, 10, 4, 7, 1, 0), (3, 4, 5, 3, 1, 1), (3, 2, 3, 2, 3, 0), (2, 3, 2, 3, 2, 1)])
def test_dense_transpose_matches_lax(h, cin, cout, k, s, p):
    """The dense-weight formulation (one matmul; H*W padded kernel copies, so small inputs:
    the layers it is chosen for) equals lax.conv_transpose at any stride and padding."""
    x = jax.random.normal(jax.random.key(0), (2, h, h + 1, cin))
    kernel = jax.random.normal(jax.random.key(1), (k, k, cout, cin))
    pad = ((k - 1 - p, k - 1 - p),) * 2

    def ref(kernel, x):
        return jax.lax.conv_transpose(x, kernel, (s, s), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"), transpose_kernel=True)

    mine = jax.jit(lambda kern, x: layers.conv_transpose(x, kern, s, p, method="dense"))
    _assert_same_outputs_and_grads(mine, ref, kernel, x)


def test_transpose_method_rule():
    """The per-shape choice (bench/README.md): matmul + overlap-add up to 8 output channels,
    one conv per phase above, plain conv at stride 1, einsum from a 1x1 input."""
    rule = layers.transpose_method
    assert layers.COL2IM_MAX_FEATURES == 8
    # the zoo's layers: autoencoder dec_0..2, DCGAN generator deconv_0..2
    assert [rule((4, 4), 64, 4, 1, 0), rule((7, 7), 32, 4, 2, 1), rule((14, 14), 1, 4, 2, 1)] == ["dense", "subpixel", "col2im"]
    assert [rule((1, 1), 128, 7, 1, 0), rule((7, 7), 64, 4, 2, 1), rule((14, 14), 1, 4, 2, 1)] == ["einsum", "subpixel", "col2im"]
    assert rule((7, 7), 8, 4, 2, 1) == "col2im" and rule((7, 7), 9, 4, 2, 1) == "subpixel"
    assert rule((1, 1), 4, 4, 2, 1) == "col2im" and rule((1, 1), 4, 4, 1, 1) == "dense"  # padded 1x1: no einsum
    # stride 1: one dense matmul while the input has at most k*k pixels, a conv above
    assert rule((4, 4), 64, 4, 1, 0) == "dense" and rule((4, 5), 64, 4, 1, 0) == "conv" and rule((3, 3), 8, 3, 1, 1) == "dense"


def test_dense_transpose_refuses_a_huge_weight():
    with pytest.raises(ValueError, match="DENSE_MAX_ELEMENTS"):
        layers.conv_transpose(jnp.zeros((1, 4, 4, 256)), jnp.zeros((4, 4, 256, 256)), 1, 0, method="dense")
    # the rule never picks it for such a layer: a wide small-input layer runs as the conv
    rule = layers.transpose_method
    assert rule((4, 4), 256, 4, 1, 0, in_features=256) == "conv" and rule((4, 4), 64, 4, 1, 0, in_features=16) == "dense"
    x = jnp.ones((1, 4, 4, 256))
    y = ConvTranspose(256, 4).apply(ConvTranspose(256, 4).init(jax.random.key(0), x), x)
    assert y.shape == (1, 7, 7, 256)


def test_conv_transpose_rejects_unknown_method():
    with pytest.raises(ValueError, match="one of .*'einsum'.* got 'phases'"):
        layers.conv_transpose(jnp.zeros((1, 3, 3, 2)), jnp.zeros((4, 4, 2, 2)), 2, 1, method="phases")


@pytest.mark.parametrize("k,s,p", [(7, 1, 0), (7, 1, 1), (5, 2, 0)])
def test_full_window_conv_matches_flax(k, s, p):
    """A conv whose window covers the whole padded input (computed as an einsum) equals flax's."""
    x = jax.random.normal(jax.random.key(0), (3, k - 2 * p, k - 2 * p, 4))
    ref = nn.Conv(2, (k, k), (s, s), padding=((p, p), (p, p)))
    variables = ref.init(jax.random.key(1), x)
    mine = Conv(2, k, s, p)
    assert jax.tree.map(jnp.shape, mine.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, variables)
    _assert_same_outputs_and_grads(mine.apply, ref.apply, variables, x)


@pytest.mark.parametrize("h,cin,cout,k,s,p", [(28, 1, 8, 4, 2, 1), (14, 4, 6, 4, 2, 1), (7, 3, 2, 4, 1, 0), (9, 3, 5, 3, 2, 1), (10, 2, 3, 5, 3, 2)])
def test_strided_conv_matches_flax(h, cin, cout, k, s, p):
    x = jax.random.normal(jax.random.key(0), (2, h, h + 1, cin))
    ref = nn.Conv(cout, (k, k), (s, s), padding=((p, p), (p, p)))
    variables = ref.init(jax.random.key(1), x)
    mine = Conv(cout, k, s, p)
    assert jax.tree.map(jnp.shape, mine.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, variables)
    np.testing.assert_allclose(mine.apply(variables, x), ref.apply(variables, x), atol=5e-6, rtol=1e-5)
    _assert_same_outputs_and_grads(mine.apply, ref.apply, variables, x)  # outputs again, and gradients


def test_lstm_recurrence_gradient_matches_autodiff():
    """The hand-written backward pass of lstm_recurrence equals autodiff through a
    lax.scan of lstm_cell, for every input (weights, projections, initial carry)."""
    r = np.random.default_rng(0)
    t, b, h = 7, 3, 5
    wh = jnp.asarray(r.normal(size=(h, 4 * h)), jnp.float32)
    gx = jnp.asarray(r.normal(size=(t, b, 4 * h)), jnp.float32)
    carry = tuple(jnp.asarray(r.normal(size=(b, h)), jnp.float32) for _ in range(2))
    weights = [jnp.asarray(r.normal(size=s), jnp.float32) for s in [(t, b, h), (b, h), (b, h)]]

    def reference(wh, gx, carry):
        def step(c, g):
            c = lstm_cell(wh, c, g)
            return c, c[0]

        final, hs = jax.lax.scan(step, carry, gx)
        return hs, final

    def loss(fn):
        def f(wh, gx, carry):
            hs, (hT, cT) = fn(wh, gx, carry)
            return (hs * weights[0]).sum() + (hT * weights[1]).sum() + (cT * weights[2]).sum()

        return f

    np.testing.assert_allclose(lstm_recurrence(wh, gx, carry)[0], reference(wh, gx, carry)[0], atol=1e-6)
    want = jax.grad(loss(reference), argnums=(0, 1, 2))(wh, gx, carry)
    got = jax.jit(jax.grad(loss(lstm_recurrence), argnums=(0, 1, 2)))(wh, gx, carry)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got, want)


def _flax_lstm_params(wi, wh, b):
    """zoo's fused (wi, wh, b) as the parameters of flax's nn.OptimizedLSTMCell (gates i, f, g, o)."""
    p = {}
    for k, gate in enumerate("ifgo"):
        cols = slice(k * wh.shape[0], (k + 1) * wh.shape[0])
        p["i" + gate] = {"kernel": wi[:, cols]}
        p["h" + gate] = {"kernel": wh[:, cols], "bias": b[cols]}
    return {"params": {"cell": p}}


@pytest.mark.parametrize("t,b,f,h", [(7, 3, 4, 5), (28, 4, 28, 16)])
def test_lstm_layer_matches_flax_optimized_lstm_cell(t, b, f, h):
    """lstm_layer (time-major, hand-written backward pass) equals a stock flax LSTM (nn.RNN over
    nn.OptimizedLSTMCell, autodiff): outputs, final carry, and the gradients of a loss on all of
    them with respect to the input, every weight, the bias and the initial carry."""
    r = np.random.default_rng(1)
    arr = lambda *shape, scale=1.0: jnp.asarray(r.normal(size=shape) * scale, jnp.float32)  # noqa: E731
    x, wi, wh, bias = arr(t, b, f), arr(f, 4 * h, scale=0.5), arr(h, 4 * h, scale=0.5), arr(4 * h, scale=0.5)
    carry = (arr(b, h), arr(b, h))
    weights = (arr(t, b, h), arr(b, h), arr(b, h))
    rnn = nn.RNN(nn.OptimizedLSTMCell(h), time_major=True, return_carry=True)

    def ours(x, wi, wh, bias, carry):
        hs, (hT, cT) = lstm_layer(x, wi, wh, bias, carry)
        return hs, hT, cT

    def flax_ref(x, wi, wh, bias, carry):
        (cT, hT), hs = rnn.apply(_flax_lstm_params(wi, wh, bias), x, initial_carry=carry[::-1])
        return hs, hT, cT

    def loss(fn):
        return lambda *args: sum((out * w).sum() for out, w in zip(fn(*args), weights))

    args = (x, wi, wh, bias, carry)
    for got, want in zip(jax.jit(ours)(*args), flax_ref(*args)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    got = jax.jit(jax.grad(loss(ours), argnums=range(5)))(*args)
    want = jax.grad(loss(flax_ref), argnums=range(5))(*args)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got, want)


def test_lstm_layer_time_major_equals_batch_major():
    x = jax.random.normal(jax.random.key(0), (3, 5, 4))
    layer = LSTMLayer(6)
    v = layer.init(jax.random.key(1), x)
    hs, carry = layer.apply(v, x)
    hs_t, carry_t = layer.apply(v, jnp.swapaxes(x, 0, 1), time_major=True)
    np.testing.assert_array_equal(jnp.swapaxes(hs_t, 0, 1), hs)
    jax.tree.map(np.testing.assert_array_equal, carry_t, carry)


def test_max_pool_2x2_matches_reduce_window():
    x = jax.random.normal(jax.random.key(0), (2, 7, 9, 3))
    np.testing.assert_array_equal(layers.max_pool_2x2(x), nn.max_pool(x, (2, 2), (2, 2)))


@pytest.mark.parametrize("shape", [(3, 8, 8, 4), (2, 7, 9, 3), (1, 3, 2, 1)])
def test_max_pool_2x2_gradient_goes_to_the_first_maximum(shape):
    # values on a coarse grid so that many windows hold ties; odd sizes drop a row/column
    x = jnp.round(2 * jax.random.normal(jax.random.key(0), shape)) / 2
    x = x.at[0, 0, 0, 0].set(9.0).at[0, 0, 1, 0].set(9.0).at[0, 1, 0, 0].set(9.0)  # a three-way tie for the max
    ref = lambda v: nn.max_pool(v, (2, 2), (2, 2))  # noqa: E731  (XLA's select-and-scatter)
    g = jax.random.normal(jax.random.key(1), ref(x).shape)
    (got,) = jax.vjp(layers.max_pool_2x2, x)[1](g)
    (want,) = jax.vjp(ref, x)[1](g)
    assert got.shape == x.shape
    np.testing.assert_array_equal(got, want)
    # each window's gradient lands on exactly one input: its first maximum, row-major
    win = got[:, : shape[1] // 2 * 2, : shape[2] // 2 * 2].reshape(shape[0], shape[1] // 2, 2, shape[2] // 2, 2, shape[3])
    np.testing.assert_array_equal((win != 0).sum((2, 4)), (g != 0).astype(int))
    assert float(got[0, 0, 0, 0]) == float(g[0, 0, 0, 0]) and float(got[0, 0, 1, 0]) == 0.0


def test_max_pool_2x2_gradient_matches_pytorch():
    torch = pytest.importorskip("torch")
    x = np.round(2 * np.random.default_rng(2).standard_normal((2, 6, 6, 3))) / 2  # with ties
    t = torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float32, requires_grad=True)
    y = torch.nn.functional.max_pool2d(t, 2)
    g = np.random.default_rng(3).standard_normal(tuple(y.shape)).astype(np.float32)
    y.backward(torch.tensor(g))
    (got,) = jax.vjp(layers.max_pool_2x2, jnp.asarray(x, jnp.float32))[1](jnp.asarray(g.transpose(0, 2, 3, 1)))
    np.testing.assert_array_equal(np.asarray(got), t.grad.numpy().transpose(0, 2, 3, 1))


def test_max_pool_2x2_bfloat16_and_under_jit_and_vmap():
    x = jax.random.normal(jax.random.key(0), (2, 4, 6, 8, 3)).astype(jnp.bfloat16)
    f = jax.jit(jax.vmap(lambda v: layers.max_pool_2x2(v).astype(jnp.float32).sum()))
    np.testing.assert_array_equal(f(x), jax.vmap(lambda v: nn.max_pool(v, (2, 2), (2, 2)).astype(jnp.float32).sum())(x))
    g = jax.jit(jax.grad(lambda v: layers.max_pool_2x2(v).astype(jnp.float32).sum()))(x[0])
    assert g.dtype == jnp.bfloat16 and float(g.astype(jnp.float32).sum()) == 4 * 3 * 4 * 3  # one 1 per window


def test_old_import_paths_still_work():
    from zoo import cnn, rnn

    assert cnn.max_pool_2x2 is layers.max_pool_2x2
    assert rnn.lstm_recurrence is lstm_recurrence and rnn.lstm_cell is lstm_cell


def test_lstm_layer_equals_scanned_cells():
    x = jax.random.normal(jax.random.key(0), (3, 5, 4))
    layer = LSTMLayer(6)
    v = layer.init(jax.random.key(1), x)
    hs, (h, c) = layer.apply(v, x)
    p = v["params"]
    carry = (jnp.zeros((3, 6)), jnp.zeros((3, 6)))
    for t in range(5):
        carry = lstm_cell(p["wh"], carry, x[:, t] @ p["wi"] + p["b"])
        np.testing.assert_allclose(hs[:, t], carry[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c, carry[1], rtol=1e-5, atol=1e-6)


LAYERS = [
    (lambda **kw: Conv(5, 4, 2, 1, **kw), (2, 8, 8, 3)),
    (lambda **kw: ConvTranspose(5, 4, 2, 1, **kw), (2, 7, 7, 3)),
    (lambda **kw: LSTMLayer(6, **kw), (2, 5, 3)),
]


@pytest.mark.parametrize("make,shape", LAYERS, ids=["conv", "conv_transpose", "lstm"])
def test_layer_dtypes(make, shape):
    x = jax.random.normal(jax.random.key(0), shape)
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731 (LSTMLayer: (hs, carry))
    ref = make()
    v = ref.init(jax.random.key(1), x)
    want = first(ref.apply(v, x))
    # bfloat16 compute, float32 parameters: output in bfloat16 and close to float32
    low = make(dtype=jnp.bfloat16)
    assert {a.dtype for a in jax.tree.leaves(low.init(jax.random.key(1), x))} == {jnp.dtype(jnp.float32)}
    got = first(low.apply(v, x))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=0, atol=0.03 * float(jnp.abs(want).max()))
    # bfloat16 storage
    stored = make(param_dtype=jnp.bfloat16).init(jax.random.key(1), x)
    assert {a.dtype for a in jax.tree.leaves(stored)} == {jnp.dtype(jnp.bfloat16)}
    # the gradient flows in bfloat16 and comes back as float32 for float32 parameters
    grads = jax.grad(lambda v: jnp.sum(first(low.apply(v, x)).astype(jnp.float32) ** 2))(v)
    for g in jax.tree.leaves(grads):
        assert g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g)))


@pytest.mark.parametrize("cin,k,pad", [(1, 3, 1), (4, 2, 0), (3, 4, 2), (5, 3, 1)])
def test_conv2d_matches_lax(cin, k, pad):
    """conv2d (explicit padding; im2col + matmul up to IM2COL_MAX_CHANNELS inputs) equals lax's
    padded conv, outputs and gradients."""
    x = jax.random.normal(jax.random.key(0), (2, 6, 7, cin))
    kernel = jax.random.normal(jax.random.key(1), (k, k, cin, 3))
    padding = ((pad, pad), (pad, pad))

    def ref(kernel, x):
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    assert (cin <= layers.IM2COL_MAX_CHANNELS) == (cin != 5)  # both paths are covered
    _assert_same_outputs_and_grads(lambda kern, x: layers.conv2d(x, kern, 1, padding), ref, kernel, x)


# ---- per-platform rewrites: XLA:CPU gets zoo's rewrites, other platforms XLA's native ops ----


def _pool_module():
    class Pool(nn.Module):
        @nn.compact
        def __call__(self, x):
            return layers.max_pool_2x2(x)

    return Pool()


class _LSTMOutputs(nn.Module):
    @nn.compact
    def __call__(self, x):
        return LSTMLayer(5)(x)[0]


# (module, input shape): every rewrite of layers.REWRITES, at shapes that take each of its forms
REWRITE_CASES = {
    "conv": [(Conv(6, 3, 2, 1), (2, 9, 9, 1)), (Conv(5, 3, 1, 1), (2, 6, 6, 7)), (Conv(4, 5, 1, 1), (2, 3, 3, 2))],
    "conv_transpose": [(ConvTranspose(3, 4, 2, 1), (2, 5, 5, 6)), (ConvTranspose(16, 4, 2, 1), (2, 4, 4, 3)),
                       (ConvTranspose(4, 4, 1, 0), (2, 3, 3, 5)), (ConvTranspose(3, 7, 1, 0), (2, 1, 1, 4))],
    "max_pool": [(_pool_module(), (2, 8, 8, 3)), (_pool_module(), (2, 7, 9, 2))],
    "lstm": [(_LSTMOutputs(), (3, 6, 4))],
}


def test_every_rewrite_has_cases():
    assert set(REWRITE_CASES) == set(layers.REWRITES)
    assert all(platforms == ("cpu",) for platforms in layers.REWRITES.values())  # measured on XLA:CPU only


@pytest.mark.parametrize("name,case", [(n, i) for n, cases in REWRITE_CASES.items() for i in range(len(cases))])
def test_rewrite_and_native_paths_agree(name, case):
    """Both paths of a rewrite, forced on CPU, give the same outputs and gradients."""
    module, shape = REWRITE_CASES[name][case]
    x = jax.random.normal(jax.random.key(0), shape)
    variables = module.init(jax.random.key(1), x)

    def path(which):
        def f(v, x):  # traced inside the block: jax.grad and jax.jit trace here
            with layers.forced(which):
                return module.apply(v, x)

        return f

    _assert_same_outputs_and_grads(path("rewrite"), path("native"), variables, x)


def _lowered_text(module, shape, platform: str, path: str | None = None) -> str:
    x = jnp.zeros(shape)
    variables = module.init(jax.random.key(1), x)

    def loss(v, x):
        return jnp.sum(module.apply(v, x) ** 2)

    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    if path is None:
        traced = f.trace(variables, x)
    else:
        with layers.forced(path):
            traced = f.trace(variables, x)
    return traced.lower(lowering_platforms=(platform,)).as_text()


def _ops(text: str) -> dict:
    """How many of each StableHLO op a lowered program holds, without the platform switch (the
    `case` on the platform index, its constants, and the zeros it passes for the residuals of
    the branch not taken)."""
    counts: dict = {}
    for op in re.findall(r"stablehlo\.([a-z_]+)", text):
        if op not in ("case", "return", "constant", "broadcast_in_dim"):
            counts[op] = counts.get(op, 0) + 1
    return counts


@pytest.mark.parametrize("name", sorted(REWRITE_CASES))
def test_the_choice_is_made_per_platform(name):
    """Lowered for CUDA (no GPU needed) the layer is XLA's native op, lowered for CPU the rewrite:
    the programs hold the ops of the program traced with that path forced."""
    module, shape = REWRITE_CASES[name][0]
    cuda, cpu = _ops(_lowered_text(module, shape, "cuda")), _ops(_lowered_text(module, shape, "cpu"))
    native = _ops(_lowered_text(module, shape, "cuda", "native"))
    rewrite = _ops(_lowered_text(module, shape, "cpu", "rewrite"))
    assert native != rewrite
    assert cuda == native and cpu == rewrite
    if name != "lstm":  # the conv's, transposed conv's, pooling's own op (the LSTM's differ in matmuls)
        op = {"conv": "convolution", "conv_transpose": "convolution", "max_pool": "reduce_window"}[name]
        assert op in cuda and op not in cpu


@pytest.mark.parametrize("name", sorted(REWRITE_CASES))
def test_cpu_compiles_only_the_rewrite(name):
    """On CPU the per-platform choice costs nothing: the compiled program (gradient included)
    holds the same instructions as the rewrite traced without the platform switch."""
    module, shape = REWRITE_CASES[name][0]
    x = jnp.zeros(shape)
    variables = module.init(jax.random.key(1), x)

    def compiled_ops(path):
        f = jax.jit(jax.grad(lambda v: jnp.sum(module.apply(v, x) ** 2)))
        with layers.forced(path) if path else contextlib.nullcontext():
            text = f.lower(variables).compile().as_text()
        return sorted(re.findall(r"= \S+ ([a-z\-]+)\(", text))

    assert compiled_ops(None) == compiled_ops("rewrite")


def test_forced_rejects_an_unknown_path():
    with pytest.raises(ValueError, match="path must be one of"):
        with layers.forced("fast"):
            pass
