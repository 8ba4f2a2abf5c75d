"""Noticing a dead engine: /health and /ready turn 503 at once, requests get 503, the process exits.

vLLM runs the engine core in a child process and marks the `AsyncLLM` as errored when that process
dies (OOM kill, a crash in a kernel); requests in flight then fail with `EngineDeadError`, which the
service answers with 503. `EngineWatch` polls that flag, and once it is set refuses every new request
(`EngineGateMiddleware`) and, after `--engine-death-exit-seconds` for in-flight requests to get their
answer, stops the server so that it exits with `ENGINE_DEAD_EXIT_CODE` and systemd, Docker or
Kubernetes restart it. A backstop ends the process even if the graceful stop hangs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from errors.envelope import domain_error_response
from server.errors import EngineUnavailable

logger = logging.getLogger(__name__)

ENGINE_DEAD_EXIT_CODE = 3
POLL_SECONDS = 0.2
BACKSTOP_SECONDS = 15.0
"""How long the graceful stop may take before the process is ended outright."""

PROBE_PATHS = ("/health", "/ready", "/metrics", "/metrics/vllm")
"""Paths still answered after the engine died (they report the death)."""


class EngineWatch:
    def __init__(self, is_dead: Callable[[], bool], exit_after_seconds: float, stop_server: Callable[[], None]) -> None:
        """`stop_server` starts the server's graceful stop (uvicorn's `should_exit`)."""
        self._is_dead = is_dead
        self._exit_after = exit_after_seconds
        self._stop_server = stop_server
        self.dead = False

    def check(self) -> bool:
        """Whether the engine is dead; the first time it is seen dead, the exit is scheduled."""
        if not self.dead and self._is_dead():
            self.dead = True
            logger.error(
                "The engine process has died; refusing requests and exiting in %.1f s (exit code %d).",
                self._exit_after, ENGINE_DEAD_EXIT_CODE,
            )
            asyncio.get_running_loop().call_later(self._exit_after, self._stop)
        return self.dead

    async def run(self) -> None:
        while not self.check():
            await asyncio.sleep(POLL_SECONDS)


    def _stop(self) -> None:
        """Start the graceful stop; end the process outright if that has not finished in time."""
        backstop = threading.Timer(BACKSTOP_SECONDS, os._exit, args=(ENGINE_DEAD_EXIT_CODE,))
        backstop.daemon = True
        backstop.start()
        self._stop_server()


def stop_by_signal() -> None:
    """The graceful stop of a server run without `server.listeners.serve` (uvicorn handles SIGTERM)."""
    os.kill(os.getpid(), signal.SIGTERM)


class EngineGateMiddleware:
    """Answers 503 to every request but the probes once the engine is dead."""

    def __init__(self, app: ASGIApp, watch: Callable[[], EngineWatch | None]) -> None:
        self.app = app
        self.watch = watch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = self.watch()
        if scope["type"] == "http" and scope["path"] not in PROBE_PATHS and watch is not None and watch.check():
            response = domain_error_response(EngineUnavailable("The engine has stopped; the server is restarting."))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
