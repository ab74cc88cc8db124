"""``concerto eval probe``: linear and kNN probes on frozen encoder features (MSM protocol).

The evaluation protocol of Masked Scene Modeling (Hermosilla et al., CVPR 2025,
arXiv 2504.06719), the way the field compares self-supervised 3D features:

* **features**: every level of the frozen encoder interpolated trilinearly at every original
  point and concatenated (:func:`~concerto_ros.evaluation.interpolate.point_features`), no
  normalisation; each frame of a source is one scene, lifted by the node's pipeline (its
  depth/range limits and pose) and voxelized at ``window.voxel_size``;
* **linear probe**: one linear layer, cross-entropy, AdamW with betas (0.9, 0.95), weight
  decay 0.01, lr 0.01, linear warm-up then cosine decay (the paper's Table 15; it trains
  200 epochs over ScanNet scenes in batches of 8 scenes; here mini-batches of sampled
  training points, ``epochs`` an option);
* **kNN probe**: the paper's exact recipe was not published; the standard one: cosine
  similarity of a test point's feature to a memory bank of sampled training points, the
  ``k`` most similar vote for their class with weight ``exp(similarity / temperature)``.

Both are scored on every labelled point of the test scenes (one confusion matrix each,
:class:`~concerto_ros.evaluation.confusion.ClassConfusion`). Without test sources the
training scenes are split in space: the points in a ``split_fraction`` share of
``split_block``-metre cubes are the test set.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from concerto_ros.evaluation.confusion import ClassConfusion

__all__ = ["ProbeOptions", "fit_linear_probe", "knn_predict", "linear_predict", "scene_points", "run_probe"]


@dataclass
class ProbeOptions:
    """Settings of :func:`run_probe` (defaults: the MSM recipe where it gives one).

    Attributes:
        epochs: linear-probe epochs over the sampled training points.
        batch_size: points per optimisation step.
        lr: peak learning rate (AdamW); weight_decay; betas: AdamW's.
        warmup_epochs: linear warm-up before the cosine decay.
        k: kNN neighbours; temperature: kNN vote temperature (weights ``exp(cos / T)``).
        bank_size: training points in the kNN memory bank (sampled uniformly; 0: all).
        train_points: training points sampled per scene (0: all labelled points).
        test_points: test points scored per scene, sampled (0: every labelled point; the
            kNN probe costs ``points x bank_size`` similarities).
        split_fraction, split_block: the spatial split (share of cubes, cube edge in
            metres) used when there are no test sources.
        seed: sampling and initialisation seed.
        device: where the probes are trained and the kNN runs (the encoder runs on the
            pipeline's ``model.device``).
    """

    epochs: int = 30
    batch_size: int = 8192
    lr: float = 0.01
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: int = 2
    k: int = 20
    temperature: float = 0.07
    bank_size: int = 50000
    train_points: int = 20000
    test_points: int = 0
    split_fraction: float = 0.3
    split_block: float = 2.0
    seed: int = 0
    device: str = "cpu"


def fit_linear_probe(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, opts: ProbeOptions,
                     on_epoch: Callable[[int, float], Any] | None = None) -> torch.nn.Linear:
    """The MSM linear probe (module docstring) on fixed features.

    Args:
        feats: ``(N, D) float32`` training features (not normalised).
        labels: ``(N,) int64`` class indices in ``[0, num_classes)``.
        num_classes: ``K``.
        opts: epochs, batch size, lr, weight decay, betas, warm-up, seed, device.
        on_epoch: called with ``(epoch, mean loss)``.

    Returns:
        The trained ``nn.Linear(D, K)`` on the CPU, eval mode.

    Raises:
        ValueError: no training point, or a label outside ``[0, K)``.
    """
    from concerto_ros.train.common import cosine_lr

    if len(labels) == 0:
        raise ValueError("no labelled training point for the linear probe")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"training labels must be class indices in [0, {num_classes})")
    dev = torch.device(opts.device)
    gen = torch.Generator().manual_seed(int(opts.seed))
    head = torch.nn.Linear(feats.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.01)
        head.bias.zero_()
    head = head.to(dev)
    opt = torch.optim.AdamW(head.parameters(), lr=opts.lr, betas=tuple(opts.betas), weight_decay=opts.weight_decay)
    x, y = feats.to(dev), labels.to(dev)
    n = len(y)
    steps = max(1, -(-n // opts.batch_size))
    total, warmup = opts.epochs * steps, opts.warmup_epochs * steps
    step = 0
    for epoch in range(1, opts.epochs + 1):
        perm = torch.randperm(n, generator=gen).to(dev)
        loss_sum = 0.0
        for i in range(0, n, opts.batch_size):
            idx = perm[i:i + opts.batch_size]
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, total, opts.lr, warmup=min(warmup, total - 1))
            loss = torch.nn.functional.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += float(loss.detach()) * len(idx)
        if on_epoch is not None:
            on_epoch(epoch, loss_sum / n)
    return head.cpu().eval()


@torch.no_grad()
def linear_predict(head: torch.nn.Linear, feats: torch.Tensor, chunk: int = 65536) -> np.ndarray:
    """``(N,) int64`` argmax class of ``head`` on ``feats (N, D)``."""
    return np.concatenate([head(feats[i:i + chunk]).argmax(1).numpy() for i in range(0, len(feats), chunk)]) \
        if len(feats) else np.zeros(0, np.int64)


@torch.no_grad()
def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, query: torch.Tensor, num_classes: int, k: int = 20,
                temperature: float = 0.07, chunk: int = 4096) -> np.ndarray:
    """kNN probe: weighted votes of the ``k`` most cosine-similar memory-bank points.

    Args:
        bank: ``(B, D)`` training features (normalised here).
        bank_labels: ``(B,) int64`` their classes in ``[0, num_classes)``.
        query: ``(N, D)`` features to label.
        k: neighbours (clipped to ``B``); temperature: ``T > 0``, each neighbour votes
            ``exp(cos / T)`` for its class (computed as ``exp((cos - 1) / T)``: the same
            votes up to one common factor, without overflow).

    Returns:
        ``(N,) int64`` the class with the largest vote (ties: the smaller index).

    Raises:
        ValueError: empty bank, ``k < 1`` or ``temperature <= 0``.
    """
    if len(bank) == 0 or k < 1 or not temperature > 0:
        raise ValueError(f"kNN probe needs a non-empty bank, k >= 1 and temperature > 0 (got {len(bank)}, {k}, "
                         f"{temperature})")
    b = torch.nn.functional.normalize(bank.float(), dim=1)
    kk = min(int(k), len(b))
    out = []
    for i in range(0, len(query), chunk):
        q = torch.nn.functional.normalize(query[i:i + chunk].to(b.device).float(), dim=1)
        sim, idx = (q @ b.T).topk(kk, dim=1)
        votes = torch.zeros(len(q), num_classes, device=b.device)
        votes.scatter_add_(1, bank_labels.to(b.device)[idx], torch.exp((sim - 1.0) / temperature))
        out.append(votes.argmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def scene_points(sources: Iterable[Any], pipeline, skips) -> Iterator[tuple[str, Any, Any]]:
    """``(scene name, lifted PointFrame, ground-truth LabelSet)`` of every frame of every
    source: the node's lifting (pose, depth and range limits); frames it cannot lift are
    counted in ``skips``."""
    from concerto_ros.bag.replay import process_frames
    from concerto_ros.evaluation.run import open_labelled, source_frames

    for s in sources:
        rec = open_labelled(s)
        frames, _ = source_frames(rec, pipeline.cfg, pipeline, skips, None, "independent", None)
        for frame, pf in process_frames(pipeline, frames, skips, step=pipeline.lift_frame):
            yield f"{rec.path.name}:{frame.key}", pf, rec.label_set


class _Split:
    """The training pass: sampled training rows, and the held-out parts of a spatial split."""

    def __init__(self, opts: ProbeOptions, classes: ClassConfusion):
        self.opts = opts
        self.classes = classes  # the class list: training label sets first, by name
        self.rng = np.random.default_rng(opts.seed)
        self.feats: list[torch.Tensor] = []
        self.labels: list[np.ndarray] = []
        self.test: list[tuple[torch.Tensor, np.ndarray]] = []
        self.scenes = 0

    def add_scene(self, pipeline, pf, gts, hold_out: bool) -> None:
        """Features of one lifted scene; with ``hold_out`` its held-out cubes go to :attr:`test`."""
        from concerto_ros.train.data import heldout_mask

        y = self.classes.lut(gts.classes, gts.synonyms)[pf.labels]
        f = _features(pipeline, pf)
        if hold_out:
            held = heldout_mask(pf.points, self.opts.split_block, self.opts.split_fraction)
            self.test.append((f[torch.from_numpy(held)], y[held]))
            f, y = f[torch.from_numpy(~held)], y[~held]
        idx = np.flatnonzero(y >= 0)
        n = self.opts.train_points
        if n and len(idx) > n:
            idx = np.sort(self.rng.choice(idx, n, replace=False))
        self.feats.append(f[torch.from_numpy(idx)])
        self.labels.append(y[idx])
        self.scenes += 1

    def train_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.feats:
            raise ValueError("no labelled training scene could be read")
        return torch.cat(self.feats), torch.from_numpy(np.concatenate(self.labels).astype(np.int64))


class _Probes:
    """The fitted linear head and kNN memory bank, and their confusions on the test points."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, classes: ClassConfusion, opts: ProbeOptions,
                 progress: bool):
        from tqdm import tqdm

        self.opts, self.classes = opts, classes
        self.train_names = list(classes.names)
        bar = tqdm(total=opts.epochs, desc="linear probe", unit="epoch", disable=not progress)
        self.head = fit_linear_probe(x, y, len(self.train_names), opts,
                                     on_epoch=lambda e, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")))
        bar.close()
        pick = np.arange(len(y))
        if opts.bank_size and len(y) > opts.bank_size:
            pick = np.sort(np.random.default_rng(opts.seed + 1).choice(len(y), opts.bank_size, replace=False))
        self.bank, self.bank_y = x[torch.from_numpy(pick)].to(opts.device), y[torch.from_numpy(pick)]
        self.conf = {"linear": ClassConfusion(classes.names), "knn": ClassConfusion(classes.names)}
        self._pick = np.random.default_rng(opts.seed + 2)
        self.scenes = 0

    def score(self, f: torch.Tensor, gt: np.ndarray) -> None:
        """Both probes on one test scene's features ``(N, D)`` against class indices ``(N,)``."""
        keep = np.flatnonzero(gt >= 0)
        if self.opts.test_points and len(keep) > self.opts.test_points:
            keep = np.sort(self._pick.choice(keep, self.opts.test_points, replace=False))
        f, gt = f[torch.from_numpy(keep)], gt[keep]
        names, k = self.classes.names, len(self.train_names)
        self.conf["linear"].add(gt, names, linear_predict(self.head, f), self.train_names)
        self.conf["knn"].add(gt, names, knn_predict(self.bank, self.bank_y, f, k, self.opts.k, self.opts.temperature),
                             self.train_names)
        self.scenes += 1


def _features(pipeline, pf) -> torch.Tensor:
    from concerto_ros.evaluation.interpolate import point_features

    return point_features(pipeline.extractor, pf.points, pipeline.cfg.window.voxel_size, pf.colors)


def run_probe(cfg, train: list, test: list, opts: ProbeOptions | None = None, progress: bool = True,
              log: Callable[[str], Any] | None = print) -> dict:
    """Fit the linear and kNN probes on ``train`` and score them on ``test`` (module docstring).

    Args:
        cfg: the node's config (its encoder, lifting and ``window.voxel_size``).
        train, test: sources (:func:`concerto_ros.recordings.parse_sources`); ``test``
            empty: the spatial split of ``train``.
        opts: :class:`ProbeOptions`.

    Returns:
        ``{"linear": scores, "knn": scores, ...}`` (scores as
        :func:`~concerto_ros.evaluation.confusion.segmentation_report`), plus
        ``classes``, ``feature_dim``, ``encoder``, ``train``/``test`` counts, ``options``.

    Raises:
        ValueError: no Concerto encoder in the configuration, no labelled training point.
        concerto_ros.recordings.RecordingError: an unreadable source.
    """
    from tqdm import tqdm

    from concerto_ros.pipeline import PerceptionPipeline
    from concerto_ros.sensors.skips import SkipCounter

    opts = opts or ProbeOptions()
    t0 = time.perf_counter()
    pipeline = PerceptionPipeline(cfg, log=log)
    if pipeline.extractor is None:
        raise ValueError("the probe reads the Concerto encoder's levels: model.enabled must be true and the bundle "
                         "must hold a Concerto encoder")
    skips = SkipCounter(log, period_s=cfg.skip_log_period)
    split = _Split(opts, ClassConfusion())
    for _name, pf, gts in tqdm(scene_points(train, pipeline, skips), desc="train scenes", unit="scene",
                               disable=not progress):
        if pf.labels is not None:
            split.add_scene(pipeline, pf, gts, hold_out=not test)
    x, y = split.train_set()
    probes = _Probes(x, y, split.classes, opts, progress)
    if test:
        for _name, pf, gts in tqdm(scene_points(test, pipeline, skips), desc="test scenes", unit="scene",
                                   disable=not progress):
            if pf.labels is not None:
                probes.score(_features(pipeline, pf), split.classes.lut(gts.classes, gts.synonyms)[pf.labels])
    for f, gt in split.test:
        probes.score(f, gt)
    out = {kind: c.report() for kind, c in probes.conf.items()}
    out.update(classes=probes.train_names, feature_dim=int(x.shape[1]), encoder=pipeline.extractor.description,
               voxel_size=pipeline.cfg.window.voxel_size, train_scenes=split.scenes, test_scenes=probes.scenes,
               train_points=int(len(y)), bank_points=int(len(probes.bank_y)),
               split="test sources" if test else f"{opts.split_fraction:.0%} of {opts.split_block:g} m cubes held out",
               skipped=skips.as_dict(), options=asdict(opts), wall_s=time.perf_counter() - t0)
    return out
