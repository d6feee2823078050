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
    integer_rows_now,
    linear_input_dtype,
    residual_add,
    rms_norm,
    rope_qkv,
    silu_mul,
    silu_mul_split,
)
from lhama.model.kv_cache import AttentionCache, causal_attention
from lhama.model.rope import rope_cos_sin, rope_inv_freq, rope_rotation, rotate

# Bumped whenever a block's projections or norms are replaced or the model's tensors move: the
# whole-step decode op's plan (``Transformer.decode_plan``) is rebuilt then.
_PLAN_VERSION = [0]
_PROJECTIONS = frozenset({"wq", "wk", "wv", "wo", "wqkv", "w1", "w2", "w3", "w13", "weight"})


def invalidate_decode_plans() -> None:
    """Make every model rebuild its decode plan on its next step: for code that swaps tensors a
    plan holds (``lhama.checkpoints.quantized`` moving block buffers into anonymous memory)."""
    _PLAN_VERSION[0] += 1


class _Replaceable(nn.Module):
    def __setattr__(self, name, value):
        if name in _PROJECTIONS:
            _PLAN_VERSION[0] += 1
        super().__setattr__(name, value)


class RMSNorm(_Replaceable):
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


class Attention(_Replaceable):
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


class FeedForward(_Replaceable):
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
        _PLAN_VERSION[0] += 1
        self.__dict__.pop("_rope_table", None)
        return self

    def rotation(self, positions: torch.Tensor) -> torch.Tensor:
        """RoPE's ``rope_rotation`` [B, T, 1, D/2] for ``positions`` [B, T]. On a CPU, rows of a
        table computed once and grown by doubling: one indexing call per forward instead of
        seven. Its cos and sin are taken in float64 and rounded (within an ulp of fp32's), so a
        position's row never depends on the table's size or the thread count (fp32 cos/sin
        round the vectorized body and the scalar tail of a call differently)."""
        if not positions.is_cpu or torch.compiler.is_compiling():
            return rope_rotation(*rope_cos_sin(self.inv_freq, positions))
        table = self.__dict__.get("_rope_table")
        if table is not None:
            try:
                return table[positions].unsqueeze(2)
            except IndexError:  # a position past the table: grow it
                pass
        n = max(256, 2 * (table.shape[0] if table is not None else 0), int(positions.max()) + 1)
        angles = (torch.arange(n, dtype=torch.float32).unsqueeze(-1) * self.inv_freq.cpu()).double()
        table = torch.complex(torch.cos(angles).float(), torch.sin(angles).float())
        self.__dict__["_rope_table"] = table
        return table[positions].unsqueeze(2)

    def decode_plan(self):
        """What the whole-step decode op (``lhama_decode::decode_layers``) needs of the blocks, or
        None when a block is not of the shape it computes: every projection fused (``wqkv``,
        ``w13``) GGUF ``BlockLinear`` blocks on the CPU, alone or with a ``FixedLoraLinear``
        adapter beside it, fp32 norms, no hooks. Built once, rebuilt when a module is replaced."""
        got = self.__dict__.get("_decode_plan")
        if got is not None and got[0] == _PLAN_VERSION[0]:
            return got[1]
        version = _PLAN_VERSION[0]  # before building: a swap during the build makes it stale
        plan = _build_decode_plan(self)
        self.__dict__["_decode_plan"] = (version, plan)
        return plan

    def _fused_layers(self, h: torch.Tensor, rotation: torch.Tensor, cache) -> torch.Tensor | None:
        """All blocks in one C++ call for a step of single-token rows on the CPU (the same ops,
        in the same order, as the module path: the same bits), or None when the step, the cache
        or the model does not qualify."""
        ops = fused_ops(h)
        args_of = getattr(cache, "decode_layers_args", None)
        if ops is None or args_of is None or not hasattr(ops, "decode_layers"):
            return None
        plan = self.decode_plan()
        if plan is None:
            return None
        cargs = args_of(h)
        if cargs is None:
            return None
        weights, ints = plan
        a = self.args
        kcs, vcs, pos, slots, tables, lens = cargs
        return ops.decode_layers(
            h,
            rotation,
            weights,
            ints,
            a.norm_eps,
            a.n_heads,
            a.n_kv_heads,
            kcs,
            vcs,
            pos,
            slots,
            tables,
            lens,
            integer_rows_now(),
        )

    def hidden_states(self, tokens: torch.Tensor, positions: torch.Tensor, cache: AttentionCache | None = None):
        """Final-norm hidden states [B, T, dim] for ``tokens`` [B, T] at ``positions`` [B, T]."""
        h = self.tok_embeddings(tokens)
        rotation = self.rotation(positions)
        if cache is not None and not torch.is_grad_enabled():
            fast = self._fused_layers(h, rotation, cache)
            if fast is not None:
                return self.norm(fast, ops=fused_ops(fast))
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


def _projection_spec(mod):
    """(ggml type, block tensors, lora a, lora b_t, spans) of a GGUF block linear, alone or under a
    ``FixedLoraLinear``; None for any other module."""
    from lhama.model.lora_batch import FixedLoraLinear
    from lhama.quant import blocks as qb

    a = bt = None
    spans: list[int] = []
    if type(mod) is FixedLoraLinear:
        w = mod.op_weights()
        if mod._forward_hooks or mod._forward_pre_hooks or w is None:
            return None
        (a, bt), spans = w, mod.spans
        mod = mod.base
    if type(mod) not in (qb.BlockLinear, getattr(qb, "BlockLinearParts", None)) or mod.qtype not in qb.BLOCK_TYPES:
        return None
    parts = list(getattr(mod, "parts", None) or [mod.blocks])
    if mod._forward_hooks or mod._forward_pre_hooks or not all(p.is_cpu for p in parts):
        return None
    return mod.qtype, parts, a, bt, spans


def _build_decode_plan(model: Transformer):
    """(weights, ints) for ``lhama_decode::decode_layers``, or None (see ``Transformer.decode_plan``)."""
    weights: list[torch.Tensor] = []
    ints: list[int] = []
    none = torch.empty(0)
    eps = model.args.norm_eps
    for layer in model.layers:
        attn, ffn = layer.attention, layer.feed_forward
        norms = (layer.attention_norm, layer.ffn_norm)
        if any(m._forward_hooks or m._forward_pre_hooks for m in (layer, attn, ffn, *norms)):
            return None
        if any(n.eps != eps or n.weight.dtype != torch.float32 or not n.weight.is_cpu for n in norms):
            return None
        if attn.wqkv is None or ffn.w13 is None:
            return None
        specs = [_projection_spec(m) for m in (attn.wqkv, attn.wo, ffn.w13, ffn.w2)]
        if any(s is None for s in specs):
            return None
        weights += [n.weight.detach() for n in norms]
        for qtype, parts, a, bt, spans in specs:
            weights += [*parts, none, none] if a is None else [*parts, a, bt]
            ints += [qtype, len(parts), len(spans) // 4, *spans]
    return weights, ints


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
