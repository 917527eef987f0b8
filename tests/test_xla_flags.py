"""train.xla_cpu_flags: zoo's XLA:CPU defaults are added once, never override the user's
choice, can be switched off, are gated on the jaxlib line they were measured on, and the
flag string is accepted by the installed XLA (an unknown flag would abort the process)."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

import train


def _installed_jaxlib_is_measured() -> bool:
    return metadata.version("jaxlib").startswith(train.CPU_FLAGS_JAXLIB)


@pytest.mark.skipif(not _installed_jaxlib_is_measured(), reason="flags are only set for the measured jaxlib line")
def test_flags_added_once_and_after_existing():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert train.xla_cpu_flags(env) == list(train.CPU_FLAGS)
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2 " + " ".join(train.CPU_FLAGS)
    assert train.xla_cpu_flags(env) == []  # idempotent
    assert env["XLA_FLAGS"].count("ynn_fusion_type") == 1


def test_user_setting_wins_and_off_switch():
    option = train.CPU_FLAGS[0].split("=")[0]
    env = {"XLA_FLAGS": f"{option}=individual_dot,individual_convolution"}
    assert train.xla_cpu_flags(env) == []
    assert env["XLA_FLAGS"] == f"{option}=individual_dot,individual_convolution"
    env = {"ZOO_XLA_CPU_FLAGS": "off"}
    assert train.xla_cpu_flags(env) == [] and "XLA_FLAGS" not in env


def test_other_jaxlib_gets_xla_defaults(monkeypatch):
    monkeypatch.setattr(train.metadata, "version", lambda name: "0.99.0")
    env = {}
    assert train.xla_cpu_flags(env) == [] and "XLA_FLAGS" not in env


def test_installed_xla_accepts_the_flags():
    """A fresh process that imports train and runs a conv must not abort on the flags."""
    code = (
        "import os, train, jax, jax.numpy as jnp; "
        "x = jnp.ones((2, 8, 8, 3)); k = jnp.ones((3, 3, 3, 4)); "
        "y = jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')); "
        "print(float(y[0, 4, 4, 0]), os.environ.get('XLA_FLAGS', ''))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    value, _, flags = out.stdout.strip().partition(" ")
    assert float(value) == 27.0
    if _installed_jaxlib_is_measured():
        assert train.CPU_FLAGS[0] in flags
