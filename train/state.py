"""Train state and optimizers: everything a step needs, as one pytree.

`TrainState` is a flax struct: arrays (step, params, model_state, opt_state, rng) are
pytree leaves that jit, shard, donate and checkpoint; `apply_fn` and `tx` are static.
The base rng is stored as raw uint32 key data so Orbax can checkpoint it; steps derive
their randomness with `fold_in(rng, step)`, which makes a resumed run replay exactly.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine", "onecycle")


@struct.dataclass
class TrainState:
    """Full training state. With players (GANs) `opt_state` is {player: its optimizer state}."""

    step: jax.Array
    params: Any
    model_state: Any  # non-trainable collections, e.g. {"batch_stats": ...}; {} if none
    opt_state: Any
    rng: jax.Array  # uint32 key data of the run's base key
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @property
    def key(self) -> jax.Array:
        """The step's key: fold_in(base key, step)."""
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)

    def variables(self, params=None) -> dict:
        """{"params": params, **model_state}: what `module.apply` takes."""
        return {"params": self.params if params is None else params, **self.model_state}


def make_schedule(name: str, lr: float, total_steps: int, warmup_steps: int = 0) -> optax.Schedule:
    """Learning-rate schedule: "constant", "cosine" (optional linear warmup) or "onecycle"."""
    if name == "constant":
        return optax.constant_schedule(lr)
    if name == "cosine":
        if warmup_steps:
            return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, max(total_steps, warmup_steps + 1))
        return optax.cosine_decay_schedule(lr, max(total_steps, 1))
    if name == "onecycle":
        return optax.cosine_onecycle_schedule(max(total_steps, 1), lr)
    raise ValueError(f"unknown schedule {name!r}; expected one of {SCHEDULES}")


