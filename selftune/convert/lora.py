"""A PEFT LoRA adapter as a GGUF LoRA file that llama.cpp applies per request, unmerged.

Tensor names come from the ``gguf`` package's own map (``get_tensor_name_map``), not a table of
ours: ``model.layers.3.self_attn.q_proj`` becomes ``blk.3.attn_q``, with ``.weight.lora_a`` and
``.weight.lora_b`` appended as llama.cpp's loader expects.

One trap: llama.cpp's Llama converter permutes the rows of the q and k projections (it pairs
rotary dimensions differently from transformers), and every Llama GGUF, the shipped SmolLM2
included, holds them permuted. The update ``B @ A`` must be permuted the same way, which means
permuting the rows of ``B`` (``A`` acts on the input side and is left alone). Without it the
adapter still loads and still changes the answers, only wrongly; the parity test catches it.

llama.cpp scales an adapter by ``alpha / r`` (from ``adapter.lora.alpha`` and the tensors' rank)
times the request's scale, which is PEFT's scaling; rsLoRA (``alpha / sqrt(r)``) is folded into
the stored alpha so both agree.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from selftune.atomic import staged
from selftune.errors import ConversionError

GGUF_NAME = "adapter.gguf"
"""The converted file, written beside PEFT's ``adapter_model.safetensors``."""

_ARCHES = {"llama": "LLAMA", "mistral": "LLAMA", "qwen2": "QWEN2", "gemma3_text": "GEMMA3", "gemma3": "GEMMA3"}
"""Hugging Face ``model_type`` -> llama.cpp architecture, for the families selftune serves with llama.cpp."""
_PERMUTED = {"llama", "mistral"}
"""Families whose q/k rows llama.cpp's converter permutes."""


def gguf_path(adapter_dir: str | Path) -> Path:
    return Path(adapter_dir) / GGUF_NAME


def supported(base_config: dict[str, Any]) -> bool:
    return str(base_config.get("model_type")) in _ARCHES


def convert_if_supported(adapter_dir: str | Path, base_dir: str | Path) -> Path | None:
    """What the recipe calls after saving an adapter: its GGUF, or None for a family llama.cpp does not serve."""
    config = json.loads((Path(base_dir) / "config.json").read_text())
    return convert_adapter(adapter_dir, base_dir) if supported(config) else None


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order: within each head, the two rotary halves interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert_adapter(adapter_dir: str | Path, base_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``adapter_dir``'s PEFT adapter as a GGUF LoRA (temporary file, then rename); return its path."""
    import gguf
    from safetensors.numpy import load_file

    adapter_dir, base_dir = Path(adapter_dir), Path(base_dir)
    target = Path(out) if out is not None else gguf_path(adapter_dir)
    config = json.loads((base_dir / "config.json").read_text())
    peft_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    model_type = str(config.get("model_type"))
    if model_type not in _ARCHES:
        raise ConversionError(f"llama.cpp serving does not cover {model_type!r} models yet")
    arch = getattr(gguf.MODEL_ARCH, _ARCHES[model_type])
    names = gguf.get_tensor_name_map(arch, int(config["num_hidden_layers"]))
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    r = int(peft_config["r"])
    alpha = float(peft_config["lora_alpha"])
    if peft_config.get("use_rslora"):
        alpha = alpha * math.sqrt(r)  # llama.cpp divides by r; rsLoRA divides by sqrt(r)
    if peft_config.get("rank_pattern") or peft_config.get("alpha_pattern"):
        raise ConversionError("per-layer ranks or alphas (rank_pattern, alpha_pattern) are not supported")

    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    with staged(target) as tmp:
        writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
        writer.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for key in sorted(tensors):
            if not key.endswith(".lora_A.weight"):
                if not key.endswith(".lora_B.weight"):
                    raise ConversionError(f"adapter tensor {key!r} is not a LoRA matrix; llama.cpp cannot apply it")
                continue
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            name = names.get_name(module)
            if name is None:
                raise ConversionError(f"no llama.cpp tensor for {module!r}")
            a = tensors[key].astype(np.float32)
            b = tensors[key.replace(".lora_A.", ".lora_B.")].astype(np.float32)
            if model_type in _PERMUTED and name.endswith((".attn_q", ".attn_k")):
                b = permute_rows(b, n_head if name.endswith(".attn_q") else n_kv)
            writer.add_tensor(f"{name}.weight.lora_a", a)
            writer.add_tensor(f"{name}.weight.lora_b", b)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return target
