"""OpenAI chat-completions response bodies and server-sent events."""
from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field

DONE = "data: [DONE]\n\n"
PING = ": ping\n\n"


@dataclass(frozen=True)
class Completion:
    """What every chunk / body of one response shares."""
    model: str
    system_fingerprint: str
    id: str = field(default_factory=lambda: "chatcmpl-" + secrets.token_hex(14))
    created: int = field(default_factory=lambda: int(time.time()))

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": self.system_fingerprint}

    def body(self, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict:
        message = {"role": "assistant", "content": text, "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        return {**self._head("chat.completion"), "choices": [choice],
                "usage": usage(prompt_tokens, completion_tokens)}

    def chunk(self, delta: dict, finish_reason: str | None = None, *, include_usage: bool = False) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        data = {**self._head("chat.completion.chunk"), "choices": [choice]}
        if include_usage:
            data["usage"] = None
        return sse(data)

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> str:
        return sse({**self._head("chat.completion.chunk"), "choices": [],
                    "usage": usage(prompt_tokens, completion_tokens)})


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"
