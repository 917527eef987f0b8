"""PyTorch (torch.nn) reference modules of the tutorial architectures behind zoo's registry.

One module per registry model, layer for layer the same as the Flax model, in PyTorch's
own conventions (NCHW images, (out, in) Linear weights, two LSTM biases). Used by the
parity tests (tests/test_torch_port.py: torch weights -> zoo.from_torch -> same outputs)
and by the benchmarks (bench/) as the PyTorch baseline.

    from tests.torch_ref import TORCH_MODELS     # with the repo root on sys.path
    net = TORCH_MODELS["cnn"]().eval()
    logits = net(images_nchw)                    # float32 (B, 1, 28, 28) in [0, 1]

The state_dict key names (fc1, conv1, encoder.0, generator.main.0, ...) are the ones
`zoo.from_torch` reads; they follow the tutorials (e.g. the DCGAN's `main` Sequential).

Conventions that differ from the zoo model and how the comparison handles them:
  * images are NCHW here, NHWC in zoo (permute with x.permute(0, 3, 1, 2));
  * `lstm` takes (B, 28, 28) sequences in both (zoo: images[..., 0]);
  * `dcgan` keeps the tutorial's [-1, 1] image range: the generator returns tanh(x) and the
    discriminator scores images in [-1, 1]. zoo's generator returns (tanh(x) + 1) / 2 and
    its discriminator maps x -> 2x - 1 first, so
        zoo_generate(z)   == (torch_generator(z) + 1) / 2
        zoo_discriminate(x) == torch_discriminator(2 * x - 1).

This file imports torch; zoo itself never does.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

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
    "TORCH_MODELS",
]


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU] per hidden width -> Linear logits. Keys: fc1, fc2, ..."""

    def __init__(self, in_features: int = 784, hidden=(500, 256), num_classes: int = 10):
        super().__init__()
        widths = [in_features, *hidden, num_classes]
        for i in range(len(widths) - 1):
            self.add_module(f"fc{i + 1}", nn.Linear(widths[i], widths[i + 1]))
        self.num_layers = len(widths) - 1

    def forward(self, x):
        x = x.flatten(1)
        for i in range(1, self.num_layers):
            x = torch.relu(getattr(self, f"fc{i}")(x))
        return getattr(self, f"fc{self.num_layers}")(x)


class CNN(nn.Module):
    """[Conv2d 3x3 pad 1 -> ReLU -> MaxPool2d(2)] per feature count -> Linear logits.

    Keys: conv1, conv2, ..., fc.
    """

    def __init__(self, in_channels: int = 1, features=(32, 64), image_size: int = 28, num_classes: int = 10):
        super().__init__()
        chans = [in_channels, *features]
        for i in range(len(features)):
            self.add_module(f"conv{i + 1}", nn.Conv2d(chans[i], chans[i + 1], 3, padding=1))
        self.num_convs = len(features)
        self.pool = nn.MaxPool2d(2)
        side = image_size
        for _ in features:
            side //= 2
        self.fc = nn.Linear(side * side * features[-1], num_classes)

    def forward(self, x):
        for i in range(1, self.num_convs + 1):
            x = self.pool(torch.relu(getattr(self, f"conv{i}")(x)))
        return self.fc(x.flatten(1))  # NCHW flatten: (C, H, W) order


class LSTMClassifier(nn.Module):
    """nn.LSTM over (B, T, F) (batch_first) -> Linear on the last step. Keys: lstm, fc."""

    def __init__(self, in_features: int = 28, hidden: int = 128, num_layers: int = 2, num_classes: int = 10):
        super().__init__()
        self.lstm = nn.LSTM(in_features, hidden, num_layers=num_layers, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


class CharLSTM(nn.Module):
    """Embedding -> nn.LSTM (batch_first) -> Linear over the vocabulary. Keys: embedding, lstm, fc."""

    def __init__(self, vocab_size: int = 65, embed_dim: int = 64, hidden: int = 256, num_layers: int = 2):
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

    Keys: encoder.{0,2,4}, decoder.{0,2,4}. The encoder ends with a ReLU, as zoo's `encode` does.
    """

    def __init__(self, features=(32, 64), latent: int = 16):
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
    """z (B, latent) -> images (B, 1, 28, 28) in [-1, 1] (tanh). Keys: main.{0,1,3,4,6}."""

    def __init__(self, latent_dim: int = 100, features=(128, 64)):
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
    """images (B, 1, 28, 28) in [-1, 1] -> one logit (B, 1). Keys: main.{0,2,3,5}."""

    def __init__(self, features=(32, 64)):
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
    """Generator + discriminator; `forward(z)` generates. Keys: generator.*, discriminator.*."""

    def __init__(self, latent_dim: int = 100, g_features=(128, 64), d_features=(32, 64)):
        super().__init__()
        self.generator = Generator(latent_dim, g_features)
        self.discriminator = Discriminator(d_features)

    def forward(self, z):
        return self.generator(z)

    def discriminate(self, x):
        return self.discriminator(x)


class MultiTaskNet(nn.Module):
    """Flatten -> shared [Linear -> ReLU] trunk -> one Linear head per task (dict of logits).

    Keys: shared.{0,2,...}, heads.<name>.
    """

    def __init__(self, in_features: int = 784, trunk=(256, 128), heads=(("digit", 10), ("parity", 2))):
        super().__init__()
        layers, width = [], in_features
        for w in trunk:
            layers += [nn.Linear(width, w), nn.ReLU()]
            width = w
        self.shared = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({name: nn.Linear(width, n) for name, n in heads})

    def forward(self, x):
        h = self.shared(x.flatten(1))
        return {name: head(h) for name, head in self.heads.items()}


TORCH_MODELS: dict[str, Callable[[], nn.Module]] = {
    "mlp": functools.partial(MLP, 784, (500, 256), 10),
    "mlp_small": functools.partial(MLP, 784, (128, 64), 10),
    "mlp_binary": functools.partial(MLP, 10, (5,), 1),
    "cnn": functools.partial(CNN, 1, (32, 64), 28, 10),
    "cnn_cifar": functools.partial(CNN, 3, (32, 64, 128), 32, 10),
    "lstm": functools.partial(LSTMClassifier, 28, 128, 2, 10),
    "char_lstm": functools.partial(CharLSTM, 65, 64, 256, 2),
    "autoencoder": functools.partial(ConvAutoencoder, (32, 64), 16),
    "dcgan": functools.partial(DCGAN, 100, (128, 64), (32, 64)),
    "multitask": functools.partial(MultiTaskNet, 784, (256, 128), (("digit", 10), ("parity", 2))),
}
"""Registry name -> constructor of the matching torch module (default configuration)."""
