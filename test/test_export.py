"""Exported encoder (ONNX under ONNX Runtime, torch.export) against the reference and eager.

The golden-a checkpoint is exported once for the module (one ``torch.export`` trace, written
as ONNX and as ``.pt2``); the exported files must reproduce ``../shared/golden`` (both
outputs, the golden stage orders passed as index inputs) to 1e-4 and the eager encoder on the
real 5-frame Kinect window (271,615 voxels at 0.02 m) to 1e-4 relative. The embedded default
bundle (encoder + linear head + translator) must give the eager labels and embeddings.
"""

import argparse
import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_ptv3_golden import GOLDEN, GOLDEN_A_STAGE_ORDERS

from concerto_ros.cli import encode as encode_cli
from concerto_ros.cli import export as export_cli
from concerto_ros.models.bundle import DEFAULT_BUNDLE_PATH, load_bundle
from concerto_ros.models.export import (ExportedModel, ExportFileError, cached_export, export_model,
                                        export_program, exportable_from_bundle, exportable_from_checkpoint,
                                        read_metadata)
from concerto_ros.models.extractor import FeatureExtractor
from concerto_ros.models.ptv3 import concerto_point_feature, prepare_input

CKPT = GOLDEN / "ptv3_golden_a.pth"


def _golden_arrays():
    data = np.load(GOLDEN / "ptv3_golden_a.npz")
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def golden_files(tmp_path_factory):
    """One trace of the golden-a encoder, written as a cached ONNX file and a .pt2 file."""
    if not CKPT.is_file():
        pytest.skip(f"../shared/golden not found: {GOLDEN}")
    tmp = tmp_path_factory.mktemp("export")
    model = exportable_from_checkpoint(CKPT)
    program = export_program(model)
    onnx = cached_export(model, "onnx", cache_dir=tmp / "cache", program=program)
    pt2 = export_model(model, tmp / "golden.pt2", "torch-export", program=program)
    return {"model": model, "onnx": onnx, "pt2": pt2, "cache": tmp / "cache", "tmp": tmp}


@pytest.mark.parametrize("kind", ["onnx", "pt2"])
def test_exported_golden_a_matches_reference(golden_files, kind):
    golden = _golden_arrays()
    exported = ExportedModel(golden_files[kind])
    assert exported.format == ("onnx" if kind == "onnx" else "torch-export")
    out = exported(*(torch.from_numpy(golden[k]) for k in ("coord", "grid_coord", "feat", "offset")),
                   stage_orders=GOLDEN_A_STAGE_ORDERS)
    assert out["last_stage_feat"].shape == (648, 80) and out["point_feat"].shape == (29172, 192)
    assert np.abs(out["last_stage_feat"].numpy() - golden["last_stage_feat"]).max() <= 1e-4
    assert np.abs(out["point_feat"].numpy() - golden["upcast_feat"]).max() <= 1e-4
    # the default orders are another draw: the index inputs, not the graph, carry them
    other = exported(*(torch.from_numpy(golden[k]) for k in ("coord", "grid_coord", "feat", "offset")))
    assert np.abs(other["point_feat"].numpy() - golden["upcast_feat"]).max() > 1e-3


def test_metadata_and_cache_reuse(golden_files):
    fmt, meta = read_metadata(golden_files["onnx"])
    assert fmt == "onnx" and meta["feature"] == "concat3" and meta["point_channels"] == "192"
    assert json.loads(meta["output_names"]) == ["last_stage_feat", "point_feat"]
    names = json.loads(meta["input_names"])
    assert names[:4] == ["feat", "s0_neighbours", "s0_o0_gather", "s0_o0_scatter"]
    assert "s3_o1_gather" in names and len(names) == 22  # stage 3 has two blocks: orders 0 and 1
    assert json.loads(meta["encoder_config"])["enc_channels"] == [16, 32, 48, 64, 80]
    start = time.perf_counter()
    again = cached_export(golden_files["model"], "onnx", cache_dir=golden_files["cache"])
    assert again == golden_files["onnx"] and time.perf_counter() - start < 5.0  # no re-export
    assert read_metadata(golden_files["pt2"])[1]["weights"] == meta["weights"]
    not_export = golden_files["tmp"] / "bad.onnx"
    not_export.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ExportFileError, match="neither an ONNX nor a torch.export"):
        read_metadata(not_export)


