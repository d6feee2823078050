"""Many LoRA adapters served at once over one base model, each request with its own.

The base weights are never changed (they may be int4, with fused ``wqkv`` / ``w13``). Each
adapted projection is wrapped by a ``SlotLoraLinear`` that holds every loaded adapter's A and B
in fixed slots; a step's rows (flattened tokens) carry a slot number, set by the engine runner
with ``LoraSlots.begin_step``.

The delta costs one A matmul per wrapped module and one B matmul per projection, whatever the
number of adapters: the A of every (projection, active adapter) is concatenated into one
``[in, P*k*r]`` matrix and each projection's B of every active adapter stacked into one
``[k*r, size]`` matrix, built once per set of active adapters and cached (not re-gathered per
module per step). ``x @ A`` gives every active adapter's rank-r projection of every row, a
per-step mask (built once per step, shared by all modules) keeps each row's own adapter (rows on
the base model keep none), and ``addmm_`` adds ``low_p @ B_p`` into the projection's slice of the
base output. Steps where no row uses an adapter skip the path entirely.

Deterministic mode (``begin_step(..., deterministic=True)``): a row's delta must not depend on
which other adapters share the step, so each active adapter is applied on its own with
fixed-shape matrices (rank padded to ``max_rank``) and selected per row with ``torch.where``.

Slot weights are replaced only when no request still references the slot: a ``LoraRequest``
(what a request carries in ``SamplingParams.lora``) pins its slot until it is garbage.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from lhama.errors import ConfigError
from lhama.model.fused import fused_ops
from lhama.model.lora import LoraConfig, projection_shape

# A fused module's output slices, in the order the model's forward splits them.
FUSED = {"wqkv": ("wq", "wk", "wv"), "w13": ("w1", "w3")}


class LoraSlotError(ConfigError):
    """An adapter that cannot be placed (too large a rank, no free slot, unknown name...)."""


@dataclass(eq=False)
class LoraRequest:
    """A request's adapter: its name, its slot, and a salt that keeps its prefix-cache blocks
    apart from the base model's and other adapters' (KV computed through an adapter differs)."""

    name: str
    slot: int
    salt: bytes


@dataclass
class LoadedAdapter:
    name: str
    path: str
    slot: int
    config: LoraConfig
    salt: bytes = field(default_factory=lambda: uuid.uuid4().bytes)


@dataclass
class LoraStep:
    """What the wrapped modules of one forward need: the active slots (sorted), the rank the
    stacks are padded to, and per-row selections."""

    active: tuple[int, ...]
    rank: int
    row_slots: torch.Tensor  # [N] slot of each row (0: base model)
    deterministic: bool = False
    _masks: dict = field(default_factory=dict)

    def mask(self, parts: int) -> torch.Tensor:
        """[N, parts * k * rank] float: 1 where the column belongs to the row's own adapter."""
        m = self._masks.get(parts)
        if m is None:
            slots = torch.tensor(self.active, device=self.row_slots.device)
            own = (self.row_slots.unsqueeze(1) == slots).float()  # [N, k]
            m = own.repeat_interleave(self.rank, dim=1).repeat(1, parts)  # columns (part, adapter, rank)
            self._masks[parts] = m
        return m

    def rows(self, slot: int) -> torch.Tensor:
        """[N, 1] bool: the rows on ``slot``."""
        m = self._masks.get(("rows", slot))
        if m is None:
            m = self._masks[("rows", slot)] = (self.row_slots == slot).unsqueeze(1)
        return m


