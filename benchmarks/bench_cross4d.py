"""Forward time of the Cross4D encoder per clip (T frames x N points), per preset.

Usage::

    scripts/env.sh python benchmarks/bench_cross4d.py [--presets tiny small] [--frames 4]
        [--points 2048] [--repeats 5] [--device cpu] [--threads N] [--color]

Prints the median wall time of ``encoder(points, times)`` under ``torch.inference_mode``
(the node's path, dense output for the N input points of every frame) and the parameter
count. Inputs are random clips in a 4 x 3 x 2.5 m room (seeded).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from concerto_ros.models.cross4d import build_cross4d, count_parameters


def bench(preset: str, frames: int, points: int, repeats: int, device: str, color: bool) -> dict:
    enc = build_cross4d(preset, seed=0, point_channels=3 if color else 0).to(device).eval()
    g = torch.Generator().manual_seed(0)
    pts = (torch.rand(1, frames, points, 3, generator=g) * torch.tensor([4.0, 3.0, 2.5])).to(device)
    times = (torch.arange(frames, dtype=torch.float32)[None] / 30.0).to(device)
    feats = torch.rand(1, frames, points, 3, generator=g).to(device) if color else None
    out = []
    with torch.inference_mode():
        enc(pts, times, feats=feats)  # warm-up
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            enc(pts, times, feats=feats)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            out.append(time.perf_counter() - t0)
    return {"preset": preset, "params": count_parameters(enc), "median_ms": 1e3 * statistics.median(out),
            "min_ms": 1e3 * min(out)}


def main() -> None:
    from concerto_ros.cli.helptext import plain
    ap = argparse.ArgumentParser(description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--points", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--color", action="store_true", help="RGB point channels (as the slambook run)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"Cross4D forward, clip {a.frames} frames x {a.points} points, device {a.device}, "
          f"threads {torch.get_num_threads()}, torch {torch.__version__}")
    for p in a.presets:
        r = bench(p, a.frames, a.points, a.repeats, a.device, a.color)
        print(f"  {r['preset']:6s} {r['params']:>12,d} params  median {r['median_ms']:8.1f} ms  min {r['min_ms']:8.1f} ms")


if __name__ == "__main__":
    main()
