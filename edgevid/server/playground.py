"""The browser playground at ``/``: one static page (package data in ``static/``) that talks to the API.

The page is plain HTML/CSS/JS (no build step, nothing from a CDN), so it works offline on an edge box.
It uses only the public routes, with the key the user types (kept in the page): ``/v1/frames`` for the
contact sheet and ``/v1/chat/completions`` (SSE) for the answer. The one route it adds,
``/ui/settings``, tells the page what the API would tell it anyway on the first refusal: whether a key is
needed and the server's caps, so it can ask for the key up front and set the inputs' bounds.
"""
from __future__ import annotations

from flask import Blueprint, Flask, current_app, jsonify, send_from_directory

STATIC = "static"
# no script-src: test drivers (Playwright's wait_for_function) evaluate strings in the page; model output is
# inserted as text only, so there is nothing to inject through
SECURITY_HEADERS = {
    "Content-Security-Policy": "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

playground = Blueprint("playground", __name__, static_folder=STATIC, static_url_path="/ui")


@playground.get("/")
def index():
    response = send_from_directory(playground.static_folder, "index.html", max_age=0)
    response.headers.update(SECURITY_HEADERS)
    return response


@playground.get("/ui/settings")
def settings():
    state = current_app.extensions["edgevid"]
    policy = state.config.policy
    defaults = state.limits.defaults          # serve's generation flags: what a request that omits them gets
    return jsonify({
        "model": state.limits.model_name,
        "api_key_required": state.config.api_key is not None,
        "max_media_bytes": policy.max_bytes,
        "max_body_bytes": state.config.body_limit,
        "max_frames": state.limits.max_frames,
        "default_frames": state.limits.default_frames,
        "defaults": {"max_tokens": defaults.max_tokens, "temperature": defaults.temperature, "seed": defaults.seed},
        "local_media": bool(policy.allow_local),
        "remote_media": bool(policy.allow_remote),
    })


@playground.after_request
def _no_sniff(response):
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def add_playground(app: Flask) -> None:
    app.register_blueprint(playground)
