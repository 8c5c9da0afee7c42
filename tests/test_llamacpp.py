"""The llama.cpp engine against the PyTorch engine, on the real SmolLM2 and its shipped Q4_1 GGUF.

Parity: both engines run the same token prompts (``Generation.prompt_ids``). PyTorch's greedy
answer is the reference; llama.cpp predicts each next token of it (teacher-forced), for the base
model and for a LoRA adapter converted by ``selftune.convert.lora``. Exact 32-token equality is
out of reach here: llama.cpp multiplies Q4_1 weights with activations quantised to 8 bits, PyTorch
with the same weights de-quantised to float32, and wherever the top two tokens are nearly tied the
two round differently (measured: every disagreement is a near-tie, under 0.2 nats). So the
criterion is next-token agreement: at least 92% overall, and no disagreement where PyTorch's choice
leads by more than ``DECIDED`` nats. An adapter converted without llama.cpp's q/k row permutation,
or applied at the wrong scale, fails it (the first is checked here, both in test_export.py).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import torch

from selftune.catalog import Catalog, Resolved
from selftune.config import Settings
from selftune.convert.lora import convert_adapter, gguf_path, permute_rows
from selftune.data.render import render_prompt
from selftune.inference.generation import Event, Generation, SamplingParams
from selftune.inference.llamacpp import LlamaCppEngine
from selftune.inference.torch_engine import TorchEngine
from selftune.live import LiveServer
from selftune.services import open_core
from tests.conftest import chat_lines, start_server

MODEL = "SmolLM2-135M-Instruct"
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "List three colors.",
    "How do I boil an egg?",
    "Tell me a joke about cats.",
    "What is 12 times 7?",
    "Translate 'good morning' into Spanish.",
]
TOKENS = 32
DECIDED = 0.25
"""Nats by which PyTorch's top token must lead the runner-up for a disagreement to count as an error."""


@pytest.fixture(scope="module")
def catalog(smol_server: LiveServer) -> Iterator[Catalog]:
    """The catalog of the SmolLM2 server's home (already converted), opened in this process."""
    core = open_core(Settings(home=smol_server.home))
    yield core.catalog
    core.close()


@pytest.fixture(scope="module")
def engines(catalog: Catalog) -> Iterator[tuple[TorchEngine, LlamaCppEngine]]:
    torch_engine, llama = TorchEngine(catalog, max_batch=4), LlamaCppEngine(catalog, max_batch=4)
    yield torch_engine, llama
    torch_engine.close()
    llama.close()


@pytest.fixture(scope="module")
def adapter(catalog: Catalog, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random LoRA on every linear layer, strong enough to change most answers (seeded)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = catalog.materialize(catalog.get_base(MODEL))
    torch.manual_seed(0)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(folder),
        LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.3)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(out)
    convert_adapter(out, folder)
    return out


def prompt_ids(catalog: Catalog, question: str) -> list[int]:
    tokenizer = catalog.tokenizer(catalog.get_base(MODEL))
    return render_prompt(tokenizer, [{"role": "user", "content": question}])


def greedy(engine: Any, model: Resolved, ids: list[int], max_tokens: int = TOKENS) -> list[int]:
    events: list[Event] = []
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    engine.submit(Generation(model, [], params, events.append, prompt_ids=ids)).result(timeout=300)
    return list(events[-1].tokens or [])


def reference(
    catalog: Catalog, model: Resolved, ids: list[int], continuation: list[int]
) -> tuple[list[int], list[float]]:
    """PyTorch's next-token choice at each position of ``continuation``, and its lead over the runner-up."""
    from transformers import AutoModelForCausalLM

    key = str(model.adapter)
    if key not in _REFERENCE:
        lm: Any = AutoModelForCausalLM.from_pretrained(catalog.materialize(model.base)).eval()
        if model.adapter is not None:
            from peft import PeftModel

            lm = PeftModel.from_pretrained(lm, model.adapter).eval()
        _REFERENCE[key] = lm
    with torch.no_grad():
        logits = _REFERENCE[key](torch.tensor([ids + continuation])).logits[0, len(ids) - 1 : -1].float()
    top = torch.topk(torch.log_softmax(logits, -1), 2)
    return top.indices[:, 0].tolist(), (top.values[:, 0] - top.values[:, 1]).tolist()


