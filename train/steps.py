"""Pure train and eval steps, one loss per task.

Every train step is `(state, batch) -> (state, metrics)`: module-level, no configs, no
devices, no collectives (a strategy adds those at its edge, train/parallel.py). Static
behaviour (which loss, which augmentation) is bound with `functools.partial` by the task
record (train/tasks.py). Metrics are means over the batch.

Batches are dicts: "x" (uint8 images/rows or int32 tokens, converted here on device),
"y" (labels; a dict of labels for multitask) and "index" (each example's position in the
dataset, added by the strategies and the evaluator). Randomness is a function of the step
key (`state.key`, fold_in of the base key and the step) and of the examples in the batch,
never of the device that runs it. Eval steps return SUMS plus a count so a padded last
batch (mask 0) gives exact means.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from train.state import TrainState

Metrics = dict[str, jax.Array]


def to_input(x: jax.Array) -> jax.Array:
    """uint8 pixels -> float32 in [0, 1] (on device); other dtypes pass through."""
    return x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x


def as_float32(outputs):
    """Model outputs (any pytree) in at least float32: losses and metrics of a bfloat16 model are
    float32; a float64 model (jax_enable_x64, bench/parity.py --float64) keeps float64."""
    return jax.tree.map(lambda o: o.astype(jnp.promote_types(o.dtype, jnp.float32)), outputs)


# ---- per-task losses: (model output, float input, batch) -> (per-example loss, per-example metrics)


def classification_loss(logits, x, y):
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return loss, {"accuracy": (jnp.argmax(logits, -1) == y).astype(jnp.float32)}


def binary_loss(logits, x, y):
    logits = logits[:, 0]
    loss = optax.sigmoid_binary_cross_entropy(logits, y.astype(jnp.float32))
    return loss, {"accuracy": ((logits > 0) == (y > 0)).astype(jnp.float32)}


def reconstruction_loss(recon, x, y):
    """Pixel-wise binary cross-entropy of reconstructions in [0, 1]; MSE as a metric.

    BCE, not MSE, as the objective: under MSE the autoencoder collapsed to a black image
    (bench/README.md).
    """
    p = jnp.clip(recon, 1e-6, 1.0 - 1e-6)
    bce = -(x * jnp.log(p) + (1.0 - x) * jnp.log1p(-p)).reshape(x.shape[0], -1).mean(-1)  # (B,)
    mse = jnp.mean(jnp.square(recon - x).reshape(x.shape[0], -1), axis=-1)
    return bce, {"mse": mse}


def language_model_loss(logits, x, y):
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(-1)  # (B,) nats/char
    acc = (jnp.argmax(logits, -1) == y).astype(jnp.float32).mean(-1)
    return loss, {"accuracy": acc}


def multitask_loss(outputs, x, y):
    total, metrics = 0.0, {}
    for head, logits in outputs.items():
        loss, m = classification_loss(logits, x, y[head])
        total = total + loss
        metrics[f"{head}_loss"] = loss
        metrics[f"{head}_accuracy"] = m["accuracy"]
    return total, metrics


def batch_key(state: TrainState, batch: dict) -> jax.Array:
    """The batch's key: the step key folded with its first example's index.

    Under pmap each device holds a different slice of the global batch, so its dropout masks
    and augmentations differ from the other devices' without any device-specific code; under
    jit the one global batch gives the same key on any device count.
    """
    index = batch.get("index")
    return state.key if index is None else jax.random.fold_in(state.key, index[0])


def latents(key: jax.Array, index: jax.Array, latent_dim: int, dtype=jnp.float32) -> jax.Array:
    """(B, latent_dim) noise, row i drawn from fold_in(key, index[i]): a function of the
    example, so it is the same whichever device (or batch split) draws it."""
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (latent_dim,), dtype))(index)


def _index(batch: dict, n: int) -> jax.Array:
    return batch.get("index", jnp.arange(n))


def train_step(
    state: TrainState,
    batch: dict,
    *,
    loss_fn: Callable,
    augment: Callable | None = None,
) -> tuple[TrainState, Metrics]:
    """One optimizer step of a supervised task (everything except GANs).

    Args:
      state: the TrainState.
      batch: {"x": inputs, "y": targets, "index"?: example indices}.
      loss_fn: `(output, x, y) -> (per-example loss, per-example metrics)`.
      augment: optional `(rng, x_float) -> x_float`, applied on device.
    """
    aug_key, dropout_key = jax.random.split(batch_key(state, batch))
    x = to_input(batch["x"])
    if augment is not None:
        x = augment(aug_key, x)
    mutable = list(state.model_state)

    def objective(params):
        out, new_state = state.apply_fn(
            state.variables(params), x, train=True, rngs={"dropout": dropout_key}, mutable=mutable
        )
        loss, metrics = loss_fn(as_float32(out), x, batch.get("y"))
        return loss.mean(), (jax.tree.map(jnp.mean, metrics), new_state)

    (loss, (metrics, new_model_state)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
        model_state=dict(new_model_state),
    )
    return state, {"loss": loss, **metrics}


def eval_step(variables: dict, batch: dict, mask: jax.Array, *, apply_fn: Callable, loss_fn: Callable,
              confusion: bool = False) -> Metrics:
    """Sums of loss and metrics of `apply_fn(variables, x)` over the unmasked examples, plus "count".

    With `confusion` (single-head classification) also returns the (C, C) confusion matrix,
    C = the number of logits, rows = true class, columns = prediction.
    """
    x = to_input(batch["x"])
    out = as_float32(apply_fn(variables, x, train=False))
    loss, metrics = loss_fn(out, x, batch.get("y"))
    sums = {k: jnp.sum(v * mask) for k, v in {"loss": loss, **metrics}.items()}
    sums["count"] = jnp.sum(mask)
    if confusion:
        n = out.shape[-1]
        sums["confusion"] = jnp.zeros((n, n), jnp.float32).at[batch["y"], jnp.argmax(out, -1)].add(mask)
    return sums


def gan_step(state: TrainState, batch: dict, *, latent_dim: int) -> tuple[TrainState, Metrics]:
    """One discriminator update then one generator update, in one compiled program.

    Discriminator: BCE(D(real), 1) + BCE(D(G(z)), 0). Generator: the non-saturating
    BCE(D'(G(z)), 1) through the updated discriminator D'. As in the tutorial's loop, G runs
    forward ONCE per step: its samples serve both updates, and the generator's gradient
    is pulled back through that one forward pass (`jax.vjp`), so G's BatchNorm statistics
    are updated once per step too. Noise: `latents(state.key, batch["index"])`.
    """
    real = to_input(batch["x"])
    z = latents(state.key, _index(batch, real.shape[0]), latent_dim, real.dtype)
    apply = state.apply_fn
    g_params, d_params = state.params["generator"], state.params["discriminator"]

    def generate(g_params):
        variables = {"params": {"generator": g_params, "discriminator": d_params}, **state.model_state}
        return apply(variables, z, train=True, method="generate", mutable=["batch_stats"])

    fake, g_pullback, model_state = jax.vjp(generate, g_params, has_aux=True)

    def discriminate(d_params, model_state, images):
        variables = {"params": {"generator": g_params, "discriminator": d_params}, **model_state}
        logits, model_state = apply(variables, images, train=True, method="discriminate", mutable=["batch_stats"])
        return as_float32(logits), model_state

    def d_objective(d_params, model_state):
        real_logits, model_state = discriminate(d_params, model_state, real)
        fake_logits, model_state = discriminate(d_params, model_state, fake)  # fake: a constant here
        loss = optax.sigmoid_binary_cross_entropy(real_logits, 1.0).mean() + optax.sigmoid_binary_cross_entropy(
            fake_logits, 0.0
        ).mean()
        return loss, (model_state, jax.nn.sigmoid(real_logits).mean(), jax.nn.sigmoid(fake_logits).mean())

    (d_loss, (model_state, d_real, d_fake)), d_grads = jax.value_and_grad(d_objective, has_aux=True)(
        d_params, dict(model_state)
    )
    d_updates, d_opt = state.tx.update(d_grads, state.opt_state["discriminator"], d_params)
    d_params = optax.apply_updates(d_params, d_updates)

    def g_objective(fake, model_state):
        logits, model_state = discriminate(d_params, model_state, fake)  # the updated D
        return optax.sigmoid_binary_cross_entropy(logits, 1.0).mean(), model_state

    (g_loss, model_state), d_fake_images = jax.value_and_grad(g_objective, has_aux=True)(fake, dict(model_state))
    (g_grads,) = g_pullback(d_fake_images)
    g_updates, g_opt = state.tx.update(g_grads, state.opt_state["generator"], g_params)
    g_params = optax.apply_updates(g_params, g_updates)

    state = state.replace(
        step=state.step + 1,
        params={"generator": g_params, "discriminator": d_params},
        opt_state={"generator": g_opt, "discriminator": d_opt},
        model_state=dict(model_state),
    )
    return state, {"loss": d_loss + g_loss, "d_loss": d_loss, "g_loss": g_loss, "d_real": d_real, "d_fake": d_fake}


def gan_eval_step(variables: dict, batch: dict, mask: jax.Array, *, apply_fn: Callable, latent_dim: int) -> Metrics:
    """Discriminator BCE on real test images and on as many fresh fakes (sums, "count").

    Example i's fake comes from `latents(key(0), index)`, so the metrics do not depend on the
    eval batch size.
    """
    real = to_input(batch["x"])
    z = latents(jax.random.key(0), _index(batch, real.shape[0]), latent_dim, real.dtype)  # (B, Z)
    fake = apply_fn(variables, z, method="generate")
    real_logits = as_float32(apply_fn(variables, real, method="discriminate"))[:, 0]
    fake_logits = as_float32(apply_fn(variables, fake, method="discriminate"))[:, 0]
    d_loss = optax.sigmoid_binary_cross_entropy(real_logits, 1.0) + optax.sigmoid_binary_cross_entropy(fake_logits, 0.0)
    g_loss = optax.sigmoid_binary_cross_entropy(fake_logits, 1.0)
    return {
        "loss": jnp.sum((d_loss + g_loss) * mask),
        "d_loss": jnp.sum(d_loss * mask),
        "g_loss": jnp.sum(g_loss * mask),
        "count": jnp.sum(mask),
    }
