"""Devices and hosts: the mesh, shardings, the jit (default) and pmap strategies, multi-host init.

Pure data parallelism. The whole (small) dataset is placed once, replicated, on every
device; each dispatch runs a chunk of K steps under `lax.scan`, cutting each global
batch out of the device-resident data by index and splitting it across the "data" mesh
axis. Indices come from the host (a pure function of seed and epoch), so every host of a
multi-host run computes the same order without communication.

- "jit": `jax.jit` with NamedSharding over a 1-D mesh of all devices (all hosts). The
  state is replicated, the batch sharded; XLA inserts the gradient all-reduce.
- "pmap": the classic `jax.pmap` step; the state carries a leading device axis. The step
  is the same function as under jit: `pmap_edge` adds the collectives around it (gradients
  averaged inside the optimizer update, metrics and BatchNorm statistics after the step).
"""

from __future__ import annotations

import functools
import json
import os
from importlib import metadata
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

STRATEGIES = ("jit", "pmap")
AXIS = "data"

# Seconds without heartbeats after which the coordination service declares a process dead and
# stops the others. JAX's default (100 s) leaves the survivors of a crashed or failed process
# blocked that long; heartbeats come from the coordination client's own thread, so long
# compiles or steps do not delay them, and 30 s still rides out a short network hiccup.
HEARTBEAT_TIMEOUT_S = 30
_joined = False  # set by init_distributed


def init_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Joins a multi-host run via `jax.distributed.initialize`; returns True if it did.

    Arguments fall back to the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
    JAX_PROCESS_ID). With none of them set, nothing happens (single host) unless
    ZOO_DISTRIBUTED_AUTO=1, which lets JAX auto-detect a cluster (SLURM, TPU pods, ...).
    On CPU the gloo collectives are selected so cross-process all-reduces work. A process
    silent for `heartbeat_timeout()` seconds is declared dead and the others are stopped.
    """
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    auto = os.environ.get("ZOO_DISTRIBUTED_AUTO") == "1"
    if coordinator is None and not auto:
        if num_processes not in (None, 1):
            raise ValueError("num_processes > 1 needs a coordinator address (host:port)")
        return False
    if coordinator is not None and (num_processes is None or process_id is None):
        raise ValueError("a coordinator address needs num_processes and process_id too")
    heartbeat = heartbeat_timeout()  # a bad value is refused before joining
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id, heartbeat_timeout_seconds=heartbeat)
    global _joined
    _joined = True
    return True


def joined() -> bool:
    """Whether this process joined a multi-process run (`init_distributed`)."""
    return _joined


def heartbeat_timeout() -> int:
    """ZOO_HEARTBEAT_TIMEOUT (whole seconds >= 1), default HEARTBEAT_TIMEOUT_S: how long the
    other processes of a multi-process run wait for a silent (dead) one before they stop."""
    raw = os.environ.get("ZOO_HEARTBEAT_TIMEOUT", "").strip()
    if not raw:
        return HEARTBEAT_TIMEOUT_S
    try:
        seconds = int(raw)
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise ValueError(f"ZOO_HEARTBEAT_TIMEOUT={raw!r}: expected a whole number of seconds >= 1 "
                         f"(default {HEARTBEAT_TIMEOUT_S})")
    return seconds


def make_mesh(devices=None) -> Mesh:
    """A 1-D ("data",) mesh over `devices` (default: all devices of all hosts)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (AXIS,))


def put_global(x: Any, sharding: NamedSharding) -> jax.Array:
    """Places a host value (the same on every host) as a global array with `sharding`.

    Works for single- and multi-host meshes: each process fills only its own shards.
    """
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def check_batch_size(batch_size: int, num_devices: int) -> None:
    """The global batch must split evenly over the devices."""
    if batch_size % num_devices:
        raise ValueError(
            f"batch size {batch_size} is not divisible by the {num_devices} devices; "
            f"use a multiple of {num_devices} (e.g. {batch_size - batch_size % num_devices or num_devices})"
        )


# XLA:CPU's default YNNPACK list minus convolutions: XLA's own convolutions were faster for
# these models (bench/README.md, "Where the CPU time goes"). An experimental option, so only
# for the jaxlib line it was measured on (an unknown option fails the compile).
CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
}
CPU_COMPILER_OPTIONS_JAXLIB = ("0.10.",)

