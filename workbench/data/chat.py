"""Chat templates: render a conversation with the template string an instruct model ships.

The template is untrusted code from a model file, so it runs in jinja2's immutable sandbox, with
the same environment Hugging Face `transformers` gives it (trim_blocks, lstrip_blocks, loop
controls, a `tojson` that does not escape HTML, `raise_exception`, `strftime_now`), so the
rendered text equals `tokenizer.apply_chat_template(..., tokenize=False)` (tested against it).
"""

from __future__ import annotations

import datetime
import functools
import json
from typing import Any, Mapping, Optional, Sequence

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """A template that does not compile, or that refused the conversation (its `raise_exception`)."""


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as err:
        raise ChatTemplateError(f"chat template does not compile: {err} (line {err.lineno})") from err


def _plain(value: Any, where: str) -> Any:
    """A copy made of JSON types only, so the sandboxed template sees no caller objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, Mapping):
        return {str(key): _plain(item, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise TypeError(f"{where} is a {type(value).__name__}; chat messages hold only strings, numbers, lists and dicts")


def check_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got {type(messages).__name__}")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"message {i} is a {type(message).__name__}; expected a dict with 'role' and 'content'")
        missing = [key for key in ("role", "content") if key not in message]
        if missing:
            raise ValueError(f"message {i} has no {missing}; every message needs 'role' and 'content' (got keys {sorted(message)})")
        if not isinstance(message["role"], str):
            raise TypeError(f"message {i} role is {type(message['role']).__name__}; expected a str like 'user'")
        checked.append(_plain(message, f"message {i}"))
    return checked


def render_chat(
    template: Optional[str],
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    special_tokens: Optional[Mapping[str, str]] = None,
    **variables: Any,
) -> str:
    """The text `template` renders for `messages`; `special_tokens` (bos_token, eos_token, ...) and
    `variables` are visible to the template, as in `transformers`."""
    if not template:
        raise ChatTemplateError(
            "this tokenizer has no chat template (its model is not an instruct/chat model); "
            "encode plain text, or pass a template string"
        )
    compiled = _compile(template)
    context = {**dict(special_tokens or {}), **_plain(variables, "template variables")}
    try:
        return compiled.render(messages=check_messages(messages), add_generation_prompt=add_generation_prompt, **context)
    except jinja2.exceptions.SecurityError:
        raise
    except jinja2.exceptions.TemplateError as err:
        raise ChatTemplateError(f"chat template refused the conversation: {err}") from err
