"""The browser playground at ``/`` of ``edgevid serve``, driven in a real headless Chromium.

Every server here is a real ``edgevid serve --demo`` subprocess on a loopback port (port 0), the page is
loaded by Debian's ``chromium`` through Playwright, and the clip is the bundled demo clip. The browser
tests skip when Playwright or Chromium is missing (the main suite's venv has neither); ``.ci/run`` runs
them in their own block where a skip counts as a failure. The ``/v1/frames`` tests at the end need no
browser and always run.
"""
from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

import edgevid

DEMO = Path(edgevid.__file__).parent / "demo"
CLIP = DEMO / "sample.mp4"
QUESTION = "What happens in this video?"
ANSWER = "a red circle moves from left to right."
KEY = "playground-key-42"
CHROMIUM = os.environ.get("EDGEVID_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MMSS = re.compile(r"^\d\d:\d\d$")
TIMEOUT_MS = 30_000


# ---- servers ---------------------------------------------------------------------------------------------
class Served:
    """``edgevid serve --demo`` in a subprocess; ``url`` is its root."""

    def __init__(self, *flags: str):
        cmd = [sys.executable, "-m", "edgevid", "serve", "--demo", "--host", "127.0.0.1", "--port", "0", *flags]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        banner = self.proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)/v1", banner)
        if not match:
            self.stop()
            pytest.fail(f"no banner from edgevid serve: {banner!r} {self.proc.stderr.read()}")
        self.url = match.group(1)
        self.playground_line = self.proc.stdout.readline() if "--no-ui" not in flags else ""
        # drain the log so a chatty server never blocks on a full pipe
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def health(self) -> dict:
        return requests.get(f"{self.url}/health", timeout=30).json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def server():
    served = Served()
    yield served
    served.stop()


@pytest.fixture(scope="module")
def small_server():
    """Media capped at 4,000 bytes: the 7.4 KB demo clip is over it."""
    served = Served("--max-media-bytes", "4000")
    yield served
    served.stop()


@pytest.fixture(scope="module")
def key_server():
    served = Served("--api-key", KEY, "--max-tokens", "64", "--seed", "3")     # serve's generation defaults
    yield served
    served.stop()


# ---- the browser -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set EDGEVID_CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class PageErrors:
    """JavaScript exceptions and console errors of one page; a refused request the test provokes logs a
    'Failed to load resource' console line in Chromium, which the test names in ``allowed_status``."""

    def __init__(self, page):
        self.exceptions: list[str] = []
        self.console: list[str] = []
        page.on("pageerror", lambda exc: self.exceptions.append(str(exc)))
        page.on("console", lambda msg: self.console.append(msg.text) if msg.type == "error" else None)

    def assert_none(self, allowed_status: tuple[int, ...] = ()) -> None:
        assert self.exceptions == []
        expected = [f"status of {s}" for s in allowed_status]
        unexpected = [m for m in self.console if not any(e in m for e in expected)]
        assert unexpected == []


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    tab.errors = PageErrors(tab)
    yield tab
    context.close()


@pytest.fixture
def phone(browser):
    context = browser.new_context(viewport={"width": 375, "height": 667}, is_mobile=True, has_touch=True,
                                  device_scale_factor=2)
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    tab.errors = PageErrors(tab)
    yield tab
    context.close()


def answers(page):
    return page.locator(".msg.assistant .text")


def ask(page, question: str) -> None:
    page.get_by_label("Question").fill(question)
    page.get_by_role("button", name="Ask").click()


# ---- the page --------------------------------------------------------------------------------------------
def test_pick_the_clip_ask_see_frames_and_the_streamed_answer_then_a_follow_up(server, page):
    from playwright.sync_api import expect

    page.goto(server.url + "/")
    expect(page).to_have_title(re.compile("edgevid"))
    page.locator("input[type=file]").set_input_files(str(CLIP))
    page.get_by_role("textbox").fill(QUESTION)            # the only text box on show: the question
    page.get_by_role("button", name="Ask").click()

    expect(answers(page).first).to_have_text(ANSWER)
    sheet = page.get_by_role("list", name="Frames the model sees").get_by_role("listitem")
    expect(sheet).to_have_count(4)
    labels = page.locator("#contact-sheet figcaption").all_inner_texts()
    assert all(MMSS.match(label) for label in labels), labels
    assert labels == sorted(labels) and labels[0] == "00:00"
    times = page.locator("#contact-sheet time").evaluate_all("els => els.map(e => e.dateTime)")
    assert len(times) == 4 and all(t.startswith("PT") for t in times)
    assert page.locator("#contact-sheet img").evaluate_all("els => els.every(e => e.complete && e.naturalWidth > 0)")
    meta = page.locator(".msg.assistant .meta").first
    expect(meta).to_contain_text(re.compile(r"prompt \d+ tokens · first token \d+\.\d\d s · [\d.]+ tokens/s"))
    expect(page.locator("#media-status")).to_contain_text("4 frames of sample.mp4")

    ask(page, "What colour is the circle?")
    expect(answers(page)).to_have_count(2)
    expect(answers(page).nth(1)).to_contain_text("red")
    expect(page.locator(".msg.user")).to_have_count(2)
    page.errors.assert_none()

    page.get_by_role("button", name="New chat").click()
    expect(page.locator(".msg")).to_have_count(0)
    ask(page, QUESTION)                                    # the clip stays: a new chat about the same video
    expect(answers(page).first).to_have_text(ANSWER)
    page.errors.assert_none()


