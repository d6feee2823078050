"""Many LoRA adapters served at once over one base model, each request with its own.

The base weights are never changed (they may be int4, with fused ``wqkv`` / ``w13``). Each
adapted projection is wrapped by a ``SlotLoraLinear`` that holds every loaded adapter's A and B
in fixed slots; a step's rows (flattened tokens) carry a slot number, set by the engine runner
with ``LoraSlots.begin_step``. The delta is two batched matmuls over the adapters active in the
step: ``x @ A_all^T`` gives every active adapter's rank-r projection of every row, a one-hot
mask keeps each row's own adapter, and ``@ B_all^T`` maps back (rows without an adapter get
zero). Fused layers add each projection's delta into its slice of the output.

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


class SlotLoraLinear(nn.Module):
    """``base(x)`` plus, for each row, the delta of the adapter in that row's slot."""

    def __init__(self, base: nn.Module, parts: dict[str, tuple[int, int]], in_features: int, slots: LoraSlots):
        super().__init__()
        self.base = base
        self.parts = parts  # projection name -> (output offset, size)
        self.in_features = in_features
        self.out_features = sum(n for _, n in parts.values())
        self._slots = [slots]  # in a list: not a submodule
        S, R, dev = slots.max_loras, slots.max_rank, slots.device
        for name, (_, size) in parts.items():
            # Scaling is folded into B at load; fp32 whatever the base computes in.
            self.register_buffer(f"{name}_a", torch.zeros(S, R, in_features, device=dev), persistent=False)
            self.register_buffer(f"{name}_b", torch.zeros(S, size, R, device=dev), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        step = self._slots[0].step
        if step is None:
            return y
        active, onehot, r = step
        k = active.numel()
        x2 = x.reshape(-1, self.in_features).float()
        y2 = y.view(-1, self.out_features)
        for name, (off, size) in self.parts.items():
            a = getattr(self, f"{name}_a").index_select(0, active)[:, :r].reshape(k * r, self.in_features)
            low = (x2 @ a.T).view(-1, k, r) * onehot  # each row keeps only its own adapter's projection
            b = getattr(self, f"{name}_b").index_select(0, active)[:, :, :r].permute(1, 0, 2).reshape(size, k * r)
            y2[:, off : off + size] += (low.view(-1, k * r) @ b.T).to(y2.dtype)
        return y


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
        self.step: tuple[torch.Tensor, torch.Tensor, int] | None = None
        self.wrappers: list[dict[str, tuple[SlotLoraLinear, str]]] = []  # per layer: projection -> (module, part)
        for layer in model.layers:
            found: dict[str, tuple[SlotLoraLinear, str]] = {}
            for parent_name in ("attention", "feed_forward"):
                parent = getattr(layer, parent_name)
                for attr in (
                    ("wqkv", "wq", "wk", "wv", "wo") if parent_name == "attention" else ("w13", "w1", "w3", "w2")
                ):
                    mod = getattr(parent, attr, None)
                    if mod is None:
                        continue
                    names = FUSED.get(attr, (attr,))
                    if any(n in found for n in names):
                        continue
                    wrapped = self._wrap(parent, attr, mod, names)
                    found.update({n: (wrapped, n) for n in names})
            self.wrappers.append(found)
        model.lora_slots = self  # the engine runner finds it here

    def _wrap(self, parent: nn.Module, attr: str, mod: nn.Module, names) -> SlotLoraLinear:
        parts, off = {}, 0
        for n in names:
            size = projection_shape(n, self.args)[0]
            parts[n] = (off, size)
            off += size
        wrapped = SlotLoraLinear(mod, parts, projection_shape(names[0], self.args)[1], self)
        setattr(parent, attr, wrapped)
        return wrapped

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
    def begin_step(self, row_slots: list[int]) -> None:
        """Per-row slot numbers of the next forward (0: base model)."""
        active = sorted(set(row_slots) - {0})
        if not active:
            self.step = None
            return
        rank = max(self._rank[s] for s in active)
        pos = {s: j for j, s in enumerate(active)}
        cols = torch.tensor([pos.get(s, -1) for s in row_slots], device=self.device)
        onehot = (cols.unsqueeze(1) == torch.arange(len(active), device=self.device)).float().unsqueeze(-1)
        self.step = (torch.tensor(active, device=self.device) - 1, onehot, rank)

    def end_step(self) -> None:
        self.step = None


__all__ = ["LoadedAdapter", "LoraRequest", "LoraSlotError", "LoraSlots", "SlotLoraLinear"]
