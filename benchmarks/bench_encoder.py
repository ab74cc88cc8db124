"""Forward throughput of the Concerto PTv3 encoder against the CPU's limit and spconv.

Two inputs, both encoded with the golden-a weights (``../shared/golden/ptv3_golden_a.pth``,
the ``tiny`` preset the default config runs; ``--checkpoint``/``--preset`` pick another):

* ``golden-a``: the reference input ``ptv3_golden_a.npz`` (29,172 points, 2 scenes);
* ``window``: the 5 Kinect frames of ``../shared/data/rgbd_slambook`` lifted into the world
  frame and voxelized together at ``--voxel`` (0.02 m), as the pipeline's sliding window
  does (271,615 voxels).

On CPU every configuration runs in its own child process (so each peak RSS is its own):

======================  ==================================================================
``default, N threads``  the default CPU path (eager torch, the project's sparse convolution,
                        freed memory kept for reuse as the node does), at 1 thread and all
                        cores (``--threads``)
``default, glibc ...``  the same at all cores with glibc's default allocator settings
                        (``CONCERTO_KEEP_FREED_MEMORY=0``): the allocator's share
``onnxruntime``         the exported ONNX graph under ONNX Runtime (CPU provider, all cores),
                        index inputs built outside the graph included
``spconv-1t``           the reference: the same encoder with spconv's CPU convolution,
                        everything single-threaded, glibc defaults
``spconv-hybrid``       spconv confined to one thread, everything else on all cores
======================  ==================================================================

Printed per run: best-of-``--repeat`` forward time (the per-point feature
``concerto_point_feature`` included), points/s, time in the sparse convolutions, peak RSS;
then the encoder's FLOPs per forward (``torch.utils.flop_counter`` on the default path, with
the CPU attention kernel registered; the sparse convolution's dense GEMM counts the zero rows
of absent neighbours, so its *useful* FLOPs over present neighbour pairs are printed too),
the machine's fp32 GEMM peak measured in the same run (a 2048^3 ``torch.mm``, 1 thread and
all cores), the achieved GFLOP/s and their ratio, and a breakdown of the default path by
stage kind (embedding, sparse conv with its neighbour map, attention, MLP, pooling,
serialization with the patch indices, feature upcast, other = norms and residuals) in ms,
% and GFLOP/s. Targets checked: default (all cores) >= 2.5x faster than ``spconv-1t``;
outputs within 1e-4 of spconv's. With other jobs on the cores timings are not those of an
idle machine: every child reports the load average before/after it and "other jobs", the
cores that other processes kept busy while it ran (from ``/proc/stat`` minus the child's own
CPU time); ``--rounds R`` runs all configurations R times, interleaved, each keeping its
best.

With ``--device cuda`` the same inputs run on the GPU (no child processes, CUDA-event
timing, ``torch.cuda.max_memory_allocated`` as peak memory) for the backends ``auto``
(spconv when importable) and ``torch``, ``--amp`` autocast modes, flash-attn varlen when
importable, and the exported ONNX graph under ONNX Runtime's CUDA provider when the
``onnxruntime-gpu`` wheel is installed.

    flock /tmp/concerto-cpu.lock scripts/env.sh python benchmarks/bench_encoder.py [--repeat 3] [--rounds 3]
        [--baseline ../main]    # also the landed main's encoder, same run
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
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
# the package under test: this checkout, or another one for a --baseline child
sys.path.insert(0, os.environ.get("CONCERTO_BENCH_PACKAGE", str(REPO)))
sys.path.insert(0, str(REPO / "benchmarks"))

# (only names that the landed main also has: --baseline children import this file there)
from concerto_ros.models import sparse_conv  # noqa: E402
from concerto_ros.models.checkpoint import load_encoder  # noqa: E402
from concerto_ros.models.extractor import check_amp, inference_overrides  # noqa: E402
from concerto_ros.models.ptv3 import (MLP, Embedding, GridPooling, PointBatch, SerializedAttention,  # noqa: E402
                                      concerto_point_feature, prepare_input, xCPE)
from concerto_ros.models.serialization import Serialization  # noqa: E402
from concerto_ros.models.sparse_conv import resolve_backend, spconv_available  # noqa: E402

SHARED = REPO.parent / "shared"
DEFAULT_GOLDEN = SHARED / "golden"
DEFAULT_DATA = SHARED / "data" / "rgbd_slambook"
KINDS = ("embedding", "sparse conv", "neighbour map", "attention", "MLP", "pooling", "serialization",
         "feature upcast")
_MODULE_KINDS = ((Embedding, "embedding"), (xCPE, "sparse conv"), (SerializedAttention, "attention"),
                 (MLP, "MLP"), (GridPooling, "pooling"))
_FLOP_KINDS = {"embedding": "embedding", "cpe": "sparse conv", "attn": "attention", "mlp": "MLP",
               "down": "pooling"}


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


class KindTimer:
    """Exclusive wall time per stage kind of a model (CPU, synchronous): forward hooks on
    the module kinds and wrappers around the geometry functions; time spent in a nested
    region is counted in the innermost one only."""

    def __init__(self, model: torch.nn.Module) -> None:
        from concerto_ros.models import geometry

        self.totals: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []
        for m in model.modules():
            for cls, kind in _MODULE_KINDS:
                if isinstance(m, cls):
                    m.register_forward_pre_hook(lambda *_, k=kind: self.enter(k))
                    m.register_forward_hook(lambda *_: self.exit())
        self._wrap(sparse_conv, "build_neighbour_map", "neighbour map")
        self._wrap(geometry, "pool_points", "pooling")
        self._wrap(Serialization, "_row", "serialization")
        self._wrap(geometry.SparsePoints, "attention_index", "serialization")

    def _wrap(self, owner, name: str, kind: str) -> None:
        fn = getattr(owner, name)

        def timed(*args, **kwargs):
            self.enter(kind)
            try:
                return fn(*args, **kwargs)
            finally:
                self.exit()

        setattr(owner, name, timed)

    def enter(self, kind: str) -> None:
        self._stack.append([kind, time.perf_counter(), 0.0])

    def exit(self) -> None:
        kind, start, inner = self._stack.pop()
        elapsed = time.perf_counter() - start
        self.totals[kind] += elapsed - inner
        if self._stack:
            self._stack[-1][2] += elapsed


def time_cpu(model, batch: PointBatch, repeat: int, kinds_too: bool = True
             ) -> tuple[float, dict[str, float], torch.Tensor]:
    """Best forward seconds, the per-kind seconds of that forward (``{}`` without
    ``kinds_too``), the feature."""
    timer = KindTimer(model) if kinds_too else _NoTimer()
    with torch.inference_mode():
        feat = concerto_point_feature(model(batch))  # warm-up
        best, kinds = float("inf"), {}
        for _ in range(repeat):
            timer.totals.clear()
            start = time.perf_counter()
            out = model(batch)
            timer.enter("feature upcast")
            feat = concerto_point_feature(out)
            timer.exit()
            sec = time.perf_counter() - start
            if sec < best:
                best, kinds = sec, dict(timer.totals)
    return best, kinds, feat


class _NoTimer:
    totals: dict[str, float] = {}

    def enter(self, kind: str) -> None:
        pass

    def exit(self) -> None:
        pass


def count_flops(model, batch: PointBatch) -> dict[str, float]:
    """FLOPs of one forward per kind (``torch.utils.flop_counter``; key ``total``) and the
    sparse convolution's useful FLOPs over present neighbour pairs (``useful sparse conv``)."""
    from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op not in torch.utils.flop_counter.flop_registry:
        register_flop_formula(op)(lambda q, k, v, *_, out_shape=None, **__: sdpa_flop_count(q, k, v))
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        concerto_point_feature(model(batch))  # (the counter sees the calling thread's ops only)
    flops: dict[str, float] = defaultdict(float)
    for fqn, ops in counter.get_flop_counts().items():
        parts = fqn.split(".")
        name = "mlp" if parts[-2:] == ["mlp", "0"] else parts[-1]  # Block calls mlp[0] itself
        if fqn == "Global":
            flops["total"] = float(sum(ops.values()))
        elif name in _FLOP_KINDS:
            flops[_FLOP_KINDS[name]] += float(sum(ops.values()))
    if not hasattr(model, "geometry"):  # a --baseline checkout
        return dict(flops)
    with torch.inference_mode():
        for s, level in enumerate(model.geometry(batch)):
            pairs = level.points.voxels.neighbour_map().num_pairs
            c = model.config.enc_channels[s]
            flops["useful sparse conv"] += 2.0 * pairs * c * c * model.config.enc_depths[s]
    return dict(flops)


