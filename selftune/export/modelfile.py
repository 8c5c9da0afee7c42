"""An Ollama ``Modelfile`` whose prompt format and stop tokens are the ones the model was trained with.

Ollama does not run Jinja chat templates; it needs a Go template. Rather than translate Jinja, the
model's own template is probed: conversations with marker texts are rendered through it, and the
text around each marker gives every role's prefix and suffix and the generation prompt. Those
pieces become the Go template, and the pieces are checked against the Jinja template on several
conversations (with and without a system message, several turns) before anything is written. A
template that is not a plain sequence of role blocks (Gemma's, which folds the system message
into the first user turn) fails that check with a clear message: the GGUF export still works.

A template that injects a default system message when there is none (SmolLM2's) gets it as the
Modelfile's ``SYSTEM``, which Ollama uses exactly then. Stop tokens are the model's end-of-turn
tokens as text. Sampling parameters are set to OpenAI's (and selftune's) defaults rather than
Ollama's (temperature 0.8, top-k 40, repeat penalty 1.1), so sampled answers are alike too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from selftune.errors import TemplateNotExpressible

S, U1, A1, U2 = "<<SYSTEM-MARK>>", "<<USER-MARK-1>>", "<<ASSISTANT-MARK-1>>", "<<USER-MARK-2>>"


@dataclass(frozen=True)
class Pieces:
    system: tuple[str, str]
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str
    default_system: str | None
    preamble: str = ""
    """Text before every conversation (Llama 3's ``<|begin_of_text|>``)."""

    def render(self, messages: Sequence[dict[str, str]], generation_prompt: bool = True) -> str:
        """What the Go template below renders for ``messages`` (as Ollama fills ``.System``)."""
        system = [m["content"] for m in messages if m["role"] == "system"]
        text = self.preamble
        if system or self.default_system is not None:
            text += self.system[0] + ("\n\n".join(system) if system else str(self.default_system)) + self.system[1]
        for m in messages:
            if m["role"] in ("user", "assistant"):
                prefix, suffix = getattr(self, m["role"])
                text += prefix + m["content"] + suffix
        return text + (self.generation if generation_prompt else "")

    def go_template(self) -> str:
        return (
            self.preamble + "{{ if .System }}" + self.system[0] + "{{ .System }}" + self.system[1] + "{{ end }}"
            "{{ range .Messages }}"
            '{{ if eq .Role "user" }}' + self.user[0] + "{{ .Content }}" + self.user[1] + ""
            '{{ else if eq .Role "assistant" }}' + self.assistant[0] + "{{ .Content }}" + self.assistant[1] + ""
            "{{ end }}{{ end }}" + self.generation
        )


def pieces(tokenizer: Any) -> Pieces:
    """Probe ``tokenizer``'s chat template for each role's prefix and suffix; check them on conversations."""

    def render(messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        return str(text)

    sys_msg, u1, a1 = _m("system", S), _m("user", U1), _m("assistant", A1)
    try:
        full = render([sys_msg, u1, a1])
        generation = render([sys_msg, u1], True)[len(render([sys_msg, u1])) :]
        with_default = render([u1])
    except Exception as e:
        raise TemplateNotExpressible(f"the chat template cannot render a simple conversation: {e}") from e
    if not all(mark in full for mark in (S, U1, A1)):
        raise TemplateNotExpressible("the chat template drops a system, user or assistant message")
    sys_prefix = full[: full.index(S)]
    middle_1 = full[full.index(S) + len(S) : full.index(U1)]  # system suffix + user prefix
    middle_2 = full[full.index(U1) + len(U1) : full.index(A1)]  # user suffix + assistant prefix
    asst_suffix = full[full.index(A1) + len(A1) :]
    if not middle_2.endswith(generation):
        raise TemplateNotExpressible("the generation prompt is not the assistant turn's opening")
    user_suffix = middle_2[: len(middle_2) - len(generation)]
    # Role blocks share one end-of-turn marker; the user prefix is what follows it after the system text.
    if not middle_1.startswith(user_suffix):
        raise TemplateNotExpressible("the system and user turns do not end alike")
    user_prefix = middle_1[len(user_suffix) :]
    # What a conversation without a system message has before its user turn: nothing, a preamble the
    # system block also starts with (Llama 3's BOS text), or the template's default system block.
    before_user = with_default[: with_default.index(U1)]
    if not before_user.endswith(user_prefix):
        raise TemplateNotExpressible("the first user turn does not open like the others")
    rest, preamble, default = before_user[: len(before_user) - len(user_prefix)], "", None
    if rest.startswith(sys_prefix) and rest.endswith(user_suffix):
        default = rest[len(sys_prefix) : len(rest) - len(user_suffix)]
    elif sys_prefix.startswith(rest):
        preamble = rest
    else:
        raise TemplateNotExpressible("the template opens a conversation without a system message in its own way")
    system = (sys_prefix[len(preamble) :], user_suffix)
    found = Pieces(system, (user_prefix, user_suffix), (generation, asst_suffix), generation, default, preamble)
    for conversation in _CHECKS:
        for generation_prompt in (True, False):
            if found.render(conversation, generation_prompt) != render(list(conversation), generation_prompt):
                raise TemplateNotExpressible(
                    "the chat template is not a plain sequence of role blocks "
                    f"(checked on {len(conversation)} messages); export as gguf and write the Ollama template by hand"
                )
    return found


def _m(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


_CHECKS = (
    (_m("user", "Hi"),),
    (_m("system", "Be brief."), _m("user", "Hi")),
    (_m("user", "Hi"), _m("assistant", "Hello!"), _m("user", "How are you?")),
    (_m("system", "Be brief."), _m("user", "A"), _m("assistant", "B"), _m("user", "C"), _m("assistant", "D")),
)


def modelfile(gguf_name: str, found: Pieces, stops: Sequence[str], context: int, adapter_name: str | None) -> str:
    """The Modelfile text: weights, template, default system message, stop tokens, sampling defaults."""
    template = found.go_template()
    if '"""' in template or (found.default_system and '"""' in found.default_system):
        raise TemplateNotExpressible('the chat template contains """, which a Modelfile cannot quote')
    lines = [f"FROM ./{gguf_name}"]
    if adapter_name is not None:
        lines.append(f"ADAPTER ./{adapter_name}")
    lines.append(f'TEMPLATE """{template}"""')
    if found.default_system is not None:
        lines.append(f'SYSTEM """{found.default_system}"""')
    lines += [f"PARAMETER stop {_quote(s)}" for s in stops]
    lines += [
        f"PARAMETER num_ctx {context}",
        "PARAMETER temperature 1",
        "PARAMETER top_p 1",
        "PARAMETER repeat_penalty 1",
    ]
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
