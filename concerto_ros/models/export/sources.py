"""Building the exportable graph from what users have: a model bundle or an encoder checkpoint."""

from __future__ import annotations

import os
from typing import Any, Callable

from ..checkpoint import encoder_from_dict, load_encoder
from ..extractor import inference_overrides
from .graph import ExportableModel

__all__ = ["exportable_from_bundle", "exportable_from_checkpoint"]

#: the exported graph always runs the project's torch sparse convolution and the
#: reference's non-flash patch layout (identical to the flash layout for one scene)
_EXPORT_OVERRIDES = dict(inference_overrides("cpu", "torch", flash="off"))


def exportable_from_checkpoint(path: str | os.PathLike, feature: str = "concat3", preset: str | None = None,
                               overrides: dict[str, Any] | None = None) -> ExportableModel:
    """The encoder of a checkpoint (any layout :func:`~concerto_ros.models.checkpoint.load_encoder`
    reads) as an :class:`ExportableModel` with ``point_feat`` in the ``feature`` layout.

    Raises:
        FileNotFoundError, CheckpointFormatError, CheckpointMismatchError: see ``load_encoder``.
        ValueError: unknown ``feature``.
    """
    encoder = load_encoder(path, preset=preset, overrides={**_EXPORT_OVERRIDES, **(overrides or {})})
    return ExportableModel(encoder, feature)


def exportable_from_bundle(path: str | os.PathLike, log: Callable[[str], Any] | None = None
                           ) -> ExportableModel:
    """The Concerto encoder of a model bundle with its linear head and translator.

    The head and the translator join the graph when they read the Concerto feature alone;
    in a bundle with a Cross4D encoder they read the fused feature, so only the encoder is
    exported (``log`` says so). ``path`` may be ``default`` (the embedded bundle).

    Raises:
        FileNotFoundError / BundleError: see :func:`~concerto_ros.models.bundle.load_bundle`.
        ValueError: the bundle has no Concerto encoder.
    """
    from concerto_ros.config import HeadConfig
    from concerto_ros.language.translator import Translator
    from concerto_ros.models.bundle import load_bundle, resolve_bundle_path
    from concerto_ros.models.extractor import build_heads

    log = log or (lambda _m: None)
    source = resolve_bundle_path(str(path))
    bundle = load_bundle(source)
    if bundle.encoder is None:
        raise ValueError(f"bundle {source} has no Concerto encoder to export (components: "
                         f"{', '.join(bundle.components())})")
    encoder = encoder_from_dict(bundle.encoder, source=f"bundle {source}", overrides=_EXPORT_OVERRIDES)
    dims = bundle.feature_dims
    head = translator = None
    if bundle.cross4d is not None and (bundle.head is not None or bundle.translator is not None):
        log(f"bundle {source} holds a Cross4D encoder: its head and translator read the fused "
            f"Concerto + Cross4D feature {dims} and are not exported; only the Concerto encoder is")
    else:
        if bundle.head is not None:
            head = build_heads(HeadConfig(), in_channels=dims["concerto"], feature_dims=dims,
                               blob=bundle.head, source=f"bundle {source}")
        if bundle.translator is not None:
            translator = Translator.from_dict(bundle.translator, in_dim=dims["concerto"],
                                              source=f"bundle {source}")
    return ExportableModel(encoder, bundle.feature, head=head, translator=translator)
