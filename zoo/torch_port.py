"""PyTorch <-> zoo: weights both ways, and the PyTorch twin of every registry model.

    import torch, zoo
    variables = zoo.from_torch("cnn", torch_net.state_dict())  # any layer names: conv1/fc1, main.0, ...
    net = zoo.torch_model("cnn")                                 # the PyTorch nn.Module twin
    net.load_state_dict(zoo.to_torch("cnn", variables))          # strict: same keys and shapes

`from_torch` and `to_torch` never import torch themselves (`to_torch` returns torch tensors
when torch is importable, numpy arrays otherwise); `torch_model` imports torch.

Each model family declares its twins and their layer mapping beside its modules
(`zoo.registry.register_torch`, in the words of zoo/torch_map.py); this module walks those
declarations, so a family with a declaration gets all three functions. A twin takes the zoo
module's fields as keyword arguments (all required: the defaults live in zoo's modules and
registry only) and is layer for layer the same as the Flax model, in PyTorch's conventions:
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

Matching by structure. `from_torch` groups the state dict's tensors into layers: the tensors
of one module path (weight, bias, running_mean, running_var, num_batches_tracked), and for an
nn.LSTM the `*_l{k}` tensors of each stacked layer k. It keeps them in state-dict order (the
order the torch module registers its layers in) and pairs each with the zoo layer of the same
kind and shapes. Where several zoo layers have the same kind and shapes (a tie), a torch layer
whose module path is (or ends with) the twin's name for one of them takes that one; otherwise
order decides: the torch layer takes the tied zoo layer right after its predecessor's partner
(the first zoo layer, for the first torch layer). Names never pair layers of different shapes.
The result is strict: a tensor left over, a layer missing, a shape that differs or a tie that
neither names nor order settle raises ONE ValueError listing each torch key involved with its
expected and found shape.

Layouts: Linear (out, in) -> kernel (in, out); Conv2d (out, in, kh, kw) -> (kh, kw, in, out);
ConvTranspose2d (in, out, kh, kw) -> (kh, kw, out, in) (zoo.layers.ConvTranspose's layout, no
flip); LSTM weight_ih/hh_l{k} (4H, F) -> wi/wh (F, 4H) and b = bias_ih + bias_hh (gate order i,
f, g, o in both); Embedding weight -> embedding; BatchNorm weight/bias -> scale/bias,
running_mean/var -> batch_stats mean/var (num_batches_tracked: read if present, never used).
A Linear that reads a flattened image takes its input rows from PyTorch's (C, H, W) order to
zoo's (H, W, C) order (a no-op for one channel, e.g. MNIST MLPs). `to_torch` inverts each of
these, writing the LSTM sum as bias_ih = b, bias_hh = -0.0 and num_batches_tracked = 0.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from zoo.registry import create, init, torch_modules, torch_spec
from zoo.torch_map import Layer, Tensor
from zoo.trees import check_finite

__all__ = ["from_torch", "to_torch", "torch_model"]


# --- the zoo side: layers with the shapes the configured model expects -------------------------


@dataclasses.dataclass(frozen=True)
class _Slot:
    """A zoo layer with its expected leaves: (tensor, flax ShapeDtypeStruct) pairs."""

    layer: Layer
    tensors: tuple[tuple[Tensor, Any], ...]

    def key(self, suffix: str) -> str:
        return _key(self.layer.torch_name, suffix, self.layer.tag)

    def where(self, t: Tensor) -> str:
        return f"{t.collection}/{'/'.join(self.layer.path)}/{t.leaf}"

    def torch_shapes(self) -> dict[str, tuple[int, ...]]:
        """torch suffix -> the shape torch stores it in."""
        return {s: _torch_shape(t, want.shape) for t, want in self.tensors for s in t.suffixes}


def _key(name: str, suffix: str, tag: str) -> str:
    return f"{name}.{suffix}{tag}" if name else f"{suffix}{tag}"


def _torch_shape(t: Tensor, flax_shape) -> tuple[int, ...]:
    flax_shape = tuple(flax_shape)
    if t.perm is None:
        return flax_shape
    return tuple(flax_shape[t.perm.index(i)] for i in range(len(flax_shape)))


def _resolve(model_or_name: nn.Module | str, what: str) -> tuple[str, list[_Slot], Any]:
    """(label for messages, the model's slots in twin order, its variables as ShapeDtypeStructs)."""
    model = create(model_or_name) if isinstance(model_or_name, str) else model_or_name
    label = model_or_name if isinstance(model_or_name, str) else type(model).__name__
    declared = torch_spec(type(model))
    if declared is None:
        raise TypeError(
            f"{what}: no PyTorch mapping for {type(model).__name__}; expected one of "
            f"{', '.join(c.__name__ for c in torch_modules())} or a registry name"
        )
    expected = jax.eval_shape(lambda: init(model, jax.random.key(0)))
    slots, covered = [], set()
    for layer in declared.layers(model):
        tensors = []
        for t in layer.kind.tensors:
            want = _subtree(expected.get(t.collection, {}), (*layer.path, t.leaf))
            if want is not None:  # absent e.g. for the bias of a use_bias=False layer
                tensors.append((t, want))
                covered.add((t.collection, *layer.path, t.leaf))
        slots.append(_Slot(layer, tuple(tensors)))
    uncovered = _paths(expected) - covered
    if uncovered or not all(s.tensors for s in slots):
        raise RuntimeError(
            f"the PyTorch layer mapping of {type(model).__name__} (register_torch in its family file) "
            f"is out of date: {sorted(uncovered)}"
        )
    return label, slots, expected


# --- the torch side: the state dict's tensors grouped into layers ------------------------------

_LSTM_SUFFIX = re.compile(r"(weight|bias)_(ih|hh)(_l\d+)")


@dataclasses.dataclass
class _Group:
    """The tensors of one torch layer: suffix -> state-dict key / shape."""

    name: str
    tag: str
    keys: dict[str, str] = dataclasses.field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)

    def key(self, suffix: str) -> str:
        return self.keys.get(suffix) or _key(self.name, suffix, self.tag)


