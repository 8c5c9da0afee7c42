"""Incremental detokenization: the text of each new token in constant time, whatever the answer's length.

Decoding the whole answer again at every token costs time proportional to its length, so a long
answer's last tokens are the slowest. ``IncrementalDecoder`` decodes only a short window instead:
the tokens since the last emitted text plus the few before them (``prefix``), which give the
tokenizer the context it needs (a SentencePiece word's leading space, a byte-level BPE character
split over several tokens). The text of the window minus the text of its prefix is the new text.
A window whose text ends in U+FFFD is an unfinished UTF-8 character: it waits for the next token.
The concatenated pieces equal ``tokenizer.decode(all_ids, skip_special_tokens=True)``.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        """Where the context window starts: tokens already emitted, decoded again for context only."""
        self.read = 0
        """Tokens before this one have been emitted as text."""

    def _text(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def push(self, token: int) -> str:
        """Add one token; return the text that became final (often one word piece, sometimes "")."""
        self.ids.append(token)
        before = self._text(self.ids[self.prefix : self.read])
        window = self._text(self.ids[self.prefix :])
        if len(window) > len(before) and not window.endswith(REPLACEMENT):
            self.prefix, self.read = self.read, len(self.ids)
            return window[len(before) :]
        return ""

    def flush(self) -> str:
        """The text of tokens still held back (an unfinished character shows as U+FFFD)."""
        before = self._text(self.ids[self.prefix : self.read])
        window = self._text(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return window[len(before) :]
