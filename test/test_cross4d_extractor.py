"""Cross4DFeatureExtractor on a WindowCloud, and Cross4D checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from concerto_ros.cloud.window import VideoPointCloud
from concerto_ros.models.cross4d import (Cross4DFeatureExtractor, build_cross4d, load_cross4d, sample_indices,
                                         save_cross4d)
from concerto_ros.sensors.types import PointFrame


def _window(num_frames=3, n=400, seed=0):
    rng = np.random.default_rng(seed)
    vpc = VideoPointCloud(num_frames=num_frames, voxel_size=0.05)
    for i in range(num_frames):
        pts = (rng.random((n, 3)) * [2.0, 1.5, 1.0] + [0.1 * i, 0.0, 0.0]).astype(np.float32)
        col = rng.integers(0, 255, (n, 3), dtype=np.uint8)
        vpc.push(PointFrame(stamp_ns=1_000_000_000 + i * 100_000_000, points=pts, colors=col, frame_id="odom"))
    return vpc.build()


def test_sample_indices():
    assert sample_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert sample_indices(3, 5).tolist() == [0, 1, 2, 0, 1]
    r = sample_indices(100, 10, np.random.default_rng(0))
    assert len(set(r.tolist())) == 10 and r.max() < 100
    with pytest.raises(ValueError):
        sample_indices(0, 3)


def test_encode_window_is_point_weighted_mean_of_frame_features():
    win = _window()
    enc = build_cross4d("tiny", seed=0, point_channels=3)
    ext = Cross4DFeatureExtractor(enc, num_frames=3, points_per_frame=128)
    feat = ext.encode_window(win)
    assert feat.shape == (win.num_voxels, 32) and feat.dtype == torch.float32
    # reference: per-point features of every window point (its voxel representative in its
    # frame), averaged per voxel through window.inverse
    coord = torch.as_tensor(win.coord)
    col = torch.as_tensor(win.color, dtype=torch.float32) / 255
    pts, fts, per_point = [], [], []
    for f in range(3):
        v = np.unique(win.frame_inverse(f))
        sel = v[sample_indices(len(v), 128)]
        pts.append(coord[sel])
        fts.append(col[sel])
    times = torch.tensor([[0.0, 0.1, 0.2]])
    with torch.no_grad():
        for f in range(3):
            inv = torch.as_tensor(win.frame_inverse(f))
            q = coord[inv][None, None].expand(1, 3, -1, -1).contiguous()
            qf = col[inv][None, None].expand(1, 3, -1, -1).contiguous()
            out = enc.eval()(torch.stack(pts)[None], times, feats=torch.stack(fts)[None], query=q, query_feats=qf)
            per_point.append(out.point_feat[0, f])
    per_point = torch.cat(per_point)
    ref = torch.zeros(win.num_voxels, 32).index_add_(0, torch.as_tensor(win.inverse), per_point)
    ref /= torch.bincount(torch.as_tensor(win.inverse), minlength=win.num_voxels)[:, None].float()
    torch.testing.assert_close(feat, ref, atol=1e-4, rtol=1e-4)


def test_newest_mode_takes_each_voxel_from_its_newest_frame():
    win = _window()
    enc = build_cross4d("tiny", seed=0)
    feat = Cross4DFeatureExtractor(enc, num_frames=3, points_per_frame=128, average="newest").encode_window(win)
    coord = torch.as_tensor(win.coord)
    pts = []
    newest = np.full(win.num_voxels, -1)
    for f in range(3):
        v = np.unique(win.frame_inverse(f))
        pts.append(coord[v[sample_indices(len(v), 128)]])
        newest[v] = f
    q = coord[None, None].expand(1, 3, -1, -1).contiguous()  # every voxel queried in every frame
    with torch.no_grad():
        every = enc.eval()(torch.stack(pts)[None], torch.tensor([[0.0, 0.1, 0.2]]), query=q).point_feat[0]
    ref = every[torch.as_tensor(newest), torch.arange(win.num_voxels)]
    torch.testing.assert_close(feat, ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="average"):
        Cross4DFeatureExtractor(enc, average="mean")


def test_only_last_frames_are_encoded():
    win = _window(num_frames=3)
    ext = Cross4DFeatureExtractor(build_cross4d("tiny", seed=0), num_frames=1, points_per_frame=64)
    feat = ext.encode_window(win)
    newest = np.zeros(win.num_voxels, dtype=bool)
    newest[win.frame_inverse(-1)] = True
    assert torch.all(feat[torch.as_tensor(~newest)] == 0)
    assert torch.all(feat[torch.as_tensor(newest)].abs().sum(-1) > 0)


def test_checkpoint_roundtrip_and_errors(tmp_path):
    enc = build_cross4d("tiny", seed=3, point_channels=3)
    path = save_cross4d(tmp_path / "c.pt", enc, extra={"preset": "tiny", "num_frames": 2, "points_per_frame": 64,
                                                       "teacher": "t"})
    ext = Cross4DFeatureExtractor.from_checkpoint(path)
    assert (ext.num_frames, ext.points_per_frame, ext.out_channels) == (2, 64, 32)
    win = _window()
    ref = Cross4DFeatureExtractor(enc, num_frames=2, points_per_frame=64).encode_window(win)
    torch.testing.assert_close(ext.encode_window(win), ref)
    # random extractor says so
    notes = []
    Cross4DFeatureExtractor.from_checkpoint("", preset="tiny", log=notes.append)
    assert "SEEDED RANDOM" in notes[0]
    with pytest.raises(FileNotFoundError):
        load_cross4d(tmp_path / "none.pt")
    torch.save({"state_dict": {}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a Cross4D checkpoint"):
        load_cross4d(tmp_path / "bad.pt")
    blob = torch.load(path, weights_only=False)
    blob["state_dict"]["extra.weight"] = torch.zeros(1)
    del blob["state_dict"]["norm.weight"]
    torch.save(blob, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match=r"missing \['norm.weight'\].*unexpected \['extra.weight'\]"):
        load_cross4d(tmp_path / "mismatch.pt")
