"""Load PyTorch weights of the tutorial architectures into zoo models.

    import torch, zoo
    variables = zoo.from_torch("cnn", torch_net.state_dict())
    logits = zoo.create("cnn").apply(variables, images_nhwc)

`from_torch` never imports torch: the state dict may hold torch tensors (read with
`.detach().cpu().numpy()`) or anything `np.asarray` accepts. It returns the variables
dict of the model ({"params": ...}, plus "batch_stats" for dcgan) with float32 jax
arrays on the default device, like `zoo.init`.

The torch key names are those of the reference modules in tests/torch_ref.py (which
follow the tutorials). Layout changes: Linear (out, in) -> kernel (in, out); Conv2d
(out, in, kh, kw) -> (kh, kw, in, out); ConvTranspose2d (in, out, kh, kw) -> (kh, kw, out,
in) (flax's transpose_kernel=True layout, no flip); LSTM weight_ih/hh_l{k} (4H, F) ->
wi/wh (F, 4H) and b = bias_ih + bias_hh (gate order i, f, g, o in both); Embedding
weight -> embedding; BatchNorm weight/bias -> scale/bias, running_mean/var ->
batch_stats mean/var (num_batches_tracked is ignored). Dense layers that read a
flattened image take their input rows from PyTorch's (C, H, W) order to zoo's (H, W, C)
order (a no-op for one channel, e.g. MNIST MLPs).

The conversion is strict: the expected variables come from `jax.eval_shape` of the
model's init, and a missing key, an unexpected key or a wrong shape raises one
ValueError listing every offending torch key with the expected and the found shape.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from zoo import autoencoder, cnn, gan, mlp, multitask, rnn
from zoo.registry import create, init

__all__ = ["from_torch"]


# --- layer kinds: flax leaf name -> where its value comes from in the torch layer -------


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """One flax leaf built from torch keys `<prefix>.<suffix>` (summed if several).

    `perm` reorders the torch axes into the flax layout (flax = torch.transpose(perm));
    `fix` is an optional further rearrangement that keeps the shape.
    """

    suffixes: tuple[str, ...]
    perm: tuple[int, ...] | None = None
    collection: str = "params"
    fix: Callable[[np.ndarray], np.ndarray] | None = None


_BIAS = _Leaf(("bias",))
DENSE = {"kernel": _Leaf(("weight",), (1, 0)), "bias": _BIAS}
CONV = {"kernel": _Leaf(("weight",), (2, 3, 1, 0)), "bias": _BIAS}
DECONV = {"kernel": _Leaf(("weight",), (2, 3, 1, 0)), "bias": _BIAS}  # (in, out, kh, kw) -> (kh, kw, out, in)
EMBED = {"embedding": _Leaf(("weight",))}
BATCHNORM = {
    "scale": _Leaf(("weight",)),
    "bias": _BIAS,
    "mean": _Leaf(("running_mean",), collection="batch_stats"),
    "var": _Leaf(("running_var",), collection="batch_stats"),
}
IGNORED_SUFFIXES = ("num_batches_tracked",)


def lstm_layer(k: int) -> dict[str, _Leaf]:
    """Layer k of a torch nn.LSTM (keys weight_ih_l{k}, ...) -> one zoo LSTMLayer."""
    return {
        "wi": _Leaf((f"weight_ih_l{k}",), (1, 0)),
        "wh": _Leaf((f"weight_hh_l{k}",), (1, 0)),
        "b": _Leaf((f"bias_ih_l{k}", f"bias_hh_l{k}")),
    }


def dense_from_image(in_shape: tuple[int, ...]) -> dict[str, _Leaf]:
    """A Linear reading a flattened (H, W, C) image: torch flattens it as (C, H, W)."""
    if len(in_shape) != 3:
        return DENSE
    h, w, c = in_shape

    def chw_to_hwc(kernel):  # (C*H*W, out) rows -> (H*W*C, out) rows
        return kernel.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(h * w * c, -1)

    return {"kernel": _Leaf(("weight",), (1, 0), fix=chw_to_hwc), "bias": _BIAS}


# --- per family: rows (torch prefix, flax path, layer kind) for a configured module --------

Row = tuple[str, tuple[str, ...], Mapping[str, _Leaf]]


def _mlp_rows(m: mlp.MLP) -> list[Row]:
    names = [f"dense_{i}" for i in range(len(m.hidden))] + ["head"]
    kinds = [dense_from_image(tuple(m.in_shape))] + [DENSE] * len(m.hidden)
    return [(f"fc{i + 1}", (name,), kind) for i, (name, kind) in enumerate(zip(names, kinds))]


def _cnn_rows(m: cnn.CNN) -> list[Row]:
    h, w, _ = m.in_shape
    for _ in m.features:
        h, w = h // 2, w // 2
    convs = [(f"conv{i + 1}", (f"conv_{i}",), CONV) for i in range(len(m.features))]
    return convs + [("fc", ("head",), dense_from_image((h, w, m.features[-1])))]


def _lstm_rows(m: rnn.LSTMClassifier) -> list[Row]:
    return [("lstm", (f"lstm_{k}",), lstm_layer(k)) for k in range(m.num_layers)] + [("fc", ("head",), DENSE)]


def _char_lstm_rows(m: rnn.CharLSTM) -> list[Row]:
    return [("embedding", ("embed",), EMBED)] + _lstm_rows(m)


def _autoencoder_rows(m: autoencoder.ConvAutoencoder) -> list[Row]:
    return [(f"encoder.{2 * i}", (f"enc_{i}",), CONV) for i in range(3)] + [
        (f"decoder.{2 * i}", (f"dec_{i}",), DECONV) for i in range(3)
    ]


def _generator_rows(m: gan.Generator) -> list[Row]:
    return [
        ("main.0", ("deconv_0",), DECONV),
        ("main.1", ("bn_0",), BATCHNORM),
        ("main.3", ("deconv_1",), DECONV),
        ("main.4", ("bn_1",), BATCHNORM),
        ("main.6", ("deconv_2",), DECONV),
    ]


def _discriminator_rows(m: gan.Discriminator) -> list[Row]:
    return [
        ("main.0", ("conv_0",), CONV),
        ("main.2", ("conv_1",), CONV),
        ("main.3", ("bn_1",), BATCHNORM),
        ("main.5", ("conv_2",), CONV),
    ]


def _nested(prefix: str, rows: list[Row]) -> list[Row]:
    return [(f"{prefix}.{t}", (prefix, *path), kind) for t, path, kind in rows]


def _dcgan_rows(m: gan.DCGAN) -> list[Row]:
    return _nested("generator", _generator_rows(m)) + _nested("discriminator", _discriminator_rows(m))


def _multitask_rows(m: multitask.MultiTaskNet) -> list[Row]:
    kinds = [dense_from_image(tuple(m.in_shape))] + [DENSE] * (len(m.trunk) - 1)
    trunk = [(f"shared.{2 * i}", (f"trunk_{i}",), kind) for i, kind in enumerate(kinds)]
    return trunk + [(f"heads.{name}", (f"head_{name}",), DENSE) for name, _ in m.heads]


_FAMILIES: dict[type[nn.Module], Callable[[Any], list[Row]]] = {
    mlp.MLP: _mlp_rows,
    cnn.CNN: _cnn_rows,
    rnn.LSTMClassifier: _lstm_rows,
    rnn.CharLSTM: _char_lstm_rows,
    autoencoder.ConvAutoencoder: _autoencoder_rows,
    gan.Generator: _generator_rows,
    gan.Discriminator: _discriminator_rows,
    gan.DCGAN: _dcgan_rows,
    multitask.MultiTaskNet: _multitask_rows,
}


# --- conversion --------------------------------------------------------------------------


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach()
    if hasattr(value, "cpu"):
        value = value.cpu()
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value)


def _shape(value: Any) -> tuple[int, ...]:
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None else np.shape(value)


def from_torch(model_or_name: nn.Module | str, state_dict: Mapping[str, Any]) -> dict:
    """Converts a PyTorch state dict into the variables of a zoo model.

    Args:
      model_or_name: a registry name (its default configuration, e.g. "cnn") or a zoo
        module (for non-default configurations, e.g. `zoo.create("mlp", hidden=(64,))`).
      state_dict: torch key -> tensor (or any array-like), as `torch_module.state_dict()`
        returns it; key names as in tests/torch_ref.py.

    Returns:
      The variables dict (`{"params": ...}` and, for BatchNorm models, `"batch_stats"`)
      with float32 jax arrays (default device) as leaves, like `zoo.init` returns.

    Raises:
      ValueError: keys missing, unexpected, or of the wrong shape (all of them are listed,
        each with the torch key and the expected and found shapes).
      TypeError: the model has no PyTorch mapping.
    """
    model = create(model_or_name) if isinstance(model_or_name, str) else model_or_name
    label = model_or_name if isinstance(model_or_name, str) else type(model).__name__
    rows_of = _FAMILIES.get(type(model))
    if rows_of is None:
        raise TypeError(f"from_torch: no PyTorch mapping for {type(model).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"from_torch: state_dict must be a mapping of name -> tensor, got {type(state_dict).__name__}")
    expected = jax.eval_shape(lambda: init(model, jax.random.key(0)))

    variables: dict = {}
    used: set[str] = set()
    problems: list[str] = []
    for prefix, path, kind in rows_of(model):
        for name, leaf in kind.items():
            want = _subtree(expected.get(leaf.collection, {}), (*path, name))
            if want is None:
                continue  # e.g. no bias in a use_bias=False layer: a torch bias is then unexpected
            keys = [f"{prefix}.{s}" for s in leaf.suffixes]
            used.update(keys)
            where = f"{leaf.collection}/{'/'.join(path)}/{name}"
            value = _convert(state_dict, keys, leaf, tuple(want.shape), where, problems)
            if value is not None:
                node = variables.setdefault(leaf.collection, {})
                for part in path:
                    node = node.setdefault(part, {})
                node[name] = value
    ignored = {f"{prefix}.{s}" for prefix, _, kind in rows_of(model) if kind is BATCHNORM for s in IGNORED_SUFFIXES}
    extra = [key for key in state_dict if key not in used | ignored]
    problems += [f"unexpected key {key!r} (shape {_shape(state_dict[key])})" for key in extra]
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise ValueError(f"from_torch: the state dict does not match {label!r}:\n  " + "\n  ".join(shown))
    missing_leaves = _paths(expected) - _paths(variables)
    assert not missing_leaves, f"from_torch mapping for {label!r} does not cover {sorted(missing_leaves)}"
    return jax.tree.map(jnp.asarray, variables)


def _convert(state_dict, keys, leaf: _Leaf, want, where: str, problems: list[str]) -> np.ndarray | None:
    """The flax value of `leaf` from `keys`, or None after appending to `problems`."""
    want_torch = want if leaf.perm is None else tuple(want[leaf.perm.index(i)] for i in range(len(want)))
    ok = True
    for key in keys:
        if key not in state_dict:
            problems.append(f"missing key {key!r} (expected shape {want_torch}, for {where} {want})")
            ok = False
        elif _shape(state_dict[key]) != want_torch:
            found = _shape(state_dict[key])
            problems.append(f"{key!r}: expected shape {want_torch}, found {found} (for {where} {want})")
            ok = False
    if not ok:
        return None
    value = sum(_to_numpy(state_dict[key]).astype(np.float32) for key in keys)  # LSTM: bias_ih + bias_hh
    if leaf.perm is not None:
        value = value.transpose(leaf.perm)
    if leaf.fix is not None:
        value = leaf.fix(value)
    assert value.shape == want, (where, value.shape, want)
    return value


def _subtree(tree: Any, path: tuple[str, ...]) -> Any:
    """tree[path[0]][path[1]]..., or None where the path does not exist."""
    for part in path:
        if not isinstance(tree, Mapping) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _paths(tree: Mapping, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for key, value in tree.items():
        out |= _paths(value, prefix + (key,)) if isinstance(value, Mapping) else {prefix + (key,)}
    return out
