"""Where the CPU time goes: the measurements behind bench/README.md ("Where the CPU time goes").

    python bench/cpu_probe.py matmul      # XLA vs PyTorch matmul GFLOP/s
    python bench/cpu_probe.py conv        # one 3x3 conv, forward and forward+backward, XLA vs PyTorch
    python bench/cpu_probe.py floor       # FLOPs of each zoo train step (XLA cost analysis) -> time floor
    python bench/cpu_probe.py batch       # CNN train step cost per example vs batch size
    python bench/cpu_probe.py options     # zoo's XLA:CPU compiler options on/off, alternating rounds
    python bench/cpu_probe.py scan        # CNN steps in a rolled lax.scan vs one step per dispatch
    python bench/cpu_probe.py lstm        # LSTM train step: zoo vs autodiff through flax's LSTM vs PyTorch
    python bench/cpu_probe.py transpose   # each transposed-conv formulation per zoo layer shape, fwd+bwd
    python bench/cpu_probe.py all

Each line printed is one measurement; run it on an otherwise idle machine. PyTorch uses
--threads threads (default 2), XLA its default pool.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

MODELS = ("mlp", "cnn", "lstm", "autoencoder", "dcgan")


def timeit(fn, *args, n: int = 20) -> float:
    """Best-of-3 mean seconds per call of fn(*args) (results blocked on)."""
    import jax

    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t) / n)
    return best


def torch_time(fn, n: int = 20) -> float:
    fn()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n)
    return best


def matmul_rate(m: int, k: int, n: int) -> float:
    """XLA GFLOP/s of an (m, k) @ (k, n) float32 matmul."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    a = jnp.asarray(np.random.rand(m, k), jnp.float32)
    b = jnp.asarray(np.random.rand(k, n), jnp.float32)
    return 2 * m * k * n / timeit(jax.jit(jnp.dot), a, b, n=5) / 1e9


def probe_matmul(args) -> None:
    import torch

    for m, k, n in [(2048, 2048, 2048), (12544, 288, 64), (100, 128, 512)]:
        a, b = torch.rand(m, k), torch.rand(k, n)
        t = torch_time(lambda: a @ b, n=5)
        print(f"matmul {m}x{k}x{n}: XLA {matmul_rate(m, k, n):.0f} GFLOP/s, PyTorch {2 * m * k * n / t / 1e9:.0f} GFLOP/s")


def probe_conv(args) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from train import parallel

    b, h, cin, cout = 64, 14, 32, 64
    x = jnp.asarray(np.random.rand(b, h, h, cin), jnp.float32)
    k = jnp.asarray(np.random.rand(3, 3, cin, cout), jnp.float32)
    conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))  # noqa: E731
    grad = jax.grad(lambda x, k: (conv(x, k) ** 2).sum(), argnums=(0, 1))
    xla = {}
    for name, options in (("XLA defaults", None), ("zoo options", parallel.compiler_options())):
        xla[name] = (timeit(jax.jit(conv, compiler_options=options), x, k), timeit(jax.jit(grad, compiler_options=options), x, k))
    tx = torch.rand(b, cin, h, h, requires_grad=True)
    layer = torch.nn.Conv2d(cin, cout, 3, padding=1)
    t_fwd = torch_time(lambda: layer(tx))
    t_both = torch_time(lambda: layer(tx).pow(2).sum().backward())
    print(f"conv 3x3 {cin}->{cout} on {b}x{h}x{h}: "
          + "; ".join(f"{name} fwd {1e3 * f:.2f} ms, fwd+bwd {1e3 * g:.2f} ms" for name, (f, g) in xla.items())
          + f"; PyTorch fwd {1e3 * t_fwd:.2f} ms, fwd+bwd {1e3 * t_both:.2f} ms")


def _trainer(model: str, data: dict, batch: int | None = None, options="auto"):
    """compare.py's zoo trainer at the tutorial recipe, optionally with another batch size."""
    import dataclasses

    import compare

    cfg = compare.tutorial_config(model)
    if batch:
        cfg = dataclasses.replace(cfg, batch_size=batch)
    return compare.ZooTrainer(model, data, options=options, cfg=cfg)


def _data() -> dict:
    import compare

    return compare.load_mnist()


def probe_floor(args) -> None:
    data = _data()
    rate = matmul_rate(2048, 2048, 2048)
    print(f"floor: XLA matmul rate here {rate:.0f} GFLOP/s (2048^3)")
    for model in args.models:
        tr = _trainer(model, data)
        idx = tr.strategy.place_indices(tr._idx(1))
        cost = tr.strategy._chunk.lower(tr.state, tr.data, idx).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops = float(cost.get("flops", 0.0))
        tr.run(5)
        ms = 1e3 * min(tr.run(20) / 20 for _ in range(2))
        print(f"floor {model}: {flops / 1e9:.2f} GFLOP per step (XLA count) -> >= {1e3 * flops / rate / 1e9:.1f} ms at "
              f"{rate:.0f} GFLOP/s; measured {ms:.1f} ms")


