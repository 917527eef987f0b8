"""Model cards: what a registered model is, and what each set of its shipped weights records.

    print(zoo.model_card("cnn"))            # the registry entry and its shipped tags
    print(zoo.model_card("cnn", "mnist"))   # one set of shipped weights: its manifest, in words
    zoo.pretrained_inputs("mlp_binary")     # {"mnist_parity": InputSpec((28, 28, 1), ...)}

A card prints only what is recorded: the registry spec, the weights' manifest (read with
`zoo.formats.orbax_export.read_manifest`, pinned by the package's weights index; the parameter files are
not hashed here, `zoo.load` does that), the dataset's source as train/vendored/README.md states
it, and the training device and wall time the manifest records (with when and from what they were
recorded). Reads the installed package's JSON only: no orbax, no TensorFlow, no repository files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoo.formats.common import model_from_manifest
from zoo.formats.orbax_export import read_manifest
from zoo.pretrained import available, weights_dir
from zoo.registry import InputSpec, get_spec, param_count
from zoo.trees import expected_variables

__all__ = ["DATASETS", "LICENSE_NOTE", "model_card", "pretrained_inputs", "shipped_inputs"]

# The vendored datasets' sources as train/vendored/README.md states them (tests keep the two in sync).
# train/vendored/README.md states no license for either; a card says so rather than guess one.
DATASETS = {
    "mnist": {
        "source": "the MNIST database of handwritten digits by Yann LeCun, Corinna Cortes and "
                  "Christopher J. C. Burges",
        "url": "http://yann.lecun.com/exdb/mnist/",
    },
    "tiny_shakespeare": {
        "source": "about 1 MB of Shakespeare's plays collected by Andrej Karpathy for char-rnn (2015)",
        "url": "https://github.com/karpathy/char-rnn/blob/master/data/tinyshakespeare/input.txt",
    },
}
LICENSE_NOTE = "not stated in train/vendored/README.md (see the source)"


def _weights(name: str) -> dict[str, tuple[Path, dict]]:
    """{tag: (export dir, index entry)} of `name`'s shipped weights."""
    return {tag: (weights_dir() / entry["dir"], entry) for tag, entry in available(name).items()}


def _manifest(name: str, tag: str) -> tuple[dict, str]:
    """(manifest, its sha256) of shipped weights `name.tag`; the index pins the manifest."""
    weights = _weights(name)
    if tag not in weights:
        have = ", ".join(sorted(weights)) or "none shipped"
        raise ValueError(f"unknown pretrained tag {tag!r} for {name!r}; shipped tags: {have}")
    directory, entry = weights[tag]
    return read_manifest(directory, entry["manifest_sha256"]), entry["manifest_sha256"]


def pretrained_inputs(name: str) -> dict[str, InputSpec]:
    """The input spec of each of `name`'s shipped weights (their model overrides applied)."""
    return {tag: model_from_manifest(_manifest(name, tag)[0]).input_spec() for tag in _weights(name)}


shipped_inputs = pretrained_inputs  # the name before "pretrained" was the one word for shipped weights


def _training_lines(training: dict | None) -> list[str]:
    """The manifest's "training" record (zoo export writes it): device, wall time, how recorded."""
    training = training or {}
    device, wall, recorded = training.get("device"), training.get("wall_s"), training.get("recorded")
    return [f"training device: {device or 'not recorded'}",
            f"training wall time: {f'{wall:g} s' if wall is not None else 'not recorded'}",
            *([f"  recorded: {recorded}"] if recorded else [])]


