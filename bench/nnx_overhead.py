"""NNX vs Linen: what NNX's graph handling costs per training step, on this machine.

1. `train.fit` on the NNX cnn vs the Linen cnn (the same jitted step: expect ~1.0x).
2. Hand-written loops over the cnn, one optimizer step per call:
   linen:     jax.jit(step)(params, opt_state, x, y) around `model.apply`
   nnx.jit:   nnx.jit(step)(net, optimizer, x, y), nnx.Optimizer (walks the graph per call)
   split:     jax.jit over (graphdef static, state) with nnx.merge inside the trace
Rounds alternate (linen, nnx.jit, split, linen, ...) so machine load hits all alike; the
ratios are medians over rounds. Usage: python bench/nnx_overhead.py [--rounds 5] [--steps 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import train
import zoo
import zoo.nnx


def _batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.random((n, 28, 28, 1), dtype=np.float32)), jnp.asarray(rng.integers(0, 10, n))


def _ce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def linen_loop(batch):
    model = zoo.create("cnn")
    params = zoo.init(model, jax.random.key(0))["params"]
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: _ce(model.apply({"params": p}, x), y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = [params, opt_state]

    def run(x, y):
        state[0], state[1], loss = step(state[0], state[1], x, y)
        return loss

    return run


def nnx_jit_loop(batch):
    net = zoo.nnx.create("cnn", rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(net, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(net, opt, x, y):
        loss, grads = nnx.value_and_grad(lambda m: _ce(m(x), y))(net)
        opt.update(net, grads)
        return loss

    return lambda x, y: step(net, opt, x, y)


def nnx_split_loop(batch):
    net = zoo.nnx.create("cnn", rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, rest, x, y):
        def loss_fn(params):
            return _ce(nnx.merge(graphdef, params, rest)(x), y)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = [params, opt_state]

    def run(x, y):
        state[0], state[1], loss = step(state[0], state[1], rest, x, y)
        return loss

    return run


def time_loop(run, x, y, steps):
    run(x, y).block_until_ready()  # compile
    start = time.perf_counter()
    for _ in range(steps):
        loss = run(x, y)
    loss.block_until_ready()
    return (time.perf_counter() - start) / steps * 1e3


def fit_epoch_ms(which, data, batch):
    module = zoo.create("cnn") if which == "linen" else zoo.nnx.create("cnn", rngs=nnx.Rngs(0))
    result = train.fit(module, data, epochs=2, batch_size=batch, log=lambda *_: None, log_every=1000)
    steps = (len(data["x"]) - len(data["x"]) // 10) // batch
    return result.history[-1]["epoch_s"] / steps * 1e3  # the second epoch: compiled


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--fit-examples", type=int, default=2880)
    args = parser.parse_args()
    x, y = _batch(args.batch)
    loops = {"linen": linen_loop, "nnx.jit": nnx_jit_loop, "split": nnx_split_loop}
    runs = {name: make(args.batch) for name, make in loops.items()}
    times = {name: [] for name in loops}
    rng = np.random.default_rng(1)
    data = {"x": rng.random((args.fit_examples, 28, 28, 1), dtype=np.float32), "y": rng.integers(0, 10, args.fit_examples)}
    fit_times = {"linen": [], "nnx": []}
    print(f"device: {jax.devices()[0].device_kind}, batch {args.batch}, {args.steps} steps per round")
    for r in range(args.rounds):
        for name, run in runs.items():
            times[name].append(time_loop(run, x, y, args.steps))
        for which in fit_times:
            fit_times[which].append(fit_epoch_ms(which, data, args.batch))
        print(f"round {r + 1}: " + ", ".join(f"{n} {t[-1]:.2f} ms" for n, t in {**times, **{'fit ' + k: v for k, v in fit_times.items()}}.items()))
    med = {n: statistics.median(t) for n, t in times.items()}
    ratio = lambda a, b: statistics.median(p / q for p, q in zip(a, b))  # noqa: E731 (per-round ratios)
    print("\n| loop | ms/step (median) | vs linen (median of per-round ratios) |\n|---|---|---|")
    for n in times:
        print(f"| hand-written {n} | {med[n]:.2f} | {ratio(times[n], times['linen']):.3f}x |")
    print(f"| train.fit linen | {statistics.median(fit_times['linen']):.2f} | 1.000x |")
    print(f"| train.fit nnx | {statistics.median(fit_times['nnx']):.2f} | {ratio(fit_times['nnx'], fit_times['linen']):.3f}x |")


if __name__ == "__main__":
    main()
