"""HTTP errors of the API: one shape for every failure, and the right status for each cause.

Client mistakes are 4xx and name the field (422 uses FastAPI's `detail` list, each item with
`loc` = ["body", field, ...], so clients written for AUTOMATIC1111 parse it unchanged).
Features Easel does not have yet are 501 and name the missing capability. A full queue is
429 with Retry-After. Only a fault of the server itself is a 500, and never with a traceback.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core.jobs import NotOwnerError, QueueFullError
from ..core.request import FieldError, ValidationError
from ..model_manager.registry import ModelNotFoundError

log = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = 5
FASTAPI_BODY_PARSE_ERROR = "There was an error parsing the body"


class ApiError(Exception):
    """An error with its HTTP status and a message meant for the client."""

    def __init__(self, status: int, detail: Any, *, error: str | None = None,
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None):
        super().__init__(detail if isinstance(detail, str) else repr(detail))
        self.status = status
        self.detail = detail
        self.error = error or _default_name(status)
        self.headers = headers or {}
        self.extra = extra or {}

    def response(self) -> JSONResponse:
        body = {"error": self.error, "detail": self.detail, **self.extra}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _default_name(status: int) -> str:
    return {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
            413: "PayloadTooLarge", 422: "ValidationError", 429: "QueueFull", 501: "NotImplemented",
            503: "ServiceUnavailable"}.get(status, "Error")


def field_errors(errors: Iterable[FieldError], prefix: tuple[str, ...] = ("body",)) -> ApiError:
    """422 listing each invalid field as FastAPI does (loc, msg, type)."""
    detail = [{"loc": [*prefix, *error.field.split(".")], "msg": f"{error.field}: {error.message}",
               "type": "value_error"} for error in errors]
    return ApiError(422, detail)


def invalid(field: str, message: str, prefix: tuple[str, ...] = ("body",)) -> ApiError:
    return field_errors([FieldError(field, message)], prefix)


def not_implemented(capability: str, field: str | None = None, hint: str = "") -> ApiError:
    """Easel cannot do this yet; nothing was run. Names what is missing.

    A request field asking for a missing capability is a 422 (the request is well formed, but
    this server cannot process what it asks; a client error, never a 5xx), with `error`
    "NotImplemented" and the field in `detail` as for any invalid field. A whole route Easel
    lacks (interrogate, training) is a 501 without a field.
    """
    where = f" (field {field})" if field else ""
    message = f"{capability} is not available in Easel yet{where}; nothing was run."
    if hint:
        message += " " + hint
    extra = {"missing": capability, "field": field}
    if field is None:
        return ApiError(501, message, extra=extra)
    detail = [{"loc": ["body", *field.split(".")], "msg": f"{field}: {message}", "type": "not_implemented"}]
    return ApiError(422, detail, error="NotImplemented", extra=extra)


def queue_full(exc: QueueFullError) -> ApiError:
    return ApiError(429, str(exc), headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                    extra={"queued": exc.size})


def job_error(error: BaseException) -> ApiError:
    """Map an exception raised inside a job to the response the client gets."""
    if isinstance(error, ValidationError):
        return field_errors(error.errors)
    if isinstance(error, ModelNotFoundError):
        return invalid("override_settings.sd_model_checkpoint", str(error))
    if isinstance(error, ApiError):
        return error
    if isinstance(error, LookupError) and getattr(error, "field", ""):
        return invalid(error.field, str(error).removeprefix(f"{error.field}: "))  # a model the request named
    if getattr(error, "user_facing", False):
        # a known condition of the server (no checkpoint installed, a refused pickle, a broken model file):
        # not the client's fault
        return ApiError(503, scrub_paths(str(error)))
    return ApiError(500, scrub_paths(f"generation failed: {type(error).__name__}: {error}"), error="InternalError")


_ABSOLUTE_PATH = re.compile(r"""(?:(?<=[\s'"(=\[])|^)(?:/[^\s'"()\[\],;]+){2,}|\b[A-Za-z]:\\[^\s'"()\[\],;]+""")


def scrub_paths(text: str) -> str:
    """Absolute server paths in a message become `.../<folder>/<file>`: enough to act on, nothing of the layout."""
    def short(match: re.Match) -> str:
        parts = [p for p in re.split(r"[\\/]", match.group()) if p]
        return ".../" + "/".join(parts[-2:])

    return _ABSOLUTE_PATH.sub(short, text)


def install_handlers(app: FastAPI) -> None:
    """Exception handlers for the whole FastAPI app (the Gradio mount handles its own routes)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(ValidationError)
    async def _validation(request: Request, exc: ValidationError) -> JSONResponse:
        return field_errors(exc.errors).response()

    @app.exception_handler(QueueFullError)
    async def _queue_full(request: Request, exc: QueueFullError) -> JSONResponse:
        return queue_full(exc).response()

    @app.exception_handler(NotOwnerError)
    async def _not_owner(request: Request, exc: NotOwnerError) -> JSONResponse:
        return ApiError(403, str(exc)).response()

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own shape, minus echoing large inputs (a base64 image) back to the client
        detail = []
        for item in exc.errors():
            entry = {k: v for k, v in item.items() if k in ("loc", "msg", "type")}
            entry["loc"] = list(entry.get("loc", ()))
            detail.append(entry)
        return JSONResponse({"error": "ValidationError", "detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == FASTAPI_BODY_PARSE_ERROR:
            # FastAPI's answer when json.loads fails with something other than a JSON syntax error
            # (e.g. a number with more than 4300 digits): name the body, as every other 4xx names its field
            return invalid("body", "not valid JSON (a number too long to read, or nested too deeply)",
                           prefix=()).response()
        return JSONResponse({"error": _default_name(exc.status_code), "detail": exc.detail},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("API error: %s %s", request.method, request.url.path)
        return JSONResponse({"error": "InternalError", "detail": scrub_paths(f"{type(exc).__name__}: {exc}")},
                            status_code=500)
