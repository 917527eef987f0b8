"""The model registry: one name -> one module class, its defaults, input spec and metadata.

Every model family file calls `register(...)` at import time; `zoo.create("cnn")`,
`zoo.init(...)`, `zoo.get_spec(...)` and `zoo.list_models()` read from here. A family also
declares, per module class, its PyTorch twin and layer mapping with `register_torch(...)`;
zoo.torch_port reads them. The registry holds no state beyond these two tables, and creating
a model is just `spec.module(**{**spec.defaults, **overrides})`. This module also holds the checks every
model shares: `check_input` (the data fed to a model) and `check_positive` /
`check_positive_tuple` / `check_rate` (a model's configuration, run when it is constructed).
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import numbers
import os
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

__all__ = [
    "InputSpec",
    "ModelSpec",
    "UnknownModelError",
    "register",
    "TorchSpec",
    "register_torch",
    "torch_spec",
    "torch_modules",
    "create",
    "get_spec",
    "list_models",
    "init",
    "param_count",
    "check_variables_size",
    "check_input",
    "check_positive",
    "check_positive_tuple",
    "check_rate",
    "DIGITS",
    "PARITY",
    "MNIST_IMAGES",
    "MNIST_DIGIT",
]

# Metadata shared by the MNIST models: class names of a 10-digit head and of a parity head
# (label 1 = odd), and how an image must look before it is fed to them. `"style": MNIST_DIGIT`
# marks a model whose input is a digit prepared as MNIST's were; zoo.preprocess centres for it.
DIGITS = tuple("0123456789")
PARITY = ("even", "odd")
MNIST_DIGIT = "mnist_digit"
MNIST_IMAGES = {
    "shape": (28, 28, 1),
    "layout": "NHWC",
    "dtype": "float32",
    "range": (0.0, 1.0),
    "polarity": "white digit on black (MNIST); invert dark-on-light images: x -> 1 - x",
    "style": MNIST_DIGIT,
    "centering": "as MNIST: ink cropped, longer side scaled to 20 px, centre of mass moved to (14, 14) "
    "(zoo.preprocess center=True; zoo predict --no-center turns it off)",
}


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What one example fed to a model looks like (the batch axis is not included).

    Attributes:
      shape: per-example shape; `None` marks a free axis (e.g. sequence length).
      dtype: "float32" for images/features in [0, 1], "int32" for tokens.
      description: a few words for error messages, e.g. "images NHWC in [0, 1]".
    """

    shape: tuple[int | None, ...]
    dtype: str
    description: str

    def example_shape(self, batch_size: int = 1, free_axis: int = 8) -> tuple[int, ...]:
        """A concrete batch shape, substituting `free_axis` for free (None) axes."""
        return (batch_size,) + tuple(free_axis if d is None else d for d in self.shape)

    def example(self, batch_size: int = 1, free_axis: int = 8) -> jax.Array:
        """An all-zeros batch matching this spec (used for shape inference and init)."""
        return jnp.zeros(self.example_shape(batch_size, free_axis), self.dtype)

    def __str__(self) -> str:
        dims = ", ".join("T" if d is None else str(d) for d in self.shape)
        return f"shape (batch, {dims}) {self.dtype} ({self.description})"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything the registry knows about one model name.

    Attributes:
      name: registry name, e.g. "cnn".
      module: the flax.linen.Module class.
      task: a label saying what kind of model this is ("classification", "gan", ...), to
        filter and group models by. It is free text to zoo; what a task means for training
        (its loss and metrics) is decided by the training engine, not here.
      defaults: field overrides that define this variant (applied before user overrides).
      input: the input spec of the default configuration.
      output: per-example output shape(s) of the default configuration (a pytree of
        tuples; None marks the free sequence axis).
      embedding: per-example shape of `model.apply(variables, x, method="embed")` for the
        default configuration (the representation before the head).
      num_params: pinned parameter count of the default configuration.
      description: one line; `follows`: the tutorial architecture and what was fixed.
      class_names: names of the output classes in logit order (a dict per head for
        multi-head models), or None where outputs are not classes.
      preprocessing: what the input must look like (range, layout, conventions), as data.
      pretrained: tags of shipped weights (filled in by zoo.pretrained).
    """

    name: str
    module: type[nn.Module]
    task: str
    defaults: Mapping[str, Any]
    input: InputSpec
    output: Any
    embedding: tuple[int | None, ...]
    num_params: int
    description: str
    follows: str
    class_names: tuple[str, ...] | Mapping[str, tuple[str, ...]] | None
    preprocessing: Mapping[str, Any]
    pretrained: tuple[str, ...] = ()


_REGISTRY: dict[str, ModelSpec] = {}


class UnknownModelError(KeyError):
    """Raised for a model name that is not registered."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _module_fields(module: type[nn.Module]) -> list[str]:
    return [f.name for f in dataclasses.fields(module) if f.init and f.name not in ("parent", "name")]


