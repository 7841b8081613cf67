"""ASGI middleware of the server: request metrics, the optional API key, and the request size limit.

Plain ASGI (not Starlette's BaseHTTPMiddleware), so streamed responses and client disconnects pass through untouched.
"""

from __future__ import annotations

import hmac
import json
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cadenza.serve.errors import error_body


async def _send_error(send, status: int, message: str, code: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("cadenza_requests", "HTTP requests answered", ["route", "status"], registry=self.registry)
        self.latency = Histogram("cadenza_request_seconds", "Time to answer a request (to the last byte)", ["route"],
                                 registry=self.registry)
        self.first_audio = Histogram("cadenza_time_to_first_audio_seconds", "Time from a speech request to its first audio",
                                     registry=self.registry)
        self.audio_seconds = Counter("cadenza_audio_seconds", "Seconds of speech generated", registry=self.registry)
        self.queue = Gauge("cadenza_queue_depth", "Requests waiting or running", ["queue"], registry=self.registry)


class MetricsMiddleware:
    """Counts requests by route template and status, and times them."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


class APIKeyMiddleware:
    """401 for a request under /v1 without `Authorization: Bearer KEY` (or `X-API-Key: KEY`)."""

    def __init__(self, app, api_key: str):
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            headers = dict(scope["headers"])
            given = headers.get(b"x-api-key") or headers.get(b"authorization", b"").removeprefix(b"Bearer ").strip()
            if not hmac.compare_digest(given, self.key):
                return await _send_error(send, 401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                                         "invalid_api_key", {"WWW-Authenticate": "Bearer"})
        return await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for a request body over `max_bytes`: told by Content-Length up front, or, for a chunked body, counted
    as it is read here (at most `max_bytes` of it are held, then handed to the app)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = f"the request body is larger than {self.max_bytes} bytes"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                return await _send_error(send, 413, too_large, "request_too_large")
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending its body
                return
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await _send_error(send, 413, too_large, "request_too_large")
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)
