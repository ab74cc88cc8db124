"""``concerto bundle``: assemble a one-file model bundle from separate model files.

    concerto bundle pack --encoder concerto_large.pth --feature all_levels \\
        --head concerto_large_linear_prob_head_sc.pth -o outputs/large_scannet.pt

The bundle (see :mod:`concerto_ros.models.bundle`) holds the encoder config and weights, the
feature layout, the head, the translator with its text encoder, a vocabulary and the voxel
size; the node runs it with ``model.bundle: FILE``. ``concerto info --bundle FILE`` prints
what is inside. The training commands (``concerto train probe|translator|cross4d``) write
bundles themselves.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("bundle", help="assemble a one-file model bundle from separate model files",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bundle_command", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("pack", help="write a bundle from an encoder checkpoint plus optional head/translator/Cross4D",
                       description="Write a model bundle from separate files. At least one of --encoder and "
                       "--cross4d is needed; the result is checked for consistency (head and translator widths "
                       "against the encoders' fused feature) before it is written.")
    p.add_argument("--encoder", metavar="CKPT", help="Concerto/Sonata encoder checkpoint (released "
                   "{'config','state_dict'} file, or a Pointcept training checkpoint with --preset)")
    p.add_argument("--preset", default=None, help="encoder preset for checkpoints without a config "
                   "(tiny, small, base, large, concerto_large_video)")
    p.add_argument("--feature", default="concat3", choices=["concat3", "all_levels"],
                   help="per-point feature layout the head/translator read (default: %(default)s; the released "
                   "linear-probe heads read all_levels)")
    p.add_argument("--cross4d", metavar="CKPT", help="Cross4D checkpoint from `concerto train cross4d`")
    p.add_argument("--head", metavar="HEAD.pt", help="linear semantic head ({'config','state_dict'}: "
                   "`concerto train probe`'s head.pt or a released linear-probe head)")
    p.add_argument("--class-names", default="", metavar="A,B,...",
                   help="class names for a head file without them (a 20-class head defaults to ScanNet-20)")
    p.add_argument("--translator", metavar="TR.pt", help="translator file from `concerto train translator`")
    p.add_argument("--text-encoder", default="", help="text encoder backend of the translator "
                   "(default: from the translator file)")
    p.add_argument("--text-model", default="", help="text model (sentence-transformers: local directory; "
                   "open_clip: architecture name; default: from the translator file / the bundled model)")
    p.add_argument("--vocabulary", default="", metavar="A,B,...",
                   help="open-vocabulary class names (needs --translator)")
    p.add_argument("--voxel-size", type=float, default=0.02,
                   help="voxel edge the models were trained at, metres (default: %(default)s)")
    p.add_argument("--no-color", action="store_true", help="the encoder was trained without RGB input")
    p.add_argument("--description", default="", help="one line stored in the bundle's metadata")
    p.add_argument("--half", action="store_true", help="store the encoder weights as float16 (about half the size)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.pt", help="bundle file to write")
    p.set_defaults(func=run)
    return parser


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _load_head(path: str, class_names: list[str]) -> dict:
    """The head dict of ``path`` with class names filled in.

    Raises:
        FileNotFoundError, ValueError: missing file, not a head, or no class names.
    """
    from pathlib import Path

    import torch

    from concerto_ros.recordings.labels import SCANNET20_CLASS_NAMES

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"--head '{p}' does not exist")
    blob = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "seg_head.weight" not in (blob.get("state_dict") or {}):
        raise ValueError(f"--head '{p}' is not a linear head ({{'config', 'state_dict': {{'seg_head.weight', ...}}}})")
    cfg = dict(blob.get("config") or {})
    k = int(blob["state_dict"]["seg_head.weight"].shape[0])
    if class_names:
        if len(class_names) != k:
            raise ValueError(f"--class-names has {len(class_names)} names but the head has {k} classes")
        cfg["class_names"] = class_names
    elif not cfg.get("class_names"):
        if k != len(SCANNET20_CLASS_NAMES):
            raise ValueError(f"--head '{p}' has {k} classes and no class names: give --class-names")
        cfg["class_names"] = list(SCANNET20_CLASS_NAMES)
        print(f"note: {p} has 20 classes and no class names: using the ScanNet-20 names", file=sys.stderr)
    return {"config": cfg, "state_dict": dict(blob["state_dict"])}


_PACK_OPTIONS = ("encoder", "preset", "feature", "cross4d", "head", "class_names", "translator", "text_encoder",
                 "text_model", "vocabulary", "voxel_size", "no_color", "half", "output")


def _command_line(args: argparse.Namespace) -> str:
    """The ``concerto bundle pack`` command line equivalent to ``args`` (for the metadata)."""
    parts = ["concerto bundle pack"]
    for name in _PACK_OPTIONS:
        value = getattr(args, name, None)
        if value is True:
            parts.append(f"--{name.replace('_', '-')}")
        elif value not in (None, "", False):
            parts.append(f"--{name.replace('_', '-')} {value}")
    return " ".join(parts)


def pack(args: argparse.Namespace):
    """Build and save the bundle described by ``args``; returns ``(path, bundle)``.

    Raises:
        FileNotFoundError, ValueError (incl. BundleError), RuntimeError (checkpoint mismatch),
        KeyError (unknown preset).
    """
    from pathlib import Path

    from concerto_ros.models.bundle import bundle_from_parts, save_bundle

    if not args.encoder and not args.cross4d:
        raise ValueError("give --encoder and/or --cross4d: a bundle needs at least one encoder")
    encoder = cross4d = translator = None
    sources = {}
    if args.encoder:
        from concerto_ros.models.checkpoint import load_encoder

        p = Path(args.encoder).expanduser()
        encoder = load_encoder(p, preset=args.preset)
        sources["encoder"] = str(p)
    if args.cross4d:
        from concerto_ros.models.cross4d import load_cross4d

        _, cross4d = load_cross4d(args.cross4d)
        sources["cross4d"] = str(args.cross4d)
    head = _load_head(args.head, _split(args.class_names)) if args.head else None
    if head is not None:
        sources["head"] = str(args.head)
    if args.translator:
        from concerto_ros.language.translator import Translator

        translator = Translator.load(Path(args.translator).expanduser())
        sources["translator"] = str(args.translator)
    bundle = bundle_from_parts(
        encoder=encoder, feature=args.feature, voxel_size=args.voxel_size, use_color=not args.no_color,
        head=head, translator=translator, cross4d=cross4d, text_encoder=args.text_encoder,
        text_model=args.text_model, vocabulary=_split(args.vocabulary),
        metadata={"description": args.description or f"packed from {', '.join(sources.values())}",
                  "command": _command_line(args),
                  "sources": sources})
    return save_bundle(bundle, args.output, half=args.half), bundle


def run(args: argparse.Namespace) -> int:
    """Exit codes: 0 written, 1 the parts cannot be read or do not fit together."""
    try:
        path, bundle = pack(args)
    except (FileNotFoundError, ValueError, RuntimeError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({', '.join(bundle.components())}); run it with model.bundle: {path}")
    return 0
