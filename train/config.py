"""Training configuration: one flat dataclass, defaults per model from train/configs/<model>.json.

Precedence: dataclass defaults < the model's recipe JSON (`--recipe fast`: train/configs/fast/<model>.json
over it) < a --config JSON file < explicit overrides (CLI flags); `model_overrides` are merged key by
key across those layers.
Each field carries its help text and its check in `dataclasses.field(metadata=...)`: the CLI
builds its flags and help from them, and `Config.validate` (called by `resolve`) checks them,
so a resolved config is always valid. The resolved config is saved in the workdir
(config.json) and inside every checkpoint.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB; more is a mistake (a log, a link to /dev/zero)
INITS = ("default", "glorot")
# Shipped recipes: "default" (train/configs/MODEL.json, the best result in a reasonable time) and
# "fast" (train/configs/fast/MODEL.json over it: the tutorial's quality in the least time, raced
# against PyTorch by bench/time_to_quality.py).
RECIPES = ("default", "fast")


# ---------------------------------------------------------------- what a valid value is


@dataclasses.dataclass(frozen=True)
class Integer:
    """A Python int (not a bool) in [lo, hi]."""

    lo: int
    hi: int | None = None

    def ok(self, value: Any) -> bool:
        return (isinstance(value, int) and not isinstance(value, bool) and value >= self.lo
                and (self.hi is None or value <= self.hi))

    def describe(self) -> str:
        return f"an integer >= {self.lo}" if self.hi is None else f"an integer in [{self.lo}, {self.hi}]"


@dataclasses.dataclass(frozen=True)
class Number:
    """A finite int or float, > lo (or >= lo when `lo_inclusive`), and < hi if given."""

    lo: float
    lo_inclusive: bool = True
    hi: float | None = None

    def ok(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        above = value >= self.lo if self.lo_inclusive else value > self.lo
        return above and (self.hi is None or value < self.hi)

    def describe(self) -> str:
        if self.hi is not None:
            return f"a number in {'[' if self.lo_inclusive else '('}{self.lo:g}, {self.hi:g})"
        return f"a finite number {'>=' if self.lo_inclusive else '>'} {self.lo:g}"


@dataclasses.dataclass(frozen=True)
class OneOf:
    """One of the names `names()` returns (a function, so the owning module is imported late)."""

    names: Callable[[], Sequence[str]]

    def ok(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.names()

    def describe(self) -> str:
        return "one of " + ", ".join(self.names())

    def hint(self, value: Any) -> str:
        close = difflib.get_close_matches(str(value), self.names(), n=1)
        return f" (did you mean {close[0]}?)" if close else ""


@dataclasses.dataclass(frozen=True)
class OfType:
    """An instance of `kind` (or None when `optional`)."""

    kind: type
    what: str
    optional: bool = False

    def ok(self, value: Any) -> bool:
        return (value is None and self.optional) or (isinstance(value, self.kind) and not (
            self.kind is int and isinstance(value, bool)))

    def describe(self) -> str:
        return self.what


@dataclasses.dataclass(frozen=True)
class ClassNames:
    """A list of distinct, non-empty strings (or empty: the model's own names)."""

    def ok(self, value: Any) -> bool:
        return (isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)
                and len(set(value)) == len(value))

    def describe(self) -> str:
        return "distinct non-empty class names"


def _optimizers():
    from train.state import OPTIMIZERS

    return OPTIMIZERS


def _schedules():
    from train.state import SCHEDULES

    return SCHEDULES


def _strategies():
    from train.parallel import STRATEGIES

    return STRATEGIES


def _datasets():
    from train.data import SPLITS

    return tuple(sorted(SPLITS))


def option(default: Any, help: str, check, *, aliases: tuple[str, ...] = ()) -> Any:
    """A Config field with its help text, its check and other names users may try for it.

    `default` is the value, or a zero-argument factory (e.g. `dict`) for a mutable default.
    """
    kind = {"default_factory": default} if callable(default) else {"default": default}
    return dataclasses.field(**kind, metadata={"help": help, "check": check, "aliases": aliases})


# ---------------------------------------------------------------- the config

