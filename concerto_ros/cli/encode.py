"""concerto encode: run the Concerto PTv3 encoder on a batch stored in an .npz file.

Input keys (the layout of ../shared/golden/ptv3_golden_a.npz): coord (N, 3) float32 metres
after CenterShift, grid_coord (N, 3) int voxel indices, feat (N, C) float32 (C = 9 for
Concerto: xyz, rgb/255, normal), offset (B,) int64 cumulative point counts. Output keys:
last_stage_feat (M, C_last) and upcast_feat (N, D) float32, the latter being the Concerto
README per-point feature (last three levels concatenated and copied down to the input
points; Zhang et al., arXiv 2510.23607).

With --runtime onnxruntime the exported graph runs under ONNX Runtime instead of eager
PyTorch: --onnx FILE (from `concerto export`, holding the checkpoint's weights), or, without
it, an export made on the fly and cached in ~/.cache/concerto_ros/export.
"""

from __future__ import annotations

import argparse
import sys

_BACKENDS = ("auto", "torch", "spconv")
_RUNTIMES = ("torch", "onnxruntime")
_PROVIDERS = ("cpu", "cuda", "tensorrt")
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
    _add_file_arguments(parser)
    _add_model_arguments(parser)
    _add_runtime_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _add_file_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, --input, --output and --preset."""
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


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--backend, --device, --threads, --patch-size and --stage-orders."""
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


def _add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """--runtime, --onnx and --provider (ONNX Runtime)."""
    parser.add_argument("--runtime", choices=_RUNTIMES, default="torch",
                        help="torch: eager PyTorch; onnxruntime: the exported ONNX graph under ONNX "
                        "Runtime (default: %(default)s)")
    parser.add_argument("--onnx", default=None, metavar="FILE",
                        help="with --runtime onnxruntime: the .onnx file from `concerto export` (it must "
                        "hold the checkpoint's weights); default: export on the fly into "
                        "~/.cache/concerto_ros/export")
    parser.add_argument("--provider", choices=_PROVIDERS, default="cpu",
                        help="ONNX Runtime execution provider (cuda and tensorrt need the onnxruntime-gpu "
                        "wheel); default: %(default)s")


def _read_input(path: str, device: str):
    """The input arrays as a PointBatch; raises ValueError with a one-line reason."""
    import numpy as np

    from concerto_ros.models.ptv3 import PointBatch

    try:
        with np.load(path) as data:
            missing = [k for k in _INPUT_KEYS if k not in data]
            if missing:
                raise ValueError(f"{path} lacks keys {missing}")
            arrays = {k: data[k] for k in _INPUT_KEYS}
        return PointBatch.from_arrays(**arrays, device=device)
    except OSError as exc:
        raise ValueError(f"cannot read input {path}: {exc}") from None


def _encode_torch(model, batch):
    """``(last_stage_feat, upcast_feat)`` with the eager encoder."""
    import torch

    from concerto_ros.models.ptv3 import concerto_point_feature

    with torch.inference_mode():
        output = model(batch)
        return output.last_feat, concerto_point_feature(output)


def _encode_onnx(args, model, batch, overrides: dict):
    """``(last_stage_feat, upcast_feat, description)`` through ONNX Runtime."""
    from concerto_ros.models.export import (ExportableModel, ExportedModel, cached_export,
                                            weights_hash)

    if args.onnx:
        exported = ExportedModel(args.onnx, provider=args.provider)
        if exported.weights != weights_hash(model):
            raise ValueError(f"{args.onnx} holds other weights than {args.checkpoint}")
    else:
        path = cached_export(ExportableModel(model.cpu()), "onnx",
                             log=lambda m: print(m, file=sys.stderr))
        exported = ExportedModel(path, provider=args.provider)
    index_overrides = {k: v for k, v in overrides.items() if k in ("stage_orders", "enc_patch_size")}
    out = exported(batch.coord.cpu(), batch.grid_coord.cpu(), batch.feat.cpu(), batch.offset.cpu(),
                   **index_overrides)
    width = sum(exported.config.enc_channels[-3:])
    return out["last_stage_feat"], out["point_feat"][:, -width:], f"{exported.path.name} ({args.provider})"


def run(args: argparse.Namespace) -> int:
    """Encode ``args.input`` and write ``args.output``; returns the exit code
    (0 ok, 1 checkpoint/model error, 2 bad input)."""
    import time

    import numpy as np
    import torch

    from concerto_ros.models.allocator import keep_freed_memory
    from concerto_ros.models.checkpoint import load_encoder
    from concerto_ros.models.sparse_conv import resolve_backend

    keep_freed_memory()
    if args.threads is not None:
        if args.threads < 1:
            print("error: --threads must be >= 1", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    if args.onnx and args.runtime != "onnxruntime":
        print("error: --onnx needs --runtime onnxruntime", file=sys.stderr)
        return 2
    try:
        batch = _read_input(args.input, args.device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
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
        if args.runtime == "onnxruntime":
            last, upcast, backend = _encode_onnx(args, model, batch, overrides)
        else:
            last, upcast = _encode_torch(model, batch)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    elapsed = time.perf_counter() - start
    np.savez(
        args.output,
        last_stage_feat=last.float().cpu().numpy(),
        upcast_feat=upcast.float().cpu().numpy(),
    )
    print(
        f"encoded {batch.num_points} points ({batch.batch_size} scenes) -> "
        f"{last.shape[0]} voxels x {last.shape[1]} at the last stage, "
        f"upcast feature {upcast.shape[1]}-d, in {elapsed:.3f} s "
        f"(runtime {args.runtime}, backend {backend}, device {args.device}, "
        f"threads {torch.get_num_threads()}); wrote {args.output}"
    )
    return 0
