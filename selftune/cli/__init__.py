"""The ``selftune`` command: the server, the data tools, and a client for any OpenAI-compatible API.

``selftune --help`` lists the commands by section, from the commands themselves (``cli.main``).
One module per reason to change: ``server`` (process launchers), ``data`` (local data tools),
``client`` (SDK client commands), ``evaluate`` (eval), ``export`` (export), ``migrate`` (moving
jobs from OpenAI), ``common`` (what they share), ``main`` (the group). Server flags also read their
``SELFTUNE_*`` environment variables; client commands read ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``.
"""

from selftune.cli.main import cli, main

__all__ = ["cli", "main"]
