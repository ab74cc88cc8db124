"""Configuration of the perception pipeline: one schema for YAML files and ROS parameters.

Every setting is a field of a nested dataclass below, with its description, unit and valid
range in the field's metadata. The same dotted names (``window.voxel_size``) are

* the keys of ``config/*.yaml`` (under ``<node>: ros__parameters:`` like any ROS 2 params
  file, or at the top level),
* the ROS 2 parameters the node declares (with descriptors built from this metadata), and
* the overrides accepted by the command-line tools (``--set window.num_frames=3``).

So a deployment is described once and behaves the same live, in replay and in training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml


def _f(default, description: str, *, lo=None, hi=None, choices=None, factory=None):
    """A dataclass field with the metadata used for validation and ROS descriptors."""
    meta = {"description": description, "lo": lo, "hi": hi, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TopicsConfig:
    color: str = _f("/camera/color/image_raw", "Colour image topic (sensor_msgs/Image: rgb8, bgr8, rgba8, bgra8, mono8).")
    depth: str = _f("/camera/depth/image_raw", "Depth image topic registered to the colour camera (sensor_msgs/Image: 16UC1 millimetres or 32FC1 metres).")
    camera_info: str = _f("/camera/color/camera_info", "CameraInfo of the colour camera; K gives the intrinsics (distortion is ignored).")
    points: str = _f("", "LiDAR/depth-camera cloud topic (sensor_msgs/PointCloud2 with x y z and optional rgb/intensity). Empty: not subscribed.")


@dataclass
class QosConfig:
    input: str = _f("reliable", "QoS of the sensor subscriptions: 'reliable' (default: loses nothing; a reliable subscription cannot connect to a best-effort publisher, which the node reports at ERROR) or 'sensor_data' (best effort, matches every publisher). Measured on a busy 2-core machine: with publishers on Fast DDS's default 512 KiB shared-memory segment best effort lost 48-86 % of 640x480 and 1280x720 images, with config/fastdds_large_data.xml none.", choices=["sensor_data", "reliable"])
    input_depth: int = _f(5, "History depth of each sensor subscription (messages).", lo=1, hi=100)
    output: str = _f("reliable", "QoS of the published clouds: 'reliable' (RViz default) or 'best_effort'.", choices=["reliable", "best_effort"])


@dataclass
class SyncConfig:
    slop: float = _f(0.05, "Approximate-time synchronisation: largest stamp difference (seconds) between colour, depth and camera info of one frame.", lo=0.0, hi=1.0)
    queue_size: int = _f(10, "Messages kept per stream while waiting for a match.", lo=1, hi=1000)


@dataclass
class TfConfig:
    timeout: float = _f(0.2, "How long (seconds) the worker waits for the camera pose at a frame's stamp before skipping the frame.", lo=0.0, hi=10.0)
    cache_time: float = _f(30.0, "Transform history kept (seconds).", lo=1.0, hi=3600.0)
    qos: str = _f("best_effort", "Reliability of the /tf subscription (/tf_static stays reliable and transient-local): 'best_effort' (default) or 'reliable' (tf2_ros's choice). A reliable reader delivers in order, so one lost /tf sample holds every later one back until the publisher repairs it (Fast DDS: at its next heartbeat, 3 s by default): measured on 2 cores at 10 Hz, poses then reached the node 0.7-1.0 s late (median) and 13-14 % of the frames were skipped as no_transform; best effort, which matches reliable publishers too, loses only the lost sample (lookups interpolate across it): /tf p99 7 ms, 98.6 % of the frames integrated.", choices=["best_effort", "reliable"])
    listener_thread: bool = _f(True, "Receive /tf and /tf_static on a node and thread of their own (as tf2_ros's TransformListener with spin_thread), so that poses are not queued behind the sensor callbacks in the node's executor (which takes one message per subscription per wait). Applies to the project's TF buffer (ROS 2 from PyPI); with tf2_ros its listener is used.")


@dataclass
class LiftConfig:
    min_depth: float = _f(0.1, "Nearest valid depth of the depth camera (metres); closer pixels are dropped.", lo=0.0, hi=100.0)
    max_depth: float = _f(8.0, "Farthest valid depth of the depth camera (metres); farther pixels are dropped.", lo=0.01, hi=200.0)
    min_range: float = _f(0.3, "Nearest valid LiDAR return (metres, Euclidean range from the sensor origin) for PointCloud2 input; closer points (the robot itself, and no-return pixels that drivers such as Ouster's report as zeros) are dropped.", lo=0.0, hi=100.0)
    pixel_stride: int = _f(1, "Use every n-th pixel in u and v (1 = all pixels).", lo=1, hi=16)
    colorize_points: bool = _f(True, "When a colour camera is configured beside the LiDAR (topics.color and topics.camera_info with topics.points), give the LiDAR points the camera sees (z-buffered) the colour of their pixel in the nearest colour image; the others keep their intensity grey. The camera's pose relative to the LiDAR comes from TF.")
    colorize_max_dt: float = _f(0.1, "Largest time difference (seconds) between a cloud and the colour image that colours it.", lo=0.0, hi=5.0)
    max_range: float = _f(100.0, "Farthest valid LiDAR return (metres, Euclidean range from the sensor origin) for PointCloud2 input; separate from the depth camera's max_depth. 64-beam sensors (Ouster OS1-64, Velodyne HDL-64E) are rated to about 120 m.", lo=0.1, hi=1000.0)


@dataclass
class WindowConfig:
    num_frames: int = _f(5, "Frames T in the sliding video point cloud.", lo=1, hi=64)
    voxel_size: float = _f(0.02, "Grid sampling voxel edge (metres); 0.02 indoor, 0.05 outdoor LiDAR.", lo=0.005, hi=1.0)
    max_extent: float = _f(200.0, "Largest extent (metres, along any axis) of the window. When a new frame would make the window wider (a pose jump, a long drive), the oldest frames are dropped; a single frame wider than this is cropped around its sensor. Must stay below 65535 voxels (1310 m at 0.02 m), the serialization limit of the encoder.", lo=1.0, hi=100000.0)
    max_voxels: int = _f(0, "Encoder budget: the encoder sees only the window's max_voxels voxels nearest the newest camera position, so its latency is bounded on any sensor; points of the dropped voxels get no label. 0 = no budget.", lo=0, hi=10_000_000)


@dataclass
class ValidationConfig:
    max_translation: float = _f(100000.0, "Largest accepted distance (metres) of a sensor pose from the fixed frame's origin; farther poses are skipped as bad_pose (float32 points lose resolution beyond).", lo=1.0, hi=1.0e7)
    max_stamp_jump: float = _f(60.0, "A message stamped more than this (seconds) after the newest stamp is held as a possible clock error; it is used only when validation.jump_confirm consecutive messages confirm the jump, else skipped as bad_stamp.", lo=0.1, hi=1.0e6)
    jump_confirm: int = _f(3, "Consecutive messages that confirm a forward time jump (of the sensor stream, and per TF edge).", lo=1, hi=100)


@dataclass
class KeyframeConfig:
    min_translation: float = _f(0.1, "Keyframe criterion (the encoder runs on keyframes only): the sensor moved at least this many metres since the last keyframe (0 = criterion off).", lo=0.0, hi=100.0)
    min_rotation: float = _f(10.0, "Keyframe criterion: the sensor turned at least this many degrees since the last keyframe (0 = criterion off).", lo=0.0, hi=180.0)
    max_interval: float = _f(1.0, "Keyframe criterion: this many seconds passed since the last keyframe (0 = criterion off). Every frame, keyframe or not, is integrated into the map's geometry. With all three criteria 0 every frame is a keyframe.", lo=0.0, hi=3600.0)


@dataclass
class MapConfig:
    enabled: bool = _f(True, "Keep a persistent semantic voxel map in fixed_frame: geometry and colour of every frame, class probabilities and language embeddings of every encoded keyframe window.")
    voxel_size: float = _f(0.0, "Voxel edge of the map (metres); 0 = window.voxel_size (then the map reuses the window's voxelisation of each frame).", lo=0.0, hi=1.0)
    max_voxels: int = _f(500_000, "Memory bound of the map in voxels (0 = none); beyond it the farthest voxels from the sensor, then the oldest, are evicted. About 0.93 kB per voxel with 20 classes and 384-d embeddings (500k voxels: ~470 MB).", lo=0, hi=50_000_000)
    radius: float = _f(0.0, "Voxels farther than this many metres from the newest sensor position are evicted (0 = no radius bound).", lo=0.0, hi=100000.0)
    evict_slack: float = _f(0.1, "Eviction amortisation: the count bound evicts once the map exceeds (1 + evict_slack) x max_voxels, down to (1 - evict_slack) x max_voxels; the radius bound is checked when the sensor moved evict_slack x radius.", lo=0.0, hi=0.5)
    fusion_threads: int = _f(0, "Threads of the embedding fusion kernel (0 = min(4, CPU count)).", lo=0, hi=64)
    publish_rate: float = _f(1.0, "Rate (Hz) of ~/map/semantic_points (x y z rgb label confidence observations), published only while subscribed; 0 = off.", lo=0.0, hi=30.0)
    features_rate: float = _f(0.2, "Rate (Hz) of ~/map/language_features, which carries only the voxels updated since its previous message, published only while subscribed; 0 = off.", lo=0.0, hi=10.0)
    save_path: str = _f("", "Map file (.npz) that ~/save_map writes by default and the node writes at shutdown; empty = only on request.")
    load_path: str = _f("", "Map file (.npz) loaded at start-up; refused (start-up fails) when its voxel size, fixed frame, model or text encoder differ. Empty = start with an empty map.")


@dataclass
class ModelConfig:
    enabled: bool = _f(True, "Run the Concerto PTv3 encoder (its features come first in the fused feature).")
    bundle: str = _f("default", "Model bundle: 'default' (the bundle embedded in the package, trained on generated indoor rooms at 0.02 m), or a file from `concerto train ...` / `concerto bundle pack`. It supplies the encoder(s), feature layout, semantic head, translator, text encoder and vocabulary; with a file, model.checkpoint, cross4d.checkpoint, head.checkpoint and language.translator must be empty ('default' steps aside when any of them is set). Empty: models from those separate settings, seeded random where they are empty (said at WARN: labels and features then mean nothing).")
    preset: str = _f("tiny", "Encoder preset when the checkpoint has no config: tiny, small, base, large, concerto_large_video.")
    checkpoint: str = _f("", "Encoder checkpoint path ({'config','state_dict'} or a Pointcept training checkpoint). Empty: seeded random weights of the preset (demo only).")
    seed: int = _f(0, "Seed of the random weights used when no checkpoint is given.", lo=0, hi=2**31 - 1)
    device: str = _f("cpu", "Torch device: cpu, cuda, cuda:N, or auto (cuda when available).")
    sparse_conv_backend: str = _f("auto", "Submanifold sparse convolution backend: auto (spconv on CUDA, the project's own on CPU), torch, spconv.", choices=["auto", "torch", "spconv"])
    num_threads: int = _f(0, "CPU threads for torch (0 = torch's default).", lo=0, hi=256)
    amp: str = _f("none", "Autocast precision of the encoder on CUDA: none (float32), bf16 or fp16. Only none is accepted on the CPU (start-up fails otherwise).", choices=["none", "bf16", "fp16"])
    flash: str = _f("auto", "Attention patches: auto (flash-attn varlen when installed and on CUDA), on (flash patch layout; SDPA where flash-attn is missing), off (the reference's non-flash layout, as in the golden test).", choices=["auto", "on", "off"])
    patch_size: int = _f(0, "Voxels per attention patch in every stage; 0 keeps the checkpoint's (1024 for released Concerto checkpoints).", lo=0, hi=65536)
    runtime: str = _f("torch", "Encoder runtime: torch (eager PyTorch; the default CPU path) or onnxruntime (the exported ONNX graph under ONNX Runtime: model.onnx, or an export made at start-up). Heads and translator run in torch either way.", choices=["torch", "onnxruntime"])
    onnx: str = _f("", "ONNX file for model.runtime: onnxruntime, from `concerto export` (it must hold the configured encoder's weights and feature layout). Empty: the encoder is exported at start-up into $XDG_CACHE_HOME/concerto_ros/export (~/.cache/...; once per model, reused afterwards).")
    onnx_provider: str = _f("auto", "ONNX Runtime execution provider for model.runtime: onnxruntime: auto (cuda on a CUDA model.device, else cpu), cpu, cuda, tensorrt (cuda and tensorrt need the onnxruntime-gpu wheel).", choices=["auto", "cpu", "cuda", "tensorrt"])
    feature: str = _f("concat3", "Per-point feature for the heads: concat3 (last three levels concatenated and copied down, as Concerto's README) or all_levels (every level, as the released linear-probe heads).", choices=["concat3", "all_levels"])


@dataclass
class Cross4DConfig:
    enabled: bool = _f(False, "Run the Cross4D 4D point-cloud-video encoder on the window's last frames and concatenate its features after Concerto's (the separate model settings; with model.bundle the bundle decides: the default bundle has one).")
    checkpoint: str = _f("", "Checkpoint from `concerto train cross4d`. Empty: seeded random preset (demo only).")
    preset: str = _f("tiny", "Cross4D preset when no checkpoint is given.", choices=["tiny", "small", "base"])
    seed: int = _f(0, "Seed of the random weights used when no checkpoint is given.", lo=0, hi=2**31 - 1)
    num_frames: int = _f(4, "Last T frames of the window the 4D encoder sees (a checkpoint's own value wins).", lo=1, hi=64)
    points_per_frame: int = _f(2048, "Points sampled per frame for the 4D encoder (a checkpoint's own value wins).", lo=64, hi=65536)
    average: str = _f("points", "How per-frame features become per-voxel ones: 'points' (mean over the voxel's points of all encoded frames) or 'newest' (newest frame that sees the voxel).", choices=["points", "newest"])
    precision: str = _f("fp32", "Precision of the Cross4D encoder at inference: fp32, bf16 (autocast: its matrix products in bfloat16; 1.7x faster on CPUs with AVX512-BF16, 99.7% of the default bundle's window labels unchanged), or auto (bf16 where the CPU or GPU supports it natively, else fp32). config/perception_cpu.yaml sets auto.", choices=["auto", "fp32", "bf16"])


@dataclass
class HeadConfig:
    checkpoint: str = _f("", "Linear semantic head checkpoint. Empty: a seeded random head (demo only).")
    class_names: list = _f(None, "Class names of the semantic head, in label order. [scannet20] expands to the 20 ScanNet classes of the released linear-probe head; a 20-class head checkpoint without class names gets them automatically.", factory=lambda: [
        "unlabeled", "floor", "wall", "table", "chair", "sofa", "cabinet", "bookshelf", "door"])


@dataclass
class LanguageConfig:
    translator: str = _f("", "Translator file (linear map from point features to the text space, from `concerto train translator`). Empty: no language features; queries answer with an error status.")
    text_encoder: str = _f("sentence-transformers", "Text encoder backend the translator was fitted with.", choices=["sentence-transformers", "open_clip"])
    text_model: str = _f("", "sentence-transformers: local model directory (empty = the bundled all-MiniLM-L6-v2); open_clip: architecture name, e.g. ViT-B-32.")
    text_checkpoint: str = _f("", "open_clip: local weights file of the CLIP model.")
    precision: str = _f("auto", "Precision of the translator's matrix product that embeds every window voxel: fp32, bf16 (float32 accumulation; 3-4x faster on CPUs with AVX512-BF16/AMX, cosine to fp32 >= 0.99999), or auto (bf16 where the CPU or GPU supports it natively, else fp32).", choices=["auto", "fp32", "bf16"])
    vocabulary: list = _f(None, "Class names for open-vocabulary labels on ~/semantic_points (changeable at runtime, applied to the next frame). Empty: labels come from the linear semantic head.", factory=list)


@dataclass
class QueryConfig:
    max_text_length: int = _f(200, "Longest accepted query text (characters).", lo=1, hi=10000)
    default_threshold: float = _f(0.5, "Relevance (0..1) from which a point counts as a match when a request gives threshold <= 0.", lo=0.0, hi=1.0)
    default_top_k: int = _f(20, "Best-matching points returned when a request gives top_k = 0.", lo=1, hi=100000)
    max_top_k: int = _f(1000, "Largest top_k a request may ask for; larger requests are capped to it (said in the answer's message).", lo=1, hi=1000000)
    max_negatives: int = _f(16, "Most negative texts a request may carry; empty ones are dropped, extra ones are refused with a message.", lo=0, hi=1000)
    max_regions: int = _f(10, "Most regions (connected voxels with relevance >= the threshold) a query answers with, best mean relevance first.", lo=1, hi=1000)
    min_region_voxels: int = _f(20, "Smallest region reported, in voxels (20 voxels of 0.02 m: about 80 square centimetres of surface); smaller fragments are left out of the regions (not of the relevance cloud).", lo=1, hi=1000000)
    negatives: list = _f(None, "Default negative texts the query is contrasted with (LERF-style relevance).", factory=lambda: ["object", "things", "stuff", "texture"])


@dataclass
class WorkerConfig:
    queue_depth: int = _f(8, "Synced frames waiting for the integration thread (which lifts every frame into the window and the map); when full the oldest is dropped and counted (frames_dropped_queue). Keyframes wait in a slot of their own: a newer keyframe replaces one the encoder has not started.", lo=1, hi=64)
    yield_backlog: int = _f(4, "Integration before encoding: the encoder thread waits before starting a keyframe while more than this many synced frames wait for the integration thread (for at most worker.max_yield s), then takes the newest keyframe. Keeps a busy encoder on a small CPU from costing frames. 0 = never wait.", lo=0, hi=64)
    max_yield: float = _f(0.5, "Longest wait of the encoder thread for the integration backlog (seconds), so that keyframes keep coming when integration cannot catch up.", lo=0.0, hi=10.0)
    trim_period: float = _f(60.0, "Seconds between returns of freed heap memory to the OS (glibc malloc_trim), done by the encoder thread between keyframes. The encoder keeps freed memory for reuse (faster keyframes); this bounds what heap fragmentation adds to the resident set over hours. 0 = never.", lo=0.0, hi=86400.0)
    warm_up: bool = _f(True, "At start-up, before the first frame, run the encoders and heads once on a synthetic window of the live size (window.max_voxels) and map the memory the map reserves for map.max_voxels (about 0.9 kB per voxel, so the resident set starts near its full-map size), so that the first seconds of a stream do not pay one-off costs (kernel set-up, page faults) while frames queue behind them.")


@dataclass
class DiagnosticsConfig:
    window: float = _f(10.0, "Seconds of history the /diagnostics level is computed from: ERROR if an internal error happened in that window, WARN if a message was skipped, else OK.", lo=1.0, hi=3600.0)
    period: float = _f(1.0, "Seconds between /diagnostics messages.", lo=0.1, hi=60.0)
    max_transport_ms: float = _f(100.0, "The node's second /diagnostics status, 'input delivery', turns WARN when the p99 transport delay of an input topic (publisher write to this node's middleware, over its recent messages) exceeds this many milliseconds. Late camera images usually mean the publisher's Fast DDS shared-memory segment is too small for them (give it config/fastdds_large_data.xml).", lo=1.0, hi=60000.0)


@dataclass
class PublishConfig:
    features: bool = _f(True, "Publish ~/feature_points (features coloured by PCA) besides ~/semantic_points.")


@dataclass
class PerceptionConfig:
    """All settings of the perception pipeline and node (see module docstring)."""

    fixed_frame: str = _f("odom", "Fixed frame (REP-105) the video point cloud and outputs live in. Empty: the sensor's own frame with identity poses (a sensor without localisation; frames of a moving sensor then do not align). Offline replay falls back to that, with a note, when the recording's TF has no such frame.")
    skip_log_period: float = _f(5.0, "Throttle period (seconds) of the warnings about skipped messages.", lo=0.0, hi=3600.0)
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    qos: QosConfig = field(default_factory=QosConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    tf: TfConfig = field(default_factory=TfConfig)
    lift: LiftConfig = field(default_factory=LiftConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    keyframe: KeyframeConfig = field(default_factory=KeyframeConfig)
    map: MapConfig = field(default_factory=MapConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cross4d: Cross4DConfig = field(default_factory=Cross4DConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)


@dataclass(frozen=True)
class ParamSpec:
    """One leaf setting: dotted name, default, type and validation metadata."""

    name: str
    default: Any
    type: type
    description: str
    lo: float | None
    hi: float | None
    choices: list | None


def iter_specs(cfg_cls=PerceptionConfig, prefix: str = "") -> Iterator[ParamSpec]:
    """Yield a :class:`ParamSpec` per leaf field, in declaration order."""
    for f in dataclasses.fields(cfg_cls):
        name = prefix + f.name
        if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.type.endswith("Config")):
            sub = f.default_factory  # type: ignore[misc]
            yield from iter_specs(sub, name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        typ = {"str": str, "int": int, "float": float, "bool": bool, "list": list}.get(
            f.type if isinstance(f.type, str) else f.type.__name__, type(default))
        yield ParamSpec(name, default, typ, f.metadata.get("description", ""),
                        f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("choices"))


SPECS: dict[str, ParamSpec] = {s.name: s for s in iter_specs()}


def coerce(spec: ParamSpec, value: Any) -> Any:
    """Convert ``value`` to the spec's type and check range/choices.

    Raises:
        ValueError: wrong type, outside ``[lo, hi]``, or not one of ``choices``.
    """
    try:
        if spec.type is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                value = value.lower() in ("true", "1")
            value = bool(value)
        elif spec.type is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            value = int(value)
        elif spec.type is float:
            value = float(value)
        elif spec.type is list:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            value = [str(v) for v in value]
        else:
            value = str(value)
    except (TypeError, ValueError):
        raise ValueError(f"parameter '{spec.name}': cannot use {value!r} as {spec.type.__name__}") from None
    if spec.lo is not None and value < spec.lo or spec.hi is not None and value > spec.hi:
        raise ValueError(f"parameter '{spec.name}' = {value} is outside [{spec.lo}, {spec.hi}]")
    if spec.choices is not None and value not in spec.choices:
        raise ValueError(f"parameter '{spec.name}' = {value!r} is not one of {spec.choices}")
    return value


def to_flat(cfg: PerceptionConfig) -> dict[str, Any]:
    """``{dotted name: value}`` of every leaf setting."""
    out = {}
    for name in SPECS:
        obj = cfg
        for part in name.split("."):
            obj = getattr(obj, part)
        out[name] = obj
    return out


def set_value(cfg: PerceptionConfig, name: str, value: Any) -> None:
    """Set one dotted setting after validation.

    Raises:
        KeyError: unknown setting (the message lists close names).
        ValueError: invalid value (see :func:`coerce`).
    """
    if name not in SPECS:
        import difflib
        close = difflib.get_close_matches(name, SPECS, n=3)
        raise KeyError(f"unknown setting '{name}'" + (f"; did you mean {close}?" if close else ""))
    value = coerce(SPECS[name], value)
    *parents, leaf = name.split(".")
    obj = cfg
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, leaf, value)


def from_flat(values: dict[str, Any], base: PerceptionConfig | None = None) -> PerceptionConfig:
    """Build a config from dotted settings on top of ``base`` (defaults when ``None``)."""
    cfg = base if base is not None else PerceptionConfig()
    for k, v in values.items():
        set_value(cfg, k, v)
    check_config(cfg)
    return cfg


#: serialization codes of the encoder hold at most 16 bits per axis
MAX_GRID_EXTENT = 65535


def check_config(cfg: PerceptionConfig) -> None:
    """Checks that involve several settings.

    Raises:
        ValueError: ``window.max_extent`` spans more than 65535 voxels of
            ``window.voxel_size`` (the encoder's serialization limit).
    """
    w = cfg.window
    if w.max_extent / w.voxel_size > MAX_GRID_EXTENT:
        raise ValueError(f"window.max_extent = {w.max_extent:g} m spans more than {MAX_GRID_EXTENT} voxels of "
                         f"window.voxel_size = {w.voxel_size:g} m (the encoder's serialization limit); set "
                         f"window.max_extent <= {MAX_GRID_EXTENT * w.voxel_size:.0f}")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_config(path: str | Path | Sequence[str | Path] | None = None, overrides: dict[str, Any] | None = None,
                node_name: str = "perception_node") -> PerceptionConfig:
    """Read a YAML config (ROS 2 params-file layout or plain) and apply overrides.

    Args:
        path: YAML file, or several layered in order (each sets only what it names, later
            files win: like several ``--params-file`` in ROS 2, e.g. ``config/perception.yaml``
            then the CPU overlay ``config/perception_cpu.yaml``); ``None`` gives the defaults.
            In a params file the section of ``node_name`` is used, else ``/**``, else the
            first ``ros__parameters`` block.
        overrides: dotted settings applied last.

    Raises:
        FileNotFoundError: a file does not exist.
        KeyError / ValueError: unknown setting or invalid value (see :func:`set_value`).
    """
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    values: dict[str, Any] = {}
    for one in paths:
        values.update(_read_params(Path(one), node_name))
    values.update(overrides or {})
    return from_flat(values)


def _read_params(path: Path, node_name: str) -> dict[str, Any]:
    """The flat dotted settings of one YAML file (see :func:`load_config`)."""
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    params = None
    for key in (node_name, f"/{node_name}", "/**"):
        if isinstance(data.get(key), dict) and "ros__parameters" in data[key]:
            params = data[key]["ros__parameters"]
            break
    if params is None:
        blocks = [v["ros__parameters"] for v in data.values() if isinstance(v, dict) and "ros__parameters" in v]
        params = blocks[0] if blocks else data
    return _flatten(params)


def default_config_path() -> Path:
    """Path of ``config/perception.yaml`` in the source tree or the installed share dir."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "config" / "perception.yaml", here / "config" / "perception.yaml"):
        if cand.is_file():
            return cand
    try:  # installed with colcon/ament
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory("concerto_ros")) / "config" / "perception.yaml"
    except Exception:  # noqa: BLE001 - no ament index: fall through to the error
        raise FileNotFoundError("config/perception.yaml not found next to the package") from None


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """Parse ``["window.num_frames=3", ...]`` (from ``--set``) into a dict.

    Raises:
        ValueError: an item has no ``=``.
    """
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"override '{item}' must look like name=value (e.g. window.num_frames=3)")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out
