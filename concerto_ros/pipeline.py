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

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from concerto_ros.cloud.extent import WindowExtent
from concerto_ros.cloud.window import VideoPointCloud, WindowCloud
from concerto_ros.config import PerceptionConfig
from concerto_ros.models.extractor import FeatureExtractor, build_heads
from concerto_ros.models.heads import SemanticPrediction, pca_colors
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

    def label(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Open-vocabulary labels ``(M,) int32`` and softmax confidences ``(M,) float32`` over
        the vocabulary (cosine / translator temperature)."""
        from concerto_ros.language.query import cosine_to_vocabulary

        cos = cosine_to_vocabulary(emb, self.labeler.embeddings)
        labels = cos.argmax(axis=1)
        top = cos[np.arange(len(cos)), labels]
        conf = 1.0 / np.exp((cos - top[:, None]) / self.translator.temperature).sum(axis=1)
        return labels.astype(np.int32), conf.astype(np.float32)


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

    def frame_labels(self, i: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """Labels ``(N_i,) int32`` and confidences ``(N_i,) float32`` of every point of
        window frame ``i`` (default: the newest), through the voxel inverse map."""
        inv = self.window.frame_inverse(i)
        return self.labels[inv], self.confidence[inv]


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
        self.window = VideoPointCloud(num_frames=cfg.window.num_frames, voxel_size=cfg.window.voxel_size)
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
        self.frames_processed = 0
        self.latest: PipelineResult | None = None
        self._latest_lock = threading.Lock()

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

            if not cfg.cross4d.enabled:
                self.log(f"{src} holds a Cross4D encoder: it runs although cross4d.enabled is false (the bundle "
                         "decides which encoders run)")
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
        """Lift ``frame``, add it to the window and run the models on the window.

        Raises:
            FrameSkipped: see :meth:`lift`.
        """
        return self.process_points(self.lift(frame, T_world_sensor))

    def process_frame(self, frame: SensorFrame) -> PipelineResult:
        """:meth:`lift_frame`, then :meth:`process_points`."""
        return self.process_points(self.lift_frame(frame))

    def push(self, frame: RGBDFrame, T_world_sensor: np.ndarray) -> None:
        """Lift ``frame`` and add it to the window without running the models: for callers that
        need the outputs of some windows only (e.g. training on every n-th window); the next
        :meth:`process` encodes the window with it. Outputs equal those of calling
        :meth:`process` on every frame.

        Raises:
            FrameSkipped: see :meth:`lift`.
        """
        self._push_points(self.lift(frame, T_world_sensor))

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

    def process_points(self, points: PointFrame) -> PipelineResult:
        """Add an already lifted frame (RGB-D or LiDAR) to the window and run the models.

        If anything after the push fails (an internal error), the window is restored to what
        it held before, so one bad frame never costs the next good ones.
        """
        before = self.window.frames
        t0 = time.perf_counter()
        self._push_points(points)
        push_ms = (time.perf_counter() - t0) * 1e3
        try:
            return self._run_models(push_ms)
        except Exception:
            self.window.clear()
            for f in before:
                self.window.push(f)
            raise

    @torch.inference_mode()
    def _run_models(self, push_ms: float = 0.0) -> PipelineResult:
        t = {}
        t0 = time.perf_counter()
        win = self.window.build()
        t["window"] = push_ms + (time.perf_counter() - t0) * 1e3
        parts = []
        if self.extractor is not None:
            t0 = time.perf_counter()
            parts.append(self.extractor.encode_window(win))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            t["encoder"] = (time.perf_counter() - t0) * 1e3
        if self.cross4d is not None:
            t0 = time.perf_counter()
            parts.append(self.cross4d.encode_window(win).to(self.device))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            t["cross4d"] = (time.perf_counter() - t0) * 1e3
        feats = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        t0 = time.perf_counter()
        emb = None
        if self.language is not None:
            emb = self.language.translator.embed(feats)
            voc = self.language.apply_pending_vocabulary()
        if self.language is not None and voc is not None:
            labels, conf = self.language.label(emb)
            pred = SemanticPrediction(labels=labels, confidence=conf)
        else:
            pred = self.head.predict(feats)
        fcolors = None
        if self.cfg.publish.features:
            fcolors, self._pca_basis = pca_colors(feats, basis=self._pca_basis, return_basis=True)
        t["heads"] = (time.perf_counter() - t0) * 1e3
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

    def query(self, text: str, negatives: list[str] | None = None, threshold: float = 0.0,
              top_k: int = 0):
        """Relevance of every voxel of the latest window to a free-text query.

        Args:
            text: the query, e.g. "red chair".
            negatives: texts to contrast with; ``None`` or empty: ``query.negatives``.
            threshold: relevance in ``[0, 1]`` from which a voxel matches; ``<= 0``:
                ``query.default_threshold``.
            top_k: best voxels to return; ``0``: ``query.default_top_k``.

        Returns:
            ``(result, query_result)``: the :class:`PipelineResult` queried and a
            :class:`~concerto_ros.language.query.QueryResult` (relevance ``(M,)``, top-k
            indices into ``result.coord``, centroid in ``fixed_frame``).

        Raises:
            QueryError: no translator configured, or no frame processed yet.
            ValueError: empty or overlong text (message says which).
        """
        if self.language is None:
            raise QueryError("no translator loaded (set language.translator to a file from "
                             "`concerto train translator`, or model.bundle to a bundle with a translator)")
        with self._latest_lock:
            result = self.latest
        if result is None or result.text_embeddings is None:
            raise QueryError("no frame processed yet: nothing to query")
        q = self.cfg.query
        qr = self.language.scorer.score(
            result.text_embeddings, text, coords=result.coord,
            k=int(top_k) if top_k > 0 else q.default_top_k,
            threshold=float(threshold) if threshold > 0 else q.default_threshold,
            negatives=list(negatives) if negatives else list(q.negatives))
        return result, qr

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
        """Forget the window (e.g. after a jump back in time when a bag loops)."""
        self.window.clear()
        self._pca_basis = None
