"""The OpenAI chat-completions server behind ``edgevid serve``.

    request.py       body -> frozen ChatRequest (GenerationOptions inside); unsupported parameters -> 400
    decode_media.py  fetch + sample the request's media in its own thread, under the SourcePolicy
    worker.py        the one model worker thread, bounded request slots, per-request event queues
    responses.py     chat.completion bodies, chunks, SSE framing
    app.py           create_app(pipeline, config): routes, API key, OpenAI-shaped errors
    http_server.py   waitress with a stop that works from signal handlers and other threads
    errors.py        the server's own error types (401, 404 model, 503 busy, ...)
"""
