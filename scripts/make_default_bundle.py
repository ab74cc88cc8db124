#!/usr/bin/env python3
"""Make the embedded default model bundle (``concerto_ros/assets/default_bundle.pt``).

The node's ``model.bundle: default`` runs this file. It is trained here, reproducibly, on the
project's own generated scenes (the demo's procedural room generator) with the project's own
training commands, with the settings in ``config/default_bundle.yaml``:

1. render the training rooms (``scenes.seeds``, never the demo's seed 0) with
   :func:`concerto_ros.demo.scene.write_sequence` into ``<work_dir>/scenes``;
2. ``concerto train ssl`` on them, without labels (``ssl`` section over its defaults): the
   ``tiny`` PTv3 encoder, ``all_levels`` feature, the objective of ``ssl.ssl.objective``,
   views rotated about the up axis (yaw augmentation, ``views.rotate_deg``);
3. ``concerto train cross4d`` on the same rooms (``cross4d`` section): the Cross4D 4D
   point-cloud-video encoder distilled from the frozen 2D teacher (Cross4D-JEPA, arXiv
   2607.00514);
4. the fused encoders: one bundle with both, as the node runs them (Cross4D's per-voxel
   features concatenated after Concerto's, :attr:`ModelBundle.feature_dims`);
5. ``concerto train probe`` on the node's windows of the same rooms with their label images
   (``probe`` section), on the fused bundle's frozen encoders: the linear head over the
   fused feature (yaw-augmented windows, ``augment.*``);
6. ``concerto train translator`` in label mode (``translator`` section) on the probe bundle's
   fused features: the map into the text encoder's space for free-text queries;
7. the bundle: both encoders + head + translator, no vocabulary (labels come from the head,
   queries use the translator), encoder weights stored as float16;
8. evaluation on the demo's own room (seed 0, never trained on): ``concerto demo --offline``
   (mIoU of the last window against the ground truth, as the demo reports it), the same
   scene's last window for text queries (how the relevance of ``evaluation.queries`` ranks
   that class's voxels above the rest), and the seeded random model for reference.

The numbers go into the bundle's metadata and ``<work_dir>/report.json``, and a summary is
printed. ``--quick`` merges the ``quick`` section (one small room, a few steps): a test runs
it end to end in about a minute.

Exit codes: 0 done, 1 a step failed (its message is printed), 2 bad settings.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SETTINGS = ROOT / "config" / "default_bundle.yaml"
DEMO_SEED = 0
NUM_STEPS = 8
#: the parts of the finished bundle, in :meth:`ModelBundle.components` order
COMPONENTS = ["concerto", "cross4d", "head", "translator"]


def log(msg: str) -> None:
    print(f"[default bundle] {msg}", flush=True)


def step_log(k: int, msg: str) -> None:
    log(f"{k}/{NUM_STEPS} {msg}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from concerto_ros.cli.helptext import plain
    p = argparse.ArgumentParser(
        prog="make_default_bundle.py", description=plain(__doc__.split("\n\n")[0]),
        epilog="Settings: config/default_bundle.yaml (see its comments). Relative paths are relative to the "
               "repository root.", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_SETTINGS,
                   help="settings YAML (default: config/default_bundle.yaml)")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="bundle file to write (default: the settings' output, concerto_ros/assets/default_bundle.pt)")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="rendered rooms and each step's outputs (default: the settings' work_dir, "
                        "outputs/default_bundle_work)")
    p.add_argument("--quick", action="store_true",
                   help="the settings' quick section: one small room and a few steps (about a minute; for tests)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def load_settings(path: Path, quick: bool) -> dict:
    """The settings file, with its ``quick`` section merged over the rest when ``quick``.

    Raises:
        FileNotFoundError: no such file. ValueError: not a mapping, a missing section, or the
            demo's seed among the training seeds.
    """
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"settings file {path} does not exist")
    s = yaml.safe_load(path.read_text()) or {}
    if not isinstance(s, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    missing = [k for k in ("output", "work_dir", "scenes", "ssl", "cross4d", "probe", "translator",
                                  "evaluation") if k not in s]
    if missing:
        raise ValueError(f"{path}: missing sections {missing}")
    q = s.pop("quick", None) or {}
    s.setdefault("node", {})
    if quick:
        s = _merge(s, q)
    seeds = [int(x) for x in s["scenes"]["seeds"]]
    if not seeds:
        raise ValueError(f"{path}: scenes.seeds is empty")
    if DEMO_SEED in seeds:
        raise ValueError(f"{path}: scenes.seeds must not contain {DEMO_SEED}: the demo's room is the evaluation "
                         "scene and must stay out of the training data")
    return s


def _merge(base: dict, update: dict) -> dict:
    """``update`` merged into a copy of ``base``, mapping by mapping."""
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _flat(d: dict, prefix: str = "") -> dict:
    """Nested node settings as dotted names (``{window: {num_frames: 3}}`` -> ``window.num_frames``)."""
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _abs(p: str | Path) -> Path:
    p = Path(p).expanduser()
    return p if p.is_absolute() else ROOT / p


def _rel(p: str | Path) -> str:
    """``p`` relative to the repository root when inside it (no machine paths in the asset)."""
    p = Path(p).resolve()
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


def _relativize(obj: Any) -> Any:
    """``obj`` with every string that is a path inside the repository made relative to it."""
    if isinstance(obj, dict):
        return {k: _relativize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_relativize(v) for v in obj]
    if isinstance(obj, str) and obj.startswith(str(ROOT) + "/"):
        return obj[len(str(ROOT)) + 1:]
    return obj


def render_scenes(sc: dict, folder: Path, target_cache: Path | None = None) -> list[Path]:
    """Render the training rooms (re-using a room already rendered with the same settings).

    A re-rendered room's cached 2D teacher targets (``<target_cache>/<recording key>``, keyed
    by folder and frame name, not content) are deleted so SSL recomputes them.
    """
    import shutil

    import yaml

    from concerto_ros.demo.scene import write_sequence
    from concerto_ros.train.data import recording_key

    out = []
    for i, seed in enumerate(int(x) for x in sc["seeds"]):
        d = folder / f"room_{seed:03d}"
        cam = d / "camera.yaml"
        want = {"seed": seed, "num_frames": int(sc["num_frames"]), "width": int(sc["width"]),
                "height": int(sc["height"])}
        have = yaml.safe_load(cam.read_text()) if cam.is_file() else {}
        if all(have.get(k) == v for k, v in want.items()) and len(list((d / "labels").glob("*.png"))) == want["num_frames"]:
            log(f"  room {seed} ({i + 1}/{len(sc['seeds'])}): already rendered, {d}")
        else:
            t = time.perf_counter()
            if target_cache is not None and (target_cache / recording_key(d)).is_dir():
                shutil.rmtree(target_cache / recording_key(d))
            write_sequence(d, seed=seed, num_frames=want["num_frames"], width=want["width"], height=want["height"])
            log(f"  room {seed} ({i + 1}/{len(sc['seeds'])}): {want['num_frames']} frames "
                f"{want['width']}x{want['height']} in {time.perf_counter() - t:.1f} s -> {d}")
        out.append(d)
    return out


def _node_overrides(settings: dict, **extra: Any) -> dict:
    """The settings' ``node`` section (dotted) plus ``extra`` (dotted names)."""
    return {**_flat(dict(settings.get("node") or {})), **extra}


