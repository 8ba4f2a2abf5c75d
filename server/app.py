"""The FastAPI application: routes, error handlers, and the engine's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import REGISTRY

from server.api import chat, completions, health, metrics, models
from server.engine.service import EngineService
from server.errors import install_error_handlers
from server.metrics import ServingMetrics
from server.settings import Settings


def create_app(settings: Settings, engine: EngineService) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await engine.start()
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
    for module in (models, completions, chat, health, metrics):
        app.include_router(module.router)
    return app