def probe_batch(args) -> None:
    data = _data()
    for batch in (16, 32, 64, 128, 256):
        tr = _trainer("cnn", data, batch)
        tr.run(3)
        s = min(tr.run(10) / 10 for _ in range(2))
        print(f"batch cnn {batch}: {1e3 * s:.1f} ms/step, {1e6 * s / batch:.0f} us/example")


def probe_options(args) -> None:
    """Two trainers per model in one process, XLA defaults vs zoo's options, alternating
    `--reps` rounds of 10 steps; prints the best and median ms/step of each."""
    from train import parallel

    data = _data()
    for model in args.models:
        trainers = {"XLA defaults": _trainer(model, data, options=None),
                    "zoo options": _trainer(model, data, options=parallel.compiler_options())}
        times = {name: [] for name in trainers}
        for tr in trainers.values():
            tr.run(5)
        for _ in range(args.reps):
            for name, tr in trainers.items():
                times[name].append(1e3 * tr.run(10) / 10)
        print(f"options {model}: " + "; ".join(
            f"{name} {min(t):.1f} ms (median {statistics.median(t):.1f})" for name, t in times.items()) + " per step")


def probe_scan(args) -> None:
    """Why the CPU engine dispatches one step per call: 10 CNN steps in one rolled lax.scan
    (as accelerators run an epoch) vs 10 separate dispatches of the same step."""
    import jax
    import jax.numpy as jnp

    tr = _trainer("cnn", _data())
    step_fn = tr.task.train_step(tr.model, tr.cfg)

    def rolled(state, data, idx):
        return jax.lax.scan(lambda s, i: step_fn(s, jax.tree.map(lambda a: a[i], data)), state, idx)

    scan = jax.jit(rolled, compiler_options=tr.strategy.options)
    idx = jnp.asarray(tr._idx(10), jnp.int32)
    jax.block_until_ready(scan(tr.state, tr.data, idx))  # compile (state not donated: reused below)
    t = time.perf_counter()
    jax.block_until_ready(scan(tr.state, tr.data, idx))
    scanned = (time.perf_counter() - t) / 10
    tr.run(5)
    single = min(tr.run(10) / 10 for _ in range(2))
    print(f"scan cnn: rolled lax.scan {1e3 * scanned:.1f} ms/step, one step per dispatch {1e3 * single:.1f} ms/step "
          f"({scanned / single:.1f}x)")


