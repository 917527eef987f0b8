"""Child process for tests/test_checkpoint.py: saves checkpoints until it is killed.

Usage: python tests/_ckpt_child.py DIR N_ELEMENTS [MODE]
MODE "loop" (default): save step 1 and wait, then keep saving steps 2, 3, ... asynchronously,
printing "SAVING s" when a save starts and "SAVED s" once it is finalized; the parent
kill -9s it at some point. MODE "exit": one async save of step 1, then exit WITHOUT
close(), to see whether an unclosed async save still finalizes.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from train.checkpoint import Checkpointer  # noqa: E402


def tree_for(step: int, n: int) -> dict:
    """Deterministic per-step values; the parent rebuilds them to compare bit for bit."""
    w = np.arange(n, dtype=np.uint32) * np.uint32(2654435761) + np.uint32(step)
    return {"params": {"w": w.view(np.float32), "b": np.full((7,), step, np.float32)},
            "step": np.asarray(step, np.int32)}


def main() -> None:
    directory, n = sys.argv[1], int(sys.argv[2])
    mode = sys.argv[3] if len(sys.argv) > 3 else "loop"
    import jax

    def tree_on_device(step):
        return jax.tree.map(jax.numpy.asarray, tree_for(step, n))

    ckpt = Checkpointer(directory, max_to_keep=2)
    if mode == "exit":
        ckpt.save(1, tree_on_device(1), {"step": 1})
        print("SAVING 1", flush=True)
        return  # no close(): relies on the interpreter waiting for Orbax's threads
    step = (ckpt.latest_step() or 0) + 1
    ckpt.save(step, tree_on_device(step), {"step": step})
    ckpt.wait()
    print(f"SAVED {step}", flush=True)
    while True:
        step += 1
        ckpt.save(step, tree_on_device(step), {"step": step})
        print(f"SAVING {step}", flush=True)
        ckpt.wait()
        print(f"SAVED {step}", flush=True)


if __name__ == "__main__":
    main()
