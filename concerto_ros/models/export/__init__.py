"""Export of the Concerto encoder (with a bundle's head and translator) to ONNX and
``torch.export``, and the runtimes that run the exported files.

* :mod:`.graph` - :class:`ExportableModel`, the graph on index inputs;
* :mod:`.writer` - :func:`export_model`, :func:`cached_export` (files with metadata);
* :mod:`.runner` - :class:`ExportedModel` (ONNX Runtime CPU/CUDA/TensorRT, ``torch.export``);
* :mod:`.sources` - the graph of a model bundle or an encoder checkpoint.

The data-dependent preprocessing (serialization, patches, neighbour rows, pooling clusters)
stays outside the graph: :class:`~concerto_ros.models.geometry.EncoderIndex`.
"""

from .graph import ExportableModel, example_points
from .runner import PROVIDERS, ExportedModel, ExportFileError, ort_providers, read_metadata
from .sources import exportable_from_bundle, exportable_from_checkpoint
from .writer import (EXPORT_VERSION, FORMATS, SUFFIXES, cached_export, default_cache_dir, export_model,
                     export_program, model_metadata, weights_hash)

__all__ = [
    "ExportableModel", "example_points", "PROVIDERS", "ExportedModel", "ExportFileError", "ort_providers",
    "read_metadata", "exportable_from_bundle", "exportable_from_checkpoint", "EXPORT_VERSION", "FORMATS",
    "SUFFIXES", "cached_export", "default_cache_dir", "export_model", "export_program", "model_metadata",
    "weights_hash",
]
