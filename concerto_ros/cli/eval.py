"""``concerto eval``: score the node's labels, encoder features (probes) and text queries on
labelled recordings."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HELP = """\
Run the node's perception pipeline over labelled recordings (offline, no ROS) and score what
it publishes against the ground truth.

  concerto eval --data SOURCE [--bundle B | -c CONFIG --set K=V] [--compare SPEC ...] [-o OUT]
  concerto eval probe --train SOURCES [--test SOURCES] [--bundle B]     linear + kNN probes
  concerto eval queries --bundle B --data SOURCE [--names LABELSET]     free-text queries

A SOURCE is a recording path (type detected) or inline YAML with its label set, e.g.
  --data "{type: points, path: X.npy, labels: L.npy, label_names: nyu40}"
  --data "{type: pcd, path: ../shared/data/mosd/test, label_names: mosd}"
  --data outputs/demo/sequence          (RGB-D folder; class names from its camera.yaml)
label_names: nyu40, scannet20, semantickitti, mosd (config/labels/), a YAML file of that
layout, or a list of class names. Ground-truth classes are matched to the model's labels by
name (and synonym).

Every processed frame is scored once: its own points (within the depth/range limits),
labelled by the window through the voxel inverse map, into one confusion matrix. Writes
OUT/metrics.json (miou: mean IoU over the classes present in the ground truth; miou_all:
over every class in the ground truth or the predictions; accuracy; per_class_iou;
per_class_accuracy; latency_ms per stage p50/p99; skipped frames by reason),
OUT/confusion.png and OUT/report.md.

--compare SPEC ... runs several models on the same data, one folder each, plus one table
(OUT/report.md, OUT/metrics.json) and one plot (OUT/compare.png). SPEC is [LABEL=]WHAT with
WHAT: default (the embedded bundle), random (the seeded random model), a bundle .pt file,
a parameters .yaml file, or inline settings "{model.bundle: B.pt, window.num_frames: 3}".

