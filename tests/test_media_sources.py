"""Sources under a SourcePolicy: paths, file://, data: URLs, bytes, and real HTTP on loopback."""
from __future__ import annotations

import base64
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from clips import frame_id, image_bytes, probe_frames, write_clip, write_gif

from edgevid.errors import (EmptyMediaError, FetchError, FetchTimeoutError, MediaNotAllowedError,
                            MediaNotFoundError, MediaTooLargeError, UnreadableMediaError, UnsupportedMediaError)
from edgevid.media import SourcePolicy, load_image, open_source, sample_video

LOOPBACK_OK = SourcePolicy(allow_private_urls=True, timeout=5.0)


# ---- a real HTTP server on loopback ------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    root: Path = Path(".")

    def log_message(self, *args):
        pass

    def do_GET(self):
        parts = urlsplit(self.path)
        segments = parts.path.strip("/").split("/")
        route = getattr(self, "route_" + segments[0], None)
        if route is None:
            self.send_error(404)
            return
        route(segments[1:], parse_qs(parts.query))

    def route_file(self, args, query):
        data = (self.root / args[0]).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def route_hops(self, args, query):           # /hops/<k>/<name>: k redirects, then the file
        k, name = int(args[0]), args[1]
        self.send_response(302)
        self.send_header("Location", f"/hops/{k - 1}/{name}" if k > 1 else f"/file/{name}")
        self.end_headers()

    def route_to(self, args, query):             # /to?url=...: one redirect anywhere
        self.send_response(307)
        self.send_header("Location", query["url"][0])
        self.end_headers()

    def route_stream(self, args, query):         # /stream/<bytes>: no Content-Length, close-delimited
        total = int(args[0])
        self.send_response(200)
        self.end_headers()
        self.server.stream_sent = 0
        chunk = b"\x00" * 65536
        try:
            while self.server.stream_sent < total:
                self.wfile.write(chunk)
                self.server.stream_sent += len(chunk)
        except OSError:                          # the client hung up (cap reached): expected
            pass

    def route_big(self, args, query):            # Content-Length announces 1 GiB
        self.send_response(200)
        self.send_header("Content-Length", str(2**30))
        self.end_headers()
        self.wfile.write(b"\x00" * 1024)

    def route_slow(self, args, query):
        time.sleep(float(args[0]))
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"abc")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    write_clip(root / "clip.mp4", frames=40, fps=20)
    (root / "text.mp4").write_text("not a video at all\n" * 10)
    handler = type("Handler", (_Handler,), {"root": root})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.root = root
    yield httpd
    httpd.shutdown()
    httpd.server_close()


# ---- local files ----------------------------------------------------------------------------------------
def test_local_path_and_file_url(tmp_path):
    clip = write_clip(tmp_path / "a b.mp4", frames=10)
    with open_source(str(clip)) as media:
        assert (media.kind, media.mime) == ("video", "video/mp4")
        assert media.path == os.path.realpath(clip) and not media.temporary
    with open_source(clip.as_uri()) as media:
        assert media.path == os.path.realpath(clip)
        assert len(media.sha256) == 64


def test_allowed_local_dirs_resolve_dotdot_and_symlinks(tmp_path):
    inside, outside = tmp_path / "media", tmp_path / "secret"
    inside.mkdir(), outside.mkdir()
    clip = write_clip(outside / "a.mp4", frames=5)
    write_clip(inside / "ok.mp4", frames=5)
    policy = SourcePolicy(allowed_local_dirs=(str(inside),))
    open_source(str(inside / "ok.mp4"), policy).close()
    with pytest.raises(MediaNotAllowedError, match="outside the allowed folders"):
        open_source(str(inside / ".." / "secret" / "a.mp4"), policy)
    link = inside / "link.mp4"
    try:
        link.symlink_to(clip)
    except OSError:
        pytest.skip("symlinks not available")
    with pytest.raises(MediaNotAllowedError):
        open_source(str(link), policy)
    with pytest.raises(MediaNotAllowedError):
        open_source(str(clip), SourcePolicy(allow_local=False))


def test_local_errors(tmp_path):
    with pytest.raises(MediaNotFoundError):
        open_source(str(tmp_path / "missing.mp4"))
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(EmptyMediaError):
        open_source(str(tmp_path / "empty.mp4"))
    (tmp_path / "notes.mp4").write_text("this is plain text, not a video\n" * 5)
    with pytest.raises(UnsupportedMediaError, match="text"):
        open_source(str(tmp_path / "notes.mp4"))
    clip = write_clip(tmp_path / "big.mp4", frames=10)
    with pytest.raises(MediaTooLargeError):
        open_source(str(clip), SourcePolicy(max_bytes=100))
    with pytest.raises(UnsupportedMediaError, match="scheme"):
        open_source("ftp://example.com/a.mp4")