def gemm_peak(threads: int, n: int = 2048, repeat: int = 5) -> float:
    """Best fp32 GFLOP/s of an ``n x n x n`` ``torch.mm`` on ``threads`` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n ** 3 / best / 1e9


# ----------------------------------------------------------------------------- children


def child(args) -> None:
    """One CPU configuration (run in its own process); writes a JSON result and the feature."""
    if args.child_kind == "gemm":
        Path(args.child_output + ".json").write_text(json.dumps({"gflops": gemm_peak(args.child_threads)}))
        return
    kept = False
    if args.child_kind in ("default", "spconv-kept"):
        from concerto_ros.models.allocator import keep_freed_memory

        kept = keep_freed_memory()
    arrays = dict(np.load(args.child_input))
    batch = to_batch(arrays, "cpu")
    torch.set_num_threads(args.child_threads)
    result: dict = {"kept_memory": kept}
    if args.child_kind == "onnxruntime":
        sec, feat = time_onnxruntime(args.child_onnx, batch, args.repeat)
        kinds: dict[str, float] = {}
    else:
        backend = "spconv" if args.child_kind.startswith("spconv") else "auto"
        model = load_encoder(args.checkpoint, preset=args.preset,
                             overrides=inference_overrides("cpu", backend, flash="off"))
        sec, kinds, feat = time_cpu(model, batch, args.repeat, kinds_too=args.child_kind != "baseline")
        if args.child_flops:
            result["flops"] = count_flops(model, batch)
    np.save(args.child_output + ".npy", feat.numpy())
    result.update(sec=sec, kinds=kinds, threads=torch.get_num_threads(), peak_rss_mib=peak_rss_mib())
    Path(args.child_output + ".json").write_text(json.dumps(result))


def peak_rss_mib() -> float:
    """This process's peak resident set (``VmHWM``; ``ru_maxrss`` would include the parent's
    before ``exec``)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_onnxruntime(path: str, batch: PointBatch, repeat: int) -> tuple[float, torch.Tensor]:
    """Best seconds of index building + ONNX Runtime run, and the per-point feature."""
    from concerto_ros.models.export import ExportedModel

    exported = ExportedModel(path, provider="cpu")
    run = lambda: exported(batch.coord, batch.grid_coord, batch.feat, batch.offset)["point_feat"]  # noqa: E731
    feat = run()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        feat = run()
        best = min(best, time.perf_counter() - start)
    return best, feat