class SlotLoraLinear(nn.Module):
    """``base(x)`` plus, for each row, the delta of the adapter in that row's slot."""

    CACHE = 8  # stacks kept per module (one per recent set of active adapters)

    def __init__(self, base: nn.Module, parts: dict[str, tuple[int, int]], in_features: int, slots: LoraSlots):
        super().__init__()
        self.base = base
        self.parts = parts  # projection name -> (output offset, size)
        self.in_features = in_features
        self.out_features = sum(n for _, n in parts.values())
        self._slots = [slots]  # in a list: not a submodule
        self._stacks: dict = {}  # (version, active, rank) -> (A [in, k*P*r], B [k*P*r, out])
        S, R, dev = slots.max_loras, slots.max_rank, slots.device
        for name, (_, size) in parts.items():
            # Scaling is folded into B at load; fp32 whatever the base computes in.
            self.register_buffer(f"{name}_a", torch.zeros(S, R, in_features, device=dev), persistent=False)
            self.register_buffer(f"{name}_b", torch.zeros(S, size, R, device=dev), persistent=False)

    def stacks(self, active: tuple[int, ...], r: int) -> tuple[torch.Tensor, list]:
        """The A of ``active`` slots at rank ``r`` concatenated, ``[in, P*k*r]`` with columns
        ordered (projection, adapter, rank), and per projection ``(offset, size, B [k*r, size])``."""
        key = (self._slots[0].version, active, r)
        got = self._stacks.get(key)
        if got is not None:
            return got
        dev, k = self._slots[0].device, len(active)
        a = torch.zeros(self.in_features, len(self.parts) * k * r, device=dev)
        bs = []
        for p, (name, (off, size)) in enumerate(self.parts.items()):
            b = torch.zeros(k * r, size, device=dev)
            for j, s in enumerate(active):
                c = (p * k + j) * r
                a[:, c : c + r] = getattr(self, f"{name}_a")[s - 1, :r].T
                b[j * r : (j + 1) * r] = getattr(self, f"{name}_b")[s - 1, :, :r].T
            bs.append((off, size, b))
        if len(self._stacks) >= self.CACHE:  # the oldest goes (an embedding thread may race: no KeyError)
            self._stacks.pop(next(iter(self._stacks), None), None)
        self._stacks[key] = (a, bs)
        return a, bs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        step = self._slots[0].step
        if step is None:
            return y
        x2 = x.reshape(-1, self.in_features).float()
        y2 = y.reshape(-1, self.out_features)
        if step.deterministic:
            for s in step.active:
                a, bs = self.stacks((s,), step.rank)
                low = x2 @ a
                r = step.rank
                d = torch.cat([low[:, p * r : (p + 1) * r] @ b for p, (_, _, b) in enumerate(bs)], dim=1)
                y2 = torch.where(step.rows(s), y2 + d.to(y2.dtype), y2)
            return y2.view_as(y)
        a, bs = self.stacks(step.active, step.rank)
        low = (x2 @ a) * step.mask(len(bs))
        kr = low.shape[1] // len(bs)
        fp32 = y2.dtype == torch.float32
        for p, (off, size, b) in enumerate(bs):
            lp = low[:, p * kr : (p + 1) * kr]
            out = y2 if len(bs) == 1 else y2[:, off : off + size]
            if fp32:
                out.addmm_(lp, b)  # in place, into the projection's slice of the output
            else:
                out += (lp @ b).to(out.dtype)
        return y


def projection_modules(layer: nn.Module):
    """(parent, attribute, module, projection names) for each projection module of a block, fused
    ones (``wqkv``, ``w13``, made at load for quantized weights) as one module with several names."""
    seen: set[str] = set()
    for parent_name in ("attention", "feed_forward"):
        parent = getattr(layer, parent_name)
        for attr in ("wqkv", "wq", "wk", "wv", "wo") if parent_name == "attention" else ("w13", "w1", "w3", "w2"):
            mod = getattr(parent, attr, None)
            if mod is None:
                continue
            names = FUSED.get(attr, (attr,))
            if any(n in seen for n in names):
                continue
            seen.update(names)
            yield parent, attr, mod, names


def output_parts(names, args) -> tuple[dict[str, tuple[int, int]], int]:
    """{projection: (output offset, size)} of a module stacking ``names``, and its input width."""
    parts, off = {}, 0
    for n in names:
        size = projection_shape(n, args)[0]
        parts[n] = (off, size)
        off += size
    return parts, projection_shape(names[0], args)[1]


