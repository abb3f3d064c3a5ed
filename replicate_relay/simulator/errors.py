"""The simulator's one error type: it carries the status and the Replicate-shaped body it answers with."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """Answered as `status` with `{"detail": ..., **extra}`, the shape Replicate's API uses."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "status": self.status, **self.extra}


class InvalidFields(ApiError):
    """422 listing every invalid field, as Replicate answers a prediction with bad input."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__(
            422,
            "\n".join(f"- {field}: {description}" for field, description in problems),
            title="Input validation failed",
            invalid_fields=[
                {"type": "invalid", "field": field, "description": description} for field, description in problems
            ],
        )
