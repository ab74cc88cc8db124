#!/usr/bin/env python3
"""The self-supervised objectives of ``concerto train ssl`` compared at one step budget, over
seeds, with the Masked Scene Modeling probes of ``concerto eval probe`` (issue 13 item 4).

For every dataset, objective and seed:

1. ``concerto train ssl --seed S --set node.model.seed=S --set ssl.objective=OBJ`` for
   ``--steps`` optimizer steps from the node's seeded random ``tiny`` encoder (seed S), on
   the dataset's unlabelled scenes (objective ``random``: no pre-training, the seeded random
   encoder itself);
2. ``concerto eval probe --seed S`` on the encoder: linear and kNN probes on the
   trilinearly interpolated all-levels feature (arXiv 2504.06719's protocol), scored as mIoU.

Datasets (``../shared/data``):

* ``mosd``: pre-training on the 45 ``learn`` clouds (``config/train_ssl_mosd.yaml``: Kinect
  optical frame, up axis -y), probes trained on ``learn`` and scored on the 17 ``test``
  clouds (table vs object);
* ``scannet``: ScanNet scene0000_00's vertices (81k points, z up); pre-training on the whole
  scene without labels, probes trained on the points outside held-out squares and scored on
  the held-out ones (``concerto eval probe`` without ``--test``: a share ``--split-fraction``
  of ``--split-block``-metre cubes, which on this one-storey scan are squares in plan); the
  NYU40 classes present. One scene: its probes use every training and held-out point
  (``--train-points``/``--test-points`` are mOSD's, per scene).

Every run is a subprocess of the ``concerto`` CLI; with ``--lock FILE`` each one takes the
shared CPU lock (``flock FILE``), so other heavy jobs interleave between runs. A run whose
outputs exist is reused (unless its ssl step budget differs; delete ``--out`` to redo every
run), so an interrupted table resumes.

Outputs: ``<results>.json`` (every run: wall times, linear/kNN mIoU and per-class IoU, the
budgets, the load average), ``<results>.md`` (mean +- sample std over the seeds) and
``<results>.png`` (bars with std error bars); the Markdown table is printed.

Usage (the committed table; about 15 min of 2 CPU cores per seed, both datasets, five objectives)::

    scripts/env.sh python benchmarks/ssl_objectives.py --lock /tmp/concerto-cpu.lock
    # the README preview's full budget, one command:
    scripts/env.sh python benchmarks/ssl_objectives.py --steps 400 --train-points 10000 \\
        --test-points 20000 --bank-size 20000 --epochs 30 --results benchmarks/results/ssl_objectives_full
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OBJECTIVES = ("random", "concerto", "msm", "pointcsp", "concerto+msm")
DATASETS = ("mosd", "scannet")


def dataset_commands(name: str, data: Path) -> tuple[list[str], list[str]]:
    """``(ssl arguments, probe arguments)`` of dataset ``name`` (paths under ``data``).

    Raises:
        ValueError: unknown dataset.
    """
    if name == "mosd":
        learn = f"{{type: pcd, path: {data}/mosd/learn, label_names: mosd}}"
        test = f"{{type: pcd, path: {data}/mosd/test, label_names: mosd}}"
        return ["--config", "config/train_ssl_mosd.yaml"], ["--train", learn, "--test", test]
    if name == "scannet":
        d = data / "scannet_scene0000"
        pts = f"{{type: points, path: {d}/scene0000_00_vert_all.npy"
        ssl = ["--set", f"data.sources=[{pts}}}]", "--set", "node.lift.min_range=0", "--set", "views.up_axis=z",
               "--set", "data.eval_scenes=1", "--set", "node.model.feature=all_levels",
               # 4000-voxel crops of the 60k-voxel scene keep a step about a second on 2 CPU cores
               "--set", "views.max_view_voxels=4000"]
        probe = ["--train", f"{pts}, labels: {d}/scene0000_00_sem_label_all.npy, label_names: nyu40}}",
                 "--set", "lift.min_range=0", "--train-points", "0", "--test-points", "0"]
        return ssl, probe
    raise ValueError(f"unknown dataset {name!r}, expected one of {DATASETS}")


def parse_steps(items: list[str], datasets: list[str]) -> dict[str, int]:
    """``--steps`` values (``N`` for every dataset, or ``name=N``) as ``{dataset: steps}``.

    Raises:
        ValueError: a malformed value or an unknown dataset name.
    """
    out: dict[str, int] = {}
    for it in items:
        name, _, n = it.rpartition("=")
        if name and name not in DATASETS:
            raise ValueError(f"--steps {it}: unknown dataset {name!r}")
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"--steps {it}: expected a positive step count")
        for d in ([name] if name else datasets):
            out[d] = int(n)
    missing = [d for d in datasets if d not in out]
    if missing:
        raise ValueError(f"--steps gives no budget for {missing}")
    return out


def _cli(args: list[str], log_path: Path, lock: str) -> float:
    """Run ``concerto ARGS`` (under ``flock LOCK`` when set), output into ``log_path``;
    returns the wall time in seconds.

    Raises:
        RuntimeError: the command failed (the log's last lines in the message).
    """
    cmd = [sys.executable, "-m", "concerto_ros.cli", *args]
    if lock:
        cmd = ["flock", lock, *cmd]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with open(log_path, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        code = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - t
    if code != 0:
        tail = "".join(log_path.read_text().splitlines(True)[-5:])
        raise RuntimeError(f"`concerto {' '.join(args[:2])}` failed (exit {code}), see {log_path}:\n{tail}")
    return wall


def run_one(dataset: str, objective: str, seed: int, args: argparse.Namespace) -> dict:
    """Pre-train (unless ``random``) and probe one encoder; reuses outputs already there."""
    ssl_args, probe_args = dataset_commands(dataset, args.data)
    run_dir = args.out / dataset / f"{objective.replace('+', '_')}_seed{seed}"
    row: dict = {"dataset": dataset, "objective": objective, "seed": seed}
    if objective == "random":
        bundle = ["--bundle", "random", "--set", f"model.seed={seed}"]
    else:
        ssl_dir, steps = run_dir / "ssl", args.steps[dataset]
        done = ssl_dir / "summary.json"
        if not done.is_file() or json.loads(done.read_text()).get("steps") != steps:
            shutil.rmtree(run_dir, ignore_errors=True)  # another budget: pre-train and probe again
            _cli(["train", "ssl", *ssl_args, "--output", str(ssl_dir), "--seed", str(seed), "--no-progress",
                  "--set", f"node.model.seed={seed}", "--set", f"ssl.objective={objective}",
                  "--set", f"loop.steps={steps}", "--set", f"loop.steps_per_epoch={steps}",
                  "--set", "loop.checkpoint_every=0", "--set", f"cache_dir={args.out / dataset / 'cache'}"],
                 run_dir / "ssl.log", args.lock)
        s = json.loads((ssl_dir / "summary.json").read_text())
        row.update(ssl_steps=s["steps"], ssl_loop_s=s["wall_s"],
                   ssl_loss_first=s.get("loss_first"), ssl_loss_last=s.get("loss_last"))
        bundle = ["--bundle", str(ssl_dir / "bundle.pt")]
    probe_dir = run_dir / "probe"
    if not (probe_dir / "metrics.json").is_file():
        # the dataset's own point counts (after the defaults) win: ScanNet is one scene, all its points
        _cli(["eval", "probe", "--train-points", str(args.train_points), "--test-points", str(args.test_points),
              *probe_args, *bundle, "--seed", str(seed), "--no-progress", "-o", str(probe_dir),
              "--bank-size", str(args.bank_size), "--epochs", str(args.epochs), "--k", str(args.k)],
             run_dir / "probe.log", args.lock)
    m = json.loads((probe_dir / "metrics.json").read_text())
    for p in ("linear", "knn"):
        row[f"{p}_miou"] = float(m[p]["miou"])
        row[f"{p}_per_class_iou"] = m[p].get("per_class_iou")
    row["probe_wall_s"] = m.get("wall_s")
    return row


def summarize(rows: list[dict]) -> dict:
    """``{dataset: {objective: {linear_mean, linear_std, knn_mean, knn_std, n, ssl_loop_s}}}``
    (std: sample standard deviation over the seeds, 0 for one seed)."""
    out: dict = {}
    for r in rows:
        out.setdefault(r["dataset"], {}).setdefault(r["objective"], []).append(r)
    for ds, objs in out.items():
        for obj, rs in objs.items():
            s: dict = {"n": len(rs), "seeds": [r["seed"] for r in rs]}
            for p in ("linear", "knn"):
                v = np.array([r[f"{p}_miou"] for r in rs], np.float64)
                s[f"{p}_mean"] = float(v.mean())
                s[f"{p}_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
            t = [r["ssl_loop_s"] for r in rs if r.get("ssl_loop_s") is not None]
            s["ssl_loop_s"] = float(np.mean(t)) if t else None
            objs[obj] = s
    return out


def markdown(summary: dict, meta: dict) -> str:
    """The table: one row per objective, linear and kNN mIoU per dataset (mean +- std)."""
    dss = [d for d in DATASETS if d in summary]
    objs = [o for o in OBJECTIVES if any(o in summary[d] for d in dss)]
    head = "| `ssl.objective` | " + " | ".join(
        f"{d} linear | {d} kNN | {d} ssl loop" for d in dss) + " |"
    lines = [head, "|" + "---|" * (1 + 3 * len(dss))]
    best = {(d, p): max(s[f"{p}_mean"] for s in summary[d].values()) for d in dss for p in ("linear", "knn")}
    for o in objs:
        cells = []
        for d in dss:
            s = summary[d].get(o)
            if s is None:
                cells += ["-", "-", "-"]
                continue
            for p in ("linear", "knn"):
                c = f"{s[f'{p}_mean']:.3f} ± {s[f'{p}_std']:.3f}" if s["n"] > 1 else f"{s[f'{p}_mean']:.3f} (1 seed)"
                cells.append(f"**{c}**" if s[f"{p}_mean"] == best[(d, p)] else c)
            cells.append("-" if s["ssl_loop_s"] is None else f"{s['ssl_loop_s']:.0f} s")
        lines.append(f"| `{o}` | " + " | ".join(cells) + " |")
    b = meta["budgets"]
    lines.append("")
    lines.append(f"mIoU mean ± sample std over seeds {meta['seeds']}; ssl steps "
                 f"{', '.join(f'{d} {n}' for d, n in b['steps'].items())} (global batch 1); probes: "
                 f"{b['train_points']} training / {b['test_points']} test points per scene, kNN bank "
                 f"{b['bank_size']}, k {b['k']}, linear {b['epochs']} epochs; ssl loop: mean training-loop time; "
                 f"load average {meta['loadavg_start']} at the start, {meta['loadavg_end']} at the end.")
    if not meta["complete"]:
        n = {d: sorted({s for o in summary[d].values() for s in o["seeds"]}) for d in dss}
        lines.append(f"PARTIAL: {meta['runs_done']} runs done; seeds per dataset {n}.")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    """Grouped bars, one panel per dataset: linear and kNN mIoU per objective with std bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dss = [d for d in DATASETS if d in summary]
    fig, axes = plt.subplots(1, len(dss), figsize=(5.5 * len(dss), 4), squeeze=False)
    for ax, d in zip(axes[0], dss):
        objs = [o for o in OBJECTIVES if o in summary[d]]
        x = np.arange(len(objs))
        for i, p in enumerate(("linear", "knn")):
            m = [summary[d][o][f"{p}_mean"] for o in objs]
            e = [summary[d][o][f"{p}_std"] for o in objs]
            ax.bar(x + (i - 0.5) * 0.38, m, 0.38, yerr=e, capsize=3, label=f"{p} probe")
        lo = min(summary[d][o][f"{p}_mean"] for o in objs for p in ("linear", "knn"))
        ax.set(xticks=x, title=d, ylabel="mIoU", ylim=(max(0.0, lo - 0.1), None))
        ax.set_xticklabels(objs, rotation=20)
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
    fig.suptitle("concerto train ssl objectives: probe mIoU (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(rows: list[dict], args: argparse.Namespace, load0: list[float], t0: float,
                  argv: list[str] | None, complete: bool) -> str:
    """Write ``<results>.json/.md/.png`` from the runs so far; returns the Markdown table."""
    meta = {"seeds": sorted({r["seed"] for r in rows}), "datasets": args.datasets, "objectives": args.objectives,
            "complete": complete, "runs_done": len(rows),
            "budgets": {"steps": args.steps, "train_points": args.train_points, "test_points": args.test_points,
                        "bank_size": args.bank_size, "epochs": args.epochs, "k": args.k},
            "loadavg_start": load0, "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "wall_s": time.perf_counter() - t0,
            "command": "benchmarks/ssl_objectives.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    summary = summarize(rows)
    table = markdown(summary, meta)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": rows},
                                                            indent=2, default=str))
    args.results.with_suffix(".md").write_text(table + "\n")
    plot(summary, args.results.with_suffix(".png"))
    return table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from concerto_ros.cli.helptext import plain
    p = argparse.ArgumentParser(description=plain(__doc__.split("\n\n")[0]), formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--objectives", nargs="+", default=list(OBJECTIVES),
                   help="objectives; 'random' is the encoder without pre-training (default: all five)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS, help="default: both")
    p.add_argument("--steps", nargs="+", default=["mosd=100", "scannet=60"],
                   help="ssl steps: N for every dataset, or DATASET=N (default mosd=100 scannet=60)")
    p.add_argument("--train-points", type=int, default=4000, help="probe training points per scene (default 4000)")
    p.add_argument("--test-points", type=int, default=10000, help="probe test points per scene (default 10000)")
    p.add_argument("--bank-size", type=int, default=10000, help="kNN memory bank, points (default 10000)")
    p.add_argument("--epochs", type=int, default=15, help="linear-probe epochs (default 15)")
    p.add_argument("--k", type=int, default=20, help="kNN neighbours (default 20)")
    p.add_argument("--data", type=Path, default=DATA, help="the shared data folder (default ../shared/data)")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "ssl_objectives",
                   help="run folders; existing runs are reused (default outputs/ssl_objectives)")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "ssl_objectives",
                   help="prefix of the .json/.md/.png results (default benchmarks/results/ssl_objectives)")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the .md/.png from the runs in <results>.json, running nothing")
    p.add_argument("--lock", default="", help="flock file each run takes (e.g. /tmp/concerto-cpu.lock; default none)")
    args = p.parse_args(argv)
    bad = [o for o in args.objectives if o != "random" and any(t not in ("concerto", "msm", "pointcsp")
                                                                 for t in o.split("+"))]
    if bad:
        p.error(f"unknown objectives {bad}")
    try:
        args.steps = parse_steps(args.steps, args.datasets)
    except ValueError as exc:
        p.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [d for d in args.datasets if not (args.data / ("mosd" if d == "mosd" else "scannet_scene0000")).is_dir()]
    if missing:
        print(f"error: no data for {missing} under {args.data}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    if args.report_only:
        old = json.loads(args.results.with_suffix(".json").read_text())
        meta, rows = old["meta"], old["runs"]
        table = markdown(summarize(rows), meta)
        args.results.with_suffix(".md").write_text(table + "\n")
        plot(summarize(rows), args.results.with_suffix(".png"))
        print(table)
        return 0
    load0 = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    # seeds outermost: an interrupted table still has whole seeds of every dataset
    jobs = [(d, o, s) for s in args.seeds for d in args.datasets for o in args.objectives]
    rows: list[dict] = []
    for d, o, s in (bar := tqdm(jobs, unit="run")):
        bar.set_description(f"{d} {o} seed {s}")
        try:
            rows.append(run_one(d, o, s, args))
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        table = write_results(rows, args, load0, t0, argv, complete=len(rows) == len(jobs))
    print(table)
    print(f"\nwrote {args.results}.json/.md/.png in {(time.perf_counter() - t0) / 60:.1f} min; load average "
          f"{[round(x, 2) for x in os.getloadavg()]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
