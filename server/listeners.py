"""Runs the app under uvicorn: on one port, or with the admin API on its own port (`--admin-port`).

With an admin port, one uvicorn server listens on both sockets and sends each connection to the app
of the port it arrived on, so both share one process, one event loop, one engine and one lifespan;
the public port then has no admin routes at all.
"""

from __future__ import annotations

import socket

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from server.app import create_admin_app
from server.settings import Settings


class PortDispatch:
    """Connections to `admin_port` go to the admin app; everything else (lifespan too) to the public app."""

    def __init__(self, public: ASGIApp, admin: ASGIApp, admin_port: int) -> None:
        self.public = public
        self.admin = admin
        self.admin_port = admin_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if scope["type"] != "lifespan" and server is not None and server[1] == self.admin_port:
            await self.admin(scope, receive, send)
        else:
            await self.public(scope, receive, send)


def serve(app: FastAPI, settings: Settings) -> bool:
    """Serve until stopped (SIGINT/SIGTERM, or the engine-death watch asking to stop).

    Returns False if the server never started (the app's start-up failed; uvicorn logged why)."""
    if settings.admin_port is None:
        config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level)
        sockets = None
    else:
        public = _bind(settings.host, settings.port)
        admin = _bind(settings.host, settings.admin_port)
        admin_port = admin.getsockname()[1]
        dispatch = PortDispatch(app, create_admin_app(settings, app), admin_port)
        config = uvicorn.Config(dispatch, log_level=settings.log_level)
        sockets = [public, admin]
    server = uvicorn.Server(config)
    app.state.stop_server = lambda: setattr(server, "should_exit", True)
    server.run(sockets=sockets)
    return server.started


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock
