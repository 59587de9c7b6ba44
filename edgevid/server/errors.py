"""Errors only the HTTP surface raises, and the OpenAI error body every failure is answered with.

The media / model layers raise :mod:`edgevid.errors` types; each carries ``status``, ``type``, ``code``
and ``param``, so :func:`error_payload` turns any of them into ``{"error": {...}}`` unchanged.
"""
from __future__ import annotations

from edgevid.errors import EdgevidError, InvalidRequestError


class AuthenticationError(EdgevidError):
    """Missing or wrong ``Authorization: Bearer`` key on a ``/v1`` route."""
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class ModelNotFoundError(EdgevidError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class InvalidValueError(InvalidRequestError):
    """A parameter with a value out of range or of the wrong type."""
    code = "invalid_value"


class UnsupportedParameterError(InvalidRequestError):
    """A parameter edgevid understands but does not implement (``n > 1``, ``tools``, ...)."""
    code = "unsupported_parameter"


class ServerBusyError(EdgevidError):
    """Every slot of the model queue is taken; the client should retry later."""
    status = 503
    type = "server_error"
    code = "server_overloaded"


def error_payload(err: EdgevidError) -> dict:
    return {"error": {"message": str(err), "type": err.type, "param": err.param, "code": err.code}}


def http_error_payload(status: int, message: str, code: str) -> dict:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