# GPU: matmuls through cuBLAS instead of autotuned Triton GEMM fusions: the GEMM autotuner was
# most of the whole-epoch programs' cold compile; turning all autotuning off would also cut it,
# but cuDNN then picks slow convolution algorithms, so convolutions keep their autotuning
# (measured on an H200: docs/results.md, bench/results/gpu/h200_compile_*.md).
GPU_COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False}


def _env_options() -> dict:
    """XLA options from ZOO_XLA_OPTIONS, a JSON object such as '{"xla_gpu_autotune_level": 0}'."""
    raw = os.environ.get("ZOO_XLA_OPTIONS", "").strip()
    if not raw:
        return {}
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"ZOO_XLA_OPTIONS={raw!r}: expected a JSON object of XLA options ({e})") from e
    if not isinstance(options, dict) or not all(isinstance(v, (bool, int, float, str)) for v in options.values()):
        raise ValueError(f"ZOO_XLA_OPTIONS={raw!r}: expected a JSON object of XLA options with "
                         "boolean, number or string values, e.g. '{\"xla_gpu_autotune_level\": 0}'")
    return options


def compiler_options(devices=None) -> dict | None:
    """XLA options for the engine's compiled programs on `devices` (None: XLA's defaults).

    zoo's CPU options (CPU_COMPILER_OPTIONS) apply on CPU devices with the measured jaxlib
    line, unless ZOO_XLA_CPU_OPTIONS=off; its GPU options (GPU_COMPILER_OPTIONS) on GPUs, unless
    ZOO_XLA_GPU_OPTIONS=off. ZOO_XLA_OPTIONS (a JSON object) adds or overrides
    options on any backend: an experiment's knob, and bench/end_to_end.py's A/B switch.
    """
    devices = jax.devices() if devices is None else list(devices)
    options = _default_options(devices[0].platform)
    options.update(_env_options())
    return options or None


def _switched_off(variable: str) -> bool:
    return os.environ.get(variable, "").lower() in ("0", "off", "none", "false")


def _default_options(platform: str) -> dict:
    if platform == "gpu":
        return {} if _switched_off("ZOO_XLA_GPU_OPTIONS") else dict(GPU_COMPILER_OPTIONS)
    if platform != "cpu" or _switched_off("ZOO_XLA_CPU_OPTIONS"):
        return {}
    try:
        version = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return {}
    return dict(CPU_COMPILER_OPTIONS) if version.startswith(CPU_COMPILER_OPTIONS_JAXLIB) else {}


def unroll_scan() -> bool:
    """Whether to unroll the steps of a dispatch chunk: on CPU, where a step inside a rolled
    `lax.scan` runs much slower than at top level (bench/README.md has the figure)."""
    return jax.default_backend() == "cpu"


def default_steps_per_dispatch(steps_per_epoch: int) -> int:
    """1 step per dispatch on CPU (unrolled scans compile in O(K)); a whole epoch on accelerators."""
    return 1 if jax.default_backend() == "cpu" else steps_per_epoch


def scan_steps(body, state, xs):
    """`lax.scan`, or on CPU the same steps as straight-line code (see `unroll_scan`).

    A Python loop rather than `unroll=True`: a length-1 scan "unrolled" is still a loop.
    """
    if not unroll_scan():
        return jax.lax.scan(body, state, xs)
    outs = []
    for i in range(xs.shape[0]):
        state, out = body(state, xs[i])
        outs.append(out)
    return state, jax.tree.map(lambda *a: jnp.stack(a), *outs)


def scan_tree(body, state, xs):
    """`scan_steps` over a tree of arrays with a common leading axis."""
    if not unroll_scan():
        return jax.lax.scan(body, state, xs)
    outs = []
    for i in range(jax.tree.leaves(xs)[0].shape[0]):
        state, out = body(state, jax.tree.map(lambda a: a[i], xs))
        outs.append(out)
    return state, jax.tree.map(lambda *a: jnp.stack(a), *outs)


def gather(data, idx):
    """The batch of examples `idx`, with their dataset positions as "index" (see steps.py)."""
    return {**jax.tree.map(lambda a: a[idx], data), "index": idx}


