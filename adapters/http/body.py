"""Reading a request body with a size limit, before anything else looks at it."""

from __future__ import annotations

from starlette.requests import Request

from adapters.http.errors import GENERIC, ApiError


async def read_limited(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, GENERIC, f"request body larger than {max_bytes} bytes")
