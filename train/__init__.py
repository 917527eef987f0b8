"""The zoo training engine: data, steps, parallelism, checkpoints and the `zoo` CLI.

Importing `train` adds zoo's measured XLA:CPU defaults to XLA_FLAGS (see `xla_cpu_flags`);
it must happen before JAX starts its CPU backend to take effect, which importing `train`
(or running `zoo`) before any JAX computation ensures.
"""

from __future__ import annotations

import os
from importlib import metadata

# XLA:CPU in jaxlib 0.10 sends convolutions to YNNPACK by default; its own (Eigen)
# convolutions ran these models' train steps faster on a 2-core AMD EPYC (AVX-512), measured
# side by side with everything else idle: CNN 18-19 -> 15-16 ms, autoencoder 77-80 -> 59-61 ms,
# DCGAN 245-257 -> 161-171 ms per step; MLP and LSTM unchanged within noise (bench/README.md).
# Dots stay on YNNPACK. The flag is experimental, so it is only set for the jaxlib line it
# was measured on: an unknown XLA flag aborts the process.
CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=individual_dot",)
CPU_FLAGS_JAXLIB = ("0.10.",)


def xla_cpu_flags(environ=os.environ) -> list[str]:
    """Appends zoo's XLA:CPU flags to environ["XLA_FLAGS"]; returns the flags it added.

    Nothing is added when ZOO_XLA_CPU_FLAGS=off, when XLA_FLAGS already sets the same
    option (the user's choice wins), or for a jaxlib other than the measured one.
    """
    if environ.get("ZOO_XLA_CPU_FLAGS", "").lower() in ("0", "off", "none", "false"):
        return []
    try:
        version = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return []
    if not version.startswith(CPU_FLAGS_JAXLIB):
        return []
    current = environ.get("XLA_FLAGS", "")
    added = [f for f in CPU_FLAGS if f.split("=")[0] not in current]
    if added:
        environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added


xla_cpu_flags()