def _step_config(cls, settings: dict, section: str, work: Path, **node_extra: Any):
    """``cls`` (a training command's config) from its section over the command's defaults, the
    settings' ``node`` section (and ``node_extra``) under the section's own ``node``; output and
    (unless set) the cache in the work folder."""
    values = _merge({"node": dict(settings.get("node") or {})}, settings[section])
    cfg = cls.from_mapping(values, [(f"node.{k}", v) for k, v in node_extra.items()])
    cfg.output = str(work / section)
    cfg.cache_dir = cfg.cache_dir or str(work / "cache")
    return cfg


def ssl_config(settings: dict, work: Path):
    """``concerto train ssl``'s config: defaults <- the ``ssl`` section; output and (unless set)
    the caches (prepared scenes, 2D targets) in the work folder."""
    from concerto_ros.train.ssl import SSLConfig

    return _step_config(SSLConfig, settings, "ssl", work)


def fuse_encoders(ssl_bundle: str | Path, cross4d_bundle: str | Path, path: Path) -> Path:
    """Step 4: the SSL bundle's Concerto encoder and the Cross4D bundle's encoder (with its
    clip settings) in one bundle at ``path``: the node runs both and concatenates Cross4D's
    features after Concerto's.

    Raises:
        RuntimeError: a step's bundle lacks its encoder. BundleError: the two disagree (voxel
            size, widths).
    """
    from concerto_ros.models.bundle import load_bundle, save_bundle

    enc, c4 = load_bundle(ssl_bundle), load_bundle(cross4d_bundle)
    if enc.encoder is None or c4.cross4d is None:
        raise RuntimeError(f"expected a Concerto encoder in {ssl_bundle} and a Cross4D encoder in {cross4d_bundle}")
    if abs(enc.voxel_size - c4.voxel_size) > 1e-9:
        raise RuntimeError(f"voxel sizes differ: ssl {enc.voxel_size} m, cross4d {c4.voxel_size} m")
    c4_blob = dict(c4.cross4d)
    c4_blob["settings"] = c4.cross4d_settings
    enc.cross4d = c4_blob
    enc.metadata = {"description": f"fused encoders: {enc.metadata.get('description', ssl_bundle)} + "
                                   f"{c4.metadata.get('description', cross4d_bundle)}",
                    "command": "scripts/make_default_bundle.py (fuse)"}
    return save_bundle(enc, path)