def _window_batch(slambook_dir):
    from concerto_ros.cloud.window import VideoPointCloud
    from concerto_ros.config import PerceptionConfig
    from concerto_ros.train.data import load_recording

    cfg = PerceptionConfig()  # depth 0.1 .. 8 m, every pixel
    rec = load_recording({"path": str(slambook_dir), "fx": 518.0, "fy": 519.0, "cx": 325.5, "cy": 253.5,
                          "depth_scale": 1000.0}, cfg)
    window = VideoPointCloud(len(rec.frames), 0.02)
    for frame in rec.frames:
        window.push(frame.points)
    cloud = window.build()
    return prepare_input(cloud.coord, cloud.grid_coord, color=cloud.color)


def test_onnxruntime_on_the_real_window_matches_eager(golden_files, slambook_dir):
    batch = _window_batch(slambook_dir)
    assert batch.num_points == 271615
    exported = ExportedModel(golden_files["onnx"])
    out = exported(batch.coord, batch.grid_coord, batch.feat, batch.offset)
    model = golden_files["model"].encoder
    with torch.inference_mode():
        levels = model(batch)
        eager = concerto_point_feature(levels)
    for got, ref in ((out["point_feat"], eager), (out["last_stage_feat"], levels.last_feat)):
        assert got.shape == ref.shape
        assert (got - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()


def test_cli_encode_with_onnxruntime(golden_files, tmp_path, capsys):
    golden = _golden_arrays()
    inp, out = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(inp, **{k: golden[k] for k in ("coord", "grid_coord", "feat", "offset")})
    parser = argparse.ArgumentParser()
    encode_cli.register(parser.add_subparsers())
    spec = ";".join(",".join(s) for s in GOLDEN_A_STAGE_ORDERS)
    base = ["encode", "--checkpoint", str(CKPT), "--input", str(inp), "--output", str(out)]
    args = parser.parse_args(base + ["--runtime", "onnxruntime", "--onnx", str(golden_files["onnx"]),
                                     "--stage-orders", spec])
    assert args.func(args) == 0
    result = np.load(out)
    assert np.abs(result["upcast_feat"] - golden["upcast_feat"]).max() <= 1e-4
    assert np.abs(result["last_stage_feat"] - golden["last_stage_feat"]).max() <= 1e-4
    assert "runtime onnxruntime" in capsys.readouterr().out
    args = parser.parse_args(base + ["--onnx", str(golden_files["onnx"])])
    assert args.func(args) == 2
    assert "--onnx needs --runtime onnxruntime" in capsys.readouterr().err


def _model_cfg(**kw):
    base = dict(preset="tiny", checkpoint="", seed=0, sparse_conv_backend="auto", feature="concat3",
                runtime="onnxruntime", onnx="", onnx_provider="auto")
    base.update(kw)
    return SimpleNamespace(**base)


def test_extractor_runtime_onnxruntime_from_config(golden_files, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(golden_files["tmp"] / "xdg"))
    logs = []
    # the exported file is checked against the configured weights and feature layout
    with pytest.raises(ValueError, match="holds other encoder weights"):
        FeatureExtractor.from_config(_model_cfg(onnx=str(golden_files["onnx"])))
    with pytest.raises(ValueError, match="computes the 'concat3' feature"):
        FeatureExtractor.from_config(_model_cfg(checkpoint=str(CKPT), feature="all_levels",
                                                onnx=str(golden_files["onnx"])))
    with pytest.raises(ValueError, match="model.amp 'bf16' applies to model.runtime torch"):
        FeatureExtractor.from_config(_model_cfg(amp="bf16"), device="cuda")
    ext = FeatureExtractor.from_config(_model_cfg(checkpoint=str(CKPT), onnx=str(golden_files["onnx"])),
                                       log=logs.append)
    assert ext.exported is not None and ext.exported.provider == "cpu"
    assert any("encoder runtime onnxruntime" in m for m in logs)
    golden = _golden_arrays()
    n = int(golden["offset"][0])  # the first scene, as the node encodes one window
    coord, grid = golden["coord"][:n], golden["grid_coord"][:n]
    color = (golden["feat"][:n, 3:6] * 255).round().astype(np.uint8)
    eager = FeatureExtractor.from_config(_model_cfg(checkpoint=str(CKPT), runtime="torch"))
    assert eager.exported is None
    torch.testing.assert_close(ext.encode(coord, grid, color), eager.encode(coord, grid, color),
                               atol=1e-4, rtol=0)


def _concerto_only_bundle(path):
    """The embedded default bundle without its Cross4D encoder: its Concerto encoder, and its
    head and translator restricted to the Concerto columns of the fused feature (what the
    export covers: a bundle with Cross4D exports its Concerto encoder alone)."""
    from concerto_ros.models.bundle import bundle_from_parts, save_bundle

    b = load_bundle(DEFAULT_BUNDLE_PATH)
    d = b.feature_dims["concerto"]
    head = {"config": {**b.head["config"], "backbone_out_channels": d, "feature_dims": {"concerto": d, "cross4d": 0}},
            "state_dict": {"seg_head.weight": b.head["state_dict"]["seg_head.weight"][:, :d],
                           "seg_head.bias": b.head["state_dict"]["seg_head.bias"]}}
    sd = dict(b.translator["state_dict"])
    sd.update({"feat_mean": sd["feat_mean"][:d], "feat_std": sd["feat_std"][:d], "proj.weight": sd["proj.weight"][:, :d]})
    translator = {**b.translator, "config": {**b.translator["config"], "in_dim": d}, "state_dict": sd}
    return save_bundle(bundle_from_parts(encoder=b.encoder, feature=b.feature, voxel_size=b.voxel_size, head=head,
                                         translator=translator, text_encoder=b.text_encoder), path)


def test_bundle_with_head_and_translator_exports(tmp_path, capsys):
    if not DEFAULT_BUNDLE_PATH.is_file():
        pytest.skip("the embedded default bundle is not installed")
    parser = argparse.ArgumentParser()
    export_cli.register(parser.add_subparsers())
    # the default bundle fuses Cross4D: only its Concerto encoder is exported, with a note
    args = parser.parse_args(["export", "--bundle", "default", "-o", str(tmp_path / "d.onnx"), "--format", "onnx"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    wrote = next(line for line in printed.splitlines() if line.startswith("wrote "))
    assert "point_feat" in wrote and "logits" not in wrote and "embedding" not in wrote
    source = _concerto_only_bundle(tmp_path / "concerto_only.pt")
    out = tmp_path / "bundle.onnx"
    args = parser.parse_args(["export", "--bundle", str(source), "-o", str(out), "--format", "onnx"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "outputs last_stage_feat, point_feat, logits, embedding" in printed
    diff = float(printed.split("max |exported - eager| = ")[1].split()[0])
    assert diff <= 1e-4
    bundle = load_bundle(source)
    exported = ExportedModel(out)
    assert exported.class_names == bundle.class_names and exported.feature == bundle.feature
    # eager reference: the node's extractor, head and translator on a one-scene input
    rng = np.random.default_rng(3)
    grid = np.unique(rng.integers(0, 60, size=(6000, 3)), axis=0)
    coord = grid * 0.02 + 0.01
    color = rng.integers(0, 256, size=grid.shape).astype(np.uint8)
    cfg = _model_cfg(runtime="torch")
    eager = FeatureExtractor.from_blob(bundle.encoder, cfg, feature=bundle.feature, use_color=bundle.use_color)
    feats = eager.encode(coord, grid, color)
    model = exportable_from_bundle(source)
    batch = prepare_input(coord, grid, color=color)
    got = exported(batch.coord, batch.grid_coord, batch.feat, batch.offset)
    assert (got["point_feat"] - feats).abs().max().item() <= 1e-4
    labels = model.head.predict(feats).labels
    assert len(np.unique(labels)) > 1  # a meaningful comparison: several classes predicted
    assert np.array_equal(got["logits"].argmax(1).numpy(), labels)
    assert np.abs(got["embedding"].numpy() - model.translator.embed(feats)).max() <= 1e-4
    # the node's runtime takes the same file through model.onnx
    ort = FeatureExtractor.from_blob(bundle.encoder, _model_cfg(onnx=str(out)), feature=bundle.feature,
                                     use_color=bundle.use_color)
    torch.testing.assert_close(ort.encode(coord, grid, color), feats, atol=1e-4, rtol=0)


def test_export_cli_refuses_bad_sources(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    export_cli.register(parser.add_subparsers())
    args = parser.parse_args(["export", "--checkpoint", str(tmp_path / "missing.pth"), "-o", str(tmp_path / "x")])
    assert args.func(args) == 1
    assert capsys.readouterr().err.startswith("error:")
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--bundle", "default", "--checkpoint", "c.pth", "-o", "x"])
    args = parser.parse_args(["export", "--bundle", str(CKPT), "-o", str(tmp_path / "x")])
    assert args.func(args) == 1
    assert "is not a concerto_ros model bundle" in capsys.readouterr().err
