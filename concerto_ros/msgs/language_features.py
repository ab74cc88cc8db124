"""``concerto_ros_interfaces/LanguageFeatureCloud`` <-> numpy, without ROS imports.

The message carries N voxel centres and an N x D matrix of unit embeddings in a text
encoder's space (float16 or float32 bytes, little endian), the encoder's name and model and
the translator temperature, so that any node can score text against map voxels:
``relevance logits = (embeddings @ encode_text(text)) / temperature``.

Duck-typed: rclpy messages (``points`` a float32 ``array.array``, ``embeddings`` bytes-like)
and plain objects with the same attributes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from concerto_ros.msgs.image import set_uint8_data, uint8_bytes
from concerto_ros.msgs.transforms import set_stamp

__all__ = ["FLOAT16", "FLOAT32", "LanguageFeatures", "fill_language_features", "language_features_from_msg",
           "message_bytes"]

#: values of ``LanguageFeatureCloud.encoding``
FLOAT16, FLOAT32 = 0, 1
_DTYPES = {FLOAT16: np.dtype("<f2"), FLOAT32: np.dtype("<f4")}


class LanguageFeatures(NamedTuple):
    """Decoded ``LanguageFeatureCloud``: ``points (N, 3) float32`` metres in ``frame_id``,
    ``embeddings (N, D) float32`` unit rows, and the metadata fields."""

    points: np.ndarray
    embeddings: np.ndarray
    frame_id: str
    stamp_ns: int
    full: bool
    version: int
    voxel_size: float
    text_encoder: str
    text_model: str
    temperature: float


def message_bytes(n: int, dim: int, encoding: int = FLOAT16) -> int:
    """Payload bytes of a message with ``n`` points of ``dim``-d embeddings."""
    return int(n) * (12 + int(dim) * _DTYPES[encoding].itemsize)


def fill_language_features(msg: Any, points: np.ndarray, embeddings: np.ndarray, stamp_ns: int, frame_id: str, *,
                           full: bool, version: int, voxel_size: float, text_encoder: str, text_model: str,
                           temperature: float, encoding: int = FLOAT16) -> Any:
    """Fill a ``LanguageFeatureCloud`` in place and return it.

    Args:
        points: ``(N, 3)`` voxel centres, metres, in ``frame_id``.
        embeddings: ``(N, D)`` unit embeddings (float16 or float32).
        encoding: :data:`FLOAT16` (half the bytes) or :data:`FLOAT32`.

    Raises:
        ValueError: shapes that disagree, or an unknown ``encoding``.
    """
    pts = np.ascontiguousarray(points, dtype=np.float32)
    emb = np.asarray(embeddings)
    if pts.ndim != 2 or pts.shape[1] != 3 or emb.ndim != 2 or emb.shape[0] != pts.shape[0]:
        raise ValueError(f"language features: points must be (N, 3) and embeddings (N, D), got {pts.shape} "
                         f"and {emb.shape}")
    if encoding not in _DTYPES:
        raise ValueError(f"language features: unknown encoding {encoding} (0 = float16, 1 = float32)")
    set_stamp(msg.header, stamp_ns, frame_id)
    msg.full, msg.version, msg.voxel_size = bool(full), int(version), float(voxel_size)
    msg.num_points, msg.dim, msg.encoding = int(pts.shape[0]), int(emb.shape[1]), int(encoding)
    msg.points = pts.reshape(-1)
    _set_embeddings(msg, np.ascontiguousarray(emb, dtype=_DTYPES[encoding]).view(np.uint8).reshape(-1))
    msg.text_encoder, msg.text_model, msg.temperature = str(text_encoder), str(text_model), float(temperature)
    return msg


def _set_embeddings(msg: Any, data: np.ndarray) -> None:
    set_uint8_data(_EmbeddingsView(msg), data)


class _EmbeddingsView:
    """Lets :func:`set_uint8_data` (which writes ``.data``) write ``msg.embeddings``."""

    def __init__(self, msg):
        object.__setattr__(self, "_msg", msg)

    def __setattr__(self, name, value):
        setattr(self._msg, "embeddings" if name == "data" else name, value)

    def __getattr__(self, name):
        return getattr(self._msg, name)


def language_features_from_msg(msg: Any) -> LanguageFeatures:
    """Decode a ``LanguageFeatureCloud`` (rclpy or duck-typed).

    Raises:
        ValueError: sizes that disagree with ``num_points``/``dim``/``encoding``.
    """
    n, d, enc = int(msg.num_points), int(msg.dim), int(msg.encoding)
    if enc not in _DTYPES:
        raise ValueError(f"language features: unknown encoding {enc}")
    pts = np.asarray(msg.points, dtype=np.float32).reshape(-1)
    raw = uint8_bytes(msg.embeddings)
    if pts.size != 3 * n or raw.size != n * d * _DTYPES[enc].itemsize:
        raise ValueError(f"language features: {pts.size} point values and {raw.size} embedding bytes for "
                         f"{n} points of dim {d}")
    emb = np.frombuffer(raw.tobytes(), dtype=_DTYPES[enc]).reshape(n, d).astype(np.float32)
    stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
    return LanguageFeatures(pts.reshape(n, 3), emb, str(msg.header.frame_id), stamp, bool(msg.full),
                            int(msg.version), float(msg.voxel_size), str(msg.text_encoder), str(msg.text_model),
                            float(msg.temperature))
