"""What an export is: its format and quantisation (``ExportSpec``), what it is built from (``Source``),
how large it will be and whether the disk has room, before any work starts.

Formats: ``adapter`` (the PEFT folder), ``merged`` (a Hugging Face folder with the adapter merged
in), ``gguf`` (one GGUF at a quantisation level, or with ``lora`` the base GGUF and a GGUF LoRA
beside it) and ``ollama`` (a GGUF and a ``Modelfile``); ``export.build`` builds and verifies them.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from selftune.convert.quantize import BYTES_PER_WEIGHT, DEFAULT_QUANTIZE, QUANTIZE_LEVELS, Quantize
from selftune.errors import InsufficientStorage, InvalidRequest

Format = Literal["adapter", "merged", "gguf", "ollama"]
FORMATS: tuple[str, ...] = get_args(Format)
MANIFEST = "selftune-export.json"

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: called as each stage advances."""


@dataclass(frozen=True)
class ExportSpec:
    format: Format
    quantize: Quantize | Literal["served"] = DEFAULT_QUANTIZE
    """``served`` (only with ``lora``, its default): the server's own base GGUF, copied as it is."""
    lora: bool = False

    @classmethod
    def parse(cls, format: str, quantize: str | None, lora: bool, fine_tuned: bool) -> ExportSpec:
        """The export asked for, or a 400 naming what cannot be done (never silently ignored)."""
        if format not in FORMATS:
            raise InvalidRequest(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}", param="format")
        if quantize is not None and quantize not in (*QUANTIZE_LEVELS, "served"):
            raise InvalidRequest(
                f"unknown quantization {quantize!r}; use one of {', '.join(QUANTIZE_LEVELS)}", param="quantize"
            )
        if quantize is not None and format in ("adapter", "merged"):
            raise InvalidRequest(
                f"quantize applies to gguf and ollama exports; a {format} export keeps the trained weights",
                param="quantize",
            )
        if lora and format not in ("gguf", "ollama"):
            raise InvalidRequest("lora applies to gguf and ollama exports", param="lora")
        if quantize == "served" and not lora:
            raise InvalidRequest("quantize=served (the server's own base GGUF) needs lora", param="quantize")
        if not fine_tuned and (lora or format == "adapter"):
            raise InvalidRequest(
                f"a base model has no adapter; export it as merged, gguf or ollama (asked: {format}"
                + (", lora" if lora else "")
                + ")",
                param="format",
            )
        default = "served" if lora else DEFAULT_QUANTIZE
        return cls(format, quantize or default, lora)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Source:
    """What an export is built from, resolved by the caller (the catalog knows owners and paths)."""

    model: str
    base_model: str
    base_folder: Path
    adapter: Path | None
    context: int
    base_gguf: Path | None = None
    """The GGUF the server's llama.cpp engine serves the base from, if it has one."""
    training: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        paths = {
            k: str(getattr(self, k)) if getattr(self, k) else None for k in ("base_folder", "adapter", "base_gguf")
        }
        return {**asdict(self), **paths}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Source:
        return cls(**{**data, **{k: Path(data[k]) if data.get(k) else None for k in _PATHS}})


_PATHS = ("base_folder", "adapter", "base_gguf")


def safe_name(model: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in model).strip("-")


def parameter_count(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                shape = f.get_slice(key).get_shape()
                total += math.prod(shape)
    return total


def estimate_bytes(src: Source, spec: ExportSpec) -> tuple[int, int]:
    """(bytes the export will hold, bytes needed while building it: the merged folder of a GGUF included)."""
    weights = sum(f.stat().st_size for f in src.base_folder.glob("*.safetensors"))
    params = parameter_count(src.base_folder)
    tokenizer = sum(f.stat().st_size for f in src.base_folder.iterdir() if f.suffix != ".safetensors" and f.is_file())
    adapter = sum(f.stat().st_size for f in src.adapter.glob("adapter_model.*")) if src.adapter else 0
    if spec.format == "adapter":
        return adapter + tokenizer, adapter + tokenizer
    if spec.format == "merged":
        return weights + tokenizer, weights + tokenizer
    if spec.quantize == "served" and src.base_gguf is not None:
        gguf = src.base_gguf.stat().st_size
    else:
        gguf = int(params * BYTES_PER_WEIGHT[spec.quantize if spec.quantize != "served" else "f16"]) + tokenizer
    check = params * 2 if spec.quantize != "f16" else 0  # a quantised GGUF's float16 twin, for the check
    if spec.lora:
        return gguf + adapter, gguf + adapter + check
    return gguf, gguf + check + (weights if src.adapter is not None else 0)


def check_room(folder: Path, need: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < need * 1.05 + 16 * 2**20:
        raise InsufficientStorage(
            f"not enough disk space in {folder}: the export needs about {_size(need)} and {_size(free)} are free; "
            "free some space or choose another output folder"
        )


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
