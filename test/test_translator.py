"""The translator: shapes, fitting with labels and label-free, persistence and mismatches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from concerto_ros.language.translator import (FitConfig, Translator, TranslatorMismatchError, embed_precision,
                                              fit_translator_labels, fit_translator_targets)


def _synthetic(n_per=300, d_in=16, d_text=8, n_cls=4, seed=0):
    """Point features = class-dependent means + noise; class text embeddings = orthonormal."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_cls, d_in)) * 3
    y = np.repeat(np.arange(n_cls), n_per)
    x = means[y] + rng.normal(size=(len(y), d_in))
    q, _ = np.linalg.qr(rng.normal(size=(d_text, n_cls)))
    return x.astype(np.float32), y, q.T.astype(np.float32)  # (C, D_text) orthonormal rows


def test_translator_shapes_and_unit_embeddings():
    tr = Translator(16, 8, "fake:x", temperature=0.05)
    assert math.isclose(tr.temperature, 0.05, rel_tol=1e-6)
    e = tr.embed(np.random.default_rng(0).normal(size=(10, 16)))
    assert e.shape == (10, 8) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    with pytest.raises(TranslatorMismatchError, match=r"expects \(N, 16\) features, got \(10, 15\)"):
        tr.embed(np.zeros((10, 15)))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        Translator(4, 4, "x", temperature=0.0)


def test_embed_chunks_and_bf16_agree_with_one_fp32_product():
    """Chunked rows give the same embedding as one product; the bf16 product stays within
    cosine 0.9999 of fp32 (what the node's language.precision: auto may choose)."""
    torch.manual_seed(0)
    tr = Translator(240, 384, "fake:x")
    with torch.no_grad():
        tr.proj.weight.normal_(0.0, 0.05)
        tr.proj.bias.normal_(0.0, 0.1)
    tr.set_feature_stats(np.random.default_rng(1).normal(2.0, 3.0, size=(500, 240)))
    x = np.random.default_rng(2).normal(2.0, 3.0, size=(5000, 240)).astype(np.float32)
    one = tr.embed(x, chunk_rows=len(x))
    chunked = tr.embed(x, chunk_rows=777)  # a last partial chunk too
    np.testing.assert_allclose(chunked, one, atol=2e-6)
    bf16 = tr.embed(torch.from_numpy(x), precision="bf16")
    assert bf16.dtype == np.float32 and bf16.shape == (5000, 384)
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)
    assert (bf16 * one).sum(1).min() > 0.9999
    assert np.array_equal(tr.embed(x, precision="auto"), tr.embed(x, precision=embed_precision("cpu")))
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16; got 'fp16'"):
        tr.embed(x, precision="fp16")
    with pytest.raises(ValueError, match="chunk_rows must be > 0"):
        tr.embed(x, chunk_rows=0)


def test_fit_with_labels_learns_classes_and_ignores_unlabelled():
    x, y, t = _synthetic()
    y_ign = y.copy()
    y_ign[::3] = -1
    y_ign[y == 3] = -1  # class 3 never labelled
    tr, hist = fit_translator_labels(x, y_ign, t, "fake:orth", epochs=30, batch_size=256, lr=2e-2, progress=False)
    assert hist["n_train"] == int((y_ign >= 0).sum())
    assert len(hist["loss"]) == 30 and hist["loss"][-1] < hist["loss"][0] * 0.5
    assert hist["accuracy"][-1] > 0.98
    e = tr.embed(x)
    pred = (e @ t.T).argmax(1)
    seen = y != 3
    assert (pred[seen] == y[seen]).mean() > 0.98
    assert tr.text_encoder == "fake:orth" and tr.in_dim == 16 and tr.text_dim == 8
    # learned temperature moved from its initial value and stays in CLIP's clamp range
    assert 0.01 <= tr.temperature <= 1.0 and abs(tr.temperature - 0.07) > 1e-4


def test_fixed_temperature_stays_fixed_and_seed_is_deterministic():
    x, y, t = _synthetic(n_per=50)
    cfg = FitConfig(epochs=3, batch_size=64, learn_temperature=False, temperature=0.1, progress=False, seed=7)
    a, ha = fit_translator_labels(x, y, t, "fake", config=cfg)
    b, hb = fit_translator_labels(x, y, t, "fake", config=cfg)
    assert math.isclose(a.temperature, 0.1, rel_tol=1e-6)
    torch.testing.assert_close(a.proj.weight, b.proj.weight)
    assert ha["loss"] == hb["loss"]
    c, _ = fit_translator_labels(x, y, t, "fake", config=cfg, seed=8)
    assert not torch.allclose(a.proj.weight, c.proj.weight)


def test_balanced_class_weight_runs_and_rejects_unknown():
    x, y, t = _synthetic(n_per=40)
    tr, hist = fit_translator_labels(x, y, t, "fake", epochs=5, batch_size=64, class_weight="balanced", progress=False)
    assert hist["accuracy"][-1] > 0.9
    with pytest.raises(ValueError, match="class_weight"):
        fit_translator_labels(x, y, t, "fake", epochs=1, class_weight="inverse", progress=False)