def _groups(state_dict: Mapping[str, Any]) -> list[_Group]:
    groups: dict[tuple[str, str], _Group] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise TypeError(f"from_torch: state dict keys must be str, got {key!r} ({type(key).__name__})")
        name, _, suffix = key.rpartition(".")
        tag = ""
        if m := _LSTM_SUFFIX.fullmatch(suffix):  # nn.LSTM: one group per stacked layer
            suffix, tag = f"{m[1]}_{m[2]}", m[3]
        group = groups.setdefault((name, tag), _Group(name, tag))
        group.keys[suffix] = key
        group.shapes[suffix] = _shape(value)
    return list(groups.values())


def _fits(group: _Group, slot: _Slot) -> bool:
    shapes = {s: shape for s, shape in group.shapes.items() if s not in slot.layer.kind.buffers}
    return shapes == slot.torch_shapes()


def _named(group: _Group, slot: _Slot) -> bool:
    """The torch module path is the twin's name for `slot`, or ends with it."""
    name = slot.layer.torch_name
    return group.tag == slot.layer.tag and (group.name == name or group.name.endswith("." + name))


def _pair(groups: list[_Group], slots: list[_Slot], fits: dict[int, list[int]]) -> tuple[dict[int, int], set[int]]:
    """Pairs torch groups with slots: (group index -> slot index, indices of tied groups left open).

    `fits[i]`: the slots group i fits. Structure first (the only group and slot of their kind
    and shapes), then, for ties, names, then order (the slot right after the partner of the
    previous torch layer that fits any).
    """
    fitting_groups = [i for i in fits if fits[i]]
    fitting_slots = sorted({j for js in fits.values() for j in js})
    pairs: dict[int, int] = {}

    def open_slots(i):
        return [j for j in fits[i] if j not in pairs.values()]

    def rivals(j):
        return [i for i in fitting_groups if i not in pairs and j in fits[i]]

    def by_structure_or_name():
        found = {}
        for i in fitting_groups:
            if i in pairs:
                continue
            cands = open_slots(i)
            if len(cands) == 1 and rivals(cands[0]) == [i]:
                found[i] = cands[0]
                continue
            named = [j for j in cands if _named(groups[i], slots[j])]
            if len(named) == 1 and [k for k in rivals(named[0]) if _named(groups[k], slots[named[0]])] == [i]:
                found[i] = named[0]
        return found

    def by_order():
        found = {}
        for pos, i in enumerate(fitting_groups):
            if i in pairs:
                continue
            if pos == 0:
                after = fitting_slots[0]
            elif fitting_groups[pos - 1] in pairs:
                later = [j for j in fitting_slots if j > pairs[fitting_groups[pos - 1]]]
                after = later[0] if later else None
            else:
                continue
            if after in open_slots(i) and after not in found.values():
                found[i] = after
        return found

    while True:
        found = by_structure_or_name() or by_order()
        if not found:
            break
        pairs.update(found)
    tied = {i for i in fitting_groups if i not in pairs and open_slots(i)}
    return pairs, tied


