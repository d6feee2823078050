"""``POST /v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` (vLLM's routes and bodies):
LoRA adapters served per request beside the base model (``lhama.model.lora_batch``); a request
names one with ``model``. The adapters' cards for ``/v1/models``."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from lhama.errors import LhamaError
from lhama.model.lora_batch import LoraSlotError
from lhama.peft_adapter import read_peft_weights
from lhama.server.errors import APIError

router = APIRouter()


class LoadLoraRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    lora_name: str = Field(min_length=1, max_length=256)
    lora_path: str = Field(min_length=1, max_length=4096)


class UnloadLoraRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    lora_name: str = Field(min_length=1, max_length=256)


def _slots(state):
    if state.loras is None:
        raise APIError(
            400,
            "This server was started without LoRA support; restart it with --enable-lora (or --lora NAME=PATH).",
            param="lora_name",
            code="lora_disabled",
        )
    return state.loras


def load_adapter(state, name: str, path: str):
    """Read and place one adapter; every problem is an ``APIError`` (4xx) with a one-line message."""
    slots = _slots(state)
    if name in state.model_names:
        raise APIError(
            400,
            f"'{name}' is the base model's name; pick another adapter name.",
            param="lora_name",
            code="invalid_lora_name",
        )
    try:
        slots.check_new(name)
        cfg, weights = read_peft_weights(path, slots.args)
        return slots.load(name, path, cfg, weights)
    except LoraSlotError as e:
        raise APIError(400, str(e), param="lora_name", code="invalid_lora_adapter") from None
    except (LhamaError, OSError) as e:  # a missing folder, a broken or foreign adapter
        raise APIError(
            400, f"Cannot load LoRA adapter '{name}' from {path}: {e}", param="lora_path", code="invalid_lora_adapter"
        ) from None


@router.post("/v1/load_lora_adapter", tags=["lora"], summary="Load a PEFT LoRA adapter, served as model NAME")
async def load_lora_adapter(body: LoadLoraRequest, request: Request):
    state = request.app.state.lhama
    ad = await asyncio.to_thread(load_adapter, state, body.lora_name, body.lora_path)
    return {
        "object": "lora_adapter",
        "id": ad.name,
        "rank": ad.config.rank,
        "target_modules": list(ad.config.target_modules),
        "status": "loaded",
    }


@router.post("/v1/unload_lora_adapter", tags=["lora"], summary="Unload a LoRA adapter")
async def unload_lora_adapter(body: UnloadLoraRequest, request: Request):
    slots = _slots(request.app.state.lhama)
    try:
        slots.unload(body.lora_name)
    except KeyError:
        raise APIError(
            404,
            f"No LoRA adapter named '{body.lora_name}' is loaded (see GET /v1/models).",
            param="lora_name",
            code="model_not_found",
        ) from None
    return {"object": "lora_adapter", "id": body.lora_name, "status": "unloaded"}


def adapter_cards(state) -> list[dict]:
    if state.loras is None:
        return []
    return [
        {
            "id": ad.name,
            "object": "model",
            "created": state.created,
            "owned_by": "lhama",
            "parent": state.model_name,
            "root": ad.path,
            "max_model_len": state.max_model_len,
        }
        for ad in list(state.loras.adapters.values())
    ]
