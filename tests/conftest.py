"""Test-wide setup: CPU only, with 4 fake CPU devices available for multi-device tests.

The flags must be set before jax initializes its backends, so they live here.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Several fake CPU devices; single-device code uses jax.devices()[:1] explicitly.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# ---- shared fixtures for the training-engine tests (test_steps, test_parallel, test_cli) ----

import pytest  # noqa: E402

# A skip fails the run unless the test marks it expected (see tests/strict_skips.py).
pytest_plugins = ("tests.strict_skips",)


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """A TFDS data dir with mnist and tiny_shakespeare prepared offline from the vendored files (train/vendored/).

    Preparation (~1 min on 2 cores) runs once per session; afterwards the npz array cache
    under <dir>/zoo_arrays makes every load (in-process or by a CLI subprocess) fast.
    """
    pytest.importorskip("tensorflow_datasets")
    from train import data

    data_dir = tmp_path_factory.mktemp("tfds")
    for name in ("mnist", "tiny_shakespeare"):
        for split in data.SPLITS[name]:
            data.load_split(name, split, data_dir=data_dir)
    return data_dir


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory):
    """Environment for `zoo` subprocesses: CPU, 4 fake devices, a session-wide compilation cache
    (so a model compiled by one run is reused by the next), no network-bound TF logging."""
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_NUM_CPU_DEVICES="4",
        TF_CPP_MIN_LOG_LEVEL="3",
        ZOO_COMPILATION_CACHE=str(tmp_path_factory.mktemp("jax_cache")),
        PYTHONUNBUFFERED="1",
    )
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "ZOO_DEBUG"):
        env.pop(key, None)
    return env


@pytest.fixture
def cli(monkeypatch, capsys):
    """Runs `zoo ARGS` in this process; returns (exit code, stdout, stderr)."""
    from train.cli import main

    monkeypatch.setenv("ZOO_COMPILATION_CACHE", "off")

    def run(*args):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
