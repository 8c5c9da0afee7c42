"""Batched decoding's tensor work: key/value caches of several rows side by side, and sampling.

Rows of one batch share a cache, left-padded to one width (``merge_caches``); a row that finishes
leaves with its cache row, and padding no remaining row needs is dropped (``select_rows``).
"""

from __future__ import annotations

from typing import Any

import torch


def batchable(cache: Any) -> bool:
    """Whether rows can share this cache: plain growing layers only (sliding-window caches drop
    old positions on their own schedule, so those models decode one request at a time)."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))


def cache_width(cache: Any) -> int:
    return int(cache.get_seq_length())


def merge_caches(a: Any, b: Any) -> Any:
    """Stack cache ``b`` under cache ``a`` in the batch dimension, left-padding the shorter one."""
    wa, wb = cache_width(a), cache_width(b)
    width = max(wa, wb)
    for la, lb in zip(a.layers, b.layers, strict=True):
        la.keys = torch.cat([_left_pad(la.keys, width - wa), _left_pad(lb.keys, width - wb)])
        la.values = torch.cat([_left_pad(la.values, width - wa), _left_pad(lb.values, width - wb)])
    return a


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    if n == 0:
        return t
    return torch.cat([t.new_zeros((*t.shape[:2], n, t.shape[3])), t], dim=2)


def select_rows(cache: Any, keep: list[int], longest: int) -> Any:
    """Keep some rows of a cache, and drop the left padding no remaining row needs."""
    index = torch.tensor(keep, device=cache.layers[0].keys.device)
    width = cache_width(cache)
    for layer in cache.layers:
        layer.keys = layer.keys[index, :, width - longest :]
        layer.values = layer.values[index, :, width - longest :]
    return cache


def sample(logits: torch.Tensor, temperature: float, top_p: float, rng: torch.Generator) -> int:
    scaled = logits.float() / temperature if temperature > 0 else logits
    if temperature <= 0 or not bool(torch.isfinite(scaled).all()):
        # A temperature so small that the logits overflow (1e-300, say) is greedy decoding.
        return int(torch.argmax(logits))
    probs = torch.softmax(scaled, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        keep[..., 0] = True  # the likeliest token stays, however small top_p is (5e-324 is 0 in float32)
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=rng)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=rng))
