"""A BERT sentence encoder in plain PyTorch: what sentence-transformers computes for a folder such
as all-MiniLM-L6-v2 (a BERT model, mean pooling, unit length), without that library and the
transformers/scikit-learn/SciPy stack it pulls in.

The folder is sentence-transformers' layout: ``config.json`` + ``model.safetensors`` (BERT),
``tokenizer.json`` (WordPiece with its own normaliser and [CLS]/[SEP] template),
``sentence_bert_config.json`` (max_seq_length), ``modules.json`` (pooling, optional Normalize).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from lhama.errors import ConfigError


def _read_json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read the sentence encoder's file ({e})") from None


class BertSentenceEncoder:
    """Texts -> float32 vectors (``dim`` wide), one forward pass per call."""

    def __init__(self, folder: str | Path):
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        folder = Path(folder)
        cfg = _read_json(folder / "config.json")
        if cfg.get("model_type") != "bert" or cfg.get("hidden_act", "gelu") != "gelu":
            raise ConfigError(f"{folder}: not a BERT sentence encoder (model_type {cfg.get('model_type')!r})")
        modules = _read_json(folder / "modules.json")
        pooling_dir = next((m["path"] for m in modules if m["type"].endswith(".Pooling")), None)
        pooling = _read_json(folder / pooling_dir / "config.json") if pooling_dir else {}
        if not pooling.get("pooling_mode_mean_tokens"):
            raise ConfigError(f"{folder}: only mean pooling is supported ({pooling_dir}/config.json)")
        self.normalize = any(m["type"].endswith(".Normalize") for m in modules)
        st = _read_json(folder / "sentence_bert_config.json")
        self.max_tokens = int(min(st.get("max_seq_length", 512), cfg["max_position_embeddings"]))
        self.dim = int(cfg["hidden_size"])
        self.n_layers, self.n_heads = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_tokens)  # counts [CLS] and [SEP], like sentence-transformers
        self.tokenizer.enable_padding(pad_id=int(cfg.get("pad_token_id", 0)))
        self.w = load_file(str(folder / "model.safetensors"))

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self.w[name + ".weight"], self.w[name + ".bias"])

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, (self.dim,), self.w[name + ".weight"], self.w[name + ".bias"], self.eps)

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in enc])
        types = torch.tensor([e.type_ids for e in enc])
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.bool)
        b, t = ids.shape
        w = self.w
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:t]
            + w["embeddings.token_type_embeddings.weight"][types]
        )
        x = self._norm(x, "embeddings.LayerNorm")
        keep = mask[:, None, None, :]  # padding is never attended to
        for i in range(self.n_layers):  # post-LayerNorm blocks (BERT), exact-erf GELU
            p = f"encoder.layer.{i}."
            q, k, v = (
                self._linear(x, p + "attention.self." + n).view(b, t, self.n_heads, -1).transpose(1, 2)
                for n in ("query", "key", "value")
            )
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2).reshape(b, t, self.dim)
            x = self._norm(self._linear(a, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
            h = F.gelu(self._linear(x, p + "intermediate.dense"))
            x = self._norm(self._linear(h, p + "output.dense") + x, p + "output.LayerNorm")
        m = mask[..., None].to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled
