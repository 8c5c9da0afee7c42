"""Quantising GGUF tensors with llama.cpp's own quantiser, and which type each tensor gets.

The ``gguf`` package quantises only the simple block types (no K-quants), and llama.cpp's
``llama-quantize`` is a compiled tool. The quantiser itself, ``ggml_quantize_chunk``, is exported by
the llama.cpp library inside the ``xllamacpp`` wheel that serves selftune's models, so it is called
from there (``ctypes``): the bytes are exactly what ``llama-quantize`` writes for the chosen type.

Which tensor gets which type follows llama.cpp's ``llama_tensor_get_type`` for the three
documented levels:

- ``f16``: every matrix float16 (vectors stay float32): the same answers as selftune (the default);
- ``q8_0``: every matrix 8-bit: half the size of f16, answers close (llama.cpp's ``Q8_0``);
- ``q4_k_m``: 4-bit K-quants, with the output projection (or the tied embedding), half of the
  ``attn_v`` and ``ffn_down`` layers at 6 bits, as llama.cpp's ``Q4_K_M`` mixture does; rows whose
  length is not a multiple of 256 (SmolLM2's 576-wide matrices) fall back to Q5_0 / Q8_0 as
  llama.cpp's quantiser does.
"""

from __future__ import annotations

import ctypes
import re
from functools import cache
from pathlib import Path
from typing import Literal, get_args

import numpy as np

Quantize = Literal["f16", "q8_0", "q4_k_m"]
QUANTIZE_LEVELS: tuple[str, ...] = get_args(Quantize)
DEFAULT_QUANTIZE: Quantize = "f16"

BYTES_PER_WEIGHT = {"f16": 2.0, "q8_0": 34 / 32, "q4_k_m": 0.75}
"""For the size estimate made before any work (q4_k_m: its 6-bit tensors and fallbacks included)."""

_FALLBACK = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}
"""llama.cpp's type for a K-quant tensor whose rows are not a multiple of 256."""


def file_type(level: Quantize) -> int:
    import gguf

    return int(
        {
            "f16": gguf.LlamaFileType.MOSTLY_F16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
            "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M,
        }[level]
    )


def tensor_type(name: str, shape: tuple[int, ...], level: Quantize, n_layers: int, tied: bool) -> str:
    """The ggml type name of tensor ``name`` at ``level`` (``F32`` for vectors)."""
    if len(shape) < 2:
        return "F32"
    if level == "f16":
        return "F16"
    if level == "q8_0":
        return "Q8_0" if shape[-1] % 32 == 0 else "F16"
    kind = "Q4_K"
    layer = re.match(r"blk\.(\d+)\.", name)
    output = name == "output.weight" or (tied and name == "token_embd.weight")
    more = layer and name.endswith(("attn_v.weight", "ffn_down.weight")) and _more_bits(int(layer[1]), n_layers)
    if output or more:
        kind = "Q6_K"
    if shape[-1] % 256 != 0:
        kind = _FALLBACK[kind]
    return kind if shape[-1] % 32 == 0 else "F16"


def _more_bits(i: int, n: int) -> bool:
    """llama.cpp's ``use_more_bits``: the first and last eighth of the layers, and every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def quantize(data: np.ndarray, kind: str) -> tuple[np.ndarray, int | None]:
    """``data`` (float32) as ``kind``: the array to write and its raw ggml type (None: write as is)."""
    import gguf

    if kind == "F32":
        return data.astype(np.float32), None
    if kind == "F16":
        return data.astype(np.float16), None
    qtype = getattr(gguf.GGMLQuantizationType, kind)
    rows = np.ascontiguousarray(data.reshape(-1, data.shape[-1]), dtype=np.float32)
    lib = _ggml()
    out = np.empty((rows.shape[0], lib.ggml_row_size(int(qtype), rows.shape[1])), dtype=np.uint8)
    lib.ggml_quantize_chunk(int(qtype), rows.ctypes.data, out.ctypes.data, 0, rows.shape[0], rows.shape[1], None)
    return out.reshape(*data.shape[:-1], out.shape[-1]), int(qtype)


@cache
def _ggml() -> ctypes.CDLL:
    import xllamacpp

    lib = ctypes.CDLL(str(Path(xllamacpp.__file__).with_name("xllamacpp.abi3.so")))
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    return lib
