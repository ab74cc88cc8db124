"""Language grounding of point features (Concerto's "translator", arXiv 2510.23607).

* :mod:`.text_encoders`: text -> unit-norm embeddings (sentence-transformers all-MiniLM-L6-v2
  bundled offline by default; open_clip CLIP text towers from local checkpoints).
* :mod:`.translator`: the linear map from point features to the text space, fitted with
  labels (cosine softmax) or label-free (cosine regression of per-point targets).
* :mod:`.query`: LERF-style relevance of points to a text, top-k, centroid, and
  open-vocabulary labels (OpenScene-style argmax over class names).
* NYU40 class names and evaluation synonyms: :mod:`concerto_ros.recordings.labels` (``config/labels/nyu40.yaml``).

Importing this package does not import torch-heavy text backends; they load on first use.
"""

from concerto_ros.language.query import (DEFAULT_NEGATIVES, OpenVocabularyLabeler, QueryResult, TextQueryScorer,
                                         cosine_to_vocabulary, relevance, relevance_margin, score_query)
from concerto_ros.language.text_encoders import (DEFAULT_MAX_TEXT_LENGTH, DEFAULT_TEMPLATES, TEXT_ENCODER_BACKENDS,
                                                 OpenClipTextEncoder, SentenceTransformerTextEncoder, TextEncoder,
                                                 build_text_encoder, normalize_rows, validate_text)
from concerto_ros.language.translator import (FitConfig, Translator, TranslatorMismatchError, fit_translator_labels,
                                              fit_translator_targets)

__all__ = [
    "DEFAULT_NEGATIVES", "OpenVocabularyLabeler", "QueryResult", "TextQueryScorer", "cosine_to_vocabulary",
    "relevance", "relevance_margin", "score_query", "DEFAULT_MAX_TEXT_LENGTH", "DEFAULT_TEMPLATES",
    "TEXT_ENCODER_BACKENDS",
    "OpenClipTextEncoder", "SentenceTransformerTextEncoder", "TextEncoder", "build_text_encoder",
    "normalize_rows", "validate_text", "FitConfig", "Translator", "TranslatorMismatchError",
    "fit_translator_labels", "fit_translator_targets",
]
