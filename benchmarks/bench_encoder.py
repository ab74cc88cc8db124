"""Forward throughput of the Concerto PTv3 encoder, per sparse-conv backend and thread count.

Two inputs, both encoded with the golden-a weights (``../shared/golden/ptv3_golden_a.pth``,
the ``tiny`` preset the default config runs; ``--checkpoint``/``--preset`` pick another):

* ``golden-a``: the reference input ``ptv3_golden_a.npz`` (29,172 points, 2 scenes);
* ``window``: the 5 Kinect frames of ``../shared/data/rgbd_slambook`` lifted into the world
  frame and voxelized together at ``--voxel`` (0.02 m), as the pipeline's sliding window
  does (about 271,600 voxels).

On CPU every configuration runs in its own child process (so each peak RSS is its own):

==================  ==========================================================================
``default``         the project's default CPU path: sparse_conv_backend ``auto`` (= the
                    project's ``torch`` backend), all ``--threads`` (1 and all cores)
``spconv-1t``       the reference: the same encoder with spconv, everything single-threaded
``spconv-hybrid``   spconv confined to one thread, everything else on all cores
==================  ==========================================================================

Printed per run: best-of-``--repeat`` forward time (``concerto_point_feature`` included),
points/s, the time spent inside the xCPE sparse convolutions (neighbour map / indice pairs
built once per stage and reused by its blocks, included), peak memory, and the checks of
the targets: default (all cores) >= 1.5x faster than ``spconv-1t``, the project's
convolution (1 thread) within 3x of spconv's single-threaded convolution, outputs
bit-identical for 1 and all threads and within 1e-4 of spconv.

With ``--device cuda`` the same inputs run on the GPU (no child processes, CUDA-event
timing, ``torch.cuda.max_memory_allocated`` as peak memory) for the backends ``auto``
(spconv when importable), ``torch`` and, with ``--amp``, autocast bf16/fp16, with
flash-attn varlen when importable.

    scripts/env.sh python benchmarks/bench_encoder.py [--repeat 3] [--threads 1 2]
    scripts/env.sh python benchmarks/bench_encoder.py --device cuda --amp none bf16 fp16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from concerto_ros.models.checkpoint import load_encoder  # noqa: E402
from concerto_ros.models.extractor import check_amp, inference_overrides  # noqa: E402
from concerto_ros.models.ptv3 import PointBatch, concerto_point_feature, prepare_input  # noqa: E402
from concerto_ros.models.sparse_conv import SubMConv3d, resolve_backend, spconv_available  # noqa: E402

SHARED = REPO.parent / "shared"
DEFAULT_GOLDEN = SHARED / "golden"
DEFAULT_DATA = SHARED / "data" / "rgbd_slambook"


# ----------------------------------------------------------------------------- inputs


def golden_input(golden: Path) -> dict[str, np.ndarray]:
    data = np.load(golden / "ptv3_golden_a.npz")
    return {k: data[k] for k in ("coord", "grid_coord", "feat", "offset")}


def window_input(data: Path, voxel: float) -> dict[str, np.ndarray]:
    """The 5-frame window voxelized at ``voxel`` m, as encoder input arrays."""
    from bench_lift_voxelize import load_frames

    from concerto_ros.cloud.window import VideoPointCloud
    from concerto_ros.sensors.lifting import lift_depth

    frames = load_frames(data)
    window = VideoPointCloud(len(frames), voxel)
    for frame, pose in frames:
        window.push(lift_depth(frame, pose, min_depth=0.1, max_depth=8.0))
    cloud = window.build()
    batch = prepare_input(cloud.coord, cloud.grid_coord, color=cloud.color)
    return {
        "coord": batch.coord.numpy(),
        "grid_coord": batch.grid_coord.numpy(),
        "feat": batch.feat.numpy(),
        "offset": batch.offset.numpy(),
    }


def to_batch(arrays: dict[str, np.ndarray], device: str) -> PointBatch:
    return PointBatch.from_arrays(
        arrays["coord"], arrays["grid_coord"], arrays["feat"], arrays["offset"], device=device
    )


# ----------------------------------------------------------------------------- timing


class ConvTimer:
    """Wall time spent inside the SubMConv3d modules of a model (CPU, synchronous)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.total = 0.0
        self._start = 0.0
        for m in model.modules():
            if isinstance(m, SubMConv3d):
                m.register_forward_pre_hook(self._pre)
                m.register_forward_hook(self._post)

    def _pre(self, *_):
        self._start = time.perf_counter()

    def _post(self, *_):
        self.total += time.perf_counter() - self._start


