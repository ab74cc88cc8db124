"""Writing an :class:`~concerto_ros.models.export.graph.ExportableModel` to a file.

Two formats:

* ``onnx``: ``torch.onnx.export`` (dynamo exporter, from the ``torch.export`` program) to
  one ``.onnx`` file (weights inside up to 1.5 GB, else in ``<file>.data`` beside it), run by
  ONNX Runtime on CPU (``CPUExecutionProvider``) or GPU (``CUDAExecutionProvider``,
  ``TensorrtExecutionProvider``);
* ``torch-export``: ``torch.export.save`` of the ``torch.export`` program (``.pt2``), run by
  ``torch.export.load(...).module()`` without the project's model code.

Both carry the same metadata (:func:`model_metadata`): the encoder config (the reader
builds the index inputs from it), the feature layout, input and output names, the head's
class names, the translator's text encoder, and a hash of the weights. Every dimension is
dynamic (number of points, voxels per level, patches, patch size, pooling cluster size).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from .graph import ExportableModel

__all__ = ["FORMATS", "EXPORT_VERSION", "SUFFIXES", "model_metadata", "weights_hash",
           "export_program", "export_model", "default_cache_dir", "cached_export"]

#: export formats
FORMATS = ("onnx", "torch-export")
#: file suffix per format
SUFFIXES = {"onnx": ".onnx", "torch-export": ".pt2"}
#: version of the metadata layout (readers refuse newer files)
EXPORT_VERSION = 1
#: ONNX files whose weights exceed this many bytes keep them in ``<file>.data``
_INLINE_WEIGHTS_MAX = 1_500_000_000


def weights_hash(model: torch.nn.Module) -> str:
    """SHA-256 (hex, first 16 digits) of the names, shapes and bytes of every tensor in
    ``model.state_dict()``: tells whether an exported file holds given weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def model_metadata(model: ExportableModel, extra: dict[str, Any] | None = None) -> dict[str, str]:
    """String metadata stored with an exported file.

    Keys: ``concerto_ros.export`` (:data:`EXPORT_VERSION`), ``encoder_config`` (JSON of
    :meth:`~concerto_ros.models.config.EncoderConfig.to_dict`), ``feature``,
    ``point_channels``, ``input_names`` / ``output_names`` (JSON lists), ``weights``
    (:func:`weights_hash` of the encoder), ``class_names`` (JSON, with a head),
    ``text_encoder`` and ``text_dim`` (with a translator), plus ``extra`` (values JSON
    encoded unless strings).
    """
    meta = {
        "concerto_ros.export": str(EXPORT_VERSION),
        "encoder_config": json.dumps(model.config.to_dict()),
        "feature": model.feature,
        "point_channels": str(model.point_channels),
        "input_names": json.dumps(model.input_names),
        "output_names": json.dumps(model.output_names),
        "weights": weights_hash(model.encoder),
        "torch": torch.__version__,
    }
    if model.head is not None:
        meta["class_names"] = json.dumps(list(model.head.class_names))
    if model.translator is not None:
        meta["text_encoder"] = str(model.translator.text_encoder)
        meta["text_dim"] = str(model.translator.text_dim)
    for key, value in (extra or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value)
    return meta


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress prints, warnings and info logs."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "torch.fx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_program(model: ExportableModel) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` on its synthetic example, every dimension dynamic.

    Raises:
        RuntimeError: tracing failed (the message of ``torch.export``).
    """
    model = model.eval()
    with _quiet(), torch.no_grad():
        return torch.export.export(model, model.example_inputs(), dynamic_shapes=model.dynamic_shapes())


def export_model(model: ExportableModel, path: str | os.PathLike, fmt: str = "onnx",
                 extra: dict[str, Any] | None = None,
                 program: torch.export.ExportedProgram | None = None) -> Path:
    """Export ``model`` to ``path`` in format ``fmt`` with :func:`model_metadata`.

    Args:
        model: the graph to export (CPU, float32).
        path: output file (parent folders are created).
        fmt: ``onnx`` or ``torch-export``.
        extra: more metadata (e.g. ``{"source": "bundle.pt"}``).
        program: an :func:`export_program` of ``model`` already made (saves a trace).

    Returns:
        ``path``.

    Raises:
        ValueError: unknown ``fmt``.
        RuntimeError: export failed.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format '{fmt}', expected one of {FORMATS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = model_metadata(model, extra)
    program = program if program is not None else export_program(model)
    if fmt == "torch-export":
        torch.export.save(program, path, extra_files={"concerto_ros.json": json.dumps(meta)})
        return path
    n_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    with _quiet():
        onnx_program = torch.onnx.export(program, (), input_names=model.input_names,
                                         output_names=model.output_names, dynamo=True, verbose=False)
    for key, value in meta.items():
        onnx_program.model.metadata_props[key] = value
    onnx_program.save(path, external_data=n_bytes > _INLINE_WEIGHTS_MAX)
    return path


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/concerto_ros/export`` (``~/.cache/concerto_ros/export``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "concerto_ros" / "export"


def cached_export(model: ExportableModel, fmt: str = "onnx", cache_dir: str | os.PathLike | None = None,
                  log: Callable[[str], Any] | None = None,
                  program: torch.export.ExportedProgram | None = None) -> Path:
    """The exported file of ``model`` in ``cache_dir``, exported first when absent.

    The file name holds a hash of the weights (encoder, head, translator), the encoder
    config, the feature layout, the torch version and :data:`EXPORT_VERSION`, so a changed
    model never reuses a stale file. Written in a temporary folder and moved, so a crash
    leaves no half-written file.

    Args:
        model: the graph to export.
        fmt: ``onnx`` or ``torch-export``.
        cache_dir: folder (default :func:`default_cache_dir`).
        log: receives one line when a new file is exported.
        program: an :func:`export_program` of ``model`` already made (saves a trace).

    Returns:
        The path of the exported file.
    """
    h = hashlib.sha256()
    h.update(json.dumps([model.config.to_dict(), model.feature, model.output_names,
                         torch.__version__, EXPORT_VERSION, fmt]).encode())
    h.update(weights_hash(model).encode())
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = folder / f"concerto-{h.hexdigest()[:20]}{SUFFIXES[fmt]}"
    if path.is_file():
        return path
    if log:
        log(f"exporting the encoder ({fmt}) to {path} (once per model; takes a while)")
    tmp_dir = folder / f".tmp-{os.getpid()}-{h.hexdigest()[:8]}"
    try:
        written = export_model(model, tmp_dir / path.name, fmt, program=program)
        data = Path(str(written) + ".data")  # external weights keep their file name
        if data.is_file():
            os.replace(data, Path(str(path) + ".data"))
        os.replace(written, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path
