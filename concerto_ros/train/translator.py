"""``concerto train translator``: fit the language translator on labelled recordings.

The translator (Concerto, arXiv 2510.23607: "with linear probing, we translate Concerto's
representations to language space") is a linear map from the node's fused per-voxel
features to a text encoder's space, fitted in one of the two ways the field uses:

* ``mode: labels``: cosine-softmax of the translated feature against the text embeddings of
  the class names, cross-entropy over the labelled voxels
  (:func:`concerto_ros.language.translator.fit_translator_labels`);
* ``mode: targets`` (label-free, as OpenScene): every voxel of a window is projected into the
  newest frame's image (z-buffer visibility, :mod:`concerto_ros.models.projection`, the same
  code as the Cross4D targets) and takes the dense image-embedding model's patch feature
  there as its target; cosine regression
  (:func:`concerto_ros.language.translator.fit_translator_targets`). The image model must
  embed into the text encoder's space (e.g. a dense CLIP image tower, given as
  ``image_model.name: module:FILE.pt``).

Features are computed exactly as the node computes them: the same
:class:`~concerto_ros.pipeline.PerceptionPipeline` (lifting, sliding window, voxelization,
encoders) built from the node's parameters file, so the saved translator fits the node that
uses the same file. Sources:

* ``{type: folder, path}``: an RGB-D folder (the converter's format) with ``labels/``
  images; the frames go through the pipeline one by one and every ``window_stride``-th
  window contributes its voxels with their (majority) labels;
* ``{type: points, path: XYZ[RGB].npy, labels: LABELS.npy}``: a labelled point array
  (e.g. ScanNet vertices), grid-sampled at ``window.voxel_size`` and encoded as one scene by
  the Concerto encoder (Cross4D needs frames and is not used for these).

Voxels in a held-out fraction of ``heldout_block``-metre cubes are kept out of training and
used for the final report (accuracy and mIoU of open-vocabulary labels, top-k precision per
class name).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "device": "cpu",
    "output": "outputs/translator",
    "log": "csv",
    "perception_config": "",  # the node's parameters YAML ("" = the package's config/perception.yaml)
    "perception_overrides": {},  # dotted node settings, e.g. {window.num_frames: 3}
    "data": {
        # each: {type: folder, path} or {type: points, path, labels}
        "sources": [],
        "classes": [],  # class names, in label order (the text the translator is fitted to)
        "label_ids": [],  # raw label id of each class (default: 1..C, 0 = unlabeled)
        "window_stride": 1,  # folder sources: use every n-th window
        "heldout_fraction": 0.2,  # of heldout_block cubes kept for evaluation
        "heldout_block": 0.5,  # m
    },
    "mode": "labels",  # labels | targets (label-free, needs image_model)
    "image_model": {  # targets mode: dense image-embedding model in the text encoder's space
        "name": "",  # module:FILE.pt (an nn.Module: images [B,3,H,W] in [0,1] -> [B,C,H/p,W/p]) | seeded_vit
        "weights": "",
        "seed": 0,
        "embed_dim": 384,  # seeded_vit only (tests): must equal the text encoder's dimension
        "depth": 2,
        "num_heads": 2,
        "patch_size": 14,
        "short_side": 224,  # px, model input short side
        "lookup": "bilinear",  # nearest | bilinear
        "zbuffer_tolerance": 0.05,  # m
    },
    "text_encoder": {"backend": "sentence-transformers", "model": "", "checkpoint": ""},
    "optim": {"epochs": 20, "batch_size": 4096, "lr": 1.0e-2, "weight_decay": 1.0e-4,
              "temperature": 0.07, "learn_temperature": True, "class_weight": None},
    "eval": {"top_k": 100},
}


def collect_features(cfg: dict, pipeline, log=print, progress: bool = True, image_model=None):
    """Fused per-voxel features and raw labels of every source (and, with ``image_model``,
    each voxel's projected image-embedding target in the newest frame of its window).

    Returns:
        ``(features (N, D) float32, raw_labels (N,) int64 (-1 where unknown), coords (N, 3)
        float32, targets (N, C) float32 or None, visible (N,) bool or None)``.

    Raises:
        ValueError: no sources, an unknown source type, or a folder without ``labels/``.
    """
    from tqdm import tqdm

    from concerto_ros.bag.convert_rgbd import _read_color, _read_depth, _read_labels, _resolve_intrinsics, scan_rgbd_folder
    from concerto_ros.sensors.types import CameraIntrinsics, RGBDFrame

    sources = cfg["data"]["sources"]
    if not sources:
        raise ValueError("data.sources is empty: give RGB-D folders with labels/ or labelled point arrays "
                         "(--source PATH or --set data.sources=[...])")
    feats, labels, coords, targets, visible = [], [], [], [], []
    stride = max(1, int(cfg["data"]["window_stride"]))
    for src in sources:
        kind, path = src.get("type", "folder"), Path(src["path"]).expanduser()
        if kind == "folder":
            f = scan_rgbd_folder(path)
            if not f.labels and image_model is None:
                raise ValueError(f"{path} has no labels/ folder: the translator needs labelled frames "
                                 "(or mode: targets with an image_model)")
            (fx, fy, cx, cy), _ = _resolve_intrinsics(None, f.camera, f.root)
            scale = float(f.camera.get("depth_scale", 1000.0))
            pipeline.reset()
            it = range(len(f.stems))
            for i in (tqdm(it, desc=f"features {path.name}", unit="frame") if progress else it):
                depth = _read_depth(f.depth[i])
                intr = CameraIntrinsics(fx=fx, fy=fy, cx=cx, cy=cy, width=depth.shape[1], height=depth.shape[0])
                rgb = _read_color(f.color[i], "bgr")
                frame = RGBDFrame(stamp_ns=i * 100_000_000, frame_id="camera", color=rgb,
                                  depth=depth, depth_scale=scale, intrinsics=intr,
                                  labels=_read_labels(f.labels[i]).astype(np.int32) if f.labels else None)
                if (i + 1) % stride and i != len(f.stems) - 1:
                    pipeline.push(frame, f.poses[i])  # into the window; this window is not used: no encoding
                    continue
                r = pipeline.process(frame, f.poses[i])
                feats.append(r.features.float().cpu().numpy())
                win_labels = r.window.labels
                labels.append(np.asarray(win_labels, dtype=np.int64) if win_labels is not None
                              else np.full(len(r.coord), -1, dtype=np.int64))
                coords.append(r.coord)
                if image_model is not None:
                    t, v = image_model(r.coord, rgb, intr, f.poses[i])
                    targets.append(t)
                    visible.append(v)
        elif kind == "points":
            from concerto_ros.train.probe import scene_features

            if pipeline.extractor is None:
                raise ValueError("point-array sources need the Concerto encoder (model.enabled: true)")
            if pipeline.cross4d is not None:
                raise ValueError("point-array sources cannot feed the Cross4D encoder (needs frames); "
                                 "set perception_overrides: {cross4d.enabled: false}")
            if image_model is not None:
                raise ValueError("point-array sources have no images: mode targets needs RGB-D folders")
            scene = {"type": "points", "path": path, "labels": Path(src["labels"]).expanduser()}
            f_, lab, xyz = scene_features([scene], pipeline.cfg.window.voxel_size,
                                          encode=pipeline.extractor.encode, progress=False)
            feats.append(f_)
            labels.append(lab)
            coords.append(xyz)
        else:
            raise ValueError(f"source type must be 'folder' or 'points', got {kind!r}")
    if image_model is None:
        return np.concatenate(feats), np.concatenate(labels), np.concatenate(coords), None, None
    return (np.concatenate(feats), np.concatenate(labels), np.concatenate(coords),
            np.concatenate(targets), np.concatenate(visible))


def make_image_model(cfg: dict, device: str = "cpu"):
    """``(coord (M,3), rgb (H,W,3) uint8, intrinsics, T_world_cam) -> (targets (M,C), visible (M,))``
    from ``cfg["image_model"]`` (see :data:`DEFAULTS`).

    Raises:
        ValueError: no ``image_model.name``.
    """
    import torch

    from concerto_ros.models.projection import dense_targets
    from concerto_ros.models.teachers import build_teacher, teacher_grid

    im = cfg["image_model"]
    if not im["name"]:
        raise ValueError("mode: targets needs image_model.name (module:FILE.pt for a dense image "
                         "model in the text encoder's space)")
    kwargs = {k: im[k] for k in ("embed_dim", "depth", "num_heads", "patch_size")} if im["name"] == "seeded_vit" else {}
    model = build_teacher(im["name"], weights=im["weights"] or None, seed=int(im["seed"]), device=device, **kwargs)

    @torch.no_grad()
    def project(coord, rgb, intrinsics, T):
        grid = teacher_grid(model, rgb, short_side=int(im["short_side"]), device=device)
        t, vis = dense_targets(coord, grid, intrinsics, T, mode=im["lookup"], tolerance=float(im["zbuffer_tolerance"]))
        return t.numpy().astype(np.float32), np.asarray(vis, dtype=bool)

    return project


def train_translator(cfg: dict, progress: bool = True, log=print) -> dict:
    """Run the whole command (see the module docstring); returns a summary dict.

    Writes ``<output>/translator.pt`` (loadable with ``language.translator``),
    ``<output>/bundle.pt`` (the pipeline's encoders and trained head plus this translator,
    its text encoder and, in label mode, the class names as vocabulary: ``model.bundle``),
    ``<output>/metrics.csv`` (per-epoch loss, accuracy, temperature) and
    ``<output>/summary.json``.

    Raises:
        ValueError: no classes or sources, or no labelled voxel.
    """
    import json

    import torch

    from concerto_ros.language.query import cosine_to_vocabulary, relevance_margin
    from concerto_ros.language.text_encoders import build_text_encoder
    from concerto_ros.language.translator import fit_translator_labels, fit_translator_targets
    from concerto_ros.metrics import confusion_matrix, segmentation_scores
    from concerto_ros.pipeline import PerceptionPipeline
    from concerto_ros.train.common import MetricLogger, perception_config, print_summary, seed_everything
    from concerto_ros.train.data import heldout_mask

    t_start = time.perf_counter()
    mode = cfg.get("mode", "labels")
    if mode not in ("labels", "targets"):
        raise ValueError(f"mode must be 'labels' or 'targets', got {mode!r}")
    classes = [str(c) for c in cfg["data"]["classes"]]
    if not classes and mode == "labels":
        raise ValueError("data.classes is empty: list the class names the labels stand for")
    ids = [int(i) for i in (cfg["data"]["label_ids"] or range(1, len(classes) + 1))]
    if len(ids) != len(classes):
        raise ValueError(f"data.label_ids has {len(ids)} entries for {len(classes)} classes")
    seed_everything(int(cfg["seed"]))
    out = Path(cfg["output"])
    out.mkdir(parents=True, exist_ok=True)

    pcfg, pcfg_path = perception_config(cfg, language__translator="")
    pipeline = PerceptionPipeline(pcfg, log=log)
    image_model = make_image_model(cfg, device=str(cfg["device"])) if mode == "targets" else None
    feats, raw, coords, targets, visible = collect_features(cfg, pipeline, log=log, progress=progress,
                                                            image_model=image_model)
    lut = {rid: k for k, rid in enumerate(ids)}
    labels = np.array([lut.get(int(r), -1) for r in raw], dtype=np.int64)
    held = heldout_mask(coords, float(cfg["data"]["heldout_block"]), float(cfg["data"]["heldout_fraction"]))
    have = (labels >= 0) if mode == "labels" else visible
    train = have & ~held
    test = (labels >= 0) & held
    if not train.any():
        raise ValueError("no labelled voxel to train on: check data.label_ids against the label images"
                         if mode == "labels" else "no voxel is visible in its window's newest frame")

    te = build_text_encoder(cfg["text_encoder"]["backend"], cfg["text_encoder"]["model"] or None,
                            cfg["text_encoder"]["checkpoint"] or None, device=str(cfg["device"]))
    o = cfg["optim"]
    common = dict(epochs=int(o["epochs"]), batch_size=int(o["batch_size"]), lr=float(o["lr"]),
                  weight_decay=float(o["weight_decay"]), temperature=float(o["temperature"]),
                  seed=int(cfg["seed"]), device=str(cfg["device"]), progress=progress,
                  feature=f"fused {pipeline.feature_dims} from {pcfg_path}")
    logger = MetricLogger(out, tensorboard=cfg.get("log") == "tensorboard")
    if mode == "labels":
        translator, hist = fit_translator_labels(
            feats, np.where(train, labels, -1), te.encode(classes), te, ignore_index=-1,
            learn_temperature=bool(o["learn_temperature"]), class_weight=o["class_weight"], **common)
        for e, (loss, acc, temp) in enumerate(zip(hist["loss"], hist["accuracy"], hist["temperature"]), start=1):
            logger.log({"epoch": e, "loss": loss, "train_accuracy": acc, "temperature": temp})
    else:
        if targets.shape[1] != te.dim:
            raise ValueError(f"image_model gives {targets.shape[1]}-d targets but the text encoder "
                             f"'{te.name}' is {te.dim}-d: they must share one space")
        translator, hist = fit_translator_targets(feats, targets, te, valid=train, **common)
        for e, (loss, cos) in enumerate(zip(hist["loss"], hist["cosine"]), start=1):
            logger.log({"epoch": e, "loss": loss, "train_cosine": cos})
    logger.close()
    path = translator.save(out / "translator.pt", extra={"classes": classes, "perception_config": str(pcfg_path)})

    # held-out report: open-vocabulary labels and top-k precision per class name
    report: dict[str, Any] = {"mode": mode, "train_voxels": int(train.sum()), "heldout_voxels": int(test.sum())}
    if mode == "targets":
        hv = visible & held
        if hv.any():
            e = translator.embed(feats[hv])
            tn = targets[hv] / np.maximum(np.linalg.norm(targets[hv], axis=1, keepdims=True), 1e-12)
            report["heldout_target_cosine"] = float(np.mean(np.sum(e * tn, axis=1)))
            report["heldout_voxels"] = int(hv.sum())
    if test.any() and classes:
        emb = translator.embed(feats[test])
        cemb = te.encode(classes)
        pred = cosine_to_vocabulary(emb, cemb).argmax(1)
        scores = segmentation_scores(confusion_matrix(pred, labels[test], len(classes)))
        k = int(cfg["eval"]["top_k"])
        prec = {}
        for c, name in enumerate(classes):
            others = np.delete(cemb, c, axis=0)
            m = relevance_margin(emb, cemb[c], others if len(others) else None, translator.temperature)
            top = np.argsort(-m)[:k]
            prec[name] = float(np.mean(labels[test][top] == c))
        report.update({"heldout_miou": scores["miou"], "heldout_accuracy": scores["oacc"],
                       "iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(classes, scores["iou"])},
                       f"precision_at_{k}": prec})
    from concerto_ros.models.bundle import bundle_from_pipeline, save_bundle

    metrics = {k: v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    bundle = bundle_from_pipeline(
        pipeline, translator=translator, vocabulary=classes if mode == "labels" else [],
        text_encoder=cfg["text_encoder"]["backend"], text_model=cfg["text_encoder"]["model"] or "",
        metadata={"description": f"translator ({mode}) into {te.name} over {classes or 'targets'} on "
                                 f"{pipeline.feature_dims}",
                  "command": "concerto train translator", "config": cfg, "metrics": metrics})
    bundle_path = save_bundle(bundle, out / "bundle.pt")
    log(f"model bundle {bundle_path} ({' + '.join(bundle.components())}): run it with model.bundle: {bundle_path}")
    summary = {"translator": str(path), "bundle": str(bundle_path), "classes": classes,
               "feature_dims": pipeline.feature_dims,
               "text_encoder": te.name, "epochs": len(hist["loss"]), "loss_first": hist["loss"][0],
               "loss_last": hist["loss"][-1], "temperature": translator.temperature,
               "wall_s": time.perf_counter() - t_start, **report}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    rows = [("translator", str(path)), ("bundle", str(bundle_path)), ("features", f"{pipeline.out_channels}-d {pipeline.feature_dims}"),
            ("text encoder", f"{te.name} ({te.dim}-d)"), ("train / held-out voxels",
                                                           f"{report['train_voxels']} / {report['heldout_voxels']}"),
            ("loss first -> last", f"{hist['loss'][0]:.3f} -> {hist['loss'][-1]:.3f}")]
    if "heldout_target_cosine" in report:
        rows += [("held-out cosine to targets", f"{report['heldout_target_cosine']:.3f}")]
    if "heldout_miou" in report:
        rows += [("held-out mIoU / accuracy", f"{report['heldout_miou']:.3f} / {report['heldout_accuracy']:.3f}")]
    rows += [("wall time", f"{summary['wall_s']:.1f} s")]
    print_summary("translator", rows)
    del torch
    return summary
