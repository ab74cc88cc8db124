"""``concerto info``: model presets and their parameter counts, or what a model bundle holds.

Prints the Cross4D encoder presets (width, depth, heads, anchors, radius, neighbours,
temporal kernel, parameters counted by building each model) and the Concerto PTv3 presets
(counted on torch's ``meta`` device, or the published figure with ``--no-build``).

``concerto info --bundle FILE`` instead prints the contents of a model bundle (encoders,
feature widths, head classes, translator and text encoder, vocabulary, voxel size in metres,
description, creation time, the command that wrote it, metrics) and exits 1 with the reason
when the file is not a usable bundle.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("info", help="list model presets and their parameter counts",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-build", action="store_true",
                        help="print the published PTv3 sizes instead of counting (counting builds each "
                        "preset on the 'meta' device: no weights are allocated)")
    parser.add_argument("--cross4d-only", action="store_true", help="only the Cross4D presets")
    parser.add_argument("--bundle", metavar="FILE", default=None,
                        help="print what a model bundle holds (from `concerto train ...` or `concerto bundle pack`; "
                        "'default' = the embedded one) instead of the presets")
    parser.set_defaults(func=run)
    return parser


def cross4d_rows() -> list[tuple]:
    """``(name, dim, depth, heads, anchors, radius_m, neighbours, kernel, params)`` per preset."""
    from concerto_ros.models.cross4d import CROSS4D_PRESETS, build_cross4d, count_parameters

    rows = []
    for name, c in CROSS4D_PRESETS.items():
        n = count_parameters(build_cross4d(name, seed=0))
        rows.append((name, c.dim, c.depth, c.num_heads, c.num_anchors, c.radius, c.num_neighbours,
                     c.temporal_kernel, n))
    return rows


def show_bundle(value: str, console) -> int:
    """Print the :meth:`~concerto_ros.models.bundle.ModelBundle.describe` table of a bundle;
    0, or 1 with the reason on stderr when it cannot be read or is inconsistent."""
    import sys

    from rich.table import Table

    from concerto_ros.models.bundle import BundleError, load_bundle, resolve_bundle_path

    try:
        path = resolve_bundle_path(value)
        if path is None:
            raise FileNotFoundError("--bundle needs a file name")
        bundle = load_bundle(path)
    except (FileNotFoundError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    t = Table(title=f"model bundle {path}")
    t.add_column("item")
    t.add_column("value", overflow="fold")
    for k, v in bundle.describe():
        t.add_row(k, v)
    console.print(t)
    return 0


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 120))
    if args.bundle is not None:
        return show_bundle(args.bundle, console)
    t = Table(title="Cross4D encoder presets (xyz input; +RGB adds 3 input channels to two layers)")
    for col in ("preset", "dim", "depth", "heads", "anchors/frame", "radius [m]", "neighbours", "t-kernel", "parameters"):
        t.add_column(col)
    for r in cross4d_rows():
        t.add_row(*[str(v) for v in r[:-1]], f"{r[-1]:,}")
    console.print(t)
    if args.cross4d_only:
        return 0
    import torch

    from concerto_ros.models.presets import PRESETS, build_encoder

    t2 = Table(title="Concerto PTv3 encoder presets")
    t2.add_column("preset")
    t2.add_column("parameters")
    t2.add_column("description")
    for name, p in PRESETS.items():
        if args.no_build:
            n = f"{p.parameters:,} (published)" if p.parameters else "-"
        else:
            with torch.device("meta"):
                enc = build_encoder(name)
            n = f"{sum(x.numel() for x in enc.parameters()):,}"
        t2.add_row(name, n, p.description)
    console.print(t2)
    return 0
