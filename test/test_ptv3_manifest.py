"""State-dict keys, shapes and parameter counts of the released encoder sizes.

The manifest (``../shared/golden/ptv3_state_dict_manifest.json``) lists every key and shape
of the reference ``PointTransformerV3`` for concerto_small / base / large.
"""

import json
from pathlib import Path

import pytest
import torch

from concerto_ros.models.presets import ALIASES, PRESETS, build_encoder, get_preset

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MANIFEST = SHARED / "golden" / "ptv3_state_dict_manifest.json"

SIZES = {"concerto_small": 38.6, "concerto_base": 108.5, "concerto_large": 207.7}


@pytest.fixture(scope="module")
def manifest():
    if not MANIFEST.is_file():
        pytest.skip(f"../shared/golden not found: {MANIFEST}")
    return json.loads(MANIFEST.read_text())


def _shapes(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_preset_matches_manifest_keys_and_shapes(manifest, name):
    entry = manifest[name]
    with torch.device("meta"):
        model = build_encoder(name)  # alias of small / base / large
    shapes = _shapes(model)
    expected = {k: list(v) for k, v in entry["state_dict"].items()}
    assert sorted(set(shapes) - set(expected)) == []
    assert sorted(set(expected) - set(shapes)) == []
    assert list(shapes) == list(expected), "key order follows the reference"
    assert shapes == expected
    count = sum(p.numel() for p in model.parameters())
    assert count == entry["parameters"]
    assert round(count / 1e6, 1) == SIZES[name]


@pytest.mark.parametrize("name", sorted(SIZES))
def test_manifest_config_builds_same_model(manifest, name):
    with torch.device("meta"):
        model = build_encoder(manifest[name]["config"])
    assert _shapes(model) == {k: list(v) for k, v in manifest[name]["state_dict"].items()}
    cfg = model.config
    assert cfg.enc_mode and not cfg.enable_flash and cfg.drop_path == 0.0


def test_presets_are_consistent(manifest):
    keys = (
        "in_channels",
        "order",
        "stride",
        "enc_depths",
        "enc_channels",
        "enc_num_head",
        "enc_patch_size",
        "mlp_ratio",
    )
    for name in sorted(SIZES):
        short = ALIASES[name]
        ref = manifest[name]["config"]
        cfg = PRESETS[short].config
        for key in keys:
            value = list(cfg[key]) if isinstance(cfg[key], tuple) else cfg[key]
            assert value == ref[key], key
        assert PRESETS[short].parameters == manifest[name]["parameters"]
    video = get_preset("concerto_large_video")
    assert video.config == PRESETS["large"].config
    assert video.state_dict_prefix == "module.student.backbone."
    assert ALIASES["sonata"] == "base"
    with pytest.raises(KeyError, match="unknown encoder preset 'huge'"):
        get_preset("huge")


def test_large_feature_widths():
    # README feature: last three levels; linear-probe heads: all five levels
    cfg = PRESETS["large"].config
    assert sum(cfg["enc_channels"][-3:]) == 1536
    assert sum(cfg["enc_channels"]) == 1728
    assert sum(PRESETS["base"].config["enc_channels"][-3:]) == 1088
    assert sum(PRESETS["small"].config["enc_channels"][-3:]) == 896
