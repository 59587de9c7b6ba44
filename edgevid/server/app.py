"""The Flask application: OpenAI chat completions (whole and streamed), models, health.

Routes reach the model only through the :class:`ServerState` stored on the app, never module globals.
"""
from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass, field

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from edgevid import __version__
from edgevid.errors import ContextLengthError, EdgevidError
from edgevid.server.config import ServerConfig
from edgevid.server.decode_media import decode_request_media
from edgevid.server.errors import (AuthenticationError, InvalidValueError, ModelNotFoundError,
                                   error_payload, http_error_payload)
from edgevid.server.frames import parse_frames_request, sample_frames
from edgevid.server.request import (ChatRequest, RequestLimits, TextPart, check_body_size, check_json,
                                    parse_chat_request)
from edgevid.server.responses import DONE, PING, Completion, sse
from edgevid.server.worker import Job, ModelWorker

log = logging.getLogger(__name__)

DISCONNECT_POLL_SECONDS = 0.1     # how often a non-streamed request checks that its client is still there


@dataclass
class ServerState:
    config: ServerConfig
    limits: RequestLimits
    worker: ModelWorker
    provider: str
    fingerprint: str
    started: int
    decode_gate: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(2))


def create_app(pipeline, config: ServerConfig | None = None) -> Flask:
    """A Flask app serving ``pipeline``; its model worker thread starts here (stop it with
    ``app.extensions["edgevid"].worker.stop()``)."""
    config = config or ServerConfig()
    name = config.model_name or pipeline.model_name
    provider = str(getattr(pipeline, "provider", "unknown"))
    limits = RequestLimits(model_name=name, max_frames=config.max_frames,
                           default_frames=min(pipeline.default_num_frames, config.max_frames),
                           max_media_bytes=config.policy.max_bytes,
                           defaults=config.defaults,
                           max_media_parts=config.max_media_parts, max_total_frames=config.max_total_frames,
                           max_text_bytes=config.max_text_bytes)
    if hasattr(pipeline, "admission"):          # the worker-side check holds the server's own caps
        from edgevid.admission import AdmissionLimits
        pipeline.admission = AdmissionLimits(config.max_media_parts, config.max_total_frames, config.max_text_bytes)
    worker = ModelWorker(pipeline, queue_size=config.queue_size, policy=config.policy).start()
    state = ServerState(config=config, limits=limits, worker=worker, provider=provider,
                        fingerprint=f"edgevid-{__version__}-{provider}", started=int(time.time()),
                        decode_gate=threading.BoundedSemaphore(config.concurrent_decodes))
    app = Flask("edgevid.server", static_folder=None)     # the playground serves its files only when on
    app.config["MAX_CONTENT_LENGTH"] = config.body_limit
    app.json.sort_keys = False
    app.extensions["edgevid"] = state
    app.before_request(_check_api_key)
    app.add_url_rule("/v1/chat/completions", view_func=chat_completions, methods=["POST"])
    app.add_url_rule("/v1/models", view_func=list_models, methods=["GET"])
    app.add_url_rule("/v1/models/<path:model_id>", view_func=get_model, methods=["GET"])
    app.add_url_rule("/v1/frames", view_func=media_frames, methods=["POST"])
    app.add_url_rule("/health", view_func=health, methods=["GET"])
    if config.ui:
        from edgevid.server.playground import add_playground
        add_playground(app)
    app.register_error_handler(EdgevidError, _edgevid_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def _state() -> ServerState:
    return current_app.extensions["edgevid"]


# ---- routes --------------------------------------------------------------------------------------------
def chat_completions():
    state = _state()
    req = parse_chat_request(_json_body(), state.limits)
    _check_text_tokens(req, state.worker.pipeline)
    ticket = state.worker.admit()
    try:
        messages = decode_request_media(req, state.worker.pipeline, state.config.policy, gate=state.decode_gate)
        job = state.worker.submit(ticket, messages, req.options, stream=req.stream)
    except BaseException:
        ticket.release()
        raise
    completion = Completion(model=req.model, system_fingerprint=state.fingerprint)
    if not req.stream:
        return _whole_response(job, completion)
    first = job.next_event(timeout=state.config.keepalive_seconds)
    if first is not None and first[0] == "error":   # failed before anything was sent: a real status
        raise first[1]
    events = _sse_events(job, first, completion, req, state.config.keepalive_seconds)
    return Response(events, mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def media_frames():
    """The sampled frames' thumbnails and times; decoding holds a request slot, as a chat request's does."""
    state = _state()
    req = parse_frames_request(_json_body(), state.limits)
    ticket = state.worker.admit()
    try:
        return jsonify(sample_frames(req, state.worker.pipeline, state.config.policy, gate=state.decode_gate))
    finally:
        ticket.release()


def list_models():
    return jsonify({"object": "list", "data": [_model_card(_state())]})


def get_model(model_id: str):
    card = _model_card(_state())
    if model_id not in (card["id"], "default"):
        raise ModelNotFoundError(f"The model '{model_id}' does not exist; this server serves '{card['id']}'",
                                 param="model")
    return jsonify(card)


def health():
    state = _state()
    worker = state.worker
    return jsonify({"status": "ok", "model": state.limits.model_name, "provider": state.provider,
                    "queue": {"capacity": worker.capacity, "in_use": worker.slots_in_use, "busy": worker.busy},
                    "requests": {"completed": worker.stats.completed, "cancelled": worker.stats.cancelled,
                                 "failed": worker.stats.failed}})


def _model_card(state: ServerState) -> dict:
    return {"id": state.limits.model_name, "object": "model", "created": state.started, "owned_by": "edgevid"}


# ---- chat helpers --------------------------------------------------------------------------------------
def _json_body() -> object:
    raw = request.get_data(cache=False)          # 413 above MAX_CONTENT_LENGTH, before parsing
    check_body_size(raw)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidValueError(f"the request body is not valid JSON ({exc})") from None
    except RecursionError:
        raise InvalidValueError("the request body is nested too deeply") from None
    del raw
    check_json(body)
    return body


def _check_text_tokens(req: ChatRequest, pipeline) -> None:
    """Tokenize the request's text here, in its own thread (the byte cap already bounds the work), so a
    prompt longer than the context is refused without ever reaching the model worker."""
    tokenizer = getattr(pipeline, "tokenizer", None)
    context = getattr(pipeline, "context_length", None)
    if not hasattr(tokenizer, "encode_literal") or not isinstance(context, int):
        return
    tokens = 0
    for message in req.messages:
        for part in message.parts:
            if isinstance(part, TextPart) and part.text:
                tokens += len(tokenizer.encode_literal(part.text))      # user text is text (prompt integrity)
                if tokens > context:
                    raise ContextLengthError(f"the request's text alone is more than {tokens} tokens, over the "
                                             f"model's context of {context} tokens", param="messages")


def _whole_response(job: Job, completion: Completion):
    gone = request.environ.get("waitress.client_disconnected", lambda: False)
    while (event := job.next_event(timeout=DISCONNECT_POLL_SECONDS)) is None:
        if gone():                       # the client gave up: free the worker, nobody reads the answer
            job.cancel()
            return Response(status=499)
    kind, value = event
    if kind == "error":
        raise value
    body = completion.body(value.text, value.finish_reason, value.prompt_tokens, value.completion_tokens)
    return jsonify(body)


def _sse_events(job: Job, event, completion: Completion, req: ChatRequest, keepalive: float):
    """SSE text; pings while the worker is busy elsewhere or prefilling; cancels the job if the client
    goes away (waitress then closes this generator and ``finally`` runs)."""
    usage = req.include_usage
    prompt_tokens = 0
    try:
        while True:
            if event is None:
                yield PING
            else:
                kind, value = event
                if kind == "start":
                    prompt_tokens = value
                    yield completion.chunk({"role": "assistant", "content": ""}, include_usage=usage)
                elif kind == "piece" and value.text:
                    yield completion.chunk({"content": value.text}, include_usage=usage)
                elif kind == "end":
                    finish, completion_tokens = value
                    yield completion.chunk({}, finish, include_usage=usage)
                    if usage:
                        yield completion.usage_chunk(prompt_tokens, completion_tokens)
                    yield DONE
                    return
                elif kind == "error":
                    yield sse(error_payload(value))
                    yield DONE
                    return
            event = job.next_event(timeout=keepalive)
    finally:
        job.cancel()


# ---- auth and errors -----------------------------------------------------------------------------------
def _check_api_key():
    key = _state().config.api_key
    if key is None or not request.path.startswith("/v1/"):
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if not header:
        raise AuthenticationError("You didn't provide an API key: send 'Authorization: Bearer <key>'")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise AuthenticationError("Incorrect API key provided")
    return None


def _edgevid_error(err: EdgevidError):
    if err.status >= 500:
        log.error("request failed: %s", err)
    response = jsonify(error_payload(err))
    response.status_code = err.status
    if err.status == 503:
        response.headers["Retry-After"] = "1"
    return response


def _http_error(exc: HTTPException):
    status = exc.code or 500
    if status == 404:
        message = f"Unknown request URL: {request.method} {request.path}"
    elif status == 405:
        message = f"Method {request.method} is not allowed on {request.path}"
    elif status == 413:
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        message = f"the request body is larger than this server's limit of {limit} bytes (--max-body-bytes)"
    else:
        message = exc.description or exc.name
    code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
        status, exc.name.lower().replace(" ", "_"))
    response = jsonify(http_error_payload(status, message, code))
    response.status_code = status
    if status == 405 and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def _unexpected_error(exc: Exception):
    log.exception("unhandled error on %s %s", request.method, request.path)
    return jsonify(http_error_payload(500, "internal server error; see the server log", "internal_error")), 500