_REFERENCE: dict[str, Any] = {}
_ANSWERS: dict[tuple[str, str], tuple[list[int], list[float]]] = {}


def agreement(
    catalog: Catalog, engines: tuple[TorchEngine, LlamaCppEngine], model: Resolved, reference_model: Resolved
) -> tuple[float, list[float]]:
    """llama.cpp's teacher-forced agreement with PyTorch's greedy answers of ``reference_model``,
    and the leads of PyTorch's choice wherever llama.cpp (running ``model``) disagreed."""
    torch_engine, llama = engines
    agree = total = 0
    misses: list[float] = []
    for question in PROMPTS:
        ids = prompt_ids(catalog, question)
        key = (reference_model.id, question)
        if key not in _ANSWERS:  # the traps are measured against the same PyTorch answers
            answer = greedy(torch_engine, reference_model, ids)
            choices, leads = reference(catalog, reference_model, ids, answer)
            assert choices == answer  # the engine's greedy answer is the model's argmax, position by position
            _ANSWERS[key] = (answer, leads)
        answer, leads = _ANSWERS[key]
        for k, token in enumerate(answer):
            got = greedy(llama, model, ids + answer[:k], max_tokens=1)
            total += 1
            if got[:1] == [token]:
                agree += 1
            else:
                misses.append(round(leads[k], 3))
    return agree / total, misses


def ft(catalog: Catalog, adapter: Path, name: str) -> Resolved:
    return Resolved(f"ft:{MODEL}:parity:{name}", catalog.get_base(MODEL), adapter)


def test_base_model_parity(catalog: Catalog, engines: tuple[TorchEngine, LlamaCppEngine]) -> None:
    base = catalog.resolve(MODEL, "local")
    rate, misses = agreement(catalog, engines, base, base)
    print(f"base: next-token agreement {rate:.1%}, PyTorch's lead where they differ: {sorted(misses)}")
    assert rate >= 0.92 and all(m < DECIDED for m in misses), (rate, misses)


def test_adapter_parity_and_the_converter_traps(
    catalog: Catalog, engines: tuple[TorchEngine, LlamaCppEngine], adapter: Path, tmp_path: Path
) -> None:
    model = ft(catalog, adapter, "right")
    rate, misses = agreement(catalog, engines, model, model)
    print(f"adapter: next-token agreement {rate:.1%}, PyTorch's lead where they differ: {sorted(misses)}")
    assert rate >= 0.92 and all(m < DECIDED for m in misses), (rate, misses)

    # The same adapter written without llama.cpp's q/k permutation: the criterion must catch it. (An
    # adapter at twice its scale fails the export verification, in test_export.py, with this converter.)
    for trap, edit in (("no q/k permutation", _unpermuted),):
        broken = tmp_path / trap.replace(" ", "-").replace("/", "")
        shutil.copytree(adapter, broken)
        edit(catalog, gguf_path(adapter), gguf_path(broken))
        rate, misses = agreement(catalog, engines, ft(catalog, broken, broken.name), model)
        decided = [m for m in misses if m >= DECIDED]
        print(f"{trap}: agreement {rate:.1%}, decided misses {decided}")
        assert decided, f"an adapter with {trap} passed the parity criterion ({rate:.1%})"


def test_a_folder_converted_at_registration_answers_token_for_token(
    catalog: Catalog, engines: tuple[TorchEngine, LlamaCppEngine], adapter: Path
) -> None:
    """Without quantisation in the way (a float16 GGUF converted from the model's folder), both engines'
    greedy answers are the same 32 tokens, for the base model and the adapter."""
    spec = catalog.add("smol-f16", str(catalog.materialize(catalog.get_base(MODEL)))).spec
    assert catalog.gguf(spec) is not None and engines[1].serves(spec)
    torch_engine, llama = engines
    for model in (Resolved("smol-f16", spec), Resolved("ft:smol-f16:parity", spec, adapter)):
        for question in PROMPTS:
            ids = prompt_ids(catalog, question)
            assert greedy(llama, model, ids) == greedy(torch_engine, model, ids), (model.id, question)


