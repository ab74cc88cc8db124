"""The perception pipeline: synced sensor messages -> video point cloud -> encoder -> heads.

This is the one object that the three shells drive (the ROS 2 node, the bag tools and the
training scripts); it never imports rclpy. Messages are duck-typed: rclpy messages and the
``rosbags`` message classes both work, so live and offline paths share every step:

1. :class:`~concerto_ros.sensors.stream.FrameStream` pairs, decodes, validates and poses
   sensor messages into :class:`~concerto_ros.sensors.stream.SensorFrame` s, raising
   :class:`~concerto_ros.sensors.skips.FrameSkipped` (with topic and reason) for bad input.
2. :class:`PerceptionPipeline` lifts the frame into the fixed frame with its pose, pushes it
   into the sliding :class:`~concerto_ros.cloud.window.VideoPointCloud` (keeping the window
   within ``window.max_extent``), grid-samples the window, runs the encoder on the voxels
   and the heads on the per-voxel features.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from concerto_ros.cloud.extent import WindowExtent
from concerto_ros.cloud.window import VideoPointCloud, WindowCloud
from concerto_ros.mapping import KeyframePolicy, SemanticVoxelMap
from concerto_ros.config import PerceptionConfig
from concerto_ros.models.extractor import FeatureExtractor, build_heads
from concerto_ros.models.heads import SemanticPrediction, pca_colors
from concerto_ros.models.precision import autocast
from concerto_ros.sensors.lifting import lift_depth, lift_pointcloud
from concerto_ros.sensors.skips import FrameSkipped, SkipCounter  # noqa: F401  (re-exported)
from concerto_ros.recordings.frame import SensorCloud, SensorFrame
from concerto_ros.sensors.stream import RGBDFrameAssembler  # noqa: F401  (re-exported)
from concerto_ros.sensors.validation import pose_problem
from concerto_ros.timing import STAGES, StageTimer  # noqa: F401  (re-exported)
from concerto_ros.sensors.types import PointFrame, RGBDFrame



class QueryError(RuntimeError):
    """A text query or vocabulary change that cannot be served now (reason in the message)."""


class LanguageModels:
    """Text encoder, translator, query scorer and optional open-vocabulary labeler.

    Built from ``language.*``/``query.*`` settings; the translator must have been fitted on
    features of width ``in_dim`` with the same text encoder (checked at load).
    """

    def __init__(self, text_encoder, translator, negatives, vocabulary, backend: str = "", model: str = "",
                 origin: str = ""):
        from concerto_ros.language.query import OpenVocabularyLabeler, TextQueryScorer

        self.text_encoder = text_encoder
        self.translator = translator
        #: ``language.text_encoder`` / ``language.text_model`` the text encoder was built from
        self.backend = str(backend)
        self.model = str(model)
        #: where the translator came from (a file, or a bundle)
        self.origin = str(origin)
        #: the open vocabulary at start-up
        self.vocabulary = list(vocabulary)
        self.scorer = TextQueryScorer(text_encoder, translator.temperature, negatives=negatives)
        self._labeler_cls = OpenVocabularyLabeler
        self.labeler = OpenVocabularyLabeler(text_encoder, vocabulary) if vocabulary else None
        self._pending: list[str] | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: PerceptionConfig, in_dim: int, device: str = "cpu",
                    log: Callable[[str], Any] | None = None, bundle=None,
                    source: str = "") -> "LanguageModels":
        """Load the text encoder and translator named in ``cfg.language``, or those of a model
        ``bundle`` (its translator, text encoder and, when ``language.vocabulary`` is empty,
        its vocabulary; ``language.text_checkpoint`` and ``query.*`` still come from ``cfg``).

        Raises:
            FileNotFoundError, ValueError (incl. TranslatorMismatchError), ImportError.
        """
        from concerto_ros.language.text_encoders import build_text_encoder
        from concerto_ros.language.translator import Translator

        lc = cfg.language
        if bundle is not None:
            backend, model = bundle.text_encoder, bundle.text_model
            vocabulary = list(lc.vocabulary) or list(bundle.vocabulary)
        else:
            backend, model, vocabulary = lc.text_encoder, lc.text_model, list(lc.vocabulary)
        te = build_text_encoder(backend, model or None, lc.text_checkpoint or None,
                                device=device, max_text_length=cfg.query.max_text_length)
        if bundle is not None:
            tr = Translator.from_dict(bundle.translator, text_encoder=te, in_dim=in_dim,
                                      source=f"the translator of {source}").to(device)
            origin = source
        else:
            tr = Translator.load(lc.translator, text_encoder=te, in_dim=in_dim).to(device)
            origin = str(lc.translator)
        if log:
            log(f"translator {origin}: {in_dim}-d features -> {te.name} ({te.dim}-d); "
                f"open vocabulary: {vocabulary or 'off (linear head labels)'}")
        return cls(te, tr, list(cfg.query.negatives), vocabulary, backend=backend, model=model, origin=origin)

    def request_vocabulary(self, names: list[str]) -> None:
        with self._lock:
            self._pending = list(names)

    def apply_pending_vocabulary(self):
        """Apply a requested vocabulary (encoding it once); returns the active labeler or None."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            if not pending:
                self.labeler = None
            elif self.labeler is None:
                self.labeler = self._labeler_cls(self.text_encoder, pending)
            else:
                self.labeler.set_vocabulary(pending)
        return self.labeler

    def label(self, emb: np.ndarray, probabilities: bool = False) -> SemanticPrediction:
        """Open-vocabulary labels ``(M,) int32`` and softmax confidences ``(M,) float32`` over
        the vocabulary (cosine / translator temperature); with ``probabilities`` also the
        ``(M, K)`` softmax."""
        from concerto_ros.language.query import cosine_to_vocabulary

        logits = cosine_to_vocabulary(emb, self.labeler.embeddings) / self.translator.temperature
        labels = logits.argmax(axis=1)
        e = np.exp(logits - logits[np.arange(len(logits)), labels][:, None])
        total = e.sum(axis=1)
        conf = (1.0 / total).astype(np.float32)
        probs = (e / total[:, None]).astype(np.float32) if probabilities else None
        return SemanticPrediction(labels=labels.astype(np.int32), confidence=conf, probabilities=probs)