def make_optimizer(
    name: str,
    learning_rate: float | optax.Schedule,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    clip_norm: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
) -> optax.GradientTransformation:
    """An Optax optimizer by name, with optional global-norm clipping and weight decay.

    Each follows PyTorch's update rule of the same name at PyTorch's defaults (bench/parity.py
    trains both side by side): "adamw" uses decoupled weight decay; for the others a nonzero
    `weight_decay` adds L2 decay to the gradient (PyTorch's `weight_decay=` for SGD/Adam/RMSprop).
    "rmsprop" is torch.optim.RMSprop: decay 0.99 and eps added outside the square root (optax's
    own defaults are decay 0.9 with eps inside it). "adam"/"adamw" correct the moments' bias as
    PyTorch does (`bias_correction`).

    The numbers may also be arrays (traced values, one population member's): then clipping
    and L2 decay stay in the chain whatever the value, and a clip_norm of 0 means no clipping.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")
    if name == "sgd":
        opt = optax.sgd(learning_rate)
    elif name == "momentum":
        opt = optax.sgd(learning_rate, momentum=momentum)
    elif name == "adam":  # optax.adam's chain, with PyTorch's bias correction
        opt = optax.chain(scale_by_adam(b1, b2), optax.scale_by_learning_rate(learning_rate))
    elif name == "adamw":  # optax.adamw's chain (decoupled decay), likewise
        opt = optax.chain(scale_by_adam(b1, b2), optax.add_decayed_weights(weight_decay),
                          optax.scale_by_learning_rate(learning_rate))
    else:
        opt = optax.rmsprop(learning_rate, decay=0.99, eps=1e-8, eps_in_sqrt=False)  # torch's alpha, eps
    chain = []
    if not _static_zero(clip_norm):
        if not isinstance(clip_norm, (int, float)):  # per member (train/population.py): 0 means no clipping
            clip_norm = jnp.where(clip_norm > 0, clip_norm, jnp.inf)
        chain.append(clip_by_global_norm(clip_norm))
    if not _static_zero(weight_decay) and name != "adamw":
        chain.append(optax.add_decayed_weights(weight_decay))  # an array 0 adds 0 * params: the update unchanged
    return optax.chain(*chain, opt)


def _static_zero(value) -> bool:
    """A Python number that is 0: that transformation is left out (arrays are kept, per member)."""
    return isinstance(value, (int, float)) and value == 0


def clip_by_global_norm(max_norm) -> optax.GradientTransformation:
    """torch.nn.utils.clip_grad_norm_'s rule: scale by min(1, max_norm / (norm + 1e-6)).

    optax.clip_by_global_norm scales by max_norm / norm; the 1e-6 differs by 1e-6 relative on
    every clipped step, which is enough to part float32 LSTM runs after ~100 steps
    (bench/parity.py). The state is optax's (empty), so checkpoints are unchanged.
    """

    def update(updates, state, params=None):
        del params
        # optax.tree.norm (global_norm's successor, which warns since optax 0.2.6) where it exists
        norm = optax.tree.norm(updates) if hasattr(optax, "tree") else optax.global_norm(updates)
        scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def bias_correction(decay, count: jax.Array, dtype=jnp.float32) -> jax.Array:
    """1 - decay**count, to the precision of `dtype` (float32, or float64 under jax_enable_x64).

    optax computes `1 - decay**count` in float32, where 0.999 is 0.99900001: at step 1 the
    second moment's correction is 1.3e-5 too small, and every Adam update carries that
    systematic error, which training amplifies (the mlp's float32 loss left PyTorch's by 1e-4
    after 35 steps; with this, not within 100: bench/parity.py). PyTorch computes it in double.
    Here 1 - decay is taken in double when decay is a Python number (an array, e.g. a
    population's per-member b1, is already float32), then -expm1(count * log1p(-(1 - decay))).
    """
    one_minus = 1.0 - decay
    return -jnp.expm1(count.astype(dtype) * jnp.log1p(-jnp.asarray(one_minus, dtype)))


def scale_by_adam(b1=0.9, b2=0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """optax.scale_by_adam (the same state, so checkpoints are unchanged) with `bias_correction`:
    m_hat / (sqrt(v_hat) + eps), the moments' bias corrected as torch.optim.Adam does."""

    def init(params):
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=jax.tree.map(jnp.zeros_like, params),
                                      nu=jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del params
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        leaves = jax.tree.leaves(mu)
        dtype = jnp.promote_types(leaves[0].dtype, jnp.float32) if leaves else jnp.float32
        c1, c2 = bias_correction(b1, count, dtype), bias_correction(b2, count, dtype)
        out = jax.tree.map(lambda m, v: (m / c1.astype(m.dtype)) / (jnp.sqrt(v / c2.astype(v.dtype)) + eps), mu, nu)
        return out, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def glorot_reinit(params: Any, rng: jax.Array) -> Any:
    """Re-draws every kernel/weight matrix with Xavier/Glorot uniform (as the tutorials'
    `nn.init.xavier_uniform_`), leaving biases, embeddings and norms untouched."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(rng, len(leaves))
    out = []
    for (path, leaf), key in zip(leaves, keys):
        name = getattr(path[-1], "key", str(path[-1]))
        if name in ("kernel", "wi", "wh") and leaf.ndim >= 2:
            receptive = math.prod(leaf.shape[:-2])
            fan_in, fan_out = leaf.shape[-2] * receptive, leaf.shape[-1] * receptive
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            leaf = jax.random.uniform(key, leaf.shape, leaf.dtype, -limit, limit)
        out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)


def create_state(
    model,
    variables: dict,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    *,
    players: tuple[str, ...] = (),
) -> TrainState:
    """A TrainState from a module, its initialized variables and an optimizer.

    Args:
      model: the flax module (its `apply` becomes `apply_fn`).
      variables: as returned by `zoo.init` ({"params": ..., maybe "batch_stats"}).
      tx: the optax optimizer (with `players`: used for each, each with its own state).
      rng: the run's base key (typed key or raw uint32 key data).
      players: parameter subtrees optimized separately (a GAN's "generator" and
        "discriminator"); empty: one optimizer state for all parameters.
    """
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    opt_state = {part: tx.init(params[part]) for part in players} if players else tx.init(params)
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=opt_state,
        rng=rng,
        apply_fn=model.apply,
        tx=tx,
    )
