"""TensorBoard: scalars and images written with tensorboardX from host values.

PyTorch: torch.utils.tensorboard.SummaryWriter. Same file format; values come off the device
with float()/np.asarray at log time, not every step (the host stays out of the hot loop).
"""

import sys
from pathlib import Path

from _common import mnist

import numpy as np
from tensorboardX import SummaryWriter

logdir = Path(sys.argv[sys.argv.index("--logdir") + 1]) if "--logdir" in sys.argv else Path("runs/tb_example")
x, _ = mnist("train", n=8)
with SummaryWriter(str(logdir)) as writer:
    for step in range(10):
        writer.add_scalar("train/loss", float(np.exp(-step / 3)), step)
    writer.add_images("samples", x.transpose(0, 3, 1, 2), 0)  # NCHW for TensorBoard
print("wrote", sorted(p.name for p in logdir.iterdir()), "- view with: tensorboard --logdir", logdir)
