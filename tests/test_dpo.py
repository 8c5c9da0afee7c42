"""Preference fine-tuning (``method: dpo``): the loss against its formula, the step against a plain
full-logits computation, and DPO jobs through the real SDK on the tiny model (the job object, the
metrics, the result file, wrong formats, SFT then DPO from the ``ft:`` model, pause and resume,
cancel). The end-to-end run on SmolLM2 with real preference pairs is in test_dpo_smol.py."""

from __future__ import annotations

import csv
import io
import json
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from selftune.data.render import render_preference
from selftune.train.dpo import Preference, dpo_loss
from selftune.train.step import StepContext, collate
from tests.conftest import Conformance, LiveServer, chat_lines, preference_lines, run_cli
from tests.test_jobs_api import all_events, straight_and_paused, upload, wait, wait_for_step
from tests.test_memory import grads, lora_model


def test_dpo_loss_is_the_formula() -> None:
    # Pair 1: rewards 0.5 * (-1 - -2) = 0.5 and 0.5 * (-3 - -2) = -0.5, a margin of 1, so the loss is
    # -log sigmoid(1) = log(1 + e^-1). Pair 2 is the mirror image: margin -1, loss log(1 + e).
    losses, preferred, non_preferred = dpo_loss(
        torch.tensor([-1.0, -4.0]),
        torch.tensor([-3.0, -2.0]),
        torch.tensor([-2.0, -3.0]),
        torch.tensor([-2.0, -3.0]),
        beta=0.5,
    )
    assert losses.tolist() == pytest.approx([math.log(1 + math.exp(-1)), math.log(1 + math.e)], abs=1e-6)
    assert preferred.tolist() == [0.5, -0.5] and non_preferred.tolist() == [-0.5, 0.5]
    # Equal scores (the first step, when the model is still the reference): log 2.
    zero = torch.zeros(1)
    assert float(dpo_loss(zero, zero, zero, zero, beta=0.1)[0]) == pytest.approx(math.log(2))


def pairs_of(folder: Path, n: int) -> list[tuple[list[int], list[int]]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    rows: list[tuple[list[int], list[int]]] = []
    for i in range(n):
        line = {
            "input": {
                "messages": [
                    {"role": "user", "content": "question " * (1 + i % 3)},
                    {"role": "assistant", "content": "an earlier answer"},  # context: never scored
                    {"role": "user", "content": "and again?"},
                ]
            },
            "preferred_output": [{"role": "assistant", "content": "hello " * (1 + i % 4)}],
            "non_preferred_output": [{"role": "assistant", "content": "the lazy dog " * (1 + (2 * i) % 3)}],
        }
        rows.extend(render_preference(tok, line))
    return rows


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_the_step_is_the_dpo_gradient_of_the_completions_alone(tiny_model_dir: Path, alpha: float) -> None:
    """Against the model's own full logits: log-probabilities of the output tokens only (the input,
    its earlier assistant turn included, is context), the reference with the adapter off, the mean
    loss over pairs. Whole pairs per micro-batch, in any split, give the same loss and gradient.
    With the anchor (``rpo_alpha``), each pair adds alpha times the preferred output's mean
    next-token loss."""
    model = lora_model(tiny_model_dir)  # random LoRA weights: the policy differs from the reference
    rows = pairs_of(tiny_model_dir, 5)
    pad, cpu, beta = 0, torch.device("cpu"), 0.3

    def plain_logps() -> torch.Tensor:
        batch = collate(rows, pad, cpu)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        trained = labels != -100
        picked = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        return (picked * trained).sum(-1)

    with torch.no_grad(), model.disable_adapter():
        reference = plain_logps()
    policy = plain_logps()
    want_losses, good, bad = dpo_loss(policy[0::2], policy[1::2], reference[0::2], reference[1::2], beta)
    preferred_tokens = (collate(rows, pad, cpu)["labels"][0::2, 1:] != -100).sum(-1)
    want_losses = want_losses - alpha * policy[0::2] / preferred_tokens
    want_losses.mean().backward()
    want = grads(model)

    # Continuing from an ft: model, the reference is that model: its adapter stays on.
    kept = Preference(rows, [], beta, alpha, new_adapter=False)
    kept.prepare(model, StepContext(pad, cpu, nullcontext, 10_000, 7, 2), None)
    torch.testing.assert_close(kept.reference["train"].flatten(), policy.detach(), rtol=1e-5, atol=1e-5)
    assert float((policy.detach() - reference).abs().max()) > 0.01  # and that is not the base

    for micro_tokens in (10_000, 1, 60):
        objective = Preference(rows, [], beta, alpha, new_adapter=True)
        ctx = StepContext(pad, cpu, nullcontext, micro_tokens, 7, 2)
        saved = objective.prepare(model, ctx, None)
        torch.testing.assert_close(objective.reference["train"].flatten(), reference, rtol=1e-5, atol=1e-5)
        assert len(saved["reference"]["train"]) == 5
        metrics, tokens = objective.step(model, list(range(5)), ctx, list(range(5)))
        assert metrics["loss"] == pytest.approx(float(want_losses.detach().mean()), abs=1e-5)
        assert metrics["reward_accuracy"] == pytest.approx(float((good > bad).float().mean()))
        assert metrics["reward_margin"] == pytest.approx(float((good - bad).mean()), abs=1e-5)
        assert tokens == sum(len(ids) for ids, _ in rows)
        got = grads(model)
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6)


