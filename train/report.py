"""Run outputs: metrics to stdout / metrics.jsonl / TensorBoard, progress bars, PNG grids.

Only process 0 of a multi-host run writes.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np


def is_writer() -> bool:
    return jax.process_index() == 0


def summary_writer_class():
    """tensorboardX's SummaryWriter, imported without its optional `import torch`.

    tensorboardX imports torch whenever torch is installed (seconds of a run's start-up) only
    for a type annotation; torch tensors it still recognises by their type's
    name, importing torch then. The engine logs Python floats. While tensorboardX loads,
    `import torch` is made to fail (sys.modules["torch"] = None); the entry is removed after,
    so a later `import torch` works. Nothing changes when either is already imported.
    """
    if "torch" not in sys.modules and "tensorboardX" not in sys.modules:
        sys.modules["torch"] = None
        try:
            from tensorboardX import SummaryWriter
        finally:
            del sys.modules["torch"]
    from tensorboardX import SummaryWriter

    return SummaryWriter


class MetricsLog:
    """Appends one JSON line per record to metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: Path, *, tensorboard: bool = True):
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        if tensorboard and is_writer():
            self._tb = summary_writer_class()(str(Path(workdir) / "tb"))

    def truncate(self, step: int) -> None:
        """Drops the records logged after `step`: a resumed run replays (and logs) them again."""
        if not is_writer() or not self.path.exists():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        keep = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        if len(keep) != len(lines):
            from zoo.files import write_text_atomic

            write_text_atomic(self.path, "".join(keep))

    def write(self, record: dict) -> None:
        if not is_writer():
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if self._tb is not None:
            step = int(record.get("step", 0))
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key.replace(".", "/"), value, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def fmt(metrics: dict) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))


class Progress:
    """A tqdm bar with live loss and throughput; silent when stderr is not a TTY."""

    def __init__(self, total: int, desc: str, batch_size: int, *, done: int = 0):
        from tqdm.auto import tqdm

        self.batch_size = batch_size
        self.bar = tqdm(total=total, initial=done, desc=desc, disable=not (sys.stderr.isatty() and is_writer()), leave=False)
        self.start = time.perf_counter()
        self.steps = 0  # run by this process (for the rate)

    def update(self, steps: int, loss: float) -> None:
        self.steps += steps
        rate = self.steps * self.batch_size / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix(loss=f"{loss:.4f}", ex_s=f"{rate:,.0f}")
        self.bar.update(steps)

    def close(self) -> None:
        self.bar.close()


def save_grid(images, path: Path, *, ncol: int = 8) -> Path:
    """Saves float images (N, H, W, C) in [0, 1] as one PNG grid (written atomically)."""
    from PIL import Image

    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    n, h, w, c = images.shape
    nrow = -(-n // ncol)
    grid = np.ones((nrow * (h + 2) + 2, ncol * (w + 2) + 2, c), np.float32)
    for i in range(n):
        r, col = divmod(i, ncol)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + col * (w + 2) : 2 + col * (w + 2) + w] = images[i]
    pixels = (grid * 255).round().astype(np.uint8)
    image = Image.fromarray(pixels[..., 0] if c == 1 else pixels, "L" if c == 1 else "RGB")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