def _check_overrides(module: type[nn.Module], overrides: Mapping[str, Any], what: str) -> None:
    fields = _module_fields(module)
    for key in overrides:
        if key not in fields:
            raise TypeError(
                f"{what}: unknown option {key!r} for {module.__name__}.{_suggest(key, fields)} "
                f"Valid options: {', '.join(fields)}."
            )


def register(
    name: str,
    module: type[nn.Module],
    *,
    task: str,
    output: Any,
    embedding: tuple[int | None, ...],
    num_params: int,
    description: str,
    follows: str,
    class_names: tuple[str, ...] | Mapping[str, tuple[str, ...]] | None,
    preprocessing: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
) -> ModelSpec:
    """Registers `module` (with `defaults` applied) under `name` and returns its spec.

    The input spec is read from the configured module's `input_spec()` method, so the
    registry and direct use of the class can never disagree. `task` is a label (any
    non-empty string); see ModelSpec for the other fields.
    """
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    if not isinstance(task, str) or not task:
        raise ValueError(f"register({name!r}): task must be a non-empty string label, got {task!r}")
    defaults = dict(defaults or {})
    _check_overrides(module, defaults, f"register({name!r})")
    spec = ModelSpec(
        name=name,
        module=module,
        task=task,
        defaults=defaults,
        input=module(**defaults).input_spec(),
        output=output,
        embedding=tuple(embedding),
        num_params=num_params,
        description=description,
        follows=follows,
        class_names=class_names,
        preprocessing=dict(preprocessing),
    )
    _REGISTRY[name] = spec
    return spec


@dataclasses.dataclass(frozen=True)
class TorchSpec:
    """How one zoo module class maps to PyTorch (read by zoo.torch_port).

    Attributes:
      module: the flax.linen.Module class.
      layers: a configured `module` -> its layers (zoo.torch_map.Layer) in the order its twin
        registers them.
      twins: a function without arguments that imports torch and returns the family's twin
        classes (torch.nn.Module subclasses); the twin of `module` is the one of the same
        class name. It runs once, when a twin of the family is first built, so `import zoo`
        never imports torch.
    """

    module: type[nn.Module]
    layers: Callable[[Any], list]
    twins: Callable[[], Iterable[type]]

    def twin(self) -> type:
        """The PyTorch twin class of `module` (imports torch)."""
        if self.twins not in _TWIN_CLASSES:
            _TWIN_CLASSES[self.twins] = {cls.__name__: cls for cls in self.twins()}
        classes = _TWIN_CLASSES[self.twins]
        if self.module.__name__ not in classes:
            raise TypeError(f"register_torch({self.module.__name__}): its twins define no class {self.module.__name__!r}")
        return classes[self.module.__name__]


_TORCH: dict[type[nn.Module], TorchSpec] = {}
_TWIN_CLASSES: dict[Callable, dict[str, type]] = {}  # one set of twin classes per family, built once


def register_torch(
    module: type[nn.Module], *, layers: Callable[[Any], list], twins: Callable[[], Iterable[type]]
) -> TorchSpec:
    """Declares `module`'s PyTorch twin and layer mapping (see TorchSpec); returns the declaration.

    Every registered model whose class is declared here gets `zoo.from_torch`, `zoo.to_torch`
    and `zoo.torch_model`. The twin takes the module's fields as keyword arguments (except
    dtype and param_dtype).
    """
    if module in _TORCH:
        raise ValueError(f"{module.__name__} already has a PyTorch mapping")
    spec = TorchSpec(module, layers, twins)
    _TORCH[module] = spec
    return spec


def torch_spec(module: type[nn.Module]) -> TorchSpec | None:
    """The PyTorch declaration of exactly this module class (not of a subclass), or None."""
    return _TORCH.get(module)


def torch_modules() -> list[type[nn.Module]]:
    """The module classes with a PyTorch mapping, sorted by name."""
    return sorted(_TORCH, key=lambda cls: cls.__name__)


