"""Errors in Glassfy's envelope: {"status": 401, "error": {"code": 1202, "description": "..."}}."""

from __future__ import annotations

from starlette.responses import JSONResponse

SUBSCRIBER_NOT_FOUND = 1001
GENERIC = 1005
INVALID_PARAMETER = 1010
TOO_MANY_REQUESTS = 1200
INVALID_API_KEY = 1202

RETRY_AFTER_SECONDS = "1"  # what a 503 asks a client to wait


class ApiError(Exception):
    headers: dict[str, str] = {}

    def __init__(self, status: int, code: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.code = code
        self.description = description


class StorageUnavailable(ApiError):
    """503 with Retry-After: the database cannot serve this now (down, locked, full)."""

    headers = {"Retry-After": RETRY_AFTER_SECONDS}

    def __init__(self, description: str = "storage unavailable, retry later") -> None:
        super().__init__(503, GENERIC, description)


def error_response(
    status: int, code: int, description: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"status": status, "error": {"code": code, "description": description}}
    return JSONResponse(body, status_code=status, headers=headers)


def bad_request(description: str) -> ApiError:
    return ApiError(400, INVALID_PARAMETER, description)
