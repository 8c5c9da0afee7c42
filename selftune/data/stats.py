"""Token statistics of a rendered training file: min, mean, max and a histogram per example."""

from __future__ import annotations

import statistics
from typing import Any


def token_stats(lengths: list[int]) -> dict[str, Any]:
    """Min, mean, max and a power-of-two histogram of tokens per example."""
    if not lengths:
        return {"examples": 0, "min": 0, "mean": 0.0, "max": 0, "histogram": []}
    buckets: dict[int, int] = {}
    for n in lengths:
        low = 1 << max(0, n.bit_length() - 1)
        buckets[low] = buckets.get(low, 0) + 1
    return {
        "examples": len(lengths),
        "min": min(lengths),
        "mean": round(statistics.fmean(lengths), 1),
        "max": max(lengths),
        "histogram": [{"from": lo, "to": 2 * lo - 1, "count": buckets[lo]} for lo in sorted(buckets)],
    }