def test_an_adapter_a_request_does_not_name_is_not_applied(
    catalog: Catalog, engines: tuple[TorchEngine, LlamaCppEngine], adapter: Path
) -> None:
    """llama.cpp keeps every loaded adapter on its server; a base request must see none of them."""
    _, llama = engines
    base = catalog.resolve(MODEL, "local")
    fresh = LlamaCppEngine(catalog, max_batch=2)  # never loaded an adapter
    try:
        for question in PROMPTS[:4]:
            ids = prompt_ids(catalog, question)
            with_adapter = greedy(llama, ft(catalog, adapter, "right"), ids)
            after = greedy(llama, base, ids)  # the same server, the adapter loaded at scale 0
            assert after == greedy(fresh, base, ids)
            assert after != with_adapter
    finally:
        fresh.close()


def test_a_new_adapter_does_not_interrupt_requests_in_flight(catalog: Catalog, adapter: Path, tmp_path: Path) -> None:
    llama = LlamaCppEngine(catalog, max_batch=2)
    try:
        ids = prompt_ids(catalog, PROMPTS[1])
        first = ft(catalog, adapter, "first")
        greedy(llama, first, ids, max_tokens=2)
        servers = llama.servers_built
        events: list[Event] = []
        gen = Generation(first, [], SamplingParams(max_tokens=200, temperature=0.0), events.append, prompt_ids=ids)
        long = llama.submit(gen)
        started = threading.Event()
        while not events:  # the long answer is streaming
            started.wait(0.01)
        second = tmp_path / "second"
        shutil.copytree(adapter, second)
        _double_alpha(catalog, gguf_path(adapter), gguf_path(second))
        assert greedy(llama, ft(catalog, second, "second"), ids, max_tokens=4)  # builds a new server meanwhile
        assert llama.servers_built == servers + 1
        long.result(timeout=300)
        assert events[-1].finish_reason in ("stop", "length") and events[-1].completion_tokens > 4
    finally:
        llama.close()


# --- broken copies of a converted adapter -------------------------------------------------------------


def _rewrite(src: Path, dst: Path, tensor: Any = None, alpha: Any = None) -> None:
    import gguf

    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(dst), str(reader.fields["general.architecture"].contents()))
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = field.contents()
        if key == "adapter.lora.alpha" and alpha is not None:
            value = alpha(value)
        if isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_string(key, str(value))
    for t in reader.tensors:
        data = np.array(t.data).reshape([int(n) for n in reversed(t.shape)])
        writer.add_tensor(t.name, tensor(t.name, data) if tensor else data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _unpermuted(catalog: Catalog, src: Path, dst: Path) -> None:
    """Undo the q/k row permutation of ``lora_b`` (what a converter that forgot it would write)."""
    heads = {"attn_q": 9, "attn_k": 3}  # SmolLM2-135M: 9 query heads, 3 key/value heads

    def undo(name: str, data: np.ndarray) -> np.ndarray:
        kind = name.split(".")[2]
        if kind in heads and name.endswith("lora_b"):
            n = heads[kind]
            order = permute_rows(np.arange(data.shape[0])[:, None], n)[:, 0]
            out = np.empty_like(data)
            out[order] = data
            return out
        return data

    _rewrite(src, dst, tensor=undo)


def _double_alpha(catalog: Catalog, src: Path, dst: Path) -> None:
    _rewrite(src, dst, alpha=lambda a: 2.0 * a)


# --- the API promises, on the llama.cpp engine (the SmolLM2 server serves it with llama.cpp) ----------


def test_the_smollm2_server_serves_with_llamacpp(smol_server: LiveServer) -> None:
    health = smol_server.health()
    assert health["engine"] == "auto" and health["served_by"][MODEL] == "llamacpp", health


def test_api_promises_hold_on_llamacpp(smol_server: LiveServer) -> None:
    client = smol_server.client()
    ask = [{"role": "user", "content": "Count from 1 to 30, one number per line."}]

    # streaming with usage: the text and the counts match the non-streamed answer at temperature 0
    plain = client.chat.completions.create(model=MODEL, messages=ask, max_tokens=40, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=ask, max_tokens=40, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    usage = chunks[-1].usage
    assert usage is not None and plain.usage is not None
    assert usage.completion_tokens == plain.usage.completion_tokens and usage.prompt_tokens == plain.usage.prompt_tokens
    assert plain.choices[0].finish_reason == "length" and plain.usage.completion_tokens == 40

    # stop: cut before the stop string, which is never sent
    r = client.chat.completions.create(model=MODEL, messages=ask, max_tokens=60, temperature=0, stop=["\n5"])
    out = r.choices[0].message.content or ""
    assert r.choices[0].finish_reason == "stop" and "5" not in out and out.strip().startswith("1"), out

    # n and seed: n different samples, the same again with the same seed
    def sample(seed: int) -> list[str | None]:
        r = client.chat.completions.create(model=MODEL, messages=ask, max_tokens=16, temperature=1.0, n=3, seed=seed)
        return [c.message.content for c in sorted(r.choices, key=lambda c: c.index)]

    first = sample(7)
    assert len(set(first)) > 1 and sample(7) == first and sample(8) != first
    # temperature 0 and top_p: greedy is greedy
    greedy_a = client.chat.completions.create(model=MODEL, messages=ask, max_tokens=12, temperature=0, top_p=0.5)
    assert (
        greedy_a.choices[0].message.content
        == plain.choices[0].message.content[: len(greedy_a.choices[0].message.content or "")]
    )

    # max_tokens beyond the context is a 400, as on OpenAI
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=ask, max_tokens=9000)
    assert e.value.code == "context_length_exceeded" and "8192" in str(e.value)

    # response_format json_schema: valid JSON that matches
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Make up a person."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
        max_tokens=60,
        temperature=0,
    )
    person = json.loads(r.choices[0].message.content or "")
    assert set(person) == {"name", "age"} and isinstance(person["age"], int)
    # near max_tokens the structure is closed, as on the PyTorch engine: valid JSON, not a cut-off string
    for max_tokens in (12, 20, 31):
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Describe Paris at length, as JSON."}],
            response_format={"type": "json_object"},
            max_tokens=max_tokens,
            temperature=1.0,
            seed=max_tokens,
        )
        assert isinstance(json.loads(r.choices[0].message.content or ""), dict), r.choices[0].message.content
        assert r.usage is not None and r.usage.completion_tokens <= max_tokens

    # tool_choice required: a call to the named tool, with JSON arguments
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=tools,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=60,
        temperature=0,
    )
    call = (r.choices[0].message.tool_calls or [None])[0]
    assert call is not None and call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
    assert r.choices[0].finish_reason == "tool_calls"


