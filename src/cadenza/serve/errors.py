"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, for every failure the server answers."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger("cadenza.serve")

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         409: "conflict_error", 413: "invalid_request_error", 503: "server_overloaded", 504: "timeout"}


class APIError(Exception):
    """An error answered as JSON in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """The JSON body of an error answer."""
    return {"error": {"message": message, "type": TYPES.get(status, "server_error"), "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """An error answer."""
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def overloaded(retry_after: int) -> APIError:
    """503 for a full queue, telling the client when to try again."""
    return APIError(503, "the server is busy: too many requests are queued; retry later", code="queue_full",
                    headers={"Retry-After": str(retry_after)})


def check_model(model: str, known: tuple[str, ...]) -> None:
    """404 in OpenAI's words for a model this server does not serve."""
    if model not in known:
        raise APIError(404, f"the model {model!r} does not exist; models: {', '.join(known)}", param="model",
                       code="model_not_found")


def install(app: FastAPI) -> None:
    """Answer every error in OpenAI's shape: ours, FastAPI's validation errors (as 400) and Starlette's HTTP errors."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = [str(part) for part in first.get("loc", ()) if part != "body"]
        if first.get("type") == "json_invalid":
            return error_response(400, f"the body is not valid JSON ({first.get('msg')})", code="invalid_json")
        param = ".".join(where) or None
        return error_response(400, f"{param or 'body'}: {first.get('msg')}", param, code="invalid_value")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}")