def test_keyboard_only_and_options_reach_the_request(server, page):
    from playwright.sync_api import expect

    page.goto(server.url + "/")
    requests_seen = []
    page.on("request", lambda r: requests_seen.append(r.post_data_json) if r.url.endswith("/chat/completions")
            else None)
    page.locator("input[type=file]").set_input_files(str(CLIP))
    expect(page.get_by_label("Frames per video")).to_have_value("4")   # the server's default for the demo
    page.get_by_label("Max tokens").fill("5")
    page.get_by_label("Seed").fill("7")
    page.get_by_label("Question").focus()
    page.keyboard.type(QUESTION)
    page.keyboard.press("Enter")                           # Enter asks
    expect(answers(page).first).to_have_text(re.compile(r"\S"))
    expect(page.locator(".msg.assistant .meta").first).to_contain_text("5 tokens (length)")
    body = requests_seen[0]
    assert body["max_tokens"] == 5 and body["seed"] == 7 and body["num_frames"] == 4 and body["stream"] is True
    assert body["messages"][0]["content"][0]["video_url"]["url"].startswith("data:video/mp4;base64,")
    # fewer frames: the sheet is sampled again and a new chat begins about the same clip
    page.get_by_label("Frames per video").fill("2")
    page.get_by_label("Frames per video").press("Tab")
    expect(page.locator("#contact-sheet li")).to_have_count(2)
    expect(page.locator(".msg")).to_have_count(0)
    # the controls are reachable with Tab, in reading order
    page.get_by_role("link", name="Skip to the question").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "New chat"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.type") == "file"
    page.errors.assert_none()


def test_stop_ends_a_long_answer_and_frees_the_server(server, page):
    from playwright.sync_api import expect

    seed = long_seed(server)
    page.goto(server.url + "/")
    page.get_by_label("Max tokens").fill("4000")
    page.get_by_label("Temperature").fill("2")
    page.get_by_label("Seed").fill(str(seed))
    before = server.health()["requests"]["cancelled"]
    ask(page, "Tell me a long story.")
    expect(answers(page).first).to_have_text(re.compile(r"\S"))      # streaming has begun
    page.get_by_role("button", name="Stop").click()
    expect(page.locator(".msg.assistant .meta").first).to_contain_text("(stopped)")
    expect(page.get_by_role("button", name="Ask")).to_be_enabled()
    deadline = 50
    while server.health()["requests"]["cancelled"] == before and deadline:
        page.wait_for_timeout(100)
        deadline -= 1
    assert server.health()["requests"]["cancelled"] == before + 1
    page.errors.assert_none()


def long_seed(server) -> int:
    """A seed whose sampled answer to the long-story prompt runs 1,000+ tokens (asked of the server)."""
    for seed in range(1, 41):
        body = {"messages": [{"role": "user", "content": "Tell me a long story."}], "temperature": 2.0,
                "max_tokens": 4000, "seed": seed}
        reply = requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=120).json()
        if reply["usage"]["completion_tokens"] >= 1000:
            return seed
    pytest.fail("no seed in 1..40 gives a 1,000-token answer")