def test_disconnect_cancels_on_llamacpp(smol_server: LiveServer) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell a long story."}],
        "max_tokens": 4000,
        "stream": True,
        "temperature": 1.0,
        "seed": 1,
    }
    with httpx.stream("POST", f"{smol_server.base_url}/chat/completions", json=body, timeout=60) as r:
        for _ in r.iter_lines():
            break
    t0 = time.monotonic()
    while smol_server.health()["active_generations"] and time.monotonic() - t0 < 10:
        time.sleep(0.1)
    assert smol_server.health()["active_generations"] == 0, "generation kept running after the client left"


def test_a_registered_folder_and_its_fine_tuned_model_on_llamacpp(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The tiny model, registered from its folder, is converted and served by llama.cpp; a job's adapter
    is converted when saved and answers at once, without a restart."""
    srv = start_server(tmp_path / "home", tiny_model_dir, SELFTUNE_ENGINE="auto")
    try:
        client = srv.client()
        assert srv.health()["served_by"]["tiny"] == "llamacpp"
        # Greedy: sampled at temperature 1, the random-init model ends its answer early now and then.
        r = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0
        )
        assert r.usage is not None and r.usage.completion_tokens == 5
        f = client.files.create(file=("t.jsonl", chat_lines(12).encode()), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="tiny", training_file=f.id, hyperparameters={"n_epochs": 1}, seed=0)
        deadline = time.monotonic() + 300
        while job.status not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
            time.sleep(0.3)
            job = client.fine_tuning.jobs.retrieve(job.id)
        assert job.status == "succeeded" and job.fine_tuned_model, job.error
        assert gguf_path(srv.home / "jobs" / job.id / "adapter").is_file()
        # Greedy: sampled at temperature 1, the trained end-of-turn token can come first (an empty answer).
        hi = [{"role": "user", "content": "hi"}]
        base = client.chat.completions.create(model="tiny", messages=hi, max_tokens=6, temperature=0)
        stream = client.chat.completions.create(
            model=job.fine_tuned_model, messages=hi, max_tokens=6, stream=True, temperature=0
        )
        tuned = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert tuned and tuned != base.choices[0].message.content, (tuned, base.choices[0].message.content)
        assert srv.health()["llamacpp"]["loaded_adapters"] == 1
    finally:
        srv.stop()
