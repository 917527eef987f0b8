"""The inference graph as ONNX (format "onnx", written only): `model.apply(variables, x)` with
the weights as constants, for onnxruntime and other runtimes. jax2onnx and onnx are imported
inside the functions, so `import zoo` stays light."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from zoo import layers
from zoo.formats.common import check_file_overwrite, file_export, json_metadata, write_file_atomic

__all__ = ["ONNX_SUFFIX", "write_onnx", "check_overwrite"]


ONNX_SUFFIX = ".onnx"


def written_by_zoo(path: Path) -> bool:
    """Whether the regular file `path` is a zoo ONNX export (its metadata says so)."""
    try:
        import onnx

        proto = onnx.load_model(path, load_external_data=False)
        return any(p.key == "zoo_model" for p in proto.metadata_props)
    except Exception:  # noqa: BLE001 - unreadable or another format: not ours, so not replaced
        return False


def check_overwrite(path: str | os.PathLike, overwrite: bool = True) -> None:
    """FileExistsError unless `path` is free or (with `overwrite`) an .onnx file zoo wrote."""
    check_file_overwrite(path, "onnx", overwrite, written_by_zoo)


def _output_names(fn, spec) -> list[str]:
    """ONNX output names: the dict keys of a multi-head output, else ["output"]."""
    out = jax.eval_shape(fn, jax.ShapeDtypeStruct(spec.example_shape(1), spec.dtype))
    if isinstance(out, Mapping):
        return sorted(out)  # the order jax flattens a dict in
    return ["output"] if not isinstance(out, (tuple, list)) else [f"output_{i}" for i in range(len(out))]


def write_onnx(
    path: str | os.PathLike,
    model_name: str,
    variables: Mapping,
    *,
    model_overrides: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    metric: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes the inference graph `model.apply(variables, x)` as an ONNX model (jax2onnx).

    The weights are constants of the graph; the input "input" has a dynamic batch axis "B"
    (and a dynamic time axis "T" for sequence models with a free length). Outputs are
    "output", or one per head of a multi-head model. The registry model, its overrides, the
    dataset, the metric and the class names are stored as JSON in the model's metadata_props.

    Returns:
      The absolute path of the file.

    Raises:
      FileExistsError: `path` exists and `overwrite` is False, or it is not an earlier zoo
        export of this format (see `check_overwrite`).
      ValueError: `path` does not end in .onnx, or `variables` do not match the model.
    """
    overrides, model, host = file_export(path, ONNX_SUFFIX, "an ONNX export", model_name, variables, model_overrides)
    check_overwrite(path, overwrite)  # before the conversion; again before the rename
    import logging

    import onnx
    from jax2onnx import to_onnx

    spec = model.input_spec()
    fn = lambda x: model.apply(host, x)  # noqa: E731  (train=False: the inference graph)
    dims = ("B",) + tuple("T" if d is None else d for d in spec.shape)
    serde = logging.getLogger("onnx_ir.serde")  # warns once per constant it serializes
    level = serde.level
    serde.setLevel(logging.ERROR)
    try:
        with layers.forced("rewrite"):  # jax2onnx converts no platform-dependent program
            proto = to_onnx(fn, [jax.ShapeDtypeStruct(dims, np.dtype(spec.dtype))], model_name=model_name,
                            input_names=["input"], output_names=_output_names(fn, spec))
    finally:
        serde.setLevel(level)
    props = {**json_metadata(model_name, overrides, metric, class_names), "dataset": json.dumps(dataset)}
    onnx.helper.set_model_props(proto, {f"zoo_{key}": value for key, value in props.items()})
    return write_file_atomic(path, overwrite, lambda tmp: onnx.save_model(proto, tmp), "onnx", written_by_zoo)
