"""What every OpenAI-compatible endpoint of budgetctl checks in a completion request body.

The replay server (:mod:`budgetctl.serve._app`) and the proxy (:mod:`budgetctl.proxy`) take the
same request shapes; each then adds its own rules (the replay server's ``n`` up to 128, the proxy's
``n`` of 1 and its ``budgetctl`` object). A bad field is a :class:`BadRequest` naming it, answered
400 in OpenAI's error format.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["BadRequest", "content_text", "message_texts", "prompt_of", "stream_settings"]


class BadRequest(Exception):
    """A request refused with 400; ``param`` names the field, as OpenAI's error body does."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def content_text(content: Any) -> str:
    """The text of a message's ``content``: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def message_texts(messages: Sequence[Any], role: str | None = None) -> list[str]:
    """The text of each message (of ``role``, when given), in order."""
    return [
        content_text(m.get("content"))
        for m in messages
        if isinstance(m, dict) and (role is None or m.get("role") == role)
    ]


def prompt_of(body: Any, *, chat: bool) -> tuple[dict[str, Any], str, list[dict[str, Any]] | str]:
    """``(body, model, messages or prompt)`` of a chat or completion request, or :class:`BadRequest`.

    Chat requests need a non-empty list of message objects; completion requests one prompt string
    (a one-item list of a string counts as that string).
    """
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(body).__name__}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a string", "model")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise BadRequest("'messages' must be a non-empty list of message objects", "messages")
        return body, model, messages
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("'prompt' must be a string (one prompt per request)", "prompt")
    return body, model, prompt


def stream_settings(body: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """``(stream, stream_options)`` of a request, or :class:`BadRequest` naming the bad one."""
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(f"'stream' must be true or false, got {stream!r}", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    return stream, options
