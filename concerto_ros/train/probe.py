"""``concerto train probe``: a linear semantic head on frozen encoder features (linear probing).

The probing protocol of the self-supervised point-cloud papers (Sonata, CVPR 2025;
Concerto, arXiv 2510.23607): the encoder is frozen, a single linear layer is trained on its
per-point features with cross-entropy, and the held-out mIoU / per-class IoU / overall
accuracy measure how linearly separable the classes are in the feature space.

Features are computed as the node computes them: the node's
:class:`~concerto_ros.pipeline.PerceptionPipeline` is built from its parameters file
(``perception_config`` plus ``perception_overrides``), every single scene is grid-sampled
at ``window.voxel_size`` (:func:`concerto_ros.cloud.voxel.grid_sample`, one representative
point per voxel, which also gives the voxel's label) and encoded as one scene with
``pipeline.extractor.encode``; RGB-D sequences go through the pipeline frame by frame, as
live. The written head (``<output>/head.pt``, the released
linear-probe format plus ``class_names`` and ``feature_dims``) therefore loads in the node
with ``head.checkpoint`` (:func:`concerto_ros.models.extractor.build_heads`), and
``<output>/bundle.pt`` holds the pipeline's encoder together with the head, for
``model.bundle`` (a pipeline itself built from a bundle passes its encoder, and its
translator, on). ``features: raw`` instead probes the encoder's raw inputs (xyz in metres and rgb in
[0, 1] of each voxel's representative point, 6-d): a reference baseline, not loadable in the
node.

Sources (``data.train`` and ``data.test``, lists of):

* ``{type: pcd, path: DIR|FILE.pcd, limit: 0}``: labelled PCD files (the mOSD format:
  ``FIELDS label x y z rgba``, read by :func:`concerto_ros.bag.pcd.read_pcd`); a folder
  gives its ``*.pcd`` files in natural order (``learn2`` before ``learn10``), the first
  ``limit`` of them when ``limit > 0``;
* ``{type: points, path: XYZ[RGB].npy, labels: LABELS.npy}``: a labelled point array
  (ScanNet vertices ``(N, 6)``, SemanticKITTI ``(N, 3)`` scans with ``(N, 1)`` labels);
* ``{type: folder, path: DIR}``: an RGB-D folder with ``labels/`` images (the layout of
  ``concerto convert rgbd`` and of the demo generator,
  :func:`concerto_ros.demo.scene.write_sequence`). Its frames go through the node's pipeline
  one by one, exactly as for ``concerto train translator``
  (:func:`concerto_ros.train.translator.collect_features`): every ``data.window_stride``-th
  window (and the last) contributes its voxels, with the node's fused features and the
  window's (majority) voxel labels as raw labels. Windows, not single scenes: the features
  are those the node computes live (``window.num_frames`` frames, Cross4D included when the
  pipeline runs it); ``features: raw`` is not available for these sources.

With ``data.test`` empty the evaluation set is a spatial split of the training sources:
the voxels in about ``heldout_fraction`` of the ``heldout_block``-metre cubes
(:func:`concerto_ros.train.data.heldout_mask`) are kept out of training.

Labels: raw labels map to class indices through ``data.label_map`` (keys: ``"5"``,
``"1-9"`` (inclusive) or ``"20+"``; values: a class name of ``data.classes`` or its
index; raw labels matching no key are ignored). With an empty map the raw label is the
class index. The raw label ``data.ignore_index`` is always ignored (never trained on, never
scored).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "device": "cpu",  # where the head is trained (the encoder runs on the node's model.device)
    "output": "outputs/probe",
    "log": "csv",
    "perception_config": "",  # the node's parameters YAML ("" = the package's config/perception.yaml)
    "perception_overrides": {},  # dotted node settings, e.g. {window.voxel_size: 0.02}
    "features": "encoder",  # encoder (the node's frozen features) | raw (xyz + rgb baseline)
    "data": {
        "train": [],  # sources: {type: pcd, path, limit} | {type: points, path, labels} | {type: folder, path}
        "test": [],  # same; empty = held-out cubes of the train sources
        "window_stride": 1,  # folder sources: every n-th window of the node's pipeline (and the last)
        "classes": [],  # class names, in head output order
        "ignore_index": 0,  # raw label never trained on or scored
        "label_map": {},  # raw label (or range "a-b", "a+") -> class name or index; {} = identity
        "heldout_fraction": 0.2,  # of heldout_block cubes, when data.test is empty
        "heldout_block": 0.5,  # m
    },
    "optim": {"epochs": 30, "batch_size": 4096, "lr": 1.0e-2, "weight_decay": 1.0e-4,
              "class_weight": None},  # class_weight: null | balanced (inverse class frequency)
}

_RANGE = re.compile(r"^\s*(-?\d+)\s*(?:-\s*(-?\d+)|(\+))?\s*$")


def build_label_lut(label_map: dict, classes: list[str], ignore_index: int | None,
                    max_raw: int) -> np.ndarray:
    """Lookup table raw label -> class index.

    Args:
        label_map: see the module docstring; ``{}`` maps raw label ``k`` to class ``k``.
        classes: class names.
        ignore_index: raw label mapped to ``-1`` whatever the map says (None: none).
        max_raw: largest raw label the table must cover (``>= 0``).

    Returns:
        ``(max_raw + 1,) int64``: class index in ``[0, K)`` or ``-1`` (ignored).

    Raises:
        ValueError: a malformed key, an unknown class name, or a class index outside ``[0, K)``.
    """
    k = len(classes)
    lut = np.full(max_raw + 1, -1, dtype=np.int64)
    if not label_map:
        n = min(k, max_raw + 1)
        lut[:n] = np.arange(n)
    for key, val in label_map.items():
        m = _RANGE.match(str(key))
        if m is None:
            raise ValueError(f"data.label_map key {key!r}: expected 'N', 'A-B' or 'A+'")
        lo = int(m.group(1))
        hi = max_raw if m.group(3) else int(m.group(2)) if m.group(2) is not None else lo
        if isinstance(val, str) and not val.lstrip("-").isdigit():
            if val not in classes:
                raise ValueError(f"data.label_map {key!r}: class {val!r} is not in data.classes {classes}")
            c = classes.index(val)
        else:
            c = int(val)
            if not (0 <= c < k or c == -1):
                raise ValueError(f"data.label_map {key!r}: class index {c} outside [0, {k})")
        lo, hi = max(lo, 0), min(hi, max_raw)
        if lo <= hi:
            lut[lo:hi + 1] = c
    if ignore_index is not None and 0 <= int(ignore_index) <= max_raw:
        lut[int(ignore_index)] = -1
    return lut


def map_labels(raw: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``(N,) int64`` class indices of raw labels ``raw`` (``-1`` for ignored, negative or
    beyond the table)."""
    raw = np.asarray(raw, dtype=np.int64)
    ok = (raw >= 0) & (raw < len(lut))
    out = np.full(raw.shape, -1, dtype=np.int64)
    out[ok] = lut[raw[ok]]
    return out


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def list_scenes(sources: list[dict]) -> list[dict]:
    """Expand sources into one entry per scene: ``{"type", "path", "labels"?}``.

    A ``folder`` source (an RGB-D sequence) stays one entry: its windows are made by the
    node's pipeline (:func:`source_features`).

    Raises:
        ValueError: unknown source type, a folder with no ``.pcd`` file, or an RGB-D folder
            without ``labels/``.
        FileNotFoundError: a path that does not exist.
    """
    scenes = []
    for src in sources:
        kind, path = src.get("type", "pcd"), Path(str(src["path"])).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"probe source {path} does not exist")
        if kind == "pcd":
            files = sorted(path.glob("*.pcd"), key=_natural_key) if path.is_dir() else [path]
            if not files:
                raise ValueError(f"{path} holds no .pcd file")
            limit = int(src.get("limit", 0) or 0)
            scenes += [{"type": "pcd", "path": f} for f in (files[:limit] if limit > 0 else files)]
        elif kind == "points":
            if "labels" not in src:
                raise ValueError(f"points source {path} needs 'labels' (an (N,) or (N,1) .npy)")
            scenes.append({"type": "points", "path": path, "labels": Path(str(src["labels"])).expanduser()})
        elif kind == "folder":
            if not (path / "labels").is_dir():
                raise ValueError(f"RGB-D folder {path} has no labels/ folder: the probe needs labelled frames")
            scenes.append({"type": "folder", "path": path})
        else:
            raise ValueError(f"probe source type must be 'pcd', 'points' or 'folder', got {kind!r}")
    return scenes