def list_models(pattern: str | None = None, *, pretrained: bool = False) -> list[str]:
    """Sorted names of the registered models.

    Args:
      pattern: optional shell-style pattern (fnmatch, case-sensitive), e.g. "cnn*" or "*lstm".
      pretrained: if True, only models with shipped pretrained weights.
    """
    names = sorted(_REGISTRY)
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    if pretrained:
        names = [n for n in names if _REGISTRY[n].pretrained]
    return names


def get_spec(name: str) -> ModelSpec:
    """The ModelSpec registered under `name`; raises UnknownModelError suggesting close names."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}.{_suggest(name, _REGISTRY)} Available: {', '.join(list_models())}."
        ) from None


def _set_pretrained(name: str, tags: tuple[str, ...]) -> None:
    _REGISTRY[name] = dataclasses.replace(get_spec(name), pretrained=tuple(sorted(tags)))


def create(name: str, **overrides: Any) -> nn.Module:
    """A new module for registry entry `name`; keyword overrides replace its defaults.

    Raises:
      UnknownModelError: `name` is not registered (the message suggests close names).
      TypeError: an override is not a field of the module (the message suggests close names).
      ValueError: an override is out of range (e.g. a size < 1; the module's own check).
    """
    spec = get_spec(name)
    _check_overrides(spec.module, overrides, f"create({name!r})")
    return spec.module(**{**spec.defaults, **overrides})


# Initialization runs once per run, so on CPU its program is compiled for compile time, not
# run time: LLVM without optimization compiles it several times faster (the threefry and
# initializer arithmetic of every parameter; docs/results.md has the figures). Values may differ from an optimized
# build in the last bit (no fused multiply-adds); a given jaxlib always gives the same ones.
INIT_CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def init_compiler_options() -> dict | None:
    """XLA options for compiling a model's initialization on the default backend (CPU: fast to compile)."""
    return dict(INIT_CPU_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else None


def init(
    model_or_name: nn.Module | str,
    rng: jax.Array,
    x: Any = None,
    *,
    batch_size: int = 1,
) -> dict:
    """Initializes a model's variables ({"params": ..., and e.g. "batch_stats"}).

    Args:
      model_or_name: a module (any zoo module, created directly or via `create`) or a
        registry name (created with its defaults).
      rng: a jax PRNG key; split into the "params", "dropout" and "noise" streams.
      x: optional example input; defaults to zeros of the model's input spec. It is
        validated against that spec, so bad input fails here with a clear ValueError.
      batch_size: batch size of the default example input.

    Returns:
      The variables dict, as `model.init` returns it.
    """
    model = create(model_or_name) if isinstance(model_or_name, str) else model_or_name
    if not isinstance(model, nn.Module) or not hasattr(model, "input_spec"):
        raise TypeError(f"expected a zoo model or a registry name, got {type(model_or_name).__name__}")
    spec = model.input_spec()
    if x is None:
        x = spec.example(batch_size)
    check_input(x, spec, type(model).__name__)
    params_rng, dropout_rng, noise_rng = jax.random.split(rng, 3)
    rngs = {"params": params_rng, "dropout": dropout_rng, "noise": noise_rng}
    traced = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((rngs, x)))
    options = None if traced else init_compiler_options()  # inside a trace the outer program's options apply
    program = jax.jit(lambda r, v: model.init(r, v), compiler_options=options)
    if not traced:  # shapes first (no memory): too large a model is refused, not an out-of-memory crash
        check_variables_size(jax.eval_shape(program, rngs, x), type(model).__name__)
    return program(rngs, x)


MAX_PARAM_BYTES_ENV = "ZOO_MAX_PARAM_BYTES"


def _memory_bytes() -> tuple[int, str] | None:
    """(bytes, where) of this process's first device's memory, or this machine's RAM for a CPU.

    A local device: in a multi-process run `jax.devices()[0]` belongs to process 0, and the
    others cannot read its memory statistics."""
    device = jax.local_devices()[0]
    stats = getattr(device, "memory_stats", lambda: None)() or {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"the {device.platform.upper()}'s memory"
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "this machine's memory"
    except (ValueError, OSError, AttributeError):
        return None


def max_variables_bytes() -> tuple[int | None, str]:
    """(the most bytes a model's variables may take, why): $ZOO_MAX_PARAM_BYTES, else half of the
    default device's memory (training also holds gradients and optimizer state)."""
    raw = os.environ.get(MAX_PARAM_BYTES_ENV, "")
    if raw.strip():
        try:
            value = int(float(raw))
        except ValueError:
            value = 0
        if value <= 0:
            raise ValueError(f"{MAX_PARAM_BYTES_ENV} must be a positive number of bytes, got {raw!r}")
        return value, MAX_PARAM_BYTES_ENV
    memory = _memory_bytes()
    if memory is None:
        return None, ""
    return memory[0] // 2, f"half of {memory[1]}; set {MAX_PARAM_BYTES_ENV} to change it"


def check_variables_size(shapes: Any, what: str) -> None:
    """Raises ValueError if the variables `shapes` (e.g. from `jax.eval_shape` of an init) take more
    bytes than `max_variables_bytes()`; `what` names the model in the message."""
    leaves = jax.tree.leaves(shapes)
    count = sum(int(np.prod(leaf.shape, dtype=np.float64)) for leaf in leaves)
    size = sum(int(np.prod(leaf.shape, dtype=np.float64)) * np.dtype(leaf.dtype).itemsize for leaf in leaves)
    limit, why = max_variables_bytes()
    if limit is not None and size > limit:
        dtypes = {np.dtype(leaf.dtype).name for leaf in leaves}
        kind = f" {dtypes.pop()}" if len(dtypes) == 1 else ""
        raise ValueError(f"{what} with these options has {count:,} parameters ({_bytes(size)}{kind}); "
                         f"the limit is {_bytes(limit)} ({why})")


def _bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def param_count(variables_or_params: Any) -> int:
    """Number of trainable parameters (the "params" collection if a variables dict is given)."""
    tree = variables_or_params
    if isinstance(tree, Mapping) and "params" in tree:
        tree = tree["params"]
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(tree)))


