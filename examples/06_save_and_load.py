"""Saving and loading: Orbax checkpoints of the parameter pytree; zoo.load for shipped weights.

PyTorch: torch.save(model.state_dict(), path); model.load_state_dict(torch.load(path)).
JAX: the parameters are a pytree; Orbax writes it (any sharding) and restores it into a target.
"""

import tempfile
from pathlib import Path

import _common  # noqa: F401
import jax
import numpy as np
import orbax.checkpoint as ocp

import zoo

model = zoo.create("cnn")
variables = zoo.init(model, jax.random.key(0))
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "cnn"
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path, variables)
    with ocp.StandardCheckpointer() as ckpt:
        restored = ckpt.restore(path, jax.tree.map(np.zeros_like, variables))  # the target gives shapes
same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), variables, restored)
print("restored equal:", all(jax.tree.leaves(same)))

model, variables = zoo.load("cnn", pretrained="mnist")  # shipped, sha256-verified
print("zoo.load cnn.mnist:", [k for k in variables["params"]])
