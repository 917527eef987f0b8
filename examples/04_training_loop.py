"""The training loop: optax optimizer, a pure jitted step, the model's parameters threaded through.

PyTorch: optimizer.zero_grad(); loss.backward(); optimizer.step() mutate the model in place.
JAX: step(params, opt_state, batch) -> new params and state; jax.jit compiles it once.
"""

from _common import QUICK, batches, mnist

import jax
import jax.numpy as jnp
import optax

import zoo

model = zoo.create("mlp_small")
params = zoo.init(model, jax.random.key(0))["params"]
tx = optax.adam(1e-3)
opt_state = tx.init(params)


@jax.jit
def step(params, opt_state, x, y):
    def loss_fn(p):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


x, y = mnist("train")
for epoch in range(2 if QUICK else 5):
    for xb, yb in batches(x, y, 64, seed=epoch):
        params, opt_state, loss = step(params, opt_state, xb, yb)
    print(f"epoch {epoch}: last batch loss {float(loss):.4f}")
xt, yt = mnist("test")
acc = float(jnp.mean(jnp.argmax(model.apply({"params": params}, xt), -1) == yt))
print(f"test accuracy {acc:.4f}")
