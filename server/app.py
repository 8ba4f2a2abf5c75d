"""The FastAPI application: routes, error handlers, request guards, and the engine's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from prometheus_client import REGISTRY

from adapters.base_model import describe_base_model
from adapters.format import MANIFEST_FILE
from router.paths import AdapterRoots
from router.ports import RegistryObserver
from router.registry import AdapterRegistry
from router.slots import HostLimits
from router.validation import AdapterSetValidator
from server.admission import BASE_SET, AdmissionController, AdmissionMiddleware
from server.api import admin, health, lora_adapters, metrics, models, openai
from server.body_limit import BodyLimitMiddleware
from server.deadlines import DeadlineMiddleware
from server.engine.adapter_backend import AdapterEngineBackend
from server.engine.service import EngineService
from server.engine_watch import EngineGateMiddleware, EngineWatch, stop_by_signal
from server.error_handlers import install_error_handlers
from server.errors import EngineUnavailable
from server.metrics import UNKNOWN_LABEL, ServingMetrics
from server.openapi_errors import declare_error_responses
from server.settings import Settings


def create_app(settings: Settings, engine: EngineService) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        app.state.engine_watch = EngineWatch(
            lambda: _engine_dead(engine),
            settings.engine_death_exit_seconds,
            stop_server=lambda: getattr(app.state, "stop_server", stop_by_signal)(),
        )
        watching = asyncio.create_task(app.state.engine_watch.run())
        app.state.registry = await _start_registry(settings, engine, app.state.metrics)
        app.state.metrics.watch_registry(app.state.registry)
        engine.resolver = app.state.registry
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
            await engine.stop()

    app = FastAPI(title="orthoserve", lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.engine_watch = None
    app.state.ready = False
    # vLLM's engine logger registers its `vllm:` metrics in prometheus_client's global registry.
    app.state.metrics = ServingMetrics(
        max_tasks=settings.metrics_max_tasks, buckets=settings.metrics_buckets, engine_registry=REGISTRY
    )
    engine.lifecycle.add_observer(app.state.metrics)
    install_error_handlers(app)
    for router in (models.router, *openai.routers, health.router, metrics.router):
        app.include_router(router)
    if settings.admin_token and settings.admin_port is None:
        _mount_admin(app)
    _install_guards(app, settings, engine)
    declare_error_responses(app)
    return app


def create_admin_app(settings: Settings, public: FastAPI) -> FastAPI:
    """The admin API alone, for `--admin-port`; it shares the public app's state (registry, settings)."""
    app = FastAPI(title="orthoserve admin")
    app.state = public.state
    install_error_handlers(app)
    _mount_admin(app)
    app.add_middleware(EngineGateMiddleware, watch=lambda: public.state.engine_watch)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    declare_error_responses(app)
    return app


def _mount_admin(app: FastAPI) -> None:
    # Without a configured token the admin API does not exist (404) rather than being open.
    for router in (admin.router, lora_adapters.router):
        app.include_router(router, dependencies=[Depends(admin.verify_admin_token)])


def _install_guards(app: FastAPI, settings: Settings, engine: EngineService) -> None:
    """Request guards, outermost last: body limit → dead-engine gate → admission → deadline → route."""
    app.add_middleware(DeadlineMiddleware, default_timeout=settings.request_timeout)
    controller = AdmissionController(settings.max_queued_requests, settings.max_queued_requests_per_set)
    engine.lifecycle.add_observer(controller)
    app.state.admission = controller
    app.add_middleware(
        AdmissionMiddleware, controller=controller, base_model=engine.served_model_name, rejections=_Rejections(app)
    )
    app.add_middleware(EngineGateMiddleware, watch=lambda: app.state.engine_watch)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)


class _Rejections:
    """Counts refused requests under their set if it is resident; other names fold into `_unknown`."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    def request_rejected(self, set_name: str) -> None:
        registry: AdapterRegistry | None = getattr(self._app.state, "registry", None)
        known = set_name == BASE_SET or (
            registry is not None and any(entry.name == set_name for entry in registry.published())
        )
        self._app.state.metrics.request_rejected(set_name if known else UNKNOWN_LABEL)


def _engine_dead(engine: EngineService) -> bool:
    try:
        return engine.engine.errored
    except EngineUnavailable:
        return False  # stopped on purpose


async def _start_registry(settings: Settings, engine: EngineService, observer: RegistryObserver) -> AdapterRegistry:
    """The adapter registry on the running engine, with the sets of `--adapter-sets` loaded."""
    base = await asyncio.to_thread(describe_base_model, engine.model_dir)
    registry = AdapterRegistry(
        AdapterEngineBackend(engine.engine, base, settings.svd_cache_dir, engine.capacity),
        AdapterSetValidator(base, engine.capacity.adapter_dtype(engine.engine.model_config.dtype)),
        engine.served_model_name,
        roots=AdapterRoots(settings.adapter_roots),
        memory_budget=settings.adapter_memory_budget,
        host=HostLimits(settings.max_host_sets, settings.host_memory_budget),
        resolver_root=settings.adapter_resolver_root,
        observer=observer,
    )
    if settings.adapter_sets is not None:
        await registry.load_directory(settings.adapter_sets, MANIFEST_FILE, pinned=frozenset(settings.pinned_sets))
    return registry
