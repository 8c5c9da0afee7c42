"""Writing each export format into a folder, and how each is checked (``export.build`` drives them).

The merge is done in float32 on the unquantised base weights (PEFT's ``merge_and_unload``), then
cast back to the base's own dtype, so no LoRA update is rounded into quantised weights. GGUF files
are converted from that merged folder by ``convert.model`` (the converter the llama.cpp engine
uses), so one set of names, permutations and tokenizer metadata serves both.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selftune.data.render import generation_config, stop_token_ids
from selftune.export.spec import ExportSpec, Progress, Source, safe_name
from selftune.export.verify import Reference, Verification, verdict, with_llamacpp, with_transformers

CHECK = ".check"
"""The hidden folder, inside the export being built, for the float16 twin of a quantised GGUF."""


@dataclass(frozen=True)
class Built:
    adapter: Path | None
    """The adapter the reference applies: the exported one for an adapter export, else the source's."""
    chat_template: str
    stop_tokens: list[str]
    check: Callable[[Reference], Verification]
    """Loads the export with its independent reader and compares it with the reference."""
    run: dict[str, str]
    """Commands that run the export, from inside its folder."""


def build(src: Source, spec: ExportSpec, out: Path, tick: Progress) -> Built:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src.base_folder)
    stops = sorted(stop_token_ids(tokenizer, generation_config(src.base_folder)))
    texts = [str(tokenizer.convert_ids_to_tokens(i)) for i in stops]
    template = str(tokenizer.chat_template or "")
    name = safe_name(src.model)
    if spec.format == "adapter":
        assert src.adapter is not None
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(src.adapter / f, out / f)
        tokenizer.save_pretrained(out)
        # The reference is computed from the exported adapter itself, so PEFT reading it is the check.
        return Built(
            out,
            template,
            texts,
            lambda ref: verdict(
                ref, "peft", "unquantised", [a.tokens for a in ref.answers], [a.choices for a in ref.answers]
            ),
            {
                "peft": f"PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained('{src.base_model}'), '.')",
                "vllm": f"vllm serve {src.base_model} --enable-lora --lora-modules {name}=.",
            },
        )
    if spec.format == "merged":
        merge(src, out, tokenizer, stops, tick)
        return Built(
            src.adapter,
            template,
            texts,
            lambda ref: with_transformers(out, ref),
            {
                "transformers": "AutoModelForCausalLM.from_pretrained('.'); AutoTokenizer.from_pretrained('.')",
                "vllm": "vllm serve .",
            },
        )
    gguf, lora, exact = _gguf(src, spec, out, name, tokenizer, stops, tick)
    precision = spec.quantize
    if precision == "served":  # the server's own base GGUF is held to the bar of what it is
        precision = "f16" if src.base_gguf is None or _f16(gguf) else "served"
    with_lora = f" --lora {lora.name}" if lora else ""
    run = {
        "llama.cpp": f"llama-server -m {gguf.name}{with_lora}",
        "llama.cpp chat": f"llama-cli -m {gguf.name}{with_lora} -cnv",
    }
    if spec.format == "ollama":
        from selftune.export.modelfile import modelfile, pieces

        text = modelfile(gguf.name, pieces(tokenizer), texts, src.context, lora.name if lora else None)
        (out / "Modelfile").write_text(text)
        run = {"ollama": f"ollama create {name.lower()} -f Modelfile && ollama run {name.lower()}"}
    return Built(src.adapter, template, texts, _gguf_check(gguf, lora, exact, precision), run)


def _gguf_check(
    gguf: Path, lora: Path | None, exact: Path | None, precision: str
) -> Callable[[Reference], Verification]:
    """A quantised GGUF is checked twice: as it is, at its precision's bar, and as float16 (``exact``,
    written into ``CHECK`` from the same merged weights or base, deleted after the check) at f16's
    bar. Quantisation noise makes the first bar loose enough to let a wrong merge or a LoRA
    without its permutation through (84% for the latter); the float16 check does not."""

    def check(ref: Reference) -> Verification:
        result = with_llamacpp(gguf, lora, ref, precision)
        if exact is not None and result.passed:
            twin = with_llamacpp(exact, lora, ref, "f16")
            result.twin = twin.to_dict()
            result = result if twin.passed else twin
        return result

    return check


def _f16(gguf: Path) -> bool:
    """Whether a served base GGUF is float16 (a registered folder's), which is held to f16's bar."""
    import gguf as g

    field = g.GGUFReader(str(gguf)).fields.get("general.file_type")
    return field is not None and int(field.contents()) == int(g.LlamaFileType.MOSTLY_F16)


def merge(src: Source, out: Path, tokenizer: Any, stops: list[int], tick: Progress) -> None:
    """The base with the adapter merged in, saved as a Hugging Face folder with the tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(src.base_folder)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    tick("merging", 0, 1)
    model: Any = AutoModelForCausalLM.from_pretrained(src.base_folder, dtype=torch.float32)
    if src.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, src.adapter).merge_and_unload()
    model = model.to(dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype)))
    model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = stops[0]
    tick("merging", 1, 1)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _gguf(
    src: Source, spec: ExportSpec, out: Path, name: str, tokenizer: Any, stops: list[int], tick: Progress
) -> tuple[Path, Path | None, Path | None]:
    """The GGUF (and GGUF LoRA), plus the float16 twin a quantised one is also checked with."""
    from selftune.convert.lora import convert_adapter
    from selftune.convert.model import convert_model

    def writing(label: str) -> Callable[[int, int], None]:
        return lambda done, total: tick(f"writing {label}", done, total)

    check, exact = out / CHECK, None
    level = "f16" if spec.quantize == "served" and src.base_gguf is None else spec.quantize
    if spec.lora:
        assert src.adapter is not None
        lora = convert_adapter(src.adapter, src.base_folder, out / f"{name}-lora.gguf")
        if level != "f16":
            check.mkdir()
            exact = convert_model(src.base_folder, check / "base-f16.gguf", "f16", writing("the f16 check"))
        if level == "served":
            assert src.base_gguf is not None
            tick("copying the served base GGUF", 0, 1)
            base = out / src.base_gguf.name
            shutil.copyfile(src.base_gguf, base)
            return base, lora, exact
        target = out / f"{safe_name(src.base_model)}-{level}.gguf"
        return convert_model(src.base_folder, target, level, writing(f"GGUF ({level})"), src.base_model), lora, exact
    assert spec.quantize != "served"
    folder, merged = src.base_folder, out / ".merged"
    try:
        if src.adapter is not None:
            merged.mkdir()
            merge(src, merged, tokenizer, stops, tick)
            folder = merged
        target = out / f"{name}-{spec.quantize}.gguf"
        gguf = convert_model(folder, target, spec.quantize, writing(f"GGUF ({spec.quantize})"), src.model)
        if spec.quantize == "f16":
            return gguf, None, None
        check.mkdir()
        return gguf, None, convert_model(folder, check / "f16.gguf", "f16", writing("the f16 check"), src.model)
    finally:
        shutil.rmtree(merged, ignore_errors=True)
