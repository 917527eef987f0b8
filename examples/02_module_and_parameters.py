"""A module and its parameters: flax.linen modules hold no state; parameters are a pytree.

PyTorch: nn.Module owns its tensors (model.parameters(), state_dict()) and is called directly.
Flax: model.init(key, x) returns the parameters; model.apply(params, x) runs the module with them.
"""

import _common  # noqa: F401
import jax
import jax.numpy as jnp
from flax import linen as nn

import zoo


class TinyMLP(nn.Module):  # the tutorial's nn.Module subclass
    hidden: int = 32

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)  # (B, 784)
        return nn.Dense(10, name="head")(nn.relu(nn.Dense(self.hidden)(x)))


model = TinyMLP()
params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    print(jax.tree_util.keystr(path), leaf.shape)
print("parameters:", sum(leaf.size for leaf in jax.tree.leaves(params)))
print("logits:", model.apply(params, jnp.zeros((2, 28, 28, 1))).shape)

# the zoo's registered models are modules like this one
cnn = zoo.create("cnn")
variables = zoo.init(cnn, jax.random.key(0))
print("zoo cnn:", zoo.get_spec("cnn").description, "-", sum(a.size for a in jax.tree.leaves(variables)), "parameters")
