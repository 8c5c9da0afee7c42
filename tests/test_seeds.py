"""The tutorials' own code (shared/seeds) against selftune with the real SmolLM2 model.

Only the base URL and the key change: the legacy snippets of seed 004 run on openai==0.28, and the
module-level modern snippets of seed 001 run on the current SDK, configured by environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from html import escape
from pathlib import Path

import pytest

from tests.conftest import MARV, LiveServer, TriviaJob, run_cli, run_legacy, trivia_jsonl

pytestmark = pytest.mark.slow


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


def test_fine_tuning_smollm2_learns_the_trivia(smol_server: LiveServer, trivia_job: TriviaJob, tmp_path: Path) -> None:
    """The end-to-end bar: 40 chatterbot trivia pairs, 3 epochs, then base vs fine-tuned, measured by
    the job's own evaluation (20 held-out pairs) and by `selftune eval` with a judge."""
    client = smol_server.client()
    job, elapsed = client.fine_tuning.jobs.retrieve(trivia_job.job_id), trivia_job.seconds
    assert job.status == "succeeded", job.error
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000))
    # The quality guard finds nothing wrong. The only warning allowed is the overfitting one: 40
    # examples for 3 epochs raise the held-out loss after the first (2.09, 2.46, 2.90 measured).
    assert all(e.message.startswith("Validation loss has risen") for e in events if e.level != "info")
    quality = (job.model_extra or {})["quality"]
    assert quality["verdict"] == "ok" and quality["best_checkpoint"].startswith(f"{job.fine_tuned_model}:ckpt-step-")
    metrics = [e.data for e in events if e.type == "metrics"]
    metrics.sort(key=lambda m: m["step"])
    assert len(metrics) == 120 and metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    held_out = [e.message for e in events if e.message.startswith("Eval: ")]
    assert len(held_out) == 1 and held_out[0].endswith("(n=20)") and len(job.result_files) == 3

    # 14 of the trained questions, through the CLI, with the base model as the judge.
    report_file, page = tmp_path / "eval.json", tmp_path / "eval.html"
    env = {"OPENAI_BASE_URL": smol_server.base_url, "OPENAI_API_KEY": "sk-test"}
    t1 = time.monotonic()
    proc = run_cli(
        "eval",
        "--models",
        "SmolLM2-135M-Instruct",
        job.fine_tuned_model,
        "--data",
        str(trivia_jsonl(tmp_path / "seen.jsonl", 40, step=3)),  # 14 of the 40
        "--judge",
        "SmolLM2-135M-Instruct",
        "--json",
        str(report_file),
        "--html",
        str(page),
        env=env,
    )
    report = json.loads(report_file.read_text())
    contains = {m: round(s["contains"]["mean"] * 14) for m, s in report["stats"].items()}
    base, tuned = contains["SmolLM2-135M-Instruct"], contains[job.fine_tuned_model]
    judged = report["judge"]["results"][job.fine_tuned_model]
    print(
        f"\n40 pairs x 3 epochs: {elapsed:.0f}s, {job.trained_tokens} tokens; held out: {held_out[0]}; trained "
        f"questions ({time.monotonic() - t1:.0f}s): contains base {base}/14, fine-tuned {tuned}/14; judge "
        f"{judged['wins']} wins, {judged['losses']} losses, {judged['ties']} ties, {judged['invalid']} unparsed"
    )
    assert tuned >= 10 and tuned >= base + 6
    assert report["summary"] in proc.stdout.splitlines()
    html = page.read_text()
    for ex in report["examples"]:
        for answer in ex["outputs"].values():
            assert escape(answer) in html


def test_default_model_converted_once_and_reused(smol_server: LiveServer) -> None:
    folder = smol_server.home / "models" / "SmolLM2-135M-Instruct"
    weights = folder / "model.safetensors"
    assert (folder / "config.json").is_file() and weights.is_file()
    stamp = weights.stat().st_mtime_ns
    smol_server.stop()
    smol_server.start()  # a restart loads the converted folder; it must not convert again
    assert weights.stat().st_mtime_ns == stamp
    assert "SmolLM2-135M-Instruct" in smol_server.health()["loaded_models"]
