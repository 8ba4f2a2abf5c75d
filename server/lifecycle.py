"""The life of one API request, observable from one place.

The engine service and its request scopes report every request's arrival, first generated token and finish (with its
outcome, token counts and vLLM's per-request stats) to the observers registered here. Metrics,
tracing or logging plug in with `RequestLifecycle.add_observer` and never touch the handlers.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from router.target import RouteTarget

logger = logging.getLogger(__name__)

Outcome = Literal["ok", "client_error", "server_error", "cancelled"]
Endpoint = Literal["completions", "chat", "responses"]


@dataclass
class RequestRecord:
    """What is known about one request so far. Times are `time.monotonic()` seconds."""

    request_id: str
    endpoint: Endpoint
    model: str
    stream: bool
    arrival_time: float = field(default_factory=time.monotonic)
    target: RouteTarget | None = None
    first_token_time: float | None = None
    finish_time: float | None = None
    prompt_tokens: int = 0
    generated_tokens: int = 0
    outcome: Outcome | None = None
    error: BaseException | None = None
    engine_stats: list[Any] = field(default_factory=list)
    """vLLM `RequestStateStats` of each engine request (one per prompt), as last reported."""
    output_times: list[tuple[float, int]] = field(default_factory=list)
    """(time, new tokens) of every engine output that carried tokens, in arrival order."""


class RequestObserver(Protocol):
    def on_arrival(self, record: RequestRecord) -> None: ...

    def on_first_token(self, record: RequestRecord) -> None: ...

    def on_finish(self, record: RequestRecord) -> None: ...


class RequestLifecycle:
    """Creates request records and fans their events out to the observers."""

    def __init__(self) -> None:
        self._observers: list[RequestObserver] = []

    def add_observer(self, observer: RequestObserver) -> None:
        self._observers.append(observer)

    def arrive(self, request_id: str, endpoint: Endpoint, model: str, stream: bool) -> RequestRecord:
        record = RequestRecord(request_id=request_id, endpoint=endpoint, model=model, stream=stream)
        self._notify("on_arrival", record)
        return record

    def tokens_arrived(self, record: RequestRecord, count: int) -> None:
        """An engine output with `count` new tokens (over all choices) reached the server."""
        if count <= 0:
            return
        now = time.monotonic()
        record.output_times.append((now, count))
        if record.first_token_time is None:
            record.first_token_time = now
            self._notify("on_first_token", record)

    def reject(self, endpoint: Endpoint, error: BaseException) -> None:
        """Report a request refused before its body could be read (it never reaches the service)."""
        record = self.arrive(f"rejected-{uuid.uuid4().hex}", endpoint, model="", stream=False)
        self.finish(record, "client_error", error)

    def finish(self, record: RequestRecord, outcome: Outcome, error: BaseException | None = None) -> None:
        if record.outcome is not None:
            return
        record.finish_time = time.monotonic()
        record.outcome = outcome
        record.error = error
        self._notify("on_finish", record)

    def _notify(self, event: str, record: RequestRecord) -> None:
        for observer in self._observers:
            try:
                getattr(observer, event)(record)
            except Exception:
                # An observer must never fail the request it watches.
                logger.exception("Request observer %r failed on %s", observer, event)
