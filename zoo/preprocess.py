"""Turn a picture (a PIL image or an array) into the batch an image model expects.

    import zoo
    from PIL import Image
    batch = zoo.preprocess("cnn", Image.open("digit.png"))    # float32 (1, 28, 28, 1) in [0, 1]
    logits = model.apply(variables, batch)

A picture's EXIF orientation is applied first (PIL.ImageOps.exif_transpose), so a phone photo
is read the way a viewer shows it. Single-channel pictures deeper than 8 bits (Pillow modes "F",
"I", "I;16"...; float and 16/32-bit TIFFs, 16-bit PNGs) are scaled to [0, 1] by their range:
16-bit modes divide by 65535; "F" values already in [0, 1] stay as they are; "I" values in
0..255 divide by 255 and in 0..65535 by 65535 (8- and 16-bit data stored as int32); anything
else (negative values, larger ranges) is stretched from the picture's own min..max to 0..1.
The image is then converted to the model's channels (grayscale "L" or "RGB"; a transparent image is
first laid on white), resized to the model's height and width (bilinear; Pillow antialiases
when shrinking), and scaled to [0, 1]. Grayscale models follow MNIST's convention, a light digit on a
dark background; `invert="auto"` inverts (x -> 1 - x) a grayscale image whose border, its
outermost row and column of pixels on every side after resizing, is brighter on average than
mid-grey (0.5), i.e. a dark drawing on light paper. RGB models are never inverted unless asked
(`invert=True`).

Models whose card says MNIST-style digits (`"style": "mnist_digit"` in their registry
preprocessing: cnn, mlp, mlp_small, multitask, autoencoder) get the digit prepared as MNIST
prepared its own (`center="auto"` or True; `center=False` turns it off): after the grayscale
conversion and the inversion decision, the full-resolution picture is cropped to its ink (the
bounding box of pixels brighter than INK_THRESHOLD), scaled so its longer side is 20 px keeping
its aspect ratio (Lanczos, antialiased), and placed in a 28x28 black canvas so that its
intensity-weighted centre of mass, rounded to whole pixels, sits at row 14, column 14 (where it
sits in MNIST's digits, in pixel-index coordinates).
A picture with no ink (nothing above the threshold) is left as plain resizing gives it. A
model instance counts as MNIST-style when it is configured exactly as such a registered model;
the instance does not know what data its weights saw, so for weights trained on other data
pass `center=False` (`zoo predict` decides from the export's manifest or the run's config).
Pillow is imported inside `preprocess`, so `import zoo` stays light.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from flax import linen as nn

from zoo.registry import MNIST_DIGIT, create, get_spec, list_models

__all__ = ["preprocess", "image_shape", "mnist_style", "BORDER_THRESHOLD", "INK_THRESHOLD"]

BORDER_THRESHOLD = 0.5  # mean border brightness above which "auto" inverts a grayscale image
INK_THRESHOLD = 0.2  # brightness (light-on-dark) above which a pixel is ink when cropping a digit
MNIST_BOX, MNIST_SIZE = 20, 28  # MNIST: the digit's longer side, the canvas side


def image_shape(model: nn.Module) -> tuple[int, int, int] | None:
    """(height, width, channels) if `model` takes float images with 1 or 3 channels, else None."""
    spec = model.input_spec()
    shape = tuple(spec.shape)
    if len(shape) == 3 and None not in shape and shape[2] in (1, 3) and spec.dtype.startswith("float"):
        return shape
    return None


def _to_pil(image: Any):
    """A PIL image from a PIL image or an array (H, W), (H, W, 1|3|4): uint8 0-255 or float 0-1."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        raise TypeError(f"preprocess takes a PIL image or an array, got the path {os.fspath(image)!r}"
                        + ("" if os.path.exists(image) else " (no such file)")
                        + "; open it first: preprocess(model, PIL.Image.open(path))")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or 0 in array.shape:
        raise ValueError(f"an image array must be (H, W) or (H, W, 1|3|4), got shape {array.shape}")
    if array.dtype == np.uint8:
        pass
    elif np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.bool_):
        values = array.astype(np.float32)
        if not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0:
            raise ValueError(f"a float image array must hold values in [0, 1], got [{values.min()}, {values.max()}]")
        array = np.round(values * 255).astype(np.uint8)
    else:
        raise ValueError(f"an image array must be uint8 (0-255) or float (0-1), got dtype {array.dtype}")
    return Image.fromarray(array)


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _deep_to_unit(image):
    """A float (H, W) array in [0, 1] for a picture in a mode deeper than 8 bits (the module
    docstring's rule), or None for any other picture."""
    if image.mode not in ("F", "I", *_SIXTEEN_BIT):
        return None
    values = np.asarray(image, np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"a {image.mode!r} image must hold finite values, got NaN or infinity")
    lo, hi = float(values.min()), float(values.max())
    if image.mode in _SIXTEEN_BIT:
        return values / 65535.0
    if image.mode == "F" and 0.0 <= lo and hi <= 1.0:
        return values
    if image.mode == "I" and 0.0 <= lo and hi <= 65535.0:
        return values / (255.0 if hi <= 255.0 else 65535.0)
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


