"""orthoserve on Ray Serve: N replicas, each one orthoserve (engine, registry, slots) inside a Serve replica.

    serve run server.ray_serve:build_app model=/models/SmolLM2-135M-Instruct replicas=2 \\
        admin_token=TOKEN adapter_root=/srv/adapters

- **Requests.** The ingress reads the request's `model`; for an adapter tag (`set/task` or `set`) it
  sends the request through a handle with the set name as the multiplexed model id, so Serve prefers
  the replica that already holds that set. Base-model requests go to any replica.
- **The multiplexed loader** of a replica is orthoserve's own residency: it brings the set into an
  engine slot through the registry (a lease taken and released at once) and keeps nothing itself.
  Serve's per-replica model count is the replica's engine slot count, so Serve's idea of what a
  replica holds follows its slots.
- **Admin calls** (`/v1/adapter-sets`, `/v1/load_lora_adapter`, `/v1/unload_lora_adapter`) are sent to
  every live replica, over each replica's own HTTP port, with the caller's token; mutations that
  succeeded everywhere are recorded and replayed on replicas that start later (a replacement for a
  dead one).
- **Each replica serves the whole orthoserve API on its own port** (127.0.0.1 and a free port by
  default), `/metrics` included; `GET /replicas` on the ingress lists them for scraping.
- A request whose replica died before it answered is sent again to another replica (a plain answer
  counts as given once all of it has arrived); a stream that had started ends where the replica died.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ray
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.handle import DeploymentHandle

from errors.domain import DomainError
from errors.envelope import domain_error_response
from server.errors import ReplicasDisagree, ReplicaUnavailable

logger = logging.getLogger(__name__)

DIRECTORY_ACTOR = "orthoserve-replica-directory"
ADMIN_PATHS = ("/v1/adapter-sets", "/v1/load_lora_adapter", "/v1/unload_lora_adapter")
START_TIMEOUT_S = 900.0
ADMIN_TIMEOUT_S = 600.0
_RETRIED_ERRORS = (ActorDiedError, ActorUnavailableError, RayActorError)
_HOP_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "host"})


@dataclass(frozen=True)
class AdminCall:
    method: str
    path: str
    query: str
    body: bytes


@ray.remote(num_cpus=0)
class ReplicaDirectory:
    """Where each live replica serves its own HTTP port, and the admin mutations to replay on new ones."""

    def __init__(self) -> None:
        self._urls: dict[str, str] = {}
        self._calls: list[AdminCall] = []

    def register(self, replica_id: str, url: str) -> None:
        self._urls[replica_id] = url

    def forget(self, replica_id: str) -> None:
        self._urls.pop(replica_id, None)

    def urls(self) -> dict[str, str]:
        return dict(self._urls)

    def record(self, call: AdminCall) -> None:
        self._calls.append(call)

    def calls(self) -> list[AdminCall]:
        return list(self._calls)


def _directory(app_id: str) -> Any:
    # Detached, so that it outlives any one replica; named per built application, so that a new
    # deployment starts with no recorded calls.
    name = f"{DIRECTORY_ACTOR}-{app_id}"
    return ReplicaDirectory.options(name=name, get_if_exists=True, lifetime="detached").remote()


class OrthoserveReplica:
    """One orthoserve server: its engine, registry and HTTP port, inside a Serve replica."""

    async def __init__(self, settings: dict[str, Any], model_dir: str, admin_token: str | None, app_id: str) -> None:
        # Imported here: the driver that builds the application needs neither vLLM nor the engine.
        from server.app import create_app
        from server.engine.service import EngineService
        from server.settings import Settings
        from server.startup import resolve_serving_settings

        values = dict(settings)
        values["port"] = values.get("port") or _free_port(values.get("host", "127.0.0.1"))
        parsed = resolve_serving_settings(Settings(**values), Path(model_dir))
        self._app = create_app(parsed, EngineService(parsed, Path(model_dir)))
        self._server = uvicorn.Server(uvicorn.Config(self._app, host=parsed.host, port=parsed.port, log_level=parsed.log_level))
        self._app.state.stop_server = lambda: setattr(self._server, "should_exit", True)
        self._serving = asyncio.ensure_future(self._server.serve())
        await self._wait_started()
        self.url = f"http://{parsed.host}:{parsed.port}"
        self._replica_id = uuid.uuid4().hex
        self._app_id = app_id
        await self._replay(admin_token)
        await _directory(app_id).register.remote(self._replica_id, self.url)
        logger.info("orthoserve replica %s serving on %s", self._replica_id, self.url)

    async def _wait_started(self) -> None:
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        while not self._server.started:
            if self._serving.done() or asyncio.get_running_loop().time() > deadline:
                raise RuntimeError("orthoserve did not start in this replica (its log says why)")
            await asyncio.sleep(0.2)

    async def _replay(self, admin_token: str | None) -> None:
        """Apply the admin mutations the other replicas already had, in order."""
        calls: list[AdminCall] = await _directory(self._app_id).calls.remote()
        if not calls:
            return
        headers = {"authorization": f"Bearer {admin_token}", "content-type": "application/json"}
        async with httpx.AsyncClient(base_url=self.url, timeout=ADMIN_TIMEOUT_S) as http:
            for call in calls:
                response = await http.request(call.method, call.path, params=call.query, content=call.body, headers=headers)
                if response.status_code >= 300:
                    logger.error("replaying %s %s failed: %s", call.method, call.path, response.text)

    def _registry(self) -> Any:
        return self._app.state.registry

    async def _bring_in(self, set_name: str) -> str:
        """The multiplexed loader: the set enters an engine slot through orthoserve's own residency."""
        lease = await self._registry().acquire(set_name)
        lease.release()
        return set_name

    async def forward(
        self, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes
    ) -> AsyncIterator[dict[str, Any] | bytes]:
        """Serve one HTTP request with this replica's app: first the status and headers, then the body."""
        set_name = serve.get_multiplexed_model_id()
        if set_name:
            with contextlib.suppress(DomainError):  # unknown names: the app answers with the error
                await self._load_model(set_name)  # type: ignore[attr-defined]
        async for item in _call_asgi(self._app, method, path, query, headers, body):
            yield item

    def replica_url(self) -> str:
        return self.url

    async def check_health(self) -> None:
        watch = self._app.state.engine_watch
        if self._serving.done() or (watch is not None and watch.dead):
            raise RuntimeError("orthoserve's engine or HTTP server stopped")

    async def __del__(self) -> None:
        with contextlib.suppress(Exception):
            await _directory(self._app_id).forget.remote(self._replica_id)
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._serving, 60)