@dataclasses.dataclass(frozen=True)
class Classes:
    """A list of distinct int class labels in [0, 2**31), at least two (or empty: all classes).

    The bound is the int32 label range: a larger label cannot be in any dataset, and would
    otherwise size a label table of that many entries.
    """

    def ok(self, value: Any) -> bool:
        return isinstance(value, list) and (not value or (
            len(value) >= 2 and len(set(value)) == len(value)
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31 for v in value)))

    def describe(self) -> str:
        return "at least two distinct class labels in [0, 2**31) (e.g. 0,1,2), or empty for all"


DTYPES = ("float32", "bfloat16", "float16")
POSITIVE, COUNT = Integer(1), Integer(0)  # >= 1; >= 0 where 0 means off / all / auto
TFDS_VAL_SIZE = 5000  # val_size none on a TFDS dataset without a validation split (MNIST: 55,000 / 5,000)


@dataclasses.dataclass(frozen=True)
class OptionalCount(Integer):
    """An integer >= 0, or None (the data's default)."""

    lo: int = 0

    def ok(self, value: Any) -> bool:
        return value is None or super().ok(value)

    def describe(self) -> str:
        return "an integer >= 0, or none"


def tfds_val_size(cfg: Config | dict) -> int | None:
    """The validation examples a run holds out of a TFDS train split: its `val_size`, where none
    means `TFDS_VAL_SIZE` (runs recorded before none existed say 5000: the same run)."""
    get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
    value = get("val_size")
    return TFDS_VAL_SIZE if value is None and not get("data") else value


