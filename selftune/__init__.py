"""selftune: a self-hosted, OpenAI-compatible fine-tuning platform.

Each module opens with a docstring saying what it owns; docs/development.md maps them all (a test
keeps that page and this tree in step).
"""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes (QLoRA), imported by peft in every training process, warns on a CPU with avx512_bf16
# that the optional `kernels` package, which fetches a kernel from the Hugging Face Hub, is missing.
# Without it bitsandbytes runs its own CPU kernels, so the warning says nothing a user can act on.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