Frames of PCD files, point arrays and scans without poses are separate scenes (the window
is cleared before each; --scenes to change); RGB-D folders and bags are sequences.
--yaw DEG rotates the data about the up axis (--up, default z: the fixed frame's; -y for
clouds in a camera optical frame such as mOSD) through the origin before the pipeline.
"""

PROBE_HELP = """\
Linear and kNN probes on the frozen Concerto encoder of the configuration, with the Masked
Scene Modeling protocol (arXiv 2504.06719): every encoder level interpolated trilinearly
(sparse 8-corner lookup, empty voxels count as zero) at every original point, levels
concatenated, no normalisation. Linear probe: AdamW betas (0.9, 0.95), weight decay 0.01,
lr 0.01, warm-up then cosine decay. kNN probe: cosine similarity to a memory bank of sampled
training points, the k nearest vote with weight exp(cos / T). Every frame of a source is one
scene (lifted by the node's lifting, voxelized at window.voxel_size). Without --test, the
points in a share (--split-fraction) of cubes of --split-block metres are held out of
the --train scenes and scored. Writes OUT/metrics.json (linear.miou, knn.miou, each with
per_class_iou, ...), OUT/linear_confusion.png, OUT/knn_confusion.png and OUT/report.md.
"""

QUERIES_HELP = """\
Query the pipeline's text embeddings (its translator and text encoder) with the class names
of a label set and their synonyms, and score each query against the ground-truth voxels of
its class: precision of the top-k voxels by relevance and ROC AUC (0.5 = chance). Scored
windows: the last window of each sequence, every scene of a scene collection. Writes
OUT/queries.json (mean_precision_names, mean_precision_synonyms, mean_auc_*, per query) and
OUT/queries.png. --tta-yaws N averages the embeddings of N rotated copies of the data per
voxel (rotation test-time augmentation, as Pointcept tests segmentation).
"""


def _model_args(p: argparse.ArgumentParser) -> None:
    """Options shared by every eval command (SUPPRESS: a value given before the subcommand
    is kept)."""
    s = argparse.SUPPRESS
    p.add_argument("--bundle", default=s, metavar="B",
                   help="model bundle: a .pt file, 'default' (the embedded one) or 'random' (the seeded random model); "
                   "default: the config's model.bundle")
    p.add_argument("-c", "--config", type=Path, default=s,
                   help="parameters YAML (default: the package's config/perception.yaml)")
    p.add_argument("--set", dest="overrides", action="append", metavar="NAME=VALUE", default=s,
                   help="override a setting, e.g. --set window.num_frames=1 --set model.device=cuda (repeatable)")
    p.add_argument("-o", "--output", type=Path, default=s,
                   help="output folder (default: outputs/eval, outputs/eval_probe or outputs/eval_queries)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=s, help="no progress bars")


def _data_args(p: argparse.ArgumentParser, flag: str = "--data") -> None:
    p.add_argument("--yaw", type=float, default=argparse.SUPPRESS, metavar="DEG",
                   help="rotate the data by DEG degrees about the up axis before the pipeline (default 0)")
    p.add_argument("--up", default=argparse.SUPPRESS,
                   help="up axis of the fixed frame: x, y, z, optionally signed (default z; -y for optical-frame clouds)")
    p.add_argument("--scenes", choices=["auto", "independent", "sequence"], default=argparse.SUPPRESS,
                   help="independent: clear the window before every frame; sequence: keep it; auto (default): "
                   "independent for PCD files, point arrays and scans without poses")


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="score the pipeline, probes or text queries on labelled recordings",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", action="append", default=[], metavar="SOURCE",
                   help="labelled recording (path or inline YAML; repeatable: scored together)")
    p.add_argument("--compare", nargs="+", metavar="SPEC", default=None,
                   help="compare models: [LABEL=]default|random|BUNDLE.pt|CONFIG.yaml|'{settings}'")
    p.add_argument("--max-frames", type=int, default=0, help="stop each source after N processed frames (0: all)")
    p.add_argument("--outputs", nargs="+", choices=["window", "map"], default=["window"],
                   help="what is scored at every keyframe's newest points: the window's labels (~/semantic_points, "
                        "the default) and/or the persistent map's fused labels at the same points (map); the first "
                        "one is the headline mIoU, each gets its own entry under 'predictions' in metrics.json")
    _model_args(p)
    _data_args(p)
    p.set_defaults(func=run, eval_command=None)
    sub = p.add_subparsers(dest="eval_command", metavar="{probe,queries}")
    pp = sub.add_parser("probe", help="linear and kNN probes on frozen encoder features (MSM protocol)",
                        description=PROBE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    pp.add_argument("--train", action="append", required=True, metavar="SOURCES",
                    help="labelled training sources (path, inline YAML or a YAML list; repeatable)")
    pp.add_argument("--test", action="append", default=[], metavar="SOURCES",
                    help="labelled test sources (default: a spatial split of the training scenes)")
    pp.add_argument("--epochs", type=int, default=30, help="linear-probe epochs over the sampled points (default 30)")
    pp.add_argument("--batch-size", type=int, default=8192, help="points per linear-probe step (default 8192)")
    pp.add_argument("--lr", type=float, default=0.01, help="peak learning rate (default 0.01, MSM)")
    pp.add_argument("--k", type=int, default=20, help="kNN neighbours (default 20)")
    pp.add_argument("--temperature", type=float, default=0.07, help="kNN vote temperature (default 0.07)")
    pp.add_argument("--bank-size", type=int, default=50000,
                    help="training points in the kNN memory bank, sampled (default 50000; 0: all)")
    pp.add_argument("--train-points", type=int, default=20000,
                    help="training points sampled per scene (default 20000; 0: all)")
    pp.add_argument("--test-points", type=int, default=0,
                    help="test points scored per scene, sampled (default 0: every labelled point; the kNN probe costs "
                    "points x bank size similarities)")
    pp.add_argument("--split-fraction", type=float, default=0.3,
                    help="without --test: share of cubes held out (default 0.3)")
    pp.add_argument("--split-block", type=float, default=2.0,
                    help="without --test: cube edge of the spatial split, metres (default 2.0)")
    pp.add_argument("--seed", type=int, default=0, help="sampling and initialisation seed (default 0)")
    pp.add_argument("--device", default="cpu", help="where the probes train and the kNN runs (default cpu)")
    _model_args(pp)
    pp.set_defaults(func=run_probe_cmd)
    pq = sub.add_parser("queries", help="top-k precision and ROC AUC of text queries per class name and synonym",
                        description=QUERIES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    pq.add_argument("--data", action="append", dest="query_data", required=True, metavar="SOURCE",
                    help="labelled recording (path or inline YAML; repeatable)")
    pq.add_argument("--names", default=None, metavar="LABELSET",
                    help="label set whose class names and synonyms are queried: nyu40, scannet20, ..., or a YAML "
                    "file (default: each source's own)")
    pq.add_argument("--top-k", type=int, default=100, help="k of the top-k precision, voxels (default 100)")
    pq.add_argument("--min-voxels", type=int, default=20,
                    help="a class with fewer ground-truth voxels in a window is not queried there (default 20)")
    pq.add_argument("--tta-yaws", type=int, default=1, metavar="N",
                    help="rotation test-time augmentation: also encode each source rotated by 360*i/N degrees about "
                    "the up axis (i = 1..N-1) and average the text embeddings per voxel; with 4, data rotated by "
                    "90, 180 or 270 degrees score as unrotated. Costs N times the pipeline time (default 1: off)")
    _model_args(pq)
    _data_args(pq)
    pq.set_defaults(func=run_queries_cmd)


# ------------------------------------------------------------------------------------------- helpers
def _opt(args, name: str, default):
    return getattr(args, name, default)


def _fail(exc: BaseException, code: int = 2) -> int:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    print(f"error: {' '.join(str(text).split())}", file=sys.stderr)
    return code


#: errors a user can cause with arguments, data or model files (one line each, no traceback)
def _user_errors() -> tuple[type[BaseException], ...]:
    from concerto_ros.recordings import RecordingError

    return (RecordingError, FileNotFoundError, KeyError, ValueError, RuntimeError, ImportError, OSError)


def _base_overrides(args) -> dict:
    from concerto_ros.config import parse_overrides

    overrides = parse_overrides(_opt(args, "overrides", []))
    bundle = _opt(args, "bundle", None)
    if bundle is not None:
        overrides["model.bundle"] = "" if bundle == "random" else str(bundle)
    return overrides


def _load(config: Path | None, overrides: dict):
    from concerto_ros.config import default_config_path, load_config

    path = config or default_config_path()
    return load_config(path, overrides), path


def compare_specs(specs: list[str]) -> dict[str, tuple[Path | None, dict]]:
    """``{label: (parameters file or None, dotted overrides)}`` of ``--compare`` specs.

    Raises:
        ValueError: an empty, duplicate or unreadable spec.
    """
    import yaml

    out: dict[str, tuple[Path | None, dict]] = {}
    for i, spec in enumerate(specs):
        label, what = (spec.split("=", 1) if "=" in spec and not spec.lstrip().startswith("{") else ("", spec))
        what = what.strip()
        if what in ("default", "random"):
            item = (None, {"model.bundle": "default" if what == "default" else ""})
        elif what.startswith("{"):
            try:
                settings = yaml.safe_load(what)
            except yaml.YAMLError as exc:
                raise ValueError(f"--compare {spec!r}: not a YAML mapping ({str(exc).splitlines()[0]})") from None
            if not isinstance(settings, dict):
                raise ValueError(f"--compare {spec!r}: inline settings must be a mapping, e.g. '{{model.bundle: B.pt}}'")
            item = (None, {str(k): v for k, v in settings.items()})
        elif what.lower().endswith((".yaml", ".yml")):
            item = (Path(what), {})
        elif what:
            item = (None, {"model.bundle": what})
        else:
            raise ValueError(f"--compare {spec!r}: empty; use default, random, a bundle, a .yaml file or '{{...}}'")
        label = label.strip() or (what if what in ("default", "random") else
                                  Path(what).stem if not what.startswith("{") else f"run{i + 1}")
        if label in out:
            raise ValueError(f"--compare: two runs are labelled {label!r}; name them LABEL=...")
        out[label] = item
    return out


def _sources(values: list[str]) -> list:
    from concerto_ros.recordings import parse_sources

    out = []
    for v in values:
        out += parse_sources(v)
    return out


def _header(args, sources) -> list[str]:
    cmd = " ".join(["concerto", *sys.argv[1:]]) if sys.argv and sys.argv[0] else "concerto eval"
    return [f"Command: `{cmd}`", "", "Sources: " + ", ".join(f"`{s.to_dict()}`" for s in sources), "",
            f"Yaw: {_opt(args, 'yaw', 0.0):g} deg about {_opt(args, 'up', 'z')}", "",
            f"Load average at the start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}"]


# ------------------------------------------------------------------------------------------- commands
def run(args) -> int:
    """``concerto eval`` (one model, or ``--compare``). Exit codes: 0 ok, 2 bad input."""
    from concerto_ros.evaluation.report import fmt, write_compare_report, write_eval_report
    from concerto_ros.evaluation.run import PREDICTIONS, evaluate

    out = _opt(args, "output", Path("outputs/eval"))
    try:
        if not args.data:
            raise ValueError("give at least one labelled source with --data (see concerto eval --help)")
        sources = _sources(args.data)
        base = _base_overrides(args)
        runs = compare_specs(args.compare) if args.compare else {"": (None, {})}
        configs = {}
        for label, (path, overrides) in runs.items():
            cfg, cfg_path = _load(path or _opt(args, "config", None), {**base, **overrides})
            configs[label] = (cfg, cfg_path)
    except _user_errors() as exc:
        return _fail(exc)
    results, specs = {}, {}
    for label, (cfg, cfg_path) in configs.items():
        try:
            res = evaluate(cfg, sources, yaw_deg=_opt(args, "yaw", 0.0), up=_opt(args, "up", "z"),
                           scenes=_opt(args, "scenes", "auto"), max_frames=args.max_frames,
                           predictions=[PREDICTIONS[name]() for name in args.outputs],
                           progress=_opt(args, "progress", True))
        except _user_errors() as exc:
            return _fail(exc)
        metrics = {**res.metrics(), "config": str(cfg_path), "yaw_deg": _opt(args, "yaw", 0.0),
                   "up": _opt(args, "up", "z"), "data": [s.to_dict() for s in sources]}
        title = f"concerto eval{': ' + label if label else ''}"
        write_eval_report(out / label if label else out, metrics, title, _header(args, sources))
        results[label], specs[label] = metrics, res.model
        print(f"{label or 'eval'}: mIoU {fmt(metrics['miou'])} (classes in the ground truth), mIoU all "
              f"{fmt(metrics['miou_all'])}, accuracy {fmt(metrics['accuracy'])} over {metrics['num_points']} points "
              f"of {metrics['frames_scored']} frames; encoder p50 "
              f"{fmt(metrics['latency_ms'].get('encoder', {}).get('p50_ms'), 0)} ms")
    if args.compare:
        paths = write_compare_report(out, results, specs, "concerto eval --compare", _header(args, sources))
    else:
        paths = {"metrics": out / "metrics.json", "report": out / "report.md"}
    for k, v in paths.items():
        print(f"  {k}: {v}")
    return 0


def _run_and_write(args, default_out: str, work, write) -> int:
    """Load the config, run ``work(cfg)`` -> result dict, add the config, sources and load
    average, then ``write(out, result)``; user errors become one line (exit code 2)."""
    out = _opt(args, "output", Path(default_out))
    try:
        cfg, cfg_path = _load(_opt(args, "config", None), _base_overrides(args))
        res = work(cfg)
    except _user_errors() as exc:
        return _fail(exc)
    out.mkdir(parents=True, exist_ok=True)
    res.update(config=str(cfg_path), command=_header(args, [])[0], loadavg=list(os.getloadavg()))
    for k, v in write(out, res).items():
        print(f"  {k}: {v}")
    return 0


def run_probe_cmd(args) -> int:
    """``concerto eval probe``. Exit codes: 0 ok, 2 bad input."""
    from concerto_ros.evaluation.probe import ProbeOptions, run_probe
    from concerto_ros.evaluation.report import fmt, write_probe_report

    def work(cfg) -> dict:
        train, test = _sources(args.train), _sources(args.test)
        opts = ProbeOptions(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, k=args.k,
                            temperature=args.temperature, bank_size=args.bank_size, train_points=args.train_points,
                            test_points=args.test_points, split_fraction=args.split_fraction,
                            split_block=args.split_block, seed=args.seed, device=args.device)
        res = run_probe(cfg, train, test, opts, progress=_opt(args, "progress", True))
        for kind in ("linear", "knn"):
            print(f"{kind} probe: mIoU {fmt(res[kind]['miou'])}, accuracy {fmt(res[kind]['accuracy'])}")
        return {**res, "train_sources": [s.to_dict() for s in train], "test_sources": [s.to_dict() for s in test]}

    return _run_and_write(args, "outputs/eval_probe", work, write_probe_report)


def run_queries_cmd(args) -> int:
    """``concerto eval queries``. Exit codes: 0 ok, 2 bad input."""
    from concerto_ros.evaluation.queries import evaluate_queries
    from concerto_ros.evaluation.report import fmt, write_queries_report

    def work(cfg) -> dict:
        sources = _sources(args.query_data)
        res = evaluate_queries(cfg, sources, names=args.names, k=args.top_k, yaw_deg=_opt(args, "yaw", 0.0),
                               up=_opt(args, "up", "z"), scenes=_opt(args, "scenes", "auto"),
                               min_voxels=args.min_voxels, progress=_opt(args, "progress", True),
                               tta_yaws=args.tta_yaws)
        for r in res["queries"]:
            print(f"  {r['text']!r:24} ({r['class']}{', synonym' if r['synonym'] else ''}): precision@{r['k']} "
                  f"{fmt(r['precision_at_k'])}, AUC {fmt(r['auc'])}")
        print(f"mean precision@{res['k']}: names {fmt(res['mean_precision_names'])}, synonyms "
              f"{fmt(res['mean_precision_synonyms'])} ({res['windows']} windows)")
        return {**res, "data": [s.to_dict() for s in sources]}

    return _run_and_write(args, "outputs/eval_queries", work, write_queries_report)
