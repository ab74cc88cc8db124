"""Linear and kNN probes of ``concerto eval probe`` on toy data and one small end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from concerto_ros.evaluation.probe import ProbeOptions, fit_linear_probe, knn_predict, linear_predict


def _clusters(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three well separated Gaussian clusters in 8-d, labels 0..2."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(8)[:3] * 5.0
    y = torch.arange(n) % 3
    return centres[y] + 0.3 * torch.randn(n, 8, generator=g), y


def test_knn_probe_labels_separable_clusters_perfectly():
    bank, bank_y = _clusters(300, 0)
    query, y = _clusters(200, 1)
    pred = knn_predict(bank, bank_y, query, num_classes=3, k=10, temperature=0.07, chunk=64)
    assert pred.dtype == np.int64 and (pred == y.numpy()).all()


def test_knn_votes_are_weighted_by_similarity_and_temperature():
    # one very close neighbour of class 0 against two farther ones of class 1
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6]])
    bank_y = torch.tensor([0, 1, 1])
    q = torch.tensor([[1.0, 0.05]])
    # cos: 0.9988, 0.829, 0.769; T = 0.05: exp(0.9988/T) > exp(0.829/T) + exp(0.769/T)
    assert knn_predict(bank, bank_y, q, 2, k=3, temperature=0.05).tolist() == [0]
    # T large: votes become counts, class 1 has two
    assert knn_predict(bank, bank_y, q, 2, k=3, temperature=100.0).tolist() == [1]
    assert knn_predict(bank, bank_y, q, 2, k=1, temperature=100.0).tolist() == [0]
    with pytest.raises(ValueError, match="non-empty bank"):
        knn_predict(bank[:0], bank_y[:0], q, 2)


def test_linear_probe_separates_clusters_with_the_msm_recipe():
    x, y = _clusters(600, 2)
    losses = []
    head = fit_linear_probe(x, y, 3, ProbeOptions(epochs=6, batch_size=128), on_epoch=lambda e, l: losses.append(l))
    assert len(losses) == 6 and losses[-1] < losses[0]
    xt, yt = _clusters(300, 3)
    assert (linear_predict(head, xt) == yt.numpy()).all()
    with pytest.raises(ValueError, match="class indices"):
        fit_linear_probe(x, y + 5, 3, ProbeOptions(epochs=1))


def test_eval_probe_cli_on_point_arrays(tmp_path):
    """Two labelled point scenes: train on one, test on the other, through the CLI."""
    from concerto_ros.cli import main

    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        xyz = rng.uniform(1, 3, size=(3000, 3)).astype(np.float32)  # beyond lift.min_range of the origin
        lab = (xyz[:, 2] > 2.0).astype(np.int64) + 1  # 1 = low, 2 = high
        lab[:100] = 0                                   # unlabeled: ignored
        np.save(tmp_path / f"s{i}.npy", xyz)
        np.save(tmp_path / f"l{i}.npy", lab)
        paths.append((tmp_path / f"s{i}.npy", tmp_path / f"l{i}.npy"))
    src = [f"{{type: points, path: {p}, labels: {l}, label_names: [unlabeled, low, high]}}" for p, l in paths]
    out = tmp_path / "probe"
    rc = main(["eval", "probe", "--train", src[0], "--test", src[1], "--epochs", "10", "--batch-size", "1024",
               "--bundle", "random", "--set", "window.voxel_size=0.1", "-o", str(out), "--no-progress"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["classes"] == ["low", "high"] and m["feature_dim"] == 240
    for kind in ("linear", "knn"):
        assert m[kind]["num_points"] == 2900  # every labelled test point, scored once
        assert set(m[kind]["per_class_iou"]) == {"low", "high"}
        assert 0.0 <= m[kind]["miou"] <= 1.0
    # height is in the encoder input: both probes find the split well above chance
    assert m["linear"]["accuracy"] > 0.8 and m["knn"]["accuracy"] > 0.8
    assert (out / "linear_confusion.png").is_file() and (out / "report.md").is_file()
