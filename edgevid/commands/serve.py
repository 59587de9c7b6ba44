"""``edgevid serve``: the OpenAI chat-completions API (with video) over a model folder, on waitress."""
from __future__ import annotations

import logging

import click

from edgevid.commands.options import device_options, generation_options, model_options
from edgevid.commands.signals import on_stop_signals
from edgevid.media.policy import DEFAULT_DECODE_TIMEOUT, DEFAULT_MAX_PIXELS
from edgevid.server.config import DEFAULT_MAX_MEDIA_BYTES, ServerConfig

_DEFAULTS = ServerConfig()

log = logging.getLogger(__name__)


@click.command("serve")
@model_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=1234, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on; 0 picks a free one (the banner shows it).")
@click.option("--api-key", envvar="EDGEVID_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on every /v1 route (or set EDGEVID_API_KEY).")
@click.option("--allowed-local-media-path", "local_dirs", multiple=True,
              type=click.Path(exists=True, file_okay=False),
              help="Folder whose files requests may name by path or file:// (repeatable). Default: none.")
@click.option("--allowed-media-domains", "domains", multiple=True,
              help="Only fetch media from these hosts (repeatable, or comma-separated). Default: any host.")
@click.option("--allow-private-urls", is_flag=True,
              help="Allow media URLs on loopback, private and link-local addresses (refused by default).")
@click.option("--max-media-bytes", default=DEFAULT_MAX_MEDIA_BYTES, show_default=True,
              type=click.IntRange(min=1), help="Cap on each download, data URL or local file.")
@click.option("--max-frames", default=32, show_default=True, type=click.IntRange(1, 1024),
              help="Most frames per video a request may ask for (num_frames).")
@click.option("--max-media-parts", default=_DEFAULTS.max_media_parts, show_default=True, type=click.IntRange(min=0),
              help="Most images + videos in one request.")
@click.option("--max-total-frames", default=_DEFAULTS.max_total_frames, show_default=True,
              type=click.IntRange(min=1), help="Most video frames (+1 per image) in one request.")
@click.option("--max-text-bytes", default=_DEFAULTS.max_text_bytes, show_default=True, type=click.IntRange(min=1),
              help="Most UTF-8 bytes of text in one request (tokenized in the request thread).")
@click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=click.IntRange(min=1),
              help="Largest picture, GIF screen or video frame (width x height) decoded.")
@click.option("--decode-timeout", default=DEFAULT_DECODE_TIMEOUT, show_default=True,
              type=click.FloatRange(min=0, min_open=True), help="Seconds to decode one request's media.")
@click.option("--fetch-timeout", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds for a whole media download (connect, headers and body).")
@click.option("--header-timeout", default=_DEFAULTS.header_timeout, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Seconds a client has to send a request's headers (slow clients are disconnected).")
@click.option("--queue-size", default=16, show_default=True, type=click.IntRange(min=0),
              help="Requests that may wait behind the running one; more are answered 503.")
@generation_options
@device_options
@click.option("--model-name", default=None, help="Name served in /v1/models (default: the folder name).")
@click.option("--no-ui", is_flag=True, help="Do not serve the browser playground at / (the API only).")
@click.option("--spin/--no-spin", "spinning", default=False, show_default=True,
              help="onnxruntime threads busy-wait between ops: only when the server has the cores to itself.")
@click.option("--prefix-cache-mb", type=click.IntRange(min=0), default=512, show_default=True,
              help="Keep prefilled prompt prefixes (a chat's earlier turns, an already-asked video) up to this "
                   "size, so follow-up requests prefill only their new tokens; 0 = off.")
def serve(model_dir, demo, host, port, api_key, local_dirs, domains, allow_private_urls, max_media_bytes,
          max_frames, max_media_parts, max_total_frames, max_text_bytes, max_pixels, decode_timeout,
          fetch_timeout, header_timeout, queue_size, generation, device, precision, model_name, no_ui, spinning,
          prefix_cache_mb):
    """Serve the OpenAI chat-completions API with video input.

    The generation flags are the defaults of requests that do not set those fields."""
    from edgevid.pipeline import Pipeline
    from edgevid.server.app import create_app
    from edgevid.server.config import server_policy
    from edgevid.server.http_server import HttpServer

    domains = tuple(d.strip() for item in domains for d in item.split(",") if d.strip())
    from edgevid.media.images import set_pillow_limit

    set_pillow_limit(max_pixels)
    policy = server_policy(local_dirs=tuple(local_dirs), domains=domains or None,
                           allow_private_urls=allow_private_urls, max_bytes=max_media_bytes,
                           max_pixels=max_pixels, decode_timeout=decode_timeout).with_(timeout=fetch_timeout)
    pipeline = Pipeline.load(model_dir, device=device, precision=precision, policy=policy, spinning=spinning,
                             prefix_cache_bytes=prefix_cache_mb * 2**20)
    config = ServerConfig(model_name=model_name, api_key=api_key, policy=policy, max_frames=max_frames,
                          queue_size=queue_size, defaults=generation, ui=not no_ui, max_media_parts=max_media_parts,
                          max_total_frames=max_total_frames, max_text_bytes=max_text_bytes,
                          header_timeout=header_timeout)
    app = create_app(pipeline, config)
    try:
        server = HttpServer(app, host=host, port=port)
    except OSError as exc:
        app.extensions["edgevid"].worker.stop()
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    state = app.extensions["edgevid"]
    click.echo(f"edgevid serving '{state.limits.model_name}' at {server.url}/v1 "
               f"(provider {state.provider}, {precision}; "
               f"{'API key required' if api_key else 'no API key'}; Ctrl-C stops)", err=False)
    if not no_ui:
        click.echo(f"playground: {server.url}/")

    def stop(signum):
        log.info("signal %s: shutting down", signum)
        server.shutdown()

    with on_stop_signals(stop):
        server.serve_forever()
