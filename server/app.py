"""The FastAPI application: routes, error handlers, and the engine's lifetime."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from prometheus_client import REGISTRY

from adapters.base_model import describe_base_model
from adapters.format import MANIFEST_FILE
from router.paths import AdapterRoots
from router.ports import RegistryObserver
from router.registry import AdapterRegistry
from router.validation import AdapterSetValidator
from server.api import admin, health, metrics, models, openai
from server.engine.adapter_backend import AdapterEngineBackend
from server.engine.capacity import adapter_dtype
from server.engine.service import EngineService
from server.errors import install_error_handlers
from server.metrics import ServingMetrics
from server.settings import Settings


def create_app(settings: Settings, engine: EngineService) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        app.state.registry = await _start_registry(settings, engine, app.state.metrics)
        engine.resolver = app.state.registry
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(title="orthoserve", lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    # vLLM's engine logger registers its `vllm:` metrics in prometheus_client's global registry.
    app.state.metrics = ServingMetrics(
        max_tasks=settings.metrics_max_tasks, buckets=settings.metrics_buckets, engine_registry=REGISTRY
    )
    engine.lifecycle.add_observer(app.state.metrics)
    install_error_handlers(app)
    for router in (models.router, *openai.routers, health.router, metrics.router):
        app.include_router(router)
    if settings.admin_token:
        # Without a configured token the admin API does not exist (404) rather than being open.
        app.include_router(admin.router, dependencies=[Depends(admin.verify_admin_token)])
    return app


async def _start_registry(settings: Settings, engine: EngineService, observer: RegistryObserver) -> AdapterRegistry:
    """The adapter registry on the running engine, with the sets of `--adapter-sets` loaded."""
    base = await asyncio.to_thread(describe_base_model, engine.model_dir)
    registry = AdapterRegistry(
        AdapterEngineBackend(engine.engine, base, settings.svd_cache_dir, engine.capacity),
        AdapterSetValidator(base, adapter_dtype(engine.engine.model_config.dtype)),
        engine.served_model_name,
        roots=AdapterRoots(settings.adapter_roots),
        memory_budget=settings.adapter_memory_budget,
        observer=observer,
    )
    if settings.adapter_sets is not None:
        await registry.load_directory(settings.adapter_sets, MANIFEST_FILE)
    return registry
