"""A chat (a list of messages) as the prompt text the model was trained on: the tokenizer's own
`chat_template`, applied by transformers. A model without one cannot chat, and says so: guessing
a format would give text the model has never seen."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from specdec.errors import InvalidRequest, PreconditionFailed
from specdec.text_codec import TextCodec

ROLES = ("system", "user", "assistant", "tool", "developer")


def check_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The messages as plain {role, content} dicts, or InvalidRequest."""
    if not messages:
        raise InvalidRequest("messages is empty: a chat needs at least one message")
    out = []
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise InvalidRequest(f"messages[{i}].role must be one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise InvalidRequest(f"messages[{i}].content must be a string")
        out.append({"role": role, "content": content})
    return out


def apply_chat_template(tokenizer: Any, messages: Sequence[Mapping[str, Any]]) -> str:
    """The prompt text for `messages`, ending where the assistant's reply begins
    (add_generation_prompt). tokenizer: a transformers tokenizer, or None (the model has none)."""
    chat = check_messages(messages)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise PreconditionFailed("this model's tokenizer has no chat_template: send a completion "
                                 "prompt instead, or serve a model whose tokenizer_config.json "
                                 "(or chat_template.jinja) has one")
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert isinstance(text, str)
    return text


def chat_prompt_ids(codec: TextCodec, messages: Sequence[Mapping[str, Any]]) -> tuple[int, ...]:
    """The prompt ids of a chat: the template's text, tokenized without adding special tokens
    (a template writes its own BOS; the tokenizer would add a second one)."""
    text = apply_chat_template(codec.tokenizer, messages)
    ids, _ = codec.tokenize(text, add_special_tokens=False)
    return tuple(ids)
