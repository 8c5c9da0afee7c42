"""A Hugging Face model folder as a GGUF file, so llama.cpp can serve a model registered from one.

Covered: the families ``convert.lora`` covers (Llama, Mistral, Qwen2) with a byte-level BPE
tokenizer (GPT-2 style: SmolLM, Llama 3, Qwen); matrices are written as float16 (norms and biases
float32), so nothing is lost, or at the quantisation level an export asks for (``convert.quantize``).
A folder outside that (a SentencePiece tokenizer, an unknown family) raises ``ConversionError``
and the model is served by the PyTorch engine.

Names come from the ``gguf`` package: tensors through ``get_tensor_name_map``, the tokenizer
through ``gguf.vocab`` (``BpeVocab`` for tokens, ``SpecialVocab`` for merges, special ids and the
chat template), hyperparameters through ``GGUFWriter``'s own setters. Llama-family q/k rows are
permuted as llama.cpp expects (``convert.lora.permute_rows``). selftune tokenizes prompts itself and
reads back token ids, so llama.cpp's pre-tokenizer choice only matters to llguidance's forced
text; an unknown one is written as ``default``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from selftune.atomic import staged
from selftune.convert.lora import _ARCHES, _PERMUTED, permute_rows
from selftune.convert.quantize import Quantize, file_type, quantize, tensor_type
from selftune.data.render import generation_config
from selftune.errors import ConversionError

_PRE = {"qwen2": "qwen2"}
"""llama.cpp's pre-tokenizer names by family, where one family has one tokenizer."""


def convert_model(
    folder: str | Path,
    out: str | Path,
    level: Quantize = "f16",
    progress: Callable[[int, int], None] | None = None,
    name: str | None = None,
) -> Path:
    """Write ``folder``'s model as GGUF to ``out`` (temporary file, then rename), its matrices at
    ``level`` (``convert.quantize``); ``progress(done, total)`` is called per tensor."""
    import gguf
    import torch
    from safetensors import safe_open

    folder, out = Path(folder), Path(out)
    config = json.loads((folder / "config.json").read_text())
    model_type = str(config.get("model_type"))
    if model_type not in _ARCHES:
        raise ConversionError(f"llama.cpp serving does not cover {model_type!r} models yet")
    try:
        vocab = gguf.vocab.BpeVocab(folder)
    except FileNotFoundError as e:
        raise ConversionError(f"only byte-level BPE tokenizers are converted ({e})") from e
    arch = getattr(gguf.MODEL_ARCH, _ARCHES[model_type])
    n_layers, n_head = int(config["num_hidden_layers"]), int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // n_head)
    n_vocab = int(config.get("vocab_size") or vocab.vocab_size)

    with staged(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
        w.add_name(name or folder.name)
        w.add_context_length(int(config.get("max_position_embeddings") or 2048))
        w.add_embedding_length(hidden)
        w.add_block_count(n_layers)
        w.add_feed_forward_length(int(config["intermediate_size"]))
        w.add_head_count(n_head)
        w.add_head_count_kv(n_kv)
        w.add_rope_dimension_count(head_dim)
        w.add_rope_freq_base(_rope_theta(config))
        w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps") or 1e-6))
        w.add_vocab_size(n_vocab)
        w.add_file_type(file_type(level))

        tokens, types = _tokens(folder, vocab, n_vocab)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(_PRE.get(model_type, "default"))
        w.add_token_list(tokens)
        w.add_token_types(types)
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=n_vocab)
        special.add_to_gguf(w, quiet=True)
        eot = _end_of_turn(folder, special.special_token_ids.get("eos"))
        if eot is not None:  # Llama 3 style: the turn ends on a token that is not EOS (<|eot_id|>)
            w.add_eot_token_id(eot)

        names = gguf.get_tensor_name_map(arch, n_layers)
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise ConversionError(f"{folder} has no .safetensors weights")
        keys = {}
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                keys.update({key: file for key in f.keys() if not key.endswith("rotary_emb.inv_freq")})  # noqa: SIM118
        tied = "lm_head.weight" not in keys
        for done, (key, file) in enumerate(sorted(keys.items()), 1):
            with safe_open(str(file), framework="pt") as f:
                data = f.get_tensor(key).to(torch.float32).numpy()
            name = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise ConversionError(f"no llama.cpp tensor for {key!r}")
            if model_type in _PERMUTED and name.endswith(("attn_q.weight", "attn_k.weight")):
                data = permute_rows(data, n_head if "attn_q" in name else n_kv)
            array, raw = quantize(data, tensor_type(name, data.shape, level, n_layers, tied))
            w.add_tensor(name, array, raw_dtype=None if raw is None else gguf.GGMLQuantizationType(raw))
            if progress is not None:
                progress(done, len(keys))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out


def _end_of_turn(folder: Path, eos: int | None) -> int | None:
    """A stop token of the generation config other than EOS, which llama.cpp must also stop on."""
    config = generation_config(folder)
    ids = getattr(config, "eos_token_id", None)
    others = [int(i) for i in (ids if isinstance(ids, list) else [ids]) if i is not None and i != eos]
    return others[0] if others else None


def _rope_theta(config: dict[str, object]) -> float:
    """The rotary base, from ``rope_theta`` or (transformers 5) ``rope_parameters``; scaled rotary
    embeddings (Llama 3.1's, YaRN) need llama.cpp's own tensors and are not converted."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    assert isinstance(params, dict)
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind != "default":
        raise ConversionError(f"rotary scaling {kind!r} is not converted")
    return float(params.get("rope_theta") or config.get("rope_theta") or 10000.0)  # type: ignore[arg-type]


def _tokens(folder: Path, vocab: object, n_vocab: int) -> tuple[list[bytes], list[int]]:
    """Every token id's text and llama.cpp type; special tokens are control tokens, padding unused."""
    import gguf

    by_id: dict[int, tuple[bytes, int]] = {}
    for i, (text, _score, kind) in enumerate(vocab.all_tokens()):  # type: ignore[attr-defined]
        by_id[i] = (text if isinstance(text, bytes) else str(text).encode(), int(kind))
    tokenizer_json = folder / "tokenizer.json"
    if tokenizer_json.is_file():
        for added in json.loads(tokenizer_json.read_text()).get("added_tokens", []):
            kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
            by_id[int(added["id"])] = (str(added["content"]).encode(), int(kind))
    tokens = [by_id.get(i, (f"[PAD{i}]".encode(), int(gguf.TokenType.UNUSED))) for i in range(n_vocab)]
    return [t for t, _ in tokens], [k for _, k in tokens]
