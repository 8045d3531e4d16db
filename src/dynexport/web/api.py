"""The JSON API served by the appliance (docs/api.md). Routes read the app's snapshots only."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from dynexport.httpio import Request, ServerResponse

JSON = "application/json"


class StatusSource(Protocol):
    def status(self) -> dict[str, Any]: ...


def json_response(status: int, document: object) -> ServerResponse:
    body = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
    return ServerResponse(status=status, body=body, content_type=JSON)


def error(status: int, message: str) -> ServerResponse:
    return json_response(status, {"error": message})


def make_handler(app: StatusSource) -> Callable[[Request], Awaitable[ServerResponse]]:
    """The request handler: ``GET /api/status``; everything else is a clear 404 or 405."""

    async def handle(request: Request) -> ServerResponse:
        if request.path == "/api/status":
            if request.method not in ("GET", "HEAD"):
                return error(405, f"{request.method} is not allowed on /api/status")
            return json_response(200, app.status())
        return error(404, f"no such resource: {request.path}")

    return handle
