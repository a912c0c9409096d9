"""The HTTP face of the Serve application: a FastAPI app over a *service* object.

``make_api(service, max_upload_bytes, token)`` builds the app; the service (the ingress deployment) provides
``async predict(data: bytes, want_mask: bool) -> dict``, ``health() -> dict`` and ``card() -> dict``. All HTTP
concerns live here: bearer-token auth, upload limits, raw-body or multipart uploads, format checks by content,
and one JSON error shape ``{"error": code, "message": text}`` for every failure. Bad input is never a 500.

Nothing here logs or echoes headers, file names or DICOM attributes (they may carry patient identifiers).
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from lungdr import __version__
from lungdr.errors import DecodeError, LungdrError, MultiFrameError, UnsupportedFormatError
from lungdr.io import sniff_format

log = logging.getLogger("lungdr.serve")

HTTP_FORMATS = ("png", "jpeg", "dicom")  # what the API accepts (NumPy files are for batch jobs only)


class ApiError(Exception):
    """An answer other than 200, with its status, machine-readable code and readable message."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable code, e.g. too_large, unsupported_format, undecodable")
    message: str


class Prediction(BaseModel):
    label: int | None = Field(description="0 normal, 1 abnormal, null when the case needs review")
    p_abnormal: float
    votes: dict[str, int | None] = Field(description="each classifier's vote: svm, transfer, cnn3d")
    probabilities: dict[str, float | None] = Field(description="each classifier's P(abnormal)")
    needs_review: bool
    review_reason: str | None = Field(description="out_of_distribution | no_majority | implausible_lung_mask")
    lung_area_fraction: float
    model_version: str
    mask: str | None = Field(None, description="with ?mask=true: base64 PNG (0/255) at the input's size")


def status_of(exc: LungdrError) -> int:
    """HTTP status for a typed input error: unreadable image 422, not an image format we take 415."""
    if isinstance(exc, (DecodeError, MultiFrameError)):
        return 422
    if isinstance(exc, UnsupportedFormatError):
        return 415
    return 422


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes by header and by what actually arrives."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "bad_request", "Content-Length is not an integer") from None
        if size > limit:
            raise ApiError(413, "too_large", f"upload of {size} bytes exceeds the limit of {limit} bytes")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, "too_large", f"upload exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def file_from_multipart(request: Request, body: bytes) -> bytes:
    """The ``file`` field of a multipart/form-data body already read (and size-checked) into memory."""

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
    except (StarletteHTTPException, ValueError, AssertionError) as exc:
        raise ApiError(400, "bad_request", f"malformed multipart body ({type(exc).__name__})") from None
    try:
        field = form.get("file")
        if not isinstance(field, UploadFile):
            raise ApiError(400, "bad_request", "multipart request has no file field named 'file'")
        return await field.read()
    finally:
        await form.close()


async def upload_bytes(request: Request, limit: int) -> bytes:
    """Image bytes from a raw body or a multipart ``file`` field; 415 unless PNG, JPEG or DICOM by content."""
    body = await read_limited(request, limit)
    if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        body = await file_from_multipart(request, body)
    if body:  # an empty upload is an undecodable image (422), decided by the decoder
        fmt = sniff_format(body)
        if fmt not in HTTP_FORMATS:
            raise ApiError(415, UnsupportedFormatError.code, "the upload is not a PNG, JPEG or DICOM image")
    return body


def bearer_check(token: str | None):
    """A FastAPI dependency refusing requests without ``Authorization: Bearer <token>`` (when a token is set)."""

    def check(request: Request) -> None:
        if not token:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(401, "unauthorized", "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    return check


_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "description": "one PNG, JPEG or DICOM image: the raw body, or multipart/form-data with a field `file`",
        "content": {
            **{t: {"schema": {"type": "string", "format": "binary"}}
               for t in ("image/png", "image/jpeg", "application/dicom", "application/octet-stream")},
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"],
                           "properties": {"file": {"type": "string", "format": "binary"}}}
            },
        },
    }
}
_ERRORS = {s: {"model": ErrorBody} for s in (400, 401, 413, 415, 422, 503)}


def make_api(service: Any, max_upload_bytes: int, token: str | None = None) -> FastAPI:
    """The FastAPI app: ``POST /v1/predict``, ``GET /v1/health``, ``GET /v1/model``, docs at ``/docs``."""
    app = FastAPI(title="lungdr", version=__version__,
                  description="Lung-abnormality detection on chest DR images (PNG, JPEG or DICOM).")
    auth = Depends(bearer_check(token))

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(LungdrError)
    async def _input_error(_: Request, exc: LungdrError) -> JSONResponse:
        return _error(status_of(exc), exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(".".join(str(p) for p in e.get("loc", ())) + ": " + e.get("msg", "") for e in exc.errors())
        return _error(400, "bad_request", where or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.error("internal error in request: %s", type(exc).__name__)
        return _error(500, "internal", f"internal error ({type(exc).__name__})")

    @app.post("/v1/predict", response_model=Prediction, response_model_exclude_none=False,
              dependencies=[auth], responses=_ERRORS, openapi_extra=_UPLOAD_DOC)
    async def predict(request: Request, mask: bool = Query(False, description="also return the lung mask")):
        data = await upload_bytes(request, max_upload_bytes)
        return await service.predict(data, mask)

    @app.get("/v1/health")
    async def health() -> dict:
        return await service.health()

    @app.get("/v1/model", dependencies=[auth], responses={401: {"model": ErrorBody}})
    async def model() -> dict:
        return await service.card()

    return app