def _flatten_alpha(image):
    """An image with transparency laid on a white background (how it looks in a viewer)."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image


def mnist_style(model_or_name: str | nn.Module) -> bool:
    """Whether the model's card says MNIST-style digits (its registry preprocessing has
    "style": "mnist_digit"); a model instance counts when it is configured exactly as one."""
    if isinstance(model_or_name, str):
        return get_spec(model_or_name).preprocessing.get("style") == MNIST_DIGIT
    return any(get_spec(name).preprocessing.get("style") == MNIST_DIGIT
               and get_spec(name).module is type(model_or_name) and create(name) == model_or_name
               for name in list_models())


def _center_digit(ink: np.ndarray) -> np.ndarray | None:
    """A light-on-dark (H, W) float picture prepared as MNIST's digits (the module docstring):
    a (28, 28) float32 array in [0, 1], or None when nothing in it is brighter than INK_THRESHOLD."""
    from PIL import Image

    rows, cols = np.flatnonzero((ink > INK_THRESHOLD).any(1)), np.flatnonzero((ink > INK_THRESHOLD).any(0))
    if rows.size == 0:
        return None
    crop = np.ascontiguousarray(ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], np.float32)
    scale = MNIST_BOX / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))  # (width, height)
    patch = np.clip(np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS)), 0.0, 1.0)
    mass = float(patch.sum())
    if mass <= 0.0:  # Lanczos lobes clipped away a lone faint dot: nothing left to centre
        return None
    com_row = float(patch.sum(1) @ np.arange(patch.shape[0])) / mass
    com_col = float(patch.sum(0) @ np.arange(patch.shape[1])) / mass
    top, left = (int(np.floor(MNIST_SIZE / 2 - c + 0.5)) for c in (com_row, com_col))
    canvas = np.zeros((MNIST_SIZE, MNIST_SIZE), np.float32)  # ink shifted past an edge is cut, as in MNIST
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + patch.shape[0], MNIST_SIZE), min(left + patch.shape[1], MNIST_SIZE)
    canvas[r0:r1, c0:c1] = patch[r0 - top:r1 - top, c0 - left:c1 - left]
    return canvas


def preprocess(model_or_name: str | nn.Module, image: Any, *, invert: bool | str = "auto",
               center: bool | str = "auto") -> np.ndarray:
    """A model-ready batch of one image.

    Args:
      model_or_name: a registry name (its default configuration) or a model instance (e.g.
        from `zoo.load`, whose overrides may change the input shape).
      image: a PIL image (its EXIF orientation applied; any Pillow mode, deep ones scaled as
        the module docstring says), or an array (H, W) / (H, W, 1|3|4), uint8 0-255 or float
        in [0, 1].
      invert: "auto" (see the module docstring), True (always x -> 1 - x) or False (never).
      center: "auto" (MNIST-style digit models: `mnist_style`), True or False: crop, scale
        and centre the digit as MNIST did (the module docstring).

    Returns:
      float32 numpy array (1, H, W, C) in [0, 1], the model's image size and channels.

    Raises:
      ValueError: the model does not take images, the array is not an image, a float picture
        holds NaN or infinity, `invert` is not "auto", True or False, `center` is not "auto",
        True or False, or center=True for a model whose input is not 28x28 grayscale.
    """
    from PIL import Image, ImageOps

    model = create(model_or_name) if isinstance(model_or_name, str) else model_or_name
    shape = image_shape(model)
    if shape is None:
        raise ValueError(f"{type(model).__name__} does not take images: its input is {model.input_spec()}")
    if invert not in ("auto", True, False):
        raise ValueError(f"invert must be 'auto', True or False, got {invert!r}")
    if center not in ("auto", True, False):
        raise ValueError(f"center must be 'auto', True or False, got {center!r}")
    if center is True and shape != (MNIST_SIZE, MNIST_SIZE, 1):
        raise ValueError(f"center=True prepares MNIST-style 28x28 grayscale digits; {type(model).__name__} "
                         f"here takes {model.input_spec()}")
    center = mnist_style(model_or_name) if center == "auto" else center
    height, width, channels = shape
    picture = _to_pil(image)
    if isinstance(image, Image.Image):
        picture = ImageOps.exif_transpose(picture)
        deep = _deep_to_unit(picture)
        if deep is not None:
            picture = _to_pil(deep)
    picture = _flatten_alpha(picture).convert("L" if channels == 1 else "RGB")
    resized = picture.resize((width, height), Image.Resampling.BILINEAR)  # Pillow antialiases when shrinking
    x = np.asarray(resized, np.float32).reshape(height, width, channels) / 255.0  # (H, W, C)
    if invert == "auto":
        border = np.concatenate([x[0].ravel(), x[-1].ravel(), x[:, 0].ravel(), x[:, -1].ravel()])
        invert = channels == 1 and float(border.mean()) > BORDER_THRESHOLD
    if invert:
        x = 1.0 - x
    if center:
        full = np.asarray(picture, np.float32) / 255.0
        digit = _center_digit(1.0 - full if invert else full)
        x = x if digit is None else digit[..., None]
    return x[None]  # (1, H, W, C)


def fit_uint8(picture, shape: tuple[int, int, int]) -> np.ndarray:
    """A PIL picture as uint8 (H, W, C) of `shape`, the way training reads image files.

    The same steps as `preprocess` (EXIF orientation, deep modes scaled, transparency laid on
    white, the model's channels, bilinear resize) but kept uint8 0-255 and never inverted:
    training data is taken as it is.
    """
    from PIL import Image, ImageOps

    height, width, channels = shape
    picture = ImageOps.exif_transpose(picture)
    deep = _deep_to_unit(picture)
    if deep is not None:
        picture = _to_pil(deep)
    picture = _flatten_alpha(picture).convert("L" if channels == 1 else "RGB")
    if picture.size != (width, height):
        picture = picture.resize((width, height), Image.Resampling.BILINEAR)  # Pillow antialiases when shrinking
    return np.asarray(picture, np.uint8).reshape(height, width, channels)
