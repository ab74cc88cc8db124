"""One-file model bundles: round trip, the pipeline built from one, the node's refusal rules,
the embedded ``default`` bundle, and the CLI (``concerto info --bundle``, ``concerto bundle pack``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from concerto_ros.cli import main
from concerto_ros.config import default_config_path, load_config
from concerto_ros.language.translator import Translator
from concerto_ros.models import bundle as bundle_mod
from concerto_ros.models.bundle import (FORMAT, VERSION, BundleError, ModelBundle, bundle_from_parts,
                                        bundle_from_pipeline, load_bundle, resolve_bundle_path, save_bundle)
from concerto_ros.models.checkpoint import save_encoder
from concerto_ros.models.cross4d import build_cross4d
from concerto_ros.models.extractor import save_head
from concerto_ros.models.heads import LinearSemanticHead
from concerto_ros.models.presets import build_encoder
from concerto_ros.pipeline import PerceptionPipeline
from concerto_ros.sensors.types import PointFrame

ST_NAME = "sentence-transformers:all-MiniLM-L6-v2"
HAVE_ST = importlib.util.find_spec("sentence_transformers") is not None
CLASSES = ["floor", "wall", "thing"]


def _seeded(seed, fn):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


def _encoder(seed=3):
    return _seeded(seed, lambda: build_encoder("tiny")).eval()


def _head(width=192, names=CLASSES, seed=4):
    head = _seeded(seed, lambda: LinearSemanticHead(width, names))
    with torch.no_grad():
        head.seg_head.weight.mul_(50.0)  # confident, so labels differ from the seeded random head's
    return head.eval()


def _translator(width=192, seed=5):
    tr = _seeded(seed, lambda: Translator(width, 384, ST_NAME, temperature=0.05))
    tr.set_feature_stats(torch.randn(100, width, generator=torch.Generator().manual_seed(seed)) * 3 + 1)
    return tr.eval()


def _frames(n=2, points=3000, seed=0):
    """Synthetic lifted frames: a floor and a wall of coloured points (odom, metres), moving
    3 cm per frame."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        u = rng.random((points, 2)).astype(np.float32)
        half = points // 2
        floor = np.c_[u[:half] * [1.2, 0.9], np.zeros(half)]
        wall = np.c_[u[half:, :1] * 1.2, np.full((points - half, 1), 0.9), u[half:, 1:] * 0.8]
        pts = (np.concatenate([floor, wall]) + [0.03 * i, 0.0, 0.0]).astype(np.float32)
        col = rng.integers(0, 255, (points, 3), dtype=np.uint8)
        out.append(PointFrame(stamp_ns=1_000_000_000 + i * 100_000_000, points=pts, colors=col, frame_id="odom"))
    return out


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread (restored afterwards): the tiny models are faster so, and much faster
    when other jobs hold the second core (results do not depend on the thread count)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _run(pipe, frames):
    result = None
    for f in frames:
        result = pipe.process_points(f)
    return result


def _cfg(**overrides):
    """The shipped config with the seeded random models (``model.bundle: ""``), plus overrides."""
    return load_config(default_config_path(), {"model.bundle": "", **{k.replace("__", "."): v
                                                                       for k, v in overrides.items()}})


def _tensors(obj, prefix=""):
    """``{dotted path: tensor}`` of every tensor in a nested dict."""
    out = {}
    if torch.is_tensor(obj):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


@pytest.fixture(scope="module")
def full_bundle():
    """Concerto tiny (192-d concat3) + Cross4D tiny (32-d) + a 224-d head and translator."""
    c4 = build_cross4d("tiny", seed=1, point_channels=3)
    return bundle_from_parts(encoder=_encoder(), cross4d=c4, head=_head(224), translator=_translator(224),
                             cross4d_settings={"num_frames": 2, "points_per_frame": 256},
                             vocabulary=["floor", "wall"], voxel_size=0.02,
                             metadata={"description": "test bundle", "metrics": {"miou": 0.5}})