def _busy_seconds() -> float:
    """CPU seconds all cores spent outside idle and I/O wait since boot (``/proc/stat``)."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_child(args, kind: str, threads: int, out: str, input_path: str = "", flops: bool = False,
              onnx: str = "", env: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child-kind", kind, "--child-input", input_path or "-",
           "--child-threads", str(threads), "--child-output", out, "--repeat", str(args.repeat),
           "--checkpoint", str(args.checkpoint)]
    cmd += (["--preset", args.preset] if args.preset else []) + (["--child-flops"] if flops else [])
    cmd += ["--child-onnx", onnx] if onnx else []
    load = os.getloadavg()[0]
    busy, mine, start = _busy_seconds(), _children_cpu_seconds(), time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    wall = time.perf_counter() - start
    result = json.loads(Path(out + ".json").read_text())
    result["load"] = (load, os.getloadavg()[0])
    # cores kept busy by other processes while the child ran (all CPU time minus the child's)
    result["others"] = max(0.0, (_busy_seconds() - busy) - (_children_cpu_seconds() - mine)) / wall
    if Path(out + ".npy").is_file():
        result["feat"] = np.load(out + ".npy")
    return result


# ----------------------------------------------------------------------------- reports


def print_runs(n: int, runs: dict[str, dict]) -> None:
    print(f"  {'configuration':44s} {'forward':>9s} {'points/s':>10s} {'sparse conv':>11s} "
          f"{'peak RSS':>9s} {'load min/max':>13s} {'other jobs':>10s}")
    for label, r in runs.items():
        conv = r["kinds"].get("sparse conv", 0.0) + r["kinds"].get("neighbour map", 0.0)
        conv_text = f"{conv * 1e3:9.0f}ms" if r["kinds"] else f"{'-':>11s}"
        print(f"  {label:44s} {r['sec'] * 1e3:7.0f}ms {n / r['sec']:10.0f} {conv_text} "
              f"{r['peak_rss_mib']:7.0f}MiB {r['load'][0]:6.2f}/{r['load'][1]:<6.2f} {r['others']:7.2f} cores")


def print_efficiency(run: dict, label: str, flops: dict[str, float], peaks: dict[int, float]) -> None:
    """FLOPs, achieved GFLOP/s against the GEMM peak, and the breakdown of ``run``."""
    total = flops["total"]
    peak = peaks[run["threads"]]
    print(f"  FLOPs per forward (torch.utils.flop_counter): {total / 1e9:.2f} GFLOP executed; the sparse "
          f"convolution's {flops.get('sparse conv', 0) / 1e9:.2f} GFLOP include the zero rows of absent "
          f"neighbours, its useful FLOPs (present neighbour pairs, what spconv computes) are "
          f"{flops.get('useful sparse conv', 0) / 1e9:.2f} GFLOP")
    achieved = total / run["sec"] / 1e9
    print(f"  {label}: {achieved:.1f} GFLOP/s executed = {100 * achieved / peak:.1f}% of the "
          f"{run['threads']}-thread fp32 GEMM peak ({peak:.1f} GFLOP/s, same run)")
    print(f"  breakdown of {label} (best forward, exclusive times):")
    print(f"    {'stage kind':16s} {'ms':>8s} {'%':>6s} {'GFLOP':>7s} {'GFLOP/s':>8s}")
    kinds = dict(run["kinds"])
    kinds["other (norms, residuals)"] = run["sec"] - sum(kinds.values())
    for kind in KINDS + ("other (norms, residuals)",):
        sec = kinds.get(kind, 0.0)
        f = flops.get(kind, 0.0)
        rate = f"{f / sec / 1e9:8.1f}" if f and sec > 0 else f"{'':8s}"
        print(f"    {kind:16s} {sec * 1e3:8.1f} {100 * sec / run['sec']:6.1f} {f / 1e9:7.2f} {rate}")


def configurations(args, all_cores: int, onnx: str) -> list[tuple[str, str, int, dict]]:
    """``(label, child kind, threads, run_child keywords)`` of every CPU configuration."""
    confs = [(f"default, {t} thread(s)", "default", t, {"flops": t == all_cores}) for t in args.threads]
    confs += [(f"baseline {args.baseline.name}, {t} thread(s)", "baseline", t,
               {"flops": t == all_cores, "env": {"CONCERTO_BENCH_PACKAGE": str(args.baseline)}})
              for t in (args.threads if args.baseline else [])]
    confs.append((f"default, {all_cores} threads, glibc malloc defaults", "default-sysmalloc", all_cores,
                  {"env": {"CONCERTO_KEEP_FREED_MEMORY": "0"}}))
    if onnx:
        confs.append((f"onnxruntime (CPU provider), {all_cores} threads", "onnxruntime", all_cores, {"onnx": onnx}))
    if spconv_available():
        confs += [("spconv-1t (everything 1 thread)", "spconv", 1, {}),
                  ("spconv-1t, freed memory kept", "spconv-kept", 1, {}),
                  (f"spconv-hybrid (conv 1, rest {all_cores})", "spconv", all_cores, {})]
    return confs


def bench_input(args, tmp: str, name: str, arrays: dict, onnx: str, peaks: dict[int, float]) -> None:
    path = os.path.join(tmp, f"{name.split()[0]}.npz")
    np.savez(path, **arrays)
    n = int(arrays["coord"].shape[0])
    all_cores = max(args.threads)
    runs: dict[str, dict] = {}
    loads: dict[str, list[float]] = defaultdict(list)
    for rnd in range(args.rounds):  # interleaved rounds: each configuration keeps its best
        for i, (label, kind, threads, kw) in enumerate(configurations(args, all_cores, onnx)):
            kw = dict(kw, flops=kw.get("flops", False) and rnd == 0)
            r = run_child(args, kind, threads, os.path.join(tmp, f"{name.split()[0]}_{i}_{rnd}"), path, **kw)
            loads[label] += list(r["load"])
            if "flops" in runs.get(label, {}):
                r["flops"] = runs[label]["flops"]
            if label not in runs or r["sec"] < runs[label]["sec"]:
                runs[label] = r
    for label, r in runs.items():
        r["load"] = (min(loads[label]), max(loads[label]))
    print(f"\n{name}: {n} points, {len(arrays['offset'])} scene(s)")
    print_runs(n, runs)
    default = runs[f"default, {all_cores} thread(s)"]
    one = runs[f"default, {min(args.threads)} thread(s)"]
    print_efficiency(default, f"default, {all_cores} threads", default["flops"], peaks)
    achieved_1 = default["flops"]["total"] / one["sec"] / 1e9
    print(f"  default, {one['threads']} thread: {achieved_1:.1f} GFLOP/s = "
          f"{100 * achieved_1 / peaks[one['threads']]:.1f}% of the 1-thread GEMM peak")
    for t in args.threads if args.baseline else []:
        base = runs[f"baseline {args.baseline.name}, {t} thread(s)"]
        rate = runs[f"baseline {args.baseline.name}, {all_cores} thread(s)"]["flops"]["total"] / base["sec"] / 1e9
        print(f"  baseline {args.baseline.name}, {t} thread(s): {base['sec'] * 1e3:.0f} ms, {rate:.1f} GFLOP/s = "
              f"{100 * rate / peaks[t]:.1f}% of the {t}-thread GEMM peak")
    check_targets(runs, default, all_cores)


def check_targets(runs: dict[str, dict], default: dict, all_cores: int) -> None:
    for label, r in runs.items():
        if r is default or "feat" not in r:
            continue
        diff = float(np.abs(r["feat"] - default["feat"]).max())
        print(f"  max |{label} - default, {all_cores} threads| = {diff:.2e}")
    ref = runs.get("spconv-1t (everything 1 thread)")
    if ref is not None:
        speed = ref["sec"] / default["sec"]
        print(f"  default ({all_cores} threads) vs spconv-1t: x{speed:.2f} faster "
              f"(target >= 2.5: {'met' if speed >= 2.5 else 'NOT met'})")
        kept = runs["spconv-1t, freed memory kept"]
        print(f"  default ({all_cores} threads) vs spconv-1t with freed memory kept: "
              f"x{kept['sec'] / default['sec']:.2f}")
    ort = next((r for k, r in runs.items() if k.startswith("onnxruntime")), None)
    if ort is not None:
        print(f"  onnxruntime vs default, {all_cores} threads: x{default['sec'] / ort['sec']:.2f} "
              f"({'faster' if ort['sec'] < default['sec'] else 'slower'})")
    busy = max(r["others"] for r in runs.values())
    if busy > 0.2:
        print(f"  WARNING: other processes kept up to {busy:.2f} cores busy during the kept runs ('other jobs'; "
              "the load average counts this benchmark's own threads too): timings and thread scaling are "
              "not those of an idle machine")


def bench_cpu(args, inputs: dict[str, dict[str, np.ndarray]]) -> None:
    print(f"CPU: {os.cpu_count()} cores, torch {torch.__version__}, spconv "
          f"{'available' if spconv_available() else 'NOT available'}; default sparse-conv backend on CPU: "
          f"'{resolve_backend('auto', 'cpu')}'; best of {args.repeat} forwards after 1 warm-up; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        peaks = {t: max(run_child(args, "gemm", t, os.path.join(tmp, f"gemm{t}_{r}"))["gflops"]
                        for r in range(args.rounds)) for t in args.threads}
        print("fp32 GEMM peak (2048^3 torch.mm, best of 5 per round): " + ", ".join(
            f"{t} thread(s) {g:.1f} GFLOP/s" for t, g in peaks.items()))
        onnx = export_onnx(args, tmp) if args.onnx else ""
        for name, arrays in inputs.items():
            bench_input(args, tmp, name, arrays, onnx, peaks)


def export_onnx(args, tmp: str) -> str:
    """The encoder as ONNX in ``tmp`` (for the onnxruntime child); '' when it fails."""
    from concerto_ros.models.export import export_model, exportable_from_checkpoint

    start = time.perf_counter()
    try:
        path = export_model(exportable_from_checkpoint(args.checkpoint, preset=args.preset),
                            os.path.join(tmp, "encoder.onnx"), "onnx")
    except Exception as exc:  # noqa: BLE001 - report and go on without the onnxruntime row
        print(f"ONNX export failed, no onnxruntime row: {exc}")
        return ""
    print(f"ONNX export: {time.perf_counter() - start:.1f} s")
    return str(path)


def bench_cuda(args, inputs: dict[str, dict[str, np.ndarray]]) -> None:
    device = torch.device(args.device)
    print(f"CUDA: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, spconv "
          f"{'available' if spconv_available() else 'NOT available'}; best of {args.repeat}")
    onnx = ""
    if args.onnx and _ort_cuda():
        with tempfile.TemporaryDirectory() as tmp:
            onnx = export_onnx(args, tmp)
            _bench_cuda_inputs(args, inputs, device, onnx)
    else:
        _bench_cuda_inputs(args, inputs, device, "")


def _ort_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def _bench_cuda_inputs(args, inputs, device, onnx: str) -> None:
    for name, arrays in inputs.items():
        batch = to_batch(arrays, str(device))
        n = batch.num_points
        print(f"\n{name}: {n} points")
        for backend in ("auto", "torch"):
            model = load_encoder(args.checkpoint, preset=args.preset,
                                 overrides=inference_overrides(device, backend), device=device)
            for amp in args.amp:
                best, peak = _time_cuda(lambda m=model: concerto_point_feature(m(batch)), device, args.repeat,
                                        check_amp(amp, device))
                label = (f"{resolve_backend(backend, device)} conv, flash {model.config.enable_flash}, "
                         f"amp {amp}")
                print(f"  {label:44s} {best * 1e3:8.1f} ms {n / best:12.0f} points/s peak {peak:7.0f} MiB")
            del model
            torch.cuda.empty_cache()
        if onnx:
            from concerto_ros.models.export import ExportedModel

            exported = ExportedModel(onnx, provider="cuda", device_id=device.index or 0)
            best, _ = _time_cuda(lambda: exported(batch.coord, batch.grid_coord, batch.feat, batch.offset),
                                 device, args.repeat, None)
            print(f"  {'onnxruntime CUDA provider, fp32':44s} {best * 1e3:8.1f} ms {n / best:12.0f} points/s "
                  "(index inputs built on the GPU, copied through the host)")


def _time_cuda(fn, device, repeat: int, dtype) -> tuple[float, float]:
    torch.cuda.reset_peak_memory_stats(device)
    best = float("inf")
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
        for i in range(repeat + 1):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            if i:  # first run is the warm-up
                best = min(best, start.elapsed_time(end) / 1e3)
    return best, torch.cuda.max_memory_allocated(device) / 2**20


def main() -> None:
    from concerto_ros.cli.helptext import plain
    parser = argparse.ArgumentParser(description=plain(__doc__.splitlines()[0]))
    parser.add_argument("--golden", type=Path, default=DEFAULT_GOLDEN, help="golden dir")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="rgbd_slambook dir")
    parser.add_argument("--voxel", type=float, default=0.02, help="window voxel size, m")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="encoder checkpoint (default: the golden-a weights)")
    parser.add_argument("--preset", default=None, help="preset for a checkpoint without config")
    parser.add_argument("--repeat", type=int, default=3, help="timed forwards per child (best kept)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every configuration this many times, interleaved, keeping its best "
                        "(bursts of load from other jobs then hit all configurations alike)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1],
                        help="CPU thread counts of the default path (max = 'all cores')")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--amp", nargs="+", default=["none", "bf16"], choices=["none", "bf16", "fp16"],
                        help="CUDA autocast modes to time")
    parser.add_argument("--inputs", nargs="+", default=["golden-a", "window"],
                        choices=["golden-a", "window"])
    parser.add_argument("--no-onnx", dest="onnx", action="store_false",
                        help="skip the exported graph under ONNX Runtime")
    parser.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                        help="also time the default path of another checkout (e.g. the landed main) in "
                        "the same run, with its own code (glibc allocator defaults)")
    for name, kw in (("--child-kind", {}), ("--child-input", {}), ("--child-threads", {"type": int}),
                     ("--child-output", {}), ("--child-onnx", {}),
                     ("--child-flops", {"action": "store_true"})):
        parser.add_argument(name, help=argparse.SUPPRESS, **kw)
    args = parser.parse_args()
    if args.checkpoint is None:
        args.checkpoint = args.golden / "ptv3_golden_a.pth"
    if args.child_kind:
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
