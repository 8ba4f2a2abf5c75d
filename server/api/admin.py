"""Admin API: load, replace, list and unload adapter sets on a running server.

Mounted only when an admin token is configured, with `verify_admin_token` attached to the whole
router; handlers never look at headers themselves.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from router.resident import ResidentVersion
from server.deps import EngineDep, RegistryDep

router = APIRouter(prefix="/v1/adapter-sets", tags=["admin"])
_bearer = HTTPBearer(auto_error=False)


def verify_admin_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    expected: str = request.app.state.settings.admin_token
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="A valid admin token is required (Authorization: Bearer <token>).",
            headers={"WWW-Authenticate": "Bearer"},
        )


class LoadAdapterSetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Name clients put in the `model` field.")
    path: str = Field(description="Adapter-set directory, inside a configured adapter root.")
    replace: bool = Field(
        default=False, description="Publish a new version of an already loaded set under the same name."
    )
    pin: bool = Field(default=False, description="Keep the set in an engine slot: never evicted.")


class AdapterSetInfo(BaseModel):
    object: Literal["adapter_set"] = "adapter_set"
    name: str
    version: int
    kind: str
    tasks: list[str]
    input_routed: bool
    path: str
    bytes: int
    load_seconds: float
    loaded_at: int
    state: str
    tier: str = Field(description="Where the version is: slot (in the engine), host (an evicted host copy), disk, "
                      "loading or evicting.")
    pinned: bool
    in_flight: int

    @classmethod
    def of(cls, entry: ResidentVersion) -> AdapterSetInfo:
        return cls(
            name=entry.name,
            version=entry.version,
            kind=entry.kind,
            tasks=list(entry.tasks),
            input_routed=entry.input_routed,
            path=str(entry.path),
            bytes=entry.nbytes,
            load_seconds=round(entry.load_seconds, 4),
            loaded_at=int(entry.loaded_at),
            state=entry.state,
            tier=entry.residency,
            pinned=entry.pinned,
            in_flight=entry.in_flight,
        )


class AdapterSetList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterSetInfo]
    used_bytes: int = Field(description="Engine bytes of the sets in slots.")
    budget_bytes: int | None
    host_bytes: int = Field(description="Bytes of the host copies of evicted sets.")
    engine_bytes_per_rank: list[dict[str, int]] = Field(
        description="What each tensor-parallel rank's worker holds, in bytes: `slots` (sets in engine slots), "
        "`host_copies`, `capacity` (the method banks) and `base_factors` (the shared SVD factors)."
    )


@router.post("", status_code=status.HTTP_201_CREATED)
async def load_adapter_set(body: LoadAdapterSetRequest, registry: RegistryDep) -> AdapterSetInfo:
    return AdapterSetInfo.of(await registry.load(body.name, body.path, replace=body.replace, pin=body.pin))


@router.get("")
async def list_adapter_sets(registry: RegistryDep, engine: EngineDep) -> AdapterSetList:
    return AdapterSetList(
        data=[AdapterSetInfo.of(entry) for entry in registry.resident()],
        used_bytes=registry.used_bytes,
        budget_bytes=registry.memory_budget,
        host_bytes=registry.slots.host_bytes,
        engine_bytes_per_rank=await engine.resident_bytes_per_rank(),
    )


@router.delete("/{name}")
async def unload_adapter_set(name: str, registry: RegistryDep, wait: bool = False) -> AdapterSetInfo:
    """Stop new requests to `name`; its memory is freed once running requests end (`wait` blocks until then)."""
    return AdapterSetInfo.of(await registry.unload(name, wait=wait))
