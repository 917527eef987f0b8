"""The data pipeline: TFDS arrays in memory, shuffled batches as numpy, moved to the device.

PyTorch: torchvision.datasets.MNIST + transforms.ToTensor + DataLoader(shuffle=True, workers).
Here: tfds prepares MNIST once; the whole split is a numpy array; batches are index slices.
"""

from _common import QUICK, batches, mnist

import jax
import jax.numpy as jnp

x, y = mnist("train")
print("train:", x.shape, x.dtype, "range", float(x.min()), float(x.max()), "labels", y[:10])
for i, (xb, yb) in enumerate(batches(x, y, batch_size=64, seed=0)):
    xb = jax.device_put(jnp.asarray(xb))  # host -> accelerator (a no-op copy on CPU)
    if i == 0:
        print("batch:", xb.shape, yb.shape, "on", xb.devices())
print("batches per epoch:", i + 1, "(quick slice)" if QUICK else "")