def test_a_dpo_job_through_the_sdk(
    client: openai.OpenAI, server: LiveServer, conformance: Conformance, tmp_path: Path
) -> None:
    train = upload(client, preference_lines(24), "pairs.jsonl")
    valid = upload(client, preference_lines(6, offset=100), "held.jsonl")
    job = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=train,
        validation_file=valid,
        seed=3,
        # rpo_alpha (selftune's anchor, an extra key to the SDK) off: the loss is then DPO's alone.
        method={
            "type": "dpo",
            "dpo": {"hyperparameters": {"beta": "auto", "n_epochs": 2, "batch_size": 4, "rpo_alpha": 0}},
        },
    )
    # Resolved at creation, in both shapes the SDKs read (beta only under method, as on OpenAI).
    assert job.method.type == "dpo" and job.method.dpo is not None
    hp = job.method.dpo.hyperparameters
    assert (hp.beta, hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier) == (0.1, 2, 4, 0.1)
    assert (hp.model_extra or {}).get("rpo_alpha") == 0.0  # shown where it was resolved
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 4
    assert {"beta", "rpo_alpha"}.isdisjoint(job.hyperparameters.model_dump(exclude_none=True))
    done = wait(client, job.id)
    assert done.status == "succeeded", done.error
    raw = client.fine_tuning.jobs.with_raw_response.retrieve(job.id).http_response.json()
    conformance.check("FineTuningJob", raw)
    assert raw["method"] == {"type": "dpo", "dpo": {"hyperparameters": hp.model_dump()}}

    events = all_events(client, job.id)
    metrics = [e.data for e in events if e.type == "metrics"]
    assert [m["step"] for m in metrics] == list(range(1, 13))
    assert metrics[0]["train_loss"] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference at step 1
    for m in metrics:
        assert {"train_loss", "train_mean_token_accuracy", "train_reward_accuracy", "train_reward_margin"} <= set(m)
    assert any("valid_reward_accuracy" in m for m in metrics)
    assert any("Scoring 30 preference pair(s) with the reference model" in e.message for e in events)
    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert ckpts and {"full_valid_loss", "full_valid_reward_accuracy", "full_valid_reward_margin"} <= set(
        ckpts[0].metrics.model_dump(exclude_none=True) | (ckpts[0].metrics.model_extra or {})
    )

    # The result file: OpenAI's columns first, then the rewards, one row per step.
    text = client.files.content(done.result_files[0]).text
    table = list(csv.DictReader(io.StringIO(text)))
    assert list(table[0])[:5] == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    assert {"train_reward_accuracy", "train_reward_margin", "valid_reward_accuracy", "valid_reward_margin"} <= set(
        table[0]
    )
    assert len(table) == 12 and float(table[-1]["train_reward_accuracy"]) >= 0

    # The fine-tuned model answers; the automatic evaluation compared it with the base on the held-out inputs.
    r = client.chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": "question 1"}], max_tokens=4
    )
    assert r.choices[0].message.role == "assistant"
    report = json.loads(client.files.content(done.result_files[2]).text)
    assert report["n"] == 6 and report["models"] == ["tiny", done.fine_tuned_model]
    assert report["examples"][0]["reference"] == "hello world 100"