# ------------------------------------------------------------------------------- file format
def test_round_trip_keeps_every_tensor_and_field(tmp_path, full_bundle):
    b = full_bundle
    assert b.feature_dims == {"concerto": 192, "cross4d": 32}
    assert b.text_encoder == "sentence-transformers" and b.text_model == ""
    assert b.components() == ["concerto", "cross4d", "head", "translator", "vocabulary"]
    path = save_bundle(b, tmp_path / "sub" / "b.pt")
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain dicts, lists, tensors, str only
    assert raw["format"] == FORMAT and raw["version"] == VERSION and raw["storage"] == "float32"
    assert not (tmp_path / "sub" / "b.pt.tmp").exists()
    b2 = load_bundle(path)
    for name in ("feature", "text_encoder", "text_model", "vocabulary", "voxel_size", "use_color", "metadata"):
        assert getattr(b2, name) == getattr(b, name), name
    assert b2.cross4d_settings == {"num_frames": 2, "points_per_frame": 256, "average": "points"}
    assert b2.head["config"]["feature_dims"] == {"concerto": 192, "cross4d": 32}
    for part in ("encoder", "cross4d", "head", "translator"):
        before, after = _tensors(getattr(b, part)), _tensors(getattr(b2, part))
        assert before.keys() == after.keys() and len(before) > 1, part
        for k in before:
            assert torch.equal(before[k], after[k]), f"{part}.{k}"


def test_half_storage_halves_the_file_and_loads_as_float32(tmp_path, full_bundle):
    full = save_bundle(full_bundle, tmp_path / "full.pt")
    half = save_bundle(full_bundle, tmp_path / "half.pt", half=True)
    assert torch.load(half, weights_only=True)["storage"] == "float16"
    ratio = half.stat().st_size / full.stat().st_size
    assert 0.45 < ratio < 0.6, ratio
    b = load_bundle(half)
    for part in ("encoder", "cross4d"):
        ref = _tensors(getattr(full_bundle, part))
        for k, t in _tensors(getattr(b, part)).items():
            if ref[k].is_floating_point():
                assert t.dtype == torch.float32, k
                torch.testing.assert_close(t, ref[k], rtol=1e-3, atol=1e-4)
    # head and translator stay float32 and exact
    for k, t in _tensors(b.translator).items():
        assert torch.equal(t, _tensors(full_bundle.translator)[k]), k


