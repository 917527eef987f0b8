"""Tensors and autograd, the JAX way: jax.numpy arrays and jax.grad.

PyTorch: tensors are mutable and record a graph (requires_grad, .backward(), .grad fields).
JAX: arrays are immutable; gradients are functions (jax.grad(f)(x)) of pure functions.
"""

import _common  # noqa: F401  (path setup)
import jax
import jax.numpy as jnp

x = jnp.arange(6.0).reshape(2, 3)  # torch.arange(6.).reshape(2, 3)
print("x =", x, "\nx @ x.T =", x @ x.T)
y = x.at[0, 0].set(10.0)  # no in-place x[0, 0] = 10: a new array
print("x[0, 0] stays", x[0, 0], "; y[0, 0] =", y[0, 0])


def f(w):  # a scalar function of w
    return jnp.sum(jnp.tanh(x @ w) ** 2)


w = jnp.ones(3)
g = jax.grad(f)(w)  # torch: w.requires_grad_(); f(w).backward(); w.grad
value, g2 = jax.value_and_grad(f)(w)
assert jnp.allclose(g, g2)
print(f"f(w) = {value:.4f}, df/dw = {g}")
# second derivative along w: grad of grad, no retain_graph / create_graph
hvp = jax.jvp(jax.grad(f), (w,), (jnp.ones(3),))[1]
print("Hessian-vector product:", hvp)
