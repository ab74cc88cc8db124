"""Real-data check of the language translator on ScanNet scene0000_00.

Fits :func:`concerto_ros.language.fit_translator_labels` on the per-point features of the
project's encoder (the seeded random ``model.preset`` encoder unless ``--checkpoint`` is given)
for the labelled points of one part of the scene, then queries the held-out part with the
trained NYU40 class names AND synonyms never used in training ("couch" for sofa, "cupboard"
for cabinet ...), reporting the precision of the top-k points per query.

Data: ``../shared/data/scannet_scene0000`` (mesh vertices ``(N,6)`` xyzrgb, NYU40 ids per
vertex, 0 = unannotated). The vertices are grid-sampled at 0.02 m
(:func:`concerto_ros.cloud.voxel.grid_sample`, one vertex per voxel) and encoded with
:meth:`concerto_ros.models.extractor.FeatureExtractor.encode` (CenterShift inside).

Feature sets (``--features``):
  enc          encoder features only
  enc+xyzrgb   encoder features + xyz normalised to [0, 1] over the scene + rgb/255
  enc+zrgb     encoder features + height above the lowest point (m) + rgb/255
               (absolute x/y do not transfer across a spatial split)

Splits (``--split``, default both): ``x`` trains on points with x < median x and evaluates on the rest;
``blocks`` is a checkerboard of ``--block`` metre squares on x/y (train on the even squares).

Usage:
    scripts/env.sh python benchmarks/eval_translator_scannet.py                # table + JSON
    scripts/env.sh python benchmarks/eval_translator_scannet.py --split blocks --features enc+zrgb
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "scannet_scene0000"
FEATURE_SETS = ("enc", "enc+xyzrgb", "enc+zrgb")


def load_scene(data_dir: Path, voxel: float = 0.02):
    """Grid-sampled vertices: ``coord (M,3) float32 m``, ``grid_coord (M,3)``, ``color (M,3)
    uint8``, ``nyu40 (M,) int64``."""
    from concerto_ros.cloud.voxel import grid_sample

    v = np.load(data_dir / "scene0000_00_vert_all.npy")
    sem = np.load(data_dir / "scene0000_00_sem_label_all.npy").astype(np.int64).reshape(-1)
    gs = grid_sample(v[:, :3].astype(np.float32), voxel)
    coord = v[gs.index, :3].astype(np.float32)
    color = np.clip(np.rint(v[gs.index, 3:6]), 0, 255).astype(np.uint8)
    return coord, gs.grid_coord, color, sem[gs.index]


def build_features(coord, grid_coord, color, feature_set: str, preset: str, feature: str, seed: int,
                   checkpoint: str = "") -> tuple[np.ndarray, str]:
    """Per-point features for ``feature_set`` (see the module doc) and a description."""
    from concerto_ros.config import PerceptionConfig
    from concerto_ros.models.extractor import FeatureExtractor

    cfg = PerceptionConfig().model
    cfg.preset, cfg.feature, cfg.seed, cfg.checkpoint = preset, feature, seed, checkpoint
    ex = FeatureExtractor.from_config(cfg)
    enc = ex.encode(coord, grid_coord, color=color).cpu().numpy().astype(np.float32)
    desc = f"{ex.description.split(':')[0]} {feature} {enc.shape[1]}-d"
    rgb = color.astype(np.float32) / 255.0
    if feature_set == "enc":
        return enc, desc
    if feature_set == "enc+xyzrgb":
        lo, hi = coord.min(0), coord.max(0)
        xyz = (coord - lo) / np.maximum(hi - lo, 1e-6)
        return np.concatenate([enc, xyz, rgb], 1).astype(np.float32), desc + " + xyz(0-1) + rgb/255"
    if feature_set == "enc+zrgb":
        z = (coord[:, 2:3] - coord[:, 2].min())
        return np.concatenate([enc, z, rgb], 1).astype(np.float32), desc + " + height(m) + rgb/255"
    raise ValueError(f"unknown feature set {feature_set!r}, expected one of {FEATURE_SETS}")


def split_mask(coord: np.ndarray, split: str, block: float = 1.0) -> np.ndarray:
    """``(M,) bool`` training mask of the spatial split (the rest is held out)."""
    if split == "x":
        return coord[:, 0] < np.median(coord[:, 0])
    if split == "blocks":
        b = np.floor((coord[:, :2] - coord[:, :2].min(0)) / block).astype(np.int64)
        return (b.sum(1) % 2) == 0
    raise ValueError(f"unknown split {split!r}")


def evaluate(args) -> dict:
    """Fit on the training part and score every query on the held-out part."""
    import torch

    from concerto_ros.language import (SentenceTransformerTextEncoder, TextQueryScorer, cosine_to_vocabulary,
                                       fit_translator_labels)
    from concerto_ros.recordings.labels import NYU40_CLASS_NAMES, SYNONYMS

    torch.set_num_threads(max(1, int(args.threads)))
    t0 = time.perf_counter()
    coord, grid_coord, color, nyu = load_scene(Path(args.data), args.voxel)
    ids = [int(i) for i in np.unique(nyu) if i > 0]
    names = [NYU40_CLASS_NAMES[i] for i in ids]
    lut = -np.ones(41, np.int64)
    lut[ids] = np.arange(len(ids))
    y = lut[nyu]
    text = SentenceTransformerTextEncoder()
    class_emb = text.encode(names)
    results = {"scene": "scannet scene0000_00", "voxel_m": args.voxel, "n_points": int(len(y)),
               "splits": list(args.split), "block_m": args.block, "text_encoder": text.name, "k": list(args.k),
               "epochs": args.epochs, "runs": []}
    features = {fs: build_features(coord, grid_coord, color, fs, args.preset, args.feature, args.seed,
                                   args.checkpoint) for fs in args.features}
    for split, fs in [(sp, fs) for sp in args.split for fs in args.features]:
        train = split_mask(coord, split, args.block)
        held = ~train
        feats, desc = features[fs]
        t = time.perf_counter()
        tr, hist = fit_translator_labels(feats, np.where(train, y, -1), class_emb, text.name, epochs=args.epochs,
                                         batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                         class_weight=None if args.class_weight == "none" else args.class_weight,
                                         progress=not args.no_progress, feature=desc)
        fit_s = time.perf_counter() - t
        emb = tr.embed(feats[held])
        yh = y[held]
        cos = cosine_to_vocabulary(emb, class_emb)
        pred = cos.argmax(1)
        lab = yh >= 0
        scorer = TextQueryScorer(text, temperature=tr.temperature)
        n_train = np.bincount(y[train & (y >= 0)], minlength=len(names))
        n_held = np.bincount(yh[lab], minlength=len(names))
        rows = []
        for c, name in enumerate(names):
            if n_held[c] < args.min_points:
                continue
            m = yh == c
            mean_cos_winner = names[int(cos[m].mean(0).argmax())]
            for q in (name,) + tuple(SYNONYMS.get(name, ())):
                r = scorer.score(emb, q, k=max(args.k))  # LERF relevance vs the default negatives
                rc = scorer.score(emb, q, k=max(args.k), negatives=())  # plain cosine ranking
                row = {"query": q, "class": name, "synonym": q != name, "trained": bool(n_train[c] >= args.min_points),
                       "n_train": int(n_train[c]), "n_held": int(n_held[c]),
                       "chance": float(n_held[c] / max(1, lab.sum())),
                       "nearest_class_text": names[int((class_emb @ text.encode_one(q)).argmax())],
                       "class_mean_cos_winner": mean_cos_winner,
                       "class_argmax_recall": float((pred[m] == c).mean())}
                for k in args.k:
                    row[f"p@{k}"] = float((yh[r.topk[:k]] == c).mean())
                    row[f"cos_p@{k}"] = float((yh[rc.topk[:k]] == c).mean())
                rows.append(row)
        run = {"split": split, "features": fs, "description": desc, "dim": int(feats.shape[1]),
               "fit_s": round(fit_s, 2),
               "temperature": tr.temperature, "final_loss": hist["loss"][-1],
               "train_accuracy": hist["accuracy"][-1],
               "heldout_accuracy": float((pred[lab] == yh[lab]).mean()), "queries": rows}
        results["runs"].append(run)
        print_run(run, args.k)
    results["total_s"] = round(time.perf_counter() - t0, 1)
    return results


def print_run(run: dict, ks) -> None:
    print(f"\n== split {run['split']}, {run['features']}: {run['description']} | fit {run['fit_s']} s, "
          f"T={run['temperature']:.3f}, "
          f"train acc {run['train_accuracy']:.3f}, held-out argmax acc {run['heldout_accuracy']:.3f}")
    print("p@k: precision of the k most relevant held-out points (LERF relevance vs 'object', 'things', "
          "'stuff', 'texture'); cos p@k: ranked by plain cosine to the query")
    head = f"{'query':<16}{'class':<16}{'syn':>4}{'trained':>8}{'n_held':>7}{'chance':>7}" + "".join(
        f"{'p@' + str(k):>7}" for k in ks) + "".join(f"{'cos p@' + str(k):>11}" for k in ks) + \
        f"  {'nearest class text':<19}{'mean-cos winner':<16}"
    print(head)
    print("-" * len(head))
    for r in run["queries"]:
        print(f"{r['query']:<16}{r['class']:<16}{'y' if r['synonym'] else '':>4}{'y' if r['trained'] else 'NO':>8}"
              f"{r['n_held']:>7}{r['chance']:>7.3f}" + "".join(f"{r[f'p@{k}']:>7.2f}" for k in ks)
              + "".join(f"{r[f'cos_p@{k}']:>11.2f}" for k in ks)
              + f"  {r['nearest_class_text']:<19}{r['class_mean_cos_winner']:<16}")
    for syn in (False, True):
        sel = [r for r in run["queries"] if r["synonym"] == syn and r["trained"]]
        if sel:
            print(f"mean over trained classes, {'synonyms' if syn else 'class names'} ({len(sel)} queries): "
                  + ", ".join(f"p@{k} {np.mean([r[f'p@{k}'] for r in sel]):.3f}" for k in ks) + ", "
                  + ", ".join(f"cos p@{k} {np.mean([r[f'cos_p@{k}'] for r in sel]):.3f}" for k in ks))


def main(argv=None) -> int:
    from concerto_ros.cli.helptext import plain
    p = argparse.ArgumentParser(description=plain(__doc__.split("\n")[0]))
    p.add_argument("--data", default=str(DEFAULT_DATA), help="scannet_scene0000 folder")
    p.add_argument("--features", nargs="+", default=["enc", "enc+xyzrgb", "enc+zrgb"], choices=FEATURE_SETS)
    p.add_argument("--split", nargs="+", default=["blocks", "x"], choices=["x", "blocks"])
    p.add_argument("--block", type=float, default=1.0, help="block edge (m) of the 'blocks' split")
    p.add_argument("--voxel", type=float, default=0.02)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--feature", default="concat3", choices=["concat3", "all_levels"])
    p.add_argument("--checkpoint", default="", help="trained Concerto encoder checkpoint (default: seeded random)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--lr", type=float, default=2e-2)
    p.add_argument("--class-weight", default="none", choices=["none", "balanced"])
    p.add_argument("--k", type=int, nargs="+", default=[100, 500])
    p.add_argument("--min-points", type=int, default=300, help="classes with fewer held-out points are not queried")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", default=str(ROOT / "outputs" / "eval_translator_scannet.json"))
    args = p.parse_args(argv)
    if not Path(args.data).is_dir():
        print(f"{args.data} not found: this benchmark needs ../shared/data/scannet_scene0000 beside the repository")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = evaluate(args)
    results["argv"] = sys.argv[1:] if argv is None else list(argv)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out} ({results['total_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
