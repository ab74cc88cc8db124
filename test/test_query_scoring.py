"""Query scoring: LERF relevance values, top-k, centroid, validation, open-vocabulary labels."""

from __future__ import annotations

import numpy as np
import pytest

from concerto_ros.language.query import (DEFAULT_NEGATIVES, OpenVocabularyLabeler, TextQueryScorer,
                                         cosine_to_vocabulary, relevance, relevance_margin, score_query)
from concerto_ros.language.text_encoders import TextEncoder

E = np.eye(4, dtype=np.float32)


class AxisEncoder(TextEncoder):
    """Fake text encoder: known words map to fixed 4-d directions."""

    WORDS = {"chair": [1, 0, 0, 0], "table": [0, 1, 0, 0], "object": [0, 0, 1, 0], "things": [0, 0, 0.6, 0.8],
             "stuff": [0, 0, 0.8, 0.6], "texture": [0, 0, 0, 1], "seat": [0.8, 0.6, 0, 0]}

    def __init__(self):
        super().__init__("fake:axis", 4, templates=None)

    def _embed_raw(self, texts):
        return np.array([self.WORDS[t] for t in texts], np.float32)


def test_relevance_matches_lerf_formula():
    pts = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0.6, 0.8, 0, 0], [2, 0, 0, 0]], np.float32)  # last: not unit
    q = E[0]
    negs = np.stack([E[1], E[2]])
    T = 0.1
    rel = relevance(pts, q, negs, T)
    # point 0: cos q = 1, cos negs = (0, 0): min over j of e^{10}/(e^{10}+e^0)
    expected0 = 1 / (1 + np.exp(-10))
    # point 2: cos q = 0.6, negs 0.8 and 0 -> pair with the first negative is the min
    expected2 = 1 / (1 + np.exp(-(0.6 - 0.8) / T))
    np.testing.assert_allclose(rel, [expected0, 1 / (1 + np.exp(10)), expected2, expected0], rtol=1e-5)
    assert rel.dtype == np.float32 and ((rel >= 0) & (rel <= 1)).all()
    np.testing.assert_allclose(relevance_margin(pts, q, negs, T), [10.0, -10.0, -2.0, 10.0], atol=1e-5)
    # no negatives: cosine mapped to [0, 1]
    np.testing.assert_allclose(relevance(pts, q, None), [1.0, 0.5, 0.8, 1.0], atol=1e-6)
    with pytest.raises(ValueError, match="4-d"):
        relevance(pts, np.ones(3), negs)
    with pytest.raises(ValueError, match="temperature"):
        relevance(pts, q, negs, 0.0)


def test_topk_ranking_survives_saturation_and_centroid():
    rng = np.random.default_rng(0)
    # cosines to the query 0.999 .. 0.90, all far above the negative: relevance saturates to 1.0
    c = np.linspace(0.999, 0.90, 50)
    pts = np.stack([c, np.sqrt(1 - c ** 2), np.zeros(50), np.zeros(50)], 1).astype(np.float32)
    perm = rng.permutation(50)
    res = score_query(pts[perm], E[0], E[2:3], temperature=0.01, k=10, threshold=0.5,
                      coords=np.arange(150, dtype=np.float64).reshape(50, 3))
    assert (res.relevance == 1.0).sum() > 10  # float32 saturation
    np.testing.assert_array_equal(res.topk, np.argsort(perm)[:10])  # still the 10 best in order
    assert res.n_above == 50
    np.testing.assert_allclose(res.centroid, np.arange(150, dtype=np.float64).reshape(50, 3).mean(0))
    res2 = score_query(pts, -E[0], E[2:3], temperature=0.1, k=100, coords=np.zeros((50, 3)))
    assert res2.topk.shape == (50,) and res2.n_above == 0 and res2.centroid is None
    with pytest.raises(ValueError, match="k must be >= 1"):
        score_query(pts, E[0], None, 0.1, k=0)
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        score_query(pts, E[0], None, 0.1, threshold=1.5)
    with pytest.raises(ValueError, match=r"coords must be \(50, 3\)"):
        score_query(pts, E[0], None, 0.1, coords=np.zeros((3, 3)))


def test_scorer_default_negatives_and_text_validation():
    enc = AxisEncoder()
    sc = TextQueryScorer(enc, temperature=0.1)
    assert sc.negatives == DEFAULT_NEGATIVES == ("object", "things", "stuff", "texture")
    pts = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0.9, 0.1, 0, 0]], np.float32)
    res = sc.score(pts, "chair", coords=np.array([[0, 0, 0], [9, 9, 9], [5, 5, 5], [2, 0, 0]], float), k=2,
                   threshold=0.6)
    assert res.text == "chair" and res.negatives == DEFAULT_NEGATIVES
    np.testing.assert_array_equal(res.topk, [0, 3])
    assert res.relevance[0] > 0.99 and res.relevance[2] < 0.01
    assert res.relevance[1] == pytest.approx(0.5)  # orthogonal to the query and to every negative
    np.testing.assert_allclose(res.centroid, [1, 0, 0])  # only points 0 and 3 pass 0.6
    # "seat" (0.8 chair + 0.6 table): cosines 0.8, 0.6, 0, 0.861 -> order 3, 0, 1, 2
    np.testing.assert_array_equal(sc.score(pts, "seat", k=4).topk, [3, 0, 1, 2])
    # the query is removed from its own negatives
    assert sc.score(pts, "object").negatives == ("things", "stuff", "texture")
    with pytest.raises(ValueError, match="empty"):
        sc.score(pts, "  ")
    with pytest.raises(ValueError, match="maximum is 200"):
        sc.score(pts, "chair " * 50)
    with pytest.raises(ValueError, match=r"must be \(N, 4\) for text encoder 'fake:axis'"):
        sc.score(np.zeros((3, 5)), "chair")
    calls = enc.n_model_calls
    sc.score(pts, "chair")
    assert enc.n_model_calls == calls  # cached


def test_open_vocabulary_labels_and_reencode_only_on_change():
    enc = AxisEncoder()
    lab = OpenVocabularyLabeler(enc, ["chair", "table", "object"])
    pts = np.array([[0.1, 1, 0, 0], [1, 0.2, 0, 0], [0, 0, 5, 0]], np.float32)
    labels, score = lab.label(pts)
    np.testing.assert_array_equal(labels, [1, 0, 2])
    np.testing.assert_allclose(score, [1 / np.sqrt(1.01), 1 / np.sqrt(1.04), 1.0], rtol=1e-5)
    assert lab.n_vocabulary_encodes == 1
    assert lab.set_vocabulary(["chair", "table", "object"]) is False and lab.n_vocabulary_encodes == 1
    assert lab.set_vocabulary(["table", "chair"]) is True and lab.n_vocabulary_encodes == 2
    np.testing.assert_array_equal(lab.label(pts)[0], [0, 1, 0])
    assert lab.vocabulary == ("table", "chair")
    with pytest.raises(ValueError, match="duplicate"):
        lab.set_vocabulary(["chair", "chair"])
    with pytest.raises(ValueError, match="vocabulary is empty"):
        lab.set_vocabulary([])
    np.testing.assert_allclose(cosine_to_vocabulary(pts[:1], E[:2]), [[0.1 / np.sqrt(1.01), 1 / np.sqrt(1.01)]],
                               rtol=1e-5)
