"""selftune: a self-hosted, OpenAI-compatible fine-tuning platform.

The package is laid out by responsibility:
- ``config``: settings from ``SELFTUNE_*`` environment variables or CLI flags.
- ``errors``: the typed exceptions every layer raises; the server converts them once.
- ``store`` / ``blobs``: metadata in SQL (SQLite or PostgreSQL) and file bytes on disk.
- ``catalog``: which base models exist, where their weights live, and model-id resolution.
- ``data``: validation and rendering of training data, shared by CLI, server and trainer.
- ``inference``: the generation engine, with no HTTP types.
- ``server``: the FastAPI app, one module per OpenAI API resource.
- ``cli``: the ``selftune`` command.
"""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes (QLoRA), imported by peft in every training process, warns on a CPU with avx512_bf16
# that the optional `kernels` package, which fetches a kernel from the Hugging Face Hub, is missing.
# Without it bitsandbytes runs its own CPU kernels, so the warning says nothing a user can act on.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
