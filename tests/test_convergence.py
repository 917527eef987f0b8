"""Training converges: the CLI's default recipes for mlp and cnn (optimizer, learning rate,
schedule, batch size from train/configs) train on a slice of real MNIST for a fixed number of
steps from a fixed seed and reach a validation accuracy that a broken optimizer, loss, data
order or augmentation misses.

Calibrated on this CPU (seed 0): the runs reach mlp 0.875 / cnn 0.855; with the training labels
shuffled 0.022 / 0.038, with the learning rate zeroed 0.104 / 0.146, with the loss's labels shifted
by one 0.010 / 0.013. The thresholds leave a few points for other XLA versions.
"""

from __future__ import annotations

import pytest

import train

# (model, training examples, epochs, validation accuracy it must exceed)
RUNS = {
    "mlp": (2048, 3, 0.82),
    "cnn": (2048, 2, 0.80),
}


def recipe_run(name: str, data_dir) -> dict:
    """The recipe's last-epoch record after a short, seeded run (one device, no samples)."""
    limit, epochs, _ = RUNS[name]
    result = train.fit(name, "mnist", data_dir=str(data_dir), train_limit=limit, val_size=1000, epochs=epochs,
                       num_devices=1, seed=0, log=lambda *a, **k: None)
    return result.metrics


@pytest.mark.parametrize("name", sorted(RUNS))
def test_default_recipe_converges(name, tfds_dir):
    record = recipe_run(name, tfds_dir)
    threshold = RUNS[name][2]
    assert record["val_accuracy"] > threshold, (name, record)
    assert record["train_loss"] < 1.0, (name, record)  # chance is ln(10) = 2.3