@dataclass(frozen=True)
class Keyframe:
    """A window to encode, voxelized when its newest frame was integrated.

    Attributes:
        window: the voxelized window (immutable arrays: safe to encode on another thread
            while the next frames are integrated), or ``None`` for a deferred keyframe
            (:meth:`PerceptionPipeline.integrate` with ``defer_build``): the window is
            voxelized when the encoder takes it (:meth:`PerceptionPipeline.build_keyframe`).
        reason: why it is a keyframe (``first``, ``translation``, ``rotation``, ``interval``,
            ``time_jump``) or ``forced``.
        integrated_at: ``time.perf_counter()`` when it was made (latency accounting).
        frames_before: the window's frames before its newest frame was pushed (restored
            when encoding fails).
    """

    window: WindowCloud | None
    reason: str
    integrated_at: float
    frames_before: tuple = ()


@dataclass(frozen=True)
class MapTarget:
    """The map voxels a query searched (see :meth:`PerceptionPipeline.query`).

    Attributes:
        coord: ``(V, 3) float32`` voxel centres, metres, in ``fixed_frame``.
        ijk: ``(V, 3) int64`` voxel indices (``floor(p / voxel_size)``).
        voxel_size: the map's voxel edge, metres.
        fixed_frame: frame of ``coord``.
        stamp_ns: stamp of the newest keyframe fused into the map (int ns).
        text_embeddings: ``(V, D) float32`` unit language embeddings.
        version: the map's version at the snapshot.
    """

    coord: np.ndarray
    ijk: np.ndarray
    voxel_size: float
    fixed_frame: str
    stamp_ns: int
    text_embeddings: np.ndarray
    version: int


@dataclass
class PipelineResult:
    """Outputs of one pipeline step over the current window (all in ``fixed_frame``).

    Attributes:
        stamp_ns: stamp of the newest frame of the window (int nanoseconds).
        fixed_frame: frame id of every coordinate below.
        window: the voxelized window (voxel representatives, inverse maps per frame).
        coord: ``(M, 3) float32`` voxel representative points, metres.
        color: ``(M, 3) uint8`` their RGB colours.
        labels: ``(M,) int32`` semantic labels (index into ``class_names``).
        confidence: ``(M,) float32`` softmax confidence of the label.
        feature_colors: ``(M, 3) uint8`` PCA colouring of the features, or ``None``.
        features: ``(M, D) float32`` per-voxel features (torch, on the pipeline device).
        class_names: label names.
        text_embeddings: ``(M, D_text) float32`` unit-norm translator embeddings (the text
            encoder's space), or ``None`` without a translator.
        timings_ms: wall time per stage of this step.
    """

    stamp_ns: int
    fixed_frame: str
    window: WindowCloud
    coord: np.ndarray
    color: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    feature_colors: np.ndarray | None
    features: torch.Tensor
    class_names: list[str]
    text_embeddings: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def ijk(self) -> np.ndarray:
        """``(M, 3) int64`` absolute voxel indices of the window's voxels."""
        return self.window.grid_coord.astype(np.int64) + self.window.min_coord

    @property
    def voxel_size(self) -> float:
        """The window's voxel edge, metres."""
        return float(self.window.voxel_size)

    def frame_labels(self, i: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """Labels ``(N_i,) int32`` and confidences ``(N_i,) float32`` of every point of
        window frame ``i`` (default: the newest), through the voxel inverse map; points whose
        voxel the encoder budget (``window.max_voxels``) dropped get label -1, confidence 0."""
        return self.window.frame_values(self.labels, i, fill=-1), self.window.frame_values(self.confidence, i, fill=0)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; otherwise ``torch.device(name)``.

    Raises:
        RuntimeError: a CUDA device is requested but CUDA is not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"model.device is '{name}' but CUDA is not available in this torch build "
                           f"({torch.__version__}); use 'cpu' or install the CUDA build (CUDA=1 scripts/setup.sh)")
    return dev


@dataclass
class ModelsInUse:
    """What a configuration runs, found without building the encoders (see :func:`models_in_use`).

    Attributes:
        label_names: names of the published labels, in label order (``label`` ``k`` of
            ``~/semantic_points`` is ``label_names[k]``): the open vocabulary when one is
            active, else the semantic head's classes.
        description: one line naming the models (bundle file and its description, or the
            separate files, or the seeded random models).
        trained_labels: ``True`` when the labels come from trained weights (a bundle's or
            file's head, or an open vocabulary through a fitted translator); ``False`` for the
            seeded random head, whose labels carry no meaning.
        bundle_path: the model bundle in use, or ``None``.
    """

    label_names: list[str]
    description: str
    trained_labels: bool
    bundle_path: Any = None