def test_an_image_dropped_on_the_page_is_shown_and_asked_about(server, page, tmp_path):
    from PIL import Image, ImageDraw
    from playwright.sync_api import expect

    still = tmp_path / "still.png"
    image = Image.new("RGB", (160, 120), (128, 128, 128))
    ImageDraw.Draw(image).ellipse((20, 40, 60, 80), fill=(220, 30, 30))
    image.save(still)
    page.goto(server.url + "/")
    payload = base64.b64encode(still.read_bytes()).decode()
    drop = page.evaluate_handle("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], "still.png", {type: "image/png"}));
        return data;
    }""", payload)
    page.dispatch_event("#drop-zone", "dragenter", {"dataTransfer": drop})
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": drop})
    expect(page.locator("#contact-sheet li")).to_have_count(1)
    expect(page.locator("#contact-sheet figcaption")).to_have_text("image")
    expect(page.locator("#media-status")).to_contain_text("Image still.png · 160×120")
    requests_seen = []
    page.on("request", lambda r: requests_seen.append(r.post_data_json) if r.url.endswith("/chat/completions")
            else None)
    ask(page, "What colour is the circle?")
    expect(answers(page).first).to_have_text(re.compile(r"\S"))
    expect(page.locator(".msg.assistant .meta").first).to_contain_text("prompt")
    part = requests_seen[0]["messages"][0]["content"][0]
    assert part["type"] == "image_url" and part["image_url"]["url"].startswith("data:image/png;base64,")
    page.errors.assert_none()


def test_an_oversized_file_shows_the_413_message(small_server, page, tmp_path):
    from playwright.sync_api import expect

    page.goto(small_server.url + "/")
    page.locator("input[type=file]").set_input_files(str(CLIP))      # 7.4 KB > --max-media-bytes 4000
    error = page.get_by_role("alert")
    expect(error).to_contain_text("Too large for this server (413)")
    expect(error).to_contain_text("--max-media-bytes")
    ask(page, QUESTION)                                    # asking again says why, and sends nothing
    expect(error).to_contain_text("(413)")
    expect(page.locator(".msg")).to_have_count(0)
    # a file larger than any body the server reads is refused without uploading it
    huge = tmp_path / "huge.mp4"
    huge.write_bytes(CLIP.read_bytes() + bytes(2 * 2**20))
    page.locator("input[type=file]").set_input_files(str(huge))
    expect(error).to_contain_text("huge.mp4")
    expect(error).to_contain_text("(413)")
    page.errors.assert_none(allowed_status=(413,))
    assert page.locator("body").inner_text().strip()


def test_refusals_are_readable_messages(server, page, tmp_path):
    from playwright.sync_api import expect

    page.goto(server.url + "/")
    notes = tmp_path / "notes.mp4"
    notes.write_text("only text with a video's name\n" * 20)
    page.locator("input[type=file]").set_input_files(str(notes))        # unreadable media: 400
    expect(page.get_by_role("alert")).to_contain_text("The server could not use this request (400)")
    expect(page.get_by_role("alert")).to_contain_text("looks like text")
    page.get_by_text("Use a URL or a path on the server").click()
    page.get_by_label("URL or server path").fill(str(CLIP))
    page.get_by_role("button", name="Load").click()        # no --allowed-local-media-path: 403
    expect(page.get_by_role("alert")).to_contain_text("Not allowed by this server (403)")
    page.get_by_label("URL or server path").fill("http://127.0.0.1:9/clip.mp4")
    page.get_by_role("button", name="Load").click()        # loopback URLs are refused by default
    expect(page.get_by_role("alert")).to_contain_text("(403)")
    page.get_by_label("Frames per video").fill("64")        # over --max-frames
    page.get_by_label("Question").fill(QUESTION)
    page.get_by_role("button", name="New chat").click()
    page.get_by_role("button", name="Ask").click()
    expect(page.get_by_role("alert")).to_contain_text("from 1 to 32")
    page.errors.assert_none(allowed_status=(400, 403))


def test_a_server_path_under_an_allowed_folder(page):
    from playwright.sync_api import expect

    served = Served("--allowed-local-media-path", str(DEMO))
    try:
        page.goto(served.url + "/")
        page.get_by_text("Use a URL or a path on the server").click()
        page.get_by_label("URL or server path").fill(str(CLIP))
        page.get_by_label("URL or server path").press("Enter")
        expect(page.locator("#contact-sheet li")).to_have_count(4)
        ask(page, QUESTION)
        expect(answers(page).first).to_have_text(ANSWER)
        page.errors.assert_none()
    finally:
        served.stop()


def test_the_page_asks_for_the_api_key_and_keeps_it_in_the_page(key_server, page):
    from playwright.sync_api import expect

    page.goto(key_server.url + "/")
    key = page.get_by_label("API key")
    expect(key).to_be_visible()
    expect(page.get_by_label("Max tokens")).to_have_value("64")      # the options start at serve's defaults
    expect(page.get_by_label("Seed")).to_have_value("3")
    page.locator("input[type=file]").set_input_files(str(CLIP))
    expect(page.get_by_role("alert")).to_contain_text("API key missing or wrong (401)")
    key.fill(KEY)
    ask(page, QUESTION)                                    # samples the clip again, with the key this time
    expect(page.locator("#contact-sheet li")).to_have_count(4)
    expect(answers(page).first).to_have_text(ANSWER)
    stored = page.evaluate("() => JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.cookie")
    assert KEY not in stored
    page.errors.assert_none(allowed_status=(401,))


def test_usable_on_a_phone_sized_screen(server, phone):
    from playwright.sync_api import expect

    phone.goto(server.url + "/")
    phone.locator("input[type=file]").set_input_files(str(CLIP))
    phone.get_by_role("textbox").fill(QUESTION)
    phone.get_by_role("button", name="Ask").tap()
    expect(answers(phone).first).to_have_text(ANSWER)
    expect(phone.locator("#contact-sheet li")).to_have_count(4)
    width = phone.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], width                     # nothing sticks out sideways
    box = phone.get_by_role("button", name="Ask").bounding_box()
    assert box["height"] >= 40 and box["x"] >= 0 and box["x"] + box["width"] <= 375
    phone.errors.assert_none()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_no_accessibility_violations(key_server, browser, scheme):
    """axe-core (WCAG 2 A/AA + best practices) on the page with an error shown, then after an answer."""
    from playwright.sync_api import expect

    axe = os.environ.get("EDGEVID_AXE", "")
    if not os.path.isfile(axe):
        pytest.skip("set EDGEVID_AXE to axe-core's axe.min.js (npm install axe-core)")
    context = browser.new_context(viewport={"width": 1100, "height": 800}, color_scheme=scheme)
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors = PageErrors(page)
        page.goto(key_server.url + "/")
        page.add_script_tag(path=axe)
        page.locator("input[type=file]").set_input_files(str(CLIP))
        expect(page.get_by_role("alert")).to_contain_text("(401)")
        assert audit(page) == []
        page.get_by_label("API key").fill(KEY)
        ask(page, QUESTION)
        expect(page.locator(".msg.assistant .meta")).to_contain_text("tokens/s")
        assert audit(page) == []
        errors.assert_none(allowed_status=(401,))
    finally:
        context.close()


def audit(page) -> list:
    return page.evaluate("""async () => {
        const result = await axe.run(document, {runOnly: ["wcag2a", "wcag2aa", "best-practice"]});
        return result.violations.map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
    }""")


def test_screenshot_for_the_docs(server, page, tmp_path):
    """Writes docs/playground.png when EDGEVID_SCREENSHOT is set (kept under 150 KB)."""
    from playwright.sync_api import expect

    page.set_viewport_size({"width": 1100, "height": 720})
    page.goto(server.url + "/")
    page.locator("input[type=file]").set_input_files(str(CLIP))
    ask(page, QUESTION)
    expect(answers(page).first).to_have_text(ANSWER)
    ask(page, "What colour is the circle?")
    expect(answers(page)).to_have_count(2)
    expect(page.locator(".msg.assistant .meta").nth(1)).to_contain_text("tokens/s")
    out = Path(os.environ.get("EDGEVID_SCREENSHOT") or tmp_path / "playground.png")
    page.screenshot(path=str(out), full_page=False)
    assert 0 < out.stat().st_size < 150_000
    page.errors.assert_none()


# ---- routes (no browser) -----------------------------------------------------------------------------------
def test_no_ui_serves_the_api_only():
    served = Served("--no-ui")
    try:
        for path in ("/", "/ui/playground.js", "/ui/settings", "/static/playground.js"):
            reply = requests.get(served.url + path, timeout=30)
            assert reply.status_code == 404 and reply.json()["error"]["code"] == "not_found", path
        assert requests.get(served.url + "/v1/models", timeout=30).status_code == 200
    finally:
        served.stop()


def test_page_and_settings_routes(key_server):
    page = requests.get(key_server.url + "/", timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert "playground: " + key_server.url + "/" in key_server.playground_line
    for asset, kind in (("playground.js", "javascript"), ("playground.css", "text/css")):
        reply = requests.get(f"{key_server.url}/ui/{asset}", timeout=30)
        assert reply.status_code == 200 and kind in reply.headers["Content-Type"]
    settings = requests.get(key_server.url + "/ui/settings", timeout=30).json()
    assert settings["api_key_required"] is True and KEY not in str(settings)
    assert settings["default_frames"] == 4 and settings["max_frames"] == 32
    assert settings["defaults"] == {"max_tokens": 64, "temperature": 0.0, "seed": 3}


def data_url(path: Path, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def test_frames_endpoint_applies_the_api_key_policy_and_caps(key_server, small_server, tmp_path):
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"video_url": {"url": data_url(CLIP)}, "num_frames": 3}     # 3: not asked for by the page tests
    url = key_server.url + "/v1/frames"
    assert requests.post(url, json=body, timeout=30).status_code == 401
    assert requests.post(url, json=body, headers={"Authorization": "Bearer nope"}, timeout=30).status_code == 401
    reply = requests.post(url, json=body, headers=auth, timeout=30)
    assert reply.status_code == 200, reply.text
    frames = reply.json()
    assert frames["kind"] == "video" and frames["num_frames"] == 3 and frames["cached"] is False
    assert [f["label"] for f in frames["frames"]] == [f"00:0{int(f['timestamp'])}" for f in frames["frames"]]
    assert all(f["thumbnail"].startswith("data:image/jpeg;base64,") for f in frames["frames"])
    assert requests.post(url, json=body, headers=auth, timeout=30).json()["cached"] is True
    # the same caps and policy as a chat request
    refused = {
        403: {"video_url": {"url": str(CLIP)}},
        400: {"video_url": {"url": data_url(CLIP)}, "num_frames": 33},
    }
    for status, bad in refused.items():
        reply = requests.post(url, json=bad, headers=auth, timeout=30)
        assert reply.status_code == status, reply.text
        assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
        assert reply.json()["error"]["param"] == ("video_url.url" if status == 403 else "num_frames")
    for bad in ({}, {"video_url": {"url": data_url(CLIP)}, "image_url": {"url": "x"}}, {"frames": 3}, [1]):
        assert requests.post(url, json=bad, headers=auth, timeout=30).status_code == 400
    over = requests.post(small_server.url + "/v1/frames", json=body, timeout=30)
    assert over.status_code == 413 and "--max-media-bytes" in over.json()["error"]["message"]
    image = tmp_path / "still.png"
    from PIL import Image
    Image.new("RGB", (64, 48), "red").save(image)
    still = requests.post(url, json={"image_url": {"url": data_url(image, "image/png")}}, headers=auth, timeout=30)
    assert still.status_code == 200 and still.json()["kind"] == "image" and len(still.json()["frames"]) == 1
    assert still.json()["cached"] is False and (still.json()["width"], still.json()["height"]) == (64, 48)
    again = requests.post(url, json={"image_url": {"url": data_url(image, "image/png")}}, headers=auth, timeout=30)
    assert again.json()["cached"] is True                  # images share the media cache too


def test_the_question_after_the_frames_decodes_nothing_again():
    """/v1/frames and the chat turns that follow share one media-cache entry: one decode in all."""
    from edgevid.pipeline import Pipeline
    from edgevid.server.app import create_app
    from edgevid.server.config import ServerConfig
    from edgevid.server.http_server import HttpServer

    pipeline = Pipeline.load(DEMO)
    app = create_app(pipeline, ServerConfig())
    decodes = []

    class Gate:                       # the server's decode bound: entered once per decode, by either route
        def __enter__(self):
            decodes.append(threading.current_thread().name)

        def __exit__(self, *exc):
            return False

    app.extensions["edgevid"].decode_gate = Gate()
    http = HttpServer(app, port=0)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        video = {"url": data_url(CLIP)}
        assert requests.post(http.url + "/v1/frames", json={"video_url": video}, timeout=30).status_code == 200
        misses = pipeline.cache.stats().misses
        turn = [{"role": "user", "content": [{"type": "video_url", "video_url": video},
                                             {"type": "text", "text": QUESTION}]}]
        first = requests.post(http.url + "/v1/chat/completions", json={"messages": turn}, timeout=60).json()
        assert first["choices"][0]["message"]["content"] == ANSWER
        turn += [{"role": "assistant", "content": ANSWER}, {"role": "user", "content": "What colour is the circle?"}]
        second = requests.post(http.url + "/v1/chat/completions", json={"messages": turn}, timeout=60).json()
        assert "red" in second["choices"][0]["message"]["content"]
        stats = pipeline.cache.stats()
        # the chat turns added only the vision features (one miss); the frames came from the cache each time
        # (the second turn's video features come from the KV prefix cache, so it looks them up no more)
        assert stats.misses == misses + 1 and stats.hits >= 2
        assert len(decodes) == 1                           # /v1/frames decoded, under the gate; no turn did
    finally:
        http.shutdown(wait=True)
        thread.join(10)
