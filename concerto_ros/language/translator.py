"""The translator: a linear map from per-point features into a text-embedding space.

Concerto (Zhang et al., arXiv 2510.23607) linearly probes its point features into CLIP's
language space ("translator"); no code or training recipe is public. Two standard ways of
fitting such a map are implemented:

* :func:`fit_translator_labels` (with labels): the cosine similarities of the projected,
  normalised point embedding with the class-name text embeddings, divided by a temperature
  (fixed or learned), are the logits of a cross-entropy over the labelled points (as in
  language-guided linear probing / CLIP-style zero-shot heads).
* :func:`fit_translator_targets` (label-free): per-point target embeddings (e.g. dense 2D
  CLIP features projected onto the points, as OpenScene, Peng et al. CVPR 2023, distils) are
  regressed with the cosine loss ``1 - cos``.

The fitted :class:`Translator` is saved with the text encoder's name and dimension and the
feature dimension; :meth:`Translator.load` refuses a mismatch with
:class:`TranslatorMismatchError`.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from concerto_ros.models.precision import PRECISIONS, resolve_precision

__all__ = ["Translator", "TranslatorMismatchError", "embed_precision", "EMBED_CHUNK_ROWS", "FitConfig", "fit_translator_labels",
           "fit_translator_targets", "FORMAT"]

#: format tag written into translator files
FORMAT = "concerto_ros.translator/1"

#: rows per chunk of :meth:`Translator.embed` (a 2048 x 384 float32 chunk is 3 MB)
EMBED_CHUNK_ROWS = 2048


def embed_precision(device: torch.device | str = "cpu") -> str:
    """What ``precision="auto"`` of :meth:`Translator.embed` uses on ``device``: ``bf16`` where
    it multiplies bfloat16 matrices natively, else ``fp32``."""
    return resolve_precision("auto", device)


class TranslatorMismatchError(ValueError):
    """A translator does not fit the text encoder or the features it is used with."""


class Translator(nn.Module):
    """Linear map ``(N, D_in)`` point features -> ``(N, D_text)`` text-space embeddings.

    The input is standardised with the per-channel mean / std of the training features
    (buffers ``feat_mean``, ``feat_std``; identity until fitted), then ``nn.Linear(D_in,
    D_text)`` is applied. ``logit_scale`` = ``log(1 / temperature)``, the temperature of the
    cosine softmax used in fitting and in query relevance.

    Args:
        in_dim: feature width ``D_in``.
        text_dim: text embedding width ``D_text``.
        text_encoder: name of the text encoder whose space this maps into
            (:attr:`concerto_ros.language.text_encoders.TextEncoder.name`).
        temperature: initial (or fixed) temperature, > 0.
        learn_temperature: whether ``logit_scale`` is trained.
        feature: free-text description of the input features (saved, informative only).
    """

    def __init__(self, in_dim: int, text_dim: int, text_encoder: str, temperature: float = 0.07,
                 learn_temperature: bool = True, feature: str = ""):
        super().__init__()
        if in_dim <= 0 or text_dim <= 0:
            raise ValueError(f"Translator dimensions must be positive, got in_dim={in_dim}, text_dim={text_dim}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.in_dim = int(in_dim)
        self.text_dim = int(text_dim)
        self.text_encoder = str(text_encoder)
        self.feature = str(feature)
        self.proj = nn.Linear(self.in_dim, self.text_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)),
                                        requires_grad=bool(learn_temperature))
        self.register_buffer("feat_mean", torch.zeros(self.in_dim))
        self.register_buffer("feat_std", torch.ones(self.in_dim))

    @property
    def temperature(self) -> float:
        """Current softmax temperature ``exp(-logit_scale)`` (unitless, > 0)."""
        return float(torch.exp(-self.logit_scale.detach()))

    def set_feature_stats(self, features: np.ndarray | torch.Tensor, eps: float = 1e-6) -> None:
        """Set the input standardisation from training features ``(N, D_in)``."""
        x = torch.as_tensor(np.asarray(features, dtype=np.float32))
        self.feat_mean.copy_(x.mean(0))
        self.feat_std.copy_(x.std(0).clamp_min(eps))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """``(N, D_in)`` float -> ``(N, D_text)`` float embeddings (NOT normalised)."""
        return self.proj((feat - self.feat_mean) / self.feat_std)

    @torch.no_grad()
    def embed(self, features: np.ndarray | torch.Tensor, precision: str = "fp32",
              chunk_rows: int = EMBED_CHUNK_ROWS) -> np.ndarray:
        """Unit-norm text-space embeddings ``(N, D_text) float32`` (numpy) of ``(N, D_in)``
        features.

        Rows are projected and normalised ``chunk_rows`` at a time, so each chunk's
        ``(chunk_rows, D_text)`` product stays in the cache (one 60k x 384 product and its
        normalisation take 1.5x longer than the same work in 2048-row chunks on 2 CPU cores).

        Args:
            features: ``(N, D_in)`` float point features.
            precision: ``fp32``, or ``bf16`` (the matrix product in bfloat16 with float32
                accumulation, the normalisation in float32: 3-4x faster on CPUs with
                AVX512-BF16/AMX; cosine to the fp32 embedding >= 0.99999 on the default
                bundle), or ``auto`` (:func:`embed_precision`: bf16 where the device has
                fast bfloat16, else fp32).
            chunk_rows: rows per chunk (> 0).

        Raises:
            TranslatorMismatchError: the features are not ``(N, D_in)``.
            ValueError: an unknown ``precision`` or ``chunk_rows <= 0``.
        """
        x = torch.as_tensor(np.asarray(features, dtype=np.float32) if not torch.is_tensor(features) else features)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise TranslatorMismatchError(f"translator expects (N, {self.in_dim}) features, got {tuple(x.shape)}")
        if int(chunk_rows) <= 0:
            raise ValueError(f"embed: chunk_rows must be > 0, got {chunk_rows}")
        dev = self.proj.weight.device
        dtype = PRECISIONS[resolve_precision(precision, dev)]
        # the standardisation folded into the projection: W' = W / std, b' = b - W' mean
        w = (self.proj.weight / self.feat_std).float()
        b = (self.proj.bias - w @ self.feat_mean).float() if self.proj.bias is not None else -(w @ self.feat_mean)
        w, b = w.to(dtype), b.to(dtype)
        out = np.empty((x.shape[0], self.text_dim), dtype=np.float32)
        dst = torch.from_numpy(out)
        for i in range(0, x.shape[0], int(chunk_rows)):  # written in place: no (N, D) temporaries
            y = torch.addmm(b, x[i:i + chunk_rows].to(dev, dtype), w.t()).float()
            y.mul_(torch.linalg.vector_norm(y, dim=-1, keepdim=True).clamp_min_(1e-12).reciprocal_())
            dst[i:i + y.shape[0]] = y.cpu()
        return out

    # -- persistence -------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """What is saved besides the weights."""
        return {"in_dim": self.in_dim, "text_dim": self.text_dim, "text_encoder": self.text_encoder,
                "temperature": self.temperature, "learn_temperature": bool(self.logit_scale.requires_grad),
                "feature": self.feature}

    def to_dict(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """``{"format", "config", "state_dict", "extra"}`` (tensors detached, on the CPU): what
        :meth:`save` writes and a model bundle stores."""
        sd = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        return {"format": FORMAT, "config": self.config(), "state_dict": sd, "extra": dict(extra or {})}

    def save(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write ``{"format", "config", "state_dict", "extra"}`` with ``torch.save``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.to_dict(extra), path)
        return path

    def check_compatible(self, text_encoder: Any = None, in_dim: int | None = None) -> None:
        """Raise :class:`TranslatorMismatchError` unless ``text_encoder`` (a
        :class:`~concerto_ros.language.text_encoders.TextEncoder`, or its name) and ``in_dim``
        match the ones this translator was fitted for (``None`` skips a check)."""
        if text_encoder is not None:
            name = text_encoder if isinstance(text_encoder, str) else text_encoder.name
            dim = None if isinstance(text_encoder, str) else int(text_encoder.dim)
            if name != self.text_encoder or (dim is not None and dim != self.text_dim):
                raise TranslatorMismatchError(
                    f"translator was fitted for text encoder '{self.text_encoder}' ({self.text_dim}-d) but "
                    f"is used with '{name}'" + (f" ({dim}-d)" if dim is not None else "")
                    + ": queries would be meaningless; use the same text encoder or refit the translator")
        if in_dim is not None and int(in_dim) != self.in_dim:
            raise TranslatorMismatchError(
                f"translator expects {self.in_dim}-d point features but the feature extractor gives {in_dim}-d "
                f"(saved feature: '{self.feature}'); check model.preset / model.feature or refit")

    @classmethod
    def load(cls, path: str | os.PathLike, text_encoder: Any = None, in_dim: int | None = None,
             map_location: str | torch.device = "cpu") -> "Translator":
        """Load a file written by :meth:`save` and check it against ``text_encoder`` / ``in_dim``.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a translator file.
            TranslatorMismatchError: see :meth:`check_compatible`.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"translator file '{path}' does not exist")
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
        return cls.from_dict(ckpt, text_encoder=text_encoder, in_dim=in_dim, source=f"'{path}'")

    @classmethod
    def from_dict(cls, blob: Any, text_encoder: Any = None, in_dim: int | None = None,
                  source: str = "translator dict") -> "Translator":
        """Build from an in-memory :meth:`to_dict` blob (e.g. the one a model bundle holds), in
        eval mode on the CPU, and check it against ``text_encoder`` / ``in_dim``.

        Raises:
            ValueError: not a translator blob (``source`` names it in the message).
            TranslatorMismatchError: see :meth:`check_compatible`.
        """
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise ValueError(f"{source} is not a translator file (expected format '{FORMAT}')")
        c = blob["config"]
        tr = cls(c["in_dim"], c["text_dim"], c["text_encoder"], temperature=c["temperature"],
                 learn_temperature=c.get("learn_temperature", True), feature=c.get("feature", ""))
        sd = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v)
              for k, v in blob["state_dict"].items()}
        tr.load_state_dict(sd, strict=True)
        tr.extra = blob.get("extra", {})
        tr.check_compatible(text_encoder, in_dim)
        return tr.eval()


