"""``concerto query --map``: free-text queries answered from a saved map, without ROS."""

import numpy as np
import pytest

from concerto_ros.cli import main
from concerto_ros.language.text_encoders import build_text_encoder
from concerto_ros.mapping import SemanticVoxelMap

VOXEL = 0.05


def blob(origin, size):
    """Voxel indices of a size^3 cube starting at ``origin``."""
    r = np.arange(size)
    return np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3) + np.asarray(origin)


@pytest.fixture(scope="module")
def saved_map(tmp_path_factory):
    """A map whose voxels carry the text embeddings of a red chair (a 3x3x3 cube at the
    origin), a wooden table (4x4x4 at x = 1 m) and a white wall (a 10x10x1 slab, z = 1 m)."""
    te = build_text_encoder("sentence-transformers")
    parts = [(blob((0, 0, 0), 3), "red chair"), (blob((20, 0, 0), 4), "wooden table")]
    wall = blob((0, 0, 20), 10)
    parts.append((wall[wall[:, 2] == 20], "white wall"))
    ijk = np.concatenate([p for p, _ in parts])
    emb = np.concatenate([np.repeat(te.encode([t]), len(p), axis=0) for p, t in parts])
    m = SemanticVoxelMap(VOXEL, "odom", text_encoder="sentence-transformers", temperature=0.1,
                         class_names=["chair", "table", "wall"])
    pts = ((ijk + 0.5) * VOXEL).astype(np.float32)
    m.integrate_geometry(pts, np.full((len(pts), 3), 128, np.uint8), 1, [0, 0, 0])
    m.fuse(1, np.ones(len(pts), np.float32), coords=pts, embeddings=emb)
    path = tmp_path_factory.mktemp("map") / "map.npz"
    m.save(path)
    return path


def test_query_map_prints_the_matching_region_first(saved_map, tmp_path, capsys):
    from plyfile import PlyData

    ply = tmp_path / "relevance.ply"
    assert main(["query", "--map", str(saved_map), "red chair", "--ply", str(ply), "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip().startswith("1 "))
    fields = lines[first].split()
    assert int(fields[2]) == 27  # the chair cube, 27 voxels, comes first
    np.testing.assert_allclose([float(x) for x in fields[3:6]], [0.075, 0.075, 0.075], atol=1e-3)
    assert "(0.00 0.00 0.00) .. (0.15 0.15 0.15)" in lines[first]
    assert "sentence-transformers" in out and "temperature 0.1" in out
    v = PlyData.read(str(ply))["vertex"]
    rel = np.asarray(v["relevance"])
    assert len(rel) == 27 + 64 + 100
    chair = (np.asarray(v["x"]) < 0.16) & (np.asarray(v["z"]) < 0.16)
    assert rel[chair].min() > rel[~chair].max()


def test_query_map_errors_are_one_line(tmp_path, capsys, saved_map):
    plain = SemanticVoxelMap(VOXEL, "odom")
    plain.integrate_geometry(np.zeros((1, 3), np.float32), np.zeros((1, 3), np.uint8), 1, [0, 0, 0])
    path = plain.save(tmp_path / "geometry_only.npz")
    assert main(["query", "--map", str(path), "chair"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no language embeddings" in err and len(err.strip().splitlines()) == 1
    assert main(["query", "--map", str(tmp_path / "missing.npz"), "chair"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["query", "--map", str(saved_map), "   "]) == 2
    assert "empty" in capsys.readouterr().err
