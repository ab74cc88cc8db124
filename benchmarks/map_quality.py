"""Map quality: the fused semantic map against the per-window output, on the same points.

Renders a labelled procedural room (``--frames`` frames, two laps: every place is seen again
from other viewpoints) into ``outputs/map_quality/``, then runs ``concerto eval --outputs
window map`` over it: at every keyframe, the newest frame's points are scored twice, with the
window's labels (what ``~/semantic_points`` publishes) and with the map's fused labels at the
same points (what ``~/map/semantic_points`` holds). Writes ``benchmarks/results/map_quality.json``
and prints both mIoUs.

    scripts/env.sh python benchmarks/map_quality.py                          # 200 frames, 320x240, default bundle
    scripts/env.sh python benchmarks/map_quality.py --frames 240 --set model.bundle=outputs/x/bundle.pt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    from concerto_ros.cli.helptext import plain
    ap = argparse.ArgumentParser(description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200, help="frames of the generated sequence (default 200)")
    ap.add_argument("--size", default="320x240", help="image size WxH (default 320x240)")
    ap.add_argument("--seed", type=int, default=5, help="room seed (default 5; the default bundle trained on 101-108)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "map_quality.json")
    args = ap.parse_args(argv)
    from concerto_ros.config import default_config_path, load_config, parse_overrides
    from concerto_ros.demo.scene import write_sequence
    from concerto_ros.evaluation.run import MapPrediction, WindowPrediction, evaluate

    w, h = (int(v) for v in args.size.split("x"))
    folder = ROOT / "outputs" / "map_quality" / f"room{args.seed}_{args.frames}_{w}x{h}"
    if not (folder / "poses.txt").is_file():
        print(f"rendering {args.frames} frames into {folder} ...", flush=True)
        write_sequence(folder, seed=args.seed, num_frames=args.frames, width=w, height=h, arc_degrees=720.0)
    cfg = load_config(default_config_path(), parse_overrides(args.overrides))
    t0 = time.perf_counter()
    res = evaluate(cfg, [{"path": str(folder), "label_names": "camera"}], scenes="sequence",
                   predictions=[WindowPrediction(), MapPrediction()], log=None)
    m = res.metrics()
    out = {name: {k: p[k] for k in ("miou", "miou_all", "accuracy", "num_points", "per_class_iou")}
           for name, p in m["predictions"].items()}
    out.update(frames=args.frames, size=args.size, seed=args.seed, frames_scored=m["frames_scored"],
               frames_processed=m["frames_processed"], overrides=args.overrides, model=res.model,
               wall_s=time.perf_counter() - t0, loadavg=os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"window mIoU {out['window']['miou']:.3f} (accuracy {out['window']['accuracy']:.3f}) vs map mIoU "
          f"{out['map']['miou']:.3f} (accuracy {out['map']['accuracy']:.3f}) at the same {out['map']['num_points']} "
          f"points of {out['frames_scored']} keyframes of {out['frames_processed']} frames; written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