def _shape(shape) -> str:
    dims = ["T" if d is None else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _text(value: Any) -> str:
    """`value` on one line: strings as they are unless they hold spaces or control characters."""
    return value if isinstance(value, str) and value.isprintable() and " " not in value else repr(value)


def _classes(names) -> str:
    if names is None:
        return "none (outputs are not classes)"
    if isinstance(names, dict):
        return "; ".join(f"{head}: {_classes(n)}" for head, n in names.items())
    shown = " ".join(_text(n) for n in names[:20])
    return shown if len(names) <= 20 else f"{len(names)} classes: {shown} ..."


def _preprocessing(spec, model=None) -> str:
    steps = dict(spec.preprocessing)
    if "vocab" in steps and model is not None:  # the weights' own characters (a model field), not the registry's
        steps["vocab"] = getattr(model, "vocab", None) or f"none (bare token ids in [0, {model.vocab_size}))"
    return "; ".join(f"{k} {v if isinstance(v, str) and v.isprintable() else _text(v)}" for k, v in steps.items())


def weights_classes(spec, manifest: dict, model) -> Any:
    """The class names of a set of weights: the manifest's (its run's), else a char model's own
    vocabulary, else the registry's."""
    if manifest.get("class_names"):
        return tuple(manifest["class_names"])
    if "vocab" in spec.preprocessing and hasattr(model, "vocab"):
        return tuple(model.vocab) if model.vocab is not None else None
    return spec.class_names


OWN_DATA = "own data"  # how exports name a --data dataset: "own data (FOLDER NAME)"


def _dataset_lines(dataset: str | None) -> list[str]:
    info = DATASETS.get(dataset or "")
    if (dataset or "").startswith(OWN_DATA):  # the user's files: their source is theirs to state
        return [f"dataset: {dataset}"]
    if info is None:
        return [f"dataset: {dataset or 'not recorded'}", "  source and license: not recorded in train/vendored/README.md"]
    return [f"dataset: {dataset}", f"  source: {info['source']}, {info['url']}", f"  license: {LICENSE_NOTE}"]


def _metric(m: dict | None) -> str:
    if not m:
        return "not recorded"
    where = [m.get("split") and f"{m['split']} split", m.get("count") and f"{m['count']} examples",
             m.get("step") is not None and f"step {m['step']}"]
    return f"{m['name']} {m['value']:.6g}" + (f" ({', '.join(w for w in where if w)})" if any(where) else "")


def _spec_card(name: str) -> list[str]:
    spec = get_spec(name)
    defaults = ", ".join(f"{k}={v!r}" for k, v in spec.defaults.items()) or "none"
    lines = [
        f"{name}: {spec.description}",
        f"task: {spec.task}",
        f"architecture: {spec.module.__module__}.{spec.module.__name__} (defaults: {defaults})",
        f"  follows: {spec.follows}",
        f"parameters: {spec.num_params:,}",
        f"input: {spec.input}",
        f"preprocessing: {_preprocessing(spec)}",
        f"output: {_shape(spec.output) if isinstance(spec.output, tuple) else spec.output}",
        f"embedding: {_shape(spec.embedding)} (model.apply(variables, x, method='embed'))",
        f"classes: {_classes(spec.class_names)}",
    ]
    return lines


def model_card(name: str, tag: str | None = None, *, path=None) -> str:
    """A plain-text card for registry model `name`, for its shipped weights `name.tag`, or for
    an export (`path`: a directory, .safetensors file or URL, verified as `zoo.load` does).

    Args:
      name: a registry name (`zoo.list_models()`).
      tag: a shipped weights tag (`zoo.available(name)`), or None for the model and its tags.
      path: instead of `tag`, an export of `name` (its class names and vocabulary shown).

    Returns:
      The card, lines joined by newlines (what `zoo info NAME[.TAG]` prints).

    Raises:
      UnknownModelError: `name` is not registered; ValueError: `tag` is not shipped for it
        (the message lists the shipped tags) or its manifest fails its pinned sha256.
    """
    spec = get_spec(name)
    if path is not None:
        from zoo.pretrained import read_manifest as read_export

        if tag is not None:
            raise ValueError("model_card: give a shipped tag or path=, not both")
        manifest = read_export(name, path=path)
        return _weights_card(name, f"export {path}", manifest, None, f"zoo.load({name!r}, path={str(path)!r})")
    if tag is None:
        lines = _spec_card(name)
        if not spec.pretrained:
            return "\n".join(lines + ["pretrained: none shipped"])
        lines.append("pretrained (zoo info NAME.TAG for a card):")
        for t in spec.pretrained:
            manifest, _ = _manifest(name, t)
            lines.append(f"  {name}.{t}: {manifest.get('dataset')}, {_metric(manifest.get('metric'))}")
        return "\n".join(lines)

    manifest, sha = _manifest(name, tag)
    return _weights_card(name, f"{name}.{tag}: pretrained weights", manifest, sha,
                         f"zoo.load({name!r}, pretrained={tag!r})")


def _weights_card(name: str, title: str, manifest: dict, sha: str | None, load: str) -> str:
    """The card of one set of weights of `name` from its manifest (shipped or exported)."""
    spec = get_spec(name)
    model = model_from_manifest(manifest)
    overrides = manifest.get("model_overrides") or {}
    count = spec.num_params if not overrides else param_count(expected_variables(model))
    lines = [
        f"{title} of {name} ({spec.description})",
        f"task: {spec.task}",
        f"architecture: {spec.module.__module__}.{spec.module.__name__} "
        f"(overrides: {', '.join(f'{k}={v!r}' for k, v in overrides.items()) or 'none'})",
        f"  follows: {spec.follows}",
        f"parameters: {count:,}",
        f"input: {model.input_spec()}",
        f"preprocessing: {_preprocessing(spec, model)}",
        f"classes: {_classes(weights_classes(spec, manifest, model))}",
        *_dataset_lines(manifest.get("dataset")),
        f"recipe: {manifest.get('command') or 'not recorded'}",
        f"metric: {_metric(manifest.get('metric'))}",
        *_training_lines(manifest.get("training")),
        f"created: {manifest.get('created') or 'not recorded'}",
        "versions: " + (", ".join(f"{k} {v}" for k, v in (manifest.get("versions") or {}).items()) or "not recorded"),
        *([f"manifest sha256: {sha}"] if sha else []),
        f"load: {load}",
    ]
    return "\n".join(lines)
