"""Reading a request body with a cap, while it streams in (webhooks, the console's forms)."""

from __future__ import annotations

from starlette.requests import Request

#: The largest webhook body any platform sends us (bytes); larger bodies get 413.
MAX_WEBHOOK_BODY = 1 << 20


async def read_capped(request: Request, limit: int = MAX_WEBHOOK_BODY) -> bytes | None:
    """The request body, or ``None`` when it is larger than ``limit`` bytes: a larger
    Content-Length is refused before anything is read, and a body that streams in without one
    (or lies about it) is dropped as soon as it passes the limit, so it is never held whole."""
    declared = request.headers.get("content-length", "")
    if declared.strip().isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
