"""The server's own domain errors: refusals of the request guards, the engine's state, and the
replica router. Each class holds its code's only spelling; `server/error_handlers.py` and
`errors.envelope` turn them into responses."""

from __future__ import annotations

from errors.domain import DomainError


class InvalidRequest(DomainError):
    """The request is well-formed JSON but cannot be served as asked."""


class RequiredFieldMissing(DomainError):
    """A field vLLM's adapter endpoints need is empty (their wording and code)."""

    code = "invalid_request"


class ServerFault(DomainError):
    """The server, not the request, is why the request failed (OpenAI's `server_error` type)."""

    status = 500
    type = "server_error"


class ClientDisconnected(DomainError):
    code = "client_closed_request"
    status = 499

    def __init__(self) -> None:
        super().__init__("The client closed the connection before the response was ready.")


class EngineUnavailable(ServerFault):
    """The engine is not running (starting, stopped or dead)."""

    code = "engine_unavailable"
    status = 503

    def __init__(self, message: str = "The engine has stopped.") -> None:
        super().__init__(message)


class RequestTooLarge(DomainError):
    """The body is over `--max-request-bytes`."""

    code = "request_too_large"
    status = 413


class ServerOverloaded(ServerFault):
    """Too many requests wait to start (`--max-queued-requests`, `--max-queued-requests-per-set`)."""

    code = "server_overloaded"
    status = 429


class InvalidRequestTimeout(DomainError):
    """The `x-request-timeout` header is not a number of seconds the server takes."""

    code = "invalid_request_timeout"


class RequestTimeout(ServerFault):
    """The request ran past its deadline; its work was stopped."""

    code = "request_timeout"
    status = 504


class ReplicaUnavailable(ServerFault):
    """No replica of a scaled-out deployment could answer."""

    code = "replica_unavailable"
    status = 503


class ReplicasDisagree(ServerFault):
    """An admin call broadcast to every replica got different statuses back."""

    code = "replicas_disagree"
