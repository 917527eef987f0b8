"""Every script in examples/ runs on a small MNIST slice (`--quick`), as a subprocess with 4 fake
CPU devices, and opens with its note on what PyTorch does differently."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("[0-9][0-9]_*.py"))
TOPICS = ("tensors_autograd", "module_and_parameters", "data_pipeline", "training_loop", "evaluation",
          "save_and_load", "regularization", "augmentation", "multiple_devices", "tensorboard", "gan_loop",
          "autoencoder_loop")


def test_every_tutorial_topic_has_an_example():
    assert [name[3:-3] for name in SCRIPTS] == list(TOPICS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_example_opens_with_the_pytorch_difference(name):
    doc = ast.get_docstring(ast.parse((EXAMPLES / name).read_text()))
    assert doc and "PyTorch" in doc, name
    summary, blank, *note = doc.splitlines()
    assert summary and not blank and 1 <= len(note) <= 2, f"{name}: one summary line, then a two-line note"


@pytest.mark.parametrize("name", SCRIPTS)
def test_example_runs_quick(name, tfds_dir, cli_env, tmp_path):
    env = {**cli_env, "TFDS_DATA_DIR": str(tfds_dir)}
    out = subprocess.run([sys.executable, str(EXAMPLES / name), "--quick"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert out.stdout.strip(), f"{name} printed nothing"
