"""Shared state for handlers, injected with `Depends` through these `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from router.registry import AdapterRegistry
from server.engine.service import EngineService
from server.metrics import ServingMetrics
from server.settings import Settings


def get_engine(request: Request) -> EngineService:
    return request.app.state.engine


def get_metrics(request: Request) -> ServingMetrics:
    return request.app.state.metrics


def get_registry(request: Request) -> AdapterRegistry:
    return request.app.state.registry


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


EngineDep = Annotated[EngineService, Depends(get_engine)]
MetricsDep = Annotated[ServingMetrics, Depends(get_metrics)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[AdapterRegistry, Depends(get_registry)]
