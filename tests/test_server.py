"""`edgevid serve` end to end: a real Pipeline over an exported demo model, real waitress on a loopback
port, the official `openai` client, real clips, a real loopback HTTP server for URL media.

Servers run in threads of this process (port 0) except the CLI test, which starts `edgevid serve` as a
subprocess and stops it with SIGTERM. Every server-using test checks GET /health afterwards.
"""
from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import openai
import pytest
import requests

from clips import truncate, write_clip, write_image

KEY = "test-key-123"
FRAMES = 4                   # frames per video everywhere: keeps the vision encoder cheap
MAX_MEDIA = 2 * 2**20        # --max-media-bytes of the test servers


# ---- the model and media --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def model_dir(demo_model):
    """The demo checkpoint exported fp32 (conftest; the parity gate is the export tests' business)."""
    return demo_model


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    allowed, outside = root / "allowed", root / "outside"
    allowed.mkdir()
    outside.mkdir()
    files = {
        "clip": write_clip(allowed / "clip.mp4", frames=12, fps=12, size=(96, 64)),
        "clip2": write_clip(allowed / "clip2.webm", frames=8, fps=8, size=(64, 64), start=100),
        "image": write_image(allowed / "still.png", size=(64, 48)),
        "secret": write_clip(outside / "secret.mp4", frames=6, size=(64, 48)),
        "text": allowed / "notes.mp4",
        "corrupt": truncate(write_clip(allowed / "broken.mp4", frames=12, size=(96, 64)), 0.3),
        "big": allowed / "big.mp4",
    }
    files["text"].write_text("this is not a video, only text with a .mp4 name\n" * 20)
    files["big"].write_bytes(files["clip"].read_bytes() + os.urandom(MAX_MEDIA + 4096))
    link = allowed / "escape.mp4"
    try:
        link.symlink_to(files["secret"])
        files["link"] = link
    except OSError:                                    # Windows without the symlink privilege
        files["link"] = None
    files["allowed_dir"], files["outside_dir"] = allowed, outside
    return files


def data_url(path: Path, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode()


def video(url: str, **extra) -> dict:
    return {"type": "video_url", "video_url": {"url": url, **extra}}


def ask(*parts, text: str = "What happens in this video?") -> list[dict]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


# ---- a loopback HTTP server for URL media ---------------------------------------------------------------
class _QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], ConnectionError):   # the fetcher hung up at its byte cap: expected
            return
        super().handle_error(request, client_address)


