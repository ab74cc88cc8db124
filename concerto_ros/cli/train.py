"""``concerto train``: on-site training commands (``ssl``, ``cross4d``, ``translator``, ``probe``).

The on-site chain: ``ssl`` (no labels) -> ``probe`` (a few labelled scenes) ->
``translator`` (free-text queries); each writes ``<output>/bundle.pt``, and the next one
reads it with ``--set perception_overrides="{model.bundle: <previous>/bundle.pt}"``; the
node runs the last one with ``model.bundle``.

Every ``train`` sub-command shares the options of :mod:`concerto_ros.train.common`:
``--config`` YAML, ``--set key=value`` overrides, ``--print-config``, ``--output``,
``--device``, ``--seed``, ``--resume``, ``--log csv|tensorboard``, ``--no-progress``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: train sub-command -> (help, default config file name under config/)
TRAIN_COMMANDS = {
    "ssl": ("self-supervised training of the Concerto PTv3 encoder on unlabelled recordings: Sonata-style "
            "student/EMA-teacher self-distillation across augmented views + 2D-3D joint embedding of a "
            "frozen image model's patch features (Concerto, arXiv 2510.23607)", "train_ssl.yaml"),
    "cross4d": ("distil a frozen 2D teacher (DINOv2 or a seeded ViT) into the Cross4D 4D point-cloud-video "
                "encoder (Cross4D-JEPA, arXiv 2607.00514)", "train_cross4d.yaml"),
    "translator": ("fit the language translator (node features -> text-encoder space) with labels, for "
                   "free-text queries and open-vocabulary labels (Concerto, arXiv 2510.23607)",
                   "train_translator.yaml"),
    "probe": ("linear probe: fit a linear semantic head on the node's frozen encoder features with labelled "
              "PCD files (mOSD) or point arrays; reports held-out mIoU, per-class IoU, accuracy "
              "(Sonata/Concerto protocol)", "train_probe.yaml"),
}


def _default_config(name: str) -> str | None:
    """``config/<name>`` of the source tree, else of the installed share folder, else None."""
    here = Path(__file__).resolve().parents[2] / "config" / name
    if here.is_file():
        return str(here)
    try:  # installed with colcon/ament
        from ament_index_python.packages import get_package_share_directory

        p = Path(get_package_share_directory("concerto_ros")) / "config" / name
        return str(p) if p.is_file() else None
    except Exception:  # noqa: BLE001 - no ament index: built-in defaults only
        return None


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``train`` and its sub-commands."""
    from concerto_ros.train.common import add_common_args

    parser = subparsers.add_parser("train", help="train models on recordings (ssl, cross4d, translator, probe)",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="train_command", metavar="MODEL")
    sub.required = True
    for name, (help_text, cfg_name) in TRAIN_COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_common_args(p, default_config=_default_config(cfg_name))
        p.add_argument("--source", action="append", default=[], metavar="PATH",
                       help="rosbag2 recording or RGB-D folder (adds to data.sources; intrinsics of folders "
                       "without camera.yaml via --set); repeatable")
        p.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Exit codes: 0 ok, 1 training error, 2 bad configuration."""
    from concerto_ros.train.common import dump_config, resolve_config

    if args.train_command == "ssl":
        from concerto_ros.train.ssl import DEFAULTS, train_ssl as train_fn
    elif args.train_command == "cross4d":
        from concerto_ros.train.cross4d import DEFAULTS, train_cross4d as train_fn
    elif args.train_command == "translator":
        from concerto_ros.train.translator import DEFAULTS, train_translator as train_fn
    elif args.train_command == "probe":
        from concerto_ros.train.probe import DEFAULTS, train_probe as train_fn
    else:  # pragma: no cover - argparse restricts the choices
        print(f"error: unknown train command {args.train_command}", file=sys.stderr)
        return 2
    try:
        cfg = resolve_config(DEFAULTS, args)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.source and args.train_command == "probe":
        cfg["data"]["train"] = list(cfg["data"]["train"]) + [{"type": "pcd", "path": s} for s in args.source]
    elif args.source:
        kind = {"translator": {"type": "folder"}}.get(args.train_command, {})
        cfg["data"]["sources"] = list(cfg["data"]["sources"]) + [{"path": s, **kind} for s in args.source]
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    try:
        if args.train_command in ("cross4d", "ssl"):
            train_fn(cfg, progress=not args.no_progress, resume=args.resume)
        else:
            train_fn(cfg, progress=not args.no_progress)
    except (FileNotFoundError, ValueError, KeyError, ImportError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m concerto_ros.cli.train cross4d ...`` (same as ``concerto train cross4d ...``)."""
    parser = argparse.ArgumentParser(prog="concerto")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
