"""The GAN loop: discriminator step, then generator step, two optax optimizers, BatchNorm state threaded.

PyTorch: netD/netG with optimizerD/optimizerG, fake.detach() for the D step, BN updated in place.
JAX: the engine's pure gan_step does both updates in one compiled program (train/steps.py).
"""

from _common import QUICK, batches, mnist

import jax
import optax

import zoo
from train import steps
from train.state import create_state

small = {"latent_dim": 16, "g_features": (32, 16), "d_features": (16, 32)} if QUICK else {}
model = zoo.create("dcgan", **small)
state = create_state(model, zoo.init(model, jax.random.key(0)), optax.adam(2e-4, b1=0.5), jax.random.key(1),
                     players=("generator", "discriminator"))
step = jax.jit(lambda s, b: steps.gan_step(s, b, latent_dim=model.latent_dim))
x, y = mnist("train")
for epoch in range(1 if QUICK else 5):
    for xb, _ in batches(x, y, 32, seed=epoch):
        state, m = step(state, {"x": xb})
    print(f"epoch {epoch}: d_loss {float(m['d_loss']):.3f} g_loss {float(m['g_loss']):.3f} "
          f"D(real) {float(m['d_real']):.2f} D(fake) {float(m['d_fake']):.2f}")
samples = model.apply(state.variables(), jax.random.normal(jax.random.key(2), (8, model.latent_dim)), method="generate")
print("samples:", samples.shape, "in", float(samples.min()), "..", float(samples.max()))
