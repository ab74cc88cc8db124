"""Text queries on per-point text-space embeddings: relevance, top-k, centroid, labels.

Relevance follows LERF (Kerr et al., ICCV 2023): for a positive query embedding ``q`` and
canonical negatives ``c_j`` ("object", "things", "stuff", "texture"), each point's relevance
is ``min_j exp(s_q) / (exp(s_q) + exp(s_cj))`` with ``s = cos(point, text) / T``, i.e. the
pairwise softmax probability of the positive against its most competitive negative; it lies
in ``[0, 1]`` and 0.5 means "no more the query than the negative". ``T`` is the translator
temperature. Open-vocabulary labels are the argmax of the cosine over a vocabulary of class
names, as OpenScene (Peng et al., CVPR 2023) labels points zero-shot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from concerto_ros.language.text_encoders import TextEncoder, normalize_rows, validate_text

__all__ = ["DEFAULT_NEGATIVES", "QueryResult", "relevance", "score_query", "relevance_margin", "TextQueryScorer",
           "OpenVocabularyLabeler", "cosine_to_vocabulary"]

#: canonical negatives of LERF, used when a query gives none
DEFAULT_NEGATIVES: tuple[str, ...] = ("object", "things", "stuff", "texture")


def _point_embeddings(point_emb: np.ndarray) -> np.ndarray:
    e = np.asarray(point_emb, dtype=np.float32)
    if e.ndim != 2:
        raise ValueError(f"point embeddings must be (N, D), got shape {e.shape}")
    return normalize_rows(e)


def relevance(point_emb: np.ndarray, positive: np.ndarray, negatives: np.ndarray | None,
              temperature: float = 0.07) -> np.ndarray:
    """LERF-style relative relevance of each point to a positive text embedding.

    Args:
        point_emb: ``(N, D)`` per-point embeddings (normalised here).
        positive: ``(D,)`` text embedding of the query (normalised here).
        negatives: ``(M, D)`` text embeddings of the negatives; ``None`` or ``M = 0`` gives
            the plain cosine mapped to ``[0, 1]`` as ``(1 + cos) / 2``.
        temperature: softmax temperature ``T > 0`` (the translator's).

    Returns:
        ``(N,) float32`` relevance in ``[0, 1]``.

    Raises:
        ValueError: shape mismatch or ``temperature <= 0``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    e = _point_embeddings(point_emb)
    q = normalize_rows(np.asarray(positive, dtype=np.float32).reshape(1, -1))[0]
    if q.shape[0] != e.shape[1]:
        raise ValueError(f"query embedding is {q.shape[0]}-d but point embeddings are {e.shape[1]}-d")
    s_q = e @ q
    margin = relevance_margin(e, q, negatives, temperature)
    if margin is None:
        return ((1.0 + s_q) * 0.5).astype(np.float32)
    # exp(a) / (exp(a) + exp(b)) = sigmoid(a - b); the min over negatives of a monotonic
    # function is the function of the min margin
    return (0.5 * (1.0 + np.tanh(0.5 * margin))).astype(np.float32)


def relevance_margin(point_emb: np.ndarray, positive: np.ndarray, negatives: np.ndarray | None,
                     temperature: float = 0.07) -> np.ndarray | None:
    """``(N,) float64`` logit of :func:`relevance`: ``min_j (cos(p, q) - cos(p, c_j)) / T``.

    Ranking by this margin is equivalent to ranking by relevance but does not saturate: with a
    small temperature many points reach relevance 1.0 in float32 and would tie. ``None`` when
    there are no negatives. Inputs are normalised here.
    """
    e = _point_embeddings(point_emb)
    q = normalize_rows(np.asarray(positive, dtype=np.float32).reshape(1, -1))[0]
    if negatives is None or len(negatives) == 0:
        return None
    c = normalize_rows(np.asarray(negatives, dtype=np.float32).reshape(-1, e.shape[1]))
    s_q = (e @ q).astype(np.float64)
    s_c = (e @ c.T).astype(np.float64)  # (N, M)
    return (s_q[:, None] - s_c).min(axis=1) / float(temperature)


@dataclass
class QueryResult:
    """Result of one text query over ``N`` points.

    Attributes:
        text: the (stripped) query.
        relevance: ``(N,) float32`` in ``[0, 1]``.
        topk: ``(k,) int64`` point indices, most relevant first (``k <= N``).
        topk_relevance: ``(k,) float32``.
        mask: ``(N,) bool``, relevance ``>= threshold``.
        threshold: the threshold used.
        centroid: ``(3,) float64`` mean position (metres, the frame of ``coords``) of the
            points in ``mask``; ``None`` when no point passes or no coordinates were given.
        negatives: the negative texts used.
    """

    text: str
    relevance: np.ndarray
    topk: np.ndarray
    topk_relevance: np.ndarray
    mask: np.ndarray
    threshold: float
    centroid: np.ndarray | None
    negatives: tuple[str, ...]

    @property
    def n_above(self) -> int:
        """Number of points with relevance ``>= threshold``."""
        return int(self.mask.sum())


def score_query(point_emb: np.ndarray, positive: np.ndarray, negatives: np.ndarray | None,
                temperature: float, coords: np.ndarray | None = None, k: int = 100,
                threshold: float = 0.5, text: str = "", negative_texts: Sequence[str] = ()) -> QueryResult:
    """:func:`relevance` plus the top-``k`` points and the centroid above ``threshold``.

    The top-k are ranked by :func:`relevance_margin` (ties: lower index first), so they stay
    ordered where the float32 relevance saturates at 1.

    Args:
        coords: optional ``(N, 3)`` point positions (metres) for the centroid.
        k: number of top points (clipped to ``N``), >= 1.
        threshold: relevance threshold in ``[0, 1]``.

    Raises:
        ValueError: see :func:`relevance`; ``k < 1``; threshold outside ``[0, 1]``; ``coords``
            not ``(N, 3)``.
    """
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    rel = relevance(point_emb, positive, negatives, temperature)
    margin = relevance_margin(point_emb, positive, negatives, temperature)
    key = rel.astype(np.float64) if margin is None else margin  # ranking key without saturation
    n = rel.shape[0]
    kk = min(int(k), n)
    if kk == 0:
        top = np.zeros(0, np.int64)
    else:
        part = np.argpartition(-key, kk - 1)[:kk] if kk < n else np.arange(n)
        top = part[np.lexsort((part, -key[part]))].astype(np.int64)
    mask = rel >= float(threshold)
    centroid = None
    if coords is not None:
        xyz = np.asarray(coords, dtype=np.float64)
        if xyz.shape != (n, 3):
            raise ValueError(f"coords must be ({n}, 3), got {xyz.shape}")
        if mask.any():
            centroid = xyz[mask].mean(axis=0)
    return QueryResult(text, rel, top, rel[top], mask, float(threshold), centroid, tuple(negative_texts))


class TextQueryScorer:
    """Scores free-text queries against per-point translator embeddings.

    Args:
        text_encoder: the text encoder the translator was fitted for (its cache makes repeated
            queries free).
        temperature: softmax temperature (``Translator.temperature``).
        negatives: default negative texts (LERF's canonical phrases).
    """

    def __init__(self, text_encoder: TextEncoder, temperature: float = 0.07,
                 negatives: Sequence[str] = DEFAULT_NEGATIVES):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.text_encoder = text_encoder
        self.temperature = float(temperature)
        self.negatives = tuple(negatives)

    def embed_text(self, text: str) -> np.ndarray:
        """``(D,) float32`` unit embedding of ``text`` (the space of the point embeddings).

        Raises:
            ValueError: empty or too long text.
        """
        return self.text_encoder.encode_one(validate_text(text, self.text_encoder.max_text_length))

    def score(self, point_emb: np.ndarray, text: str, coords: np.ndarray | None = None, k: int = 100,
              threshold: float = 0.5, negatives: Sequence[str] | None = None) -> QueryResult:
        """Relevance of every point to ``text``; see :func:`score_query`.

        Negatives equal to the query (case-insensitive) are dropped, so that querying
        "object" does not compete with itself.

        Raises:
            ValueError: empty or too long ``text`` / negative (see
                :func:`~concerto_ros.language.text_encoders.validate_text`), embedding width
                different from the text encoder's.
        """
        text = validate_text(text, self.text_encoder.max_text_length)
        negs = self.negatives if negatives is None else tuple(negatives)
        negs = tuple(validate_text(n, self.text_encoder.max_text_length) for n in negs)
        negs = tuple(n for n in negs if n.lower() != text.lower())
        e = np.asarray(point_emb)
        if e.ndim != 2 or e.shape[1] != self.text_encoder.dim:
            raise ValueError(f"point embeddings must be (N, {self.text_encoder.dim}) for text encoder "
                             f"'{self.text_encoder.name}', got shape {e.shape}")
        q = self.text_encoder.encode_one(text)
        c = self.text_encoder.encode(list(negs)) if negs else None
        return score_query(e, q, c, self.temperature, coords=coords, k=k, threshold=threshold,
                           text=text, negative_texts=negs)


def cosine_to_vocabulary(point_emb: np.ndarray, vocab_emb: np.ndarray) -> np.ndarray:
    """``(N, C) float32`` cosine of each point embedding with each vocabulary embedding."""
    e = _point_embeddings(point_emb)
    v = normalize_rows(np.asarray(vocab_emb, dtype=np.float32))
    if v.ndim != 2 or v.shape[1] != e.shape[1]:
        raise ValueError(f"vocabulary embeddings must be (C, {e.shape[1]}), got {v.shape}")
    return e @ v.T


class OpenVocabularyLabeler:
    """Open-vocabulary point labels: argmax cosine over a vocabulary of class names.

    The vocabulary is embedded once; :meth:`set_vocabulary` re-encodes only when the list of
    names changes.

    Args:
        text_encoder: the translator's text encoder.
        vocabulary: class names (non-empty, unique after stripping).

    Attributes:
        n_vocabulary_encodes: how many times a vocabulary was embedded.
    """

    def __init__(self, text_encoder: TextEncoder, vocabulary: Sequence[str]):
        self.text_encoder = text_encoder
        self._vocab: tuple[str, ...] = ()
        self._emb: np.ndarray | None = None
        self.n_vocabulary_encodes = 0
        self.set_vocabulary(vocabulary)

    @property
    def vocabulary(self) -> tuple[str, ...]:
        """The current class names, in label order."""
        return self._vocab

    @property
    def embeddings(self) -> np.ndarray:
        """``(C, D) float32`` unit embeddings of the vocabulary."""
        return self._emb

    def set_vocabulary(self, vocabulary: Sequence[str]) -> bool:
        """Use ``vocabulary``; returns whether it changed (and was re-encoded).

        Raises:
            ValueError: empty vocabulary, an invalid name, or duplicate names.
        """
        names = tuple(validate_text(v, self.text_encoder.max_text_length) for v in vocabulary)
        if not names:
            raise ValueError("the vocabulary is empty: give at least one class name")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"the vocabulary has duplicate names: {dup}")
        if names == self._vocab and self._emb is not None:
            return False
        self._emb = self.text_encoder.encode(list(names))
        self._vocab = names
        self.n_vocabulary_encodes += 1
        return True

    def label(self, point_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(labels (N,) int64 index into the vocabulary, cosine (N,) float32 of that class)``."""
        cos = cosine_to_vocabulary(point_emb, self._emb)
        lab = cos.argmax(axis=1)
        return lab.astype(np.int64), cos[np.arange(cos.shape[0]), lab].astype(np.float32)