class FixedLoraLinear(nn.Module):
    """``base(x)`` plus one fixed adapter's low-rank delta ``x A^T B^T`` on each of its output
    slices: an adapter kept beside quantized weights, unmerged. Merging needs float weights, and
    re-rounding a rank-8 delta to int4 erases it; the side path keeps it exact for two thin
    matmuls per module (fused ``wqkv`` / ``w13`` included: the parts' A matrices are stacked, their
    B matrices placed block-diagonally, scaling folded in)."""

    def __init__(self, base: nn.Module, parts: dict[str, tuple[int, int]], in_features: int, pairs: dict):
        super().__init__()
        self.base = base
        self.in_features = in_features
        self.out_features = sum(n for _, n in parts.values())
        names = [n for n in parts if n in pairs]
        a = torch.cat([pairs[n][0].float() for n in names])
        b = torch.zeros(self.out_features, a.shape[0])
        r0, spans = 0, []
        for n in names:
            off, size = parts[n]
            r = pairs[n][0].shape[0]
            b[off : off + size, r0 : r0 + r] = pairs[n][1].float()
            spans += [r0, r0 + r, off, off + size]
            r0 += r
        # (rank rows, output columns) of each part's block of b: what the fused op reads.
        self.spans = spans
        # The one copy kept (what the CPU op, ``lora_add_``, reads: a and b transposed): in fp16
        # when that holds them exactly (an adapter saved in fp16, scaled by a power of two: the
        # shipped one), half the bytes a decode step reads beside the weights, for the same bits;
        # else fp32. ``a``, ``b`` and their transposes for the other paths are derived from it.
        a = a.to(pairs[names[0]][0].device)
        bt = b.T.contiguous().to(a.device)
        a16, bt16 = a.half(), bt.half()
        exact = torch.equal(a16.float(), a) and torch.equal(bt16.float(), bt)
        self.register_buffer("a_op", a16 if exact else a, persistent=False)
        self.register_buffer("b_t_op", bt16 if exact else bt, persistent=False)

    # fp32 (an fp16 copy widened; a model cast to another dtype keeps its cast) for the addmm path
    # (GPUs, training, bf16 inputs); the transposed forms are made on first use only.
    @property
    def a(self) -> torch.Tensor:
        return self.a_op.float() if self.a_op.dtype == torch.float16 else self.a_op

    @property
    def b(self) -> torch.Tensor:
        bt = self.b_t_op.float() if self.b_t_op.dtype == torch.float16 else self.b_t_op
        return bt.T

    def _transposed(self, name: str, src: torch.Tensor) -> torch.Tensor:
        got = self.__dict__.get(name)
        if got is None or got.device != src.device or got.dtype != src.dtype:
            got = self.__dict__[name] = src.T.contiguous()
        return got

    @property
    def a_t(self) -> torch.Tensor:
        return self._transposed("_a_t", self.a)

    @property
    def b_t(self) -> torch.Tensor:
        return self._transposed("_b_t", self.b)

    def op_weights(self):
        """(a, b_t) for ``lhama_decode::lora_add_`` (fp16 or fp32, on the CPU), or None."""
        a, bt = self.a_op, self.b_t_op
        if a.dtype != bt.dtype or a.dtype not in (torch.float32, torch.float16) or not a.is_cpu:
            return None
        return a, bt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if y.dtype == torch.float32 and y.is_cpu and y.is_contiguous() and x.is_contiguous():
            ops = fused_ops(y)
            w = self.op_weights() if ops is not None and x.dtype in (torch.float32, torch.bfloat16) else None
            if w is not None:
                # The CPU inference path: one C++ call per module (each row alone, single-threaded
                # at decode sizes: the thin GEMMs below cost more in dispatch and thread wake-ups
                # than in arithmetic, and their rounding depends on the row count).
                ops.lora_add_(y, x, *w, self.spans)
                return y
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != self.a.dtype:
            x2 = x2.to(self.a.dtype)
        if y.dtype == self.a.dtype and y.is_contiguous() and not torch.is_grad_enabled():
            # In place, into the base's fresh output: one GEMM adds the delta.
            y.view(-1, self.out_features).addmm_(x2 @ self.a_t, self.b_t)
            return y
        delta = (x2 @ self.a.T) @ self.b.T
        return y + delta.view(y.shape).to(y.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.a.shape[0]}"


def attach_fixed_lora(model: nn.Module, cfg: LoraConfig, weights: dict) -> int:
    """Wrap every adapted projection module of ``model`` (plain, quantized or fused) in a
    ``FixedLoraLinear`` carrying ``weights`` ({(layer, projection): (A, B)}, as
    ``lhama.peft_adapter.read_peft_weights`` gives them). Returns how many modules were wrapped."""
    wrapped = 0
    for i, layer in enumerate(model.layers):
        for parent, attr, mod, names in projection_modules(layer):
            pairs = {n: (weights[i, n][0], weights[i, n][1] * cfg.scaling) for n in names if (i, n) in weights}
            if not pairs:
                continue
            parts, n_in = output_parts(names, model.args)
            setattr(parent, attr, FixedLoraLinear(mod, parts, n_in, pairs))
            wrapped += 1
    return wrapped