class MediaHTTP:
    """Serves files from a folder: /files/<name>, /redirect?to=<url>, /chunked/<name> (no Content-Length),
    /stall/<name> (waits for ``release`` first)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.release = threading.Event()
        self.stalled = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                parts = urlsplit(self.path)
                kind, _, name = parts.path.strip("/").partition("/")
                if kind == "redirect":
                    self.send_response(302)
                    self.send_header("Location", parse_qs(parts.query)["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path = outer.folder / name
                if not path.is_file():
                    self.send_error(404)
                    return
                if kind == "stall":
                    outer.stalled.set()
                    outer.release.wait(30)
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                if kind == "chunked":                 # length unknown until the body ends
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for i in range(0, len(data), 65536):
                        self.wfile.write(data[i:i + 65536])
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = _QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, kind: str, name: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.httpd.server_address[1]}/{kind}/{name}"

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def media_http(media):
    server = MediaHTTP(media["allowed_dir"])
    yield server
    server.close()


# ---- servers under test ---------------------------------------------------------------------------------
class RunningServer:
    def __init__(self, model_dir: Path, **config):
        from edgevid.pipeline import Pipeline
        from edgevid.server.app import create_app
        from edgevid.server.config import ServerConfig, server_policy
        from edgevid.server.http_server import HttpServer

        policy_args = {k: config.pop(k) for k in ("local_dirs", "domains", "allow_private_urls") if k in config}
        policy = server_policy(max_bytes=MAX_MEDIA, **policy_args)
        config = {"api_key": KEY, "max_frames": 8, "keepalive_seconds": 0.05, **config}
        self.pipeline = Pipeline.load(model_dir, device="cpu")
        self.app = create_app(self.pipeline, ServerConfig(policy=policy, **config))
        self.http = HttpServer(self.app, host="127.0.0.1", port=0)
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()
        self.url = self.http.url

    def client(self, key: str | None = KEY, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(api_key=key or "none", base_url=self.url + "/v1", max_retries=0, timeout=120,
                             **kwargs)

    def post(self, body, *, key: str | None = KEY, timeout: float = 120, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if isinstance(body, (dict, list)):
            kwargs["json"] = body
        else:
            kwargs["data"] = body
        return requests.post(self.url + "/v1/chat/completions", headers=headers, timeout=timeout, **kwargs)

    def health(self) -> dict:
        reply = requests.get(self.url + "/health", timeout=30)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def wait_idle(self, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            state = self.health()
            if not state["queue"]["busy"] and state["queue"]["in_use"] == 0:
                return state
            assert time.monotonic() < deadline, f"worker still busy: {state}"
            time.sleep(0.05)

    def stop(self):
        self.http.shutdown(wait=True)
        self.thread.join(10)
        assert not self.thread.is_alive()


def _alive(server: RunningServer):
    yield server
    server.wait_idle()        # every test leaves the server up and its worker free


@pytest.fixture(scope="module")
def _main(model_dir, media):
    server = RunningServer(model_dir, local_dirs=(str(media["allowed_dir"]),), queue_size=8)
    yield server
    server.stop()


@pytest.fixture
def server(_main):
    yield from _alive(_main)


@pytest.fixture(scope="module")
def _private(model_dir):
    server = RunningServer(model_dir, allow_private_urls=True, queue_size=0)
    yield server
    server.stop()


@pytest.fixture
def private_server(_private):
    """Loopback URLs allowed, no local files, one slot (queue size 0)."""
    yield from _alive(_private)


LONG_STORY = {"messages": [{"role": "user", "content": "Tell me a long story."}], "temperature": 2.0}


@pytest.fixture(scope="module")
def long_seed(_main):
    """A seed whose sampled answer runs 1,200+ tokens before its end of turn (asked of the server itself), so
    requests made with it keep the worker generating for well over half a second whatever the demo model's
    weights are; shorter answers race the client's give-up and the server's disconnect poll."""
    for seed in range(1, 41):
        reply = _main.post({**LONG_STORY, "max_tokens": 4000, "seed": seed})
        if reply.json()["usage"]["completion_tokens"] >= 1200:
            return seed
    pytest.fail("no seed in 1..40 gives a 1,200-token answer")


def error_of(reply: requests.Response) -> dict:
    body = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def stream_text(chunks) -> tuple[str, list]:
    chunks = list(chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


# ---- happy paths ------------------------------------------------------------------------------------
def test_models_and_health(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == [server.pipeline.model_name]
    state = server.health()
    assert state["status"] == "ok" and state["provider"] == server.pipeline.provider
    assert server.client().models.retrieve("default").id == server.pipeline.model_name


def test_data_url_video(server, media):
    reply = server.client().chat.completions.create(
        model="default", messages=ask(video(data_url(media["clip"]))), max_tokens=6,
        extra_body={"num_frames": FRAMES})
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == server.pipeline.model_name and abs(reply.created - time.time()) < 120
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.prompt_tokens > FRAMES and 1 <= usage.completion_tokens <= 6
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if choice.finish_reason == "length":
        assert usage.completion_tokens == 6


def test_local_path_file_url_image_system_and_multi_turn(server, media):
    messages = [
        {"role": "system", "content": "You describe videos."},
        {"role": "user", "content": [video(str(media["clip"])), {"type": "text", "text": "And this one?"}]},
        {"role": "assistant", "content": "A counter."},
        {"role": "user", "content": [
            video(media["clip2"].as_uri(), num_frames=2),
            {"type": "image_url", "image_url": {"url": str(media["image"])}},
            {"type": "text", "text": "Compare them."}]},
    ]
    one = server.client().chat.completions.create(model=server.pipeline.model_name, messages=messages,
                                                   max_tokens=4, extra_body={"num_frames": FRAMES})
    fewer = server.client().chat.completions.create(model="default", messages=messages[1:2], max_tokens=4,
                                                     extra_body={"num_frames": FRAMES})
    # the whole conversation (system turn, two videos, an image) is in the prompt
    assert one.usage.prompt_tokens > fewer.usage.prompt_tokens > 0


def test_identical_requests_decode_the_video_once(server, media, monkeypatch):
    """The server resolves media through the pipeline's media cache: the second identical request (a data
    URL and a path naming the same bytes) takes its frames from the cache and decodes nothing."""
    import edgevid.media

    clip = write_clip(media["allowed_dir"] / "once.mp4", frames=10, fps=10, size=(64, 48), start=500)
    decoded = []
    real = edgevid.media.sample_video
    monkeypatch.setattr(edgevid.media, "sample_video", lambda *a, **k: decoded.append(a[0]) or real(*a, **k))
    answers = [server.post({"messages": ask(video(url)), "max_tokens": 4, "num_frames": 3}).json()
               for url in (data_url(clip), data_url(clip), str(clip))]
    assert len(decoded) == 1
    assert len({json.dumps([a["choices"], a["usage"]]) for a in answers}) == 1, answers


def test_url_from_loopback_server(private_server, media_http):
    reply = private_server.client().chat.completions.create(
        model="default", messages=ask(video(media_http.url("files", "clip.mp4"), num_frames=FRAMES)),
        max_tokens=4)
    assert reply.usage.prompt_tokens > FRAMES and reply.choices[0].finish_reason in ("stop", "length")


def test_streaming_matches_whole_response_and_reports_usage(server, media):
    kwargs = dict(model="default", messages=ask(video(str(media["clip"]))), max_tokens=8,
                  extra_body={"num_frames": FRAMES})
    whole = server.client().chat.completions.create(**kwargs)
    text, chunks = stream_text(server.client().chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **kwargs))
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == [whole.choices[0].finish_reason]
    last = chunks[-1]
    assert last.choices == [] and last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert last.usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_raw_sse_ends_with_done_and_pings_while_waiting(server, media, long_seed):
    """A stream queued behind another request gets ': ping' comments, then its answer, then [DONE]."""
    with ThreadPoolExecutor(1) as pool:
        # a 1,200-token answer keeps the worker busy whatever the media cache already holds
        busy = pool.submit(server.post, {**LONG_STORY, "max_tokens": 1200, "seed": long_seed})
        time.sleep(0.05)
        reply = server.post({"messages": ask(video(str(media["clip"]))), "stream": True, "max_tokens": 3,
                             "num_frames": FRAMES}, stream=True)
        body = reply.text
        busy.result()
    assert reply.status_code == 200 and reply.headers["Content-Type"].startswith("text/event-stream")
    assert ": ping" in body
    events = [line for line in body.split("\n\n") if line.strip()]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") or e == ": ping" for e in events)
    first = json.loads(next(e for e in events if e.startswith("data: {"))[6:])
    assert first["choices"][0]["delta"]["role"] == "assistant"


def test_seed_is_honoured(server, media):
    def sample(seed):
        return server.client().chat.completions.create(
            model="default", messages=ask(video(str(media["clip"]))), max_tokens=8, temperature=1.0,
            seed=seed, extra_body={"num_frames": 2, "top_k": 50}).choices[0].message.content

    assert sample(7) == sample(7)
    assert len({sample(s) for s in (1, 2, 3, 4)}) > 1


def test_stop_strings_and_length(server):
    client = server.client()
    messages = [{"role": "user", "content": "Tell me a story about a red ball."}]
    full = client.chat.completions.create(model="default", messages=messages, max_tokens=16)
    text = full.choices[0].message.content
    if full.choices[0].finish_reason == "length":
        assert full.usage.completion_tokens == 16
    if len(text.strip()) >= 6:
        stop = text.strip()[3:5]
        cut = client.chat.completions.create(model="default", messages=messages, max_tokens=16, stop=[stop, "zzz"])
        assert cut.choices[0].message.content == text[: text.index(stop)]
        assert cut.choices[0].finish_reason == "stop"
    short = client.chat.completions.create(model="default", messages=messages, max_completion_tokens=1)
    assert short.usage.completion_tokens == 1


# ---- request errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, param", [
    ({"n": 2}, "n"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"logprobs": True}, "logprobs"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"seed": 1.5}, "seed"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"num_frames": 9}, "num_frames"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"wibble": 1}, "wibble"),
])
def test_unsupported_or_invalid_parameters_are_400_naming_them(server, extra, param):
    reply = server.post({"model": "default", "messages": [{"role": "user", "content": "hi"}], **extra})
    assert reply.status_code == 400, reply.text
    err = error_of(reply)
    assert err["param"] == param and err["type"] == "invalid_request_error" and param in err["message"]


@pytest.mark.parametrize("messages, param", [
    ([], "messages"),
    ("hello", "messages"),
    ([{"role": "tool", "content": "x"}], "messages[0].role"),
    ([{"role": "user"}], "messages[0].content"),
    ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}], "messages[0].content[0].type"),
    ([{"role": "user", "content": [{"type": "video_url", "video_url": {}}]}], "messages[0].content[0].video_url.url"),
    ([{"role": "user", "content": [video("clip.mp4", num_frames=64)]}], "messages[0].content[0].video_url.num_frames"),
    ([{"role": "system", "content": [video("clip.mp4")]}], "messages[0].content"),
])
def test_bad_messages_are_400(server, messages, param):
    reply = server.post({"model": "default", "messages": messages})
    assert reply.status_code == 400, reply.text
    assert error_of(reply)["param"] == param


def test_openai_client_sees_typed_errors(server, media):
    client = server.client()
    with pytest.raises(openai.BadRequestError, match="'n' must be 1"):
        client.chat.completions.create(model="default", messages=ask(), n=2)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="default", messages=ask(video(str(media["clip"]))),
                                       extra_body={"num_frames": 100})
    assert info.value.body["param"] == "num_frames" and "--max-frames" in info.value.message
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=ask())
    assert info.value.body["code"] == "model_not_found"


def test_malformed_json_unknown_route_wrong_method_and_oversized_body(server):
    reply = server.post(b'{"model": "default", "messages": [')
    assert reply.status_code == 400 and "not valid JSON" in error_of(reply)["message"]
    assert server.post(b"[1, 2]").status_code == 400
    reply = requests.get(server.url + "/v1/nothing", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert reply.status_code == 404 and error_of(reply)["code"] == "not_found"
    reply = requests.get(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert reply.status_code == 405 and error_of(reply)["code"] == "method_not_allowed"
    limit = server.app.config["MAX_CONTENT_LENGTH"]
    reply = server.post(b'{"messages": "' + b"x" * (limit + 10) + b'"}')
    assert reply.status_code == 413 and error_of(reply)["code"] == "request_too_large"


def test_api_key_on_every_v1_route(server):
    for key in (None, "wrong"):
        reply = server.post({"messages": ask()}, key=key)
        assert reply.status_code == 401 and error_of(reply)["code"] == "invalid_api_key"
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        assert requests.get(server.url + "/v1/models", headers=headers, timeout=30).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").models.list()
    assert requests.get(server.url + "/health", timeout=30).status_code == 200   # health needs no key


def test_prompt_over_the_context_is_400_and_the_server_keeps_serving(server):
    words = " ".join(["the red ball rolls"] * 20000)
    reply = server.post({"messages": [{"role": "user", "content": words}], "max_tokens": 2})
    assert reply.status_code == 400, reply.text[:300]
    assert error_of(reply)["code"] == "context_length_exceeded"
    ok = server.post({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert ok.status_code == 200


# ---- media refusals ---------------------------------------------------------------------------------
def refused(server, url: str, status: int, code: str | None = None, **kwargs) -> dict:
    reply = server.post({"model": "default", "messages": ask(video(url, num_frames=FRAMES)), "max_tokens": 2},
                        **kwargs)
    assert reply.status_code == status, reply.text[:400]
    err = error_of(reply)
    assert err["param"] == "messages[0].content[0].video_url.url"
    if code:
        assert err["code"] == code, err
    return err


def test_local_paths_outside_the_allowed_folder_are_403(server, media):
    allowed = media["allowed_dir"]
    refused(server, str(media["secret"]), 403, "media_not_allowed")
    refused(server, str(allowed / ".." / "outside" / "secret.mp4"), 403, "media_not_allowed")
    refused(server, media["secret"].as_uri(), 403, "media_not_allowed")
    refused(server, "/etc/passwd", 403, "media_not_allowed")
    if media["link"] is not None:
        refused(server, str(media["link"]), 403, "media_not_allowed")


def test_local_paths_refused_when_no_folder_is_allowed(private_server, media):
    refused(private_server, str(media["clip"]), 403, "media_not_allowed")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "169.254.169.254", "10.0.0.1", "[::1]"])
def test_private_urls_are_403_by_default(server, host):
    refused(server, f"http://{host}:9/clip.mp4", 403, "media_not_allowed")


def test_redirects_are_checked_on_every_hop(model_dir, media_http):
    target = media_http.url("files", "clip.mp4", host="127.0.0.1")
    server = RunningServer(model_dir, allow_private_urls=True, domains=("localhost",), queue_size=1)
    try:
        assert server.post({"messages": ask(video(media_http.url("files", "clip.mp4", host="localhost"),
                                                  num_frames=2)), "max_tokens": 2}).status_code == 200
        hop = media_http.url("redirect", "", host="localhost") + "?to=" + target
        err = refused(server, hop, 403, "media_not_allowed")
        assert "127.0.0.1" in err["message"]
        server.wait_idle()
    finally:
        server.stop()


def test_oversized_data_url_is_413_before_decoding(server):
    blob = "data:video/mp4;base64," + "A" * (MAX_MEDIA * 4 // 3 + 1000)    # not even a video
    refused(server, blob, 413, "media_too_large")


@pytest.mark.parametrize("kind", ["files", "chunked"])
def test_oversized_download_is_413(private_server, media_http, kind):
    refused(private_server, media_http.url(kind, "big.mp4"), 413, "media_too_large")


def test_unreadable_media_is_400(server, media):
    for name in ("corrupt", "text"):
        err = refused(server, str(media[name]), 400)
        assert err["type"] == "invalid_request_error" and err["code"] in (
            "unreadable_media", "unsupported_media", "empty_media", "invalid_media"), err
    refused(server, data_url(media["text"]), 400)
    refused(server, str(media["allowed_dir"] / "missing.mp4"), 400, "media_not_found")


# ---- load and faults --------------------------------------------------------------------------------
def test_eight_concurrent_clients_are_all_answered(server, media):
    def one(i):
        client = server.client()
        kwargs = dict(model="default", messages=ask(video(str(media["clip"]))), max_tokens=3,
                      extra_body={"num_frames": 2})
        if i % 2:
            text, chunks = stream_text(client.chat.completions.create(stream=True, **kwargs))
            return chunks[-1].choices[0].finish_reason
        return client.chat.completions.create(**kwargs).choices[0].finish_reason

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert all(r in ("stop", "length") for r in results)


def test_full_queue_is_503_and_frees_up(private_server, media_http):
    """With one slot, a request still downloading its video holds it; the next one is refused at once."""
    media_http.release.clear()
    media_http.stalled.clear()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(private_server.post, {"messages": ask(video(media_http.url("stall", "clip.mp4"),
                                                                        num_frames=2)), "max_tokens": 2})
        assert media_http.stalled.wait(30)
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as info:
            private_server.client().chat.completions.create(model="default", messages=ask(), max_tokens=2)
        assert info.value.status_code == 503 and time.monotonic() - started < 5
        assert info.value.body["code"] == "server_overloaded"
        assert info.value.response.headers["Retry-After"]
        media_http.release.set()
        assert first.result(60).status_code == 200
    private_server.wait_idle()
    assert private_server.post({"messages": ask(), "max_tokens": 2}).status_code == 200


def test_client_disconnect_mid_stream_stops_generation(private_server, long_seed):
    before = private_server.health()["requests"]["cancelled"]
    reply = private_server.post({**LONG_STORY, "stream": True, "max_tokens": 4000, "seed": long_seed}, stream=True)
    assert reply.status_code == 200
    contents = 0
    for line in reply.iter_lines():
        if line.startswith(b"data: {") and b'"content"' in line:
            contents += 1
            if contents == 3:
                break
    reply.close()                                    # the client goes away
    started = time.monotonic()
    state = private_server.wait_idle(timeout=30)
    assert time.monotonic() - started < 3            # 1,000+ tokens were left to generate
    assert state["requests"]["cancelled"] == before + 1
    ok = private_server.post({"messages": ask(), "max_tokens": 2})
    assert ok.status_code == 200                     # the worker is free for the next client


def test_client_giving_up_on_a_whole_response_frees_the_worker(private_server, long_seed):
    before = private_server.health()["requests"]["cancelled"]
    with pytest.raises(requests.exceptions.ReadTimeout):
        # give up well before the 1,200+ token answer can finish (the demo decodes ~1,800 tokens/s here)
        private_server.post({**LONG_STORY, "max_tokens": 4000, "seed": long_seed}, timeout=0.2)
    started = time.monotonic()
    state = private_server.wait_idle(timeout=30)
    assert time.monotonic() - started < 3
    assert state["requests"]["cancelled"] == before + 1


# ---- the command ------------------------------------------------------------------------------------
def test_serve_command_banner_request_and_sigterm(model_dir, media, long_seed):
    cmd = [sys.executable, "-m", "edgevid", "serve", "-m", str(model_dir), "--port", "0", "--api-key", KEY,
           "--allowed-local-media-path", str(media["allowed_dir"]), "--max-frames", "4", "--queue-size", "2",
           "--model-name", "tiny-video"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/v1", banner)
        assert match and int(match.group(1)) > 0, (banner, proc.stderr.read() if proc.poll() is not None else "")
        assert "provider" in banner and "CPUExecutionProvider" in banner and "tiny-video" in banner
        client = openai.OpenAI(api_key=KEY, base_url=f"http://127.0.0.1:{match.group(1)}/v1", max_retries=0)
        reply = client.chat.completions.create(model="tiny-video", messages=ask(video(str(media["clip"]))),
                                               max_tokens=2)
        assert reply.model == "tiny-video"
        assert requests.get(f"http://127.0.0.1:{match.group(1)}/health", timeout=30).json()["status"] == "ok"
        if os.name == "nt":          # a console Ctrl-C would reach pytest too; the stop path is the same
            return
        stream = requests.post(f"http://127.0.0.1:{match.group(1)}/v1/chat/completions",
                               headers={"Authorization": f"Bearer {KEY}"}, stream=True, timeout=60,
                               json={**LONG_STORY, "stream": True, "max_tokens": 3000, "seed": long_seed})
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith(b"data: {"))
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)           # mid-stream: the stream is told, then the process exits
        tail = [line for line in lines if line]
        assert tail[-1] == b"data: [DONE]" and b"shutting down" in tail[-2], tail[-3:]
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
