"""Loading for the engine: a base model with its tokenizer, and LoRA adapters onto a loaded base.

Fine-tuned models are adapters on a shared base: the first one wraps the loaded base in a
``PeftModel``, later ones are added beside it, and the least recently used idle ones are dropped.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from selftune.catalog import BaseModelSpec, Catalog, Resolved
from selftune.data.render import stop_token_ids
from selftune.errors import InvalidRequest, NotFound

log = logging.getLogger("selftune.engine")


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    stop_ids: set[int]
    context: int
    peft: Any = None
    """The ``PeftModel`` wrapping ``model`` once a first adapter is loaded (its LoRA layers are
    injected into ``model`` itself, which keeps serving the base with the adapters switched off)."""
    adapters: OrderedDict[str, str] = field(default_factory=OrderedDict)
    """Adapter folder -> peft adapter name, least recently used first."""
    vocabulary: Any = None
    """``constrain.Vocabulary``, built when a first request asks for constrained decoding."""


BASE = "__base__"
"""peft's name for "no adapter" in a mixed batch."""


def load_base(catalog: Catalog, spec: BaseModelSpec, dtype: torch.dtype, device: torch.device) -> Loaded:
    """Convert if needed, then load ``spec``'s weights and tokenizer for inference."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    folder: Path = catalog.materialize(spec)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    model = model.to(device).eval()  # type: ignore[arg-type]
    if tokenizer.chat_template is None:
        raise InvalidRequest(
            f"base model {spec.name!r} has no chat template, so chat messages cannot be rendered; "
            "add a chat_template to its tokenizer_config.json",
            param="model",
        )
    context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    loaded = Loaded(model, tokenizer, stop_token_ids(tokenizer, model.generation_config), context)
    log.info("loaded %s from %s in %.2fs", spec.name, folder, time.perf_counter() - t0)
    return loaded


def check_adapter(model: Resolved) -> None:
    """A fine-tuned model whose adapter folder is gone is a 404 that says what to do (both engines)."""
    assert model.adapter is not None
    if not (model.adapter / "adapter_config.json").is_file():
        raise NotFound(
            f"the weights of `{model.id}` are missing ({model.adapter}); delete the model and train it again",
            param="model",
            code="model_not_found",
        )


def load_adapter(lm: Loaded, model: Resolved, busy: set[str], max_adapters: int) -> str:
    """Load (or reuse) the adapter of a fine-tuned model onto its shared base; evict the least
    recently used adapter that no running row needs."""
    assert model.adapter is not None
    key = str(model.adapter)
    if key in lm.adapters:
        lm.adapters.move_to_end(key)
        return lm.adapters[key]
    check_adapter(model)
    from peft import PeftModel

    t0 = time.perf_counter()
    name = "a" + hashlib.sha1(key.encode()).hexdigest()[:16]
    if lm.peft is None:
        lm.peft = PeftModel.from_pretrained(lm.model, model.adapter, adapter_name=name)
    else:
        lm.peft.load_adapter(model.adapter, adapter_name=name)
    lm.peft.eval()
    lm.adapters[key] = name
    for old in [k for k, v in lm.adapters.items() if v not in busy and v != name]:
        if len(lm.adapters) <= max_adapters:
            break
        lm.peft.delete_adapter(lm.adapters.pop(old))
    log.info("loaded adapter of %s in %.2fs", model.id, time.perf_counter() - t0)
    return name
