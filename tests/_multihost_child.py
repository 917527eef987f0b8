"""One process of a real multi-process (multi-"host") run on localhost, for tests/test_parallel.py.

Usage: python tests/_multihost_child.py COORDINATOR NUM_PROCESSES PROCESS_ID STEPS OUT_DIR

The parent sets JAX_PLATFORMS=cpu and the per-process CPU device count in the environment.
Joins the run with train.parallel.init_distributed (gloo CPU collectives), trains the small
CNN of tests/fixtures.py for STEPS steps with JitStrategy over the global mesh (all devices
of all processes) on synthetic data that every process builds identically, then writes its
final parameters to OUT_DIR/params_<PROCESS_ID>.npy and prints one JSON line.
"""

import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from train import parallel  # noqa: E402

GLOBAL_BATCH = 16


def batch_indices(steps: int, n: int = 64) -> np.ndarray:
    """(steps, GLOBAL_BATCH) example indices, the same on every process."""
    return np.random.default_rng(0).permutation(n)[: steps * GLOBAL_BATCH].reshape(steps, GLOBAL_BATCH)


def train(strategy, steps: int):
    """The run both the children and the single-process reference perform."""
    from tests.fixtures import build, task_arrays
    from train import tasks

    model, state, cfg = build("classification")
    strategy = strategy(tasks.get("classification").train_step(model, cfg))
    state = strategy.place_state(state)
    data = strategy.place_data(task_arrays("classification", 64))
    losses = []
    for idx in batch_indices(steps):
        state, metrics = strategy.run_chunk(state, data, idx[None])
        losses.append(float(np.asarray(metrics["loss"])[0]))
    return state, losses


def main() -> None:
    coordinator, num_processes, process_id, steps, out_dir = sys.argv[1:6]
    num_processes, process_id, steps = int(num_processes), int(process_id), int(steps)
    assert parallel.init_distributed(coordinator, num_processes, process_id)
    import jax

    mesh = parallel.make_mesh()  # every device of every process
    state, losses = train(lambda step_fn: parallel.JitStrategy(step_fn, mesh), steps)
    # Replicated: this process's first shard is the whole array.
    params = [np.asarray(a.addressable_data(0)) for a in jax.tree.leaves(state.params)]
    flat = np.concatenate([p.ravel() for p in params]).astype(np.float32)
    np.save(Path(out_dir) / f"params_{process_id}.npy", flat)
    print(json.dumps({
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "local_devices": jax.local_device_count(),
        "global_devices": jax.device_count(),
        "collectives": jax.config.jax_cpu_collectives_implementation,
        "losses": losses,
        "step": int(np.asarray(state.step.addressable_data(0))),
        "sha256": hashlib.sha256(flat.tobytes()).hexdigest(),
    }), flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
