"""Pure train and eval steps, one loss per task.

Every train step is `(state, batch) -> (state, metrics)`: module-level, no configs, no
devices. Randomness comes from `state.key` (fold_in of the base key and the step).
Static behaviour (which loss, which augmentation, the pmap axis name) is bound with
`functools.partial` by the caller before jitting. Metrics are means over the batch.

Batches are dicts: "x" (uint8 images/rows or int32 tokens, converted here on device),
"y" (labels; a dict of labels for multitask). Eval steps return SUMS plus a count so a
padded last batch (mask 0) gives exact means.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from train.state import TrainState

Metrics = dict[str, jax.Array]


def to_input(x: jax.Array) -> jax.Array:
    """uint8 pixels -> float32 in [0, 1] (on device); other dtypes pass through."""
    return x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x


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

    BCE rather than MSE as the objective: with a sigmoid output, MSE's gradient vanishes
    where the sigmoid saturates, and on MNIST (mostly black pixels) the autoencoder then
    collapses to an all-black image (MSE stuck at 0.112 for 3 epochs, measured); BCE's
    gradient w.r.t. the pre-activation is simply (recon - x).
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


LOSSES: dict[str, Callable] = {
    "classification": classification_loss,
    "sequence_classification": classification_loss,
    "binary": binary_loss,
    "reconstruction": reconstruction_loss,
    "language_model": language_model_loss,
    "multitask": multitask_loss,
}


def _pmean(tree, axis_name):
    return jax.lax.pmean(tree, axis_name) if axis_name else tree


def _device_key(key: jax.Array, axis_name: str | None) -> jax.Array:
    # Under pmap every device holds the same state.key: without this, all devices would draw
    # the same dropout masks / augmentations for their slice of the batch.
    return jax.random.fold_in(key, jax.lax.axis_index(axis_name)) if axis_name else key


def _latent(key: jax.Array, batch_size: int, latent_dim: int, dtype, axis_name: str | None) -> jax.Array:
    """(batch_size, latent_dim) noise. Under pmap: this device's rows of the global batch's
    noise, so every device gets distinct latents and pmap draws the same z as jit."""
    if not axis_name:
        return jax.random.normal(key, (batch_size, latent_dim), dtype)
    n = jax.lax.axis_size(axis_name)
    z = jax.random.normal(key, (n * batch_size, latent_dim), dtype)  # (global B, Z)
    return jax.lax.dynamic_slice_in_dim(z, jax.lax.axis_index(axis_name) * batch_size, batch_size)


def train_step(
    state: TrainState,
    batch: dict,
    *,
    loss_fn: Callable,
    augment: Callable | None = None,
    axis_name: str | None = None,
) -> tuple[TrainState, Metrics]:
    """One optimizer step of a supervised task (everything except GANs).

    Args:
      state: the TrainState.
      batch: {"x": inputs, "y": targets}.
      loss_fn: one of LOSSES.
      augment: optional `(rng, x_float) -> x_float`, applied on device.
      axis_name: set under pmap: gradients, metrics and model state are averaged over it.
    """
    aug_key, dropout_key = jax.random.split(_device_key(state.key, axis_name))
    x = to_input(batch["x"])
    if augment is not None:
        x = augment(aug_key, x)
    mutable = list(state.model_state)

    def objective(params):
        out, new_state = state.apply_fn(
            state.variables(params), x, train=True, rngs={"dropout": dropout_key}, mutable=mutable
        )
        loss, metrics = loss_fn(out, x, batch.get("y"))
        return loss.mean(), (jax.tree.map(jnp.mean, metrics), new_state)

    (loss, (metrics, new_model_state)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    grads = _pmean(grads, axis_name)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
        model_state=_pmean(dict(new_model_state), axis_name),
    )
    return state, _pmean({"loss": loss, **metrics}, axis_name)


def eval_step(state: TrainState, batch: dict, mask: jax.Array, *, loss_fn: Callable, num_classes: int = 0) -> Metrics:
    """Sums of loss and metrics over the unmasked examples, plus "count".

    With num_classes > 0 (classification) also returns the (num_classes, num_classes)
    confusion matrix, rows = true class, columns = prediction.
    """
    x = to_input(batch["x"])
    out = state.apply_fn(state.variables(), x, train=False)
    loss, metrics = loss_fn(out, x, batch.get("y"))
    sums = {k: jnp.sum(v * mask) for k, v in {"loss": loss, **metrics}.items()}
    sums["count"] = jnp.sum(mask)
    if num_classes:
        pred = jnp.argmax(out, -1)
        sums["confusion"] = jnp.zeros((num_classes, num_classes), jnp.float32).at[batch["y"], pred].add(mask)
    return sums


def gan_step(
    state: TrainState, batch: dict, *, latent_dim: int, axis_name: str | None = None
) -> tuple[TrainState, Metrics]:
    """One discriminator update then one generator update, in one compiled program.

    Discriminator: BCE(D(real), 1) + BCE(D(G(z)), 0). Generator: the non-saturating
    BCE(D'(G(z)), 1) through the updated discriminator D'. As in the tutorial's loop, G runs
    forward ONCE per step: its samples serve both updates, and the generator's gradient
    is pulled back through that one forward pass (`jax.vjp`), so G's BatchNorm statistics
    are updated once per step too.
    """
    real = to_input(batch["x"])
    z = _latent(state.key, real.shape[0], latent_dim, real.dtype, axis_name)
    apply = state.apply_fn
    g_params, d_params = state.params["generator"], state.params["discriminator"]

    def generate(g_params):
        variables = {"params": {"generator": g_params, "discriminator": d_params}, **state.model_state}
        return apply(variables, z, train=True, method="generate", mutable=["batch_stats"])

    fake, g_pullback, model_state = jax.vjp(generate, g_params, has_aux=True)

    def discriminate(d_params, model_state, images):
        variables = {"params": {"generator": g_params, "discriminator": d_params}, **model_state}
        return apply(variables, images, train=True, method="discriminate", mutable=["batch_stats"])

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
    d_grads = _pmean(d_grads, axis_name)
    d_updates, d_opt = state.tx.update(d_grads, state.opt_state["discriminator"], d_params)
    d_params = optax.apply_updates(d_params, d_updates)

    def g_objective(fake, model_state):
        logits, model_state = discriminate(d_params, model_state, fake)  # the updated D
        return optax.sigmoid_binary_cross_entropy(logits, 1.0).mean(), model_state

    (g_loss, model_state), d_fake_images = jax.value_and_grad(g_objective, has_aux=True)(fake, dict(model_state))
    (g_grads,) = g_pullback(d_fake_images)
    g_grads = _pmean(g_grads, axis_name)
    g_updates, g_opt = state.tx.update(g_grads, state.opt_state["generator"], g_params)
    g_params = optax.apply_updates(g_params, g_updates)

    state = state.replace(
        step=state.step + 1,
        params={"generator": g_params, "discriminator": d_params},
        opt_state={"generator": g_opt, "discriminator": d_opt},
        model_state=_pmean(dict(model_state), axis_name),
    )
    metrics = {"loss": d_loss + g_loss, "d_loss": d_loss, "g_loss": g_loss, "d_real": d_real, "d_fake": d_fake}
    return state, _pmean(metrics, axis_name)


def gan_eval_step(state: TrainState, batch: dict, mask: jax.Array, *, latent_dim: int) -> Metrics:
    """Discriminator BCE on real test images and on as many fresh fakes (sums, "count").

    Example i's fake comes from noise fold_in(key(0), i), i = batch["index"] (set by the
    evaluator; default arange), so the metrics do not depend on the eval batch size.
    """
    real = to_input(batch["x"])
    index = batch.get("index", jnp.arange(real.shape[0]))
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(index)
    z = jax.vmap(lambda k: jax.random.normal(k, (latent_dim,), real.dtype))(keys)  # (B, Z)
    variables = state.variables()
    fake = state.apply_fn(variables, z, method="generate")
    real_logits = state.apply_fn(variables, real, method="discriminate")[:, 0]
    fake_logits = state.apply_fn(variables, fake, method="discriminate")[:, 0]
    d_loss = optax.sigmoid_binary_cross_entropy(real_logits, 1.0) + optax.sigmoid_binary_cross_entropy(fake_logits, 0.0)
    g_loss = optax.sigmoid_binary_cross_entropy(fake_logits, 1.0)
    return {
        "loss": jnp.sum((d_loss + g_loss) * mask),
        "d_loss": jnp.sum(d_loss * mask),
        "g_loss": jnp.sum(g_loss * mask),
        "count": jnp.sum(mask),
    }