# ---- data: URLs and bytes ------------------------------------------------------------------------------
def test_data_url_video_is_decoded_and_cleaned_up(tmp_path):
    clip = write_clip(tmp_path / "a.webm", frames=12)
    url = "data:video/webm;base64," + base64.b64encode(clip.read_bytes()).decode()
    with open_source(url, SourcePolicy()) as media:
        path = media.path
        assert media.temporary and os.path.exists(path) and media.mime == "video/webm"
        assert media.source.startswith("data:video/webm;base64,")
        video = sample_video(media, num_frames=4)
    assert not os.path.exists(path)
    assert [frame_id(f) for f in video.frames] == [0, 3, 6, 9]


def test_data_url_cap_checked_before_decoding():
    # 4 MB of characters that are not base64: decoding would fail, so TooLarge proves the order
    url = "data:video/mp4;base64," + "!" * (4 * 2**20)
    started = time.perf_counter()
    with pytest.raises(MediaTooLargeError, match="limit"):
        open_source(url, SourcePolicy(max_bytes=2**20))
    assert time.perf_counter() - started < 0.5
    with pytest.raises(UnreadableMediaError, match="base64"):
        open_source("data:video/mp4;base64,!!!!", SourcePolicy())


def test_data_url_types_and_images():
    with pytest.raises(UnsupportedMediaError, match="video/mp4"):
        open_source("data:application/pdf;base64,AAAA", SourcePolicy())
    with pytest.raises(UnsupportedMediaError, match="base64"):
        open_source("data:video/mp4,rawtext", SourcePolicy())
    png = "data:image/png;base64," + base64.b64encode(image_bytes(index=1234)).decode()
    assert frame_id(load_image(png, SourcePolicy())) == 1234
    # the declared type is not trusted: text sent as video/mp4 is refused by its bytes
    text = "data:video/mp4;base64," + base64.b64encode(b"hello world, I am text" * 20).decode()
    with pytest.raises(UnsupportedMediaError):
        open_source(text, SourcePolicy())


def test_raw_bytes(tmp_path):
    gif = write_gif(tmp_path / "a.gif", frames=5)
    with open_source(gif.read_bytes()) as media:
        assert media.kind == "gif" and media.path.endswith(".gif")
    with pytest.raises(MediaTooLargeError):
        open_source(gif.read_bytes(), SourcePolicy(max_bytes=10))
    with pytest.raises(EmptyMediaError):
        open_source(b"")


# ---- http(s) ----------------------------------------------------------------------------------------
def test_loopback_refused_by_default(server):
    with pytest.raises(MediaNotAllowedError, match="loopback"):
        open_source(f"{server.base}/file/clip.mp4", SourcePolicy())
    # a name, checked after DNS resolution
    port = server.server_address[1]
    with pytest.raises(MediaNotAllowedError, match="loopback"):
        open_source(f"http://localhost:{port}/file/clip.mp4", SourcePolicy())


def test_url_fetch_samples_the_right_frames(server):
    with open_source(f"{server.base}/file/clip.mp4", LOOPBACK_OK) as media:
        path = media.path
        assert media.mime == "video/mp4" and os.path.exists(path)
        video = sample_video(media, num_frames=8)
    assert not os.path.exists(path)
    expected = probe_frames(server.root / "clip.mp4")
    assert list(video.indices) == [0, 5, 10, 15, 20, 25, 30, 35]
    assert [frame_id(f) for f in video.frames] == [expected[i][0] for i in video.indices]


def test_url_errors(server):
    with pytest.raises(FetchError, match="404"):
        open_source(f"{server.base}/nothing", LOOPBACK_OK)
    with pytest.raises(UnsupportedMediaError):
        open_source(f"{server.base}/file/text.mp4", LOOPBACK_OK)
    with pytest.raises(MediaNotAllowedError, match="remote"):
        open_source(f"{server.base}/file/clip.mp4", LOOPBACK_OK.with_(allow_remote=False))
    with pytest.raises(MediaNotAllowedError, match="allowed domains"):
        open_source(f"{server.base}/file/clip.mp4", LOOPBACK_OK.with_(allowed_domains=("example.com",)))
    open_source(f"{server.base}/file/clip.mp4", LOOPBACK_OK.with_(allowed_domains=("127.0.0.1",))).close()


