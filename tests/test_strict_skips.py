"""tests/strict_skips.py: a skip fails the run unless marked expected; -ra lists the expected ones."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SAMPLE = textwrap.dedent('''
    import pytest

    def test_missing_dependency():
        pytest.importorskip("no_such_module_zoo")

    @pytest.mark.skipif(True, reason="needs 4 (fake CPU) devices")
    def test_too_few_devices():
        pass

    @pytest.mark.expected_skip("only on the measured jaxlib line")
    def test_expected():
        pytest.skip("other jaxlib")

    @pytest.mark.gpu
    def test_gpu_only():
        raise AssertionError("never runs on a CPU-only machine")

    @pytest.mark.xfail(reason="known")
    def test_xfail():
        raise AssertionError

    def test_passes():
        pass
''')


def run_pytest(tmp_path: Path, *args: str, allow: bool = False, files: dict | None = None) -> subprocess.CompletedProcess:
    for name, text in (files or {"test_sample.py": SAMPLE}).items():
        (tmp_path / name).write_text(text)
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    env.pop("ZOO_ALLOW_SKIPS", None)
    if allow:
        env["ZOO_ALLOW_SKIPS"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.strict_skips", "-ra", "-p", "no:cacheprovider",
                           "-o", "addopts=", *args, str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def summary(out: str) -> str:
    return out.strip().splitlines()[-1]


def test_unexpected_skips_fail_and_expected_ones_are_listed(tmp_path):
    result = run_pytest(tmp_path)
    out = result.stdout
    assert result.returncode == 1, out
    assert "1 failed, 1 passed, 2 skipped, 1 xfailed, 1 error" in summary(out), out
    assert "FAILED test_sample.py::test_missing_dependency" in out
    assert "ERROR test_sample.py::test_too_few_devices" in out  # a skipif skips at setup
    assert "unexpected skip (could not import 'no_such_module_zoo'" in out
    assert "unexpected skip (needs 4 (fake CPU) devices)" in out
    # -ra lists the expected skips with their reasons
    assert "SKIPPED [1] test_sample.py:" in out and "other jaxlib" in out
    assert "SKIPPED [1] test_sample.py:15: needs a GPU (expected on a CPU-only machine)" in out


def test_module_level_importorskip_fails_collection(tmp_path):
    module = 'import pytest\ntorch = pytest.importorskip("no_such_module_zoo")\n\ndef test_a():\n    pass\n'
    result = run_pytest(tmp_path, files={"test_mod.py": module})
    assert result.returncode != 0, result.stdout
    assert "1 error" in summary(result.stdout), result.stdout
    assert "unexpected skip of test_mod.py" in result.stdout


def test_under_xdist_too(tmp_path):
    result = run_pytest(tmp_path, "-n", "2")
    assert result.returncode == 1, result.stdout
    assert "1 failed, 1 passed, 2 skipped, 1 xfailed, 1 error" in summary(result.stdout), result.stdout


def test_allow_switch_restores_plain_skips(tmp_path):
    result = run_pytest(tmp_path, allow=True)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 4 skipped, 1 xfailed" in summary(result.stdout), result.stdout
