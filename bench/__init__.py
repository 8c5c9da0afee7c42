"""``make bench``: selftune against its peers, side by side in one run (``bench.run``)."""


def met(good: bool) -> str:
    """A headline target's last column in ``BENCHMARKS.md``."""
    return "met" if good else "**missed**"
