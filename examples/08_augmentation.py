"""Augmentation on the device: random rotations and shifts drawn from one key per batch.

PyTorch: torchvision.transforms (RandomRotation, RandomAffine) run per image in DataLoader workers.
JAX: one jitted function transforms the whole batch on the accelerator; the key decides the draw.
"""

from _common import mnist

import jax
import jax.numpy as jnp

from train.data import augment

x, _ = mnist("train", n=16)
aug = jax.jit(lambda key, x: augment(key, x, rotate_degrees=15.0, shift_pixels=2))
a, b = aug(jax.random.key(0), x), aug(jax.random.key(1), x)
assert a.shape == x.shape and not jnp.allclose(a, b)
assert jnp.array_equal(a, aug(jax.random.key(0), x))  # same key, same augmentation
print(f"augmented {x.shape}; mean |change| {float(jnp.abs(a - x).mean()):.4f}")
