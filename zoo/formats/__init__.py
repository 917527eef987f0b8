"""The export formats, one module each, and the table that `zoo export`, `zoo.load` and the CLI
consult (a new format is one module and one row here).

    orbax         an export directory: manifest.json pinning an Orbax checkpoint (orbax_export.py);
                  what zoo.load(pretrained=...) and downloaded archives (archive.py) hold
    safetensors   one .safetensors file, the manifest's fields in its header (safetensors_export.py)
    onnx          the inference graph for other runtimes, written only (onnx_export.py)

    from zoo import formats
    formats.write("safetensors", "cnn.safetensors", "cnn", variables, dataset="mnist")
    formats.of_path("cnn.safetensors").name        # "safetensors": how zoo.load reads the path
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from zoo.files import is_url_path
from zoo.formats import onnx_export, orbax_export, safetensors_export

__all__ = ["Format", "FORMATS", "DIRECTORY", "get", "of_path", "check_overwrite", "write"]


@dataclasses.dataclass(frozen=True)
class Format:
    """One export format.

    Attributes:
      name: what `zoo export --format` and `write` call it.
      suffix: a one-file format's file suffix; "" for the export directory.
      help: what it is for, as `zoo export --help` says.
      write: `(path, model_name, variables, *, overwrite, **fields) -> Path`.
      check_overwrite: `(path, overwrite)`: FileExistsError unless writing `path` loses nothing.
      fields: the export fields it records (None: every field `write_export` takes).
      read: a one-file format `zoo.load` reads: `path -> (manifest, payload)`; None: not read
        (the directory format is found and verified by zoo.pretrained).
      restore: `(path, model, name, payload) -> variables`, strictly checked against `model`.
    """

    name: str
    suffix: str
    help: str
    write: Callable[..., Path]
    check_overwrite: Callable[[Any, bool], None]
    fields: tuple[str, ...] | None = None
    read: Callable[[Any], tuple[dict, Any]] | None = None
    restore: Callable[[Any, Any, str, Any], dict] | None = None


_ONE_FILE_FIELDS = ("model_overrides", "dataset", "metric", "class_names")

FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("orbax", "", "an export directory for zoo.load", orbax_export.write_export, orbax_export.check_overwrite,
           restore=lambda path, model, name, _: orbax_export.restore_variables(path, model, name)),
    Format("safetensors", safetensors_export.SAFETENSORS_SUFFIX, "one weights file for zoo.load",
           safetensors_export.write_safetensors, safetensors_export.check_overwrite, _ONE_FILE_FIELDS,
           read=safetensors_export.read_safetensors, restore=safetensors_export.restore_safetensors),
    Format("onnx", onnx_export.ONNX_SUFFIX, "an inference graph (dynamic batch) for onnxruntime",
           onnx_export.write_onnx, onnx_export.check_overwrite, _ONE_FILE_FIELDS),
)}
DIRECTORY = "orbax"  # the export directory: the default, and what pretrained weights are


def get(name: str) -> Format:
    """The format called `name` (ValueError listing the formats otherwise)."""
    if name not in FORMATS:
        raise ValueError(f"unknown export format {name!r}; formats: {', '.join(FORMATS)}")
    return FORMATS[name]


def of_path(path) -> Format:
    """How `zoo.load` reads `path`: a local file whose suffix names a format it reads, else the
    export directory (a local one, or a URL's tar.gz)."""
    if isinstance(path, (str, os.PathLike)) and not is_url_path(path):
        for fmt in FORMATS.values():
            if fmt.suffix and str(path).endswith(fmt.suffix):
                if fmt.read is None:  # written for another runtime (an ONNX graph), not for zoo.load
                    readable = ", ".join(f.suffix for f in FORMATS.values() if f.read) or "none"
                    raise ValueError(f"{os.fspath(path)}: zoo.load cannot read {fmt.name} files ({fmt.help}); "
                                     f"it reads an export directory or {readable} files")
                return fmt
    return FORMATS[DIRECTORY]


def check_overwrite(path, name: str = DIRECTORY, overwrite: bool = True) -> None:
    """FileExistsError unless writing a `name` export to `path` loses nothing: `path` is free, or
    `overwrite` is set and it is an earlier zoo export of that format (never anything else)."""
    get(name).check_overwrite(path, overwrite)


def write(name: str, path, model_name: str, variables: Mapping, *, overwrite: bool = False, **fields) -> Path:
    """Writes `variables` of registry model `model_name` to `path` as format `name`, with the
    export `fields` that format records (model_overrides, dataset, metric, command, ...)."""
    fmt = get(name)
    kept = fields if fmt.fields is None else {key: fields[key] for key in fmt.fields if key in fields}
    return fmt.write(path, model_name, variables, overwrite=overwrite, **kept)