class LoraSlots:
    """The adapters loaded into a model and the current step's per-row slot numbers.
    Slot 0 is "no adapter"; adapters live in slots 1..max_loras."""

    def __init__(self, model: nn.Module, *, max_loras: int = 4, max_rank: int = 16):
        if max_loras < 1 or max_rank < 1:
            raise LoraSlotError("max_loras and max_rank must be at least 1")
        self.args = model.args
        self.max_loras, self.max_rank = max_loras, max_rank
        self.device = model.device
        self.adapters: dict[str, LoadedAdapter] = {}
        self._pins = [0] * (max_loras + 1)  # live LoraRequests per slot
        self._rank = [0] * (max_loras + 1)  # rank of the adapter last put in each slot
        self._lock = threading.Lock()
        self._local = threading.local()  # the step is per thread: the engine's, an embedding worker's
        self.version = 0  # bumped whenever slot weights change: cached stacks are rebuilt
        self.wrappers: list[dict[str, tuple[SlotLoraLinear, str]]] = []  # per layer: projection -> (module, part)
        for layer in model.layers:
            found: dict[str, tuple[SlotLoraLinear, str]] = {}
            for parent, attr, mod, names in projection_modules(layer):
                parts, n_in = output_parts(names, self.args)
                wrapped = SlotLoraLinear(mod, parts, n_in, self)
                setattr(parent, attr, wrapped)
                found.update({n: (wrapped, n) for n in names})
            self.wrappers.append(found)
        model.lora_slots = self  # the engine runner finds it here

    # -- adapters ------------------------------------------------------------------------
    def check_new(self, name: str) -> None:
        if name in self.adapters:
            raise LoraSlotError(f"an adapter named {name!r} is already loaded; unload it first or pick another name")

    def load(self, name: str, path: str, cfg: LoraConfig, weights: dict) -> LoadedAdapter:
        """Put an adapter's weights (``lhama.peft_adapter.read_peft_weights``) into a free slot;
        ``LoraSlotError`` for a duplicate name, too large a rank or no free slot."""
        self.check_new(name)
        if cfg.rank > self.max_rank:
            raise LoraSlotError(f"adapter rank {cfg.rank} is above this server's --max-lora-rank {self.max_rank}")
        with self._lock:
            if name in self.adapters:
                raise LoraSlotError(
                    f"an adapter named {name!r} is already loaded; unload it first or pick another name"
                )
            used = {a.slot for a in self.adapters.values()}
            free = [s for s in range(1, self.max_loras + 1) if s not in used and not self._pins[s]]
            if not free:
                raise LoraSlotError(f"all {self.max_loras} adapter slots are in use (--max-loras); unload one first")
            slot = free[0]
            self._fill(slot, cfg, weights)
            self._rank[slot] = cfg.rank
            self.version += 1
            ad = self.adapters[name] = LoadedAdapter(name, str(path), slot, cfg)
        return ad

    @torch.no_grad()
    def _fill(self, slot: int, cfg: LoraConfig, weights: dict) -> None:
        s, r = slot - 1, cfg.rank
        for i, found in enumerate(self.wrappers):
            for name, (mod, part) in found.items():
                a, b = getattr(mod, f"{part}_a")[s], getattr(mod, f"{part}_b")[s]
                a.zero_()
                b.zero_()
                pair = weights.get((i, name))
                if pair is not None:
                    a[:r].copy_(pair[0])
                    b[:, :r].copy_(pair[1] * cfg.scaling)

    def unload(self, name: str) -> LoadedAdapter:
        """Forget ``name``; its slot is reused once the requests that use it are done."""
        with self._lock:
            ad = self.adapters.pop(name, None)
        if ad is None:
            raise KeyError(name)
        return ad

    def acquire(self, name: str) -> LoraRequest | None:
        """What a request for adapter ``name`` carries; None if no such adapter is loaded."""
        with self._lock:
            ad = self.adapters.get(name)
            if ad is None:
                return None
            self._pins[ad.slot] += 1
        req = LoraRequest(name, ad.slot, ad.salt)
        weakref.finalize(req, self._unpin, ad.slot)
        return req

    def _unpin(self, slot: int) -> None:
        with self._lock:
            self._pins[slot] -= 1

    # -- steps ---------------------------------------------------------------------------
    @property
    def step(self) -> LoraStep | None:
        """The calling thread's current step (None: every row on the base model)."""
        return getattr(self._local, "step", None)

    @step.setter
    def step(self, value: LoraStep | None) -> None:
        self._local.step = value

    def begin_step(self, row_slots: list[int], *, deterministic: bool = False) -> None:
        """Per-row slot numbers of the next forward (0: base model). ``deterministic``: each
        row's delta computed with shapes that do not depend on the other rows' adapters."""
        active = tuple(sorted(set(row_slots) - {0}))
        if not active:
            self.step = None
            return
        rank = self.max_rank if deterministic else max(self._rank[s] for s in active)
        rows = torch.tensor(row_slots, device=self.device)
        self.step = LoraStep(active, rank, rows, deterministic)

    def end_step(self) -> None:
        self.step = None


__all__ = ["LoadedAdapter", "LoraRequest", "LoraSlotError", "LoraSlots", "LoraStep", "SlotLoraLinear"]
