"""The ``selftune`` command: the server, the data tools, and a client for any OpenAI-compatible API.

    selftune serve [--host 127.0.0.1] [--port 8000]     run the API and the training worker
    selftune worker [--slots 1]                         run only the training worker
    selftune prepare INPUT -o train.jsonl               CSV/JSON/Parquet/Alpaca/ShareGPT -> chat JSONL
    selftune validate | estimate | render FILE          check, cost and show a training file
    selftune files ... | jobs ... | chat MODEL          drive a server through the openai SDK
    selftune models add NAME PATH                       register a HF folder, a GGUF file or a Hub id
    selftune models list [--local]                      the server's models (--local: base models here)
    selftune models rm ID [--local]                     delete a fine-tuned model (--local: unregister a base)
    selftune eval --models BASE ft:... --data held.jsonl  base vs fine-tuned, side by side, with metrics

One module per reason to change: ``server`` (process launchers), ``data`` (local data tools),
``client`` (SDK client commands), ``evaluate`` (eval), ``common`` (what they share), ``main`` (the
group). Server flags also read their ``SELFTUNE_*`` environment variables; client commands read
``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``.
"""

from selftune.cli.main import cli, main

__all__ = ["cli", "main"]