@dataclasses.dataclass
class Config:
    """Everything that defines a training run (all JSON-able)."""

    model: str = dataclasses.field(metadata={"help": "registered model name (zoo list)", "check": OfType(str, "a model name")})
    recipe: str = option("default", "which shipped recipe gives the defaults: default (train/configs/MODEL.json) or "
                         "fast (train/configs/fast/MODEL.json over it: the tutorial's quality in the least time)",
                         OneOf(lambda: RECIPES))
    dataset: str = option("mnist", "dataset to train on", OneOf(_datasets))
    epochs: int = option(1, "epochs to train", POSITIVE, aliases=("num_epochs", "n_epochs"))
    batch_size: int = option(64, "global batch size, split over the devices", POSITIVE, aliases=("bs",))
    optimizer: str = option("adam", "optimizer", OneOf(_optimizers))
    lr: float = option(1e-3, "peak learning rate", Number(0, lo_inclusive=False), aliases=("learning_rate",))
    momentum: float = option(0.9, "momentum (--optimizer momentum)", Number(0, hi=1))
    b1: float = option(0.9, "Adam's first-moment decay (adam, adamw)", Number(0, hi=1), aliases=("beta1",))
    weight_decay: float = option(0.0, "weight decay (decoupled for adamw, L2 for the others); 0 = off", Number(0),
                                 aliases=("wd",))
    clip_norm: float = option(0.0, "clip gradients to this global norm; 0 = off", Number(0),
                              aliases=("grad_clip", "max_grad_norm"))
    schedule: str = option("constant", "learning-rate schedule", OneOf(_schedules))
    warmup_steps: int = option(0, "linear warmup steps (cosine schedule)", COUNT, aliases=("warmup",))
    init: str = option("default", "parameter init: the model's own, or glorot (Xavier uniform, as the tutorials' "
                       "nn.init.xavier_uniform_)", OneOf(lambda: INITS))
    model_overrides: dict = option(dict, "model fields overriding the registered defaults (CLI: --set FIELD=JSON)",
                                   OfType(dict, "a JSON object of model fields"))
    augment_flip: bool = option(False, "random horizontal flips (not for digits)", OfType(bool, "true or false"))
    augment_rotate: float = option(0.0, "largest random rotation in degrees; 0 = off", Number(0, hi=360))
    augment_shift: int = option(0, "largest random shift in pixels per axis; 0 = off", COUNT)
    val_size: int | None = option(None, "examples held out for validation where the data has no validation split; "
                                  "none = the last 5000 of a TFDS train split, a tenth of your own --data "
                                  "(a fixed shuffle)", OptionalCount())
    seq_len: int = option(100, "language models: characters per training window", POSITIVE)
    seed: int = option(0, "seed of init, data order and step randomness", Integer(0, 2**32 - 1))
    strategy: str = option("jit", "data parallelism: jit (sharded, multi-host) or pmap (one host)", OneOf(_strategies))
    num_devices: int = option(0, "devices to use; 0 = all devices (all hosts)", COUNT)
    steps_per_dispatch: int = option(0, "steps per compiled dispatch (lax.scan); 0 = auto: 1 on CPU, an epoch on "
                                     "GPU/TPU", COUNT)
    log_every: int = option(100, "steps between host syncs (progress bar, non-finite check)", POSITIVE)
    eval_batch_size: int = option(1000, "batch size of validation and test evaluation", POSITIVE)
    early_stop_patience: int = option(0, "stop after this many epochs without improvement of the validation "
                                      "metric; 0 = off", COUNT, aliases=("patience",))
    checkpoint_every: int = option(1, "epochs between checkpoints (the last epoch is always saved)", POSITIVE)
    checkpoint_steps: int = option(0, "also save every N steps (at dispatch boundaries); 0 = off", COUNT)
    keep_checkpoints: int = option(3, "checkpoints kept (plus the best)", POSITIVE, aliases=("max_to_keep",))
    max_steps: int = option(0, "stop after this many steps in total; 0 = epochs * steps per epoch", COUNT,
                            aliases=("steps", "num_steps"))
    train_limit: int = option(0, "use only the first N training examples; 0 = all (for quick tests)", COUNT)
    sample_every: int = option(1, "epochs between PNG grids / text samples; 0 = off", COUNT)
    init_from: str = option("", "fine-tune from a pretrained tag (cnn.mnist) or an export dir", OfType(str, "a string"))
    data_dir: str | None = option(None, "TFDS data dir; none = $TFDS_DATA_DIR or ~/tensorflow_datasets",
                                  OfType(str, "a directory", optional=True))
    data: str | None = option(None, "your own data instead of --dataset: a folder of class subfolders of images "
                              "(optionally split as train/, val/, test/), an .npz of x/y (or image/label) arrays, "
                              "or a text file / folder of .txt files for language models (docs/data.md)",
                              OfType(str, "a path", optional=True))
    data_workers: int = option(-1, "processes decoding a streamed image folder (--data); 0 = the main process, "
                               "-1 = auto (one per spare CPU core, at most 8)", Integer(-1, 256))
    class_names: list = option(list, "names of the classes in label order (filled from an image folder's "
                               "subfolders; recorded with the run and its exports); empty = the model's own",
                               ClassNames())
    classes: list = option(list, "train on these class labels only, relabelled 0..k-1 (num_classes becomes k); "
                           "CLI: --classes 0,1,2; empty = all", Classes())
    train_only: str = option("", "train only the parameters whose path matches these comma-separated patterns "
                             "(e.g. head, or 'conv_1/*,head'); the rest stay frozen; empty = all", OfType(str, "patterns"),
                             aliases=("freeze", "trainable"))
    dtype: str = option("float32", "compute dtype of the model (parameters stay float32, the loss is float32)",
                        OneOf(lambda: DTYPES), aliases=("precision",))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self, *, registered: bool = True) -> Config:
        """Checks every field and (`registered`) that the registry model builds with
        `model_overrides`; returns self.

        Raises:
          ValueError: "--flag VALUE: must be ..." for the first invalid field (the CLI's
            spelling), or the model registry's error for an unknown model or override.
        """
        for f in dataclasses.fields(self):
            if error := field_error(f.name, getattr(self, f.name)):
                raise ValueError(f"{flag(f.name)} {error}")
        if self.warmup_steps and self.schedule != "cosine":
            raise ValueError(f"--warmup-steps {self.warmup_steps}: only --schedule cosine has a linear warmup "
                             f"(got --schedule {self.schedule}; onecycle ramps up by itself)")
        if registered:
            _check_classes_apply(self)
            _check_class_names(self, _create_model(self))
        return self


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
ALIASES = {alias: name for name, f in FIELDS.items() for alias in f.metadata.get("aliases", ())}


