"""Test-wide setup: CPU only, with 4 fake CPU devices available for multi-device tests.

The flags must be set before jax initializes its backends, so they live here.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Several fake CPU devices; single-device code uses jax.devices()[:1] explicitly.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
