"""What a base model's chat template must do before selftune trains on it, checked once at registration.

Training masks the loss by rendering growing prefixes of a conversation (``render.render_training``)
and serving stops on the model's end-of-turn tokens (``render.stop_token_ids``). Both rest on
properties that a template can lack, and that would otherwise surface mid-job or as a model that
never stops:

- the model has a chat template at all (Gemma 3 270M's GGUF, a base model, has none);
- the template honours ``add_generation_prompt`` (else the assistant header would be trained as
  the reply, and a request would not prompt the model to answer);
- a conversation renders its prefixes as prefixes, with system, user and assistant turns (else
  the trained spans cannot be located);
- the token that closes an assistant turn is among the stop tokens (Gemma closes turns with
  ``<end_of_turn>``, while its EOS is ``<eos>``; a model that is not told to stop there runs on).

``check_template`` returns the end-of-turn token so that registration can add it to the model's
``generation_config.json`` when it is missing, rather than refuse a model that is fine otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from selftune.data.render import IGNORE, render_prompt, render_training, stop_token_ids
from selftune.errors import TemplateError

PROBE = [
    {"role": "system", "content": "You are a probe."},
    {"role": "user", "content": "First question?"},
    {"role": "assistant", "content": "First answer."},
    {"role": "user", "content": "Second question?"},
    {"role": "assistant", "content": "Second answer."},
]
"""A conversation with every role a training file may hold, two assistant turns deep."""


@dataclass(frozen=True)
class TemplateReport:
    end_of_turn: int
    """The token that closes an assistant turn."""
    missing_stop: bool
    """True when that token is not yet among the model's stop tokens."""
    injected_system: bool
    """True when the template adds a system turn of its own to conversations without one (Qwen2.5)."""


def check_template(tokenizer: Any, generation_config: Any = None, *, hint: str = "") -> TemplateReport:
    """Check ``tokenizer``'s chat template (see the module docstring); raise ``TemplateError`` naming
    the property that fails, with ``hint`` (how to supply another template) appended."""
    fix = f" {hint}" if hint else ""
    if not tokenizer.chat_template:
        raise TemplateError(f"the model has no chat template, so conversations cannot be rendered.{fix}")
    try:
        ids, labels = render_training(tokenizer, PROBE)
        prompt = render_prompt(tokenizer, PROBE[:2])
    except Exception as e:  # templates raise anything (jinja's TemplateError for a role they refuse, say)
        raise TemplateError(f"the chat template cannot render a system/user/assistant conversation: {e}.{fix}") from e
    plain = tokenizer.apply_chat_template(PROBE[:2], tokenize=True, add_generation_prompt=False, return_dict=False)
    if list(prompt) == [int(i) for i in plain]:
        raise TemplateError(
            "the chat template ignores add_generation_prompt: it has no assistant header to prompt a reply "
            f"with, so the header would be trained as part of every answer.{fix}"
        )
    if ids[: len(prompt)] != prompt:
        raise TemplateError(f"the chat template renders the start of a conversation differently in context.{fix}")
    trained = tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE])
    for m in (PROBE[2], PROBE[4]):
        if m["content"] not in trained:
            raise TemplateError(
                f"the chat template does not show the reply {m['content']!r} where training expects it.{fix}"
            )
    end_of_turn = _closing_token(tokenizer, ids)
    injected = _injects_system(tokenizer)
    return TemplateReport(end_of_turn, end_of_turn not in stop_token_ids(tokenizer, generation_config), injected)


def _closing_token(tokenizer: Any, ids: list[int]) -> int:
    """The first special token after the last reply's text: what the model must emit to end its turn."""
    answer = tokenizer.encode(PROBE[4]["content"], add_special_tokens=False)
    specials = set(tokenizer.all_special_ids) | {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})}
    for start in range(len(ids) - len(answer), -1, -1):
        if ids[start : start + len(answer)] == answer:
            for t in ids[start + len(answer) :]:
                if t in specials:
                    return t
            break
    raise TemplateError(
        "the chat template ends an assistant turn with no special token, so the model has no token that "
        "means 'my turn is over' and would not stop; use a template that closes each turn with one"
    )


def _injects_system(tokenizer: Any) -> bool:
    """Whether a conversation without a system turn gets one from the template: the text before the
    user's words is longer alone than after an empty system message of our own."""
    user = PROBE[1]
    alone = tokenizer.decode(render_prompt(tokenizer, [user])).split(user["content"])[0]
    marked = tokenizer.decode(render_prompt(tokenizer, [{"role": "system", "content": "@@"}, user]))
    return len(alone) > len(marked.split(user["content"])[0].replace("@@", ""))
