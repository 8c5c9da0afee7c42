"""The tutorials' own code (shared/seeds) against selftune with the real SmolLM2 model.

Only the base URL and the key change: the legacy snippets of seed 004 run on openai==0.28, and the
module-level modern snippets of seed 001 run on the current SDK, configured by environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from tests.conftest import LiveServer, run_legacy

pytestmark = pytest.mark.slow

MARV = "Marv is a factual chatbot that is also sarcastic."


@pytest.fixture(scope="module")
def smol_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The server exactly as `make serve` runs it: the bundled SmolLM2, converted on first start."""
    srv = LiveServer(tmp_path_factory.mktemp("home-smol")).start(timeout=600)
    yield srv
    srv.stop()


def trivia_jsonl(path: Path, n: int = 40) -> Path:
    convs = yaml.safe_load(files("chatterbot_corpus").joinpath("data/english/trivia.yml").read_text("utf-8"))
    pairs = [(str(c[0]), str(c[1])) for c in convs["conversations"] if len(c) == 2][:n]
    with path.open("w") as f:
        for q, a in pairs:
            msgs = [
                {"role": "system", "content": MARV},
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ]
            f.write(json.dumps({"messages": msgs}) + "\n")
    return path


def test_seed_004_legacy_snippets(smol_server: LiveServer, tmp_path: Path) -> None:
    data = trivia_jsonl(tmp_path / "marv.jsonl")
    out = run_legacy(
        f"""
import os
os.chdir({str(tmp_path)!r})
f = openai.File.create(file=open("marv.jsonl", "rb"), purpose='fine-tune')
completion = openai.ChatCompletion.create(
  model="gpt-3.5-turbo",
  messages=[
    {{"role": "system", "content": "{MARV}"}},
    {{"role": "user", "content": "What is the capital of France?"}}
  ],
  temperature=0,
)
print(completion.choices[0].message, file=__import__("sys").stderr)
print(json.dumps({{"file": f.id, "status": f.status, "bytes": f.bytes, "model": completion.model,
                  "content": completion.choices[0].message.content}}))
""",
        smol_server.base_url,
    )
    assert out["status"] == "processed" and out["bytes"] == data.stat().st_size
    assert out["model"] == "SmolLM2-135M-Instruct"
    assert "Paris" in out["content"]


def test_seed_001_modern_module_snippets(smol_server: LiveServer, tmp_path: Path) -> None:
    trivia_jsonl(tmp_path / "train.jsonl", 36)
    trivia_jsonl(tmp_path / "eval.jsonl", 10)
    code = """
import json, openai
train = openai.files.create(file=open("train.jsonl", "rb"), purpose="fine-tune")
val = openai.files.create(file=open("eval.jsonl", "rb"), purpose="fine-tune")
completion = openai.chat.completions.create(
    model="gpt-3.5-turbo",
    messages=[
        {
            "role": "system",
            "content": "You are a smart assistant that replies with Latin proverbs",
        },
        {"role": "user", "content": "How can one find inner peace?"},
    ],
)
print(json.dumps({"train": train.status, "val": val.id != train.id, "content": completion.choices[0].message.content,
                  "finish": completion.choices[0].finish_reason, "model": completion.model}))
"""
    env = {**os.environ, "OPENAI_BASE_URL": smol_server.base_url, "OPENAI_API_KEY": "sk-anything"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["train"] == "processed" and out["val"]
    assert out["model"] == "SmolLM2-135M-Instruct" and out["finish"] in ("stop", "length")
    assert len(out["content"].split()) >= 3


def test_default_model_converted_once_and_reused(smol_server: LiveServer) -> None:
    folder = smol_server.home / "models" / "SmolLM2-135M-Instruct"
    weights = folder / "model.safetensors"
    assert (folder / "config.json").is_file() and weights.is_file()
    stamp = weights.stat().st_mtime_ns
    smol_server.stop()
    smol_server.start()  # a restart loads the converted folder; it must not convert again
    assert weights.stat().st_mtime_ns == stamp
    assert "SmolLM2-135M-Instruct" in smol_server.health()["loaded_models"]
