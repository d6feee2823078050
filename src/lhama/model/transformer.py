"""The Llama transformer (Llama 2, 3, 3.1, 3.2): one definition for inference and training.

Parameter names follow Meta's checkpoints (``tok_embeddings``, ``layers.N.attention.wq``,
``feed_forward.w1`` ...) so ``consolidated.*.pth`` loads as is and the reference model in
``llama_models/llama3/model.py`` accepts our state dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lhama.model.args import ModelArgs
from lhama.model.kv_cache import AttentionCache, causal_attention
from lhama.model.rope import rope_cos_sin, rope_inv_freq, rope_rotation, rotate


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 whatever the activation dtype, as the reference does (one fused op
        # instead of five: pow, mean, add, rsqrt, mul).
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            # The same arithmetic with the weight inside the op: two fewer calls per norm.
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return normed.type_as(x) * self.weight


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        # Set by load-time fusion (``lhama.quant``): one module computing q|k|v in one matmul, which
        # replaces wq/wk/wv. Plain models (and training) keep the three separate linears.
        self.wqkv: nn.Module | None = None

    def forward(self, x, rotation, cache: AttentionCache | None) -> torch.Tensor:
        """``rotation``: RoPE's ``rope_rotation`` for the positions of x."""
        B, T, _ = x.shape
        H, KVH, D = self.n_heads, self.n_kv_heads, self.head_dim
        if self.wqkv is not None:
            # q and k are adjacent columns: one rotation for both (fewer calls per decode step).
            qkv = self.wqkv(x)
            qk = rotate(qkv[..., : (H + KVH) * D].view(B, T, H + KVH, D), rotation)
            # Caches flatten k and v with .view: contiguous copies (free for a single token).
            q, k = qk[:, :, :H], qk[:, :, H:].contiguous()
            v = qkv[..., (H + KVH) * D :].view(B, T, KVH, D).contiguous()
        else:
            q = rotate(self.wq(x).view(B, T, H, D), rotation)
            k = rotate(self.wk(x).view(B, T, KVH, D), rotation)
            v = self.wv(x).view(B, T, KVH, D)
        out = causal_attention(q, k, v) if cache is None else cache.attend(self.layer_id, q, k, v)
        return self.wo(out.reshape(B, T, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)
        self.w13: nn.Module | None = None  # w1 and w3 stacked, set by load-time fusion (lhama.quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w13 is not None:
            gate, up = self.w13(x).chunk(2, dim=-1)
            return self.w2(F.silu(gate) * up)
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int):
        super().__init__()
        self.attention = Attention(args, layer_id)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, rotation, cache):
        h = x + self.attention(self.attention_norm(x), rotation, cache)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.register_buffer("inv_freq", rope_inv_freq(args), persistent=False)
        # Set by training recipes: recompute each block in backward instead of storing activations.
        self.gradient_checkpointing = False

    def _apply(self, fn, recurse=True):
        # RoPE frequencies stay fp32 whatever dtype the weights are cast to (bf16 would round
        # them and shift every angle); they are recomputed on the module's new device.
        super()._apply(fn, recurse)
        self.inv_freq = rope_inv_freq(self.args).to(self.tok_embeddings.weight.device)
        return self

    def hidden_states(self, tokens: torch.Tensor, positions: torch.Tensor, cache: AttentionCache | None = None):
        """Final-norm hidden states [B, T, dim] for ``tokens`` [B, T] at ``positions`` [B, T]."""
        h = self.tok_embeddings(tokens)
        rotation = rope_rotation(*rope_cos_sin(self.inv_freq, positions))
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                h = torch.utils.checkpoint.checkpoint(layer, h, rotation, cache, use_reentrant=False)
            else:
                h = layer(h, rotation, cache)
        return self.norm(h)

    def forward(
        self,
        tokens: torch.Tensor,
        start_pos: int = 0,
        cache: AttentionCache | None = None,
        *,
        positions: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (fp32) for every position, or only the last one with ``last_only``."""
        if positions is None:
            T = tokens.shape[1]
            positions = torch.arange(start_pos, start_pos + T, device=tokens.device).expand(tokens.shape[0], T)
        h = self.hidden_states(tokens, positions, cache)
        if last_only:
            h = h[:, -1:]
        return self.output(h).float()

    @property
    def device(self) -> torch.device:
        return self.tok_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tok_embeddings.weight.dtype


def build_model(
    args: ModelArgs, *, dtype=torch.float32, device="cpu", init: str = "empty", seed: int = 0
) -> Transformer:
    """Instantiate a model. ``init="empty"`` leaves weights for a checkpoint to fill (fast, no RAM
    touched twice); ``init="random"`` gives small random weights for tests and configs by name."""
    with torch.device("meta"):
        model = Transformer(args)
    model = model.to_empty(device=device).to(dtype)
    if args.tie_embeddings:  # to_empty materialises each reference separately; tie them again
        model.output.weight = model.tok_embeddings.weight
    if init == "random":
        # Drawn on the target device: an 8B model's 8e9 samples take minutes on a CPU generator.
        gen = torch.Generator(device=device).manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen, device=device, dtype=torch.float32).mul_(0.02))
    return model