def train_steps(settings: dict, rooms: list[Path], work: Path, progress: bool) -> dict:
    """Steps 2-6; returns ``{"ssl", "cross4d", "probe", "translator"}`` summaries (each with
    its ``bundle`` and ``config``) and ``"fused"`` (the path of step 4's bundle)."""
    from concerto_ros.train.config import to_dict
    from concerto_ros.train.cross4d import Cross4DTrainConfig, train_cross4d
    from concerto_ros.train.probe import ProbeConfig, train_probe
    from concerto_ros.train.ssl import train_ssl
    from concerto_ros.train.translator import TranslatorConfig, train_translator

    folders = [{"type": "folder", "path": str(r)} for r in rooms]
    out: dict = {}

    cfg = ssl_config(settings, work)
    step_log(2, f"concerto train ssl ({cfg.ssl.objective}): {len(rooms)} rooms, no labels")
    cfg.data.sources = [dict(f) for f in folders]
    out["ssl"] = train_ssl(cfg, progress=progress)
    out["ssl"]["config"] = to_dict(cfg)

    step_log(3, f"concerto train cross4d: the 4D encoder distilled from the 2D teacher on the {len(rooms)} rooms")
    cfg = _step_config(Cross4DTrainConfig, settings, "cross4d", work)
    cfg.data.sources = [dict(f) for f in folders]
    out["cross4d"] = train_cross4d(cfg, progress=progress)
    out["cross4d"]["config"] = to_dict(cfg)

    step_log(4, "the fused encoders: Concerto (ssl) + Cross4D in one bundle, as the node runs them")
    out["fused"] = str(fuse_encoders(out["ssl"]["bundle"], out["cross4d"]["bundle"], work / "fused" / "bundle.pt"))

    step_log(5, "concerto train probe: linear head on the fused encoders' frozen features, label images")
    cfg = _step_config(ProbeConfig, settings, "probe", work, **{"model.bundle": out["fused"]})
    cfg.data.train, cfg.data.test = [dict(f) for f in folders], []
    out["probe"] = train_probe(cfg, progress=progress)
    out["probe"]["config"] = to_dict(cfg)

    step_log(6, "concerto train translator (labels): the probe bundle's features -> the text encoder's space")
    cfg = _step_config(TranslatorConfig, settings, "translator", work, **{"model.bundle": out["probe"]["bundle"]})
    cfg.data.sources = [dict(f) for f in folders]
    out["translator"] = train_translator(cfg, progress=progress)
    out["translator"]["config"] = to_dict(cfg)
    return out


def evaluate(settings: dict, bundle_path: Path, work: Path, progress: bool) -> dict:
    """Step 8: the demo's room (offline demo + last-window queries), and the seeded random
    model for reference."""
    from concerto_ros.config import default_config_path, load_config
    from concerto_ros.demo.evaluate import evaluate_sequence
    from concerto_ros.demo.run import run_demo

    ev = settings["evaluation"]
    demo_dir = work / "demo_eval"
    over = _node_overrides(settings, **{"model.bundle": str(bundle_path)})
    code = run_demo(demo_dir, seed=int(ev["seed"]), num_frames=int(ev["num_frames"]), width=int(ev["width"]),
                    height=int(ev["height"]), overrides=over, offline=True, progress=progress)
    if code != 0:
        raise RuntimeError(f"the offline demo with {bundle_path} failed (exit code {code})")
    demo = json.loads((demo_dir / "result" / "summary.json").read_text())["ground_truth"]
    seq = demo_dir / "sequence"
    cfg = load_config(default_config_path(), over)
    window = evaluate_sequence(cfg, seq, queries=list(ev["queries"]), progress=progress)
    report = {"demo_offline": demo, "last_window": window}
    if ev.get("baseline"):
        base = load_config(default_config_path(), _node_overrides(settings, **{"model.bundle": ""}))
        report["seeded_random_last_window"] = evaluate_sequence(base, seq, progress=progress)["labels"]
    return report


def _finite(v: Any) -> float | None:
    """``v`` as a float, or ``None`` when missing or NaN."""
    return None if v is None or v != v else float(v)


def bundle_metadata(settings: dict, steps: dict, evaluation: dict | None, argv: list[str], wall_s: float) -> dict:
    """Description, command, settings, training summaries and the measured numbers."""
    sc, ssl, c4, pr, tr = settings["scenes"], steps["ssl"], steps["cross4d"], steps["probe"], steps["translator"]
    seeds = [int(x) for x in sc["seeds"]]
    c4_cfg = c4["config"]["node"]["cross4d"]
    c4_preset = c4_cfg["preset"]
    c4_dim = int(steps["feature_dims"]["cross4d"])
    metrics = {
        "probe_heldout_miou": pr["test_miou"], "probe_heldout_accuracy": pr["test_accuracy"],
        "translator_heldout_accuracy": tr.get("heldout_accuracy"), "translator_heldout_miou": tr.get("heldout_miou"),
        "ssl_heldout_2d_cosine": (ssl.get("eval") or [{}])[-1].get("heldout_cos"),
        "cross4d_heldout_cosine": _finite(c4.get("final_heldout_cos")),
        "cross4d_baseline_heldout_cosine": _finite(c4.get("baseline_heldout_cos")),
    }
    if evaluation:
        metrics["demo_seed0_offline_miou"] = evaluation["demo_offline"]["miou"]
        metrics["demo_seed0_offline_accuracy"] = evaluation["demo_offline"]["oacc"]
        for q, r in evaluation["last_window"]["queries"].items():
            metrics[f"demo_seed0_query_auc_{q.replace(' ', '_')}"] = r["auc"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    desc = (f"embedded default bundle, made by scripts/make_default_bundle.py with config/default_bundle.yaml: "
            f"tiny PTv3 encoder ({ssl['feature']}, {ssl['feature_dim']}-d) from `concerto train ssl` "
            f"({ssl['objective']}, {ssl['steps']} steps, no labels) + Cross4D '{c4_preset}' encoder "
            f"({c4_dim}-d, `concerto train cross4d`, {c4['steps']} steps, held-out cosine to the 2D teacher "
            f"{fmt(metrics['cross4d_heldout_cosine'])}), fused (Cross4D after Concerto) + linear head over the "
            f"demo classes on the fused feature (`concerto train probe`, "
            f"held-out mIoU {fmt(metrics['probe_heldout_miou'])}) + translator into "
            f"{tr['text_encoder']} (`concerto train translator`, held-out accuracy "
            f"{fmt(metrics['translator_heldout_accuracy'])}), trained on {len(seeds)} generated "
            f"room{'s' if len(seeds) > 1 else ''} (seed{'s' if len(seeds) > 1 else ''} "
            f"{', '.join(str(x) for x in seeds)}; {sc['num_frames']} frames {sc['width']}x{sc['height']} each)")
    if evaluation:
        desc += f"; the demo's room (seed 0, never trained on): mIoU {fmt(metrics['demo_seed0_offline_miou'])}"
    return {
        "description": desc,
        "command": "scripts/make_default_bundle.py " + " ".join(shlex.quote(a) for a in argv),
        "script": "scripts/make_default_bundle.py", "settings_file": "config/default_bundle.yaml",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": json.loads(json.dumps(settings)),
        "training_seeds": seeds, "evaluation_seed": DEMO_SEED,
        "metrics": {k: v for k, v in metrics.items() if v is not None},
        "steps": {
            "ssl": {k: ssl.get(k) for k in ("objective", "scenes", "voxels", "steps", "parameters", "feature",
                                             "feature_dim", "teacher_2d", "loss_first", "loss_last", "wall_s")},
            "cross4d": {**{k: c4.get(k) for k in ("clips", "steps", "parameters", "final_heldout_cos",
                                                  "baseline_heldout_cos", "wall_s")},
                        "preset": c4_preset, "feature_dim": c4_dim},
            "probe": {k: pr.get(k) for k in ("classes", "split", "train_voxels", "test_voxels", "test_miou",
                                              "test_accuracy", "test_iou", "wall_s")},
            "translator": {k: tr.get(k) for k in ("classes", "text_encoder", "train_voxels", "heldout_voxels",
                                                   "heldout_accuracy", "heldout_miou", "iou", "wall_s")},
        },
        # the full configuration of each training command as run (its defaults + the settings)
        "step_configs": _relativize(json.loads(json.dumps(
            {k: steps[k]["config"] for k in ("ssl", "cross4d", "probe", "translator")}, default=str))),
        "wall_s": wall_s,
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        settings = load_settings(args.config, args.quick)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    output = _abs(args.output if args.output is not None else settings["output"])
    work = _abs(args.work_dir if args.work_dir is not None else settings["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    from concerto_ros.models.bundle import load_bundle, save_bundle

    try:
        sc = settings["scenes"]
        step_log(1, f"rendering {len(sc['seeds'])} training rooms (seeds {sc['seeds']}; the demo's room is seed "
                    f"{DEMO_SEED}) into {work / 'scenes'}")
        rooms = render_scenes(sc, work / "scenes", ssl_config(settings, work).cache_path / "targets")
        steps = train_steps(settings, rooms, work, progress)

        step_log(7, "the bundle: Concerto + Cross4D encoders + head + translator, no vocabulary, fp16 encoder weights")
        bundle = load_bundle(steps["translator"]["bundle"])
        if bundle.components() != COMPONENTS + ["vocabulary"]:
            raise RuntimeError(f"the translator's bundle holds {bundle.components()}, expected both encoders, the "
                               "probe's head and the translator")
        bundle.vocabulary = []  # labels from the head; text queries through the translator
        steps["feature_dims"] = bundle.feature_dims
        bundle.metadata = bundle_metadata(settings, steps, None, argv, time.perf_counter() - t0)
        candidate = save_bundle(bundle, work / "default_bundle.pt", half=True)

        step_log(8, f"evaluation on the demo's room (seed {settings['evaluation']['seed']}, never trained on)")
        evaluation = evaluate(settings, candidate, work, progress)
        bundle = load_bundle(candidate)  # exactly the fp16-stored weights that were evaluated
        bundle.metadata = bundle_metadata(settings, steps, evaluation, argv, time.perf_counter() - t0)
        output.parent.mkdir(parents=True, exist_ok=True)
        path = save_bundle(bundle, output, half=True)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    wall = time.perf_counter() - t0
    report = {"bundle": str(path), "size_bytes": path.stat().st_size, "wall_s": wall,
              "metrics": bundle.metadata["metrics"], "evaluation": evaluation}
    (work / "report.json").write_text(json.dumps(report, indent=2, default=str))

    from concerto_ros.train.common import print_summary

    m = bundle.metadata["metrics"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    rows = [("bundle", _rel(path)), ("size", f"{path.stat().st_size / 1e6:.2f} MB"),
            ("components", " + ".join(bundle.components())),
            ("feature widths", ", ".join(f"{k} {v}" for k, v in bundle.feature_dims.items())),
            ("Cross4D held-out cosine / constant baseline", f"{fmt(m.get('cross4d_heldout_cosine'))} / "
                                                             f"{fmt(m.get('cross4d_baseline_heldout_cosine'))}"),
            ("probe held-out mIoU / accuracy", f"{fmt(m.get('probe_heldout_miou'))} / "
                                               f"{fmt(m.get('probe_heldout_accuracy'))}"),
            ("translator held-out accuracy / mIoU", f"{fmt(m.get('translator_heldout_accuracy'))} / "
                                                    f"{fmt(m.get('translator_heldout_miou'))}"),
            ("demo room (seed 0) offline mIoU / accuracy", f"{fmt(m.get('demo_seed0_offline_miou'))} / "
                                                            f"{fmt(m.get('demo_seed0_offline_accuracy'))}")]
    base = evaluation.get("seeded_random_last_window")
    if base:
        lw = evaluation["last_window"]["labels"]
        rows.append(("last window mIoU: bundle vs seeded random", f"{fmt(lw['miou'])} vs {fmt(base['miou'])}"))
    for q, r in evaluation["last_window"]["queries"].items():
        rows.append((f"query '{q}': AUC / precision@{r['k']}",
                     f"{fmt(r['auc'])} / {fmt(r['precision_at_k'])} (mean relevance {r['mean_target']:.3f} on "
                     f"{r['class']} vs {r['mean_other']:.3f} elsewhere)"))
    rows += [("report", _rel(work / "report.json")), ("wall time", f"{wall / 60:.1f} min")]
    print_summary("embedded default bundle", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
