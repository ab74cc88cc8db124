"""Forward throughput of the Concerto PTv3 encoder on the golden-a input (CPU).

Compares the pure-torch sparse-conv backend (1 and N threads) with spconv run
single-threaded (its CPU kernels are only correct with one thread). Prints seconds per
forward and input points per second, and the ratios to spconv.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_encoder.py \
        [--golden DIR] [--repeat 5] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from concerto_ros.models.checkpoint import load_encoder
from concerto_ros.models.ptv3 import PointBatch, concerto_point_feature
from concerto_ros.models.sparse_conv import spconv_available

DEFAULT_GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"


def _time(model, batch, repeat: int) -> float:
    with torch.inference_mode():
        concerto_point_feature(model(batch))  # warm-up (allocations, spconv JIT tables)
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            concerto_point_feature(model(batch))
            best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--golden", type=Path, default=DEFAULT_GOLDEN, help="golden dir")
    parser.add_argument("--repeat", type=int, default=5, help="timed forwards (best kept)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads")
    args = parser.parse_args()

    data = np.load(args.golden / "ptv3_golden_a.npz")
    batch = PointBatch.from_arrays(data["coord"], data["grid_coord"], data["feat"], data["offset"])
    ckpt = args.golden / "ptv3_golden_a.pth"
    n = batch.num_points
    results: dict[str, float] = {}
    default_threads = torch.get_num_threads()
    model = load_encoder(ckpt, overrides={"sparse_conv_backend": "torch"})
    for t in args.threads:
        torch.set_num_threads(t)
        results[f"torch, {t} thread(s)"] = _time(model, batch, args.repeat)
    torch.set_num_threads(default_threads)
    if spconv_available():
        model = load_encoder(ckpt, overrides={"sparse_conv_backend": "spconv"})
        torch.set_num_threads(1)
        results["spconv, 1 thread"] = _time(model, batch, args.repeat)
        torch.set_num_threads(default_threads)
    ref = results.get("spconv, 1 thread")
    print(f"golden-a: {n} points, {batch.batch_size} scenes, best of {args.repeat}")
    for name, sec in results.items():
        ratio = f"  x{ref / sec:.2f} vs spconv-1t" if ref else ""
        print(f"  {name:22s} {sec * 1000:8.1f} ms  {n / sec:10.0f} points/s{ratio}")


if __name__ == "__main__":
    main()
