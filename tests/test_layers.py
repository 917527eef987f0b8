"""zoo.layers.ConvTranspose must equal flax's nn.ConvTranspose (PyTorch semantics)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.layers import Conv, ConvTranspose


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
    """The hand-written backward pass of rnn.lstm_recurrence equals autodiff through a
    lax.scan of rnn.lstm_cell, for every input (weights, projections, initial carry)."""
    from zoo import rnn

    r = np.random.default_rng(0)
    t, b, h = 7, 3, 5
    wh = jnp.asarray(r.normal(size=(h, 4 * h)), jnp.float32)
    gx = jnp.asarray(r.normal(size=(t, b, 4 * h)), jnp.float32)
    carry = tuple(jnp.asarray(r.normal(size=(b, h)), jnp.float32) for _ in range(2))
    weights = [jnp.asarray(r.normal(size=s), jnp.float32) for s in [(t, b, h), (b, h), (b, h)]]

    def reference(wh, gx, carry):
        def step(c, g):
            c = rnn.lstm_cell(wh, c, g)
            return c, c[0]

        final, hs = jax.lax.scan(step, carry, gx)
        return hs, final

    def loss(fn):
        def f(wh, gx, carry):
            hs, (hT, cT) = fn(wh, gx, carry)
            return (hs * weights[0]).sum() + (hT * weights[1]).sum() + (cT * weights[2]).sum()

        return f

    np.testing.assert_allclose(rnn.lstm_recurrence(wh, gx, carry)[0], reference(wh, gx, carry)[0], atol=1e-6)
    want = jax.grad(loss(reference), argnums=(0, 1, 2))(wh, gx, carry)
    got = jax.jit(jax.grad(loss(rnn.lstm_recurrence), argnums=(0, 1, 2)))(wh, gx, carry)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got, want)
