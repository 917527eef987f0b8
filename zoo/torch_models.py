"""The PyTorch twins of zoo's models: the same architectures as torch.nn modules.

Imports torch (`import zoo` does not import this file). Build twins through the registry,
with the same options as `zoo.create`:

    net = zoo.torch_model("cnn", num_classes=5).eval()
    net.load_state_dict(zoo.to_torch(zoo.create("cnn", num_classes=5), variables))
    logits = net(images_nchw)                     # float32 (B, C, H, W) in [0, 1]

Each twin takes the zoo module's fields as keyword arguments (all required: the defaults
live in zoo's modules and registry only). Layer for layer the same as the Flax model, in
PyTorch's conventions:
  * images are NCHW (zoo: NHWC; permute with x.permute(0, 3, 1, 2)); a Linear on a flattened
    image reads it in (C, H, W) order, which `from_torch`/`to_torch` permute;
  * an nn.LSTM keeps two biases per gate (b_ih + b_hh; zoo keeps their sum);
  * `lstm` takes (B, T, F) sequences in both (zoo: images[..., 0] for MNIST rows);
  * `dcgan` keeps the tutorial's [-1, 1] image range: the generator returns tanh(x) and the
    discriminator scores images in [-1, 1]. zoo's generator returns (tanh(x) + 1) / 2 and its
    discriminator maps x -> 2x - 1 first, so
        zoo_generate(z)     == (torch_generator(z) + 1) / 2
        zoo_discriminate(x) == torch_discriminator(2 * x - 1).
The bench/ scripts train these twins as the PyTorch baseline.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any

import torch
from flax import linen as flax_nn
from torch import nn

from zoo import autoencoder, cnn, gan, mlp, multitask, rnn

__all__ = [
    "MLP",
    "CNN",
    "LSTMClassifier",
    "CharLSTM",
    "ConvAutoencoder",
    "Generator",
    "Discriminator",
    "DCGAN",
    "MultiTaskNet",
    "twin",
]


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU (-> Dropout)] per hidden width -> Linear logits. Keys fc1, fc2, ..."""

    def __init__(self, *, num_classes: int, hidden, in_shape, dropout_rate: float):
        super().__init__()
        widths = [math.prod(in_shape), *hidden, num_classes]
        for i in range(len(widths) - 1):
            self.add_module(f"fc{i + 1}", nn.Linear(widths[i], widths[i + 1]))
        self.num_linear = len(widths) - 1
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate else nn.Identity()

    def forward(self, x):
        x = x.flatten(1)  # images: (C, H, W) order
        for i in range(1, self.num_linear):
            x = self.dropout(torch.relu(self.get_submodule(f"fc{i}")(x)))
        return self.get_submodule(f"fc{self.num_linear}")(x)


class CNN(nn.Module):
    """[Conv2d 3x3 pad 1 -> ReLU -> MaxPool2d(2)] per feature count (-> Dropout) -> Linear logits.

    Keys conv1, conv2, ..., fc.
    """

    def __init__(self, *, num_classes: int, features, in_shape, dropout_rate: float):
        super().__init__()
        h, w, c = in_shape
        chans = [c, *features]
        for i in range(len(features)):
            self.add_module(f"conv{i + 1}", nn.Conv2d(chans[i], chans[i + 1], 3, padding=1))
            h, w = h // 2, w // 2
        self.num_convs = len(features)
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate else nn.Identity()
        self.fc = nn.Linear(h * w * features[-1], num_classes)

    def forward(self, x):
        for i in range(1, self.num_convs + 1):
            x = self.pool(torch.relu(self.get_submodule(f"conv{i}")(x)))
        return self.fc(self.dropout(x.flatten(1)))  # NCHW flatten: (C, H, W) order


