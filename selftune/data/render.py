"""Render conversations into token ids with the base model's own chat template.

One implementation, used by the inference engine (``render_prompt``) and, for training, by the
trainer and ``selftune render`` so that what the model sees is the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from selftune.data.validate import content_text


def normalize_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Messages as plain ``{"role", "content"}`` strings, the shape every chat template accepts.

    ``developer`` becomes ``system`` (most open-weight templates predate that role) and content
    parts are joined into their text.
    """
    out = []
    for m in messages:
        role = m.get("role", "user")
        out.append(
            {
                "role": "system" if role == "developer" else str(role),
                "content": content_text(m.get("content")),
            }
        )
    return out


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, Any]]) -> list[int]:
    """Token ids of ``messages`` followed by the template's assistant generation prompt."""
    ids = tokenizer.apply_chat_template(
        normalize_messages(messages), add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return [int(i) for i in ids]


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> set[int]:
    """Every token that ends an assistant turn: the tokenizer's EOS plus the model's configured ones."""
    ids: set[int] = set()
    for source in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list | tuple):
            ids.update(int(i) for i in source)
    return ids
