"""The API's error, carried to HTTP clients as a Status object."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An API failure: ``code`` is the HTTP status, ``reason`` the Kubernetes reason."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def status(self, details: dict[str, Any] | None = None) -> dict[str, Any]:
        """The v1 Status object the real API server answers with."""
        out: dict[str, Any] = {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        }
        if details:
            out["details"] = details
        return out
