// The edgevid playground: pick a video, see the frames the model sees, ask, read the answer as it streams.
// Plain JS talking to the public API (/v1/frames, /v1/chat/completions); model output is only ever
// inserted as text. The API key lives in a variable of this page, nowhere else.
// URLs are relative to the page, so it also works behind a reverse proxy that mounts the server under a path.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    model: $("model-name"), newChat: $("new-chat"), keyBox: $("key-box"), key: $("api-key"),
    drop: $("drop-zone"), file: $("file-input"), urlBox: $("url-box"), urlForm: $("url-form"),
    url: $("url-input"), mediaStatus: $("media-status"), sheet: $("contact-sheet"), log: $("log"),
    error: $("error"), form: $("ask-form"), question: $("question"), ask: $("ask"), stop: $("stop"),
    frames: $("opt-frames"), maxTokens: $("opt-max-tokens"), temperature: $("opt-temperature"), seed: $("opt-seed"),
  };
  const IMAGE_EXTENSIONS = /\.(png|jpe?g|webp|bmp)$/i;
  const TITLES = {
    400: "The server could not use this request (400)",
    401: "API key missing or wrong (401)",
    403: "Not allowed by this server (403)",
    404: "Not found (404)",
    413: "Too large for this server (413)",
    415: "Unsupported media (415)",
    500: "Server error (500)",
    502: "Could not fetch the media (502)",
    503: "The server is busy (503)",
    504: "The media took too long to fetch (504)",
  };

  const state = {
    settings: null,
    media: null,          // {kind: "video"|"image", url, name}
    mediaId: 0,           // bumped with each new media, so late results of older ones are dropped
    mediaReady: null,     // promise: the media read and its frames shown; rejects after showing why
    mediaError: null,     // why the current media cannot be used (shown again when asking)
    history: [],          // OpenAI messages of this chat
    controller: null,     // AbortController of the running answer
    generation: 0,        // bumped by "new chat" / new media, so late results of older ones are dropped
  };

  class ApiError extends Error {
    constructor(status, message, code) {
      super(message);
      this.status = status;
      this.code = code || "";
    }
  }

  class OptionError extends Error {
    constructor(input, message) {
      super(message);
      this.input = input;
    }
  }

  // ---- errors and status -------------------------------------------------------------------------------
  function describe(err) {
    if (err instanceof ApiError) {
      const title = TITLES[err.status] || `The server answered ${err.status}`;
      return err.message ? `${title}: ${err.message}` : title;
    }
    if (err instanceof TypeError) return `Cannot reach the server (${err.message}). Is edgevid serve still running?`;
    return err && err.message ? err.message : String(err);
  }

  function showError(err) {
    ui.error.textContent = typeof err === "string" ? err : describe(err);
    ui.error.hidden = false;
    if (err instanceof ApiError && err.status === 401) {
      ui.keyBox.hidden = false;
      ui.key.focus();
    }
  }

  function clearError() {
    ui.error.hidden = true;
    ui.error.textContent = "";
  }

  function setStatus(text) {
    ui.mediaStatus.textContent = text;
  }

  // ---- talking to the server ---------------------------------------------------------------------------
  function headers() {
    const h = {"Content-Type": "application/json"};
    const key = ui.key.value.trim();
    if (key) h.Authorization = `Bearer ${key}`;
    return h;
  }

  async function errorFrom(response) {
    let message = "", code = "";
    try {
      const body = await response.json();
      if (body && body.error) {
        message = body.error.message || "";
        code = body.error.code || "";
      }
    } catch (_) {
      message = response.statusText;
    }
    return new ApiError(response.status, message, code);
  }

  async function post(path, body, signal) {
    const response = await fetch(path, {method: "POST", headers: headers(), body: JSON.stringify(body), signal});
    if (!response.ok) throw await errorFrom(response);
    return response;
  }

  async function loadSettings() {
    try {
      const response = await fetch("ui/settings");
      if (!response.ok) throw await errorFrom(response);
      const s = await response.json();
      state.settings = s;
      ui.model.textContent = s.model;
      ui.keyBox.hidden = !s.api_key_required;
      ui.frames.max = String(s.max_frames);
      ui.frames.value = String(s.default_frames);
      ui.maxTokens.value = String(s.defaults.max_tokens);
      ui.temperature.value = String(s.defaults.temperature);
      ui.seed.value = s.defaults.seed === null ? "" : String(s.defaults.seed);
      if (!s.local_media) {
        $("url-hint").textContent = "The server fetches URLs under its own rules; it reads no local paths " +
          "unless started with --allowed-local-media-path.";
      }
    } catch (err) {
      showError(err);
    }
  }

  // ---- media -------------------------------------------------------------------------------------------
  function kindOf(type, name) {
    if (type === "image/gif") return "video";          // a GIF is sampled like a clip
    if (type.startsWith("image/")) return "image";
    if (type) return "video";
    return IMAGE_EXTENSIONS.test(name) ? "image" : "video";
  }

  function readAsDataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(new Error(`Could not read "${file.name}": ${reader.error}`));
      reader.readAsDataURL(file);
    });
  }

  function sizeText(bytes) {
    if (bytes >= 2 ** 20) return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
    if (bytes >= 1024) return `${(bytes / 1024).toFixed(0)} KiB`;
    return `${bytes} bytes`;
  }

  function useFile(file) {
    if (!file) return;
    const limit = state.settings && state.settings.max_body_bytes;
    if (limit && file.size > limit) {
      // larger than any request body the server reads: say so without uploading it
      startMedia(null, Promise.reject(new ApiError(413, `"${file.name}" is ${sizeText(file.size)}, over this ` +
        `server's limit of ${sizeText(state.settings.max_media_bytes)} per file (--max-media-bytes)`)));
      return;
    }
    const kind = kindOf(file.type, file.name);
    const read = readAsDataUrl(file).then((url) => ({kind, url, name: file.name}));
    startMedia(file.name, read);
  }

  function useUrl(text) {
    const url = text.trim();
    if (!url) {
      showError("Type a URL or a path on the server first.");
      ui.url.focus();
      return;
    }
    const path = url.split(/[?#]/)[0];
    const kind = IMAGE_EXTENSIONS.test(path) ? "image" : "video";
    startMedia(url, Promise.resolve({kind, url, name: url}));
  }

  // New media starts a new chat about it; its frames are sampled now, so the sheet is there before any answer.
  function startMedia(name, media) {
    newChat();
    clearError();
    ui.sheet.replaceChildren();
    state.media = null;
    state.mediaError = null;
    const id = ++state.mediaId;
    setStatus(name ? `Reading ${name}…` : "");
    watchMedia(id, media.then((m) => {
      if (id !== state.mediaId) return;
      state.media = m;
      return showFrames(id);
    }));
  }

  function watchMedia(id, ready) {
    state.mediaReady = ready;
    ready.catch((err) => {
      if (id !== state.mediaId) return;
      state.mediaError = err;
      setStatus("This media could not be used: pick another, or press New chat to ask without it.");
      showError(err);
    });
  }

  function dropMedia() {
    state.mediaId += 1;
    state.media = state.mediaReady = state.mediaError = null;
    ui.file.value = "";
    ui.sheet.replaceChildren();
    setStatus("");
  }

  async function showFrames(id) {
    const m = state.media;
    setStatus(`Sampling frames of ${m.name}…`);
    const body = {[`${m.kind}_url`]: {url: m.url}};
    if (m.kind === "video") body.num_frames = frameCount();
    const response = await post("v1/frames", body);
    const result = await response.json();
    if (id !== state.mediaId) return;
    renderSheet(result);
    if (result.kind === "video") {
      setStatus(`${result.frames.length} frames of ${m.name} · ${result.width}×${result.height}, ` +
        `${result.duration.toFixed(1)} s${result.cached ? " · already decoded" : ""}`);
    } else {
      setStatus(`Image ${m.name} · ${result.width}×${result.height}`);
    }
  }

  // Before a question: the media's frames, sampled again if the server refused them (the key may be typed now).
  function mediaBeforeAsking() {
    if (state.mediaError && state.media) {
      clearError();
      watchMedia(state.mediaId, showFrames(state.mediaId));
    }
    return state.mediaReady;
  }

  function renderSheet(result) {
    const items = result.frames.map((frame, k) => {
      const li = document.createElement("li");
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.src = frame.thumbnail;
      img.alt = result.kind === "video" ? `Frame ${k + 1} at ${frame.label}` : "The image";
      if (frame.timestamp !== null) li.title = `frame #${frame.index} at ${frame.timestamp.toFixed(2)} s`;
      const caption = document.createElement("figcaption");
      if (frame.timestamp === null) {
        caption.textContent = frame.label;
      } else {
        const time = document.createElement("time");
        time.dateTime = `PT${frame.timestamp}S`;
        time.textContent = frame.label;
        caption.append(time);
      }
      figure.append(img, caption);
      li.append(figure);
      return li;
    });
    ui.sheet.replaceChildren(...items);
  }

  // ---- options -----------------------------------------------------------------------------------------
  function intOption(input, low, high) {
    const text = input.value.trim();
    if (text === "") return null;
    const value = Number(text);
    if (!Number.isInteger(value) || value < low || value > high) {
      throw new OptionError(input, `${input.labels[0].textContent} must be a whole number from ${low} to ${high}.`);
    }
    return value;
  }

  function frameCount() {
    const max = state.settings ? state.settings.max_frames : 1024;
    return intOption(ui.frames, 1, max);
  }

  function requestOptions() {
    const options = {};
    const frames = frameCount();
    if (frames !== null) options.num_frames = frames;
    const maxTokens = intOption(ui.maxTokens, 1, 1e9);
    if (maxTokens !== null) options.max_tokens = maxTokens;
    const temperature = ui.temperature.value.trim() === "" ? 0 : Number(ui.temperature.value);
    if (!(temperature >= 0 && temperature <= 2)) {
      throw new OptionError(ui.temperature, "Temperature must be a number from 0 to 2.");
    }
    options.temperature = temperature;
    const seed = intOption(ui.seed, -(2 ** 53) + 1, 2 ** 53 - 1);
    if (seed !== null) options.seed = seed;
    return options;
  }

  // ---- conversation ------------------------------------------------------------------------------------
  function addMessage(role, text) {
    const box = document.createElement("div");
    box.className = `msg ${role}`;
    const who = document.createElement("p");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Model";
    const body = document.createElement("p");
    body.className = "text";
    body.textContent = text;
    box.append(who, body);
    if (role === "assistant") {
      const meta = document.createElement("p");
      meta.className = "meta";
      box.append(meta);
    }
    ui.log.append(box);
    box.scrollIntoView({block: "end"});
    return box;
  }

  function setBusy(busy) {
    ui.ask.disabled = busy;
    ui.stop.disabled = !busy;
    ui.log.setAttribute("aria-busy", String(busy));
  }

  function newChat() {
    state.generation += 1;
    if (state.controller) state.controller.abort();
    state.controller = null;
    state.history = [];
    ui.log.replaceChildren();
    clearError();
    setBusy(false);
  }

  // Reads the SSE stream; calls onPiece(text) per content delta; returns {usage, finish}.
  async function readStream(response, onPiece) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", usage = null, finish = null;
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true}).replace(/\r/g, "");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of block.split("\n")) {
          if (!line.startsWith("data:")) continue;            // ": ping" keep-alives and the like
          const data = line.slice(5).trim();
          if (data === "[DONE]") return {usage, finish};
          const chunk = JSON.parse(data);
          if (chunk.error) throw new ApiError(chunk.error.code === "server_overloaded" ? 503 : 500,
                                              chunk.error.message, chunk.error.code);
          if (chunk.usage) usage = chunk.usage;
          const choice = chunk.choices && chunk.choices[0];
          if (!choice) continue;
          if (choice.delta && choice.delta.content) onPiece(choice.delta.content);
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
    return {usage, finish};
  }

  function statsText({promptTokens, ttft, tokens, seconds, finish}) {
    const parts = [];
    if (promptTokens !== null) parts.push(`prompt ${promptTokens} tokens`);
    if (ttft !== null) parts.push(`first token ${(ttft / 1000).toFixed(2)} s`);
    // as `edgevid run` counts it: the tokens after the first over the time since the first
    if (seconds > 0 && tokens > 1) parts.push(`${((tokens - 1) / seconds).toFixed(1)} tokens/s`);
    parts.push(`${tokens} tokens${finish ? ` (${finish})` : ""}`);
    return parts.join(" · ");
  }

  async function ask(event) {
    event.preventDefault();
    if (state.controller) return;
    const text = ui.question.value.trim();
    if (!text) {
      showError("Type a question first.");
      ui.question.focus();
      return;
    }
    clearError();
    let options;
    try {
      options = requestOptions();
    } catch (err) {
      showError(err);
      if (err instanceof OptionError) err.input.focus();
      return;
    }
    const generation = state.generation;
    const controller = new AbortController();
    state.controller = controller;
    setBusy(true);
    const ready = mediaBeforeAsking();
    if (ready) {
      try {
        await ready;
      } catch (err) {
        if (generation === state.generation) {
          showError(err);
          state.controller = null;
          setBusy(false);
        }
        return;
      }
    }
    if (generation !== state.generation) return;

    const content = state.history.length === 0 && state.media
      ? [{type: `${state.media.kind}_url`, [`${state.media.kind}_url`]: {url: state.media.url}}, {type: "text", text}]
      : text;
    const userMessage = {role: "user", content};
    addMessage("user", text);
    const view = addMessage("assistant", "");
    const answer = view.querySelector(".text");
    const meta = view.querySelector(".meta");
    ui.question.value = "";

    const body = {messages: [...state.history, userMessage], stream: true,
                  stream_options: {include_usage: true}, ...options};
    const started = performance.now();
    let first = null, pieces = 0, said = "", result = {usage: null, finish: null}, failed = null;
    const live = () => {
      const now = performance.now();
      meta.textContent = statsText({promptTokens: null, ttft: first === null ? null : first - started,
                                    tokens: pieces, seconds: first === null ? 0 : (now - first) / 1000,
                                    finish: null});
    };
    meta.textContent = "waiting for the first token…";
    try {
      const response = await post("v1/chat/completions", body, controller.signal);
      result = await readStream(response, (piece) => {
        if (generation !== state.generation) return;
        if (first === null) first = performance.now();
        pieces += 1;
        said += piece;
        answer.textContent = said;
        live();
      });
    } catch (err) {
      if (err.name !== "AbortError") failed = err;
    }
    const ended = performance.now();
    if (generation !== state.generation) return;       // a new chat began meanwhile
    state.controller = null;
    setBusy(false);
    const stopped = controller.signal.aborted;
    if ((failed || stopped) && !said) {                // nothing said: take the turn back, keep the question
      view.remove();
      if (ui.log.lastElementChild) ui.log.lastElementChild.remove();
      ui.question.value = text;
      if (failed) showError(failed);
      ui.question.focus();
      return;
    }
    if (failed) showError(failed);
    const usage = result.usage;
    const tokens = usage ? usage.completion_tokens : pieces;
    meta.textContent = statsText({
      promptTokens: usage ? usage.prompt_tokens : null, ttft: first === null ? null : first - started,
      tokens, seconds: first === null ? 0 : (ended - first) / 1000,
      finish: stopped ? "stopped" : failed ? "error" : result.finish,
    });
    if (!said) answer.textContent = "(empty answer)";
    state.history.push(userMessage, {role: "assistant", content: said});
    ui.question.focus();
  }

  function stop() {
    if (state.controller) state.controller.abort();
  }

  // ---- wiring ------------------------------------------------------------------------------------------
  ui.form.addEventListener("submit", ask);
  ui.stop.addEventListener("click", stop);
  ui.newChat.addEventListener("click", () => {
    newChat();
    if (state.mediaError) dropMedia();    // a media the server refused goes with its chat
    if (state.media) setStatus(`New chat about ${state.media.name}`);
    ui.question.focus();
  });
  ui.question.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.form.requestSubmit();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.controller) stop();
  });
  ui.file.addEventListener("change", () => useFile(ui.file.files[0]));
  ui.urlForm.addEventListener("submit", (event) => {
    event.preventDefault();
    useUrl(ui.url.value);
  });
  ui.frames.addEventListener("change", () => {
    if (!state.media) return;
    try {
      frameCount();
    } catch (err) {
      showError(err);
      return;
    }
    const media = state.media;
    startMedia(media.name, Promise.resolve(media));
  });
  for (const name of ["dragenter", "dragover"]) {
    ui.drop.addEventListener(name, (event) => {
      event.preventDefault();
      ui.drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    ui.drop.addEventListener(name, () => ui.drop.classList.remove("over"));
  }
  ui.drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) useFile(file);
  });
  // a file dropped beside the zone would otherwise replace the page with the file
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  setBusy(false);
  loadSettings();
})();
