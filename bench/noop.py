"""No-op functions-framework functions: the ceiling each server mode reaches when the function does nothing.

functions-framework --source bench/noop.py --target noop_async --asgi   # the receiver's mode
functions-framework --source bench/noop.py --target noop_sync           # Flask + gunicorn, default
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response


async def noop_async(request: Request) -> Response:
    """Answer 200 with an empty body, without reading the request body."""
    return Response(status_code=200)


def noop_sync(request: Any) -> tuple[str, int]:
    """Answer 200 with an empty body (Flask mode)."""
    return "", 200
