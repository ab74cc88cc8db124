#!/usr/bin/env python3
"""Data-parallel scaling of ``concerto train ssl``: steps/s with 1 and with N processes.

Runs the same training (a generated RGB-D room, or ``--source``) once as one process and once
under ``torchrun --nproc_per_node N`` (gloo on the CPU, NCCL with ``--device cuda``), each
with the global batch ``--batch`` (default: N scenes, so the two runs do the same work per
step) and the CPU threads split evenly (``OMP_NUM_THREADS = cores // processes``). The rate is
the loop's own (``summary.json``: steps / wall time of the training loop; data preparation,
imports and export excluded). Prints both rates, their ratio and the load average (on a
shared machine other jobs take cores: compare ratios measured in one run).

    scripts/env.sh python benchmarks/bench_train_ddp.py                    # 1 vs 2 CPU processes
    scripts/env.sh python benchmarks/bench_train_ddp.py --nproc 4 --device cuda --steps 50
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    from concerto_ros.cli.helptext import plain
    p = argparse.ArgumentParser(description=plain(__doc__.split("\n\n")[0]))
    p.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel run (default 2)")
    p.add_argument("--steps", type=int, default=20, help="training steps of each run (default 20)")
    p.add_argument("--batch", type=int, default=0, help="global batch in scenes (default: --nproc)")
    p.add_argument("--voxels", type=int, default=3000, help="largest view, voxels (views.max_view_voxels; default 3000)")
    p.add_argument("--objective", default="concerto", help="ssl.objective (default concerto)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--source", default="", help="recording to train on (default: a generated 320x240 room)")
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    return p.parse_args(argv)


def _run(nproc: int, args: argparse.Namespace, source: str, work: Path) -> dict:
    out = work / f"run_{nproc}"
    cores = os.cpu_count() or 1
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": str(max(1, cores // nproc))}
    cli = ["-m", "concerto_ros.cli", "train", "ssl", "--source", source, "--output", str(out), "--no-progress",
           "--device", args.device, "--set", f"cache_dir={work / 'cache'}", "--set", f"ssl.objective={args.objective}",
           "--set", f"loop.steps={args.steps}", "--set", f"loop.batch_size={args.batch or args.nproc}",
           "--set", f"loop.steps_per_epoch={args.steps}", "--set", "loop.checkpoint_every=0",
           "--set", "loop.eval=false", "--set", f"views.max_view_voxels={args.voxels}", "--set", "optim.warmup=2"]
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={nproc}"]
    t0 = time.perf_counter()
    proc = subprocess.run(launcher + cli, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"the {nproc}-process run failed:\n{proc.stderr[-3000:]}")
    s = json.loads((out / "summary.json").read_text())
    return {"steps_per_s": args.steps / s["wall_s"], "points_per_s": s["points_per_s"], "total_s": time.perf_counter() - t0}


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        source = args.source
        if not source:
            from concerto_ros.demo.scene import write_sequence

            source = str(write_sequence(work / "room", seed=11, num_frames=6, width=320, height=240))
        _run(1, argparse.Namespace(**{**vars(args), "steps": 2}), source, work)  # prepare the scene cache once
        load0 = os.getloadavg()
        one = _run(1, args, source, work)
        many = _run(args.nproc, args, source, work)
        load1 = os.getloadavg()
    batch = args.batch or args.nproc
    print(f"concerto train ssl ({args.objective}), {args.steps} steps, global batch {batch}, views <= {args.voxels} "
          f"voxels, {args.device}, {os.cpu_count()} cores")
    print(f"  1 process : {one['steps_per_s']:.3f} steps/s ({one['points_per_s']:,.0f} points/s; "
          f"{one['total_s']:.0f} s with start-up)")
    print(f"  {args.nproc} processes: {many['steps_per_s']:.3f} steps/s ({many['points_per_s']:,.0f} points/s; "
          f"{many['total_s']:.0f} s with start-up)")
    print(f"  ratio {args.nproc} / 1 processes: {many['steps_per_s'] / one['steps_per_s']:.2f}x")
    print(f"  load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, after {load1[0]:.2f} {load1[1]:.2f} "
          f"{load1[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
