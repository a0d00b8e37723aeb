"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` for every failure the server reports."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("inference.server")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    503: "service_unavailable_error",
}


class ErrorDetail(BaseModel):
    message: str = Field(description="what went wrong and how to fix it")
    type: str = Field(description="invalid_request_error, rate_limit_error, internal_server_error, ...")
    param: str | None = Field(description="the request field at fault, when one is")
    code: str | None = Field(description="a stable machine-readable reason, e.g. context_length_exceeded")


class ErrorResponse(BaseModel):
    """The OpenAI error body every 4xx and 5xx of this server carries."""

    error: ErrorDetail


ERROR_STATUSES = {
    400: "invalid request: malformed JSON, a wrong type or value (`param` names the field)",
    401: "missing or wrong API key",
    404: "unknown model",
    413: "request body larger than the server's limit",
    429: "queue full: retry after `Retry-After` seconds",
    500: "the engine failed this request (others are unaffected)",
    503: "loading, draining or the engine stopped: retry on another replica",
}


class APIError(Exception):
    """A request the server refuses; becomes an OpenAI error body with `status`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_body(error: APIError) -> dict:
    """`{"error": {...}}` for an APIError."""
    return {"error": {"message": error.message, "type": ERROR_TYPES.get(error.status, "invalid_request_error"),
                      "param": error.param, "code": error.code}}


def error_response(error: APIError) -> JSONResponse:
    """The JSON response for an APIError."""
    return JSONResponse(error_body(error), status_code=error.status, headers=error.headers)


def validation_error(errors: list[dict]) -> APIError:
    """The first pydantic/JSON error as a 400 naming the offending parameter."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return APIError(400, f"request body is not valid JSON: {first.get('msg')}", code="invalid_json")
    where = ".".join(loc) or "body"
    return APIError(400, f"{where}: {first.get('msg')}", param=loc[0] if loc else None, code="invalid_value")


async def on_api_error(request: Request, error: APIError) -> JSONResponse:
    return error_response(error)


async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    return error_response(validation_error(list(error.errors())))


async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    """Framework errors (unknown route 404, wrong method 405) in the OpenAI shape."""
    code = "not_found" if error.status_code == 404 else None
    return error_response(APIError(error.status_code, str(error.detail), code=code, headers=error.headers))


async def on_internal_error(request: Request, error: Exception) -> JSONResponse:
    """A genuine bug: logged with its traceback, answered 500 in the OpenAI shape."""
    log.exception("internal error on %s %s", request.method, request.url.path)
    return error_response(APIError(500, f"internal server error: {type(error).__name__}", code="internal_error"))


def install_error_handlers(app: FastAPI) -> None:
    """Route every error class to its OpenAI-shaped response."""
    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_internal_error)
