"""Constrained decoding with llguidance: the output is made to match a grammar, token by token.

``tool_choice: "required"`` (or a named function) and ``response_format`` (``json_object``,
``json_schema``) become a grammar (``selftune.inference.tools``); here it is compiled for a model's
tokenizer, and each decoding step masks the logits to the tokens the grammar allows, so even a
random model writes valid JSON that matches the schema. llguidance (the Rust library behind
vLLM's and llama.cpp's structured output) does the grammar work; this module only connects it to
the engine's sampling.

A grammar cannot finish if the answer runs out of tokens first (a string that never closes). So
near the end of ``max_tokens`` (the last ``reserve`` tokens: twice what this closing policy needs
to write the whole structure from nothing) the sampler stops choosing freely and takes, among the
allowed tokens, the one that closes the most per character (end of turn first, then ``"``, then
``}`` and ``]``): the grammar still
decides what is allowed, and the answer ends valid instead of cut off.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from selftune.errors import InvalidRequest

JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""JSON as ``json.dumps`` writes it, which is how tool calls are trained; no runs of whitespace."""


def styled(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "x-guidance": {**JSON_STYLE, **schema.get("x-guidance", {})}}


def check_grammar(grammar: str) -> str | None:
    """An error message if llguidance cannot compile ``grammar`` (an unsupported schema, say)."""
    import llguidance

    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    return messages[0] if is_error and messages else None


@dataclass
class Vocabulary:
    """A model's tokenizer as llguidance sees it, and how much each token closes; built once per model."""

    lltokenizer: Any
    size: int
    closing: torch.Tensor
    """Per token: how many closing characters it holds (end of turn counts most)."""
    shortest: dict[str, int] = field(default_factory=dict)
    """Grammar -> tokens the closing policy needs to write it from the start (see ``reserve``)."""

    def reserve(self, grammar: str, max_tokens: int) -> int:
        """Tokens to keep for closing: twice what the closing policy needs to write the whole
        structure from nothing (measured once per grammar). A ``max_tokens`` below that need is a 400."""
        if grammar not in self.shortest:
            if len(self.shortest) >= 256:  # one entry per distinct schema: keep a long-lived server bounded
                self.shortest.clear()
            row = RowConstraint(self, grammar, reserve=1 << 30)
            steps = 0
            while not row.finished and steps < 2048:
                logits, _ = row.mask(torch.zeros(self.size), remaining=0)
                token = int(torch.argmax(logits))
                if self.closing[token] >= 100:  # end of turn: the grammar is complete
                    break
                row.advance(token)
                steps += 1
            self.shortest[grammar] = steps
        need = self.shortest[grammar] + 1  # the end of turn too
        if need > max_tokens:
            raise InvalidRequest(
                f"max_tokens is {max_tokens}, but the required tool call or response_format needs at least "
                f"{need} tokens of this model; raise max_tokens",
                param="max_tokens",
            )
        return min(max_tokens, 2 * need + 4)

    @classmethod
    def build(cls, tokenizer: Any, stop_ids: set[int], size: int) -> Vocabulary:
        import llguidance.hf

        lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=size, eos_token=sorted(stop_ids))
        closing = torch.zeros(size)
        for token, text in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
            text = str(text or "")
            # Per character, so a token that only repeats "]" inside a string (content there, closing
            # nothing) cannot outrank the quote that ends the string; the quote counts double.
            closing[token] = (2 * text.count('"') + text.count("}") + text.count("]")) / max(1, len(text))
        for token in stop_ids:
            if token < size:
                closing[token] = 100.0
        return cls(lltok, size, closing)


class RowConstraint:
    """One choice's grammar state: masks its logits before sampling and follows what it samples."""

    def __init__(self, vocab: Vocabulary, grammar: str, reserve: int) -> None:
        import llguidance

        self.vocab = vocab
        self.matcher = llguidance.LLMatcher(vocab.lltokenizer, grammar)
        if self.matcher.is_error():
            raise ValueError(self.matcher.get_error())
        self.reserve = reserve
        self.bitmask = torch.full((1, (vocab.size + 31) // 32), -1, dtype=torch.int32)

    def allowed(self) -> torch.Tensor:
        """The tokens the grammar allows next, as a bool per vocabulary entry."""
        # Straight into the bitmask's memory (what llguidance.torch does, without importing its
        # torch.compile kernels, which cost a second on first import).
        row = self.bitmask[0]
        self.matcher.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())
        bits = np.unpackbits(self.bitmask.numpy().view(np.uint8), bitorder="little")[: self.vocab.size]
        return torch.from_numpy(bits.view(np.bool_))

    def mask(self, logits: torch.Tensor, remaining: int) -> tuple[torch.Tensor, bool]:
        """Logits with disallowed tokens at -inf, and whether to take the top one (the closing phase)."""
        refused = ~self.allowed().to(logits.device)
        closing = remaining <= self.reserve
        source = self.vocab.closing.to(logits.device) if closing else logits
        if source.shape[-1] == refused.shape[0]:
            return source.masked_fill(refused, float("-inf")), closing
        width = min(source.shape[-1], refused.shape[0])  # logits padded past the tokenizer, or short of it
        out = torch.full_like(logits, float("-inf"))
        out[:width] = source[:width].masked_fill(refused[:width], float("-inf"))
        return out, closing

    def follow(self, tokens: list[int]) -> bool:
        """Take tokens already written (a lazily started grammar); False if they do not fit it."""
        return bool(self.matcher.consume_tokens(tokens)) and not self.matcher.is_error()

    def advance(self, token: int) -> None:
        self.matcher.consume_token(token)

    @property
    def finished(self) -> bool:
        return bool(self.matcher.is_stopped())


def schema_grammar(schema: dict[str, Any]) -> str:
    """A JSON schema as a Lark grammar, the form both engines' llguidance take."""
    return f"start: %json {json.dumps(styled(schema))}\n"
