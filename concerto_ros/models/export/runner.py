"""Running an exported encoder file (ONNX Runtime or ``torch.export``) on voxelized points.

:class:`ExportedModel` reads the file's metadata (the encoder config), builds the index
inputs with :class:`~concerto_ros.models.geometry.EncoderIndex` (the code the eager encoder
uses) and runs the graph:

* ``.onnx`` files with ONNX Runtime; ``provider`` picks the execution provider: ``cpu``
  (``CPUExecutionProvider``), ``cuda`` (``CUDAExecutionProvider``, needs the
  ``onnxruntime-gpu`` wheel) or ``tensorrt`` (``TensorrtExecutionProvider`` with CUDA and
  CPU as fall-backs; engines cached beside the model file);
* ``.pt2`` files (``torch.export``) with ``torch.export.load(...).module()`` on the device
  of the inputs.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import EncoderConfig
from ..geometry import EncoderIndex
from .writer import EXPORT_VERSION

__all__ = ["PROVIDERS", "ExportFileError", "ExportedModel", "read_metadata", "ort_providers"]

#: ``provider`` values of :class:`ExportedModel` (ONNX files)
PROVIDERS = ("cpu", "cuda", "tensorrt")


class ExportFileError(ValueError):
    """The file is not an exported concerto_ros model, or it is from a newer version."""


def read_metadata(path: str | os.PathLike) -> tuple[str, dict[str, str]]:
    """``(format, metadata)`` of an exported file (see
    :func:`~concerto_ros.models.export.writer.model_metadata`).

    Raises:
        FileNotFoundError: no such file.
        ExportFileError: not an exported concerto_ros model, or a newer export version.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"exported model '{path}' does not exist")
    if zipfile.is_zipfile(path):
        fmt = "torch-export"
        try:
            with zipfile.ZipFile(path) as zf:
                name = next((n for n in zf.namelist() if n.endswith("extra/concerto_ros.json")), None)
                meta = json.loads(zf.read(name)) if name else {}
        except (zipfile.BadZipFile, ValueError) as exc:
            raise ExportFileError(f"{path}: unreadable torch.export file ({exc})") from None
    else:
        import onnx

        fmt = "onnx"
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - protobuf decode errors of any kind
            raise ExportFileError(f"{path} is neither an ONNX nor a torch.export (.pt2) file: {exc}") from None
        meta = {p.key: p.value for p in proto.metadata_props}
    version = meta.get("concerto_ros.export")
    if version is None:
        raise ExportFileError(f"{path} is a {fmt} file but not one written by `concerto export` "
                              "(no concerto_ros metadata)")
    if int(version) > EXPORT_VERSION:
        raise ExportFileError(f"{path} has export version {version}; this concerto_ros reads up to "
                              f"{EXPORT_VERSION}: update concerto_ros or re-export")
    return fmt, meta


def ort_providers(provider: str, device_id: int = 0, cache_dir: str | os.PathLike | None = None
                  ) -> list[Any]:
    """The ONNX Runtime provider list for ``provider`` (see :data:`PROVIDERS`).

    Raises:
        ValueError: unknown ``provider``.
        RuntimeError: the provider is not in this onnxruntime build (the message names the
            available ones and the wheel to install).
    """
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise ValueError(f"unknown ONNX Runtime provider '{provider}', expected one of {PROVIDERS}")
    cuda = ("CUDAExecutionProvider", {"device_id": int(device_id)})
    chain: list[Any] = {"cpu": [], "cuda": [cuda],
                        "tensorrt": [("TensorrtExecutionProvider", {
                            "device_id": int(device_id), "trt_engine_cache_enable": True,
                            "trt_engine_cache_path": str(cache_dir or "."),
                        }), cuda]}[provider]
    available = ort.get_available_providers()
    missing = [p[0] for p in chain if p[0] not in available]
    if missing:
        raise RuntimeError(f"ONNX Runtime provider {missing[0]} is not available in this onnxruntime "
                           f"build (available: {available}); install onnxruntime-gpu for CUDA/TensorRT")
    return chain + ["CPUExecutionProvider"]


