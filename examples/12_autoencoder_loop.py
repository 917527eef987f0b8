"""The autoencoder loop: reconstruct the input, pixel-wise BCE, then the reconstruction error.

PyTorch: criterion = nn.BCELoss()(model(x), x) in the usual zero_grad/backward/step loop.
JAX: the same loss as a pure function of the parameters; encode/decode are module methods.
"""

from _common import QUICK, batches, mnist

import jax
import jax.numpy as jnp
import optax

import zoo

model = zoo.create("autoencoder")
params = zoo.init(model, jax.random.key(0))["params"]
tx = optax.adam(1e-3)
opt_state = tx.init(params)


def bce(p, x):
    recon = jnp.clip(model.apply({"params": p}, x), 1e-6, 1 - 1e-6)
    return -jnp.mean(x * jnp.log(recon) + (1 - x) * jnp.log1p(-recon))


@jax.jit
def step(params, opt_state, x):
    loss, grads = jax.value_and_grad(bce)(params, x)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


x, y = mnist("train")
for epoch in range(2 if QUICK else 5):
    for xb, _ in batches(x, y, 32, seed=epoch):
        params, opt_state, loss = step(params, opt_state, xb)
    print(f"epoch {epoch}: BCE {float(loss):.4f}")
xt, _ = mnist("test")
code = model.apply({"params": params}, xt[:4], method="encode")
print("code:", code.shape, "test MSE:", float(jnp.mean((model.apply({"params": params}, xt) - xt) ** 2)))