def probe_lstm(args) -> None:
    """The `lstm` model's train step (batch 100, Adam, random 28x28 inputs) three ways, alternating
    `--reps` rounds of 20 steps: zoo's layers (hand-written backward pass), the same network
    as a stock flax nn.RNN(nn.OptimizedLSTMCell) stack with autodiff, and the PyTorch twin.
    Prints wall and process-CPU ms per step (CPU time is steadier on a shared machine) and
    each JAX step's compile time."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import torch
    from flax import linen as nn

    import zoo
    from train import parallel

    b, t, f, h = 100, 28, 28, 128
    rng = np.random.default_rng(0)
    x_np, y_np = rng.random((b, t, f), np.float32), rng.integers(0, 10, b)
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)

    class FlaxLSTM(nn.Module):  # the reference: flax's own LSTM cell, scanned, autodiff
        @nn.compact
        def __call__(self, x):
            for _ in range(2):
                x = nn.RNN(nn.OptimizedLSTMCell(h))(x)
            return nn.Dense(10)(x[:, -1])

    opt = optax.adam(1e-3)

    def jax_step(model):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

        def step(state):
            p, o = state
            g = jax.grad(loss)(p)
            u, o = opt.update(g, o, p)
            return optax.apply_updates(p, u), o

        params = model.init(jax.random.key(0), x)["params"]
        state = (params, opt.init(params))
        t0 = time.perf_counter()
        compiled = jax.jit(step, donate_argnums=0).lower(state).compile(parallel.compiler_options())
        compile_s = time.perf_counter() - t0
        holder = [compiled(state)]

        def run():
            holder[0] = compiled(holder[0])
            return holder[0]

        return run, compile_s

    net = zoo.torch_model("lstm").train()
    topt = torch.optim.Adam(net.parameters(), lr=1e-3)
    tx, ty = torch.from_numpy(x_np), torch.from_numpy(y_np)

    def torch_step():
        topt.zero_grad()
        torch.nn.functional.cross_entropy(net(tx), ty).backward()
        topt.step()

    zoo_run, zoo_compile = jax_step(zoo.create("lstm"))
    flax_run, flax_compile = jax_step(FlaxLSTM())
    runs = {"zoo": zoo_run, "flax autodiff": flax_run, "pytorch": torch_step}
    wall, cpu = {k: [] for k in runs}, {k: [] for k in runs}
    for _ in range(args.reps):
        for name, fn in runs.items():
            jax.block_until_ready(fn())
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(20):
                out = fn()
            jax.block_until_ready(out)
            wall[name].append(1e3 * (time.perf_counter() - t0) / 20)
            cpu[name].append(1e3 * (time.process_time() - c0) / 20)
    print(f"lstm train step (compile: zoo {zoo_compile:.1f} s, flax autodiff {flax_compile:.1f} s): " + "; ".join(
        f"{k} {statistics.median(wall[k]):.1f} ms (min {min(wall[k]):.1f}, CPU {statistics.median(cpu[k]):.1f} ms)"
        for k in runs) + f"; zoo/pytorch speed {statistics.median(wall['pytorch']) / statistics.median(wall['zoo']):.2f}x")
# (input side, Cin, Cout, kernel, stride, padding) of the zoo's transposed convs (batch 128),
# plus output widths around the col2im/subpixel boundary (layers.COL2IM_MAX_FEATURES).
TRANSPOSE_SHAPES = [
    (4, 16, 64, 4, 1, 0),  # autoencoder dec_0
    (7, 64, 32, 4, 2, 1),  # autoencoder dec_1
    (14, 32, 1, 4, 2, 1),  # autoencoder dec_2
    (7, 128, 64, 4, 2, 1),  # dcgan deconv_1
    (14, 64, 1, 4, 2, 1),  # dcgan deconv_2
    (14, 32, 4, 4, 2, 1),
    (7, 64, 8, 4, 2, 1),
    (14, 32, 8, 4, 2, 1),
    (7, 64, 16, 4, 2, 1),
    (14, 32, 16, 4, 2, 1),
]


def probe_transpose(args) -> None:
    """Forward + backward (input and kernel gradients) of one transposed conv at batch 128, every
    formulation of zoo.layers.conv_transpose against lax.conv_transpose (what flax runs) and
    PyTorch's ConvTranspose2d, alternating `--reps` rounds; prints the best ms of each, and
    which one `layers.transpose_method` picks."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from train import parallel
    from zoo import layers

    options = parallel.compiler_options()
    rng = np.random.default_rng(0)
    on_cpu = jax.default_backend() == "cpu"
    for h, cin, cout, k, s, p in TRANSPOSE_SHAPES:
        x = jnp.asarray(rng.normal(size=(128, h, h, cin)), jnp.float32)
        kern = jnp.asarray(rng.normal(size=(k, k, cout, cin)), jnp.float32)
        pad = ((k - 1 - p, k - 1 - p),) * 2

        def lax_ct(x, kern):
            return jax.lax.conv_transpose(x, kern, (s, s), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"), transpose_kernel=True)

        fns = {"lax": lax_ct}
        for m in ("conv",) if s == 1 else ("subpixel", "col2im"):
            fns[m] = lambda x, kern, m=m: layers.conv_transpose(x, kern, s, p, method=m)
        grads = {name: jax.jit(jax.grad(lambda x, kern, f=f: (f(x, kern) ** 2).sum(), argnums=(0, 1)), compiler_options=options)
                 for name, f in fns.items()}
        calls = {name: (lambda g=g: g(x, kern)) for name, g in grads.items()}
        if on_cpu:
            tx = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2).copy(), requires_grad=True)
            layer = torch.nn.ConvTranspose2d(cin, cout, k, s, p, bias=False)
            calls["torch"] = lambda: layer(tx).pow(2).sum().backward()
        best = {name: float("inf") for name in calls}
        for fn in calls.values():
            jax.block_until_ready(fn())
        for _ in range(args.reps):
            for name, fn in calls.items():
                t = time.perf_counter()
                for _ in range(5):
                    out = fn()
                jax.block_until_ready(out)
                best[name] = min(best[name], 1e3 * (time.perf_counter() - t) / 5)
        pick = layers.transpose_method((h, h), cout, k, s, p)
        print(f"transpose {h}->{(h - 1) * s - 2 * p + k} {cin}->{cout} k{k} s{s} ({jax.default_backend()}, picks {pick}): "
              + ", ".join(f"{name} {ms:.2f} ms" for name, ms in best.items()))
        sys.stdout.flush()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("probe", choices=("matmul", "conv", "floor", "batch", "options", "scan", "lstm", "transpose", "all"))
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import compare

    compare.setup_torch(args.threads)
    probes = {"matmul": probe_matmul, "conv": probe_conv, "floor": probe_floor, "batch": probe_batch,
              "options": probe_options, "scan": probe_scan, "lstm": probe_lstm, "transpose": probe_transpose}
    for name in probes if args.probe == "all" else [args.probe]:
        probes[name](args)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