# True inside train.fit: errors name its keyword arguments (classes), not the CLI's flags (--classes)
_PYTHON_NAMES = contextvars.ContextVar("python_names", default=False)


@contextlib.contextmanager
def python_names():
    """Within this block, `flag` and `override_hint` spell fields as train.fit's arguments."""
    token = _PYTHON_NAMES.set(True)
    try:
        yield
    finally:
        _PYTHON_NAMES.reset(token)


def flag(name: str) -> str:
    """The CLI flag of field `name` (model_overrides is set with --set); in `python_names`, the name."""
    if _PYTHON_NAMES.get():
        return name
    return "--set" if name == "model_overrides" else "--" + name.replace("_", "-")


def override_hint(field: str, value: Any) -> str:
    """How a user sets model field `field` to `value`: --set FIELD=JSON, or model_overrides= in Python."""
    if _PYTHON_NAMES.get():
        return f"model_overrides={{{field!r}: {value!r}}}"
    return f"--set {field}={json.dumps(value)}"


def field_error(name: str, value: Any) -> str | None:
    """None if `value` is valid for field `name`, else "VALUE: must be ..."."""
    check = FIELDS[name].metadata["check"]
    if check.ok(value):
        return None
    hint = check.hint(value) if isinstance(check, OneOf) else ""
    return f"{value!r}: must be {check.describe()}{hint}"


def _check_registered(model: str) -> None:
    import zoo

    try:
        zoo.get_spec(model)
    except KeyError as e:  # the registry's message names the close and the available models
        raise ValueError(e.args[0]) from e


def _check_classes_apply(cfg: Config) -> None:
    """Raises ValueError if `cfg.classes` is set for a model without a single num_classes head."""
    import zoo

    _check_registered(cfg.model)
    spec = zoo.get_spec(cfg.model)
    if cfg.classes and "num_classes" not in {f.name for f in dataclasses.fields(spec.module)}:
        raise ValueError(f"{flag('classes')} {','.join(map(str, cfg.classes))}: {cfg.model} ({spec.task}) has no "
                         f"class labels to choose from; classes apply to single-label classifiers (e.g. cnn, mlp)")


def _check_class_names(cfg: Config, model) -> None:
    """Raises ValueError unless `cfg.class_names` (if given) name each output class of `model` once."""
    if not cfg.class_names:
        return
    n = getattr(model, "num_classes", None)
    shown = f"{flag('class_names')} {','.join(cfg.class_names)}"
    if n is None:
        raise ValueError(f"{shown}: {cfg.model} has no num_classes head to name; class names apply to "
                         "single-head classifiers (e.g. cnn, mlp)")
    expected = 2 if n == 1 else n  # one logit: a binary classifier's two classes
    if len(cfg.class_names) != expected:
        raise ValueError(f"{shown}: {len(cfg.class_names)} names for {expected} classes ({cfg.model} with "
                         f"num_classes={n}); give one name per class, in label order")


def names_of_classes(names, classes) -> list[str]:
    """The names of the labels `classes` (a --classes subset, in its order) among `names`; a label
    past the names is named by its number."""
    return [names[c] if c < len(names) else str(c) for c in classes]


def class_names_of(cfg: Config) -> list[str] | None:
    """The names of a run's classes in label order: its `class_names`, else the model's registered
    names (of `classes`, in their order, where it trained on a subset); None where the model's
    outputs are not one head of named classes."""
    import zoo

    if cfg.class_names:
        return list(cfg.class_names)
    names = zoo.get_spec(cfg.model).class_names
    if not isinstance(names, tuple) or "vocab" in zoo.get_spec(cfg.model).preprocessing:
        return None  # several heads, no classes, or a language model's characters
    if cfg.classes:
        return names_of_classes(names, cfg.classes)
    n = getattr(build_model(cfg), "num_classes", None)
    return list(names) if n is not None and len(names) == (2 if n == 1 else n) else None


