"""Training configuration: one flat dataclass, defaults per model from train/configs/<model>.json.

Precedence: dataclass defaults < the model's recipe JSON < explicit overrides (CLI flags).
The resolved config is saved in the workdir (config.json) and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclasses.dataclass
class Config:
    """Everything that defines a training run (all JSON-able)."""

    model: str
    dataset: str = "mnist"
    epochs: int = 1
    batch_size: int = 64
    optimizer: str = "adam"  # sgd | momentum | adam | adamw | rmsprop
    lr: float = 1e-3
    momentum: float = 0.9
    b1: float = 0.9
    weight_decay: float = 0.0
    clip_norm: float = 0.0
    schedule: str = "constant"  # constant | cosine | onecycle
    warmup_steps: int = 0
    init: str = "default"  # default | glorot (Xavier uniform, as the tutorials' nn.init.xavier_uniform_)
    model_overrides: dict = dataclasses.field(default_factory=dict)
    augment_flip: bool = False
    augment_rotate: float = 0.0  # degrees
    augment_shift: int = 0  # pixels
    val_size: int = 5000  # held out from the end of the train split (datasets without a validation split)
    seq_len: int = 100  # language models: characters per training window
    seed: int = 0
    strategy: str = "jit"  # jit | pmap
    num_devices: int = 0  # 0 = all devices (all hosts)
    steps_per_dispatch: int = 0  # steps per compiled dispatch (lax.scan); 0 = auto: 1 on CPU, an epoch on GPU/TPU
    log_every: int = 100  # steps between host syncs (progress bar, non-finite check)
    eval_batch_size: int = 1000
    early_stop_patience: int = 0  # epochs without improvement of the validation metric; 0 = off
    checkpoint_every: int = 1  # epochs
    checkpoint_steps: int = 0  # also save every N steps (at dispatch boundaries); 0 = off
    keep_checkpoints: int = 3
    max_steps: int = 0  # stop after this many steps in total; 0 = epochs * steps per epoch
    train_limit: int = 0  # use only the first N training examples; 0 = all (for quick tests)
    sample_every: int = 1  # epochs between PNG grids / text samples; 0 = off
    init_from: str = ""  # pretrained tag "cnn.mnist" or an export dir: fine-tune from those weights
    data_dir: str | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name for f in dataclasses.fields(Config)}


def _check_keys(keys, where: str) -> None:
    for key in keys:
        if key not in FIELDS:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{where}: unknown config key {key!r}.{hint}")


def recipe(model: str) -> dict:
    """The default recipe for `model` (train/configs/<model>.json), {} if there is none."""
    path = CONFIG_DIR / f"{model}.json"
    if not path.exists():
        return {}
    values = json.loads(path.read_text())
    values.pop("_comment", None)
    _check_keys(values, str(path))
    return values


def resolve(model: str, overrides: dict[str, Any] | None = None) -> Config:
    """The run's config: the model's recipe with `overrides` (None values ignored) applied."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    _check_keys(overrides, "override")
    values = {**recipe(model), **overrides, "model": model}
    return Config(**values)
