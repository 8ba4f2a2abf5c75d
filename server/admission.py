"""Admission control: `--max-queued-requests` and `--max-queued-requests-per-set`.

A generation request is *queued* from the moment it is admitted until its first token reaches the
server (the request lifecycle's `waiting` state: tokenization, engine queue and prefill), or until it
ends. Past the limit a new request gets 429 with `Retry-After` at once, so a load balancer can send it
elsewhere instead of letting it wait behind everyone. Rejected requests are counted in
`orthoserve_requests_total{outcome="rejected"}`.

Counting is done here, not read from vLLM's scheduler stats, because those are published once per
engine step: a burst that arrives between two steps would all be admitted. The middleware takes a
ticket synchronously when it admits a request; the lifecycle observer hands the ticket back when the
request's first token arrives or the request ends (the middleware also hands it back when the HTTP
exchange ends, for requests that never reached the engine).
"""

from __future__ import annotations

import contextvars
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from errors.envelope import domain_error_response
from router.tags import named_set
from server.asgi_support import is_generation_request, replaying
from server.errors import ServerOverloaded
from server.lifecycle import RequestRecord

BASE_SET = "base"
RETRY_AFTER_SECONDS = 1

_current_ticket: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("admission_ticket", default=None)


@dataclass
class Ticket:
    """One admitted request's place in the queue; `release` is idempotent."""

    set_name: str
    controller: AdmissionController = field(repr=False)
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.controller.leave(self.set_name)


class AdmissionController:
    """Counts queued generation requests in total and per set; a `RequestObserver` of the lifecycle."""

    def __init__(self, max_queued: int | None, max_queued_per_set: int | None) -> None:
        self.max_queued = max_queued
        self.max_queued_per_set = max_queued_per_set
        self._queued = 0
        self._queued_per_set: Counter[str] = Counter()
        self._tickets: dict[str, Ticket] = {}

    @property
    def queued(self) -> int:
        return self._queued

    def refusal(self, set_name: str) -> str | None:
        """Why a request for `set_name` cannot be admitted now, or None if it can."""
        if self.max_queued is not None and self._queued >= self.max_queued:
            return f"The server has {self._queued} requests waiting to start (limit {self.max_queued})."
        if self.max_queued_per_set is not None and self._queued_per_set[set_name] >= self.max_queued_per_set:
            return (
                f"'{set_name}' has {self._queued_per_set[set_name]} requests waiting to start "
                f"(limit {self.max_queued_per_set} per set)."
            )
        return None

    def admit(self, set_name: str) -> Ticket:
        self._queued += 1
        self._queued_per_set[set_name] += 1
        return Ticket(set_name, self)

    def leave(self, set_name: str) -> None:
        """One request of `set_name` stopped being queued (use `Ticket.release`, which does it once)."""
        self._queued -= 1
        self._queued_per_set[set_name] -= 1
        if self._queued_per_set[set_name] == 0:
            del self._queued_per_set[set_name]  # names come from clients: keep none that is not in use

    # RequestObserver: the lifecycle reports the engine-side progress of admitted requests.
    def on_arrival(self, record: RequestRecord) -> None:
        ticket = _current_ticket.get()
        if ticket is not None and not ticket.released:
            self._tickets[record.request_id] = ticket

    def on_first_token(self, record: RequestRecord) -> None:
        ticket = self._tickets.pop(record.request_id, None)
        if ticket is not None:
            ticket.release()

    def on_finish(self, record: RequestRecord) -> None:
        self.on_first_token(record)


def requested_set(body: bytes, base_model: str) -> str:
    """The adapter set a request body's `model` names (`base` for the base model), without validating it.

    Unknown names count under the name they give and bodies without a readable `model` under `base`,
    until the route refuses them a moment later.
    """
    try:
        model = json.loads(body).get("model")
    except (ValueError, AttributeError):
        return BASE_SET
    if not isinstance(model, str):
        return BASE_SET
    return named_set(model, base_model) or BASE_SET


class RejectionCounter(Protocol):
    """What the middleware reports a refused request to (the serving metrics)."""

    def request_rejected(self, set_name: str) -> None: ...


class AdmissionMiddleware:
    def __init__(
        self, app: ASGIApp, controller: AdmissionController, base_model: str, rejections: RejectionCounter
    ) -> None:
        self.app = app
        self.controller = controller
        self.base_model = base_model
        self.rejections = rejections

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_generation_request(scope):
            await self.app(scope, receive, send)
            return
        body, disconnect = await _whole_body(receive)
        if disconnect is not None:
            return
        set_name = requested_set(body, self.base_model)
        refusal = self.controller.refusal(set_name)
        if refusal is not None:
            self.rejections.request_rejected(set_name)
            headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
            response = domain_error_response(ServerOverloaded(f"{refusal} Retry later."), headers=headers)
            await response(scope, receive, send)
            return
        ticket = self.controller.admit(set_name)
        token = _current_ticket.set(ticket)
        try:
            await self.app(scope, replaying(body, receive), send)
        finally:
            _current_ticket.reset(token)
            ticket.release()


async def _whole_body(receive: Receive) -> tuple[bytes, Message | None]:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", message
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), None