def build_model(cfg: Config):
    """The registry model of `cfg`: its `model_overrides` (--set), `classes` (num_classes
    follows) and `dtype`."""
    import zoo
    from zoo.formats.common import from_json

    overrides = from_json(cfg.model_overrides)
    if cfg.classes:
        if overrides.setdefault("num_classes", len(cfg.classes)) != len(cfg.classes):
            raise ValueError(f"{flag('classes')} gives {len(cfg.classes)} classes but "
                             f"{override_hint('num_classes', overrides['num_classes'])}")
    if cfg.dtype != "float32":
        overrides["dtype"] = cfg.dtype
    return zoo.create(cfg.model, **overrides)


def _create_model(cfg: Config):
    """build_model, with an unknown model or a bad model option named as the flags that set it."""
    _check_registered(cfg.model)
    try:
        return build_model(cfg)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{_set_flags(cfg.model_overrides)}: {e}") from e


def check_model(cfg: Config) -> None:
    """Raises ValueError unless `cfg`'s model builds and initializes (shapes only, nothing computed)
    and its variables fit in memory (`zoo.registry.check_variables_size`).

    `validate` only creates the module; this also traces `zoo.init`, which is where bad
    sizes (e.g. num_classes=0) fail in models that do not check their fields.
    """
    import jax

    import zoo

    model = _create_model(cfg)
    try:
        shapes = jax.eval_shape(lambda key: zoo.init(model, key), jax.random.key(0))
    except Exception as e:  # whatever the model raised: a user error in its options
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"{_set_flags(cfg.model_overrides)}: {cfg.model} cannot be initialized: "
                         f"{type(e).__name__}: {first}") from e
    try:  # before any data is loaded or memory allocated
        zoo.registry.check_variables_size(shapes, cfg.model)
    except ValueError as e:
        raise ValueError(f"{_set_flags(cfg.model_overrides)}: {e}") from None


def _set_flags(model_overrides: dict) -> str:
    """The model options as the user gave them: `--set K=V ...` on the CLI, `model_overrides={...}` in Python."""
    if _PYTHON_NAMES.get():
        return f"model_overrides={dict(model_overrides)!r}"
    if not model_overrides:
        return f"{flag('model_overrides')} (none)"
    return flag("model_overrides") + " " + " ".join(f"{k}={json.dumps(v)}" for k, v in model_overrides.items())


def unknown_key(key: str) -> str:
    """The error for a key that is no Config field, with the closest field name if there is one."""
    close = ALIASES.get(key) or next(iter(difflib.get_close_matches(key, [*FIELDS, *ALIASES], n=1)), None)
    close = ALIASES.get(close, close)
    hint = f" Did you mean {close!r}?" if close else ""
    return f"unknown config key {key!r}.{hint}"


def _model_fields(model: str) -> set[str]:
    """The fields of registry model `model`'s module (what model_overrides can set)."""
    import zoo

    return {f.name for f in dataclasses.fields(zoo.get_spec(model).module)} - {"parent", "name"}


def read_json_config(path: str | Path) -> dict:
    """The Config fields in a recipe or --config JSON file ("_comment" ignored), each checked.

    Raises:
      ValueError: naming the file: not a regular file (a FIFO, a device, a directory),
        over `MAX_CONFIG_BYTES`, invalid JSON (with line and column), not an object, a
        "model" key (the model is chosen by name), an unknown key, or an invalid value.
      OSError: the file cannot be read.
    """
    path = Path(path)
    text = read_config_text(path, "a JSON config")
    try:
        values = loads_finite(text)
    except ValueError as e:  # json.JSONDecodeError (with line and column) or a NaN/Infinity
        raise ValueError(f"{path}: invalid JSON: {e}") from e
    if not isinstance(values, dict):
        raise ValueError(f"{path}: must be a JSON object of config fields, got {type(values).__name__}")
    values.pop("_comment", None)
    for key, value in values.items():
        if key == "model":
            raise ValueError(f"{path}: 'model' cannot be set in a config file; the model is chosen by name")
        if key not in FIELDS:
            raise ValueError(f"{path}: {unknown_key(key)}")
        if error := field_error(key, value):
            raise ValueError(f"{path}: {key} {error}")
    return values


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a finite number")


