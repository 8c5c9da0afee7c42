"""Render conversations into token ids with the base model's own chat template.

One implementation, used by the inference engine (``render_prompt``) and, for training, by the
trainer and ``selftune render`` so that what the model sees is the same everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
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


IGNORE = -100
"""Label for tokens that are not trained (the convention of ``torch.nn.CrossEntropyLoss``)."""


def render_training(
    tokenizer: Any, messages: Sequence[dict[str, Any]], max_tokens: int | None = None
) -> tuple[list[int], list[int]]:
    """Token ids of a whole conversation and its labels: the token id where the model is trained,
    ``IGNORE`` everywhere else.

    Trained: every assistant message (unless it has ``weight: 0``), from the first token after the
    template's assistant header up to and including the end-of-turn token, so the model learns to
    stop. The spans come from rendering growing prefixes of the conversation with the model's own
    chat template, so this works for any template without ``{% generation %}`` markers.

    Raises ``ValueError`` if the template does not render prefixes as prefixes (then spans cannot
    be located), naming the message at fault.
    """
    msgs = normalize_messages(messages)

    def ids(part: Sequence[dict[str, str]], gen_prompt: bool) -> list[int]:
        out = tokenizer.apply_chat_template(part, add_generation_prompt=gen_prompt, tokenize=True, return_dict=False)
        return [int(i) for i in out]

    full = ids(msgs, False)
    labels = [IGNORE] * len(full)
    stops = stop_token_ids(tokenizer)
    for i, m in enumerate(messages):
        if m.get("role") != "assistant" or m.get("weight", 1) == 0:
            continue
        start = len(ids(msgs[:i], True))
        upto = ids(msgs[: i + 1], False)
        if full[: len(upto)] != upto:
            raise ValueError(f"the chat template renders message {i + 1} differently in context; cannot mask it")
        end = len(upto)
        # Train through the end-of-turn token, but not the separator the template puts after it.
        last_stop = max((j for j in range(start, end) if full[j] in stops), default=end - 1)
        for j in range(start, last_stop + 1):
            labels[j] = full[j]
    if max_tokens is not None and len(full) > max_tokens:
        full, labels = full[:max_tokens], labels[:max_tokens]
    return full, labels


@dataclass
class RenderedFile:
    """A JSONL file as the trainer sees it: what it trains on, and what it had to cut or skip."""

    rows: list[tuple[list[int], list[int]]] = field(default_factory=list)
    """(ids, labels) of every example that has something to train, truncated to the limit."""
    lines: list[int] = field(default_factory=list)
    """The line number of each row."""
    lengths: list[int] = field(default_factory=list)
    """Tokens of every example before truncation, in file order."""
    truncated: list[int] = field(default_factory=list)
    """Lines of examples longer than the limit (cut from the end)."""
    empty: list[int] = field(default_factory=list)
    """Lines of examples with no trained token left after truncation (skipped)."""

    @property
    def tokens(self) -> int:
        """Tokens the trainer processes in one epoch (``trained_tokens`` counts these)."""
        return sum(len(ids) for ids, _ in self.rows)


def render_file(tokenizer: Any, path: str | Path, max_tokens: int) -> RenderedFile:
    """Render every example of a (valid) chat JSONL file for training, truncating to ``max_tokens``.

    The one implementation behind the trainer, ``selftune validate``, ``estimate`` and ``render``,
    so that what they count and show is what is trained. Raises ``ValueError("LINE: why")`` for a
    line that cannot be rendered.
    """
    out = RenderedFile()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                ids, labels = render_training(tokenizer, json.loads(line)["messages"])
            except (ValueError, KeyError, TypeError) as e:  # only files that skipped validation get here
                raise ValueError(f"{lineno}: cannot render this example: {e}") from e
            out.lengths.append(len(ids))
            if len(ids) > max_tokens:
                out.truncated.append(lineno)
                ids, labels = ids[:max_tokens], labels[:max_tokens]
            if all(label == IGNORE for label in labels[1:]):
                out.empty.append(lineno)
                continue
            out.rows.append((ids, labels))
            out.lines.append(lineno)
    return out