class ExportedModel:
    """An exported Concerto encoder file, ready to run on voxelized points.

    Args:
        path: a ``.onnx`` or ``.pt2`` file written by :func:`~concerto_ros.models.export.writer.export_model`.
        provider: ONNX Runtime execution provider (:data:`PROVIDERS`; ignored for ``.pt2``).
        device_id: CUDA device of the ``cuda``/``tensorrt`` providers.
        threads: ONNX Runtime intra-op threads (0 = torch's current thread count).

    Attributes:
        format: ``onnx`` or ``torch-export``.
        metadata: the file's metadata strings.
        config: the :class:`~concerto_ros.models.config.EncoderConfig` it was exported with.
        feature: layout of ``point_feat`` (``concat3`` / ``all_levels``).
        input_names, output_names: graph inputs and outputs.
        class_names: the head's classes (``[]`` without a head).

    Raises:
        FileNotFoundError / ExportFileError: see :func:`read_metadata`.
        RuntimeError: the ONNX Runtime provider is unavailable.
    """

    def __init__(self, path: str | os.PathLike, provider: str = "cpu", device_id: int = 0,
                 threads: int = 0) -> None:
        self.path = Path(path).expanduser()
        self.format, self.metadata = read_metadata(self.path)
        meta = self.metadata
        self.config = EncoderConfig.from_dict(json.loads(meta["encoder_config"]))
        self.feature = meta["feature"]
        self.point_channels = int(meta["point_channels"])
        self.input_names = json.loads(meta["input_names"])
        self.output_names = json.loads(meta["output_names"])
        self.class_names = json.loads(meta.get("class_names", "[]"))
        self.weights = meta.get("weights", "")
        self.provider = provider if self.format == "onnx" else "torch"
        if self.format == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = int(threads or torch.get_num_threads())
            options.log_severity_level = 3
            self._session = ort.InferenceSession(
                str(self.path), options, providers=ort_providers(provider, device_id, self.path.parent))
        else:
            self._module = torch.export.load(str(self.path)).module()

    def index(self, coord: torch.Tensor, grid_coord: torch.Tensor, offset: torch.Tensor,
              **overrides: Any) -> EncoderIndex:
        """The index inputs for voxelized points (see
        :meth:`~concerto_ros.models.geometry.EncoderIndex.from_points`). ``overrides``
        replace config entries that live outside the graph: ``stage_orders`` (serialization
        orders per stage), ``enc_patch_size`` (voxels per attention patch)."""
        config = self.config.replace(**overrides) if overrides else self.config
        return EncoderIndex.from_points(coord, grid_coord, offset, config)

    def run(self, feat: torch.Tensor, index: EncoderIndex) -> dict[str, torch.Tensor]:
        """Run the graph.

        Args:
            feat: ``(N, C_in)`` float32 encoder input features.
            index: from :meth:`index`.

        Returns:
            ``{output name: tensor}`` (see :attr:`output_names`); ONNX outputs are CPU
            tensors, ``.pt2`` outputs live on the device of ``feat``.
        """
        tensors = [feat.float()] + index.ordered(self.config)
        if self.format == "onnx":
            feeds = {name: t.detach().cpu().numpy() for name, t in zip(self.input_names, tensors)}
            outputs = [torch.from_numpy(np.asarray(o)) for o in self._session.run(self.output_names, feeds)]
        else:
            with torch.inference_mode():
                outputs = list(self._module(*[t.to(feat.device) for t in tensors]))
        return dict(zip(self.output_names, outputs))

    def __call__(self, coord: torch.Tensor, grid_coord: torch.Tensor, feat: torch.Tensor,
                 offset: torch.Tensor, **overrides: Any) -> dict[str, torch.Tensor]:
        """:meth:`index` then :meth:`run` on an encoder input
        (:class:`~concerto_ros.models.ptv3.PointBatch` fields)."""
        return self.run(feat, self.index(coord, grid_coord, offset, **overrides))

    def describe(self) -> str:
        """One line: format, provider, feature layout, outputs."""
        return (f"exported model {self.path} ({self.format}, {self.provider}): feature '{self.feature}' "
                f"({self.point_channels}-d), outputs {', '.join(self.output_names)}")