def load_scene(scene: dict) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """``(xyz (N,3) float32 metres, rgb (N,3) uint8 or None, raw labels (N,) int64)`` of a
    scene from :func:`list_scenes` (NaN points dropped).

    Raises:
        ValueError: a PCD without a ``label`` field, or points and labels of different lengths.
    """
    if scene["type"] == "pcd":
        from concerto_ros.bag.pcd import read_pcd

        c = read_pcd(scene["path"])
        if c.label is None:
            raise ValueError(f"{scene['path']} has no 'label' field")
        return c.xyz, c.rgb, c.label
    arr = np.load(scene["path"])
    lab = np.load(scene["labels"]).reshape(-1).astype(np.int64)
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise ValueError(f"{scene['path']}: expected (N, 3+) points, got {arr.shape}")
    if len(arr) != len(lab):
        raise ValueError(f"{scene['path']}: {len(arr)} points but {len(lab)} labels")
    keep = np.isfinite(arr[:, :3]).all(axis=1)
    arr, lab = arr[keep], lab[keep]
    xyz = arr[:, :3].astype(np.float32)
    rgb = np.clip(np.nan_to_num(arr[:, 3:6]), 0, 255).astype(np.uint8) if arr.shape[1] >= 6 else None
    return xyz, rgb, lab


