"""The Llama transformer (Llama 2, 3, 3.1, 3.2): one definition for inference and training.

Parameter names follow Meta's checkpoints (``tok_embeddings``, ``layers.N.attention.wq``,
``feed_forward.w1`` ...) so ``consolidated.*.pth`` loads as is and the reference model in
``llama_models/llama3/model.py`` accepts our state dict.
"""

from __future__ import annotations

import torch
from torch import nn

from lhama.model.args import ModelArgs
from lhama.model.fused import (
    add_rms_norm,
    fused_ops,
    linear_input_dtype,
    residual_add,
    rms_norm,
    rope_qkv,
    silu_mul,
    silu_mul_split,
)
from lhama.model.kv_cache import AttentionCache, causal_attention
from lhama.model.rope import rope_cos_sin, rope_inv_freq, rope_rotation, rotate


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, dtype: torch.dtype | None = None, ops=None) -> torch.Tensor:
        """Normalised in fp32 whatever x's dtype, as the reference does; rounded to ``dtype`` (the
        next matmul's) when given. ``ops``: ``lhama.model.fused.fused_ops(x)``."""
        return rms_norm(x, self.weight, self.eps, dtype, ops)

    def add_forward(self, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None = None, ops=None):
        """``(x + y, self(x + y))``: a residual add and the norm after it (one op in a decode step)."""
        return add_rms_norm(x, y, self.weight, self.eps, dtype, ops)


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

    def input_dtype(self, default: torch.dtype) -> torch.dtype:
        """The dtype the q/k/v matmul computes in (the norm before it rounds straight to it)."""
        return linear_input_dtype(self.wqkv if self.wqkv is not None else self.wq, default)

    def forward(
        self, x, rotation, cache: AttentionCache | None, dtype: torch.dtype | None = None, ops=None
    ) -> torch.Tensor:
        """``x``: the normed input; ``rotation``: RoPE's ``rope_rotation`` for its positions;
        ``dtype``: the residual stream's (default x's), which q, k, v and the result are in;
        ``ops``: ``lhama.model.fused.fused_ops`` of the residual stream."""
        B, T, _ = x.shape
        H, KVH, D = self.n_heads, self.n_kv_heads, self.head_dim
        dtype = dtype or x.dtype
        if self.wqkv is not None:
            q, k, v = rope_qkv(self.wqkv(x), rotation, H, KVH, dtype, ops)
        else:
            q = rotate(self.wq(x).view(B, T, H, D).to(dtype), rotation)
            k = rotate(self.wk(x).view(B, T, KVH, D).to(dtype), rotation)
            v = self.wv(x).view(B, T, KVH, D).to(dtype)
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

    def input_dtype(self, default: torch.dtype) -> torch.dtype:
        return linear_input_dtype(self.w13 if self.w13 is not None else self.w1, default)

    def forward(self, x: torch.Tensor, dtype: torch.dtype | None = None, ops=None) -> torch.Tensor:
        """``x``: the normed input; ``dtype``: the residual stream's (default x's), in which
        silu(gate) * up is computed. The result comes in w2's output dtype."""
        dtype = dtype or x.dtype
        hidden_dtype = linear_input_dtype(self.w2, dtype)
        if self.w13 is not None:
            return self.w2(silu_mul(self.w13(x), hidden_dtype, dtype, ops))
        return self.w2(silu_mul_split(self.w1(x), self.w3(x), hidden_dtype, dtype))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int):
        super().__init__()
        self.attention = Attention(args, layer_id)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, rotation, cache):
        # Each norm rounds straight to the dtype its matmul computes in (bf16 for the quantized
        # linears), and the matmuls' results are read in that dtype: no casts around the kernels.
        # ``ops``: the fused C++ ops of a CPU decode step, or None (PyTorch; see lhama.model.fused).
        ops = fused_ops(x)
        attn, ffn = self.attention, self.feed_forward
        a = attn(self.attention_norm(x, attn.input_dtype(x.dtype), ops), rotation, cache, x.dtype, ops)
        h, normed = self.ffn_norm.add_forward(x, a, ffn.input_dtype(x.dtype), ops)
        return residual_add(h, ffn(normed, x.dtype, ops))


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
        return self.norm(h, ops=fused_ops(h))

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