async def _call_asgi(
    app: Any, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes
) -> AsyncIterator[dict[str, Any] | bytes]:
    """Run one request through an ASGI app in process, yielding its response as it is sent."""
    sent: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    request_done = False

    async def receive() -> dict[str, Any]:
        nonlocal request_done
        if not request_done:
            request_done = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no more body; the app stops listening when it ends
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await sent.put(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers],
        "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0),
    }  # fmt: skip
    running = asyncio.ensure_future(app(scope, receive, send))
    running.add_done_callback(lambda _: sent.put_nowait(None))
    try:
        while (message := await sent.get()) is not None:
            if message["type"] == "http.response.start":
                yield {"status": message["status"], "headers": [(k.decode(), v.decode()) for k, v in message["headers"]]}
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    break
        await running
    finally:
        running.cancel()


class OrthoserveIngress:
    """HTTP entry: requests go to a replica (by set, for adapters); admin calls go to every replica."""

    def __init__(self, replicas: DeploymentHandle, base_model: str, app_id: str) -> None:
        self._replicas = replicas
        self._base_model = base_model
        self._app_id = app_id

    async def replicas(self) -> JSONResponse:
        urls = await _directory(self._app_id).urls.remote()
        return JSONResponse({"object": "list", "data": [{"id": key, "url": url} for key, url in sorted(urls.items())]})

    async def proxy(self, request: Request, path: str) -> Response:
        body = await request.body()
        route = "/" + path
        if request.method != "GET" and route.startswith(ADMIN_PATHS):
            return await self._broadcast(request, route, body)
        return await self._forward(request, route, body)

    async def _forward(self, request: Request, route: str, body: bytes) -> Response:
        set_name = self._set_name(request, body)
        headers = [(name, value) for name, value in request.headers.items() if name.lower() not in _HOP_HEADERS]
        args = (request.method, route, request.url.query, headers, body)
        for attempt in range(2):
            handle = self._replicas.options(multiplexed_model_id=set_name, stream=True)
            stream = handle.forward.remote(*args)
            try:
                head = await stream.__anext__()
                response_headers = _response_headers(head["headers"])
                if response_headers.get("content-type", "").startswith("text/event-stream"):  # ASGI names are lower case
                    return StreamingResponse(_rest(stream), status_code=head["status"], headers=response_headers)
                # A plain answer counts as given only once all of it has arrived: a replica that dies
                # between its status line and its body must not leave a 200 without a body.
                content = b"".join([chunk async for chunk in stream])
            except _RETRIED_ERRORS as error:  # the replica died before answering whole: nothing was sent yet
                logger.warning("replica failed before answering (attempt %d of 2): %s", attempt + 1, error)
                continue
            return Response(content, status_code=head["status"], headers=response_headers)
        return domain_error_response(ReplicaUnavailable("No replica could serve the request."))

    def _set_name(self, request: Request, body: bytes) -> str:
        if request.method != "POST" or not body:
            return ""
        try:
            model = json.loads(body).get("model")
        except (ValueError, AttributeError):
            return ""
        if not isinstance(model, str) or not model or model == self._base_model:
            return ""
        return model.split("/", 1)[0]

    async def _broadcast(self, request: Request, route: str, body: bytes) -> Response:
        urls = await _directory(self._app_id).urls.remote()
        headers = {name: value for name, value in request.headers.items() if name.lower() not in _HOP_HEADERS}
        query = request.url.query
        async with httpx.AsyncClient(timeout=ADMIN_TIMEOUT_S) as http:
            sent = [http.request(request.method, f"{url}{route}", params=query, content=body, headers=headers) for url in urls.values()]
            answers = await asyncio.gather(*sent, return_exceptions=True)
        live = {key: answer for key, answer in zip(urls, answers) if isinstance(answer, httpx.Response)}
        directory = _directory(self._app_id)
        for key, answer in zip(urls, answers):
            if not isinstance(answer, httpx.Response):  # unreachable: the replica is gone
                await directory.forget.remote(key)
        if not live:
            return domain_error_response(ReplicaUnavailable("No replica is serving."))
        statuses = {answer.status_code for answer in live.values()}
        first = next(iter(live.values()))
        if len(statuses) > 1:
            detail = "; ".join(f"{urls[key]}: {answer.status_code} {answer.text[:200]}" for key, answer in live.items())
            return domain_error_response(ReplicasDisagree(f"Replicas answered differently: {detail}"))
        if first.status_code < 300:
            await directory.record.remote(AdminCall(request.method, route, query, body))
        return Response(
            first.content, status_code=first.status_code,
            headers={**_response_headers(first.headers.items()), "x-orthoserve-replicas": str(len(live))},
        )  # fmt: skip