def test_download_cap_enforced_mid_stream(server):
    policy = LOOPBACK_OK.with_(max_bytes=300_000)
    with pytest.raises(MediaTooLargeError, match="300000"):
        open_source(f"{server.base}/stream/{50 * 2**20}", policy)
    time.sleep(0.2)
    assert server.stream_sent < 10 * 2**20          # we hung up long before the 50 MB were sent
    with pytest.raises(MediaTooLargeError, match="1073741824"):
        open_source(f"{server.base}/big", policy)


def test_redirect_limit(server):
    with open_source(f"{server.base}/hops/3/clip.mp4", LOOPBACK_OK) as media:
        assert media.kind == "video"
    with pytest.raises(FetchError, match="too many redirects"):
        open_source(f"{server.base}/hops/4/clip.mp4", LOOPBACK_OK)
    with pytest.raises(FetchError, match="too many redirects"):
        open_source(f"{server.base}/hops/2/clip.mp4", LOOPBACK_OK.with_(max_redirects=1))


def test_redirect_to_private_address_refused(server, monkeypatch):
    """First hop allowed (the test server), the redirect to another loopback address refused."""
    from edgevid.media import fetch

    real_reason = fetch.non_public_reason
    monkeypatch.setattr(fetch, "non_public_reason",
                        lambda address: None if address == "127.0.0.1" else real_reason(address))
    port = server.server_address[1]
    open_source(f"{server.base}/file/clip.mp4", SourcePolicy()).close()       # first hop itself is fine
    for target in (f"http://127.0.0.2:{port}/file/clip.mp4", f"http://[::1]:{port}/file/clip.mp4",
                   "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/x.mp4"):
        with pytest.raises(MediaNotAllowedError, match="refused"):
            open_source(f"{server.base}/to?url={target}", SourcePolicy())
    with pytest.raises(MediaNotAllowedError, match="non-http"):
        open_source(f"{server.base}/to?url=file:///etc/passwd", SourcePolicy())


def test_connects_to_the_checked_address(server, monkeypatch):
    """DNS is asked once per hop and the socket goes to that answer (no second lookup to rebind)."""
    import socket

    from edgevid.media import fetch

    port = server.server_address[1]
    lookups = []
    real_getaddrinfo = socket.getaddrinfo

    def rebinding_dns(host, *args, **kwargs):
        lookups.append(host)
        target = "127.0.0.1" if lookups.count(host) == 1 else "10.255.255.1"
        return real_getaddrinfo(target, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_dns)
    with open_source(f"http://media.test:{port}/file/clip.mp4", LOOPBACK_OK) as media:
        assert media.kind == "video"
    assert lookups.count("media.test") == 1          # the connect used the checked address, not DNS
    assert fetch.non_public_reason("10.255.255.1") == "private"


def test_fetch_timeout(server):
    with pytest.raises(FetchTimeoutError, match="timed out"):
        open_source(f"{server.base}/slow/3", LOOPBACK_OK.with_(timeout=0.5))


def test_address_classification():
    from edgevid.media.fetch import non_public_reason
    assert non_public_reason("127.0.0.1") == "loopback"
    assert non_public_reason("::1") == "loopback"
    assert non_public_reason("::ffff:192.168.1.5") == "private"
    assert non_public_reason("169.254.169.254") == "link-local"
    assert non_public_reason("fe80::1") == "link-local"
    assert non_public_reason("100.64.0.1") is not None          # carrier-grade NAT
    assert non_public_reason("0.0.0.0") is not None
    assert non_public_reason("8.8.8.8") is None
    assert non_public_reason("2606:4700::1111") is None


def test_policy_domains():
    policy = SourcePolicy(allowed_domains=("example.com",))
    assert policy.domain_allowed("example.com") and policy.domain_allowed("cdn.Example.com.")
    assert not policy.domain_allowed("evilexample.com")
    assert SourcePolicy.permissive().allow_private_urls


def test_sha256_matches_content(tmp_path):
    import hashlib
    clip = write_clip(tmp_path / "a.mkv", frames=6)
    data = clip.read_bytes()
    with open_source(data) as from_bytes, open_source(str(clip)) as from_path:
        assert from_bytes.sha256 == from_path.sha256 == hashlib.sha256(data).hexdigest()
    assert np.array_equal(sample_video(data, 3).indices, [0, 2, 4])
