"""The model runner executes a scheduled step: it builds the flattened inputs and attention
metadata, runs the model over the paged cache, and samples. It decides nothing.

Deterministic mode (``EngineConfig.deterministic``): a request's tokens and logprobs must not
depend on what else runs, on how the scheduler chunked its prompt, or on a prefix-cache hit.
Batched kernels break that: a float GEMM picks its blocking (even its kernel: GEMV at one row)
by the row count, batched attention pads keys to the longest context and a prompt chunk's
attention reduces over the chunk's end, and a prompt chunk's size depends on the token budget
the other requests left. So in this mode (``_execute_deterministic``):

* the step's tokens go through the model in forwards of exactly ``DETERMINISTIC_ROWS`` rows
  (the last padded with dummy rows that write no K/V): every matmul, norm and LoRA delta has
  one fixed shape, in which a row's result does not depend on its neighbours;
* attention is ``PagedKVCache.attend_rows``: each query row over the whole blocks up to its own
  position, with elementwise products and last-dim reductions whose length depends on the
  position alone;
* the LM head runs on fixed-size row groups too, and every sequence is sampled alone.

Then the K/V of a position depends only on the tokens up to it, whichever step, chunk or
earlier request wrote it (a prefix hit, a recomputation after preemption), and each logits row
only on the request's own tokens."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from lhama.engine.cuda_graphs import DecodeGraphs
from lhama.engine.paged_cache import AttentionMetadata, PagedKVCache, PrefillChunk, RowGroup
from lhama.engine.scheduler import ScheduledSeq, SchedulerOutput
from lhama.engine.sequence import Sequence
from lhama.generate.sampling import BatchSampler, SampleResult, with_logprobs
from lhama.model import Transformer
from lhama.quant.ggml import integer_rows


def _packed_linear(weight: torch.Tensor):
    """``x @ weight.T`` through oneDNN with the weight reordered once into its blocked layout.

    For the LM head (vocab x dim, the largest matmul of a decode step) this is 1.7-2.5x faster
    than ``F.linear`` on CPUs where MKL's sgemm is weak (AMD), for fp32 and bf16 alike. Costs a
    second copy of the head weight. None where this PyTorch build lacks the op."""
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
        probe = torch.zeros(1, weight.shape[1], dtype=weight.dtype)
        torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], "")
    except (AttributeError, RuntimeError):
        return None
    return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


# Rows per forward in deterministic mode: a fixed matmul shape (see the module's docstring).
DETERMINISTIC_ROWS = 8


class DecodeMetadata(AttentionMetadata):
    """``AttentionMetadata`` whose decode gather index and mask are built on first read: only
    the gather-and-SDPA attention reads them, while the fused CPU paths (``attend_paged_decode``,
    the whole-step ``decode_layers``) read the block tables and lengths alone. Building them
    every step cost the default model's single stream a few torch calls per token for nothing."""

    @property
    def decode_gather_idx(self) -> torch.Tensor | None:
        if self._gather is None and self._heads is not None:
            KVH = self._heads.numel()
            self._gather = (self.decode_tables.unsqueeze(1) * KVH + self._heads.view(1, KVH, 1)).flatten()
        return self._gather

    @decode_gather_idx.setter
    def decode_gather_idx(self, value: torch.Tensor | None) -> None:
        self._gather = value

    @property
    def decode_mask(self) -> torch.Tensor | None:
        if self._mask is None and self._heads is not None:
            S = self.decode_max_blocks * self._block_size
            lens = self.decode_lens
            mask = torch.arange(S, device=lens.device).unsqueeze(0) < lens.unsqueeze(1)
            self._mask = mask.view(lens.numel(), 1, 1, S)
        return self._mask

    @decode_mask.setter
    def decode_mask(self, value: torch.Tensor | None) -> None:
        self._mask = value

    def lazy_decode(self, heads: torch.Tensor, block_size: int) -> DecodeMetadata:
        """Build the gather index and mask from ``decode_tables``/``decode_lens`` when read."""
        self._heads, self._block_size = heads, block_size
        return self

    _heads: torch.Tensor | None = None
    _block_size: int = 0


