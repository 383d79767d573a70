"""Errors that answer a request: RFC 9457 problem details, independent of transport."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

PROBLEM_BASE = "https://kuadeploy.dev/problems/"


class ApiError(Exception):
    def __init__(
        self, status: int, title: str, detail: str, errors: Sequence[Any] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = list(errors) if errors is not None else None

    def problem(self) -> dict[str, Any]:
        slug = self.title.lower().replace(" ", "-")
        out: dict[str, Any] = {
            "type": PROBLEM_BASE + slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors is not None:
            out["errors"] = msgspec.to_builtins(self.errors)
        return out

    @classmethod
    def invalid(cls, problems: Sequence[Any]) -> ApiError:
        n = len(problems)
        return cls(422, "Invalid entry", f"{n} problem{'s' * (n != 1)} found", problems)

    @classmethod
    def invalid_one(cls, path: str, message: str, title: str = "Invalid entry") -> ApiError:
        return cls(422, title, message, [{"path": path, "message": message}])

    @classmethod
    def not_found(cls, detail: str) -> ApiError:
        return cls(404, "Not found", detail)

    @classmethod
    def precondition(cls, detail: str) -> ApiError:
        return cls(412, "Precondition failed", detail)

    @classmethod
    def bad_request(cls, detail: str) -> ApiError:
        return cls(400, "Bad request", detail)

    @classmethod
    def conflict(cls, detail: str) -> ApiError:
        return cls(409, "Conflict", detail)
