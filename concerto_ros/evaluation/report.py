"""Files of an evaluation: ``metrics.json``, ``report.md`` and PNG plots (matplotlib, Agg).

One run writes ``OUT/metrics.json``, ``OUT/confusion.png`` (rows ground truth, normalised
per row) and ``OUT/report.md``; a comparison writes one folder per run plus
``OUT/metrics.json`` (``{"runs": {label: metrics}}``), ``OUT/compare.png`` (mIoU, accuracy
and per-class IoU side by side) and ``OUT/report.md`` with one table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["write_json", "plot_confusion", "write_eval_report", "plot_compare", "write_compare_report", "plot_queries",
           "write_probe_report", "write_queries_report", "fmt"]


def fmt(v: Any, digits: int = 3) -> str:
    """A number for a table (``n/a`` for None)."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def write_json(path: Path, data: Any) -> Path:
    """``data`` as indented JSON (NaN written as null)."""
    def clean(x):
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (np.floating, float)):
            return float(x) if np.isfinite(x) else None
        if isinstance(x, np.integer):
            return int(x)
        return x

    path.write_text(json.dumps(clean(data), indent=2))
    return path


def _write_md(path: Path, lines: Sequence[str]) -> Path:
    """A Markdown report ending with the load average (figures depend on it on shared machines)."""
    path.write_text("\n".join([*lines, "", f"Load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
                               ""]))
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(conf: Sequence[Sequence[int]], names: Sequence[str], path: Path, title: str = "") -> Path:
    """Confusion matrix PNG: rows ground truth, columns prediction, each row normalised to 1
    (classes without ground truth stay empty), with the share written in cells >= 0.01."""
    plt = _pyplot()
    c = np.asarray(conf, dtype=np.float64)
    rows = c.sum(axis=1, keepdims=True)
    norm = np.divide(c, rows, out=np.zeros_like(c), where=rows > 0)
    k = len(names)
    fig, ax = plt.subplots(figsize=(2.0 + 0.5 * k, 1.5 + 0.45 * k))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), [f"{n} ({int(r)})" for n, r in zip(names, rows[:, 0])], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth (points)")
    if k <= 30:
        for i, j in zip(*np.nonzero(norm >= 0.01)):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the row")
    ax.set_title(title or "confusion (row-normalised)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _class_rows(m: Mapping[str, Any]) -> list[str]:
    rows = ["| class | ground-truth points | IoU | accuracy |", "|---|---|---|---|"]
    for n in m["classes"]:
        if m["gt_points"][n] or m["per_class_iou"][n] is not None:
            rows.append(f"| {n} | {m['gt_points'][n]} | {fmt(m['per_class_iou'][n])} | "
                        f"{fmt(m['per_class_accuracy'][n])} |")
    return rows


def write_eval_report(out: Path, metrics: Mapping[str, Any], title: str, header: Sequence[str] = ()) -> dict[str, Path]:
    """``out/metrics.json``, ``out/confusion.png`` and ``out/report.md`` of one run.

    Args:
        metrics: :meth:`~concerto_ros.evaluation.run.EvalResult.metrics` (plus any extra keys).
        title: the report's heading.
        header: extra Markdown lines under the heading (command, sources).

    Returns:
        ``{"metrics", "confusion", "report"}`` paths.
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": write_json(out / "metrics.json", metrics)}
    paths["confusion"] = plot_confusion(metrics["confusion"], metrics["classes"], out / "confusion.png",
                                        title=f"{title}: mIoU {fmt(metrics['miou'])}")
    lines = [f"# {title}", "", *header, "", f"Model: {metrics.get('model', '')}", "",
             f"Ground truth: {', '.join(metrics.get('label_sets', []))}", "",
             "| mIoU (classes in the ground truth) | mIoU (all classes) | accuracy | mean class accuracy | points "
             "| frames processed / scored |", "|---|---|---|---|---|---|",
             f"| {fmt(metrics['miou'])} | {fmt(metrics['miou_all'])} | {fmt(metrics['accuracy'])} | "
             f"{fmt(metrics['macc'])} | {metrics['num_points']} | {metrics['frames_processed']} / "
             f"{metrics['frames_scored']} |", "", *_class_rows(metrics), "", "![confusion](confusion.png)", ""]
    if len(metrics.get("predictions", {})) > 1:
        lines += ["| prediction source | mIoU | mIoU all | accuracy |", "|---|---|---|---|"]
        lines += [f"| {n} | {fmt(p['miou'])} | {fmt(p['miou_all'])} | {fmt(p['accuracy'])} |"
                  for n, p in metrics["predictions"].items()] + [""]
    lines += ["## Latency per stage (ms)", "", "| stage | p50 | p99 | mean | samples |", "|---|---|---|---|---|"]
    lines += [f"| {s} | {fmt(t['p50_ms'], 1)} | {fmt(t['p99_ms'], 1)} | {fmt(t['mean_ms'], 1)} | {t['count']} |"
              for s, t in metrics.get("latency_ms", {}).items()]
    skipped = metrics.get("skipped_by_reason", {})
    lines += ["", "## Frames and messages skipped", ""]
    lines += ([f"- {r}: {n}" for r, n in sorted(skipped.items())] or ["none"]) + [""]
    if metrics.get("sources"):
        lines += ["## Per source", "", "| source | frames processed | scored | points | mIoU | accuracy |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {s['source']} | {s['frames_processed']} | {s['frames_scored']} | {s['points']} | "
                  f"{fmt(s['miou'])} | {fmt(s['accuracy'])} |" for s in metrics["sources"]]
    paths["report"] = _write_md(out / "report.md", lines)
    return paths


def plot_compare(runs: Mapping[str, Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """Grouped bars: mIoU, accuracy and the IoU of every ground-truth class, one bar per run."""
    plt = _pyplot()
    classes: list[str] = []
    for m in runs.values():
        classes += [c for c in m["classes_present"] if c not in classes]
    groups = ["mIoU", "mIoU all", "accuracy"] + classes
    labels = list(runs)
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(groups) * max(1, len(labels)) ** 0.5 + 2), 4.0))
    x = np.arange(len(groups))
    for i, (name, m) in enumerate(runs.items()):
        vals = [m["miou"], m["miou_all"], m["accuracy"]] + [m["per_class_iou"].get(c) for c in classes]
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, [0.0 if v is None else v for v in vals], width, label=name)
    ax.set_xticks(x, groups, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU / accuracy")
    ax.axvline(2.5, color="grey", lw=0.5)
    ax.legend(fontsize=8)
    ax.set_title(title or "comparison", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_compare_report(out: Path, runs: Mapping[str, Mapping[str, Any]], specs: Mapping[str, str], title: str,
                         header: Sequence[str] = ()) -> dict[str, Path]:
    """``out/metrics.json`` (``{"runs": {label: metrics}, "specs": {label: spec}}``),
    ``out/compare.png`` and ``out/report.md`` with one table (mIoU, accuracy, encoder and
    frame latency p50/p99) linking each run's own report."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": write_json(out / "metrics.json", {"runs": dict(runs), "specs": dict(specs)})}
    paths["plot"] = plot_compare(runs, out / "compare.png", title)
    lines = [f"# {title}", "", *header, "",
             "| run | model | mIoU | mIoU all | accuracy | mean class acc | encoder p50 / p99 ms | frame p50 / p99 ms "
             "| report |", "|---|---|---|---|---|---|---|---|---|"]
    for name, m in runs.items():
        lat = m.get("latency_ms", {})
        enc, frame = lat.get("encoder", {}), lat.get("frame", {})
        spec = specs.get(name, "")
        spec = spec if len(spec) <= 90 else spec[:89] + "…"  # the full line is in metrics.json
        lines.append(f"| {name} | {spec} | {fmt(m['miou'])} | {fmt(m['miou_all'])} | "
                     f"{fmt(m['accuracy'])} | {fmt(m['macc'])} | {fmt(enc.get('p50_ms'), 0)} / "
                     f"{fmt(enc.get('p99_ms'), 0)} | {fmt(frame.get('p50_ms'), 0)} / {fmt(frame.get('p99_ms'), 0)} "
                     f"| [{name}]({name}/report.md) |")
    paths["report"] = _write_md(out / "report.md", [*lines, "", "![comparison](compare.png)"])
    return paths


def plot_queries(res: Mapping[str, Any], path: Path) -> Path:
    """Bars of the top-k precision and ROC AUC of every query (synonyms hatched), from
    :func:`~concerto_ros.evaluation.queries.evaluate_queries`."""
    plt = _pyplot()
    rows = sorted(res["queries"], key=lambda r: (r["class"], r["synonym"], r["text"]))
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(rows) + 2), 4.0))
    for off, key, label in ((-0.2, "precision_at_k", f"precision@{res['k']}"), (0.2, "auc", "ROC AUC")):
        vals = [0.0 if r[key] is None else r[key] for r in rows]
        bars = ax.bar(x + off, vals, 0.4, label=label)
        for b, r in zip(bars, rows):
            if r["synonym"]:
                b.set_hatch("//")
    ax.set_xticks(x, [r["text"] for r in rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.legend(fontsize=8)
    ax.set_title(f"text queries (hatched: synonyms), yaw {res.get('yaw_deg', 0):g} deg: mean precision names "
                 f"{fmt(res['mean_precision_names'])}, synonyms {fmt(res['mean_precision_synonyms'])}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_queries_report(out: Path, res: Mapping[str, Any]) -> dict[str, Path]:
    """``out/queries.json`` and ``out/queries.png`` of ``concerto eval queries``."""
    return {"queries": write_json(out / "queries.json", res), "plot": plot_queries(res, out / "queries.png")}


def write_probe_report(out: Path, res: Mapping[str, Any]) -> dict[str, Path]:
    """``out/metrics.json``, ``out/{linear,knn}_confusion.png`` and ``out/report.md`` (one
    table: mIoU, accuracy and per-class IoU of both probes) of ``concerto eval probe``."""
    paths = {"metrics": write_json(out / "metrics.json", res)}
    classes = list(res["classes"])
    lines = ["# concerto eval probe", "", str(res.get("command", "")), "",
             f"Encoder: {res['encoder']} ({res['feature_dim']}-d MSM feature, {res['voxel_size']:g} m voxels); "
             f"split: {res['split']}; train {res['train_scenes']} scenes ({res['train_points']} points, kNN bank "
             f"{res['bank_points']}), test {res['test_scenes']} scenes", "",
             "| probe | mIoU | mIoU all | accuracy | " + " | ".join(f"IoU {c}" for c in classes) + " |",
             "|---" * (4 + len(classes)) + "|"]
    for kind in ("linear", "knn"):
        m = res[kind]
        lines.append(f"| {kind} | {fmt(m['miou'])} | {fmt(m['miou_all'])} | {fmt(m['accuracy'])} | "
                     + " | ".join(fmt(m["per_class_iou"].get(c)) for c in classes) + " |")
        paths[f"{kind}_confusion"] = plot_confusion(m["confusion"], m["classes"], out / f"{kind}_confusion.png",
                                                    f"{kind} probe: mIoU {fmt(m['miou'])}")
    paths["report"] = _write_md(out / "report.md", [*lines, "", "![linear](linear_confusion.png) "
                                                     "![knn](knn_confusion.png)"])
    return paths
