"""Allow ``python -m selftune``."""

from selftune.cli import main

main()