class JitStrategy:
    """`jax.jit` + NamedSharding: replicated state, batch split over the "data" axis.

    `members=True` (a population, train/population.py): each step takes (M, B) indices, one
    batch per member, gathered into (M, B, ...) batches split over B; `step_fn` is the vmapped step.
    """

    name = "jit"

    def __init__(self, step_fn: Callable, mesh: Mesh, options: dict | None | str = "auto", *, members: bool = False):
        """options: XLA compiler options; "auto" = `compiler_options(mesh devices)`."""
        self.mesh = mesh
        self.replicated = NamedSharding(mesh, P())
        self.batch_sharding = NamedSharding(mesh, P(None, AXIS) if members else P(AXIS))
        self.num_devices = mesh.devices.size
        self.options = compiler_options(mesh.devices.flat) if options == "auto" else options
        take = jax.vmap(gather, in_axes=(None, 0)) if members else gather

        def chunk(state, data, idx):  # idx: (K, B) example indices, (K, M, B) with members
            def body(state, i):
                batch = jax.lax.with_sharding_constraint(take(data, i), self.batch_sharding)
                return step_fn(state, batch)

            return scan_steps(body, state, idx)  # metrics: (K,) each

        self._chunk = jax.jit(chunk, donate_argnums=0, out_shardings=self.replicated, compiler_options=self.options)

        def batches_chunk(state, batches):  # batches: (K, B, ...) read on the host (a streamed split)
            def body(state, batch):
                return step_fn(state, jax.lax.with_sharding_constraint(batch, self.batch_sharding))

            return scan_tree(body, state, batches)

        self._batches = jax.jit(batches_chunk, donate_argnums=0, out_shardings=self.replicated,
                                compiler_options=self.options)
        self._stacked = NamedSharding(mesh, P(None, AXIS))

    def place_state(self, state):
        return jax.tree.map(lambda a: put_global(a, self.replicated), state)

    def place_data(self, arrays):
        return jax.tree.map(lambda a: put_global(a, self.replicated), arrays)

    def place_indices(self, idx: np.ndarray):
        return put_global(idx.astype(np.int32), self.replicated)

    def run_chunk(self, state, data, idx: np.ndarray):
        """Runs idx.shape[0] steps; returns (state, per-step metrics on device)."""
        return self._chunk(state, data, self.place_indices(idx))

    def run_batches(self, state, batches: dict):
        """Runs one step per leading entry of host `batches` {"x", ...: (K, B, ...)}, each batch
        split over the "data" axis as `run_chunk`'s; returns (state, per-step metrics on device)."""
        return self._batches(state, jax.tree.map(lambda a: put_global(a, self._stacked), batches))

    def unreplicate(self, state):
        return state

    def compiles(self) -> int:
        return self._chunk._cache_size()


