"""``concerto train``: on-site training commands (``ssl``, ``cross4d``, ``probe``, ``translator``).

The on-site chain: ``ssl`` (no labels) -> ``probe`` (a few labelled scenes) -> ``translator``
(free-text queries); each writes <output>/bundle.pt and the next one reads it with
--set node.model.bundle=<previous>/bundle.pt; the node runs the last one with model.bundle.

Every command has one typed config: a YAML file (--config; its defaults with --print-config,
each key with its description), --set KEY=VALUE for any key (dotted, YAML value; e.g.
--set loop.steps=200, --set node.window.voxel_size=0.05, --set node.model.bundle=B.pt), and
the flags --output, --device, --seed, --log. The 'node' section is the node's own
configuration (config/perception.yaml, or node_config): voxel size, window, lifting, topics
and the models features are computed with, one source of truth with the node.

Scale-out: every command runs unchanged under torchrun, e.g.
  torchrun --nproc_per_node 4 -m concerto_ros.cli train ssl --config config/train_ssl.yaml --device cuda
(NCCL on CUDA, gloo on the CPU; add --nnodes/--node_rank/--rdzv_endpoint for several
machines). loop.batch_size is the global batch over all processes; rank 0 writes logs,
checkpoints and bundles; --resume works with the same or another number of processes.

Exit codes: 0 done, 1 training failed (the reason on one line), 2 bad configuration.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

#: train sub-command -> (help, default config file under config/, "module:ConfigClass:function")
TRAIN_COMMANDS = {
    "ssl": ("self-supervised training of the Concerto PTv3 encoder on unlabelled recordings; objectives "
            "(ssl.objective, combinable with '+'): concerto (3D self-distillation + 2D-3D joint embedding, arXiv "
            "2510.23607), msm (Masked Scene Modeling, arXiv 2504.06719), pointcsp (cross-sample propagation + "
            "geometry, arXiv 2605.01759)", "train_ssl.yaml", "concerto_ros.train.ssl:SSLConfig:train_ssl"),
    "cross4d": ("distil a frozen 2D teacher (DINOv2 or a seeded ViT) into the Cross4D 4D point-cloud-video "
                "encoder (Cross4D-JEPA, arXiv 2607.00514)", "train_cross4d.yaml",
                "concerto_ros.train.cross4d:Cross4DTrainConfig:train_cross4d"),
    "translator": ("fit the language translator (node features -> text-encoder space) with labels, for "
                   "free-text queries and open-vocabulary labels (Concerto, arXiv 2510.23607)",
                   "train_translator.yaml", "concerto_ros.train.translator:TranslatorConfig:train_translator"),
    "probe": ("linear probe: a linear semantic head on the node's frozen encoder features (or, with "
              "finetune.enabled, encoder and head trained together) with labelled PCD files, point arrays or "
              "RGB-D folders; reports test mIoU, per-class IoU, accuracy", "train_probe.yaml",
              "concerto_ros.train.probe:ProbeConfig:train_probe"),
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


def add_common_args(parser: argparse.ArgumentParser, default_config: str | None = None) -> None:
    """The options every training command shares."""
    parser.add_argument("--config", default=default_config, metavar="YAML",
                        help="training config (YAML, nested keys); every key and its default: --print-config"
                        + (" (default file: %(default)s)" if default_config else ""))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="set any config key (dotted name, YAML value), after --config; repeatable. E.g. "
                        "--set loop.steps=200, --set node.window.voxel_size=0.05 (metres), "
                        "--set node.model.bundle=outputs/ssl/bundle.pt")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (every key, with its description and range) and exit")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="output folder: bundle, checkpoints, logs, plots and caches (sets 'output')")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N or auto (sets 'device'; under torchrun with cuda each process "
                        "uses cuda:LOCAL_RANK)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (sets 'seed')")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in <output>/checkpoints (any number of processes)")
    parser.add_argument("--log", choices=["csv", "tensorboard"], default=None,
                        help="metric log format (sets 'log'); metrics.csv is always written")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``train`` and its sub-commands."""
    parser = subparsers.add_parser("train", help="train models on recordings (ssl, cross4d, probe, translator)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="train_command", metavar="MODEL")
    sub.required = True
    for name, (help_text, cfg_name, _) in TRAIN_COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_common_args(p, default_config=_default_config(cfg_name))
        if name == "probe":
            p.add_argument("--train", action="append", default=[], metavar="SOURCE",
                           help="labelled training source, a path or inline YAML as in concerto eval, e.g. "
                           "\"{type: pcd, path: ../shared/data/mosd/learn, label_names: mosd}\" or \"{type: points, "
                           "path: X.npy, labels: L.npy, label_names: nyu40}\"; replaces data.train; repeatable. "
                           "Without --test, data.test is emptied and the probe is scored on held-out cubes of these "
                           "sources")
            p.add_argument("--test", action="append", default=[], metavar="SOURCE",
                           help="labelled test source (same kinds); replaces data.test; repeatable. A path that is "
                           "also a training source is refused")
        else:
            p.add_argument("--data", "--source", dest="source", action="append", default=[], metavar="SOURCE",
                           help="recording to train on, added to data.sources: a path or inline YAML as in concerto "
                           "eval (a bag, an RGB-D folder" + (" with labels/" if name == "translator" else "") +
                           ", PCD files, point arrays; e.g. \"{path: DIR, fx: 518, fy: 519, cx: 325.5, cy: 253.5, "
                           "depth_scale: 1000}\" for an RGB-D folder without camera.yaml); repeatable")
        p.set_defaults(func=run)
    return parser


def _sets(args: argparse.Namespace) -> list[tuple[str, object]]:
    from concerto_ros.train.config import parse_set_items

    sets = parse_set_items(args.overrides)
    sets += [(flag, getattr(args, flag)) for flag in ("output", "device", "seed", "log")
             if getattr(args, flag, None) is not None]
    return sets


def _resolve(args: argparse.Namespace):
    import yaml

    mod_name, cls_name, fn_name = TRAIN_COMMANDS[args.train_command][2].split(":")
    mod = importlib.import_module(mod_name)
    values = {}
    if args.config:
        p = Path(args.config)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        values = yaml.safe_load(p.read_text()) or {}
    cfg = getattr(mod, cls_name).from_mapping(values, _sets(args))
    if args.train_command == "probe":
        if args.train:
            cfg.data.train = [_entry(s) for s in args.train]
            cfg.data.test = [] if not args.test else cfg.data.test
        if args.test:
            cfg.data.test = [_entry(s) for s in args.test]
        lists = {"data.train": cfg.data.train, "data.test": cfg.data.test}
    else:
        cfg.data.sources = list(cfg.data.sources) + [_entry(s) for s in args.source]
        lists = {"data.sources": cfg.data.sources}
    _check_sources(lists)
    cfg.validate()
    return cfg, getattr(mod, fn_name)


def _entry(text: str) -> dict:
    """A ``--data`` / ``--train`` / ``--test`` value (a path or inline YAML) as a config entry.

    Raises:
        ValueError: an invalid source (concerto_ros.recordings.SourceError).
    """
    from concerto_ros.recordings import parse_source

    return parse_source(text).to_dict()


def _check_sources(lists: dict[str, list]) -> None:
    """Every entry of the source lists follows the Source schema (keys and values; files are
    opened when training starts).

    Raises:
        ValueError: the list and the reason.
    """
    from concerto_ros.recordings import SourceError, parse_source

    for name, entries in lists.items():
        for i, e in enumerate(entries):
            try:
                parse_source(e)
            except SourceError as exc:
                raise ValueError(f"{name}[{i}]: {exc}") from None


def run(args: argparse.Namespace) -> int:
    """Exit codes: 0 ok, 1 training error, 2 bad configuration."""
    from concerto_ros.train.config import dump_config

    try:
        cfg, train_fn = _resolve(args)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    try:
        train_fn(cfg, progress=not args.no_progress, resume=args.resume)
    except (FileNotFoundError, ValueError, KeyError, ImportError, RuntimeError) as exc:
        print(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m concerto_ros.cli.train ssl ...`` (same as ``concerto train ssl ...``)."""
    parser = argparse.ArgumentParser(prog="concerto")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
