"""vLLM's runtime adapter endpoints, `POST /v1/load_lora_adapter` and `/v1/unload_lora_adapter`, on the
admin API (same bearer token, same `--adapter-root`s), so vLLM's adapter controllers drive orthoserve.

Bodies, status codes and success texts are vLLM's. Any kind loads: the folder's `manifest.json` says
which; a PEFT LoRA folder (`adapter_config.json`, no manifest) is imported into orthoserve's format on
the fly, under the cache folder, keyed by its contents. `load_inplace` publishes a new version under
the loaded name (the admin API's `replace`). Errors use OpenAI's envelope; the validator's refusals
keep their own codes (422), as on the admin API.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel

from adapters.base_model import describe_base_model
from adapters.format import MANIFEST_FILE
from adapters.importers.peft_lora import import_peft_lora
from errors.envelope import domain_error_response, error_response
from router.errors import AdapterPathMissing, AdapterSetExists, AdapterSetNameInvalid, ModelNotFound
from server.deps import EngineDep, RegistryDep, SettingsDep
from server.errors import RequiredFieldMissing
from server.openapi_errors import LOAD_LORA_PATH, UNLOAD_LORA_PATH

router = APIRouter(tags=["admin"])

PEFT_CONFIG_FILE = "adapter_config.json"
IMPORTED_DIR = "imported-peft-lora"
# The error statuses are declared by server/openapi_errors.py, as every route's are.
SUCCESS_TEXT: dict[int | str, dict[str, Any]] = {200: {"content": {"text/plain": {}}, "description": "Success text."}}


class LoadLoRAAdapterRequest(BaseModel):
    lora_name: str
    lora_path: str
    load_inplace: bool = False
    is_3d_lora_weight: bool = False  # accepted as vLLM does; orthoserve's LoRA weights are 2-D


class UnloadLoRAAdapterRequest(BaseModel):
    lora_name: str
    lora_int_id: int | None = None


@router.post(LOAD_LORA_PATH, response_class=PlainTextResponse, response_model=None, responses=SUCCESS_TEXT)
async def load_lora_adapter(
    body: LoadLoRAAdapterRequest, registry: RegistryDep, engine: EngineDep, settings: SettingsDep
) -> PlainTextResponse | JSONResponse:
    name = body.lora_name
    if not name or not body.lora_path:
        return domain_error_response(RequiredFieldMissing("Both 'lora_name' and 'lora_path' must be provided."))
    if name == registry.base_model_name:
        return error_response(
            400,
            f"The lora adapter '{name}' conflicts with a served base model.",
            param="lora_name",
            code=AdapterSetNameInvalid.code,
        )
    if not body.load_inplace and any(entry.name == name for entry in registry.published()):
        return error_response(
            400,
            f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in place, "
            "set 'load_inplace' to True.",
            param="lora_name",
            code=AdapterSetExists.code,
        )
    try:
        source = registry.roots.resolve(body.lora_path)
    except AdapterPathMissing:
        return _not_found_path(name, body.lora_path)
    if (source / MANIFEST_FILE).is_file():
        set_dir = source
    elif (source / PEFT_CONFIG_FILE).is_file():
        set_dir = await asyncio.to_thread(_imported, source, engine.model_dir, settings.cache_dir / IMPORTED_DIR)
    else:
        return _not_found_path(name, body.lora_path)
    await registry.load_trusted(name, set_dir, replace=body.load_inplace)
    return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")


@router.post(UNLOAD_LORA_PATH, response_class=PlainTextResponse, response_model=None, responses=SUCCESS_TEXT)
async def unload_lora_adapter(body: UnloadLoRAAdapterRequest, registry: RegistryDep) -> PlainTextResponse | JSONResponse:
    name = body.lora_name
    if not name:
        return domain_error_response(RequiredFieldMissing("'lora_name' needs to be provided to unload a LoRA adapter."))
    if not any(entry.name == name for entry in registry.published()):
        return error_response(
            404, f"The lora adapter '{name}' cannot be found.", param="lora_name", code=ModelNotFound.code
        )
    await registry.unload(name)
    return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")


def _not_found_path(name: str, path: str) -> JSONResponse:
    return error_response(
        404, f"Loading lora {name} failed: No adapter found for {path}", param="lora_path", code=AdapterPathMissing.code
    )


def _imported(source: Path, model_dir: Path, imports: Path) -> Path:
    """The orthoserve set of a PEFT LoRA folder, imported once per distinct contents (blocking)."""
    digest = hashlib.sha256()
    for file in sorted(path for path in source.iterdir() if path.is_file()):
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    out = imports / f"peft-{digest.hexdigest()[:32]}"
    if not (out / MANIFEST_FILE).is_file():
        staging = imports / f".{out.name}.{uuid.uuid4().hex}"
        import_peft_lora(source, describe_base_model(model_dir), staging, name=out.name)
        try:
            staging.rename(out)
        except OSError:  # a concurrent import of the same contents finished first
            shutil.rmtree(staging, ignore_errors=True)
    return out
