"""Regularization: dropout (an rng stream), weight decay (optax.adamw), early stopping on validation loss.

PyTorch: nn.Dropout follows model.train()/eval(); weight_decay= on the optimizer; a patience counter.
JAX: dropout needs train=True and a "dropout" key per step; decay is an optax transform.
"""

from _common import QUICK, batches, mnist

import jax
import jax.numpy as jnp
import optax

import zoo

model = zoo.create("mlp_small", dropout_rate=0.2)
params = zoo.init(model, jax.random.key(0))["params"]
tx = optax.adamw(1e-3, weight_decay=1e-4)  # decoupled decay, as torch.optim.AdamW
opt_state = tx.init(params)


def loss_fn(p, x, y, key=None):
    logits = model.apply({"params": p}, x, train=key is not None, rngs={"dropout": key} if key is not None else None)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@jax.jit
def step(params, opt_state, x, y, key):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


x, y = mnist("train")
cut = len(x) * 5 // 6
(xt, yt), (xv, yv) = (x[:cut], y[:cut]), (x[cut:], y[cut:])
best, patience, bad = float("inf"), 2, 0
for epoch in range(4 if QUICK else 30):
    for i, (xb, yb) in enumerate(batches(xt, yt, 32, seed=epoch)):
        key = jax.random.fold_in(jax.random.key(epoch), i)  # a fresh dropout mask each step
        params, opt_state, _ = step(params, opt_state, xb, yb, key)
    val = float(jax.jit(loss_fn)(params, xv, yv))  # no key: dropout off
    print(f"epoch {epoch}: val loss {val:.4f}")
    best, bad = (val, 0) if val < best else (best, bad + 1)
    if bad >= patience:
        print(f"early stop: no improvement in {patience} epochs")
        break
