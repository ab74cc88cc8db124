"""``concerto encode``: run the Concerto PTv3 encoder on a batch stored in an ``.npz``.

Input keys (the layout of ``../shared/golden/ptv3_golden_a.npz``): ``coord (N, 3)``
float32 metres after CenterShift, ``grid_coord (N, 3)`` int voxel indices, ``feat (N, C)``
float32 (C = 9 for Concerto: xyz, rgb/255, normal), ``offset (B,)`` int64 cumulative point
counts. Output keys: ``last_stage_feat (M, C_last)`` and ``upcast_feat (N, D)`` float32,
the latter being the Concerto README per-point feature (last three levels concatenated
and copied down to the input points; Zhang et al., arXiv 2510.23607).
"""

from __future__ import annotations

import argparse
import sys

_BACKENDS = ("auto", "torch", "spconv")
_INPUT_KEYS = ("coord", "grid_coord", "feat", "offset")


def _parse_stage_orders(text: str) -> list[list[str]]:
    return [[o.strip() for o in stage.split(",") if o.strip()] for stage in text.split(";")]


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``encode`` sub-parser."""
    parser = subparsers.add_parser(
        "encode",
        help="run the Concerto PTv3 encoder on points stored in an .npz file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="CKPT",
        help="encoder checkpoint (.pth): a released {config, state_dict} file, a Pointcept "
        "training checkpoint (needs --preset) or a bare state dict (needs --preset)",
    )
    parser.add_argument(
        "--input",
        required=True,
        metavar="IN.npz",
        help="points: coord (N,3) float32 [m], grid_coord (N,3) int [voxels], "
        "feat (N,C) float32, offset (B,) int64 [cumulative point counts]",
    )
    parser.add_argument(
        "--output",
        required=True,
        metavar="OUT.npz",
        help="written with last_stage_feat (M,C_last) float32 and upcast_feat (N,D) "
        "float32 (D = sum of the last three level widths)",
    )
    parser.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help="encoder preset (tiny, small, base, large, concerto_large_video, or "
        "concerto_small/base/large, sonata); required when the checkpoint has no config",
    )
    parser.add_argument(
        "--backend",
        choices=_BACKENDS,
        default="auto",
        help="sparse-convolution backend: torch (pure torch, any thread count), spconv "
        "(CPU: run single-threaded), auto (spconv on CUDA if installed, else torch); "
        "default: %(default)s",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="torch device, e.g. cpu or cuda:0 (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU intra-op threads (torch.set_num_threads); default: torch's default",
    )
    parser.add_argument(
        "--patch-size",
        type=int,
        default=None,
        metavar="K",
        help="override the maximum attention patch size of every stage [voxels]",
    )
    parser.add_argument(
        "--stage-orders",
        default=None,
        metavar="SPEC",
        help="serialization orders per stage, stages separated by ';', orders by ',' "
        "(e.g. 'z,z-trans,hilbert,hilbert-trans;hilbert,z,z-trans,hilbert-trans;...'); "
        "default: the config's order for every stage",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Encode ``args.input`` and write ``args.output``; returns the exit code
    (0 ok, 1 checkpoint/model error, 2 bad input)."""
    import time

    import numpy as np
    import torch

    from concerto_ros.models.checkpoint import load_encoder
    from concerto_ros.models.ptv3 import PointBatch, concerto_point_feature
    from concerto_ros.models.sparse_conv import resolve_backend

    if args.threads is not None:
        if args.threads < 1:
            print("error: --threads must be >= 1", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    try:
        with np.load(args.input) as data:
            missing = [k for k in _INPUT_KEYS if k not in data]
            if missing:
                print(f"error: {args.input} lacks keys {missing}", file=sys.stderr)
                return 2
            arrays = {k: data[k] for k in _INPUT_KEYS}
        batch = PointBatch.from_arrays(**arrays, device=args.device)
    except (OSError, ValueError) as exc:
        print(f"error: cannot read input {args.input}: {exc}", file=sys.stderr)
        return 2

    overrides: dict = {"sparse_conv_backend": args.backend}
    if args.patch_size is not None:
        overrides["enc_patch_size"] = args.patch_size
    if args.stage_orders:
        overrides["stage_orders"] = _parse_stage_orders(args.stage_orders)
    try:
        model = load_encoder(
            args.checkpoint, preset=args.preset, overrides=overrides, device=args.device
        )
        backend = resolve_backend(args.backend, args.device)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    start = time.perf_counter()
    try:
        with torch.inference_mode():
            output = model(batch)
            upcast = concerto_point_feature(output)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    last = output.last_feat
    np.savez(
        args.output,
        last_stage_feat=last.float().cpu().numpy(),
        upcast_feat=upcast.float().cpu().numpy(),
    )
    print(
        f"encoded {batch.num_points} points ({batch.batch_size} scenes) -> "
        f"{last.shape[0]} voxels x {last.shape[1]} at the last stage, "
        f"upcast feature {upcast.shape[1]}-d, in {elapsed:.3f} s "
        f"(backend {backend}, device {args.device}, threads {torch.get_num_threads()}); "
        f"wrote {args.output}"
    )
    return 0