class LSTMClassifier(nn.Module):
    """nn.LSTM over (B, T, F) (batch_first) -> Linear on the last step. Keys lstm, fc."""

    def __init__(self, *, num_classes: int, hidden: int, num_layers: int, in_shape):
        super().__init__()
        self.lstm = nn.LSTM(in_shape[1], hidden, num_layers=num_layers, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


class CharLSTM(nn.Module):
    """Embedding -> nn.LSTM (batch_first) -> Linear over the vocabulary. Keys embedding, lstm, fc."""

    def __init__(self, *, vocab_size: int, embed_dim: int, hidden: int, num_layers: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=num_layers, batch_first=True)
        self.fc = nn.Linear(hidden, vocab_size)

    def forward(self, tokens, state=None, return_state: bool = False):
        """tokens (B, T) int64 -> logits (B, T, vocab) [, (h_n, c_n) each (layers, B, H)]."""
        out, state = self.lstm(self.embedding(tokens), state)
        logits = self.fc(out)
        return (logits, state) if return_state else logits


class ConvAutoencoder(nn.Module):
    """Conv encoder 28 -> 14 -> 7 -> 4 and transposed-conv decoder 4 -> 7 -> 14 -> 28.

    Keys encoder.{0,2,4}, decoder.{0,2,4}. The encoder ends with the ReLU that zoo applies in
    `__call__` (zoo's `encode` returns the code before it).
    """

    def __init__(self, *, features, latent: int):
        super().__init__()
        f1, f2 = features
        self.encoder = nn.Sequential(
            nn.Conv2d(1, f1, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(f1, f2, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(f2, latent, 4, 1, 0), nn.ReLU(),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(latent, f2, 4, 1, 0), nn.ReLU(),
            nn.ConvTranspose2d(f2, f1, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(f1, 1, 4, 2, 1), nn.Sigmoid(),
        )  # fmt: skip

    def forward(self, x):
        return self.decoder(self.encoder(x))


class Generator(nn.Module):
    """z (B, latent) -> images (B, 1, 28, 28) in [-1, 1] (tanh). Keys main.{0,1,3,4,6}."""

    def __init__(self, *, latent_dim: int, features):
        super().__init__()
        f1, f2 = features
        self.latent_dim = latent_dim
        self.main = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, f1, 7, 1, 0, bias=False), nn.BatchNorm2d(f1), nn.ReLU(),
            nn.ConvTranspose2d(f1, f2, 4, 2, 1, bias=False), nn.BatchNorm2d(f2), nn.ReLU(),
            nn.ConvTranspose2d(f2, 1, 4, 2, 1), nn.Tanh(),
        )  # fmt: skip

    def forward(self, z):
        return self.main(z.reshape(z.shape[0], self.latent_dim, 1, 1))


class Discriminator(nn.Module):
    """images (B, 1, 28, 28) in [-1, 1] -> one logit (B, 1). Keys main.{0,2,3,5}."""

    def __init__(self, *, features):
        super().__init__()
        f1, f2 = features
        self.main = nn.Sequential(
            nn.Conv2d(1, f1, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(f1, f2, 4, 2, 1, bias=False), nn.BatchNorm2d(f2), nn.LeakyReLU(0.2),
            nn.Conv2d(f2, 1, 7, 1, 0),
        )  # fmt: skip

    def forward(self, x):
        return self.main(x).reshape(x.shape[0], 1)


class DCGAN(nn.Module):
    """Generator + discriminator; `forward(z)` generates. Keys generator.*, discriminator.*."""

    def __init__(self, *, latent_dim: int, g_features, d_features):
        super().__init__()
        self.generator = Generator(latent_dim=latent_dim, features=g_features)
        self.discriminator = Discriminator(features=d_features)

    def forward(self, z):
        return self.generator(z)

    def discriminate(self, x):
        return self.discriminator(x)


class MultiTaskNet(nn.Module):
    """Flatten -> shared [Linear -> ReLU] trunk -> one Linear head per task (dict of logits).

    Keys shared.{0,2,...}, heads.<name>.
    """

    def __init__(self, *, heads, trunk, in_shape):
        super().__init__()
        layers, width = [], math.prod(in_shape)
        for w in trunk:
            layers += [nn.Linear(width, w), nn.ReLU()]
            width = w
        self.shared = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({name: nn.Linear(width, n) for name, n in heads})

    def forward(self, x):
        h = self.shared(x.flatten(1))
        return {name: head(h) for name, head in self.heads.items()}


_TWINS: dict[type[flax_nn.Module], type[nn.Module]] = {
    mlp.MLP: MLP,
    cnn.CNN: CNN,
    rnn.LSTMClassifier: LSTMClassifier,
    rnn.CharLSTM: CharLSTM,
    autoencoder.ConvAutoencoder: ConvAutoencoder,
    gan.Generator: Generator,
    gan.Discriminator: Discriminator,
    gan.DCGAN: DCGAN,
    multitask.MultiTaskNet: MultiTaskNet,
}
# Numerics, not architecture: the twins compute in float32 whatever zoo computes in.
IGNORED_FIELDS = frozenset({"dtype", "param_dtype"})


def twin(model: flax_nn.Module) -> nn.Module:
    """The twin of a configured zoo module, built from its fields.

    Raises:
      TypeError: `model` is not a zoo model with a twin.
      ValueError: the module sets a field the twin does not take to a non-default value.
    """
    cls = _TWINS.get(type(model))
    if cls is None:
        raise TypeError(
            f"torch_model: no PyTorch twin for {type(model).__name__}; expected one of "
            f"{', '.join(sorted(c.__name__ for c in _TWINS))}"
        )
    takes = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(model):
        if not field.init or field.name in ("parent", "name") or field.name in IGNORED_FIELDS:
            continue
        value = getattr(model, field.name)
        if field.name in takes:
            kwargs[field.name] = value
        elif value != field.default:
            raise ValueError(
                f"torch_model: the PyTorch twin {cls.__name__} does not support the option "
                f"{field.name!r} (expected its default {field.default!r}, got {value!r})"
            )
    return cls(**kwargs)