def test_wrong_format_newer_version_and_missing_file(tmp_path, full_bundle):
    head_file = save_head(_head(), tmp_path / "head.pt")
    with pytest.raises(BundleError, match=r"not a concerto_ros model bundle.*linear head \(head.checkpoint\)"):
        load_bundle(head_file)
    _translator().save(tmp_path / "tr.pt")
    with pytest.raises(BundleError, match=r"translator file \(language.translator\)"):
        load_bundle(tmp_path / "tr.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(BundleError, match="cannot read model bundle .*junk.pt"):
        load_bundle(tmp_path / "junk.pt")
    save_bundle(full_bundle, tmp_path / "b.pt")
    raw = torch.load(tmp_path / "b.pt", weights_only=True)
    raw["version"] = VERSION + 1
    torch.save(raw, tmp_path / "newer.pt")
    with pytest.raises(BundleError, match=rf"newer.pt has version {VERSION + 1}.*reads up to version {VERSION}"):
        load_bundle(tmp_path / "newer.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_bundle(tmp_path / "missing.pt")


@pytest.mark.parametrize("change, message", [
    (dict(encoder=None, cross4d=None), "holds no encoder"),
    (dict(feature="levels"), "unknown feature layout 'levels'"),
    (dict(voxel_size=0.0), "voxel_size must be a positive"),
    (dict(head="narrow"), r"the head reads 100-d features but the bundle's encoders give 192-d"),
    (dict(head="dims"), r"trained on fused features \{'concerto': 192, 'cross4d': 8\}"),
    (dict(translator="narrow"), r"the translator reads 100-d features"),
    (dict(text_encoder="open_clip"), "fitted for text encoder 'sentence-transformers:all-MiniLM-L6-v2' but "
                                     "text_encoder is 'open_clip'"),
    (dict(translator=None), r"has a vocabulary \['floor'\] but no translator"),
    (dict(encoder="shapes"), "the Concerto encoder's tensors do not fit its config"),
])
def test_inconsistent_bundles_are_refused_on_save_and_load(tmp_path, change, message):
    b = bundle_from_parts(encoder=_encoder(), head=_head(), translator=_translator(), vocabulary=["floor"])
    for key, value in change.items():
        if value == "narrow":
            value = bundle_from_parts(encoder=_encoder(), head=_head(100), translator=_translator(100)).__dict__[key]
        elif value == "dims":
            value = dict(b.head, config={**b.head["config"], "feature_dims": {"concerto": 192, "cross4d": 8}})
        elif value == "shapes":
            sd = dict(b.encoder["state_dict"])
            sd["embedding.stem.linear.weight"] = torch.zeros(3, 3)
            value = {"config": b.encoder["config"], "state_dict": sd}
        setattr(b, key, value)
    with pytest.raises(BundleError, match=message):
        save_bundle(b, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()
    # the same content written around save_bundle is refused when loading, naming the file
    payload = {"format": FORMAT, "version": VERSION, **b.__dict__}
    torch.save(payload, tmp_path / "forged.pt")
    with pytest.raises(BundleError, match=f"model bundle {tmp_path / 'forged.pt'}: .*{message}"):
        load_bundle(tmp_path / "forged.pt")


def test_describe_lists_components():
    b = bundle_from_parts(encoder=_encoder(), head=_head(), translator=_translator(), vocabulary=["floor", "wall"],
                          voxel_size=0.05, metadata={"description": "kitchen", "command": "concerto train probe",
                                                     "metrics": {"test_miou": 0.75, "note": "x"}})
    rows = dict(b.describe())
    assert rows["description"] == "kitchen" and rows["command"] == "concerto train probe"
    assert rows["Concerto encoder"].startswith("preset tiny, channels [16, 32, 48, 64, 80]")
    assert rows["feature"] == "concat3 (192-d)" and rows["Cross4D encoder"] == "none"
    assert rows["semantic head"] == "3 classes: floor, wall, thing"
    assert rows["translator"].startswith("192-d -> 384-d (sentence-transformers:all-MiniLM-L6-v2)")
    assert rows["vocabulary"] == "floor, wall" and rows["voxel size"] == "0.05 m"
    assert rows["metric test_miou"] == "0.7500" and "metric note" not in rows and rows["created"]


# ------------------------------------------------------------------------------- the pipeline
def test_pipeline_from_bundle_equals_pipeline_from_separate_files(tmp_path):
    enc, head = _encoder(), _head()
    save_encoder(enc, tmp_path / "enc.pth")
    save_head(head, tmp_path / "head.pt", feature_dims={"concerto": 192, "cross4d": 0})
    separate = {"model__checkpoint": str(tmp_path / "enc.pth"), "head__checkpoint": str(tmp_path / "head.pt")}
    b = bundle_from_parts(encoder=enc, head=head, metadata={"description": "enc + head"})
    save_bundle(b, tmp_path / "b.pt")
    notes = []
    from_bundle = PerceptionPipeline(_cfg(model__bundle=str(tmp_path / "b.pt")), log=notes.append)
    from_files = PerceptionPipeline(_cfg(**separate), log=None)
    assert any(f"model bundle {tmp_path / 'b.pt'}: enc + head | components concerto, head" in n for n in notes)
    assert from_bundle.bundle is not None and from_files.bundle is None
    frames = _frames()
    r1, r2 = _run(from_bundle, frames), _run(from_files, frames)
    assert torch.equal(r1.features, r2.features)
    np.testing.assert_array_equal(r1.labels, r2.labels)
    np.testing.assert_array_equal(r1.confidence, r2.confidence)
    assert r1.class_names == CLASSES and len(np.unique(r1.labels)) > 1
    # and not what the seeded random defaults give
    default = _run(PerceptionPipeline(_cfg(), log=None), frames)
    assert not torch.equal(default.features, r1.features)
    # the bundle written back from the running pipeline is the same bundle
    again = bundle_from_pipeline(from_bundle)
    assert again.head is not None and again.metadata["parent_bundle"] == str(tmp_path / "b.pt")
    for part in ("encoder", "head"):
        ref = _tensors(getattr(b, part))
        assert all(torch.equal(t, ref[k]) for k, t in _tensors(getattr(again, part)).items())


def test_pipeline_carries_only_trained_heads_into_bundles(tmp_path):
    random_head = PerceptionPipeline(_cfg(), log=None)
    assert random_head.head.origin == "" and bundle_from_pipeline(random_head).head is None
    save_head(_head(), tmp_path / "head.pt")
    trained = PerceptionPipeline(_cfg(head__checkpoint=str(tmp_path / "head.pt")), log=None)
    b = bundle_from_pipeline(trained, metadata={"description": "x"})
    assert b.class_names == CLASSES and b.metadata["sources"]["head"] == str(tmp_path / "head.pt")
    assert b.metadata["sources"]["encoder"].startswith("SEEDED RANDOM 'tiny' encoder")
    assert b.voxel_size == 0.02 and b.translator is None and b.components() == ["concerto", "head"]


@pytest.mark.skipif(not HAVE_ST, reason="sentence-transformers not installed (scripts/setup.sh)")
def test_pipeline_from_bundle_with_translator_equals_separate_files(tmp_path):
    enc, head, tr = _encoder(), _head(), _translator()
    save_encoder(enc, tmp_path / "enc.pth")
    save_head(head, tmp_path / "head.pt")
    tr.save(tmp_path / "tr.pt")
    save_bundle(bundle_from_parts(encoder=enc, head=head, translator=tr, vocabulary=["floor", "wall"]),
                tmp_path / "b.pt")
    frames = _frames()
    from_bundle = PerceptionPipeline(_cfg(model__bundle=str(tmp_path / "b.pt")), log=None)
    from_files = PerceptionPipeline(_cfg(model__checkpoint=str(tmp_path / "enc.pth"),
                                         head__checkpoint=str(tmp_path / "head.pt"),
                                         language__translator=str(tmp_path / "tr.pt"),
                                         language__vocabulary=["floor", "wall"]), log=None)
    r1, r2 = _run(from_bundle, frames), _run(from_files, frames)
    assert r1.class_names == r2.class_names == ["floor", "wall"]  # the bundle's vocabulary
    np.testing.assert_array_equal(r1.text_embeddings, r2.text_embeddings)
    np.testing.assert_array_equal(r1.labels, r2.labels)
    _, q1 = from_bundle.query("wall")
    _, q2 = from_files.query("wall")
    np.testing.assert_array_equal(q1.relevance, q2.relevance)
    # language.vocabulary, when set, wins over the bundle's
    own = PerceptionPipeline(_cfg(model__bundle=str(tmp_path / "b.pt"), language__vocabulary=["thing"]), log=None)
    assert _run(own, frames[:1]).class_names == ["thing"]
    assert own.language.backend == "sentence-transformers"


def test_cross4d_only_bundle_runs_without_concerto(tmp_path):
    c4 = build_cross4d("tiny", seed=2, point_channels=3)
    save_bundle(bundle_from_parts(cross4d=c4, cross4d_settings={"num_frames": 2, "points_per_frame": 128}),
                tmp_path / "c4.pt")
    notes = []
    pipe = PerceptionPipeline(_cfg(model__bundle=str(tmp_path / "c4.pt"), model__enabled=False), log=notes.append)
    assert pipe.extractor is None and pipe.feature_dims == {"concerto": 0, "cross4d": 32}
    assert pipe.cross4d.num_frames == 2 and pipe.cross4d.points_per_frame == 128
    assert any("Cross4D encoder from bundle" in n for n in notes)
    r = _run(pipe, _frames())
    assert r.features.shape == (len(r.coord), 32) and pipe.head.in_channels == 32
    again = bundle_from_pipeline(pipe)
    assert again.components() == ["cross4d"] and again.cross4d_settings == {"num_frames": 2, "points_per_frame": 128,
                                                                           "average": "points"}
    assert all(torch.equal(t, c4.state_dict()[k]) for k, t in again.cross4d["state_dict"].items())
    # model.enabled: true (the default) is fine too: the bundle decides which encoders run
    assert PerceptionPipeline(_cfg(model__bundle=str(tmp_path / "c4.pt")), log=None).extractor is None


def test_bundle_without_colour_input_feeds_zeros(tmp_path):
    enc = _encoder()
    save_bundle(bundle_from_parts(encoder=enc, use_color=False), tmp_path / "nc.pt")
    frames = _frames(1)
    r = _run(PerceptionPipeline(_cfg(model__bundle=str(tmp_path / "nc.pt")), log=None), frames)
    ext = PerceptionPipeline(_cfg(model__bundle=str(tmp_path / "nc.pt")), log=None).extractor
    assert ext.use_color is False
    ref = ext.encode(r.window.coord, r.window.grid_coord, color=None)
    torch.testing.assert_close(r.features, ref)


# ------------------------------------------------------------------------------- refusals
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    out = {"enc_head": save_bundle(bundle_from_parts(encoder=_encoder(), head=_head()), root / "enc_head.pt"),
           "coarse": save_bundle(bundle_from_parts(encoder=_encoder(), voxel_size=0.05), root / "coarse.pt"),
           "enc_only": save_bundle(bundle_from_parts(encoder=_encoder()), root / "enc_only.pt"),
           "translator": save_bundle(bundle_from_parts(encoder=_encoder(), translator=_translator()),
                                     root / "tr.pt"),
           "head_file": save_head(_head(), root / "head.pt")}
    return out


@pytest.mark.parametrize("bundle, overrides, message", [
    ("enc_head", {"head.checkpoint": "HEAD"}, r"model.bundle '.*enc_head.pt' carries the encoder/head/translator, "
                                              r"but head.checkpoint: .*head.pt is also set: clear head.checkpoint, "
                                              r"or build a new bundle with `concerto bundle pack"),
    ("enc_head", {"model.checkpoint": "x.pth", "language.translator": "t.pt"},
     r"model.checkpoint: x.pth; language.translator: t.pt are also set: clear model.checkpoint, "
     r"language.translator"),
    ("enc_head", {"cross4d.checkpoint": "c.pt"}, r"clear cross4d.checkpoint"),
    ("coarse", {}, r"bundle trained at 0.05 m voxels but window.voxel_size is 0.02; set window.voxel_size: 0.05"),
    ("enc_head", {"window.voxel_size": 0.02 + 1e-6}, r"set window.voxel_size: 0.02"),
    ("enc_head", {"cross4d.enabled": True}, r"cross4d.enabled is true but the bundle has no Cross4D encoder"),
    ("enc_head", {"model.enabled": False}, r"model.enabled is false but the bundle's head reads Concerto features"),
    ("translator", {"model.enabled": False}, r"model.enabled is false but the bundle's translator reads"),
    ("enc_only", {"model.enabled": False}, r"model.enabled is false and bundle .*enc_only.pt has no Cross4D "
                                           r"encoder: no encoder to run; set model.enabled: true"),
    ("enc_head", {"model.feature": "all_levels"}, r"model.feature is 'all_levels' but the bundle's heads read "
                                                  r"'concat3'; set model.feature: concat3"),
    ("translator", {"language.text_encoder": "open_clip"},
     r"fitted with text encoder 'sentence-transformers' but language.text_encoder is 'open_clip'"),
    ("translator", {"language.text_model": "/models/other"},
     r"language.text_model is '/models/other'; clear language.text_model"),
])
def test_the_pipeline_refuses_inconsistent_settings(saved, bundle, overrides, message):
    values = {k: (str(saved["head_file"]) if v == "HEAD" else v) for k, v in overrides.items()}
    cfg = load_config(default_config_path(), {"model.bundle": str(saved[bundle]), **values})
    with pytest.raises(BundleError, match=message):
        PerceptionPipeline(cfg, log=None)


def test_missing_bundle_file_names_the_parameter(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model.bundle '.*nowhere.pt' does not exist"):
        PerceptionPipeline(_cfg(model__bundle=str(tmp_path / "nowhere.pt")), log=None)


def test_default_bundle_and_its_soft_rule(tmp_path, monkeypatch, saved):
    assert resolve_bundle_path("") is None and resolve_bundle_path("  ") is None
    assert resolve_bundle_path("~/b.pt") == Path("~/b.pt").expanduser()
    monkeypatch.setattr(bundle_mod, "DEFAULT_BUNDLE_PATH", tmp_path / "assets" / "default_bundle.pt")
    with pytest.raises(FileNotFoundError, match="model.bundle 'default': the embedded bundle .*default_bundle.pt "
                                                "is not installed"):
        resolve_bundle_path("default")
    with pytest.raises(FileNotFoundError, match="embedded bundle"):
        PerceptionPipeline(_cfg(model__bundle="default"), log=None)
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "default_bundle.pt").write_bytes(saved["enc_head"].read_bytes())
    assert resolve_bundle_path("default") == tmp_path / "assets" / "default_bundle.pt"
    pipe = PerceptionPipeline(_cfg(model__bundle="default"), log=None)
    assert pipe.bundle is not None and pipe.head.class_names == CLASSES
    # explicit component files win over the default bundle, which is then not used at all
    notes = []
    soft = PerceptionPipeline(_cfg(model__bundle="default", head__checkpoint=str(saved["head_file"])),
                              log=notes.append)
    assert soft.bundle is None and soft.head.origin == str(saved["head_file"])
    assert any("model.bundle 'default' is not used: explicit model files are set (head.checkpoint:" in n
               for n in notes)
    plain = PerceptionPipeline(_cfg(head__checkpoint=str(saved["head_file"])), log=None)
    frames = _frames(1)
    assert torch.equal(_run(soft, frames).features, _run(plain, frames).features)
    # even when the embedded file is missing
    (tmp_path / "assets" / "default_bundle.pt").unlink()
    assert PerceptionPipeline(_cfg(model__bundle="default", model__checkpoint="", head__checkpoint=str(
        saved["head_file"])), log=None).bundle is None


def test_bundle_parameter_is_declared_read_only():
    pytest.importorskip("rclpy")
    from concerto_ros.config import SPECS
    from concerto_ros.ros.params import RUNTIME_PARAMETERS, descriptor

    spec = SPECS["model.bundle"]
    assert spec.default == "default" and spec.type is str and "model.bundle" not in RUNTIME_PARAMETERS
    d = descriptor(spec)
    assert d.read_only and "default" in d.description and "(Read at start-up.)" in d.description


# ------------------------------------------------------------------------------- CLI
def test_info_bundle_prints_the_table_and_fails_clearly(tmp_path, saved, capsys):
    assert main(["info", "--bundle", str(saved["enc_head"])]) == 0
    out = capsys.readouterr().out
    assert "model bundle" in out and "preset tiny" in out and "3 classes: floor, wall, thing" in out
    assert "0.02 m" in out
    assert main(["info", "--bundle", str(saved["head_file"])]) == 1
    err = capsys.readouterr().err
    assert "is not a concerto_ros model bundle" in err and "linear head" in err
    assert main(["info", "--bundle", str(tmp_path / "none.pt")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_bundle_pack_assembles_separate_files(tmp_path, capsys):
    enc = _encoder()
    save_encoder(enc, tmp_path / "enc.pth")
    head = _head()
    torch.save({"config": {"backbone_out_channels": 192, "num_classes": 3},
                "state_dict": {k: v.clone() for k, v in head.state_dict().items()}}, tmp_path / "released_head.pth")
    out = tmp_path / "packed.pt"
    code = main(["bundle", "pack", "--encoder", str(tmp_path / "enc.pth"), "--head", str(tmp_path / "released_head.pth"),
                 "--class-names", "floor,wall,thing", "--voxel-size", "0.03", "--description", "packed test",
                 "-o", str(out)])
    assert code == 0, capsys.readouterr()
    assert f"wrote {out} (concerto, head)" in capsys.readouterr().out
    b = load_bundle(out)
    assert b.class_names == CLASSES and b.voxel_size == 0.03 and b.metadata["description"] == "packed test"
    assert b.metadata["command"].startswith("concerto bundle pack --encoder ")
    assert torch.equal(b.encoder["state_dict"]["embedding.stem.linear.weight"],
                       enc.state_dict()["embedding.stem.linear.weight"])
    # a head that does not fit the encoder's feature: refused, nothing written
    code = main(["bundle", "pack", "--encoder", str(tmp_path / "enc.pth"), "--feature", "all_levels",
                 "--head", str(tmp_path / "released_head.pth"), "--class-names", "a,b,c", "-o", str(tmp_path / "x.pt")])
    assert code == 1 and not (tmp_path / "x.pt").exists()
    assert "the head reads 192-d features but the bundle's encoders give 240-d" in capsys.readouterr().err
    assert main(["bundle", "pack", "-o", str(tmp_path / "y.pt")]) == 1
    assert "--encoder and/or --cross4d" in capsys.readouterr().err


def test_empty_model_bundle_dataclass_defaults():
    b = ModelBundle()
    assert b.feature_dims == {"concerto": 0, "cross4d": 0} and b.components() == [] and b.class_names == []
    with pytest.raises(BundleError, match="model bundle x.pt: holds no encoder"):
        b.validate("x.pt")
