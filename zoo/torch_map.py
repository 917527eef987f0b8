"""The words a model family declares its PyTorch mapping in (imports no torch).

A family file lists, for each of its module classes, the zoo layers of a configured module
in the order its PyTorch twin registers them, and hands that function to
`zoo.registry.register_torch` with the twin classes:

    def _torch_layers(m: MLP) -> list[Layer]:
        return [Layer("fc1", ("dense_0",), LINEAR, image=flattened_image(m.in_shape)), ...]

    register_torch(MLP, layers=_torch_layers, twins=_torch_twins)

`zoo.torch_port` reads these declarations to convert weights both ways (`from_torch`,
`to_torch`) and to build the twins (`torch_model`).
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "Tensor",
    "Kind",
    "Layer",
    "LINEAR",
    "CONV",
    "CONV_TRANSPOSE",
    "EMBEDDING",
    "BATCHNORM",
    "LSTM",
    "flattened_image",
    "nested",
]


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One zoo leaf <-> torch tensor(s) `<module>.<suffix>`: flax = torch.transpose(perm).

    Several suffixes are summed into the leaf (an LSTM's bias_ih + bias_hh).
    """

    leaf: str
    suffixes: tuple[str, ...]
    perm: tuple[int, ...] | None = None
    collection: str = "params"


@dataclasses.dataclass(frozen=True)
class Kind:
    """A torch layer type: its tensors, and its buffers that have no zoo counterpart."""

    name: str
    tensors: tuple[Tensor, ...]
    buffers: tuple[str, ...] = ()


_BIAS = Tensor("bias", ("bias",))
LINEAR = Kind("Linear", (Tensor("kernel", ("weight",), (1, 0)), _BIAS))
CONV = Kind("Conv2d", (Tensor("kernel", ("weight",), (2, 3, 1, 0)), _BIAS))
CONV_TRANSPOSE = Kind("ConvTranspose2d", (Tensor("kernel", ("weight",), (2, 3, 1, 0)), _BIAS))
EMBEDDING = Kind("Embedding", (Tensor("embedding", ("weight",)),))
BATCHNORM = Kind(
    "BatchNorm2d",
    (
        Tensor("scale", ("weight",)),
        _BIAS,
        Tensor("mean", ("running_mean",), collection="batch_stats"),
        Tensor("var", ("running_var",), collection="batch_stats"),
    ),
    buffers=("num_batches_tracked",),
)
# One stacked layer of an nn.LSTM; its torch keys carry the layer's "_l{k}" tag.
LSTM = Kind(
    "LSTM",
    (
        Tensor("wi", ("weight_ih",), (1, 0)),
        Tensor("wh", ("weight_hh",), (1, 0)),
        Tensor("b", ("bias_ih", "bias_hh")),
    ),
)


@dataclasses.dataclass(frozen=True)
class Layer:
    """One zoo layer and its place in the PyTorch twin.

    Attributes:
      torch_name: the twin's module path ("fc1", "main.3", "lstm"); keys are
        `<torch_name>.<suffix><tag>`.
      path: the flax module path, e.g. ("generator", "bn_0").
      kind: the torch layer type.
      tag: "_l{k}" for stacked layer k of an nn.LSTM, else "".
      image: (H, W, C) of the image a Linear reads flattened (torch flattens it (C, H, W)).
    """

    torch_name: str
    path: tuple[str, ...]
    kind: Kind
    tag: str = ""
    image: tuple[int, int, int] | None = None


def flattened_image(shape) -> tuple[int, int, int] | None:
    """`Layer.image` for a Linear reading an input of per-example `shape`: (H, W, C) for an image, else None."""
    return tuple(shape) if len(shape) == 3 else None


def nested(prefix: str, layers: list[Layer]) -> list[Layer]:
    """`layers` of a submodule named `prefix` in both the flax module and its twin."""
    return [
        dataclasses.replace(layer, torch_name=f"{prefix}.{layer.torch_name}", path=(prefix, *layer.path))
        for layer in layers
    ]
