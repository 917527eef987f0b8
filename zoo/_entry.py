"""The `zoo` command's entry point (pyproject.toml [project.scripts]).

The training engine's import name is `train`, so a researcher's own `train.py` (or `train/`
folder) earlier on sys.path, e.g. through PYTHONPATH=., shadows it. This module checks which
`train` Python would import before importing it, and says so in one line instead of failing
with "No module named 'train.cli'". `import zoo` never loads this module.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# train/__init__.py defines it; a module without it is not zoo's training package.
MARKER = "__zoo_train__"


def shadowing_train() -> str | None:
    """Why `import train` would not give zoo's training package, naming the file it would give; None if it would.

    Looks at the module's source without running it (a shadowing train.py may be someone's script).
    """
    module = sys.modules.get("train")
    if module is not None:
        if getattr(module, MARKER, False):
            return None
        origin = getattr(module, "__file__", None)
    else:
        spec = importlib.util.find_spec("train")
        if spec is None:
            return "zoo's training package `train` is not installed (pip install 'zoo[train]')"
        origin = spec.origin
        if origin and Path(origin).name == "__init__.py" and MARKER in Path(origin).read_text(errors="replace"):
            return None
    where = origin or "a namespace folder named train"
    return (f"`import train` finds {where}, not zoo's training package: that file shadows it (it comes earlier "
            "on sys.path, e.g. the current folder or PYTHONPATH); rename it (e.g. to train_cnn.py) or "
            "remove its folder from PYTHONPATH")


def main() -> int:
    """Runs `zoo ...` (train.cli.main) once `train` is known to be zoo's training package."""
    problem = shadowing_train()
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from train.cli import main as cli_main  # the one place zoo/ reaches into train/: the command itself

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
