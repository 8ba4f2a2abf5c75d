"""`DomainError`: the one error type of orthoserve's domain.

Adapters, router and server raise its subclasses (in `adapters/errors.py`, `router/errors.py`,
`server/errors.py`); `errors.envelope` turns any of them into an HTTP response. Nothing matches message
text: each subclass fixes its stable `code`, and that class attribute is the code's only spelling.
"""

from __future__ import annotations


class DomainError(Exception):
    """A stable `code`, a `message` for people, the request field at fault (`param`) and the HTTP
    `status` the server answers with. Every subclass fixes its code and status."""

    code: str | None = None
    status: int = 400
    type: str = "invalid_request_error"  # the envelope's `type`

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