def models_in_use(cfg: PerceptionConfig, log: Callable[[str], Any] | None = None) -> ModelsInUse:
    """The label names and models that :class:`PerceptionPipeline` (and so the node) runs with
    ``cfg``, by the same rules, reading only the bundle or head file (no encoder is built):
    for tools that score or display the node's output without holding the pipeline, e.g. the
    demo's live mode.

    Raises:
        FileNotFoundError, concerto_ros.models.bundle.BundleError: as
            :func:`~concerto_ros.models.bundle.select_bundle` (a bundle the node would refuse).
    """
    from concerto_ros.models.bundle import select_bundle
    from concerto_ros.models.extractor import head_class_names
    from concerto_ros.models.scannet20 import resolve_class_names

    configured = resolve_class_names(cfg.head.class_names) or []
    chosen = select_bundle(cfg, log=log)
    vocabulary = list(cfg.language.vocabulary)
    if chosen is not None:
        b, path = chosen
        which = " (the embedded default)" if str(cfg.model.bundle).strip() == "default" else ""
        desc = f"model bundle {path}{which}: {(b.metadata or {}).get('description') or '(no description)'}"
        voc = (vocabulary or list(b.vocabulary)) if b.translator is not None else []
        if voc:
            return ModelsInUse(voc, desc + "; labels: open vocabulary", True, path)
        if b.head is not None:
            return ModelsInUse(head_class_names(b.head, configured), desc, True, path)
        return ModelsInUse(configured, desc + "; SEEDED RANDOM semantic head (the bundle has none)", False, path)
    m, c4 = cfg.model, cfg.cross4d
    parts = []
    if m.enabled:
        parts.append(f"Concerto encoder {m.checkpoint}" if m.checkpoint
                     else f"SEEDED RANDOM '{m.preset}' Concerto encoder")
    if c4.enabled:
        parts.append(f"Cross4D encoder {c4.checkpoint}" if c4.checkpoint else f"SEEDED RANDOM '{c4.preset}' Cross4D encoder")
    if cfg.language.translator and vocabulary:
        return ModelsInUse(vocabulary, "; ".join(parts + [f"translator {cfg.language.translator}, labels: open "
                                                            "vocabulary"]), True)
    if cfg.head.checkpoint:
        from pathlib import Path

        path = Path(cfg.head.checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"head.checkpoint '{path}' does not exist")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        return ModelsInUse(head_class_names(ckpt, configured, source=str(path)),
                           "; ".join(parts + [f"semantic head {path}"]), True)
    return ModelsInUse(configured, "; ".join(parts + ["SEEDED RANDOM semantic head"]), False)


