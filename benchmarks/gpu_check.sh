#!/usr/bin/env bash
# GPU check of the Concerto encoder, prepared to run as is on a CUDA machine:
#   concerto_large (the `large` preset, 207.7M parameters, seeded random weights: no
#   download) on the real 5-frame Kinect window (../shared/data/rgbd_slambook, 271,615
#   voxels at 0.02 m), eager vs exported (torch.export .pt2 on CUDA; ONNX under ONNX
#   Runtime's CUDA provider when onnxruntime-gpu is installed), fp32 vs bf16 autocast,
#   every output compared with the CPU fp32 result; writes a JSON.
#
#   benchmarks/gpu_check.sh [OUT.json]        (default outputs/gpu_check.json)
#   PRESET=tiny DEVICE=cpu benchmarks/gpu_check.sh /tmp/smoke.json   # smoke test without a GPU
#
# Columns of each run in the JSON: ms (best of REPEAT after a warm-up, CUDA events),
# points_per_s, max_abs / max_rel (vs CPU fp32, rel = max_abs / max |CPU|), peak_mib.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-outputs/gpu_check.json}"
mkdir -p "$(dirname "$OUT")"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OUT PRESET="${PRESET:-large}" DEVICE="${DEVICE:-cuda}" \
    REPEAT="${REPEAT:-5}"
timeout "${TIMEOUT:-1200}" scripts/env.sh python - <<'PY'
import copy, json, os, sys, tempfile, time
from pathlib import Path

import torch

sys.path.insert(0, "benchmarks")
from bench_encoder import DEFAULT_DATA, window_input  # noqa: E402

from concerto_ros.models.export import ExportableModel, ExportedModel, export_model, export_program  # noqa: E402
from concerto_ros.models.extractor import inference_overrides  # noqa: E402
from concerto_ros.models.presets import build_encoder  # noqa: E402
from concerto_ros.models.ptv3 import PointBatch, concerto_point_feature  # noqa: E402

dev = torch.device(os.environ["DEVICE"])
if dev.type == "cuda" and not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible to torch")
repeat, preset = int(os.environ["REPEAT"]), os.environ["PRESET"]
arrays = window_input(DEFAULT_DATA, 0.02)
cpu_batch = PointBatch.from_arrays(arrays["coord"], arrays["grid_coord"], arrays["feat"], arrays["offset"])
batch = cpu_batch.to(dev)
n = cpu_batch.num_points
torch.manual_seed(0)
encoder = build_encoder(preset, **inference_overrides("cpu", "torch", flash="off")).eval()
with torch.inference_mode():
    t0 = time.perf_counter()
    reference = concerto_point_feature(encoder(cpu_batch))
    cpu_s = time.perf_counter() - t0
scale = float(reference.abs().max())
report = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "preset": preset,
          "points": n, "torch": torch.__version__, "cpu_fp32_s": cpu_s, "runs": {}}


def timed(name, fn, dtype=None):
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda *_: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    best, out = float("inf"), None
    with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        for i in range(repeat + 1):
            sync()
            t0 = time.perf_counter()
            out = fn()
            sync()
            if i:
                best = min(best, time.perf_counter() - t0)
    diff = float((out.float().cpu() - reference).abs().max())
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    report["runs"][name] = {"ms": best * 1e3, "points_per_s": n / best, "max_abs": diff,
                            "max_rel": diff / scale, "peak_mib": peak}
    print(f"{name:40s} {best * 1e3:9.1f} ms  max|diff| {diff:.2e} (rel {diff / scale:.2e})", flush=True)


for backend in ("auto", "torch"):
    eager = build_encoder(preset, **inference_overrides(dev, backend)).eval()
    eager.load_state_dict(encoder.state_dict())
    eager.to(dev)
    for amp, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        timed(f"eager {backend} conv, {amp}", lambda: concerto_point_feature(eager(batch)), dtype)
    del eager
with tempfile.TemporaryDirectory() as tmp:
    graph = ExportableModel(copy.deepcopy(encoder).to(dev))  # traced on the device: .pt2 weights there
    program = export_program(graph)
    pt2 = export_model(graph, Path(tmp) / "encoder.pt2", "torch-export", program=program)
    onnx = export_model(graph, Path(tmp) / "encoder.onnx", "onnx", program=program)
    exported = ExportedModel(pt2)
    index = exported.index(batch.coord, batch.grid_coord, batch.offset)  # built on the device
    module = torch.export.load(str(pt2)).module()
    inputs = [batch.feat] + index.ordered(exported.config)
    for amp, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        timed(f"torch.export (.pt2), {amp}", lambda: module(*inputs)[1], dtype)
    provider = "cuda" if dev.type == "cuda" else "cpu"
    name = f"onnxruntime ({provider} provider), fp32"
    try:
        ort_model = ExportedModel(onnx, provider=provider)
        timed(name, lambda: ort_model(cpu_batch.coord, cpu_batch.grid_coord, cpu_batch.feat,
                                      cpu_batch.offset)["point_feat"])
    except RuntimeError as exc:  # no onnxruntime-gpu wheel: recorded, the rest stands
        report["runs"][name] = {"error": str(exc)}
        print(f"{name}: {exc}")
Path(os.environ["OUT"]).write_text(json.dumps(report, indent=2))
print(f"wrote {os.environ['OUT']}")
PY