def test_estimate_and_validate_count_both_outputs(server: LiveServer, client: openai.OpenAI, tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(preference_lines(20))
    env = {"SELFTUNE_HOME": str(server.home)}
    cli = json.loads(run_cli("estimate", str(path), "--model", "tiny", "--batch-size", "4", "--json", env=env).stdout)
    assert cli["examples"] == 20 and cli["method"] == "dpo" and cli["beta"] == 0.1
    assert cli["steps"] == 5 * cli["n_epochs"]
    chat = tmp_path / "chat.jsonl"
    chat.write_text(chat_lines(20))
    one = json.loads(run_cli("estimate", str(chat), "--model", "tiny", "--json", env=env).stdout)
    assert one["method"] == "supervised" and one["beta"] is None
    # Both outputs are counted, each after the input: more tokens than the input and one output.
    assert cli["tokens_per_epoch"] > one["tokens_per_epoch"]
    train = client.files.create(file=path.open("rb"), purpose="fine-tune")
    body = {
        "model": "tiny",
        "training_file": train.id,
        "method": {"type": "dpo", "dpo": {"hyperparameters": {"batch_size": 4, "beta": 0.5}}},
    }
    api = httpx.post(server.base_url + "/fine_tuning/jobs/estimate", json=body).json()
    for key in ("examples", "n_epochs", "steps", "tokens_per_epoch", "billed_tokens"):
        assert api[key] == cli[key], key
    assert api["method"] == "dpo" and api["beta"] == 0.5
    out = run_cli("validate", str(path), "--model", "tiny", env=env).stdout
    assert "20 example(s), no errors" in out


def test_the_wrong_format_fails_the_job_with_a_clear_error(client: openai.OpenAI) -> None:
    chat, pairs = upload(client, chat_lines(12)), upload(client, preference_lines(12), "pairs.jsonl")
    dpo = client.fine_tuning.jobs.create(model="tiny", training_file=chat, method={"type": "dpo"})
    failed = wait(client, dpo.id)
    assert failed.status == "failed" and failed.error.code == "invalid_file_format"
    assert failed.error.param == "training_file" and "DPO job" in failed.error.message
    assert "preferred_output" in failed.error.message
    sft = client.fine_tuning.jobs.create(model="tiny", training_file=pairs)
    failed = wait(client, sft.id)
    assert failed.status == "failed" and failed.error.code == "invalid_file_format"
    assert "preference pairs" in failed.error.message and "'dpo'" in failed.error.message
    mixed = client.fine_tuning.jobs.create(
        model="tiny", training_file=pairs, validation_file=chat, method={"type": "dpo"}
    )
    failed = wait(client, mixed.id)
    assert failed.status == "failed" and failed.error.param == "validation_file"


def test_sft_then_dpo_from_the_fine_tuned_model(client: openai.OpenAI) -> None:
    """OpenAI's recommended path. The reference is the starting model, the ft: model itself (its
    adapter as loaded), so the first step's loss is log 2 exactly as from a base model."""
    sft = wait(
        client,
        client.fine_tuning.jobs.create(
            model="tiny", training_file=upload(client, chat_lines(12)), hyperparameters={"n_epochs": 2}
        ).id,
    )
    assert sft.status == "succeeded"
    dpo = client.fine_tuning.jobs.create(
        model=sft.fine_tuned_model,
        training_file=upload(client, preference_lines(12), "pairs.jsonl"),
        method={
            "type": "dpo",
            "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 2, "beta": 0.2, "rpo_alpha": 0}},
        },
    )
    assert dpo.model == sft.fine_tuned_model
    done = wait(client, dpo.id)
    assert done.status == "succeeded", done.error
    first = next(e.data for e in all_events(client, dpo.id) if e.type == "metrics")
    assert first["train_loss"] == pytest.approx(math.log(2), abs=1e-3)
    r = client.chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": "question 1"}], max_tokens=3
    )
    assert r.choices[0].message.role == "assistant"


