"""Text embeddings from the Llama transformer itself: the mean over positions of the final
(normed) hidden states, scaled to unit length.

A chat model is not trained for retrieval, so these vectors are a convenience (similarity of
paraphrases, clustering), not a match for a dedicated embedding model. One sequence per call,
so no padding can leak into the mean. Served by ``/v1/embeddings`` and used by RAG's
``model:<spec>`` embedder: both get the same vectors.
"""

from __future__ import annotations

import torch


@torch.inference_mode()
def mean_pooled_embedding(model, ids: list[int]) -> torch.Tensor:
    """Unit-length float32 vector [dim] (on the CPU) for token ids ``ids``."""
    tokens = torch.tensor([ids], dtype=torch.long, device=model.device)
    positions = torch.arange(len(ids), device=model.device).unsqueeze(0)
    h = model.hidden_states(tokens, positions).float()[0].mean(0)
    return torch.nn.functional.normalize(h, dim=0).cpu()