def scene_features(scenes: list[dict], voxel_size: float, encode=None, progress: bool = True,
                   desc: str = "features") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-voxel features, raw labels and coordinates of every scene.

    Each scene is grid-sampled at ``voxel_size`` metres; a voxel takes the label and colour
    of its representative point.

    Args:
        encode: ``(coord (M,3) float32, grid_coord (M,3) int32, color=(M,3) uint8 | None) ->
            (M, D) tensor`` (the node's ``pipeline.extractor.encode``), or None for the raw
            inputs (xyz metres, rgb / 255: 6-d).

    Returns:
        ``(features (M, D) float32, raw labels (M,) int64, coords (M, 3) float32 metres)``.

    Raises:
        ValueError: no point in any scene.
    """
    from tqdm import tqdm

    from concerto_ros.cloud.voxel import grid_sample

    feats, labels, coords = [], [], []
    for sc in (tqdm(scenes, desc=desc, unit="scene") if progress else scenes):
        xyz, rgb, raw = load_scene(sc)
        if len(xyz) == 0:
            continue
        gs = grid_sample(xyz, float(voxel_size))
        p = xyz[gs.index]
        c = rgb[gs.index] if rgb is not None else None
        if encode is not None:
            f = encode(p, gs.grid_coord, color=c).float().cpu().numpy()
        else:
            cc = c.astype(np.float32) / 255.0 if c is not None else np.zeros_like(p)
            f = np.concatenate([p, cc], axis=1).astype(np.float32)
        feats.append(f)
        labels.append(raw[gs.index])
        coords.append(p)
    if not feats:
        raise ValueError("no point in any source")
    return np.concatenate(feats), np.concatenate(labels), np.concatenate(coords)


def source_features(scenes: list[dict], pipeline, voxel_size: float, window_stride: int = 1,
                    raw: bool = False, progress: bool = True, desc: str = "features",
                    log: Callable[[str], Any] = print) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-voxel features, raw labels and coordinates of every entry of :func:`list_scenes`.

    ``pcd`` and ``points`` scenes go through :func:`scene_features` (one grid-sampled scene,
    encoded by ``pipeline.extractor.encode``, or the raw inputs with ``raw``); ``folder``
    sequences through the node's pipeline window by window
    (:func:`concerto_ros.train.translator.collect_features`, every ``window_stride``-th
    window and the last; labels are the windows' voxel labels, ``-1`` where a voxel has none).

    Args:
        pipeline: the node's :class:`~concerto_ros.pipeline.PerceptionPipeline` (``None``
            only with ``raw`` and no folder source).
        voxel_size: grid-sampling voxel edge of single scenes, metres (the node's
            ``window.voxel_size``).

    Returns:
        ``(features (M, D) float32, raw labels (M,) int64, coords (M, 3) float32 metres)``,
        single scenes first, then the folders' windows, in source order within each.

    Raises:
        ValueError: ``raw`` with a folder source, single scenes without a Concerto encoder or
            with a Cross4D encoder in the pipeline, or no point at all.
    """
    singles = [s for s in scenes if s["type"] != "folder"]
    folders = [s for s in scenes if s["type"] == "folder"]
    feats, labels, coords = [], [], []
    if folders and raw:
        raise ValueError("features: raw is not available for folder sources (their features come from the "
                         "node's pipeline); use features: encoder")
    if singles:
        encode = None
        if not raw:
            if pipeline.extractor is None:
                raise ValueError("the probe needs the Concerto encoder (model.enabled: true)")
            if pipeline.cross4d is not None:
                raise ValueError("single scenes (pcd / points sources) cannot feed the Cross4D encoder (needs "
                                 "frames); set perception_overrides: {cross4d.enabled: false} or use folder sources")
            encode = pipeline.extractor.encode
        f, r, c = scene_features(singles, voxel_size, encode, progress, desc=desc)
        feats.append(f)
        labels.append(r)
        coords.append(c)
    if folders:
        from concerto_ros.train.translator import collect_features

        sub = {"data": {"sources": [{"type": "folder", "path": str(s["path"])} for s in folders],
                        "window_stride": int(window_stride)}}
        f, r, c, _, _ = collect_features(sub, pipeline, log=log, progress=progress)
        feats.append(f)
        labels.append(r)
        coords.append(c)
    if not feats or sum(len(f) for f in feats) == 0:
        raise ValueError("no point in any source")
    return np.concatenate(feats), np.concatenate(labels), np.concatenate(coords)


def fit_linear_probe(feats: np.ndarray, labels: np.ndarray, class_names: list[str], epochs: int = 30,
                     batch_size: int = 4096, lr: float = 1e-2, weight_decay: float = 1e-4,
                     class_weight: str | None = None, seed: int = 0, device: str = "cpu",
                     on_epoch: Callable[[dict], Any] | None = None):
    """Train a :class:`~concerto_ros.models.heads.LinearSemanticHead` with cross-entropy.

    The features are standardised (train mean / std per channel) for the optimisation and
    the standardisation is folded into the returned head's weights, so the head reads the
    raw features. AdamW with a cosine learning-rate schedule over all steps.

    Args:
        feats: ``(N, D) float32`` features.
        labels: ``(N,) int64`` class index in ``[0, K)`` or ``-1`` (not trained on).
        class_names: ``K`` names.
        class_weight: ``None`` or ``"balanced"`` (loss weights ``N / (K * count_k)``).
        on_epoch: called after every epoch with ``{"epoch", "loss", "train_accuracy", "lr"}``.

    Returns:
        ``(head on CPU in eval mode, history {"loss": [...], "train_accuracy": [...]})``.

    Raises:
        ValueError: no labelled row, or an unknown ``class_weight``.
    """
    import torch
    from torch import nn

    from concerto_ros.models.heads import LinearSemanticHead
    from concerto_ros.train.common import cosine_lr, resolve_device

    dev = resolve_device(device)
    keep = labels >= 0
    if not keep.any():
        raise ValueError("no labelled voxel to train the probe on: check data.label_map / ignore_index")
    x = torch.from_numpy(np.ascontiguousarray(feats[keep], dtype=np.float32))
    y = torch.from_numpy(labels[keep].astype(np.int64))
    k = len(class_names)
    mean = x.mean(0)
    std = x.std(0).clamp_min(1e-6)
    x = ((x - mean) / std).to(dev)
    y = y.to(dev)
    weight = None
    if class_weight == "balanced":
        cnt = torch.bincount(y, minlength=k).float()
        weight = torch.where(cnt > 0, cnt.sum() / (k * cnt.clamp_min(1)), torch.zeros_like(cnt))
    elif class_weight not in (None, "", "none"):
        raise ValueError(f"optim.class_weight must be null or 'balanced', got {class_weight!r}")
    gen = torch.Generator().manual_seed(int(seed))
    lin = nn.Linear(x.shape[1], k)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * 0.01)
        lin.bias.zero_()
    lin = lin.to(dev)
    opt = torch.optim.AdamW(lin.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    n = len(y)
    steps_per_epoch = max(1, (n + batch_size - 1) // batch_size)
    total = epochs * steps_per_epoch
    hist: dict[str, list[float]] = {"loss": [], "train_accuracy": []}
    step = 0
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(n, generator=gen).to(dev)
        tot_loss, correct = 0.0, 0
        cur_lr = lr
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            cur_lr = cosine_lr(step, total, lr)
            for g in opt.param_groups:
                g["lr"] = cur_lr
            logits = lin(x[idx])
            loss = loss_fn(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            tot_loss += float(loss.detach()) * len(idx)
            correct += int((logits.detach().argmax(1) == y[idx]).sum())
        hist["loss"].append(tot_loss / n)
        hist["train_accuracy"].append(correct / n)
        if on_epoch is not None:
            on_epoch({"epoch": epoch, "loss": hist["loss"][-1], "train_accuracy": hist["train_accuracy"][-1],
                      "lr": cur_lr})
    head = LinearSemanticHead(x.shape[1], class_names)
    with torch.no_grad():  # fold (x - mean) / std into the weights
        w = lin.weight.detach().cpu() / std[None, :]
        head.seg_head.weight.copy_(w)
        head.seg_head.bias.copy_(lin.bias.detach().cpu() - w @ mean)
    return head.eval(), hist


def evaluate_head(head, feats: np.ndarray, labels: np.ndarray, batch: int = 65536) -> dict:
    """Scores of ``head`` on ``feats (N, D) float32`` against ``labels (N,) int64``
    (``-1`` = ignored): ``{"iou" (K,) float64 (NaN: class absent from target and
    prediction), "miou", "oacc", "num_points"}`` (see :func:`concerto_ros.metrics.segmentation_scores`)."""
    import torch

    from concerto_ros.metrics import confusion_matrix, segmentation_scores

    keep = labels >= 0
    f = torch.from_numpy(np.ascontiguousarray(feats[keep], dtype=np.float32))
    with torch.no_grad():
        pred = np.concatenate([head(f[i:i + batch]).argmax(1).numpy() for i in range(0, len(f), batch)]) \
            if len(f) else np.zeros(0, np.int64)
    return segmentation_scores(confusion_matrix(pred, labels[keep], head.num_classes))


def train_probe(cfg: dict, progress: bool = True, log=print) -> dict:
    """Run the whole command (see the module docstring); returns the summary dict.

    Writes ``<output>/head.pt`` (load it in the node with ``head.checkpoint``), with encoder
    features ``<output>/bundle.pt`` (the pipeline's encoder plus this head, and its translator
    if it had one: ``model.bundle``),
    ``<output>/metrics.csv`` (per epoch: loss, train accuracy, lr) and
    ``<output>/summary.json`` (held-out mIoU, per-class IoU, overall accuracy, voxel
    counts, ...), and prints a summary table.

    Raises:
        ValueError: no classes or training sources, bad ``label_map``/``features``/
            ``class_weight``, or no labelled voxel.
        FileNotFoundError: a source path that does not exist.
    """
    from concerto_ros.models.extractor import save_head
    from concerto_ros.pipeline import PerceptionPipeline
    from concerto_ros.train.common import MetricLogger, print_summary, seed_everything
    from concerto_ros.train.data import heldout_mask
    from concerto_ros.train.common import perception_config

    t0 = time.perf_counter()
    d = cfg["data"]
    classes = [str(c) for c in d["classes"]]
    if not classes:
        raise ValueError("data.classes is empty: list the class names of the head")
    if not d["train"]:
        raise ValueError("data.train is empty: give labelled PCD folders/files, point arrays or RGB-D folders "
                         "with labels/")
    features = str(cfg.get("features", "encoder"))
    if features not in ("encoder", "raw"):
        raise ValueError(f"features must be 'encoder' or 'raw', got {features!r}")
    seed_everything(int(cfg["seed"]))
    out = Path(cfg["output"])
    out.mkdir(parents=True, exist_ok=True)

    pcfg, pcfg_path = perception_config(cfg, language__translator="")
    voxel = float(pcfg.window.voxel_size)
    train_scenes = list_scenes(d["train"])
    test_scenes = list_scenes(d["test"]) if d["test"] else []
    raw = features == "raw"
    if raw and any(s["type"] == "folder" for s in train_scenes + test_scenes):
        raise ValueError("features: raw is not available for folder sources (their features come from the "
                         "node's pipeline); use features: encoder")
    pipeline = None
    if not raw:
        pipeline = PerceptionPipeline(pcfg, log=log)
        feature_dims = dict(pipeline.feature_dims)
    stride = int(d.get("window_stride", 1) or 1)
    if stride < 1:
        raise ValueError(f"data.window_stride must be >= 1, got {stride}")

    def feats_of(scenes, desc):
        return source_features(scenes, pipeline, voxel, window_stride=stride, raw=raw, progress=progress,
                               desc=desc, log=log)

    ftr, rtr, ctr = feats_of(train_scenes, "train features")
    if raw:
        feature_dims = {"raw": int(ftr.shape[1])}
    ignore = d.get("ignore_index")
    if test_scenes:
        fte, rte, _ = feats_of(test_scenes, "test features")
        max_raw = int(max(rtr.max(initial=0), rte.max(initial=0)))
        lut = build_label_lut(d["label_map"] or {}, classes, ignore, max_raw)
        ytr, yte = map_labels(rtr, lut), map_labels(rte, lut)
        split = "test sources"
    else:
        lut = build_label_lut(d["label_map"] or {}, classes, ignore, int(rtr.max(initial=0)))
        y = map_labels(rtr, lut)
        held = heldout_mask(ctr, float(d["heldout_block"]), float(d["heldout_fraction"]))
        fte, yte = ftr[held], np.where(held, y, -1)[held]
        ftr, ytr = ftr[~held], y[~held]
        split = f"held-out {d['heldout_block']} m cubes ({d['heldout_fraction']:.0%})"

    o = cfg["optim"]
    logger = MetricLogger(out, tensorboard=cfg.get("log") == "tensorboard")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=int(o["epochs"]), desc="probe", unit="epoch")

    def on_epoch(row):
        logger.log(row)
        if bar is not None:
            bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['train_accuracy']:.3f}")
            bar.update(1)

    head, hist = fit_linear_probe(ftr, ytr, classes, epochs=int(o["epochs"]), batch_size=int(o["batch_size"]),
                                  lr=float(o["lr"]), weight_decay=float(o["weight_decay"]),
                                  class_weight=o["class_weight"], seed=int(cfg["seed"]),
                                  device=str(cfg["device"]), on_epoch=on_epoch)
    if bar is not None:
        bar.close()
    logger.close()
    head_path = save_head(head, out / "head.pt", feature_dims=feature_dims)
    tr_scores = evaluate_head(head, ftr, ytr)
    te_scores = evaluate_head(head, fte, yte)

    def _iou(s):
        return {n: (None if np.isnan(v) else float(v)) for n, v in zip(classes, s["iou"])}

    def _f(v):
        return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)

    bundle_path = None
    if features == "encoder":
        from concerto_ros.models.bundle import bundle_from_pipeline, save_bundle

        metrics = {"test_miou": _f(te_scores["miou"]), "test_accuracy": _f(te_scores["oacc"]),
                   "train_miou": _f(tr_scores["miou"]), "train_accuracy": _f(tr_scores["oacc"])}
        bundle = bundle_from_pipeline(pipeline, head=head, metadata={
            "description": f"linear probe head over {classes} on "
                           f"{pipeline.extractor.description if pipeline.extractor else pipeline.feature_dims}",
            "command": "concerto train probe", "config": cfg,
            "metrics": {k: v for k, v in metrics.items() if v is not None}})
        bundle_path = save_bundle(bundle, out / "bundle.pt")
        log(f"model bundle {bundle_path} (encoder + head{' + translator' if bundle.translator else ''}): "
            f"run it with model.bundle: {bundle_path}")
    else:
        log("features: raw -> no model bundle (a bundle holds the encoder whose features the head reads)")

    summary = {
        "head": str(head_path), "bundle": str(bundle_path) if bundle_path else None, "classes": classes, "features": features, "feature_dims": feature_dims,
        "perception_config": str(pcfg_path), "voxel_size": voxel,
        "split": split, "train_scenes": len(train_scenes), "test_scenes": len(test_scenes),
        "train_voxels": int((ytr >= 0).sum()), "test_voxels": int((yte >= 0).sum()),
        "epochs": len(hist["loss"]), "loss_first": hist["loss"][0], "loss_last": hist["loss"][-1],
        "train_miou": _f(tr_scores["miou"]), "train_accuracy": _f(tr_scores["oacc"]),
        "test_miou": _f(te_scores["miou"]), "test_accuracy": _f(te_scores["oacc"]),
        "test_iou": _iou(te_scores), "wall_s": time.perf_counter() - t0,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    rows = [("head", str(head_path)), ("bundle", str(bundle_path) if bundle_path else "none (raw features)"),
            ("features", f"{features} {ftr.shape[1]}-d {feature_dims}"),
            ("train / test voxels", f"{summary['train_voxels']} / {summary['test_voxels']} ({split})"),
            ("loss first -> last", f"{hist['loss'][0]:.3f} -> {hist['loss'][-1]:.3f}"),
            ("train mIoU / oAcc", f"{fmt(summary['train_miou'])} / {fmt(summary['train_accuracy'])}"),
            ("test mIoU / oAcc", f"{fmt(summary['test_miou'])} / {fmt(summary['test_accuracy'])}")]
    rows += [(f"test IoU {n}", fmt(v)) for n, v in summary["test_iou"].items()]
    rows += [("wall time", f"{summary['wall_s']:.1f} s")]
    print_summary("linear probe", rows)
    return summary