def check_input(x: Any, spec: InputSpec, owner: str) -> None:
    """Raises ValueError, stating `spec`, unless `x` has the spec's rank, sizes and dtype kind
    and no empty axis (batch size 0 included).

    Works on tracers too (only static shape and dtype are read).
    """
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    problem = None
    if shape is None or dtype is None:
        problem = f"got {type(x).__name__}, not an array"
    elif len(shape) >= 1 and shape[0] == 0:
        problem = f"got batch size 0 (shape {tuple(shape)}); the batch size must be >= 1"
    elif 0 in shape:
        problem = f"got an empty axis (shape {tuple(shape)})"
    elif len(shape) != len(spec.shape) + 1:
        problem = f"got rank {len(shape)} with shape {tuple(shape)}"
        if len(shape) == len(spec.shape):
            problem += " (missing the batch axis? use x[None])"
    elif any(want is not None and got != want for got, want in zip(shape[1:], spec.shape)):
        problem = f"got shape {tuple(shape)}"
        if len(spec.shape) == 3 and tuple(shape[1:]) == (spec.shape[2], spec.shape[0], spec.shape[1]):
            problem += " (channels first? the models take channels last: x.transpose(0, 2, 3, 1))"
    else:
        want_float = jnp.issubdtype(jnp.dtype(spec.dtype), jnp.floating)
        if want_float and not jnp.issubdtype(dtype, jnp.floating):
            problem = f"got dtype {dtype}"
            if jnp.issubdtype(dtype, jnp.integer):
                problem += " (convert integer images with x.astype(np.float32) / 255)"
        elif not want_float and not jnp.issubdtype(dtype, jnp.integer):
            problem = f"got dtype {dtype} (token ids must be integers)"
    if problem:
        raise ValueError(f"{owner} expects input of {spec}; {problem}.")


# --- configuration checks, called by each model's __post_init__ -------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive(owner: str, **fields: Any) -> None:
    """Raises ValueError naming the first field that is not an integer >= 1 (a size or count)."""
    for name, value in fields.items():
        if not (_is_int(value) and value >= 1):
            raise ValueError(f"{owner}: {name} must be an integer >= 1, got {value!r}")


def check_positive_tuple(owner: str, name: str, value: Any, *, length: int | None = None, min_length: int = 0) -> None:
    """Raises ValueError unless `value` is a tuple/list of integers >= 1 of the given length."""
    ok = isinstance(value, (tuple, list)) and all(_is_int(v) and v >= 1 for v in value)
    ok = ok and (len(value) == length if length is not None else len(value) >= min_length)
    if not ok:
        count = f"exactly {length}" if length is not None else f"at least {min_length}"
        raise ValueError(f"{owner}: {name} must be a tuple of {count} integers >= 1, got {value!r}")


def check_rate(owner: str, name: str, value: Any) -> None:
    """Raises ValueError unless `value` is a number in [0, 1) (a dropout rate)."""
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and 0.0 <= value < 1.0):
        raise ValueError(f"{owner}: {name} must be a number in [0, 1), got {value!r}")
