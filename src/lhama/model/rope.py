"""Rotary position embeddings in Meta's layout: channels (2i, 2i+1) of each head form a pair.

GGUF files store Q/K rows in this layout; Hugging Face checkpoints use "rotate half" (pair i
with i + head_dim/2) and are permuted on load (see ``lhama.checkpoints.hf``).
"""

from __future__ import annotations

import math

import torch

from lhama.model.args import ModelArgs, RopeScaling


def apply_llama3_rope_scaling(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Llama 3.1 rule: keep high frequencies, divide low ones by ``factor``, blend between."""
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = s.original_context / s.low_freq_factor
    high_freq_wavelen = s.original_context / s.high_freq_factor
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * scaled / s.factor + smooth * scaled
    in_band = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(in_band, blended, scaled)


def rope_inv_freq(args: ModelArgs) -> torch.Tensor:
    hd = args.head_dim
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    if args.rope_scaling is not None:
        inv_freq = apply_llama3_rope_scaling(inv_freq, args.rope_scaling)
    return inv_freq


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape ``positions.shape + (head_dim/2,)``, computed in fp32 like the reference."""
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq.to(positions.device)
    return torch.cos(angles), torch.sin(angles)


def rope_rotation(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The unit complex numbers ``cos + i sin`` [B, T, 1, D/2] that ``rotate`` multiplies by
    (computed once per forward, shared by every layer)."""
    return torch.complex(cos, sin).unsqueeze(2)


def rotate(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """``x`` [B, T, H, D] rotated by ``rotation`` (``rope_rotation``): a complex multiply per
    channel pair, (x0 + i x1)(cos + i sin), in fp32; the result has x's dtype."""
    xc = torch.view_as_complex(x.float().contiguous().unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * rotation).flatten(-2).type_as(x)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, T, H, D] by the angles of its positions (cos/sin are [B, T, D/2])."""
    # Three kernels instead of the ~9 of the written-out real form (the decode step runs this
    # for every layer).
    return rotate(x, rope_rotation(cos, sin))