async def _rest(stream: Any) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield chunk
    except _RETRIED_ERRORS:
        logger.warning("replica died while streaming a response; the response ends here")


def _response_headers(headers: Any) -> dict[str, str]:
    return {name: value for name, value in headers if name.lower() not in _HOP_HEADERS}


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _ingress_app() -> type:
    api = FastAPI(title="orthoserve on Ray Serve")

    @serve.ingress(api)
    class Ingress(OrthoserveIngress):
        @api.get("/replicas")
        async def list_replicas(self) -> JSONResponse:
            return await self.replicas()

        @api.api_route("/{path:path}", methods=["GET", "POST", "DELETE"])
        async def route(self, request: Request, path: str) -> Response:
            return await self.proxy(request, path)

    return Ingress


def _replica_class(max_sets: int) -> type:
    class Replica(OrthoserveReplica):
        @serve.multiplexed(max_num_models_per_replica=max_sets)
        async def _load_model(self, set_name: str) -> str:
            return await self._bring_in(set_name)

    return Replica


def build_app(args: dict[str, str]) -> serve.Application:
    """The Serve application (`serve run server.ray_serve:build_app key=value ...`).

    Keys: `model` (required), `replicas` (default 2), `replica_cpus` (default 1), and any
    `orthoserve serve` setting by its field name (`admin_token`, `dtype`, `max_lora_sets`, ...);
    `adapter_root` may list several roots separated by commas.
    """
    from server.settings import Settings

    values: dict[str, Any] = dict(args)
    values.pop("port", None)  # each replica takes a free port of its own
    model_dir = str(Path(values.pop("model")).resolve())
    replicas = int(values.pop("replicas", 2))
    replica_cpus = float(values.pop("replica_cpus", 1))
    if "adapter_root" in values:
        values["adapter_roots"] = [root for root in values.pop("adapter_root").split(",") if root]
    for key in ("adapter_kinds", "pinned_sets"):
        if isinstance(values.get(key), str):
            values[key] = [item for item in values[key].split(",") if item]
    settings = Settings(**values)  # the values are checked here, before any replica starts
    slots = _slot_count(settings)
    base_model = settings.served_model_name or Path(model_dir).name
    replica = serve.deployment(
        _replica_class(slots), name="orthoserve", num_replicas=replicas,
        ray_actor_options={"num_cpus": replica_cpus}, health_check_period_s=5, health_check_timeout_s=30,
        max_ongoing_requests=256,
    )  # fmt: skip
    ingress = serve.deployment(_ingress_app(), name="orthoserve-ingress", ray_actor_options={"num_cpus": 0})
    app_id = uuid.uuid4().hex[:12]
    return ingress.bind(replica.bind(values, model_dir, settings.admin_token, app_id), base_model, app_id)


def _slot_count(settings: Any) -> int:
    """Engine slots over every kind the replicas reserve."""
    from server.engine.capacity import capacity_from_settings

    return max(sum(limits.slots for limits in capacity_from_settings(settings).slot_limits().values()), 1)