def time_cpu(model, batch: PointBatch, repeat: int) -> tuple[float, float, torch.Tensor]:
    """Best forward seconds, the convolution seconds of that forward, the feature."""
    timer = ConvTimer(model)
    with torch.inference_mode():
        feat = concerto_point_feature(model(batch))  # warm-up
        best, best_conv = float("inf"), 0.0
        for _ in range(repeat):
            timer.total = 0.0
            start = time.perf_counter()
            feat = concerto_point_feature(model(batch))
            sec = time.perf_counter() - start
            if sec < best:
                best, best_conv = sec, timer.total
    return best, best_conv, feat


def child(args) -> None:
    """One CPU configuration (run in its own process); writes a JSON result and the feature."""
    arrays = dict(np.load(args.child_input))
    batch = to_batch(arrays, "cpu")
    torch.set_num_threads(args.child_threads)
    overrides = inference_overrides("cpu", args.child_backend, flash="off")
    model = load_encoder(args.checkpoint, preset=args.preset, overrides=overrides)
    sec, conv, feat = time_cpu(model, batch, args.repeat)
    np.save(args.child_output + ".npy", feat.numpy())
    result = {
        "sec": sec,
        "conv": conv,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }
    Path(args.child_output + ".json").write_text(json.dumps(result))


def run_child(args, input_path: str, backend: str, threads: int, out: str) -> dict:
    cmd = [
        sys.executable, __file__, "--child-input", input_path, "--child-backend", backend,
        "--child-threads", str(threads), "--child-output", out, "--repeat", str(args.repeat),
        "--checkpoint", str(args.checkpoint),
    ] + (["--preset", args.preset] if args.preset else [])
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    result = json.loads(Path(out + ".json").read_text())
    result["feat"] = np.load(out + ".npy")
    return result


