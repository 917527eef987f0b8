"""Evaluation: accuracy, per-class precision/recall/F1 and the confusion matrix.

PyTorch: model.eval() + torch.no_grad(), then sklearn.metrics on collected predictions.
JAX: apply is already side-effect free (train=False); the confusion matrix is one scatter-add.
"""

from _common import mnist

import jax
import jax.numpy as jnp
import numpy as np

import zoo
from train.tasks import classification_report

model, variables = zoo.load("cnn", pretrained="mnist")
x, y = mnist("test")
pred = np.asarray(jax.jit(lambda v, x: jnp.argmax(model.apply(v, x), -1))(variables, x))
confusion = np.zeros((10, 10), int)
np.add.at(confusion, (y, pred), 1)  # rows: true class, columns: prediction
report = classification_report(confusion)
print(f"accuracy {np.mean(pred == y):.4f}, macro F1 {report['macro_f1']:.4f}")
for c, r in report["per_class"].items():
    print(f"  {c}: precision {r['precision']:.3f} recall {r['recall']:.3f} f1 {r['f1']:.3f} (n={r['support']})")
print(confusion)
