"""`zoo predict`'s library half: pictures -> top-k classes per head, or reconstructions as PNGs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np


def class_probabilities(logits, names) -> list[tuple[str, float]]:
    """(class name, probability) for one example's logits, most likely first.

    One logit is binary (sigmoid: names[1] when the logit is positive); more are a softmax.
    Class names come from the spec when they match the logits, else the class index.
    """
    logits = np.asarray(logits, np.float32)
    if logits.shape == (1,):
        probs = np.asarray(jax.nn.sigmoid(np.array([-logits[0], logits[0]])))  # 1 - sigmoid(l) = sigmoid(-l)
    else:
        probs = np.asarray(jax.nn.softmax(logits))
    labels = list(names) if names is not None and len(names) == len(probs) else [str(i) for i in range(len(probs))]
    order = np.argsort(-probs, kind="stable")
    return [(labels[i], float(probs[i])) for i in order]


@dataclasses.dataclass(frozen=True)
class Provenance:
    """What weights were trained on, as their export's manifest or their run's config records it.

    dataset: the dataset's name ("mnist", "own data (pets)"), None where not recorded.
    data: the own `--data` path of a run, None for a TFDS dataset.
    class_names: the recorded class names in label order (a run's: `config.class_names_of`), None
      where none are recorded.
    """

    dataset: str | None
    data: str | None
    class_names: tuple[str, ...] | None


def provenance(name: str, *, pretrained=None, path=None, workdir=None) -> Provenance:
    """The `Provenance` of shipped weights (`pretrained`), an export (`path`: its manifest) or a
    run (`workdir`, default runs/NAME: its config.json), read once for all of `zoo predict`."""
    if pretrained or path:
        from zoo.pretrained import read_manifest

        manifest = read_manifest(name, pretrained, path=path)
        config = manifest.get("train_config") or {}
        names = manifest.get("class_names") or config.get("class_names")
        return Provenance(manifest.get("dataset"), config.get("data"), tuple(names) if names else None)
    from train.config import class_names_of
    from train.evaluate import read_config

    cfg = read_config(Path(workdir or Path("runs") / name))
    names = class_names_of(cfg)
    return Provenance(cfg.dataset, cfg.data, tuple(names) if names else None)


def class_names(name: str, source: Provenance) -> tuple[str, ...] | None:
    """The names `zoo predict` prints: the recorded ones, else the registry's."""
    from zoo import get_spec

    return source.class_names or get_spec(name).class_names


def centers_digits(name: str, model, source: Provenance) -> bool:
    """Whether `zoo predict` prepares pictures as MNIST prepared its digits for these weights:
    the model's card says MNIST-style digits, it takes 28x28 grayscale, and `source` (the
    export's manifest or the run's config) says it was trained on MNIST itself (dataset
    "mnist", no own --data, digit class names where any are recorded: all ten or a --classes
    subset). Weights trained on other data (or an export that does not say) see pictures
    resized as before."""
    from zoo.preprocess import image_shape, mnist_style
    from zoo.registry import DIGITS

    if not mnist_style(name) or image_shape(model) != (28, 28, 1):
        return False
    digits = not source.class_names or set(source.class_names) <= set(DIGITS)
    return source.dataset == "mnist" and not source.data and digits


def trained_on_own_data(source: Provenance) -> bool:
    """Whether the weights were trained on the user's own `--data`. Such data was fed as it is
    (never inverted), so `zoo predict` feeds pictures as it is too: the auto-invert to MNIST's
    light-on-dark convention is for weights trained on MNIST-like data only."""
    return bool(source.data) or str(source.dataset or "").startswith("own data")


def read_image(model, path: Path, *, invert: bool = True, center: bool | str = "auto") -> np.ndarray:
    """The model's input batch (1, ...) of one image file (`center` as in zoo.preprocess);
    ValueError naming what is wrong with it."""
    from PIL import Image, UnidentifiedImageError

    from zoo.files import NotARegularFileError, open_regular_file
    from zoo.preprocess import preprocess

    try:
        with open_regular_file(path, "an image file") as f, Image.open(f) as image:  # a FIFO would block
            image.load()  # decode now: a truncated file fails here, named
            return preprocess(model, image, invert="auto" if invert else False, center=center)
    except NotARegularFileError as e:
        raise ValueError(f"is {e.kind}, not an image file") from None
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except IsADirectoryError:
        raise ValueError("is a directory, not an image file") from None
    except UnidentifiedImageError:
        raise ValueError("not an image Pillow can read (PNG, JPEG, BMP, ...)") from None
    except OSError as e:
        raise ValueError(f"cannot read the image ({e.strerror or e})") from None
    except (SyntaxError, Image.DecompressionBombError) as e:  # Pillow's damaged-PNG and too-many-pixels errors
        raise ValueError(f"cannot read the image ({e})") from None


def predict_one(model, apply, path: Path, names, *, top_k: int = 3, invert: bool = True,
                center: bool | str = "auto", reconstruction: Path | None = None) -> dict:
    """The top-k predictions for one image file ({"predictions": ...}), or with `reconstruction`
    (a PNG path) the input | reconstruction grid written there ({"reconstruction", "mse"})."""
    batch = read_image(model, path, invert=invert, center=center)
    output = apply(batch)
    if isinstance(output, dict):  # a multi-head model: top-k per head
        return {"predictions": {head: [{"class": c, "probability": p} for c, p in
                                       class_probabilities(out[0], (names or {}).get(head))[:top_k]]
                                for head, out in sorted(output.items())}}
    if reconstruction is not None:
        from train.report import save_grid

        recon = np.asarray(output)
        out = save_grid(np.concatenate([batch, recon]), reconstruction, ncol=2)
        return {"reconstruction": str(out), "mse": float(np.mean((recon - batch) ** 2))}
    return {"predictions": [{"class": c, "probability": p} for c, p in class_probabilities(output[0], names)[:top_k]]}


def reconstruction_names(files: list[str]) -> dict[str, str]:
    """One PNG name per input file for `zoo predict autoencoder --out DIR`: FILE-STEM.png, and
    where stems repeat in one call (a/7.png b/7.png, 7.png 7.jpg) STEM-2.png, STEM-3.png, ... in
    argument order, so no reconstruction overwrites another of the same call."""
    names, taken = {}, set()
    for file in files:
        if file in names:
            continue
        stem, n = Path(file).stem, 1
        name = f"{stem}.png"
        while name in taken:
            n += 1
            name = f"{stem}-{n}.png"
        names[file] = name
        taken.add(name)
    return names


def summary_line(path: str, result: dict) -> str:
    """One printed line of a `predict_one` result for the file shown as `path`."""
    if "reconstruction" in result:
        return f"{path}: wrote {result['reconstruction']} (input | reconstruction, mse {result['mse']:.4g})"
    predictions = result["predictions"]
    top = lambda ps: ", ".join(f"{p['class']} ({p['probability']:.3f})" for p in ps)  # noqa: E731
    if isinstance(predictions, dict):
        return f"{path}: " + "; ".join(f"{head}: {top(ps)}" for head, ps in predictions.items())
    return f"{path}: {top(predictions)}"