@dataclass
class FitConfig:
    """Training settings shared by both fitting modes.

    Attributes:
        epochs: passes over the (valid) training points.
        batch_size: points per AdamW step.
        lr, weight_decay: AdamW settings.
        temperature: initial temperature of the cosine softmax (label mode) / of the saved
            translator (target mode).
        learn_temperature: train ``logit_scale`` (label mode only; target mode keeps it fixed).
        seed: seeds the initialisation and the batch order (global RNG untouched).
        device: torch device for training.
        progress: show a tqdm bar with the running loss.
        class_weight: label mode: ``None`` (plain mean) or ``"balanced"`` (weights
            ``n / (C * n_c)`` so that small classes count as much as large ones).
    """

    epochs: int = 20
    batch_size: int = 4096
    lr: float = 1e-2
    weight_decay: float = 1e-4
    temperature: float = 0.07
    learn_temperature: bool = True
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    class_weight: str | None = None


def _as_features(features: Any, name: str = "features") -> torch.Tensor:
    x = torch.as_tensor(np.asarray(features, dtype=np.float32)) if not torch.is_tensor(features) else features.float()
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) array, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contain non-finite values")
    return x.cpu()


def _encoder_name(text_encoder: Any, text_dim: int) -> str:
    """Name of ``text_encoder`` (a name, or an object with ``name`` and ``dim``)."""
    if isinstance(text_encoder, str):
        return text_encoder
    if int(text_encoder.dim) != int(text_dim):
        raise ValueError(f"text encoder '{text_encoder.name}' is {text_encoder.dim}-d but the embeddings are "
                         f"{text_dim}-d")
    return str(text_encoder.name)


