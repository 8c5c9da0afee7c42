"""Building an export: a model (base, fine-tuned or checkpoint) in a format other tools run, verified.

Formats (``FORMATS``):

- ``adapter``: the PEFT folder, with the tokenizer, ``chat_template.jinja`` and ``selftune-export.json``
  (base model, stop tokens, training settings);
- ``merged``: a Hugging Face folder: the adapter merged into the unquantised base weights (float32
  for a base that came as GGUF, else the base's own dtype), tokenizer with its chat template, and
  ``generation_config.json`` whose ``eos_token_id`` lists every end-of-turn token;
- ``gguf``: one GGUF at a quantisation level (``convert.quantize``, float16 by default), converted
  from the merged folder; with ``lora`` the base GGUF and the GGUF LoRA beside it instead, where
  the base is by default the very file the server's llama.cpp engine serves (``served``: the
  shipped Q4_1 for SmolLM2), so llama.cpp elsewhere answers exactly as selftune's engine does;
- ``ollama``: the GGUF plus a ``Modelfile`` (``export.modelfile``).

An export is built in a hidden folder beside its destination, verified (``export.verify``), given
a manifest with every file's size and SHA-256, and only then renamed into place: a failed or
interrupted export leaves nothing behind. ``estimate_bytes`` and ``check_room`` run before any
work, so a full disk is an error up front, not a half-written file.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from selftune import __version__
from selftune.atomic import staged_dir
from selftune.blobs import sha256_file
from selftune.errors import ConversionError, InvalidRequest, TemplateNotExpressible, VerificationFailed
from selftune.export import formats, verify
from selftune.export.spec import MANIFEST, ExportSpec, Progress, Source, check_room, estimate_bytes


def export(src: Source, spec: ExportSpec, dest: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Build, verify and place the export at ``dest`` (which must not exist); return its manifest."""
    if dest.exists():
        raise InvalidRequest(f"{dest} already exists; choose a new output folder", param="output")
    tick = progress or (lambda stage, done, total: None)
    _, need = estimate_bytes(src, spec)
    check_room(dest.parent, need)
    with staged_dir(dest) as staging:
        tick(f"building the {spec.format} export", 0, 1)
        try:
            built = formats.build(src, spec, staging, tick)
        except (ConversionError, TemplateNotExpressible) as e:  # what this model cannot be written as
            raise InvalidRequest(
                f"{src.model} cannot be exported as {spec.format}: {e}", param="format", code="export_unsupported"
            ) from e
        tick("reference answers (PyTorch, float32)", 0, 1)
        ref = verify.reference(src.base_folder, built.adapter, cache=src.adapter or src.base_folder)
        tick("verifying with an independent reader", 0, 1)
        result = built.check(ref)
        shutil.rmtree(staging / formats.CHECK, ignore_errors=True)
        tick("verifying with an independent reader", 1, 1)
        if not result.passed:
            raise VerificationFailed(f"the export does not answer as selftune does; {result.summary()}")
        manifest = _manifest(src, spec, staging, built, result)
        tick("checksums", 1, 1)
    return manifest


def _manifest(src: Source, spec: ExportSpec, folder: Path, built: Any, result: Any) -> dict[str, Any]:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        files[str(path.relative_to(folder))] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = {
        "model": src.model,
        "base_model": src.base_model,
        "format": spec.format,
        "quantize": spec.quantize if spec.format in ("gguf", "ollama") else None,
        "lora": spec.lora,
        "created": int(time.time()),
        "selftune_version": __version__,
        "chat_template": built.chat_template,
        "stop_tokens": built.stop_tokens,
        "training": src.training,
        "verification": result.to_dict(),
        "run": built.run,
        "files": files,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
