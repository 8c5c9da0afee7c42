"""Render conversations into token ids with the base model's own chat template.

One implementation, used by the inference engine (``render_prompt``) and, for training, by the
trainer and ``selftune render`` so that what the model sees is the same everywhere.

A prompt is a list of chat messages or, for legacy Completions and ``prompt``/``completion``
training lines, plain text (``Prompt``): text is tokenized as it is, with the tokenizer's own special
tokens and no chat template, in training and at inference alike (``render_text``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selftune import safejson
from selftune.data.validate import content_text
from selftune.errors import InvalidJSON

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
FALLBACK_TOOLS_PROMPT = (
    "You can call functions to help you answer. To call one, reply with a {open} block holding a JSON "
    'object with the function\'s "name" and its "arguments", one block per call:\n'
    '{open}\n{{"name": "function_name", "arguments": {{"argument": "value"}}}}\n{close}\n'
    "The results come back in {resp_open} blocks. The functions:\n<tools>\n{tools}\n</tools>"
)
"""The fallback convention for chat templates without tool support (SmolLM2's, say): the Hermes
format that Qwen2.5's own template uses, so one parser reads both. Tool schemas go in the system
turn, each call is a tagged JSON object in the assistant's turn, and tool results come back in a
user turn. The engine renders requests with tools the same way, so what is trained is what is parsed."""


def normalize_tools(tools: Any = None, functions: Any = None) -> list[dict[str, Any]] | None:
    """``tools`` as ``[{"type": "function", "function": {...}}]``; legacy ``functions`` become tools."""
    out = [t for t in tools or [] if isinstance(t, dict)]
    out += [{"type": "function", "function": f} for f in functions or [] if isinstance(f, dict)]
    return out or None


def _arguments(raw: Any) -> Any:
    """Templates expect arguments as an object (they ``tojson`` them); OpenAI sends a JSON string."""
    if isinstance(raw, str):
        try:
            return safejson.loads(raw, "arguments")
        except InvalidJSON:
            return raw  # validation reports this in training data; a request's own history passes through
    return raw


def normalize_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages in the shape chat templates accept: content as text, ``developer`` as ``system``,
    legacy ``function`` messages and ``function_call`` as tool messages and ``tool_calls``, call
    arguments as objects. ``name``, ``tool_call_id`` and ``weight`` are kept."""
    out: list[dict[str, Any]] = []
    legacy_ids: dict[str, str] = {}
    for i, m in enumerate(messages):
        role = str(m.get("role", "user"))
        msg: dict[str, Any] = {"role": {"developer": "system", "function": "tool"}.get(role, role)}
        msg["content"] = content_text(m.get("content"))
        calls = list(m.get("tool_calls") or [])
        if m.get("function_call"):
            call_id = f"call_{i}"
            legacy_ids[str(m["function_call"].get("name"))] = call_id
            calls.append({"id": call_id, "type": "function", "function": m["function_call"]})
        if calls:
            msg["tool_calls"] = [
                {
                    "id": c.get("id") or f"call_{i}_{k}",
                    "type": "function",
                    "function": {
                        "name": c["function"]["name"],
                        "arguments": _arguments(c["function"].get("arguments")),
                    },
                }
                for k, c in enumerate(calls)
            ]
        if role == "function" and "tool_call_id" not in m:
            msg["tool_call_id"] = legacy_ids.get(str(m.get("name")), "")
        for key in ("name", "tool_call_id", "weight"):
            if key in m:
                msg[key] = m[key]
        out.append(msg)
    return out


def supports_tools(tokenizer: Any) -> bool:
    """Whether the model's own chat template renders ``tools`` and ``tool_calls`` (Qwen2.5, Llama 3.1,
    Hermes); otherwise the fallback convention is used."""
    template = tokenizer.chat_template
    text = " ".join(template.values()) if isinstance(template, dict) else str(template or "")
    return "tools" in text and "tool_call" in text


def fallback_turns(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The fallback convention applied: plain system, user and assistant turns only."""
    if tools:
        schemas = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
        prompt = FALLBACK_TOOLS_PROMPT.format(
            open=TOOL_CALL_OPEN, close=TOOL_CALL_CLOSE, resp_open=TOOL_RESPONSE_OPEN, tools=schemas
        )
        if messages and messages[0]["role"] == "system":
            messages = [{**messages[0], "content": f"{messages[0]['content']}\n\n{prompt}".strip()}, *messages[1:]]
        else:
            messages = [{"role": "system", "content": prompt}, *messages]
    out: list[dict[str, Any]] = []
    results_turn = False  # results of one turn's calls share one user turn
    for m in messages:
        if m["role"] == "tool":
            block = f"{TOOL_RESPONSE_OPEN}\n{m['content']}\n{TOOL_RESPONSE_CLOSE}"
            if results_turn:
                out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + block}
            else:
                out.append({"role": "user", "content": block})
            results_turn = True
            continue
        results_turn = False
        if m["role"] == "assistant" and m.get("tool_calls"):
            blocks = [format_call(c["function"]["name"], c["function"]["arguments"]) for c in m["tool_calls"]]
            text = "\n".join([m["content"], *blocks] if m["content"] else blocks)
            m = {**{k: v for k, v in m.items() if k != "tool_calls"}, "content": text}
        out.append(m)
    return out


def format_call(name: str, arguments: Any) -> str:
    """One call in the fallback (Hermes) format; also what constrained decoding asks the model for."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def template_input(
    tokenizer: Any, messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """What goes into ``apply_chat_template``: the messages and tools as the model's template takes
    them, or the fallback convention's plain turns (and no ``tools``) for a template without tools."""
    msgs = normalize_messages(messages)
    if supports_tools(tokenizer):
        return msgs, tools
    if tools or any(m.get("tool_calls") or m["role"] == "tool" for m in msgs):
        return fallback_turns(msgs, tools), None
    return msgs, None


def _apply(tokenizer: Any, msgs: Sequence[dict[str, Any]], tools: Any, gen_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(
        list(msgs), tools=tools, add_generation_prompt=gen_prompt, tokenize=True, return_dict=False
    )
    return [int(i) for i in ids]


Prompt = Sequence[dict[str, Any]] | str
"""Chat messages, or the plain text of a legacy completion prompt."""


def render_text(tokenizer: Any, text: str) -> list[int]:
    """Plain text as the model reads it without a chat template (a BOS first where the tokenizer adds one)."""
    return [int(i) for i in tokenizer(text)["input_ids"]]


def render_prompt(tokenizer: Any, messages: Prompt, tools: list[dict[str, Any]] | None = None) -> list[int]:
    """Token ids of ``messages`` (and ``tools``) followed by the template's assistant generation prompt;
    of a plain-text prompt, its tokens (``render_text``)."""
    if isinstance(messages, str):
        return render_text(tokenizer, messages)
    msgs, native_tools = template_input(tokenizer, messages, tools)
    return _apply(tokenizer, msgs, native_tools, True)


def generation_config(folder: str | Path) -> Any:
    """A model folder's ``GenerationConfig`` (its extra end-of-turn tokens), or None without one."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(folder)
    except OSError:
        return None


@functools.lru_cache(maxsize=16)
def _folder_generation_config(folder: str) -> Any:
    """The generation config beside a tokenizer loaded from a folder (read once per folder): where
    registration lists an end-of-turn token that is not the tokenizer's EOS (Gemma's <end_of_turn>)."""
    return generation_config(folder) if folder and Path(folder).is_dir() else None


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
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    max_tokens: int | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> tuple[list[int], list[int]]:
    """Token ids of a whole conversation and its labels: the token id where the model is trained,
    ``IGNORE`` everywhere else.

    Trained: every assistant message (unless it has ``weight: 0``), its text and its tool calls, from
    the first token after the template's assistant header up to and including the end-of-turn token,
    so the model learns to stop. Never the tool results, which are context like the user's turns.
    The spans come from rendering growing prefixes of the conversation with the model's own chat
    template, so this works for any template without ``{% generation %}`` markers.

    Raises ``ValueError`` if the template does not render prefixes as prefixes (then spans cannot
    be located), naming the message at fault.
    """
    msgs, native_tools = template_input(tokenizer, messages, tools)
    full = _apply(tokenizer, msgs, native_tools, False)
    labels = [IGNORE] * len(full)
    stops = stop_token_ids(tokenizer, _folder_generation_config(str(getattr(tokenizer, "name_or_path", ""))))
    for i, m in enumerate(msgs):
        if m["role"] != "assistant" or m.get("weight", 1) == 0:
            continue
        start = len(_apply(tokenizer, msgs[:i], native_tools, True))
        upto = _apply(tokenizer, msgs[: i + 1], native_tools, False)
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


def render_completion(
    tokenizer: Any, prompt: str, completion: str, max_tokens: int | None = None
) -> tuple[list[int], list[int]]:
    """A legacy ``prompt``/``completion`` line: the prompt as ``render_text`` gives it (what
    ``/v1/completions`` will feed the model), then the completion and EOS, with only those trained.
    They are tokenized apart, as generation meets them: the model continues the prompt's own tokens."""
    head = render_text(tokenizer, prompt)
    tail = [int(i) for i in tokenizer(completion, add_special_tokens=False)["input_ids"]]
    if tokenizer.eos_token_id is not None:
        tail.append(int(tokenizer.eos_token_id))
    ids, labels = head + tail, [IGNORE] * len(head) + tail
    if max_tokens is not None and len(ids) > max_tokens:
        ids, labels = ids[:max_tokens], labels[:max_tokens]
    return ids, labels


def render_preference(
    tokenizer: Any, example: dict[str, Any], max_tokens: int | None = None
) -> tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]:
    """A preference line as two training rows, preferred then non-preferred: the input conversation
    followed by each output, with only the output trained (the input's own assistant turns are
    context, as ``weight: 0`` makes them). Both go through ``render_training``, so the completion is
    scored through the model's own chat template, tool calls included, up to its end-of-turn token."""
    inp = example["input"]
    tools = normalize_tools(inp.get("tools"), inp.get("functions"))
    context = [{**m, "weight": 0} if m.get("role") == "assistant" else m for m in inp["messages"]]
    chosen, rejected = (
        render_training(tokenizer, [*context, example[key][0]], max_tokens, tools)
        for key in ("preferred_output", "non_preferred_output")
    )
    return chosen, rejected


@dataclass
class RenderedFile:
    """A JSONL file as the trainer sees it: what it trains on, and what it had to cut or skip.

    A preference file's rows come in pairs, preferred then non-preferred output of the same line
    (``rows[2k]``, ``rows[2k + 1]``): ``per_example`` is 2 and ``examples`` counts lines."""

    rows: list[tuple[list[int], list[int]]] = field(default_factory=list)
    """(ids, labels) of every example that has something to train, truncated to the limit."""
    format: str = "chat"
    """``chat``, ``prompts``, ``preference`` or ``completion`` (one per file, as validation requires)."""
    items: list[dict[str, Any]] = field(default_factory=list)
    """Of a prompts file (reinforcement), each row's whole line: what its grader reads as ``item``.
    A prompt's row is its tokens up to the assistant's turn, nothing trained: the answers are sampled."""
    lines: list[int] = field(default_factory=list)
    """The line number of each row."""
    lengths: list[int] = field(default_factory=list)
    """Tokens of every example before truncation, in file order (of a preference line, its longer row)."""
    truncated: list[int] = field(default_factory=list)
    """Lines of examples longer than the limit (cut from the end)."""
    empty: list[int] = field(default_factory=list)
    """Lines of examples with no trained token left after truncation (skipped)."""
    unshown_names: list[int] = field(default_factory=list)
    """Lines whose messages have a ``name`` that this chat template does not render (so it is not trained)."""

    @property
    def tokens(self) -> int:
        """Tokens the trainer processes in one epoch (``trained_tokens`` counts these): for
        preference pairs, the input twice, once with each output."""
        return sum(len(ids) for ids, _ in self.rows)

    @property
    def per_example(self) -> int:
        return 2 if self.format == "preference" else 1

    @property
    def examples(self) -> int:
        """Examples (lines) that will be trained."""
        return len(self.rows) // self.per_example


def renders_names(tokenizer: Any) -> bool:
    """Whether the chat template shows a message's ``name`` (most do not): tried, not guessed."""
    probe = "selftune_name_probe"
    ids = _apply(tokenizer, [{"role": "user", "content": "hi", "name": probe}], None, False)
    return probe in tokenizer.decode(ids)


def _ends_with_user(example: dict[str, Any]) -> bool:
    messages = example["messages"]
    return bool(messages) and messages[-1].get("role") == "user"


def render_file(tokenizer: Any, path: str | Path, max_tokens: int) -> RenderedFile:
    """Render every example of a (valid) chat or preference JSONL file for training, truncating to
    ``max_tokens``.

    The one implementation behind the trainer, ``selftune validate``, ``estimate`` and ``render``,
    so that what they count and show is what is trained. Raises ``ValueError("LINE: why")`` for a
    line that cannot be rendered.
    """
    out = RenderedFile()
    shows_names = renders_names(tokenizer)
    first = True  # the first line decides a file's format, as validation does
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                example = json.loads(line)
                starts, first = first, False
                if "messages" in example and (out.format == "prompts" or (starts and _ends_with_user(example))):
                    out.format, messages = "prompts", example["messages"]
                    tools = normalize_tools(example.get("tools"), example.get("functions"))
                    ids = render_prompt(tokenizer, messages, tools)
                    rows = [(ids, [IGNORE] * len(ids))]
                elif "messages" in example:
                    messages = example["messages"]
                    tools = normalize_tools(example.get("tools"), example.get("functions"))
                    rows = [render_training(tokenizer, messages, tools=tools)]
                elif "completion" in example:
                    out.format, messages = "completion", []
                    rows = [render_completion(tokenizer, example.get("prompt", ""), example["completion"])]
                else:
                    out.format = "preference"
                    messages = example["input"]["messages"]
                    rows = list(render_preference(tokenizer, example))
            except (ValueError, KeyError, TypeError, IndexError) as e:  # only files that skipped validation
                raise ValueError(f"{lineno}: cannot render this example: {e}") from e
            out.lengths.append(max(len(ids) for ids, _ in rows))
            if not shows_names and any(isinstance(m, dict) and m.get("name") for m in messages):
                out.unshown_names.append(lineno)
            if out.format == "prompts":  # a prompt cut short would lose the turn the model answers
                if len(rows[0][0]) >= max_tokens:
                    out.empty.append(lineno)
                    continue
                out.items.append(example)
            elif any(len(ids) > max_tokens for ids, _ in rows):
                out.truncated.append(lineno)
                rows = [(ids[:max_tokens], labels[:max_tokens]) for ids, labels in rows]
            if out.format != "prompts" and any(all(label == IGNORE for label in labels[1:]) for _, labels in rows):
                out.empty.append(lineno)
                continue
            out.rows.extend(rows)
            out.lines.extend([lineno] * len(rows))
    return out