@dataclass
class StepInputs:
    tokens: torch.Tensor  # [1, N]
    positions: torch.Tensor  # [1, N]
    meta: AttentionMetadata
    sample_rows: torch.Tensor  # [S] rows of the step whose logits are needed
    sample_seqs: list[Sequence]
    lora_rows: list[int] | None = None  # per-row adapter slot (lhama.model.lora_batch), 0: none
    generated_rows: int | None = None  # leading rows of generated tokens (ggml.integer_rows)
    all_rows_sample: bool = False  # sample_rows is every row in order (the head needs no gather)


class ModelRunner:
    def __init__(
        self,
        model: Transformer,
        cache: PagedKVCache,
        *,
        compile: bool = False,
        packed_head: bool = True,
        deterministic: bool = False,
    ):
        self.model = model
        self.deterministic = deterministic
        self.cache = cache
        self.device = model.device
        self.sampler = BatchSampler(model.args.vocab_size, self.device)
        self._hidden = model.hidden_states
        # Compiled only for pure-decode steps: their shapes vary in batch size and context
        # length only (dynamic dims), while prompt chunks change the Python-level structure.
        self._hidden_decode = None
        if compile:
            # The paged cache's in-place writes (index_copy_ into views of one big tensor) get
            # functionalized into copies of the whole cache per layer when traced: 7x slower than
            # eager. Attention runs eagerly; the dense parts around it are compiled.
            cache.attend = torch.compiler.disable(cache.attend)
            self._hidden_decode = torch.compile(model.hidden_states, dynamic=True)
        self._head = model.output
        # Quantized heads (lhama.quant) bring their own kernel.
        if packed_head and self.device.type == "cpu" and isinstance(model.output, torch.nn.Linear):
            self._head = _packed_linear(model.output.weight) or model.output
        self._heads = torch.arange(cache.n_kv_heads, device=self.device)
        self._head_offsets = [h * cache.block_size for h in range(cache.n_kv_heads)]
        # Set by the engine on CUDA devices (``lhama.engine.cuda_graphs``): pure-decode steps that
        # fit its buckets replay a captured graph instead of launching every kernel from Python.
        self.graphs: DecodeGraphs | None = None

    @property
    def hidden_decode_fn(self):
        return self._hidden_decode if self._hidden_decode is not None else self._hidden

    # -- inputs --------------------------------------------------------------------------
    def prepare(self, sched: SchedulerOutput) -> StepInputs:
        entries = sched.scheduled
        if all(e.num_new == 1 and e.start >= e.seq.prompt_len for e in entries):
            return self._prepare_decode(entries)
        return self._prepare_any(entries)

    def _prepare_any(self, entries: list[ScheduledSeq]) -> StepInputs:
        bs, KVH, G = self.cache.block_size, self.cache.n_kv_heads, self.cache.group
        dev = self.device
        # Single-token entries first: they share one batched attention call. Generated tokens
        # lead: their rows take the integer path of GGUF block weights and prompt rows the GEMM,
        # at any batch size, so a token's numbers do not depend on what it is batched with.
        entries = sorted(entries, key=lambda s: (s.num_new > 1, s.start < s.seq.prompt_len))
        tokens: list[int] = []
        positions: list[int] = []
        slot_base: list[int] = []
        sample_rows: list[int] = []
        sample_seqs: list[Sequence] = []
        decode: list[ScheduledSeq] = []
        prefill_specs = []
        lora_rows: list[int] = []
        generated_rows = 0
        for e in entries:
            seq, start, n = e.seq, e.start, e.num_new
            offset = len(tokens)
            tokens.extend(seq.token_ids[start : start + n])
            lora = seq.params.lora
            lora_rows.extend([lora.slot if lora is not None else 0] * n)
            table = e.blocks.block_ids
            for p in range(start, start + n):
                positions.append(p)
                slot_base.append(table[p // bs] * bs * KVH + p % bs)
            if n == 1:
                decode.append(e)
                generated_rows += start >= seq.prompt_len
            else:
                prefill_specs.append((offset, e))
            if e.samples:
                sample_rows.append(offset + n - 1)
                sample_seqs.append(seq)

        heads_stride = self._heads * bs  # storage row of (block, h, offset) = base + h * bs
        base = torch.tensor(slot_base, dtype=torch.long, device=dev)
        slots = (base.unsqueeze(1) + heads_stride).flatten()
        meta = DecodeMetadata(slots=slots, num_decode=len(decode))
        if decode:
            mb = max(-(-(e.start + 1) // bs) for e in decode)
            meta.decode_tables = torch.tensor(
                [list(e.blocks.block_ids[:mb]) + [0] * (mb - min(mb, len(e.blocks))) for e in decode],
                dtype=torch.long,
                device=dev,
            )
            meta.decode_lens = torch.tensor([e.start + 1 for e in decode], dtype=torch.long, device=dev)
            meta.decode_max_blocks = mb
            meta.lazy_decode(self._heads, bs)
        for offset, e in prefill_specs:
            ctx = e.start + e.num_new
            nb = -(-ctx // bs)
            blocks = torch.tensor(e.blocks.block_ids[:nb], dtype=torch.long, device=dev)
            idx = (self._heads.view(KVH, 1) + blocks.view(1, nb) * KVH).flatten()
            mask = torch.ones(e.num_new, ctx, dtype=torch.bool, device=dev).tril(diagonal=e.start)
            meta.prefills.append(PrefillChunk(offset, e.num_new, ctx, idx, mask.repeat(G, 1)))
        return StepInputs(
            torch.tensor(tokens, dtype=torch.long, device=dev).unsqueeze(0),
            torch.tensor(positions, dtype=torch.long, device=dev).unsqueeze(0),
            meta,
            torch.tensor(sample_rows, dtype=torch.long, device=dev),
            sample_seqs,
            lora_rows,
            generated_rows,
        )

    def _prepare_decode(self, entries: list[ScheduledSeq]) -> StepInputs:
        """``prepare`` for a step of generated tokens only (the steady state of every stream):
        the same inputs, in the scheduler's order, from one tensor built from one list (token,
        position, length, sample row of each entry, then the slots and the block tables) whose
        slices are the step's index tensors."""
        bs, KVH = self.cache.block_size, self.cache.n_kv_heads
        n = len(entries)
        mb = max(e.start for e in entries) // bs + 1  # blocks of the longest context
        toks: list[int] = []
        pos: list[int] = []
        rows: list[int] = []
        slots: list[int] = []
        tables: list[int] = []
        lora_rows: list[int] = []
        seqs: list[Sequence] = []
        offsets = self._head_offsets
        for i, e in enumerate(entries):
            seq, p, table = e.seq, e.start, e.blocks.block_ids
            toks.append(seq.token_ids[p])
            pos.append(p)
            base = table[p // bs] * bs * KVH + p % bs
            slots.extend([base + o for o in offsets])
            row = table[:mb]
            tables.extend(row)
            if len(row) < mb:
                tables.extend([0] * (mb - len(row)))
            lora = seq.params.lora
            lora_rows.append(lora.slot if lora is not None else 0)
            if p + 1 == len(seq.token_ids):  # ScheduledSeq.samples
                rows.append(i)
                seqs.append(seq)
        S = len(rows)
        buf = torch.tensor(
            toks + pos + [p + 1 for p in pos] + rows + slots + tables, dtype=torch.long, device=self.device
        )
        at = 3 * n + S
        meta = DecodeMetadata(slots=buf[at : at + n * KVH], num_decode=n)
        meta.decode_tables = buf[at + n * KVH :].view(n, mb)
        meta.decode_lens = buf[2 * n : 3 * n]
        meta.decode_max_blocks = mb
        meta.lazy_decode(self._heads, bs)
        return StepInputs(
            buf[:n].view(1, n),
            buf[n : 2 * n].view(1, n),
            meta,
            buf[3 * n : at],
            seqs,
            lora_rows,
            n,
            S == n,
        )

    # -- execution -----------------------------------------------------------------------
    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> tuple[torch.Tensor | None, list[Sequence]]:
        """Run the step; logits [S, V] (fp32) for the sequences that sample, in that order."""
        if not sched.scheduled:
            return None, []
        self.cache.copy_blocks(sched.copies)
        # (LoraSlots sets a plain attribute; nn.Module's __getattr__ miss costs an exception)
        lora_slots = self.model.__dict__.get("lora_slots")
        if self.deterministic:
            return self._execute_deterministic(sched, lora_slots)
        if self.graphs is not None and all(e.num_new == 1 and e.seq.params.lora is None for e in sched.scheduled):
            out = self._execute_graph(sched)
            if out is not None:
                return out
        inp = self.prepare(sched)
        self.cache.meta = inp.meta
        if lora_slots is not None:
            lora_slots.begin_step(inp.lora_rows)
        try:
            fn = self._hidden_decode if self._hidden_decode is not None and not inp.meta.prefills else self._hidden
            with integer_rows(inp.generated_rows):
                h = fn(inp.tokens, inp.positions, self.cache)
        finally:
            self.cache.meta = None
            if lora_slots is not None:
                lora_slots.end_step()
        if not inp.sample_seqs:
            return None, []
        logits = self._head(h[0] if inp.all_rows_sample else h[0].index_select(0, inp.sample_rows))
        return (logits if logits.dtype == torch.float32 else logits.float()), inp.sample_seqs

    def _execute_deterministic(self, sched: SchedulerOutput, lora_slots) -> tuple[torch.Tensor | None, list[Sequence]]:
        bs, KVH, C, dev = self.cache.block_size, self.cache.n_kv_heads, DETERMINISTIC_ROWS, self.device
        rows: list[tuple[int, int, list[int], int]] = []  # token, position, block table, adapter slot
        sample_rows: list[int] = []
        sample_seqs: list[Sequence] = []
        for e in sched.scheduled:
            seq, table, lora = e.seq, e.blocks.block_ids, e.seq.params.lora
            slot = lora.slot if lora is not None else 0
            rows.extend((seq.token_ids[p], p, table, slot) for p in range(e.start, e.start + e.num_new))
            if e.samples:
                sample_rows.append(len(rows) - 1)
                sample_seqs.append(seq)
        key_pos = torch.arange(self.cache.block_size * (max(p for _, p, _, _ in rows) // bs + 1), device=dev)
        hidden = []
        for g0 in range(0, len(rows), C):
            grp = rows[g0 : g0 + C]
            n = len(grp)
            base = torch.tensor([t[p // bs] * bs * KVH + p % bs for _, p, t, _ in grp], dtype=torch.long, device=dev)
            by_blocks: dict[int, list[int]] = {}
            for i, (_, p, _, _) in enumerate(grp):
                by_blocks.setdefault(p // bs + 1, []).append(i)
            groups = []
            for nb, members in sorted(by_blocks.items()):
                tables = torch.tensor([grp[i][2][:nb] for i in members], dtype=torch.long, device=dev)
                idx = (tables.unsqueeze(1) * KVH + self._heads.view(1, KVH, 1)).flatten()  # row, head, block
                pos = torch.tensor([grp[i][1] for i in members], device=dev)
                valid = (key_pos[: nb * bs].unsqueeze(0) <= pos.unsqueeze(1)).view(len(members), 1, 1, nb * bs)
                groups.append(RowGroup(torch.tensor(members, device=dev), idx, nb, valid))
            meta = AttentionMetadata(
                slots=(base.unsqueeze(1) + self._heads * bs).flatten(),
                write_rows=torch.arange(n, device=dev) if n < C else None,
                row_groups=groups,
            )
            pad = [0] * (C - n)
            tokens = torch.tensor([t for t, _, _, _ in grp] + pad, dtype=torch.long, device=dev).unsqueeze(0)
            positions = torch.tensor([p for _, p, _, _ in grp] + pad, dtype=torch.long, device=dev).unsqueeze(0)
            self.cache.meta = meta
            if lora_slots is not None:
                lora_slots.begin_step([s for _, _, _, s in grp] + pad, deterministic=True)
            try:
                hidden.append(self._hidden(tokens, positions, self.cache)[0, :n])
            finally:
                self.cache.meta = None
                if lora_slots is not None:
                    lora_slots.end_step()
        if not sample_seqs:
            return None, []
        h = torch.cat(hidden).index_select(0, torch.tensor(sample_rows, dtype=torch.long, device=dev))
        logits = []
        for i in range(0, h.shape[0], C):
            x = h[i : i + C]
            n = x.shape[0]
            if n < C:
                x = torch.cat([x, x.new_zeros(C - n, x.shape[1])])
            logits.append(self._head(x)[:n])
        return torch.cat(logits).float(), sample_seqs

    def _execute_graph(self, sched: SchedulerOutput) -> tuple[torch.Tensor | None, list[Sequence]] | None:
        bs = self.cache.block_size
        entries = sched.scheduled
        tables = [list(e.blocks.block_ids[: e.start // bs + 1]) for e in entries]
        if not self.graphs.fits(len(entries), max(len(t) for t in tables)):
            return None
        h = self.graphs.run([e.seq.token_ids[e.start] for e in entries], [e.start for e in entries], tables)
        rows = [i for i, e in enumerate(entries) if e.samples]
        if not rows:
            return None, []
        if len(rows) < len(entries):
            h = h.index_select(0, torch.tensor(rows, device=self.device))
        return self._head(h).float(), [entries[i].seq for i in rows]

    @torch.inference_mode()
    def sample(self, logits: torch.Tensor, rows: Seq[int], seqs: Seq[Sequence]) -> SampleResult:
        """Sample one token for each seq from logits row ``rows[i]`` (rows repeat for forks)."""
        if self.deterministic and len(seqs) > 1:
            return _concat([self.sample(logits, [r], [s]) for r, s in zip(rows, seqs)])
        if list(rows) != list(range(logits.shape[0])):
            logits = logits.index_select(0, torch.tensor(rows, dtype=torch.long, device=logits.device))
        params = [s.params for s in seqs]
        # (a sampler put in its place - a test's, a subclass - samples every row itself)
        if type(self.sampler) is BatchSampler and all(_plain_greedy(s) for s in seqs):
            return _greedy(logits, params)
        counts = seen = None
        if any(s.output_counts is not None for s in seqs):
            V = logits.shape[1]
            zeros_i = torch.zeros(V, dtype=torch.int32, device=logits.device)
            zeros_b = torch.zeros(V, dtype=torch.bool, device=logits.device)
            counts = torch.stack([s.output_counts if s.output_counts is not None else zeros_i for s in seqs])
            seen = torch.stack([s.seen_mask if s.seen_mask is not None else zeros_b for s in seqs])
        banned = None
        if any(s.num_output < s.params.min_tokens for s in seqs):
            banned = [sorted(s.request.stop_ids) if s.num_output < s.params.min_tokens else [] for s in seqs]
        outputs = (
            [s.token_ids[s.prompt_len :] for s in seqs] if any(p.logits_processor is not None for p in params) else None
        )
        return self.sampler.sample(
            logits,
            params,
            generators=[s.generator for s in seqs],
            output_counts=counts,
            seen_mask=seen,
            banned=banned,
            outputs=outputs,
        )


def _plain_greedy(seq: Sequence) -> bool:
    """Whether ``BatchSampler.sample`` would take the row's argmax unchanged: greedy, and no
    processor, penalty, bias or min_tokens ban edits its logits first."""
    p = seq.params
    return (
        p.temperature == 0.0
        and p.logits_processor is None
        and seq.output_counts is None
        and not p.logit_bias
        and (not p.min_tokens or seq.num_output >= p.min_tokens)
    )


def _greedy(logits: torch.Tensor, params: list) -> SampleResult:
    """``BatchSampler.sample`` for rows that are all plain greedy (``_plain_greedy``): the
    same tokens (argmax, first index of the maximum, NaN counting as the maximum) and the same
    logprobs, without building the sampling state. On a CPU the argmax is numpy's, 10x faster
    than torch's over a vocabulary row (47 us vs 4 us for 49152 logits at one thread)."""
    logits = logits.float()
    if logits.is_cpu and logits.is_contiguous():
        tokens = torch.from_numpy(logits.numpy().argmax(-1))
    else:
        tokens = logits.argmax(-1)
    return with_logprobs(logits, tokens, params)


def _concat(results: list[SampleResult]) -> SampleResult:
    """One-row results as one batch result; top-k columns padded to the widest row (a row's
    consumer reads only its own ``top_logprobs`` columns)."""

    def cat(name, fill):
        cols = [getattr(r, name) for r in results]
        if all(c is None for c in cols):
            return None
        if name in ("tokens", "logprobs"):
            return torch.cat([c if c is not None else torch.full((1,), fill) for c in cols])
        k = max(c.shape[1] for c in cols if c is not None)
        like = next(c for c in cols if c is not None)
        return torch.cat(
            [
                torch.nn.functional.pad(c, (0, k - c.shape[1]), value=fill)
                if c is not None
                else torch.full((1, k), fill, dtype=like.dtype, device=like.device)
                for c in cols
            ]
        )

    return SampleResult(
        cat("tokens", 0), cat("logprobs", float("nan")), cat("top_ids", 0), cat("top_logprobs", float("nan"))
    )
