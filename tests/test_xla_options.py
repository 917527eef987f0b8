"""train.parallel.compiler_options: zoo's XLA:CPU options apply only on CPU devices, only
for the jaxlib line they were measured on, can be switched off, reach the engine's compiled
programs, and compute the same function as XLA's defaults."""

from __future__ import annotations

from importlib import metadata

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import parallel

MEASURED = metadata.version("jaxlib").startswith(parallel.CPU_COMPILER_OPTIONS_JAXLIB)


@pytest.mark.expected_skip("other jaxlib lines get XLA's defaults")
@pytest.mark.skipif(not MEASURED, reason="the options are only set for the measured jaxlib line")
def test_cpu_gets_the_options_and_the_strategy_uses_them():
    assert parallel.compiler_options(jax.devices("cpu")) == parallel.CPU_COMPILER_OPTIONS
    strategy = parallel.JitStrategy(lambda s, b: (s, {"loss": jnp.zeros(())}), parallel.make_mesh(jax.devices()[:1]))
    assert strategy.options == parallel.CPU_COMPILER_OPTIONS


def test_off_switch_and_other_jaxlib(monkeypatch):
    monkeypatch.setenv("ZOO_XLA_CPU_OPTIONS", "off")
    assert parallel.compiler_options(jax.devices("cpu")) is None
    monkeypatch.delenv("ZOO_XLA_CPU_OPTIONS")
    monkeypatch.setattr(parallel.metadata, "version", lambda name: "0.99.0")
    assert parallel.compiler_options(jax.devices("cpu")) is None


def test_gpus_get_the_gpu_options_and_other_devices_xla_defaults(monkeypatch):
    class Fake:
        def __init__(self, platform):
            self.platform = platform

    assert parallel.compiler_options([Fake("gpu")]) == {"xla_gpu_enable_triton_gemm": False}
    monkeypatch.setenv("ZOO_XLA_GPU_OPTIONS", "off")
    assert parallel.compiler_options([Fake("gpu")]) is None
    assert parallel.compiler_options([Fake("tpu")]) is None


def test_options_compile_and_compute_the_same_convolution_gradient():
    """The options change which library runs a convolution, not what it computes."""
    def loss(x, k):
        y = jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return (y ** 2).sum()

    r = np.random.default_rng(0)
    x = jnp.asarray(r.random((4, 9, 9, 3)), jnp.float32)
    k = jnp.asarray(r.normal(size=(3, 3, 3, 5)), jnp.float32)
    grad = jax.grad(loss, argnums=(0, 1))
    want = jax.jit(grad)(x, k)
    got = jax.jit(grad, compiler_options=parallel.compiler_options(jax.devices("cpu")))(x, k)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), got, want)


def test_env_options_reach_every_backend_and_override(monkeypatch):
    class FakeGpu:
        platform = "gpu"

    monkeypatch.setenv("ZOO_XLA_OPTIONS", '{"xla_gpu_autotune_level": 0, "xla_gpu_enable_triton_gemm": true}')
    assert parallel.compiler_options([FakeGpu()]) == {"xla_gpu_autotune_level": 0, "xla_gpu_enable_triton_gemm": True}
    monkeypatch.setenv("ZOO_XLA_CPU_OPTIONS", "off")
    monkeypatch.setenv("ZOO_XLA_OPTIONS", '{"xla_cpu_enable_fast_math": false}')
    assert parallel.compiler_options(jax.devices("cpu")) == {"xla_cpu_enable_fast_math": False}
    # and a compiled program takes them
    f = jax.jit(lambda x: x * 2, compiler_options=parallel.compiler_options(jax.devices("cpu")))
    assert float(f(jnp.ones(()))) == 2.0


@pytest.mark.parametrize("raw", ["xla_gpu_autotune_level=0", "[1, 2]", '{"a": [1]}'])
def test_bad_env_options_name_the_variable(monkeypatch, raw):
    monkeypatch.setenv("ZOO_XLA_OPTIONS", raw)
    with pytest.raises(ValueError, match="ZOO_XLA_OPTIONS"):
        parallel.compiler_options(jax.devices("cpu"))
