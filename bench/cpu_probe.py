"""Where the CPU time goes: the measurements behind bench/README.md ("Where the CPU time goes").

    python bench/cpu_probe.py matmul      # XLA vs PyTorch matmul GFLOP/s
    python bench/cpu_probe.py conv        # one 3x3 conv, forward and forward+backward, XLA vs PyTorch
    python bench/cpu_probe.py floor       # FLOPs of each zoo train step (XLA cost analysis) -> time floor
    python bench/cpu_probe.py batch       # CNN train step cost per example vs batch size
    python bench/cpu_probe.py options     # zoo's XLA:CPU compiler options on/off, alternating rounds
    python bench/cpu_probe.py scan        # CNN steps in a rolled lax.scan vs one step per dispatch
    python bench/cpu_probe.py lstm        # LSTM train step: zoo vs autodiff through flax's LSTM vs PyTorch
    python bench/cpu_probe.py transpose   # each transposed-conv formulation per zoo layer shape, fwd+bwd
    python bench/cpu_probe.py profile     # jax.profiler trace of each train step: kernels by category, host share
    python bench/cpu_probe.py bn          # DCGAN step: flax BatchNorm vs a one-pass candidate, alternating rounds
    python bench/cpu_probe.py convgrad    # conv kernel gradients as matmuls vs XLA's: per layer, then train steps A/B
    python bench/cpu_probe.py pool        # CNN step: max pooling's hand-written gradient vs autodiff through max
    python bench/cpu_probe.py dense       # autoencoder step: its small stride-1 transposed conv as a dense matmul vs a conv
    python bench/cpu_probe.py vendor      # train steps: zoo vs PyTorch with and without its oneDNN kernels
    python bench/cpu_probe.py platform    # train steps: layers chosen per platform vs the CPU rewrites traced directly
    python bench/cpu_probe.py all

Each line printed is one measurement; run it on an otherwise idle machine. PyTorch uses
--threads threads (default 2), XLA its default pool.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import re
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


def alternating_rounds(trainers: dict, reps: int, steps: int, warmup: int) -> tuple[dict, dict, list]:
    """Times trainers side by side: `warmup` untimed steps each, then `reps` rounds in which
    every trainer runs `steps` steps in turn. Returns ({name: [wall ms/step per round]},
    {name: [process CPU ms/step per round]}, load averages before and after each round)."""
    for tr in trainers.values():
        tr.run(warmup)
    wall, cpu = {n: [] for n in trainers}, {n: [] for n in trainers}
    loads = [os.getloadavg()[0]]
    for _ in range(reps):
        for n, tr in trainers.items():
            c = time.process_time()
            wall[n].append(1e3 * tr.run(steps) / steps)
            cpu[n].append(1e3 * (time.process_time() - c) / steps)
        loads.append(os.getloadavg()[0])
    return wall, cpu, loads


def probe_options(args) -> None:
    """Two trainers per model in one process, XLA defaults vs zoo's options, alternating
    `--reps` rounds of 10 steps; prints the best and median ms/step of each."""
    from train import parallel

    data = _data()
    for model in args.models:
        trainers = {"XLA defaults": _trainer(model, data, options=None),
                    "zoo options": _trainer(model, data, options=parallel.compiler_options())}
        times = alternating_rounds(trainers, args.reps, steps=10, warmup=5)[0]
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
        for m in ("conv", "dense", "col2im") if s == 1 else ("subpixel", "col2im"):
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
        pick = layers.transpose_method((h, h), cout, k, s, p, in_features=cin)
        print(f"transpose {h}->{(h - 1) * s - 2 * p + k} {cin}->{cout} k{k} s{s} ({jax.default_backend()}, picks {pick}): "
              + ", ".join(f"{name} {ms:.2f} ms" for name, ms in best.items()))
        sys.stdout.flush()


# --------------------------------------------------------------------------------------------------
# profile: jax.profiler traces of whole train steps, aggregated with the standard library


# Kernel categories, in the order the tables list them.
CATEGORIES = ("convolution", "dot (YNNPACK)", "dot (XLA)", "fusion: reduction", "fusion: elementwise",
              "copy/transpose/pad/slice", "loop bookkeeping", "other")
# HLO opcodes that only move or reshape data (a fusion of nothing else is "copy/transpose/pad/slice").
_DATA_MOVEMENT = {"copy", "transpose", "bitcast", "reshape", "broadcast", "concatenate", "pad", "slice",
                  "dynamic-slice", "dynamic-update-slice", "gather", "scatter", "iota", "parameter",
                  "constant", "tuple", "get-tuple-element", "reverse"}
_LOOP = {"while", "conditional", "call"}
_ASYNC = {"convolution", "dot (XLA)"}  # XLA:CPU runs these on Eigen's pool after the thunk's event ends
_TRIVIAL = {"bitcast", "constant", "broadcast", "reshape", "tuple", "get-tuple-element"}  # left out of printed op lists

_HLO_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (.*?)\s([a-z][\w\-]*)\(")
_HLO_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+) .*\{\s*$")


def parse_hlo(text: str) -> dict:
    """Optimized HLO text (`compiled.as_text()`) -> {name: {"op", "shape", "operands", "ops",
    "transposes", "what", "layers"}}.

    "ops": the opcodes of the instruction and, for a fusion, of its fused computation (nested
    calls followed); "what": the instruction's JAX op_name (else the most frequent among its
    fused ops) minus jit(...) and transform prefixes (e.g. "generator/bn_1/reduce_sum");
    "layers": the layer paths of all its ops (e.g. ["bwd: generator/bn_1", "generator/bn_1"]);
    "transposes": the permutations of the transposes among them (e.g. "3,1,2,0").
    """
    comps: dict[str, list] = {}
    instrs: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        m = _HLO_COMP.match(line)
        if m and not line.startswith(" "):
            current = comps.setdefault(m.group(1), [])
            continue
        m = _HLO_INSTR.match(line)
        if not m or current is None:
            continue
        calls = re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)", line)
        op_name = re.search(r'op_name="([^"]*)"', line)
        args = re.search(re.escape(m.group(3)) + r"\(([^)]*)\)", line)
        perm = re.search(r"dimensions=\{([\d,]*)\}", line) if m.group(3) == "transpose" else None
        rec = {"op": m.group(3), "shape": m.group(2).strip(), "calls": calls,
               "op_name": op_name.group(1) if op_name else "", "perm": perm.group(1) if perm else None,
               "operands": re.findall(r"%([\w.\-]+)", args.group(1)) if args else []}
        current.append(rec)
        instrs[m.group(1)] = rec

    def collect(rec, seen):
        ops, names = {rec["op"]}, [rec["op_name"]] if rec["op_name"] else []
        perms = {rec["perm"]} if rec["perm"] else set()
        for c in rec["calls"]:
            if c in seen or c not in comps:
                continue
            seen.add(c)
            for sub in comps[c]:
                o, n, p = collect(sub, seen)
                ops |= o
                names += n
                perms |= p
        return ops, names, perms

    out = {}
    for name, rec in instrs.items():
        ops, names, perms = collect(rec, set())
        ops -= {"parameter", "fusion"} if rec["calls"] else {"parameter"}
        whats = [_short_op_name(n) for n in names if n]
        what = _short_op_name(rec["op_name"]) if rec["op_name"] else max(set(whats), key=whats.count) if whats else ""
        layers = sorted({_short_op_name(n).rsplit("/", 1)[0] for n in names if "/" in _short_op_name(n)})
        out[name] = {"op": rec["op"], "shape": rec["shape"], "operands": rec["operands"], "ops": sorted(ops),
                     "transposes": sorted(perms), "what": what, "layers": layers}
    return out


def _short_op_name(op_name: str) -> str:
    """'jit(chunk)/transpose(jvp(DCGAN.generate))/generator/bn_1/reduce_sum' -> 'generator/bn_1/reduce_sum'
    (with "bwd: " in front when the op is part of a backward pass: transpose(...))."""
    parts = [p for p in op_name.split("/") if p and "(" not in p and p not in ("while", "body", "cond")]
    return ("bwd: " if "transpose(" in op_name else "") + "/".join(parts[-3:])


def categorize(name: str, hlo: dict | None = None) -> str:
    """One of CATEGORIES for the kernel (thunk) `name`, from its HLO opcodes where `hlo`
    (parse_hlo's record of it) is known, else from the opcodes XLA puts in the name."""
    if hlo:
        ops, root = set(hlo["ops"]), hlo["op"]
    else:
        base = re.sub(r"\.\d+$", "", name)
        root = base.split("_")[-1] if base.endswith("fusion") else base.replace("wrapped_", "")
        ops = set(base.replace("wrapped_", "").split("_")) - {"fusion"}
    if root in _LOOP:
        return "loop bookkeeping"
    if "convolution" in ops or name.startswith(("convolution", "conv_general")):
        return "convolution"
    if "dot" in ops or name.startswith("dot"):
        return "dot (YNNPACK)" if name.startswith("ynn") else "dot (XLA)"
    if hlo and hlo["shape"].split("{")[0] in ("s32[]", "pred[]", "u32[]"):
        return "loop bookkeeping"  # scalar counters and loop conditions
    if "reduce" in ops:
        return "fusion: reduction"
    if ops and ops <= _DATA_MOVEMENT:
        return "copy/transpose/pad/slice"
    if ops - _DATA_MOVEMENT:
        return "fusion: elementwise"
    return "other"


def _union_length(intervals) -> float:
    """Total length covered by (start, end) intervals."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e > end:
            total += e - max(s, end)
            end = e
    return total


def _subtract_length(intervals, minus) -> float:
    """Length of the union of `intervals` not covered by the union of `minus`."""
    return _union_length(list(intervals) + list(minus)) - _union_length(minus)


def _self_times(events) -> list[float]:
    """Exclusive duration of each event (`ts`, `dur`): its duration minus that of the events
    nested in it on the same thread (a while thunk contains its body's kernels)."""
    selfs = [e["dur"] for e in events]
    by_tid: dict = {}
    for i, e in enumerate(events):
        by_tid.setdefault(e["tid"], []).append(i)
    for idx in by_tid.values():
        stack: list[int] = []
        for i in sorted(idx, key=lambda i: (events[i]["ts"], -events[i]["dur"])):
            e = events[i]
            while stack and events[stack[-1]]["ts"] + events[stack[-1]]["dur"] <= e["ts"]:
                stack.pop()
            if stack:
                selfs[stack[-1]] -= e["dur"]
            stack.append(i)
    return selfs


def _gaps(kernels, is_async=lambda e: False):
    """Stretches of the timeline with no kernel event open on any thread, as (length, owner,
    between_steps). Within a step the owner is the last kernel of that step launched before the
    gap for which `is_async(e)` holds (its work may still be running in the thread pool), else
    the kernel whose event ended last; between_steps: the gap separates two steps (run_ids)."""
    order = sorted(kernels, key=lambda e: e["ts"])
    run = lambda e: e["args"].get("run_id")  # noqa: E731
    out, last, launched = [], order[0], order[0] if is_async(order[0]) else None
    for e in order[1:]:
        end = last["ts"] + last["dur"]
        if e["ts"] > end:
            owner = launched if launched is not None and run(launched) == run(e) else last
            out.append((e["ts"] - end, owner, run(last) != run(e)))
        if e["ts"] + e["dur"] > end:
            last = e
        if is_async(e):
            launched = e
    return out


def kernel_gradient_convs(hlo: dict) -> list[str]:
    """The convolutions of parse_hlo's dict that compute a kernel gradient: XLA:CPU writes one
    as a convolution whose input is the layer input with batch and channels swapped (a
    transpose with permutation 3,1,2,0), its window as large as the layer's output map."""
    return sorted(name for name, rec in hlo.items() if rec["op"] == "convolution" and rec["operands"]
                  and "3,1,2,0" in hlo.get(rec["operands"][0], {}).get("transposes", []))


def summarize_trace(trace: dict, hlo: dict | None = None, host_marker: str = "run_chunk", top: int = 15,
                    select: str | None = None) -> dict:
    """Aggregates a jax.profiler trace (the parsed Chrome/Perfetto JSON) of N train steps.

    Kernels are the events carrying an "hlo_op" argument (XLA:CPU's thunks, with
    xla_cpu_enable_xprof_traceme); one step = one "run_id". XLA:CPU runs convolutions (and
    Eigen dots) asynchronously: the thunk's event ends when the work is handed to the thread
    pool, and the work shows up as a gap with no kernel running. So each gap inside a step is
    added to the convolution or XLA dot launched last before it, or where none was launched yet
    in that step, to the kernel whose event ended last ("tail"); gaps between the last kernel
    of one step and the first of the next are "between steps" (host side: dispatch, argument
    handling, waiting for the donated state). Everything is ms per step: `wall` = first kernel
    start to last kernel end / N; `busy` = time some kernel event is open; `kernel` = summed
    exclusive event time (> busy when threads overlap); `tail`, `between_steps`; `host` = time in
    events whose name contains `host_marker` (Python dispatch), `host_exposed` its part with no
    kernel event open. `kernels`: the top `top` by event + tail time, `categories`: CATEGORIES;
    `selected`: every kernel one of whose HLO layer paths contains `select` (e.g. "bn_");
    `kernel_grad`: XLA's kernel-gradient convolutions (see `kernel_gradient_convs`) and the
    kernels producing their operands (the batch<->channel transposes), ms/step.
    """
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    kernels = [e for e in events if "hlo_op" in e.get("args", {})]
    if not kernels:
        raise ValueError("trace has no XLA kernel events (args.hlo_op): expected a trace taken with "
                         "the xla_cpu_enable_xprof_traceme option, got none among "
                         f"{len(events)} complete events")
    steps = len({e["args"].get("run_id") for e in kernels})
    wall = max(e["ts"] + e["dur"] for e in kernels) - min(e["ts"] for e in kernels)
    spans = [(e["ts"], e["ts"] + e["dur"]) for e in kernels]
    host = [(e["ts"], e["ts"] + e["dur"]) for e in events
            if host_marker in e["name"] and "hlo_op" not in e.get("args", {})]
    hlo = hlo or {}
    own: dict[str, float] = {}
    tail: dict[str, float] = {}
    for e, self_us in zip(kernels, _self_times(kernels)):
        own[e["name"]] = own.get(e["name"], 0.0) + self_us
    cat_of = {name: categorize(name, hlo.get(name)) for name in own}
    between = 0.0
    for length, owner, between_steps in _gaps(kernels, lambda e: cat_of[e["name"]] in _ASYNC):
        if between_steps:
            between += length
        else:
            tail[owner["name"]] = tail.get(owner["name"], 0.0) + length
    total = {n: own[n] + tail.get(n, 0.0) for n in own}
    attributed = sum(total.values())
    ms = lambda us: us / 1e3 / steps  # noqa: E731
    cats = {c: 0.0 for c in CATEGORIES}
    rows = []
    for name, us in sorted(total.items(), key=lambda kv: -kv[1]):
        cat = cat_of[name]
        cats[cat] += us
        rec = hlo.get(name, {})
        rows.append({"name": name, "ms": ms(us), "event_ms": ms(own[name]), "tail_ms": ms(tail.get(name, 0.0)),
                     "share": us / attributed, "category": cat, "what": rec.get("what", ""),
                     "shape": rec.get("shape", ""), "ops": [o for o in rec.get("ops", []) if o not in _TRIVIAL]})
    conv_names = kernel_gradient_convs(hlo)
    feeders = {o for n in conv_names for o in hlo[n]["operands"]}
    return {
        "kernel_grad": {"convs": sorted(n for n in conv_names if n in total),
                        "convs_ms": ms(sum(total.get(n, 0.0) for n in conv_names)),
                        "operands_ms": ms(sum(total.get(n, 0.0) for n in feeders))},
        "steps": steps, "wall_ms": ms(wall), "busy_ms": ms(_union_length(spans)), "kernel_ms": ms(sum(own.values())),
        "tail_ms": ms(sum(tail.values())), "between_steps_ms": ms(between),
        "host_ms": ms(_union_length(host)), "host_exposed_ms": ms(_subtract_length(host, spans)),
        "kernels": rows[:top], "kernel_count": len(kernels) / steps,
        "selected": [r for r in rows if select and any(select in x for x in hlo.get(r["name"], {}).get("layers", []))],
        "categories": {c: {"ms": ms(us), "share": us / attributed} for c, us in cats.items() if us},
    }


def format_summary(model: str, s: dict, extra: str = "") -> str:
    """summarize_trace's dict as the text block of results/profile_cpu.txt."""
    lines = [f"profile {model}: {s['steps']} steps{extra}",
             f"  per step: wall {s['wall_ms']:.1f} ms (first to last kernel); kernel events {s['kernel_ms']:.1f} ms "
             f"({s['kernel_count']:.0f} kernels, some event open {s['busy_ms']:.1f} ms), async tails "
             f"{s['tail_ms']:.1f} ms, between steps {s['between_steps_ms']:.2f} ms; Python dispatch "
             f"{s['host_ms']:.2f} ms ({s['host_exposed_ms']:.2f} ms of it with no kernel event open)",
             f"  kernel-gradient convolutions: {s['kernel_grad']['convs_ms']:.1f} ms/step "
             f"({len(s['kernel_grad']['convs'])} convs), the kernels producing their operands (batch<->channel "
             f"transposes): {s['kernel_grad']['operands_ms']:.1f} ms/step",
             "  categories (ms/step incl. async tails, share of kernel time):"]
    for c, v in sorted(s["categories"].items(), key=lambda kv: -kv[1]["ms"]):
        lines.append(f"    {c:26s} {v['ms']:7.2f} ms  {100 * v['share']:5.1f}%")
    blocks = [("top kernels", s["kernels"])]
    if s.get("selected"):
        sel = s["selected"]
        blocks.append((f"selected kernels ({len(sel)}, {sum(r['ms'] for r in sel):.2f} ms/step, "
                       f"{100 * sum(r['share'] for r in sel):.1f}%)", sel))
    for title, rows in blocks:
        lines.append(f"  {title} (ms/step = event + async tail; share; category; HLO shape; JAX op; fused ops):")
        lines += [f"    {r['name']:30s} {r['ms']:6.2f} ms (tail {r['tail_ms']:5.2f}) {100 * r['share']:5.1f}%  "
                  f"{r['category']:24s} {r['shape'].split('{')[0]:22s} {r['what']}  [{' '.join(r['ops'])}]" for r in rows]
    return "\n".join(lines)


def load_trace(log_dir) -> dict:
    """The newest perfetto_trace.json.gz under a jax.profiler.trace log_dir, parsed."""
    files = sorted(Path(log_dir).glob("plugins/profile/*/perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise ValueError(f"{log_dir}: expected plugins/profile/*/perfetto_trace.json.gz, found none")
    with gzip.open(files[-1], "rt") as f:
        return json.load(f)


def probe_profile(args) -> None:
    """Each model's engine train step (compare.py's trainer, the engine's CPU options plus
    xla_cpu_enable_xprof_traceme for per-kernel events): warm up, trace `--steps` steps with
    jax.profiler, aggregate (summarize_trace) with the optimized HLO's names (parse_hlo).
    Traces and HLO go to --trace-dir; prints one block per model."""
    import tempfile

    import jax

    from train import parallel

    out = Path(args.trace_dir or tempfile.mkdtemp(prefix="zoo_profile_"))
    out.mkdir(parents=True, exist_ok=True)
    data = _data()
    print(f"profile: load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} (traces, HLO: {out})")
    for model in args.models:
        options = {**(parallel.compiler_options() or {}), "xla_cpu_enable_xprof_traceme": True}
        tr = _trainer(model, data, options=options)
        idx = tr.strategy.place_indices(tr._idx(1))
        text = tr.strategy._chunk.lower(tr.state, tr.data, idx).compile().as_text()
        (out / f"{model}.hlo.txt").write_text(text)
        tr.run(3)
        c0 = time.process_time()  # untraced steps of the same program: wall and process CPU (all threads)
        wall = tr.run(args.steps) / args.steps
        cpu = (time.process_time() - c0) / args.steps
        with jax.profiler.trace(out / model, create_perfetto_trace=True):
            tr.run(args.steps)
        s = summarize_trace(load_trace(out / model), parse_hlo(text), select=args.select)
        print(format_summary(model, s, f"; untraced: {1e3 * wall:.1f} ms/step wall, {1e3 * cpu:.1f} ms/step "
                                       f"process CPU; load average {os.getloadavg()[0]:.1f}"))
        sys.stdout.flush()


# --------------------------------------------------------------------------------------------------
# bn: a one-pass batch norm (candidate) against flax's nn.BatchNorm in the DCGAN step


def one_pass_batch_norm():
    """A BatchNorm candidate with flax nn.BatchNorm's parameters, statistics and (training)
    arithmetic, whose forward reads the input once for both statistics (a variadic reduce of
    x and x*x) and whose hand-written backward reads (dy, x) once for sum(dy) and
    sum(dy * xhat). Returns the module class (defined here so cpu_probe imports no jax)."""
    from functools import partial

    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    def sums(a, b):  # per-channel sums of a and b in ONE pass (one variadic reduce)
        axes = tuple(range(a.ndim - 1))
        return jax.lax.reduce((a, b), (jnp.zeros((), a.dtype), jnp.zeros((), b.dtype)),
                              lambda p, q: (p[0] + q[0], p[1] + q[1]), axes)

    def forward(x, scale, bias, eps):
        n = x.size // x.shape[-1]
        s, ss = sums(x, x * x)
        mean = s / n
        var = jnp.maximum(ss / n - mean * mean, 0.0)  # flax's fast variance, clipped as flax does
        rstd = jax.lax.rsqrt(var + eps)
        return (x - mean) * (rstd * scale) + bias, mean, var, rstd

    @partial(jax.custom_vjp, nondiff_argnums=(3,))
    def train_norm(x, scale, bias, eps):
        """(y, mean, var); mean and var feed only the running averages: their cotangents are ignored."""
        return forward(x, scale, bias, eps)[:3]

    def fwd(x, scale, bias, eps):
        y, mean, var, rstd = forward(x, scale, bias, eps)
        return (y, mean, var), (x, scale, mean, rstd)

    def bwd(eps, res, g):
        x, scale, mean, rstd = res
        dy = g[0]
        n = x.size // x.shape[-1]
        xhat = (x - mean) * rstd
        s_dy, s_dyx = sums(dy, dy * xhat)
        dx = (scale * rstd) * (dy - s_dy / n - xhat * (s_dyx / n))
        return dx, s_dyx, s_dy

    train_norm.defvjp(fwd, bwd)

    class OnePassBatchNorm(nn.Module):
        use_running_average: bool | None = None
        momentum: float = 0.99
        epsilon: float = 1e-5
        dtype: object = None
        param_dtype: object = jnp.float32

        @nn.compact
        def __call__(self, x, use_running_average: bool | None = None):
            use_ra = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
            c = x.shape[-1]
            scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
            bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
            ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
            ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
            x32 = jnp.asarray(x, jnp.float32)
            if use_ra:
                y = (x32 - ra_mean.value) * (jax.lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
            else:
                y, mean, var = train_norm(x32, jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32),
                                          self.epsilon)
                if not self.is_initializing():
                    ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                    ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
            return jnp.asarray(y, self.dtype or x.dtype)

    return OnePassBatchNorm


def probe_bn(args) -> None:
    """The DCGAN train step with flax's nn.BatchNorm vs `one_pass_batch_norm()` (swapped in
    while the trainer is built and compiled), after checking the candidate against
    nn.BatchNorm (outputs, statistics, input/scale/bias gradients). Alternating `--reps`
    rounds of 5 steps; prints best and median ms per step and the load average."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import linen as nn

    cand = one_pass_batch_norm()
    rng = np.random.default_rng(0)
    x64 = rng.normal(1.0, 2.0, (128, 14, 14, 64))
    w = rng.normal(size=(64,))

    def run(layer, dtype):  # outputs, statistics, params and input gradients of a smooth loss
        x = jnp.asarray(x64, dtype)
        v = jax.tree.map(lambda a: jnp.asarray(a, dtype), layer.init(jax.random.key(0), x))

        def loss(p, x):
            y, upd = layer.apply({**v, "params": p}, x, mutable=["batch_stats"])
            return (jnp.tanh(y) * jnp.asarray(w, dtype)).sum(), (y, upd["batch_stats"])

        (_, aux), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(v["params"], x)
        return [np.asarray(a, np.float64) for a in jax.tree.leaves((aux, grads))]

    layers = {"flax": nn.BatchNorm(use_running_average=False, momentum=0.9, dtype=None),
              "one-pass": cand(use_running_average=False, momentum=0.9)}
    with jax.enable_x64():  # the reference: flax's layer in float64
        ref = run(nn.BatchNorm(use_running_average=False, momentum=0.9, param_dtype=jnp.float64), jnp.float64)
    got = {name: run(layer, jnp.float32) for name, layer in layers.items()}

    def rel(a, b):  # worst leaf: max |a - b| / max |b|
        return max(float(np.abs(x - y).max() / np.abs(y).max()) for x, y in zip(a, b))

    print(f"bn: on (128, 14, 14, 64), max relative difference over outputs, statistics and gradients: "
          f"one-pass vs flax {rel(got['one-pass'], got['flax']):.1e}; vs float64: flax {rel(got['flax'], ref):.1e}, "
          f"one-pass {rel(got['one-pass'], ref):.1e}")
    trainers, _ = patched_trainers("dcgan", _data(), {"flax nn.BatchNorm": None, "one-pass": (nn, "BatchNorm", cand)})
    times, _, loads = alternating_rounds(trainers, args.reps, steps=5, warmup=3)
    print(f"bn dcgan step ({args.reps} alternating rounds of 5 steps, load average {min(loads):.1f}-{max(loads):.1f}): "
          + "; ".join(f"{n} {min(t):.1f} ms (median {statistics.median(t):.1f})" for n, t in times.items())
          + f"; one-pass/flax median {statistics.median(times['one-pass']) / statistics.median(times['flax nn.BatchNorm']):.2f}")


# --------------------------------------------------------------------------------------------------
# convgrad: a stride-1 VALID conv's kernel gradient as matmuls instead of XLA's convolution (issue #15)

CONV_MODELS = ("cnn", "autoencoder", "dcgan")  # the models whose steps run layers.conv2d
# (batch, H, W, Cin, k, Cout) of every stride-1 VALID conv the zoo's conv models run through
# lax.conv_general_dilated (layers.conv2d above IM2COL_MAX_CHANNELS input channels).
CONVGRAD_SHAPES = [
    (64, 16, 16, 32, 3, 64, "cnn conv_1 (3x3 pad 1)"),
    (128, 8, 8, 128, 2, 64, "autoencoder enc_1, dcgan D conv_1 / G deconv_1 phase (2x2 after space-to-depth)"),
    (128, 10, 10, 16, 4, 64, "autoencoder dec_0 (stride-1 transposed conv)"),
    (128, 8, 8, 64, 2, 32, "autoencoder dec_1 phase (subpixel)"),
]


def _valid_conv(x, kernel):
    import jax

    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def kernel_grad_candidates() -> dict:
    """name -> dw(x, dy, kernel_shape): the kernel gradient of `_valid_conv` (x (B, H, W, Cin),
    dy (B, Ho, Wo, Cout) -> (kh, kw, Cin, Cout)) computed with matmuls:

    - "patches": im2col patches (B*Ho*Wo, kh*kw*Cin) by slices + concat, then ONE matmul
      contracting B*Ho*Wo with dy (B*Ho*Wo, Cout);
    - "lax-patches": the same with lax.conv_general_dilated_patches (features Cin-major);
    - "taps": kh*kw matmuls dy^T (Cout, B*Ho*Wo) @ x's shifted slice (B*Ho*Wo, Cin), no patch copy;
    - "taps-xT": x transposed once to (Cin, B, H, W) so each tap's dot is in standard layout
      (Cin, B*Ho*Wo) @ (B*Ho*Wo, Cout); the transpose is kept by an optimization barrier;
    - "patches-xT": those transposed slices concatenated, ONE (kh*kw*Cin, N) @ (N, Cout) matmul.
    """
    import jax
    import jax.numpy as jnp

    def slices(x, kh, kw, ho, wo):
        return [x[:, i : i + ho, j : j + wo] for i in range(kh) for j in range(kw)]  # each (B, Ho, Wo, Cin)

    def patches(x, dy, shape):
        kh, kw, cin, cout = shape
        _, ho, wo, _ = dy.shape
        p = jnp.concatenate(slices(x, kh, kw, ho, wo), -1).reshape(-1, kh * kw * cin)  # (N, kh*kw*Cin)
        return (p.T @ dy.reshape(-1, cout)).reshape(shape)

    def lax_patches(x, dy, shape):
        kh, kw, cin, cout = shape
        p = jax.lax.conv_general_dilated_patches(x, (kh, kw), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        d = p.reshape(-1, cin * kh * kw).T @ dy.reshape(-1, cout)  # (Cin*kh*kw, Cout), Cin-major
        return d.reshape(cin, kh, kw, cout).transpose(1, 2, 0, 3)

    def taps(x, dy, shape):
        kh, kw, cin, cout = shape
        _, ho, wo, _ = dy.shape
        dyt = dy.reshape(-1, cout).T  # (Cout, N)
        return jnp.stack([(dyt @ s.reshape(-1, cin)).T for s in slices(x, kh, kw, ho, wo)]).reshape(shape)

    def transposed_slices(x, kh, kw, ho, wo):
        xt = jax.lax.optimization_barrier(x.transpose(3, 0, 1, 2))  # (Cin, B, H, W)
        return [xt[:, :, i : i + ho, j : j + wo].reshape(x.shape[3], -1) for i in range(kh) for j in range(kw)]

    def taps_xt(x, dy, shape):
        kh, kw, cin, cout = shape
        _, ho, wo, _ = dy.shape
        g = dy.reshape(-1, cout)
        return jnp.stack([s @ g for s in transposed_slices(x, kh, kw, ho, wo)]).reshape(shape)

    def patches_xt(x, dy, shape):
        kh, kw, cin, cout = shape
        _, ho, wo, _ = dy.shape
        return (jnp.concatenate(transposed_slices(x, kh, kw, ho, wo), 0) @ dy.reshape(-1, cout)).reshape(shape)

    return {"patches": patches, "lax-patches": lax_patches, "taps": taps, "taps-xT": taps_xt, "patches-xT": patches_xt}


def conv_with_kernel_grad(dw):
    """`_valid_conv` with XLA's forward and input gradient and the kernel gradient dw(x, dy, shape)."""
    import jax

    @jax.custom_vjp
    def conv(x, kernel):
        return _valid_conv(x, kernel)

    def fwd(x, kernel):
        return _valid_conv(x, kernel), (x, kernel)

    def bwd(res, dy):
        x, kernel = res
        dx = jax.vjp(lambda x: _valid_conv(x, kernel), x)[1](dy)[0]  # the stock transposed conv
        return dx, dw(x, dy, kernel.shape).astype(kernel.dtype)

    conv.defvjp(fwd, bwd)
    return conv


def _conv2d_with(valid_conv):
    """zoo.layers.conv2d with its lax.conv_general_dilated branch replaced by valid_conv."""
    import jax.numpy as jnp

    from zoo import layers

    stock = layers.conv2d

    def conv2d(x, kernel, stride=1, padding=((0, 0), (0, 0))):
        (top, bottom), (left, right) = padding
        x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
        if stride == 1 and kernel.shape[2] > layers.IM2COL_MAX_CHANNELS:
            return valid_conv(x, kernel)
        return stock(x, kernel, stride)

    return conv2d


def probe_convgrad(args) -> None:
    """Kernel gradients as matmuls (`kernel_grad_candidates`) vs XLA's (stock autodiff):
    per layer shape, the kernel gradient alone and the conv's forward + both gradients,
    alternating `--reps` rounds of 5 calls (best and median ms); then whole train steps of
    `--models` with zoo.layers.conv2d's lax branch swapped for each of `--candidates`
    (compare.py's trainer, the engine's compiler options), alternating `--reps` rounds, median
    wall and process-CPU ms per step, first step (trace + compile) and the load average."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from train import parallel
    from zoo import layers

    options = parallel.compiler_options()
    cands = kernel_grad_candidates()
    rng = np.random.default_rng(0)

    def alternate(calls, reps, n=5):  # name -> list of ms per call
        times = {name: [] for name in calls}
        for fn in calls.values():
            jax.block_until_ready(fn())
        for _ in range(reps):
            for name, fn in calls.items():
                t = time.perf_counter()
                for _ in range(n):
                    out = fn()
                jax.block_until_ready(out)
                times[name].append(1e3 * (time.perf_counter() - t) / n)
        return times

    def fmt(times):
        return ", ".join(f"{k} {min(v):.2f} ({statistics.median(v):.2f})" for k, v in times.items())

    for b, h, w, cin, k, cout, name in CONVGRAD_SHAPES:
        x = jnp.asarray(rng.normal(size=(b, h, w, cin)), jnp.float32)
        kern = jnp.asarray(rng.normal(size=(k, k, cin, cout)), jnp.float32)
        dy = jnp.asarray(rng.normal(size=(b, h - k + 1, w - k + 1, cout)), jnp.float32)
        dws = {"stock": lambda x, dy, shape: jax.vjp(lambda kk: _valid_conv(x, kk), kern)[1](dy)[0], **cands}
        dws = {n: jax.jit(lambda x, dy, f=f: f(x, dy, kern.shape), compiler_options=options) for n, f in dws.items()}
        ref = np.asarray(dws["stock"](x, dy))
        err = max(float(np.abs(np.asarray(f(x, dy)) - ref).max() / np.abs(ref).max()) for f in dws.values())
        convs = {"stock": _valid_conv, **{n: conv_with_kernel_grad(f) for n, f in cands.items()}}
        both = {n: jax.jit(jax.grad(lambda x, kk, f=f: (f(x, kk) ** 2).sum(), argnums=(0, 1)), compiler_options=options)
                for n, f in convs.items()}
        # the one-matmul product alone: as "patches" lowers it (both operands contract their long
        # axis 0) vs the same product with the patch matrix already transposed (standard layout)
        n_rows, depth = dy.size // cout, k * k * cin
        p = jnp.asarray(rng.normal(size=(n_rows, depth)), jnp.float32)
        pt = jnp.asarray(np.asarray(p).T.copy())
        g = dy.reshape(n_rows, cout)
        dots = {"(N,K)^T @ (N,Cout)": (jax.jit(lambda p, g: p.T @ g, compiler_options=options), p),
                "(K,N) @ (N,Cout)": (jax.jit(lambda pt, g: pt @ g, compiler_options=options), pt)}
        load = os.getloadavg()[0]
        t_dot = alternate({n: (lambda f=f, a=a: f(a, g)) for n, (f, a) in dots.items()}, args.reps)
        t_dw = alternate({n: (lambda f=f: f(x, dy)) for n, f in dws.items()}, args.reps)
        t_both = alternate({n: (lambda f=f: f(x, kern)) for n, f in both.items()}, args.reps)
        print(f"convgrad {name}: x {(b, h, w, cin)} k{k} -> {cout} (load average {load:.1f}-{os.getloadavg()[0]:.1f}; "
              f"max relative error vs stock {err:.1e})\n  kernel gradient ms, best (median): {fmt(t_dw)}\n"
              f"  its one matmul alone ({2 * n_rows * depth * cout / 1e9:.2f} GFLOP), ms: {fmt(t_dot)}\n"
              f"  forward + both gradients ms, best (median): {fmt(t_both)}")
        sys.stdout.flush()

    data = _data()
    for model in (m for m in args.models if m in CONV_MODELS):  # the others run no conv2d
        variants = {"stock": None, **{c: (layers, "conv2d", _conv2d_with(conv_with_kernel_grad(cands[c]))) for c in args.candidates}}
        trainers, first = patched_trainers(model, data, variants)
        steps = 5 if model == "dcgan" else 10
        wall, cpu, loads = alternating_rounds(trainers, args.reps, steps=steps, warmup=steps)
        base = statistics.median(cpu["stock"])
        print(f"convgrad {model} step ({args.reps} alternating rounds of {steps} steps, load average "
              f"{min(loads):.1f}-{max(loads):.1f}): " + "; ".join(
                  f"{n} {statistics.median(wall[n]):.1f} ms (CPU {statistics.median(cpu[n]):.1f}, x{statistics.median(cpu[n]) / base:.2f}; "
                  f"first step {first[n]:.1f} s)" for n in trainers))
        sys.stdout.flush()


def autodiff_max_pool_2x2(x):
    """zoo.layers.max_pool_2x2 before its hand-written gradient: reshape + max, differentiated
    by JAX (the gradient is split among tied maxima, through compare, count and divide passes)."""
    b, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2, :].reshape(b, h // 2, 2, w // 2, 2, c)
    return x.max(axis=(2, 4))


def patched_trainers(model: str, data: dict, variants: dict) -> tuple[dict, dict]:
    """One compare.py trainer (`_trainer`) per variant, each traced and compiled by its first
    step. variants: {name: (module, attribute, value) or None}: that attribute is patched to the
    value while the variant's trainer is built and its step traced (None: nothing patched).
    Returns (trainers, {name: first step s, trace + compile included})."""
    from unittest import mock

    trainers, first = {}, {}
    for name, patch in variants.items():
        with mock.patch.object(*patch) if patch else contextlib.nullcontext():
            trainers[name] = tr = _trainer(model, data)
            t = time.perf_counter()
            tr.run(1)
            first[name] = time.perf_counter() - t
    return trainers, first


def step_ab(model: str, variants: dict, reps: int, steps: int = 30) -> str:
    """One model's train step built once per variant (`patched_trainers`), timed in
    alternating rounds in one process."""
    trainers, _ = patched_trainers(model, _data(), variants)
    wall, cpu, loads = alternating_rounds(trainers, reps, steps=steps, warmup=3)
    return (f"{model} train step, {reps} rounds of {steps} steps, load {loads[0]:.1f}-{max(loads):.1f}: "
            + "; ".join(f"{n} {statistics.median(v):.2f} ms median (min {min(v):.2f}, CPU {statistics.median(cpu[n]):.2f})"
                        for n, v in wall.items()))


def probe_pool(args) -> None:
    """The CNN train step with zoo.layers.max_pool_2x2 vs with autodiff_max_pool_2x2."""
    import zoo.cnn

    print("pool " + step_ab("cnn", {"autodiff max": (zoo.cnn, "max_pool_2x2", autodiff_max_pool_2x2),
                                    "zoo.layers": None}, args.reps))


def probe_dense(args) -> None:
    """The autoencoder train step with its 4->7 stride-1 transposed conv (dec_0) as one dense
    matmul (`transpose_method`'s "dense") vs as a conv with the flipped kernel."""
    from zoo import layers

    rule = layers.transpose_method

    def without_dense(*a, **kw):
        method = rule(*a, **kw)
        return "conv" if method == "dense" else method

    print("dense " + step_ab("autoencoder", {"conv": (layers, "transpose_method", without_dense), "dense": None},
                             args.reps, steps=10))


def probe_platform(args) -> None:
    """Each model's train step with zoo.layers' per-platform choice (`per_platform`,
    jax.lax.platform_dependent) vs with the CPU rewrites traced directly: on CPU the choice
    should cost nothing, as only the CPU branch is compiled."""
    from zoo import layers

    def rewrite_only(name, rewrite, native, *a):
        return rewrite(*a)

    for model in args.models:
        print("platform " + step_ab(model, {"rewrites traced": (layers, "per_platform", rewrite_only),
                                            "per platform": None}, args.reps))


class TorchWithoutOneDNN:
    """A compare.TorchTrainer whose steps run with PyTorch's oneDNN (mkldnn) kernels switched
    off: convolutions and the LSTM then run on PyTorch's generic paths (im2col + BLAS matmuls,
    a loop of per-step ops), the kind of code XLA:CPU generates, which has no oneDNN."""

    spd = 1

    def __init__(self, trainer):
        self.trainer = trainer

    def run(self, steps: int) -> float:
        import torch

        with torch.backends.mkldnn.flags(enabled=False):
            return self.trainer.run(steps)


def torch_top_ops(trainer, steps: int = 3, top: int = 3) -> list[tuple[str, float]]:
    """The `top` PyTorch ops by self CPU time over `steps` steps, with their share of it."""
    from torch.profiler import profile

    with profile() as prof:
        trainer.run(steps)
    events = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in events) or 1.0
    return [(k, t / total) for k, t in sorted(events, key=lambda e: -e[1])[:top]]


def probe_vendor(args) -> None:
    """Train steps side by side in alternating rounds: zoo, PyTorch as installed (oneDNN
    kernels for convolutions and the LSTM), and PyTorch with oneDNN switched off. The pip
    jaxlib's XLA:CPU has no oneDNN (its oneDNN options emit no oneDNN call), so the third
    column is PyTorch doing the same work with the kind of kernels XLA:CPU has."""
    import compare

    data = _data()
    out = {}
    for model in args.models:
        zoo_tr = compare.ZooTrainer(model, data)
        torch_tr = compare.TorchTrainer(model, data, loader=False)
        generic_tr = TorchWithoutOneDNN(compare.TorchTrainer(model, data, loader=False))
        trainers = {"zoo": zoo_tr, "torch": torch_tr, "torch_no_onednn": generic_tr}
        steps = 20 if model in ("mlp", "cnn") else 8
        wall, _, loads = alternating_rounds(trainers, args.reps, steps=steps, warmup=3)
        med = {n: statistics.median(v) for n, v in wall.items()}
        ratios = {n: statistics.median(t / z for t, z in zip(wall[n], wall["zoo"])) for n in ("torch", "torch_no_onednn")}
        with_dnn, without = torch_top_ops(torch_tr), torch_top_ops(generic_tr)
        out[model] = {"ms_per_step": wall, "median_ms": med, "speedup": ratios, "load": loads,
                      "torch_top_ops": with_dnn, "torch_no_onednn_top_ops": without}
        ops = lambda lst: ", ".join(f"{k} {100 * v:.0f}%" for k, v in lst)  # noqa: E731
        print(f"vendor {model}: ms/step zoo {med['zoo']:.2f}, torch {med['torch']:.2f}, torch without oneDNN "
              f"{med['torch_no_onednn']:.2f}; zoo speedup vs torch {ratios['torch']:.2f}x, vs torch without oneDNN "
              f"{ratios['torch_no_onednn']:.2f}x (load {loads[0]:.1f}-{max(loads):.1f}); torch's top ops: {ops(with_dnn)}; "
              f"without oneDNN: {ops(without)}")
        sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("probe", choices=("matmul", "conv", "floor", "batch", "options", "scan", "lstm", "transpose", "profile", "bn", "convgrad", "pool", "dense", "vendor", "platform", "all"))
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="profile: traced steps per model")
    p.add_argument("--select", default="bn_", help="profile: also list every kernel of the layers whose path contains this")
    p.add_argument("--candidates", nargs="+", default=["patches", "taps", "taps-xT"],
                   help="convgrad: kernel-gradient candidates in the train-step A/B (kernel_grad_candidates)")
    p.add_argument("--json", default=None, help="vendor: also write the measurements to this JSON file")
    p.add_argument("--trace-dir", default=None, help="profile: where traces and HLO go (default: a temp dir)")
    args = p.parse_args()
    import compare

    compare.setup_torch(args.threads)
    probes = {"matmul": probe_matmul, "conv": probe_conv, "floor": probe_floor, "batch": probe_batch,
              "options": probe_options, "scan": probe_scan, "lstm": probe_lstm, "transpose": probe_transpose, "profile": probe_profile, "bn": probe_bn,
              "convgrad": probe_convgrad, "pool": probe_pool, "dense": probe_dense, "vendor": probe_vendor,
              "platform": probe_platform}
    for name in probes if args.probe == "all" else [args.probe]:
        probes[name](args)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