def _train(tr: Translator, n: int, loss_fn, cfg: FitConfig, desc: str, history: dict) -> None:
    """Mini-batch AdamW over ``n`` samples; ``loss_fn(idx) -> (loss, extra_dict)``."""
    from tqdm.auto import tqdm

    if int(cfg.epochs) < 1 or int(cfg.batch_size) < 1 or not cfg.lr > 0:
        raise ValueError(f"epochs and batch_size must be >= 1 and lr > 0, got epochs={cfg.epochs}, "
                         f"batch_size={cfg.batch_size}, lr={cfg.lr}")

    gen = torch.Generator().manual_seed(int(cfg.seed) + 1)
    params = [p for p in tr.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * steps_per_epoch))
    bar = tqdm(range(cfg.epochs), desc=desc, disable=not cfg.progress, leave=False)
    tr.train()
    for _epoch in bar:
        perm = torch.randperm(n, generator=gen)
        tot, cnt, extras = 0.0, 0, {}
        for s in range(steps_per_epoch):
            idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            loss, extra = loss_fn(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():  # keep the temperature in [0.01, 1] (CLIP clamps its logit scale)
                tr.logit_scale.clamp_(0.0, math.log(100.0))
            tot += float(loss.detach()) * len(idx)
            cnt += len(idx)
            for k, v in extra.items():
                extras[k] = extras.get(k, 0.0) + float(v.detach()) * len(idx)
        history["loss"].append(tot / cnt)
        history["temperature"].append(tr.temperature)
        for k, v in extras.items():
            history.setdefault(k, []).append(v / cnt)
        bar.set_postfix(loss=f"{tot / cnt:.4f}", T=f"{tr.temperature:.3f}")
    tr.eval()


def fit_translator_labels(features: Any, labels: Any, class_embeddings: Any, text_encoder: Any,
                          ignore_index: int = -1, config: FitConfig | None = None,
                          feature: str = "", **overrides: Any) -> tuple[Translator, dict]:
    """Fit a translator with labels (cosine softmax against class-name embeddings).

    ``logits = cos(normalize(W x + b), t_c) / T`` for the ``C`` class embeddings ``t_c``;
    cross-entropy over the points whose label is not ``ignore_index``.

    Args:
        features: ``(N, D_in)`` float per-point features.
        labels: ``(N,)`` integer class index in ``[0, C)`` or ``ignore_index``.
        class_embeddings: ``(C, D_text)`` text embeddings of the class names (normalised here).
        text_encoder: the text encoder that produced them, or its name (saved in the
            translator).
        ignore_index: label value of unlabelled points.
        config: :class:`FitConfig`; keyword ``overrides`` replace its fields.
        feature: description of the features (saved).

    Returns:
        ``(translator, history)``; history has per-epoch lists ``loss`` (mean cross-entropy),
        ``accuracy`` (training argmax accuracy) and ``temperature``, plus ``n_train``.

    Raises:
        ValueError: shape mismatches (also a text encoder whose ``dim`` differs from
            ``D_text``), labels out of range, no labelled point, bad training settings.
    """
    cfg = FitConfig(**{**asdict(config or FitConfig()), **overrides})
    x = _as_features(features)
    y = torch.as_tensor(np.asarray(labels).astype(np.int64))
    t = torch.as_tensor(np.asarray(class_embeddings, dtype=np.float32))
    if t.ndim != 2 or t.shape[0] < 2:
        raise ValueError(f"class_embeddings must be (C >= 2, D_text), got {tuple(t.shape)}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    keep = y != ignore_index
    if not bool(keep.any()):
        raise ValueError("no labelled point (every label equals ignore_index)")
    if int(y[keep].min()) < 0 or int(y[keep].max()) >= t.shape[0]:
        raise ValueError(f"labels must be in [0, {t.shape[0]}) or {ignore_index}, got range "
                         f"[{int(y[keep].min())}, {int(y[keep].max())}]")
    x, y = x[keep], y[keep]
    dev = torch.device(cfg.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed))
        tr = Translator(x.shape[1], t.shape[1], _encoder_name(text_encoder, t.shape[1]), cfg.temperature,
                        cfg.learn_temperature, feature)
    tr.set_feature_stats(x)
    tr.to(dev)
    t = F.normalize(t, dim=-1).to(dev)
    weight = None
    if cfg.class_weight == "balanced":
        counts = torch.bincount(y, minlength=t.shape[0]).float()
        weight = torch.where(counts > 0, counts.sum() / (counts.clamp_min(1) * (counts > 0).sum()), 0.0).to(dev)
    elif cfg.class_weight is not None:
        raise ValueError(f"class_weight must be None or 'balanced', got {cfg.class_weight!r}")
    history: dict[str, Any] = {"loss": [], "temperature": [], "accuracy": [], "n_train": int(x.shape[0])}

    def loss_fn(idx):
        xb, yb = x[idx].to(dev), y[idx].to(dev)
        z = F.normalize(tr(xb), dim=-1)
        logits = (z @ t.T) * tr.logit_scale.exp()
        loss = F.cross_entropy(logits, yb, weight=weight)
        acc = (logits.argmax(1) == yb).float().mean()
        return loss, {"accuracy": acc}

    _train(tr, x.shape[0], loss_fn, cfg, "translator (labels)", history)
    return tr.cpu(), history


def fit_translator_targets(features: Any, targets: Any, text_encoder: Any, valid: Any = None,
                           config: FitConfig | None = None, feature: str = "",
                           **overrides: Any) -> tuple[Translator, dict]:
    """Fit a translator label-free by regressing per-point target embeddings (cosine loss).

    Loss: mean over valid points of ``1 - cos(W x + b, target)``.

    Args:
        features: ``(N, D_in)`` float per-point features.
        targets: ``(N, D_text)`` float target embeddings (e.g. dense 2D CLIP features projected
            onto the points; normalised here), in the space of ``text_encoder``.
        text_encoder: the text encoder of that space, or its name (saved in the translator).
        valid: optional ``(N,)`` bool, points that have a target (e.g. were seen by a camera).
        config, overrides, feature: see :func:`fit_translator_labels` (the temperature is
            kept fixed at ``config.temperature``).

    Returns:
        ``(translator, history)``; history has per-epoch ``loss`` and ``cosine`` (mean cosine
        similarity to the targets) and ``n_train``.

    Raises:
        ValueError: shape mismatches, non-finite values, no valid point.
    """
    cfg = FitConfig(**{**asdict(config or FitConfig()), **overrides})
    x = _as_features(features)
    tg = _as_features(targets, "targets")
    if tg.shape[0] != x.shape[0]:
        raise ValueError(f"targets have {tg.shape[0]} rows but features have {x.shape[0]}")
    keep = torch.ones(x.shape[0], dtype=torch.bool) if valid is None else torch.as_tensor(np.asarray(valid, dtype=bool))
    if keep.shape != (x.shape[0],):
        raise ValueError(f"valid must have shape ({x.shape[0]},), got {tuple(keep.shape)}")
    keep = keep & (tg.norm(dim=1) > 0)
    if not bool(keep.any()):
        raise ValueError("no valid point with a non-zero target")
    x, tg = x[keep], F.normalize(tg[keep], dim=-1)
    dev = torch.device(cfg.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed))
        tr = Translator(x.shape[1], tg.shape[1], _encoder_name(text_encoder, tg.shape[1]), cfg.temperature, False,
                        feature)
    tr.set_feature_stats(x)
    tr.to(dev)
    history: dict[str, Any] = {"loss": [], "temperature": [], "cosine": [], "n_train": int(x.shape[0])}

    def loss_fn(idx):
        cos = F.cosine_similarity(tr(x[idx].to(dev)), tg[idx].to(dev), dim=-1)
        return (1.0 - cos).mean(), {"cosine": cos.mean()}

    _train(tr, x.shape[0], loss_fn, cfg, "translator (targets)", history)
    return tr.cpu(), history