def _pmean_gradients(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` applied to the gradients averaged over the pmap axis (same state structure)."""
    return optax.GradientTransformation(tx.init, lambda g, s, p=None: tx.update(jax.lax.pmean(g, AXIS), s, p))


def pmap_edge(step_fn: Callable) -> Callable:
    """The collectives of data parallelism under pmap, around an unchanged `step_fn`:
    gradients averaged inside the optimizer update (so clipping sees the global gradient),
    metrics and model state (BatchNorm statistics) averaged after the step."""

    def step(state, batch):
        new, metrics = step_fn(state.replace(tx=_pmean_gradients(state.tx)), batch)
        new = new.replace(tx=state.tx, model_state=jax.lax.pmean(new.model_state, AXIS))
        return new, jax.lax.pmean(metrics, AXIS)

    return step


class PmapStrategy:
    """The classic `jax.pmap` data parallelism (local devices only), via `pmap_edge`."""

    name = "pmap"

    def __init__(self, step_fn: Callable, mesh: Mesh):
        if jax.process_count() > 1:
            raise ValueError("--strategy pmap supports one host; use the default jit strategy across hosts")
        self.mesh = mesh
        self.devices = list(mesh.devices.flat)
        self.num_devices = len(self.devices)
        self.replicated = NamedSharding(mesh, P())
        self._stacked = NamedSharding(mesh, P(AXIS))

        device_step = pmap_edge(step_fn)

        def chunk(state, data, idx):  # per device: idx (K, B / n)
            def body(state, i):
                return device_step(state, gather(data, i))

            return scan_steps(body, state, idx)

        self._chunk = jax.pmap(chunk, axis_name=AXIS, in_axes=(0, None, 0), donate_argnums=0, devices=self.devices)

    def place_state(self, state):
        n = self.num_devices
        return jax.tree.map(lambda a: jax.device_put(np.broadcast_to(np.asarray(a), (n,) + np.shape(a)), self._stacked), state)

    def place_data(self, arrays):
        return jax.tree.map(lambda a: jax.device_put(np.asarray(a), self.replicated), arrays)

    def run_chunk(self, state, data, idx: np.ndarray):
        k, b = idx.shape
        per_device = np.ascontiguousarray(idx.reshape(k, self.num_devices, b // self.num_devices).transpose(1, 0, 2))
        state, metrics = self._chunk(state, data, per_device.astype(np.int32))
        return state, jax.tree.map(lambda m: m[0], metrics)  # pmean'd: identical on every device

    def unreplicate(self, state):
        return jax.tree.map(lambda a: a[0], state)

    def compiles(self) -> int:
        return self._chunk._cache_size() if hasattr(self._chunk, "_cache_size") else -1


def make_strategy(name: str, step_fn: Callable, mesh: Mesh):
    """The strategy object by name, running `step_fn` (the same pure step for both)."""
    if name == "jit":
        return JitStrategy(step_fn, mesh)
    if name == "pmap":
        return PmapStrategy(step_fn, mesh)
    raise ValueError(f"unknown strategy {name!r}; expected one of {STRATEGIES}")


def eval_batch_size(batch_size: int, num_devices: int) -> int:
    """The evaluation batch: `batch_size` rounded down to a multiple of the devices (at least one each)."""
    return max(num_devices, batch_size - batch_size % num_devices)


def make_evaluator(eval_fn: Callable, mesh: Mesh):
    """Full-dataset evaluation: sums `eval_fn(variables, batch, mask)` over fixed-size batches.

    One compiled program per batch shape, dispatched per batch from the host (eval is
    rare, and a rolled scan would hit the XLA:CPU while-loop slowdown); sums accumulate on
    device and are fetched once. Batches are split over the "data" axis.
    """
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P(AXIS))

    @functools.partial(jax.jit, out_shardings=replicated, compiler_options=compiler_options(mesh.devices.flat))
    def batch_sums(variables, data, idx, mask):
        batch = jax.lax.with_sharding_constraint(gather(data, idx), batch_sharding)
        return eval_fn(variables, batch, jax.lax.with_sharding_constraint(mask, batch_sharding))

    add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b), donate_argnums=0)

    def run(variables, data, n: int, batch_size: int):
        nb = -(-n // batch_size)
        flat = np.arange(nb * batch_size)
        mask = (flat < n).astype(np.float32).reshape(nb, batch_size)
        idx = np.minimum(flat, n - 1).astype(np.int32).reshape(nb, batch_size)  # padding repeats the last example
        total = None
        for b in range(nb):
            sums = batch_sums(variables, data, put_global(idx[b], replicated), put_global(mask[b], replicated))
            total = sums if total is None else add(total, sums)
        return total

    return run


def batch_evaluator(eval_fn: Callable, mesh: Mesh):
    """`make_evaluator`'s sums over batches given by the host (a streamed split):
    `run(variables, batches, masks)` adds `eval_fn(variables, batch, mask)` over the pairs."""
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P(AXIS))

    @functools.partial(jax.jit, out_shardings=replicated, compiler_options=compiler_options(mesh.devices.flat))
    def batch_sums(variables, batch, mask):
        batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        return eval_fn(variables, batch, jax.lax.with_sharding_constraint(mask, batch_sharding))

    add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b), donate_argnums=0)

    def run(variables, batches, masks: np.ndarray):
        total = None
        for batch, mask in zip(batches, masks):
            placed = jax.tree.map(lambda a: put_global(a, replicated), batch)
            sums = batch_sums(variables, placed, put_global(mask, replicated))
            total = sums if total is None else add(total, sums)
        return total

    return run
