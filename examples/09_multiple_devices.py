"""Multiple devices: a mesh, the batch sharded over it, parameters replicated; jit inserts the collectives.

PyTorch: DistributedDataParallel, one process per GPU, gradients all-reduced by hooks.
JAX: one program over all devices (CPU: XLA_FLAGS=--xla_force_host_platform_device_count=4).
"""

from _common import QUICK, batches, mnist

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

import zoo

mesh = jax.make_mesh((len(jax.devices()),), ("data",))
data, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
model = zoo.create("mlp_small")
params = jax.device_put(zoo.init(model, jax.random.key(0))["params"], replicated)
tx = optax.sgd(0.05, momentum=0.9)
opt_state = jax.device_put(tx.init(params), replicated)


@jax.jit
def step(params, opt_state, x, y):
    def loss_fn(p):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)  # the mean over the sharded batch: an all-reduce
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


x, y = mnist("train")
for xb, yb in batches(x, y, 16 * len(jax.devices()), seed=0):
    xb, yb = jax.device_put(xb, data), jax.device_put(yb, data)
    params, opt_state, loss = step(params, opt_state, xb, yb)
    loss.block_until_ready()
print(f"{len(jax.devices())} devices, batch sharded as {xb.sharding.spec}; last loss {float(loss):.4f}")