def test_dpo_pause_resume_matches_an_uninterrupted_run_and_cancel_stops_it(client: openai.OpenAI) -> None:
    spec: dict[str, Any] = {
        "model": "tiny",
        "training_file": upload(client, preference_lines(60), "pairs.jsonl"),
        "seed": 5,
        "method": {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 3, "batch_size": 1}}},
    }
    # Paused early: the tiny model trains tens of steps a second, and the pause must land before the end.
    straight, job = straight_and_paused(client, spec, 10)

    def losses(job_id: str) -> dict[int, float]:
        return {e.data["step"]: e.data["train_loss"] for e in all_events(client, job_id) if e.type == "metrics"}

    a, b = losses(straight), losses(job)
    assert sorted(a) == sorted(b) == list(range(1, 181))
    assert max(abs(a[s] - b[s]) for s in a) < 1e-4
    assert any(e.message.startswith("Training resumed at step") for e in all_events(client, job))

    cancelled = client.fine_tuning.jobs.create(**spec)
    wait_for_step(client, cancelled.id, 3)
    assert client.fine_tuning.jobs.cancel(cancelled.id).status == "cancelled"
    final = wait(client, cancelled.id)
    assert final.status == "cancelled" and final.fine_tuned_model is None


def test_prepare_builds_preference_pairs_from_columns(
    server: LiveServer, client: openai.OpenAI, tmp_path: Path
) -> None:
    table = tmp_path / "pairs.csv"
    table.write_text(
        "question,good,bad\n" + "".join(f"question {i},hello world {i},the lazy dog {i}\n" for i in range(12))
    )
    out = tmp_path / "pairs.jsonl"
    run_cli("prepare", str(table), "-o", str(out), "--chosen-col", "good", "--rejected-col", "bad")
    first = json.loads(out.read_text().splitlines()[0])
    assert set(first) == {"input", "preferred_output", "non_preferred_output"}
    assert first["input"]["messages"][0]["role"] == "user"
    assert first["preferred_output"][0]["content"].startswith("hello world")
    guessed = tmp_path / "trl.jsonl"
    guessed.write_text(json.dumps({"prompt": "hi", "chosen": "hello!", "rejected": "go away"}) + "\n")
    run_cli("prepare", str(guessed), "-o", str(tmp_path / "trl_out.jsonl"))
    line = json.loads((tmp_path / "trl_out.jsonl").read_text())
    assert line["non_preferred_output"] == [{"role": "assistant", "content": "go away"}]
    # The CLI client sees a file of pairs and creates a DPO job from it.
    env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-test"}
    job_id = run_cli(
        "jobs", "create", "--model", "tiny", "--training-file", str(out), "--beta", "0.3", "--epochs", "1", env=env
    ).stdout.strip()
    job = wait(client, job_id)
    assert job.status == "succeeded" and job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.3
    wrong = run_cli(
        "jobs", "create", "--model", "tiny", "--training-file", job.training_file, "--beta", "1", env=env, check=False
    )
    assert wrong.returncode != 0 and "--method dpo" in wrong.stderr
    bad = run_cli("prepare", str(table), "-o", str(tmp_path / "x.jsonl"), "--chosen-col", "good", check=False)
    assert bad.returncode != 0 and "no rejected column" in bad.stderr and "pairs.csv:2" in bad.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_preference_outputs_may_call_the_input_tools() -> None:
    from selftune.data.validate import validate_lines

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]

    def call(name: str) -> dict[str, Any]:
        fn = {"name": name, "arguments": '{"city": "Paris"}'}
        return {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": fn}]}

    def line(preferred: dict[str, Any], other: dict[str, Any], i: int = 0) -> bytes:
        example = {
            "input": {"messages": [{"role": "user", "content": f"Weather in Paris? ({i})"}], "tools": tools},
            "preferred_output": [preferred],
            "non_preferred_output": [other],
        }
        return json.dumps(example).encode()

    guess = {"role": "assistant", "content": "Sunny, I think."}
    lines = [line(call("get_weather"), guess, i) for i in range(10)]
    report = validate_lines([*lines, line(call("get_time"), guess, 10), line(guess, guess, 11)])
    found = sorted((p.line, p.key, p.message) for p in report.problems)
    assert [(n, key) for n, key, _ in found] == [(11, "unknown_function"), (12, "identical_outputs")]
    assert "preferred_output message 1 tool_calls[1] calls 'get_time'" in found[0][2]