class PerceptionPipeline:
    """Lifting, windowing, encoding and heads (ROS-free).

    The models come from ``model.bundle`` when it is set (one file with encoders, head,
    translator, text encoder and vocabulary; see :mod:`concerto_ros.models.bundle`), else
    from the separate ``model.*``, ``cross4d.*``, ``head.*`` and ``language.*`` settings.

    Args:
        cfg: the pipeline configuration.
        log: callable for informational messages (start-up summary).
        warn: callable for warnings (seeded random models in use); ``log`` when ``None``.

    Raises:
        RuntimeError / FileNotFoundError / ValueError: the model or head cannot be built
            or loaded (see :class:`~concerto_ros.models.extractor.FeatureExtractor`).
        concerto_ros.models.bundle.BundleError (a ValueError): the bundle is unusable or
            contradicts the settings (see :func:`~concerto_ros.models.bundle.select_bundle`).
    """

    def __init__(self, cfg: PerceptionConfig, log: Callable[[str], Any] | None = print,
                 warn: Callable[[str], Any] | None = None):
        from concerto_ros.models.bundle import select_bundle

        self.cfg = cfg
        self.log = log or (lambda _msg: None)
        self.warn = warn or self.log
        if cfg.model.num_threads > 0:
            torch.set_num_threads(cfg.model.num_threads)
        self.device = resolve_device(cfg.model.device)
        self.window = VideoPointCloud(num_frames=cfg.window.num_frames, voxel_size=cfg.window.voxel_size,
                                      max_voxels=cfg.window.max_voxels)
        chosen = select_bundle(cfg, log=self.log)
        #: the model bundle in use (``model.bundle``) and its file, or ``None``
        self.bundle, self.bundle_path = chosen if chosen is not None else (None, None)
        if self.bundle is None:
            self._build_models_from_config(cfg)
            self._warn_if_random(cfg)
        else:
            self._build_models_from_bundle(cfg)
        self.timer = StageTimer()
        self._pca_basis = None
        self._extent = WindowExtent(cfg.window.max_extent)
        #: times the window dropped old frames to stay within ``window.max_extent``
        self.window_crops = 0
        #: frames lifted into the window and the map; keyframe windows encoded
        self.frames_integrated = 0
        self.frames_processed = 0
        self.keyframes = KeyframePolicy.from_config(cfg.keyframe)
        #: compute PCA feature colours (``publish.features``): a bool, or a callable asked per
        #: keyframe (the node's: whether anyone subscribes to ~/feature_points)
        self.feature_colors_wanted = True
        #: the persistent semantic map (``map.enabled``); with an empty ``fixed_frame`` it is
        #: created with the first frame, in that frame's sensor frame
        self.map: SemanticVoxelMap | None = None
        if cfg.map.enabled and cfg.fixed_frame:
            self.map = self._build_map(cfg.fixed_frame)
        self.latest: PipelineResult | None = None
        self._latest_lock = threading.Lock()
        #: guards the window between the integration thread (push) and an encoder thread
        #: that voxelizes a deferred keyframe (:meth:`build_keyframe`)
        self._window_lock = threading.RLock()

    def _warn_if_random(self, cfg: PerceptionConfig) -> None:
        random = [name for name, on in (("Concerto encoder", cfg.model.enabled and not cfg.model.checkpoint),
                                        ("Cross4D encoder", cfg.cross4d.enabled and not cfg.cross4d.checkpoint),
                                        ("semantic head", not cfg.head.checkpoint)) if on]
        if random:
            self.warn(f"running SEEDED RANDOM {', '.join(random)} (model.bundle is empty and no checkpoint is set): "
                      "labels and features mean nothing; use model.bundle: default or trained checkpoints")

    def _set_feature_dims(self) -> None:
        if self.extractor is None and self.cross4d is None:
            raise ValueError("model.enabled and cross4d.enabled are both false: no encoder to run")
        #: width of each encoder's part of the fused feature, in concatenation order
        self.feature_dims = {"concerto": self.extractor.out_channels if self.extractor else 0,
                             "cross4d": self.cross4d.out_channels if self.cross4d else 0}

    def _build_models_from_config(self, cfg: PerceptionConfig) -> None:
        """Encoders, head and language models from the separate ``model.*``, ``cross4d.*``,
        ``head.*`` and ``language.*`` settings."""
        self.extractor = (FeatureExtractor.from_config(cfg.model, device=self.device, log=self.log)
                          if cfg.model.enabled else None)
        c4 = cfg.cross4d
        self.cross4d = None
        if c4.enabled:
            from concerto_ros.models.cross4d import Cross4DFeatureExtractor

            self.cross4d = Cross4DFeatureExtractor.from_checkpoint(
                c4.checkpoint or None, preset=c4.preset, seed=c4.seed, num_frames=c4.num_frames,
                points_per_frame=c4.points_per_frame, device=self.device, log=self.log, average=c4.average)
        self._set_feature_dims()
        self.head = build_heads(cfg.head, in_channels=self.out_channels, device=self.device, log=self.log,
                                feature_dims=self.feature_dims)
        self.language: LanguageModels | None = None
        if cfg.language.translator:
            self.language = LanguageModels.from_config(cfg, in_dim=self.out_channels,
                                                       device=str(self.device), log=self.log)

    def _build_models_from_bundle(self, cfg: PerceptionConfig) -> None:
        """Encoders, head and language models from the bundle (already checked against
        ``cfg`` by :func:`~concerto_ros.models.bundle.select_bundle`); the inference settings
        ``model.device/sparse_conv_backend/flash/patch_size/amp`` still apply."""
        b, src = self.bundle, f"bundle {self.bundle_path}"
        md = b.metadata or {}
        self.log(f"model bundle {self.bundle_path}: {md.get('description') or '(no description)'} | "
                 f"components {', '.join(b.components())}; fused feature {b.feature_dims}; trained at "
                 f"{b.voxel_size:g} m voxels" + (f"; created {md['created']}" if md.get("created") else ""))
        self.extractor = None
        if b.encoder is not None and cfg.model.enabled:
            self.extractor = FeatureExtractor.from_blob(b.encoder, cfg.model, feature=b.feature, use_color=b.use_color,
                                                        device=self.device, source=src, log=self.log)
        elif b.encoder is not None:
            self.log(f"model.enabled is false: the Concerto encoder of {src} is not run")
        elif cfg.model.enabled:
            self.log(f"{src} has no Concerto encoder: only its Cross4D encoder runs")
        self.cross4d = None
        if b.cross4d is not None:
            from concerto_ros.models.cross4d import Cross4DFeatureExtractor

            self.cross4d = Cross4DFeatureExtractor.from_blob(b.cross4d, source=src, device=self.device, log=self.log)
        if self.extractor is None and self.cross4d is None:
            from concerto_ros.models.bundle import BundleError

            raise BundleError(f"model.enabled is false and {src} has no Cross4D encoder: no encoder to run; "
                              "set model.enabled: true")
        self._set_feature_dims()
        self.head = build_heads(cfg.head, in_channels=self.out_channels, device=self.device, log=self.log,
                                feature_dims=self.feature_dims, blob=b.head, source=src)
        self.language = None
        if b.translator is not None:
            self.language = LanguageModels.from_config(cfg, in_dim=self.out_channels, device=str(self.device),
                                                       log=self.log, bundle=b, source=src)

    @property
    def out_channels(self) -> int:
        """Width of the fused per-voxel feature (Concerto, then Cross4D)."""
        return int(sum(self.feature_dims.values()))

    @property
    def class_names(self) -> list[str]:
        """Label names of the current outputs: the open vocabulary when one is set, else the
        linear head's classes."""
        if self.language is not None and self.language.labeler is not None:
            return list(self.language.labeler.vocabulary)
        return list(self.head.class_names)

    def _check_pose(self, T_world_sensor: np.ndarray, topic: str) -> np.ndarray:
        T = np.asarray(T_world_sensor, dtype=np.float64)
        problem = pose_problem(T, self.cfg.validation.max_translation)
        if problem is not None:
            raise FrameSkipped(topic, "bad_pose", problem)
        return T

    def lift(self, frame: RGBDFrame, T_world_sensor: np.ndarray) -> PointFrame:
        """Lift an RGB-D frame to points in the fixed frame.

        Args:
            frame: the decoded frame.
            T_world_sensor: ``(4, 4)`` pose of the frame's optical frame in ``fixed_frame``.

        Raises:
            FrameSkipped: ``bad_pose`` (see :func:`~concerto_ros.sensors.validation.pose_problem`),
                or ``no_valid_depth`` when no depth pixel is within ``lift.min_depth`` ..
                ``lift.max_depth`` metres.
        """
        T = self._check_pose(T_world_sensor, "/tf")
        c = self.cfg.lift
        with self.timer.stage("lift"):
            pf = lift_depth(frame, T, min_depth=c.min_depth, max_depth=c.max_depth, stride=c.pixel_stride,
                            fixed_frame=self.cfg.fixed_frame or frame.frame_id)
        if len(pf.points) == 0:
            raise FrameSkipped(self.cfg.topics.depth, "no_valid_depth",
                               f"no depth pixel within [{c.min_depth}, {c.max_depth}] m")
        return pf

    def lift_points(self, cloud: SensorCloud, T_world_sensor: np.ndarray, stamp_ns: int,
                    labels: np.ndarray | None = None, topic: str = "") -> PointFrame:
        """A decoded point cloud (LiDAR, depth camera, PCD) in the fixed frame.

        Colours come from the cloud's ``rgb`` when present, else its ``intensity`` as grey;
        points whose range is outside ``[lift.min_range, lift.max_range]`` metres are dropped
        (LiDAR ranges, separate from the depth camera's ``lift.max_depth``).

        Args:
            cloud: points in the sensor frame ``cloud.frame_id``.
            T_world_sensor: ``(4, 4)`` sensor pose in ``fixed_frame``.
            stamp_ns: acquisition time, int nanoseconds.
            labels: ``(N,) int32`` per-point labels, or ``None``.
            topic: names the source in skips (default ``topics.points``).

        Raises:
            FrameSkipped: ``bad_pose``, or ``no_valid_points`` when no point is in range.
        """
        topic = topic or self.cfg.topics.points or "points"
        T = self._check_pose(T_world_sensor, "/tf")
        c = self.cfg.lift
        with self.timer.stage("lift"):
            pf = lift_pointcloud(cloud.xyz, colors=cloud.colors, intensity=cloud.intensity, labels=labels,
                                 T_world_sensor=T, stamp_ns=stamp_ns, sensor_frame_id=cloud.frame_id,
                                 fixed_frame=self.cfg.fixed_frame or cloud.frame_id, min_range=c.min_range,
                                 max_range=c.max_range)
        if len(pf.points) == 0:
            raise FrameSkipped(topic, "no_valid_points", f"no finite point within [{c.min_range}, {c.max_range}] m")
        return pf

    def lift_frame(self, frame: SensorFrame) -> PointFrame:
        """Lift a frame of the frame stream or of a recording into the fixed frame: its exact
        points when it has a cloud, else its depth image.

        Raises:
            FrameSkipped: see :meth:`lift` and :meth:`lift_points`.
        """
        if frame.cloud is not None:
            labels = frame.labels if frame.labels is not None and frame.labels.ndim == 1 else None
            return self.lift_points(frame.cloud, frame.T_world_sensor, frame.stamp_ns, labels)
        return self.lift(frame.rgbd, frame.T_world_sensor)

    def process(self, frame: RGBDFrame, T_world_sensor: np.ndarray) -> PipelineResult:
        """Lift ``frame``, add it to the window and the map, and run the models on the window
        (every call encodes; :meth:`process_frame` follows the keyframe policy).

        Raises:
            FrameSkipped: see :meth:`lift`.
        """
        return self.process_points(self.lift(frame, T_world_sensor))

    def process_frame(self, frame: SensorFrame | PointFrame) -> PipelineResult | None:
        """The node's per-frame step in one thread: :meth:`integrate` (every frame), then
        :meth:`encode` when the frame is a keyframe (``keyframe.*``). Returns ``None`` for a
        frame that was integrated but is not a keyframe.

        Raises:
            FrameSkipped: see :meth:`lift_frame`.
        """
        keyframe = self.integrate(frame)
        return None if keyframe is None else self._encode_or_restore(keyframe)

    def process_points(self, points: PointFrame) -> PipelineResult:
        """Add an already lifted frame (RGB-D or LiDAR) to the window and the map, and run the
        models on the window whatever the keyframe policy says.

        If the models fail (an internal error), the window is restored to what it held before
        the frame, so one bad frame never costs the next good ones.
        """
        return self._encode_or_restore(self.integrate(points, force_keyframe=True))

    def push(self, frame: RGBDFrame, T_world_sensor: np.ndarray) -> None:
        """Lift ``frame`` and add it to the window (and the map's geometry) without running the
        models: for callers that need the outputs of some windows only (e.g. training on every
        n-th window); the next :meth:`process` encodes the window with it.

        Raises:
            FrameSkipped: see :meth:`lift`.
        """
        self.integrate(self.lift(frame, T_world_sensor), keyframe_policy=False)

    def integrate(self, frame: SensorFrame | PointFrame, force_keyframe: bool = False,
                  keyframe_policy: bool = True, defer_build: bool = False) -> Keyframe | None:
        """Every frame's step: lift it (a :class:`SensorFrame`), push it into the window
        (incremental, within ``window.max_extent``), integrate its geometry and colour into
        the map, and decide whether it is a keyframe (``keyframe.*``; always with
        ``force_keyframe``; never without ``keyframe_policy``).

        Args:
            defer_build: for a keyframe, do not voxelize the window now (``window=None``):
                the live runtime passes it while the encoder is busy, so the keyframes a
                newer one replaces before the encoder is free cost the integration thread
                nothing; :meth:`build_keyframe` voxelizes the window when the encoder takes it.

        Returns:
            A :class:`Keyframe` (the window voxelized now: immutable, safe to encode on
            another thread; deferred with ``defer_build``) for a keyframe, else ``None``.

        Raises:
            FrameSkipped: see :meth:`lift_frame`.
        """
        points = frame if isinstance(frame, PointFrame) else self.lift_frame(frame)
        t0 = time.perf_counter()
        with self._window_lock:
            before = self.window.frames
            self._push_points(points)
            newest = self.window.frames[-1]
            grid = self.window.newest_voxels.grid  # the newest frame's voxels, read under the lock
        window_ms = (time.perf_counter() - t0) * 1e3
        if self.cfg.map.enabled:
            with self.timer.stage("integrate"):
                self._integrate_map(newest, grid)
        self.frames_integrated += 1
        pose = newest.T_fixed_sensor if newest.T_fixed_sensor is not None else np.eye(4)
        decision = self.keyframes.update(pose, newest.stamp_ns) if keyframe_policy else None
        if not force_keyframe and (decision is None or not decision.is_keyframe):
            self.timer.add("window", window_ms)
            return None
        reason = "forced" if force_keyframe else decision.reason
        if defer_build:
            self.timer.add("window", window_ms)
            return Keyframe(window=None, reason=reason, integrated_at=time.perf_counter(), frames_before=before)
        t0 = time.perf_counter()
        with self._window_lock:
            window = self.window.build()
        self.timer.add("window", window_ms + (time.perf_counter() - t0) * 1e3)  # one sample a frame
        return Keyframe(window=window, reason=reason, integrated_at=time.perf_counter(), frames_before=before)

    def build_keyframe(self, keyframe: Keyframe) -> Keyframe | None:
        """``keyframe`` with its window voxelized: unchanged when it has one, else the
        window as it is now (it may hold frames integrated after the keyframe's: the newest
        keyframe wins). Safe to call from another thread than :meth:`integrate`.

        Returns:
            The keyframe, or ``None`` when the window was emptied meanwhile (a reset).
        """
        if keyframe.window is not None:
            return keyframe
        t0 = time.perf_counter()
        with self._window_lock:
            if not self.window.frames:
                return None
            window = self.window.build()
        self.timer.add("build", (time.perf_counter() - t0) * 1e3)
        return dataclasses.replace(keyframe, window=window)

    def flush(self) -> PipelineResult | None:
        """Encode the window when its newest frame was not encoded yet (the end of a
        recording: the last frames are not lost on a keyframe policy); ``None`` otherwise."""
        frames = self.window.frames
        latest = self.latest
        if not frames or (latest is not None and latest.stamp_ns == frames[-1].stamp_ns):
            return None
        return self.encode(Keyframe(window=self.window.build(), reason="final", integrated_at=time.perf_counter(),
                                    frames_before=frames))

    def _push_points(self, points: PointFrame) -> None:
        """Add a lifted frame to the window, keeping the window within ``window.max_extent``."""
        frames = self.window.frames
        if frames and points.stamp_ns < frames[-1].stamp_ns:
            self.log(f"time jumped back ({points.stamp_ns * 1e-9:.3f} s < {frames[-1].stamp_ns * 1e-9:.3f} s, "
                     "a looping bag?): clearing the window")
            self.reset()
            frames = ()
        points = self._extent.crop_frame(points)
        keep = self._extent.frames_to_keep(frames, points)
        if keep < len(frames):
            self.window_crops += 1
            self.log(f"the window would exceed window.max_extent = {self.cfg.window.max_extent:g} m (the pose moved "
                     f"far): dropped its {len(frames) - keep} oldest frame(s)")
            self.window.clear()
            for f in frames[len(frames) - keep:]:
                self.window.push(f)
        self.window.push(points)
        self._extent.forget_except(self.window.frames)

    def _integrate_map(self, frame: PointFrame, grid) -> None:
        if self.map is None or self.map.fixed_frame != frame.frame_id:
            if self.map is not None and len(self.map):
                self.log(f"frames now come in '{frame.frame_id}', the map was in '{self.map.fixed_frame}': new map")
            self.map = self._build_map(frame.frame_id)
        same_grid = bool(np.isclose(self.map.voxel_size, self.window.voxel_size))
        self.map.integrate_frame(frame, grid=grid if same_grid else None)

    @torch.inference_mode()
    def warm_up(self, seed: int = 0) -> float:
        """Run the encoders and heads once on a synthetic window; nothing is kept, fused,
        counted or published.

        The first keyframes otherwise pay one-off costs (lazily created kernels and caches,
        the allocator growing to the working set): on the 2-core CPU they took seconds, and
        at 30 Hz the intake queue overflowed behind them. The synthetic window has
        ``window.num_frames`` frames of points on the floor and two walls of a 4 x 4 x 2.5 m
        box in this pipeline's own frames and voxel size, ``window.max_voxels`` points per
        frame (30,000 when the budget is off), so the encoders see a window of the live size.
        The map's reserved rows are touched too (:meth:`SemanticVoxelMap.touch_reserved`).

        Returns:
            Seconds taken.
        """
        t0 = time.perf_counter()
        rng = np.random.default_rng(seed)
        wc = self.cfg.window
        n = wc.max_voxels or 30_000
        window = VideoPointCloud(num_frames=wc.num_frames, voxel_size=wc.voxel_size, max_voxels=wc.max_voxels)
        for i in range(wc.num_frames):
            uv = rng.uniform(0.0, 1.0, (n, 2))
            plane = rng.integers(0, 3, n)  # 0: floor z = 0, 1: wall x = 0, 2: wall y = 0
            pts = np.zeros((n, 3), np.float32)
            pts[:, 0] = np.where(plane == 1, 0.0, 4.0 * uv[:, 0])
            pts[:, 1] = np.where(plane == 2, 0.0, 4.0 * np.where(plane == 1, uv[:, 0], uv[:, 1]))
            pts[:, 2] = np.where(plane == 0, 0.0, 2.5 * uv[:, 1])
            T = np.eye(4)
            T[:3, 3] = (2.0 + 0.05 * i, 2.0, 1.2)
            window.push(PointFrame(stamp_ns=(i + 1) * 100_000_000, points=pts,
                                   colors=rng.integers(0, 256, (n, 3), dtype=np.uint8),
                                   frame_id=self.cfg.fixed_frame or "warm_up", sensor_frame_id="warm_up_sensor",
                                   T_fixed_sensor=T))
        self._heads(self._features(window.build(), {}))
        if self.map is not None:
            self.map.touch_reserved()
        return time.perf_counter() - t0

    def _encode_or_restore(self, keyframe: Keyframe) -> PipelineResult:
        try:
            return self.encode(keyframe)
        except Exception:
            self.window.clear()
            for f in keyframe.frames_before:
                self.window.push(f)
            raise

    @torch.inference_mode()
    def encode(self, keyframe: Keyframe | WindowCloud) -> PipelineResult:
        """Encoders and heads on a keyframe's window, fused into the map (the expensive step;
        thread-safe against :meth:`integrate` on another thread).

        Returns:
            The :class:`PipelineResult` of the window (also kept as :attr:`latest`).
        """
        win = keyframe.window if isinstance(keyframe, Keyframe) else keyframe
        t = {}
        feats = self._features(win, t)
        t0 = time.perf_counter()
        emb, pred = self._heads(feats)
        fcolors = None
        wanted = self.feature_colors_wanted
        if self.cfg.publish.features and (wanted() if callable(wanted) else wanted):
            fcolors, self._pca_basis = pca_colors(feats, basis=self._pca_basis, return_basis=True)
        t["heads"] = (time.perf_counter() - t0) * 1e3
        if self.map is not None and self.map.fixed_frame == win.frame_id:
            t0 = time.perf_counter()
            self.map.fuse_window(win, pred.confidence, class_probs=pred.probabilities, embeddings=emb,
                                 class_names=self.class_names)
            t["fuse"] = (time.perf_counter() - t0) * 1e3
        for k, v in t.items():
            self.timer.add(k, v)
        self.frames_processed += 1
        result = PipelineResult(
            stamp_ns=int(win.stamps_ns[-1]), fixed_frame=win.frame_id, window=win,
            coord=win.coord, color=win.color, labels=pred.labels, confidence=pred.confidence,
            feature_colors=fcolors, features=feats, class_names=self.class_names,
            text_embeddings=emb, timings_ms=t)
        with self._latest_lock:
            self.latest = result
        return result

    def _features(self, win: WindowCloud, t: dict) -> torch.Tensor:
        """The fused ``(M, D)`` feature (Concerto, then Cross4D); stage times into ``t``."""
        parts = []
        for name, model in (("encoder", self.extractor), ("cross4d", self.cross4d)):
            if model is None:
                continue
            t0 = time.perf_counter()
            with autocast(self.cfg.cross4d.precision if name == "cross4d" else "fp32", self.device):
                parts.append(model.encode_window(win).to(self.device).float())
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            t[name] = (time.perf_counter() - t0) * 1e3
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _heads(self, feats: torch.Tensor) -> tuple[np.ndarray | None, SemanticPrediction]:
        """Translator embeddings (or ``None``) and the labels: the open vocabulary when one is
        set, else the linear head (with class probabilities when the map fuses them)."""
        probs = self.map is not None
        if self.language is None:
            return None, self.head.predict(feats, probabilities=probs)
        emb = self.language.translator.embed(feats, precision=self.cfg.language.precision)
        if self.language.apply_pending_vocabulary() is not None:
            return emb, self.language.label(emb, probabilities=probs)
        return emb, self.head.predict(feats, probabilities=probs)

    def _build_map(self, fixed_frame: str) -> SemanticVoxelMap:
        """The semantic map in ``fixed_frame`` with this pipeline's identity, or the one in
        ``map.load_path``.

        Raises:
            concerto_ros.mapping.MapMismatchError: the saved map was made with another voxel
                size, fixed frame, model or text encoder (the message names each).
        """
        mc, lang = self.cfg.map, self.language
        identity = dict(class_names=self.class_names, model_id=self.model_id,
                        text_encoder=lang.backend if lang else "", text_model=lang.model if lang else "",
                        temperature=float(lang.translator.temperature) if lang else 0.0,
                        embedding_dim=int(lang.text_encoder.dim) if lang else 0, log=self.log)
        fresh = SemanticVoxelMap(mc.voxel_size or self.cfg.window.voxel_size, fixed_frame, max_voxels=mc.max_voxels,
                                 radius=mc.radius, evict_slack=mc.evict_slack, threads=mc.fusion_threads, **identity)
        if not mc.load_path:
            return fresh
        loaded = SemanticVoxelMap.load(mc.load_path, expect=fresh.identity, ignore=("class_names",),
                                       max_voxels=mc.max_voxels, radius=mc.radius, evict_slack=mc.evict_slack,
                                       threads=mc.fusion_threads, log=self.log)
        self.log(f"map {mc.load_path}: {len(loaded)} voxels loaded")
        return loaded

    @property
    def model_id(self) -> str:
        """Identity of the models for saved maps: the bundle file's SHA-256, else the encoder,
        head and translator settings (files or seeded random presets)."""
        if self.bundle_path is not None:
            import hashlib

            return "bundle sha256:" + hashlib.sha256(Path(self.bundle_path).read_bytes()).hexdigest()[:16]
        m, c4, h, lang = self.cfg.model, self.cfg.cross4d, self.cfg.head, self.cfg.language
        parts = [f"concerto {m.checkpoint or f'random {m.preset} seed {m.seed}'} {m.feature}" if m.enabled else "",
                 f"cross4d {c4.checkpoint or f'random {c4.preset} seed {c4.seed}'}" if c4.enabled else "",
                 f"head {h.checkpoint or 'random'}", f"translator {lang.translator or 'none'}"]
        return "; ".join(p for p in parts if p)

    def query(self, text: str, negatives: list[str] | None = None, threshold: float = 0.0,
              top_k: int = 0, scope: str = "window"):
        """Relevance of every voxel of the latest window, or of the map, to a free-text query.

        Args:
            text: the query, e.g. "red chair".
            negatives: texts to contrast with; ``None`` or empty: ``query.negatives``.
            threshold: relevance in ``[0, 1]`` from which a voxel matches; ``<= 0``:
                ``query.default_threshold``.
            top_k: best voxels to return; ``0``: ``query.default_top_k``.
            scope: ``"window"`` (the latest encoded window) or ``"map"`` (every voxel the map
                holds language features for, also those that left the window).

        Returns:
            ``(target, query_result)``: what was searched (a :class:`PipelineResult` for the
            window, a :class:`MapTarget` for the map; both have ``coord``, ``ijk``,
            ``voxel_size``, ``stamp_ns``, ``fixed_frame``) and a
            :class:`~concerto_ros.language.query.QueryResult` (relevance per voxel, top-k
            indices into ``target.coord``, centroid in the fixed frame).

        Raises:
            QueryError: no translator, nothing encoded yet, an empty map, or an unknown scope.
            ValueError: empty or overlong text (message says which).
        """
        if self.language is None:
            raise QueryError("no translator loaded (set language.translator to a file from "
                             "`concerto train translator`, or model.bundle to a bundle with a translator)")
        if scope not in ("window", "map"):
            raise QueryError(f"unknown query scope {scope!r}: use 'map' or 'window'")
        target = self._map_target() if scope == "map" else self._window_target()
        q = self.cfg.query
        qr = self.language.scorer.score(
            target.text_embeddings, text, coords=target.coord,
            k=int(top_k) if top_k > 0 else q.default_top_k,
            threshold=float(threshold) if threshold > 0 else q.default_threshold,
            negatives=list(negatives) if negatives else list(q.negatives))
        return target, qr

    def _window_target(self) -> "PipelineResult":
        with self._latest_lock:
            result = self.latest
        if result is None or result.text_embeddings is None:
            raise QueryError("no frame processed yet: nothing to query")
        return result

    def _map_target(self) -> "MapTarget":
        vmap = self.map
        if vmap is None:
            raise QueryError("the map is off (map.enabled: false): query scope 'window'")
        snap = vmap.snapshot(embeddings=True)
        if len(snap) == 0:
            raise QueryError("the map holds no language features yet: nothing to query")
        return MapTarget(coord=snap.coords, ijk=snap.ijk, voxel_size=snap.voxel_size, fixed_frame=snap.fixed_frame,
                         stamp_ns=self.latest.stamp_ns if self.latest is not None else 0,
                         text_embeddings=snap.embeddings,
                         version=snap.version)

    def set_vocabulary(self, names: list[str]) -> None:
        """Use ``names`` as open-vocabulary labels from the next frame on (``[]``: back to the
        linear head). Thread-safe; the text encoder runs once, in the worker.

        Raises:
            QueryError: no translator loaded (a non-empty vocabulary needs one).
        """
        if self.language is None:
            if names:
                raise QueryError("an open vocabulary needs a translator (language.translator)")
            return
        self.language.request_vocabulary(list(names))

    def reset(self) -> None:
        """Forget the window and the last keyframe (e.g. after a jump back in time when a bag
        loops); the map is kept (see :meth:`SemanticVoxelMap.clear`)."""
        with self._window_lock:
            self.window.clear()
        self.keyframes.reset()
        self._pca_basis = None