def test_fit_labels_input_errors():
    x, y, t = _synthetic(n_per=10)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\) or -1"):
        fit_translator_labels(x, np.full(len(y), 5), t, "fake", progress=False)
    with pytest.raises(ValueError, match="no labelled point"):
        fit_translator_labels(x, np.full(len(y), -1), t, "fake", progress=False)
    with pytest.raises(ValueError, match=r"labels must have shape \(40,\)"):
        fit_translator_labels(x, y[:5], t, "fake", progress=False)
    with pytest.raises(ValueError, match="non-finite"):
        bad = x.copy()
        bad[0, 0] = np.nan
        fit_translator_labels(bad, y, t, "fake", progress=False)


def test_fit_targets_regresses_a_linear_map():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 12)).astype(np.float32)
    w = rng.normal(size=(12, 6)).astype(np.float32)
    targets = x @ w
    valid = np.ones(len(x), bool)
    valid[:500] = False
    targets[:500] = rng.normal(size=(500, 6))  # garbage where invalid: must be ignored
    tr, hist = fit_translator_targets(x, targets, "fake:t", valid=valid, epochs=40, batch_size=256, lr=2e-2,
                                      progress=False)
    assert hist["n_train"] == 1500
    assert hist["cosine"][-1] > 0.99 and hist["loss"][-1] < 0.01
    e = tr.embed(x[500:])
    ref = targets[500:] / np.linalg.norm(targets[500:], axis=1, keepdims=True)
    assert (e * ref).sum(1).mean() > 0.99
    assert not tr.logit_scale.requires_grad


def test_fit_targets_errors():
    x = np.zeros((10, 3), np.float32)
    with pytest.raises(ValueError, match="targets have 5 rows but features have 10"):
        fit_translator_targets(x, np.ones((5, 4)), "fake", progress=False)
    with pytest.raises(ValueError, match="no valid point"):
        fit_translator_targets(x, np.ones((10, 4)), "fake", valid=np.zeros(10, bool), progress=False)


class _Enc:
    def __init__(self, name, dim):
        self.name, self.dim = name, dim


def test_save_load_roundtrip_and_mismatch_errors(tmp_path):
    x, y, t = _synthetic(n_per=30)
    tr, _ = fit_translator_labels(x, y, t, "sentence-transformers:all-MiniLM-L6-v2", epochs=2, progress=False,
                                  feature="tiny concat3 16-d")
    path = tr.save(tmp_path / "tr.pt", extra={"classes": ["a", "b", "c", "d"]})
    back = Translator.load(path, text_encoder=_Enc("sentence-transformers:all-MiniLM-L6-v2", 8), in_dim=16)
    np.testing.assert_allclose(back.embed(x), tr.embed(x), atol=1e-6)
    assert math.isclose(back.temperature, tr.temperature, rel_tol=1e-6)
    assert back.extra == {"classes": ["a", "b", "c", "d"]} and back.feature == "tiny concat3 16-d"
    with pytest.raises(TranslatorMismatchError,
                       match="fitted for text encoder 'sentence-transformers:all-MiniLM-L6-v2' "
                             r"\(8-d\) but is used with 'open_clip:ViT-B-32' \(512-d\)"):
        Translator.load(path, text_encoder=_Enc("open_clip:ViT-B-32", 512))
    with pytest.raises(TranslatorMismatchError,
                       match="expects 16-d point features but the feature extractor gives 80-d"):
        Translator.load(path, in_dim=80)
    with pytest.raises(TranslatorMismatchError, match="used with 'other'"):
        Translator.load(path, text_encoder="other")
    with pytest.raises(FileNotFoundError):
        Translator.load(tmp_path / "missing.pt")
    torch.save({"state_dict": {}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a translator file"):
        Translator.load(tmp_path / "bad.pt")


def test_fit_rejects_bad_training_settings():
    x, y, t = _synthetic(n_per=10)
    with pytest.raises(ValueError, match="epochs and batch_size must be >= 1"):
        fit_translator_labels(x, y, t, "fake", epochs=0, progress=False)
    with pytest.raises(TypeError):
        fit_translator_labels(x, y, t, "fake", epoch=3, progress=False)  # misspelt setting


def test_fit_accepts_a_text_encoder_object_and_checks_its_width():
    x, y, t = _synthetic(n_per=10)
    tr, _ = fit_translator_labels(x, y, t, _Enc("fake:obj", 8), epochs=1, progress=False)
    assert tr.text_encoder == "fake:obj"
    with pytest.raises(ValueError, match="text encoder 'fake:obj' is 384-d but the embeddings are 8-d"):
        fit_translator_labels(x, y, t, _Enc("fake:obj", 384), epochs=1, progress=False)