def loads_finite(text: str) -> Any:
    """json.loads without the NaN, Infinity and -Infinity that Python's json accepts by default.

    Raises ValueError (json.JSONDecodeError for malformed text), also for JSON nested deeper
    than Python's parser can follow (which raises RecursionError).
    """
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def read_config_text(path: str | Path, what: str) -> str:
    """The text of a user's JSON file (--config, --space): a regular file of at most
    MAX_CONFIG_BYTES, UTF-8; else ValueError naming the file (FileNotFoundError if missing)."""
    from zoo.files import read_regular_file

    data = read_regular_file(path, what, MAX_CONFIG_BYTES)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: not UTF-8 text ({e})") from None


def recipe(model: str, name: str = "default") -> dict:
    """The fields of `model`'s shipped recipe `name` (one of RECIPES), {} if it has no default one.

    "default" is train/configs/<model>.json; another name is train/configs/<name>/<model>.json laid
    over it. Raises ValueError for a name the model has no recipe of, listing the models that do.
    """
    base = CONFIG_DIR / f"{model}.json"
    values = read_json_config(base) if base.exists() else {}
    if name == "default":
        return values
    if name not in RECIPES:
        raise ValueError(f"--recipe {name!r}: must be one of {', '.join(RECIPES)}")
    if not has_recipe(model, name):
        have = sorted(p.stem for p in (CONFIG_DIR / name).glob("*.json"))
        raise ValueError(f"--recipe {name}: {model} has no {name} recipe; the models with one: {', '.join(have) or 'none'}")
    return _layered([values, read_json_config(CONFIG_DIR / name / f"{model}.json"), {"recipe": name}])


def has_recipe(model: str, name: str) -> bool:
    """Whether `model` has a shipped recipe `name` ("default" always counts: its fields default)."""
    return name == "default" or (CONFIG_DIR / name / f"{model}.json").exists()


def _layered(layers: list[dict]) -> dict:
    """Config fields of `layers`, a later layer winning per field; `model_overrides` merged key by key."""
    values: dict[str, Any] = {}
    for layer in layers:
        merged = {**values.get("model_overrides", {}), **layer.get("model_overrides", {})}
        values.update(layer)
        if merged:
            values["model_overrides"] = merged
    return values


def resolve(model: str, overrides: dict[str, Any] | None = None, *, config_file: str | Path | None = None) -> Config:
    """The run's config, validated: the model's recipe, then `config_file`, then `overrides`.

    The recipe is the one `overrides` or else `config_file` names in "recipe" (default: "default").

    Args:
      model: registered model name.
      overrides: Config fields (None values ignored), e.g. from CLI flags.
      config_file: a JSON object of Config fields (the recipe format), applied before `overrides`.

    `model_overrides` of the three layers are merged key by key (a later layer wins per key).
    Raises ValueError for an unknown key (suggesting the closest field) or an invalid value.
    """
    _check_registered(model)  # before its name becomes a recipe path
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if overrides.get("model", model) != model:
        raise ValueError(f"overrides name model {overrides['model']!r} but the model is {model!r}")
    for key, value in overrides.items():
        if key not in FIELDS:
            if key in _model_fields(model):
                raise ValueError(f"{key!r} is a field of the {model} model, not a training setting: "
                                 f"set it with {override_hint(key, value)}")
            raise ValueError(unknown_key(key))
        if error := field_error(key, value):
            raise ValueError(f"{flag(key)} {error}")
    file_layer = read_json_config(config_file) if config_file is not None else {}
    values = _layered([recipe(model, overrides.get("recipe", file_layer.get("recipe", "default"))), file_layer, overrides])
    cfg = Config(**{**values, "model": model})
    # own data (--data) names its classes when it is opened (train.tasks.own_data), not the registry
    if (cfg.classes and not cfg.class_names and not cfg.data and len(set(cfg.classes)) == len(cfg.classes)
            and (names := class_names_of(cfg))):
        cfg.class_names = names  # recorded with the run: row i is class names[i] of the original labels
    return cfg.validate()