# --- from_torch ----------------------------------------------------------------------------------


def from_torch(model_or_name: nn.Module | str, state_dict: Mapping[str, Any]) -> dict:
    """Converts a PyTorch state dict of the same architecture into a zoo model's variables.

    Layers are matched by kind and shape in state-dict order, whatever their names (see the
    module docstring); names only settle ties between layers of the same kind and shapes.

    Args:
      model_or_name: a registry name (its default configuration, e.g. "cnn") or a zoo module
        (any configuration, e.g. `zoo.create("mlp", hidden=(64,))`).
      state_dict: key -> tensor, as `torch_module.state_dict()` returns it (torch tensors or
        anything `np.asarray` accepts).

    Returns:
      The variables dict (`{"params": ...}` and, for BatchNorm models, `"batch_stats"`) with
      jax arrays of the model's parameter dtype (float32) as leaves, like `zoo.init`.

    Raises:
      ValueError: a tensor left over, a layer missing, a shape that differs or an unsettled
        tie; one error lists every torch key involved with its expected and found shape.
      TypeError: the model has no PyTorch mapping, or `state_dict` is not a mapping.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"from_torch: state_dict must be a mapping of name -> tensor, got {type(state_dict).__name__}")
    label, slots, _ = _resolve(model_or_name, "from_torch")
    groups = _groups(state_dict)
    fits = {i: [j for j, slot in enumerate(slots) if _fits(g, slot)] for i, g in enumerate(groups)}
    pairs, tied = _pair(groups, slots, fits)
    problems = _mismatches(groups, slots, fits, pairs, tied)
    if problems:
        raise ValueError(f"from_torch: the state dict does not match {label!r}:\n  " + "\n  ".join(problems))
    variables: dict = {}
    for i, j in pairs.items():
        group, slot = groups[i], slots[j]
        for t, want in slot.tensors:
            arrays = [_to_numpy(state_dict[group.keys[s]]) for s in t.suffixes]
            value = arrays[0]
            for a in arrays[1:]:  # LSTM: bias_ih + bias_hh
                value = value + a
            if t.perm is not None:
                value = value.transpose(t.perm)
            if slot.layer.image is not None and t.leaf == "kernel":
                value = _chw_rows_to_hwc(value, slot.layer.image)
            node = variables.setdefault(t.collection, {})
            for part in slot.layer.path:
                node = node.setdefault(part, {})
            node[t.leaf] = jnp.asarray(value, want.dtype)
    check_finite(variables, f"from_torch ({label})")  # NaN weights would predict class 0 for everything
    return variables


def _mismatches(
    groups: list[_Group], slots: list[_Slot], fits: dict[int, list[int]], pairs: dict[int, int], tied: set[int]
) -> list[str]:
    """One line per torch key that does not fit: unsettled ties, then differences in order."""
    problems = []
    tied_slots = {j for i in tied for j in fits[i] if j not in pairs.values()}
    for i in sorted(tied):
        cands = " or ".join(
            f"{'/'.join(slots[j].layer.path)} ({slots[j].layer.torch_name!r} in the twin)" for j in fits[i] if j in tied_slots
        )
        problems += [
            f"ambiguous {key!r} (shape {groups[i].shapes[s]}): fits {cands} equally; "
            "neither its name nor its order settles which"
            for s, key in groups[i].keys.items()
        ]
    # Left over on both sides: pair by the same family (Linear with Linear, ...) in order, to report
    # which keys differ; what stays unpaired is unexpected (torch) or missing (zoo).
    free_groups = [i for i in range(len(groups)) if i not in pairs and i not in tied]
    free_slots = [j for j in range(len(slots)) if j not in pairs.values() and j not in tied_slots]
    report: list[tuple[int, str]] = []  # (sort position, line)
    for j in free_slots:
        slot = slots[j]
        same = [i for i in free_groups if _family(groups[i].shapes) == _family(slot.torch_shapes())]
        if same:
            free_groups.remove(same[0])
            report += [(same[0], line) for line in _differences(groups[same[0]], slot)]
        else:
            report += [
                (len(groups), f"missing key {slot.key(s)!r} (expected shape {_torch_shape(t, want.shape)}, for "
                 f"{slot.where(t)} {tuple(want.shape)}; no torch layer of this kind is left; named as in zoo.torch_model)")
                for t, want in slot.tensors
                for s in t.suffixes
            ]
    for i in free_groups:
        report += [(i, f"unexpected key {key!r} (shape {groups[i].shapes[s]})") for s, key in groups[i].keys.items()]
    return problems + [line for _, line in sorted(report, key=lambda r: r[0])]


def _differences(group: _Group, slot: _Slot) -> list[str]:
    """Lines for the keys of a torch layer paired with `slot` by family that do not fit it."""
    lines = []
    for t, want in slot.tensors:
        for s in t.suffixes:
            expected = _torch_shape(t, want.shape)
            for_ = f"for {slot.where(t)} {tuple(want.shape)}"
            if s not in group.shapes:
                lines.append(f"missing key {group.key(s)!r} (expected shape {expected}, {for_})")
            elif group.shapes[s] != expected:
                lines.append(f"{group.key(s)!r}: expected shape {expected}, found {group.shapes[s]} ({for_})")
    known = {s for t, _ in slot.tensors for s in t.suffixes} | set(slot.layer.kind.buffers)
    lines += [f"unexpected key {key!r} (shape {group.shapes[s]})" for s, key in group.keys.items() if s not in known]
    return lines


def _family(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """A coarse layer type, to pair leftovers for the report."""
    if {"weight_ih", "weight_hh", "bias_ih", "bias_hh"} & set(shapes):
        return "lstm"
    if {"running_mean", "running_var"} & set(shapes):
        return "batchnorm"
    if "weight" in shapes:
        return f"weight rank {len(shapes['weight'])}"
    return "other"


# --- to_torch --------------------------------------------------------------------------------------


def to_torch(model_or_name: nn.Module | str, variables: Mapping[str, Any]) -> dict[str, Any]:
    """Converts a zoo model's variables into the state dict of its PyTorch twin.

    `zoo.torch_model(name).load_state_dict(zoo.to_torch(name, variables))` accepts it with
    strict=True, and `from_torch(name, to_torch(name, variables))` gives `variables` back bit
    for bit.

    Args:
      model_or_name: a registry name (default configuration) or a zoo module.
      variables: the model's variables (`{"params": ...}`, plus "batch_stats" for BatchNorm
        models), e.g. from `zoo.init` or `zoo.load`.

    Returns:
      key -> float32 torch tensor (int64 for num_batches_tracked) in the twin's order, or numpy
      arrays when torch cannot be imported.

    Raises:
      ValueError: `variables` is not of that model (each path is listed with the expected and
        found shape).
      TypeError: the model has no PyTorch mapping.
    """
    label, slots, expected = _resolve(model_or_name, "to_torch")
    _check_variables(variables, expected, label)
    out: dict[str, np.ndarray] = {}
    for slot in slots:
        for t, _ in slot.tensors:
            value = np.array(_subtree(variables[t.collection], (*slot.layer.path, t.leaf)), np.float32)
            if slot.layer.image is not None and t.leaf == "kernel":
                value = _hwc_rows_to_chw(value, slot.layer.image)
            if t.perm is not None:
                value = value.transpose(np.argsort(t.perm))
            out[slot.key(t.suffixes[0])] = np.ascontiguousarray(value)
            for s in t.suffixes[1:]:  # bias_hh: -0.0 keeps bias_ih + bias_hh == b bit for bit
                out[slot.key(s)] = np.full_like(value, -0.0)
        for b in slot.layer.kind.buffers:
            out[slot.key(b)] = np.zeros((), np.int64)
    try:
        import torch
    except ImportError:
        return out
    return {key: torch.from_numpy(value) for key, value in out.items()}


def _check_variables(variables: Any, expected: Mapping, label: str) -> None:
    if not isinstance(variables, Mapping):
        raise TypeError(f"to_torch: variables must be a mapping like {{'params': ...}}, got {type(variables).__name__}")
    want = {path: tuple(leaf.shape) for path, leaf in _leaves(expected).items()}
    got = {path: np.shape(leaf) for path, leaf in _leaves(variables).items()}
    problems = [f"missing {'/'.join(p)} (expected shape {want[p]})" for p in want if p not in got]
    problems += [f"unexpected {'/'.join(p)} (shape {got[p]})" for p in got if p not in want]
    problems += [
        f"{'/'.join(p)}: expected shape {want[p]}, found {got[p]}" for p in want if p in got and got[p] != want[p]
    ]
    if problems:
        raise ValueError(f"to_torch: the variables do not match {label!r}:\n  " + "\n  ".join(problems))


# --- torch_model -----------------------------------------------------------------------------------


# Numerics, not architecture: the twins compute in float32 whatever zoo computes in.
IGNORED_FIELDS = frozenset({"dtype", "param_dtype"})


def torch_model(model_or_name: nn.Module | str, **overrides: Any):
    """The PyTorch nn.Module twin of a zoo model (imports torch).

    The twin has the same architecture in PyTorch's conventions (NCHW images, the tutorials'
    layer types) and the state-dict keys `to_torch` writes. Images go in as (B, C, H, W);
    `dcgan` keeps the tutorial's [-1, 1] image range (see the module docstring).

    Args:
      model_or_name: a registry name or a zoo module.
      **overrides: with a name, the same options as `zoo.create` (hidden sizes, features,
        num_classes, in_shape, num_layers, ...).

    Returns:
      A freshly initialized torch.nn.Module (PyTorch's default initialization).

    Raises:
      TypeError: the model has no PyTorch twin.
      ValueError: the module sets a field the twin does not take to a non-default value.
    """
    if isinstance(model_or_name, str):
        model = create(model_or_name, **overrides)
    elif overrides:
        raise TypeError(f"torch_model: overrides {sorted(overrides)} need a registry name, got a module")
    else:
        model = model_or_name
    declared = torch_spec(type(model))
    if declared is None:
        raise TypeError(
            f"torch_model: no PyTorch twin for {type(model).__name__}; expected one of "
            f"{', '.join(c.__name__ for c in torch_modules())}"
        )
    cls = declared.twin()  # imports torch
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


# --- helpers ---------------------------------------------------------------------------------------


def _chw_rows_to_hwc(kernel: np.ndarray, image: tuple[int, int, int]) -> np.ndarray:
    h, w, c = image
    return kernel.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(h * w * c, -1)  # (H*W*C, out)


def _hwc_rows_to_chw(kernel: np.ndarray, image: tuple[int, int, int]) -> np.ndarray:
    h, w, c = image
    return kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)  # (C*H*W, out)


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor (without importing torch); .float() also reads bf16
        return value.detach().cpu().float().numpy()
    return np.asarray(value, np.float32)


def _shape(value: Any) -> tuple[int, ...]:
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None else np.shape(value)


def _subtree(tree: Any, path: tuple[str, ...]) -> Any:
    """tree[path[0]][path[1]]..., or None where the path does not exist."""
    for part in path:
        if not isinstance(tree, Mapping) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _leaves(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_leaves(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def _paths(tree: Mapping) -> set[tuple[str, ...]]:
    return set(_leaves(tree))
