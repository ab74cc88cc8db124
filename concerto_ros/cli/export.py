"""concerto export: write the Concerto encoder as an ONNX or torch.export file.

The file holds the PTv3 encoder and, from a model bundle, its linear head and translator,
with every size dynamic (number of points, voxels per level, attention patches). The
data-dependent preprocessing (serialization orders, attention patches, sparse-convolution
neighbour rows, pooling clusters) stays outside the graph: `concerto encode --runtime
onnxruntime`, the node's model.runtime: onnxruntime and
concerto_ros.models.export.ExportedModel compute it and feed it in.

Graph inputs: feat (N, 9) float32 (xyz after CenterShift in m, rgb/255, normal) and the
index tensors named s<stage>_... (see concerto_ros.models.geometry.EncoderIndex). Outputs:
last_stage_feat (M, C_last), point_feat (N, D) in the feature layout, and with a bundle's
head logits (N, K), with its translator embedding (N, D_text, unit norm).

ONNX files run with ONNX Runtime on CPU (CPUExecutionProvider) or GPU
(CUDAExecutionProvider / TensorrtExecutionProvider from the onnxruntime-gpu wheel);
torch-export files (.pt2) with torch.export.load(FILE).module().
"""

from __future__ import annotations

import argparse
import sys

_FORMATS = ("onnx", "torch-export")
_FEATURES = ("concat3", "all_levels")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``export`` sub-parser."""
    parser = subparsers.add_parser(
        "export",
        help="export the Concerto encoder (with a bundle's head and translator) to ONNX or torch.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", metavar="B",
                        help="model bundle file, or 'default' (the embedded bundle): encoder, head, translator")
    source.add_argument("--checkpoint", metavar="C",
                        help="encoder checkpoint (.pth): released {config, state_dict}, Pointcept training "
                        "checkpoint or bare state dict (the latter two need --preset)")
    parser.add_argument("--preset", default=None, metavar="NAME",
                        help="encoder preset for a checkpoint without config (tiny, small, base, large, ...)")
    parser.add_argument("--feature", choices=_FEATURES, default="concat3",
                        help="with --checkpoint: layout of point_feat, concat3 (last three levels, Concerto "
                        "README) or all_levels (linear probes); a bundle brings its own (default: %(default)s)")
    parser.add_argument("--format", choices=_FORMATS, default="onnx",
                        help="onnx (ONNX Runtime, TensorRT) or torch-export (.pt2) (default: %(default)s)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="the file to write")
    parser.add_argument("--no-check", action="store_true",
                        help="skip running the written file once against the eager model on a synthetic "
                        "two-scene input (the check prints the largest difference)")
    parser.set_defaults(func=run)
    return parser


def _check(model, path) -> float:
    """Largest absolute difference between the eager model and the written file on the
    synthetic example, over every output."""
    import torch

    from concerto_ros.models.export import ExportedModel, example_points

    coord, grid, feat, offset = example_points(seed=1)
    exported = ExportedModel(path)
    index = exported.index(coord, grid, offset)
    inputs = [feat] + index.ordered(exported.config)
    with torch.inference_mode():
        eager = model(*inputs)
    got = exported.run(feat, index)
    return max(float((got[n] - e).abs().max()) for n, e in zip(exported.output_names, eager))


def run(args: argparse.Namespace) -> int:
    """Export; returns the exit code (0 ok, 1 model or export error)."""
    import time

    from rich.console import Console

    from concerto_ros.models.export import (exportable_from_bundle, exportable_from_checkpoint,
                                            export_model)

    console = Console(stderr=True)
    try:
        if args.bundle:
            model = exportable_from_bundle(args.bundle, log=lambda m: console.print(m, highlight=False))
        else:
            model = exportable_from_checkpoint(args.checkpoint, feature=args.feature, preset=args.preset)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    source = args.bundle or args.checkpoint
    start = time.perf_counter()
    try:
        with console.status(f"exporting {source} ({args.format}) ..."):
            path = export_model(model, args.output, args.format, extra={"source": str(source)})
            diff = None if args.no_check else _check(model, path)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"error: export failed: {exc}", file=sys.stderr)
        return 1
    parts = ", ".join(model.output_names)
    print(f"wrote {path} ({args.format}, {time.perf_counter() - start:.1f} s): inputs feat + "
          f"{len(model.index_names)} index tensors, outputs {parts}; feature '{model.feature}' "
          f"({model.point_channels}-d)")
    if diff is not None:
        print(f"check on a synthetic 2-scene input: max |exported - eager| = {diff:.2e}")
    return 0
