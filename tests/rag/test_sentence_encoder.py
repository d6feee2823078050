"""The plain-PyTorch MiniLM encoder against sentence-transformers (a test extra) on the same
folder: the same vectors, batched or not, long texts cut at the same token."""

from __future__ import annotations

import numpy as np
import pytest

from lhama.errors import ConfigError
from lhama.rag.embedders import minilm_path
from lhama.rag.sentence_encoder import BertSentenceEncoder
from tests import needs

TEXTS = [
    "hello world",
    "The capital of France is Paris.",
    "ünïcödé ஆ 🦙 rare chars and Ελληνικά",
    "word " * 400,
    "",
    "  Mixed CASE text, with punctuation!? 12345",
    "def add(a, b):\n    return a + b",
]


def test_minilm_vectors_equal_sentence_transformers():
    st = needs.module("sentence_transformers")
    ref = st.SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)
    want = ref.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    enc = BertSentenceEncoder(minilm_path())
    assert (enc.dim, enc.max_tokens) == (384, ref.max_seq_length)
    got = enc.encode(TEXTS).numpy()
    assert np.abs(got - want).max() < 1e-5
    one_by_one = np.stack([enc.encode([t]).numpy()[0] for t in TEXTS])  # padding changes nothing
    assert np.abs(one_by_one - got).max() < 1e-5
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_a_folder_that_is_not_bert_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ConfigError, match="not a BERT sentence encoder"):
        BertSentenceEncoder(tmp_path)