def bench_cpu(args, inputs: dict[str, dict[str, np.ndarray]]) -> None:
    all_cores = max(args.threads)
    have_spconv = spconv_available()
    default_backend = resolve_backend("auto", "cpu")
    print(f"CPU: {os.cpu_count()} cores, torch {torch.__version__}, spconv "
          f"{'available' if have_spconv else 'NOT available'}; default sparse-conv backend on CPU: "
          f"'{default_backend}' (the project's); best of {args.repeat} forwards after 1 warm-up; "
          f"load average at start {os.getloadavg()[0]:.2f} (timings need an otherwise idle machine)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, arrays in inputs.items():
            path = os.path.join(tmp, f"{name}.npz")
            np.savez(path, **arrays)
            n = int(arrays["coord"].shape[0])
            runs: dict[str, dict] = {}
            for t in args.threads:
                runs[f"default ({default_backend}), {t} thread(s)"] = run_child(
                    args, path, "auto", t, os.path.join(tmp, f"{name}_d{t}"))
            if have_spconv:
                runs["spconv-1t (everything 1 thread)"] = run_child(
                    args, path, "spconv", 1, os.path.join(tmp, f"{name}_s1"))
                runs[f"spconv-hybrid (conv 1, rest {all_cores})"] = run_child(
                    args, path, "spconv", all_cores, os.path.join(tmp, f"{name}_sh"))
            print(f"\n{name}: {n} points, {len(arrays['offset'])} scene(s)")
            print(f"  {'configuration':38s} {'forward':>9s} {'points/s':>10s} {'sparse conv':>11s} "
                  f"{'peak RSS':>9s}")
            for label, r in runs.items():
                print(f"  {label:38s} {r['sec'] * 1e3:7.0f}ms {n / r['sec']:10.0f} "
                      f"{r['conv'] * 1e3:9.0f}ms {r['peak_rss_mib']:7.0f}MiB")
            d1 = runs[f"default ({default_backend}), {min(args.threads)} thread(s)"]
            dn = runs[f"default ({default_backend}), {all_cores} thread(s)"]
            same = np.array_equal(d1["feat"], dn["feat"])
            print(f"  default: {min(args.threads)} vs {all_cores} threads bit-identical: {same}")
            if have_spconv:
                ref = runs["spconv-1t (everything 1 thread)"]
                hyb = runs[f"spconv-hybrid (conv 1, rest {all_cores})"]
                diff = float(np.abs(dn["feat"] - ref["feat"]).max())
                speed = ref["sec"] / dn["sec"]
                conv_ratio = d1["conv"] / ref["conv"]
                print(f"  default ({all_cores} threads) vs spconv-1t: x{speed:.2f} faster "
                      f"(target >= 1.5: {'met' if speed >= 1.5 else 'NOT met'}); max |diff| {diff:.2e}")
                print(f"  spconv-hybrid vs spconv-1t: x{ref['sec'] / hyb['sec']:.2f}, bit-identical: "
                      f"{np.array_equal(hyb['feat'], ref['feat'])}")
                print(f"  sparse conv, 1 thread: project {d1['conv'] * 1e3:.0f} ms vs spconv "
                      f"{ref['conv'] * 1e3:.0f} ms = x{conv_ratio:.2f} "
                      f"(target <= 3: {'met' if conv_ratio <= 3 else 'NOT met'})")


def bench_cuda(args, inputs: dict[str, dict[str, np.ndarray]]) -> None:
    device = torch.device(args.device)
    print(f"CUDA: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, spconv "
          f"{'available' if spconv_available() else 'NOT available'}; best of {args.repeat}")
    for name, arrays in inputs.items():
        batch = to_batch(arrays, str(device))
        n = batch.num_points
        print(f"\n{name}: {n} points")
        for backend in ("auto", "torch"):
            overrides = inference_overrides(device, backend)
            model = load_encoder(args.checkpoint, preset=args.preset, overrides=overrides, device=device)
            for amp in args.amp:
                dtype = check_amp(amp, device)
                torch.cuda.reset_peak_memory_stats(device)
                best = float("inf")
                with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float32,
                                                            enabled=dtype is not None):
                    for i in range(args.repeat + 1):
                        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        start.record()
                        concerto_point_feature(model(batch))
                        end.record()
                        torch.cuda.synchronize(device)
                        if i:  # first run is the warm-up
                            best = min(best, start.elapsed_time(end) / 1e3)
                peak = torch.cuda.max_memory_allocated(device) / 2**20
                label = (f"{resolve_backend(backend, device)} conv, flash {model.config.enable_flash}, "
                         f"amp {amp}")
                print(f"  {label:44s} {best * 1e3:8.1f} ms {n / best:12.0f} points/s "
                      f"peak {peak:7.0f} MiB")
            del model
            torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--golden", type=Path, default=DEFAULT_GOLDEN, help="golden dir")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="rgbd_slambook dir")
    parser.add_argument("--voxel", type=float, default=0.02, help="window voxel size, m")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="encoder checkpoint (default: the golden-a weights)")
    parser.add_argument("--preset", default=None, help="preset for a checkpoint without config")
    parser.add_argument("--repeat", type=int, default=3, help="timed forwards (best kept)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1],
                        help="CPU thread counts of the default path (max = 'all cores')")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--amp", nargs="+", default=["none", "bf16"], choices=["none", "bf16", "fp16"],
                        help="CUDA autocast modes to time")
    parser.add_argument("--inputs", nargs="+", default=["golden-a", "window"],
                        choices=["golden-a", "window"])
    parser.add_argument("--child-input", help=argparse.SUPPRESS)
    parser.add_argument("--child-backend", help=argparse.SUPPRESS)
    parser.add_argument("--child-threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.checkpoint is None:
        args.checkpoint = args.golden / "ptv3_golden_a.pth"
    if args.child_input:
        child(args)
        return
    if not args.checkpoint.is_file():
        print(f"checkpoint not found: {args.checkpoint}")
        return
    inputs: dict[str, dict[str, np.ndarray]] = {}
    if "golden-a" in args.inputs:
        if (args.golden / "ptv3_golden_a.npz").is_file():
            inputs["golden-a"] = golden_input(args.golden)
        else:
            print(f"golden input not found under {args.golden}; skipped")
    if "window" in args.inputs:
        if (args.data / "pose.txt").is_file():
            inputs[f"window (5 frames, {args.voxel} m)"] = window_input(args.data, args.voxel)
        else:
            print(f"rgbd_slambook not found under {args.data}; skipped")
    print(f"encoder: {args.checkpoint}" + (f" (preset {args.preset})" if args.preset else ""))
    if torch.device(args.device).type == "cuda":
        bench_cuda(args, inputs)
    else:
        bench_cpu(args, inputs)


if __name__ == "__main__":
    main()
