"""train/report.py: metrics.jsonl and TensorBoard logging."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")  # the case the lazy import is for: torch installed

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import glob, json, sys
from train.report import MetricsLog
log = MetricsLog(sys.argv[1])
loaded_torch = "torch" in sys.modules
log.write({"step": 3, "loss": 0.5, "note": "text is not a scalar"})
log.close()
import struct
from tensorboardX.proto.event_pb2 import Event
data = open(glob.glob(sys.argv[1] + "/tb/events.out.tfevents.*")[0], "rb").read()
loss, at = [], 0
while at < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
    (n,) = struct.unpack("<Q", data[at:at + 8])
    event = Event.FromString(data[at + 12:at + 12 + n])
    at += 16 + n
    loss += [(event.step, v.simple_value) for v in event.summary.value if v.tag == "loss"]
import torch  # still importable afterwards
print(json.dumps({"loaded_torch": loaded_torch, "loss": loss, "torch_ok": torch.ones(1).item() == 1.0}))
"""


def test_tensorboard_logging_does_not_import_torch(tmp_path):
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"loaded_torch": False, "loss": [[3, 0.5]], "torch_ok": True}
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 3, "loss": 0.5, "note": "text is not a scalar"}
