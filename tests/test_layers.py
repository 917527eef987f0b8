"""zoo.layers: each fast layer equals its reference (flax / autodiff) and honours dtype/param_dtype."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import layers
from zoo.layers import Conv, ConvTranspose, LSTMLayer, lstm_cell, lstm_layer, lstm_recurrence


@pytest.mark.parametrize(
    "h,cin,cout,k,s,p",
    [(7, 8, 5, 4, 2, 1), (14, 4, 1, 4, 2, 1), (4, 6, 3, 4, 1, 0), (1, 10, 4, 7, 1, 0), (5, 3, 2, 3, 2, 1), (6, 3, 2, 5, 3, 2)],
)
def test_conv_transpose_matches_flax(h, cin, cout, k, s, p):
    x = jax.random.normal(jax.random.key(0), (2, h, h + 1, cin))
    ref = nn.ConvTranspose(cout, (k, k), (s, s), padding=((k - 1 - p, k - 1 - p),) * 2, transpose_kernel=True)
    variables = ref.init(jax.random.key(1), x)
    mine = ConvTranspose(cout, k, s, p)
    assert jax.tree.map(jnp.shape, mine.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, variables)
    np.testing.assert_allclose(mine.apply(variables, x), ref.apply(variables, x), atol=2e-6, rtol=1e-5)
    if (h, k, s) not in ((7, 4, 2), (4, 4, 1)):
        return
    # gradients too (the reason this layer exists is its backward pass)
    g_ref = jax.grad(lambda v: jnp.sum(ref.apply(v, x) ** 2))(variables)
    g_mine = jax.grad(lambda v: jnp.sum(mine.apply(v, x) ** 2))(variables)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4), g_mine, g_ref)


@pytest.mark.parametrize("h,cin,cout,k,s,p", [(28, 1, 8, 4, 2, 1), (14, 4, 6, 4, 2, 1), (7, 3, 2, 4, 1, 0), (9, 3, 5, 3, 2, 1), (10, 2, 3, 5, 3, 2)])
def test_strided_conv_matches_flax(h, cin, cout, k, s, p):
    x = jax.random.normal(jax.random.key(0), (2, h, h + 1, cin))
    ref = nn.Conv(cout, (k, k), (s, s), padding=((p, p), (p, p)))
    variables = ref.init(jax.random.key(1), x)
    mine = Conv(cout, k, s, p)
    assert jax.tree.map(jnp.shape, mine.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, variables)
    np.testing.assert_allclose(mine.apply(variables, x), ref.apply(variables, x), atol=5e-6, rtol=1e-5)


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
