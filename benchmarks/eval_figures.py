"""The evaluation figures of the README ("Evaluation"), each one `concerto eval` command line.

Runs the commands below one after the other (each through the real CLI, so the printed
command line is exactly what a user types), records wall time and load average around
each, and writes ``<out>/figures.json`` and ``<out>/figures.md`` (one row per figure with
its command). Real data from ``../shared/data`` (skipped with a message when absent).

Figures (``--only`` picks some):

* ``kitti``: SemanticKITTI linear / kNN probes (MSM protocol), training on scan 000700 and
  testing on the three ``kitti_01`` scans, seeded random ``tiny`` encoder at 0.05 m (no
  trained outdoor weights exist here);
* ``kitti_split``: the same on a spatial split of 000700 (30 % of 4 m cubes held out);
* ``mosd_random`` / ``mosd_ssl``: mOSD learn -> test probes for the random encoder and for
  an encoder from ``concerto train ssl --config config/train_ssl_mosd.yaml`` (``--ssl-bundle``);
* ``scannet``: a translator fitted on ScanNet scene0000_00 by ``concerto train translator``
  (NYU40 names present in the scene, the node's seeded random encoder), then
  ``concerto eval queries`` unrotated and with ``--yaw 90``;
* ``scannet_default``: the same translator fitted on the embedded default bundle's fused
  features (``--set node.model.bundle=default``; its Concerto encoder was pre-trained with
  views at any yaw), then ``concerto eval queries`` at yaw 0, 90, 180 and 270 degrees;
* ``scannet_default_tta``: the same translator with 8 yaw copies of the scene
  (``--set augment.copies=8``), queried at yaw 0, 45 and 90 degrees without and with
  rotation test-time augmentation (``--tta-yaws 4``);
* ``compare_demo`` / ``compare_mosd``: ``concerto eval --compare default random`` on the
  demo's labelled sequence (seed 0, 12 frames, 320x240, generated here) and on the mOSD
  test split.

Usage (heavy: wrap in the CPU lock on shared machines)::

    flock /tmp/concerto-cpu.lock scripts/env.sh python benchmarks/eval_figures.py --only kitti kitti_split
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
KITTI, MOSD, SCANNET = DATA / "semantickitti", DATA / "mosd", DATA / "scannet_scene0000"


def _kitti(name: str) -> str:
    return (f"{{type: points, path: {KITTI}/{name.replace('LBL', 'points')}.npy, "
            f"labels: {KITTI}/{name.replace('LBL', 'labels')}.npy, label_names: semantickitti}}")


#: LiDAR config: 0.05 m voxels; these scans are not in the sensor frame (000700 lies 25-157 m
#: from the origin), so no range limit drops labelled points
LIDAR = ["-c", "config/perception_lidar.yaml", "--set", "lift.min_range=0", "--set", "lift.max_range=1000"]
MOSD_LEARN = f"{{type: pcd, path: {MOSD}/learn, label_names: mosd}}"
MOSD_TEST = f"{{type: pcd, path: {MOSD}/test, label_names: mosd}}"
#: mOSD: 45 learn / 17 test scenes of ~180k points; kNN costs points x bank similarities
MOSD_PROBE = ["--train-points", "10000", "--test-points", "20000", "--bank-size", "20000"]
SCANNET_POINTS = (f"{{type: points, path: {SCANNET}/scene0000_00_vert_all.npy, "
                  f"labels: {SCANNET}/scene0000_00_sem_label_all.npy, label_names: nyu40}}")


def figures(out: Path, ssl_bundle: str, demo_seq: Path, translator_out: Path) -> dict[str, list[list[str]]]:
    """``{figure: [argv of each command]}``."""
    kitti_train = _kitti("semkitti_LBL_000700")
    tests = [a for i in range(3) for a in ("--test", _kitti(f"kitti_01_LBL_00000{i}"))]
    ids = sorted(int(i) for i in np.unique(np.load(SCANNET / "scene0000_00_sem_label_all.npy")) if i > 0) \
        if SCANNET.is_dir() else []
    from concerto_ros.recordings.labels import NYU40_CLASS_NAMES

    names = [NYU40_CLASS_NAMES[i] for i in ids]
    bundle = str(translator_out / "bundle.pt")
    queries = ["eval", "queries", "--bundle", bundle, "--data", SCANNET_POINTS, "--names", "nyu40",
               "--set", "lift.min_range=0"]
    return {
        "kitti": [["eval", "probe", *LIDAR, "--train", kitti_train, *tests, "--train-points", "0",
                   "--bank-size", "20000", "-o", str(out / "kitti_probe")]],
        "kitti_split": [["eval", "probe", *LIDAR, "--train", kitti_train, "--split-block", "4", "--train-points", "0",
                         "--bank-size", "20000", "-o", str(out / "kitti_split_probe")]],
        "mosd_random": [["eval", "probe", "--bundle", "random", "--train", MOSD_LEARN, "--test", MOSD_TEST, *MOSD_PROBE,
                         "-o", str(out / "mosd_probe_random")]],
        "mosd_ssl": [["eval", "probe", "--bundle", ssl_bundle, "--train", MOSD_LEARN, "--test", MOSD_TEST, *MOSD_PROBE,
                      "-o", str(out / "mosd_probe_ssl")]],
        "scannet": [["train", "translator", "--output", str(translator_out),
                     "--set", f"data.sources=[{{type: points, path: {SCANNET}/scene0000_00_vert_all.npy, "
                     f"labels: {SCANNET}/scene0000_00_sem_label_all.npy}}]",
                     "--set", f"data.classes=[{', '.join(names)}]", "--set", f"data.label_ids={ids}"],
                    [*queries, "-o", str(out / "scannet_queries_yaw0")],
                    [*queries, "--yaw", "90", "-o", str(out / "scannet_queries_yaw90")]],
        "scannet_default": [["train", "translator", "--output", str(out / "scannet_translator_default"),
                             "--set", "node.model.bundle=default",
                             "--set", f"data.sources=[{{type: points, path: {SCANNET}/scene0000_00_vert_all.npy, "
                             f"labels: {SCANNET}/scene0000_00_sem_label_all.npy}}]",
                             "--set", f"data.classes=[{', '.join(names)}]", "--set", f"data.label_ids={ids}"]]
        + [["eval", "queries", "--bundle", str(out / "scannet_translator_default" / "bundle.pt"), "--data",
            SCANNET_POINTS, "--names", "nyu40", "--set", "lift.min_range=0", "--yaw", str(yaw),
            "-o", str(out / f"scannet_default_queries_yaw{yaw}")] for yaw in (0, 90, 180, 270)],
        # the same with 8 yaw copies per training scene, scored without and with rotation
        # test-time augmentation (4 right-angle yaws averaged: 90 and 270 score as 0 by construction)
        "scannet_default_tta": [["train", "translator", "--output", str(out / "scannet_translator_default8"),
                                 "--set", "node.model.bundle=default", "--set", "augment.copies=8",
                                 "--set", f"data.sources=[{{type: points, path: {SCANNET}/scene0000_00_vert_all.npy, "
                                 f"labels: {SCANNET}/scene0000_00_sem_label_all.npy}}]",
                                 "--set", f"data.classes=[{', '.join(names)}]", "--set", f"data.label_ids={ids}"]]
        + [["eval", "queries", "--bundle", str(out / "scannet_translator_default8" / "bundle.pt"), "--data",
            SCANNET_POINTS, "--names", "nyu40", "--set", "lift.min_range=0", "--yaw", str(yaw), "--tta-yaws", str(n),
            "-o", str(out / f"scannet_default8_queries_yaw{yaw}_tta{n}")]
           for n, yaws in ((1, (0, 45, 90)), (4, (0, 45, 90))) for yaw in yaws],
        "compare_demo": [["eval", "--data", str(demo_seq), "--compare", "default", "random",
                          "-o", str(out / "compare_demo")]],
        "compare_mosd": [["eval", "--data", MOSD_TEST, "--compare", "default", "random",
                          "-o", str(out / "compare_mosd")]],
    }


def _result(argv: list[str]) -> dict:
    """The headline numbers a command wrote."""
    out = Path(argv[argv.index("-o") + 1]) if "-o" in argv else None
    if out is None:
        return {}
    if (out / "queries.json").is_file():
        q = json.loads((out / "queries.json").read_text())
        return {k: q[k] for k in ("mean_precision_names", "mean_precision_synonyms", "mean_auc_names",
                                  "mean_auc_synonyms", "k")}
    m = json.loads((out / "metrics.json").read_text())
    if "linear" in m:
        return {f"{p}_{k}": m[p][k] for p in ("linear", "knn") for k in ("miou", "accuracy")} | \
            {f"{p}_iou": m[p]["per_class_iou"] for p in ("linear", "knn")}
    if "runs" in m:
        return {run: {k: r[k] for k in ("miou", "miou_all", "accuracy")} | {"per_class_iou": r["per_class_iou"]}
                for run, r in m["runs"].items()}
    return {k: m[k] for k in ("miou", "miou_all", "accuracy")}


def main(argv=None) -> int:
    from concerto_ros.cli.helptext import plain
    p = argparse.ArgumentParser(description=plain(__doc__.split("\n")[0]))
    p.add_argument("--only", nargs="+", default=None, help="figures to run (default: all)")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "eval_figures")
    p.add_argument("--ssl-bundle", default="outputs/ssl_mosd/bundle.pt",
                   help="encoder from 'concerto train ssl --config config/train_ssl_mosd.yaml'")
    args = p.parse_args(argv)
    if not DATA.is_dir():
        print(f"{DATA} not found: these figures need ../shared/data beside the repository")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    demo_seq = args.out / "demo_sequence"
    from concerto_ros.demo.scene import write_sequence

    if not (demo_seq / "camera.yaml").is_file():
        write_sequence(demo_seq, seed=0, num_frames=12)  # the demo's room and trajectory
    figs = figures(args.out, args.ssl_bundle, demo_seq, args.out / "scannet_translator")
    summary_path = args.out / "figures.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    for name in args.only or list(figs):
        rows = []
        for cmd in figs[name]:
            line = "concerto " + " ".join(shlex.quote(a) for a in cmd)
            print(f"\n== {name}: {line}", flush=True)
            before, t0 = os.getloadavg(), time.perf_counter()
            rc = subprocess.call([sys.executable, "-m", "concerto_ros.cli", *cmd, "--no-progress"], cwd=ROOT, env=env)
            rows.append({"command": line, "rc": rc, "wall_s": round(time.perf_counter() - t0, 1),
                         "loadavg_before": before, "loadavg_after": os.getloadavg(),
                         "result": _result(cmd) if rc == 0 else None})
        summary[name] = rows
        summary_path.write_text(json.dumps(summary, indent=1))
    lines = ["| figure | command | result | wall s | load average before / after |", "|---|---|---|---|---|"]
    for name, rows in summary.items():
        for r in rows:
            lines.append(f"| {name} | `{r['command']}` | {json.dumps(r['result'])} | {r['wall_s']} | "
                         f"{r['loadavg_before'][0]:.2f} / {r['loadavg_after'][0]:.2f} |")
    (args.out / "figures.md").write_text("\n".join(lines) + "\n")
    print(f"\nwrote {summary_path} and {args.out / 'figures.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
