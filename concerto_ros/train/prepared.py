"""Prepared training data on disk, built once, shared by the processes of a job and reused by
later runs (``--resume``, other seeds, other objectives).

The self-supervised commands turn each unit (a recording, or a scene of a scene collection:
:func:`~concerto_ros.train.data.expand_sources`) into training items (``ssl``: windows with
projected 2D targets; ``cross4d``: clips) -- the expensive part of their start-up. The
units are sharded over the processes (:meth:`~concerto_ros.train.dist.DistContext.shard`:
the distributed sampler over recordings), each process writes its items to
``<cache>/<kind>/<key>.pt`` and, after a barrier, every process reads all of them in source
order (an item file missing on this machine, e.g. a cache folder not shared between nodes, is
built here). The key hashes the source (:class:`~concerto_ros.recordings.Source`) and scene,
the recording's files (names, sizes, times: :func:`~concerto_ros.train.data.source_fingerprint`)
and every setting that shapes the items, so a changed recording or setting is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

from concerto_ros.train.data import TrainUnit, source_fingerprint
from concerto_ros.train.dist import DistContext

__all__ = ["unit_key", "prepare_units"]


def unit_key(unit: TrainUnit, settings: dict) -> str:
    """Cache key of one unit (:func:`~concerto_ros.train.data.expand_sources`) under
    ``settings`` (JSON-able): ``<name>[-<scene>]-<sha1 of the source, its files and the
    settings>``."""
    h = hashlib.sha1(json.dumps(unit.describe(), sort_keys=True, default=str).encode())
    h.update(source_fingerprint(unit.source.path).encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    scene = f"-{unit.frame}" if unit.frame is not None else ""
    return f"{unit.source.path.name}{scene}-{h.hexdigest()[:12]}"


def _load_or_build(path: Path, unit: TrainUnit, build: Callable[[TrainUnit], Any]) -> tuple[Any, bool]:
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=False), False
    items = build(unit)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(items, tmp)
    tmp.replace(path)
    return items, True


def prepare_units(units: list[TrainUnit], settings: dict, folder: Path, build: Callable[[TrainUnit], list],
                  ctx: DistContext, log: Callable[[str], Any] = print, progress: bool = False) -> list[list]:
    """Items of every unit (``build(unit) -> list``), built by the process whose share the unit
    is in, or read from ``folder`` when already there.

    Returns:
        ``[items of unit 0, items of unit 1, ...]`` on every process.
    """
    from tqdm import tqdm

    paths = [Path(folder) / f"{unit_key(u, settings)}.pt" for u in units]
    mine = ctx.shard(list(range(len(units))))
    built = 0
    for i in tqdm(mine, desc="preparing", unit="recording", disable=not (progress and ctx.is_main)):
        if not paths[i].is_file():
            _load_or_build(paths[i], units[i], build)
            built += 1
    ctx.barrier()
    out = [_load_or_build(p, u, build)[0] for p, u in zip(paths, units)]
    total = int(ctx.all_reduce_sum([built])[0])
    log(f"prepared data in {folder}: {len(units) - total} of {len(units)} recordings from the cache, {total} built "
        f"by {ctx.world_size} process{'es' if ctx.world_size > 1 else ''}")
    return out
