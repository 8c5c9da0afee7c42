"""Reinforcement fine-tuning (``method: reinforcement``, GRPO in ``train.grpo``) on the tiny model,
through the real SDK: the request as OpenAI takes it and what is refused, the prompts format, the
job's metrics (rewards, grader errors, timing), its checkpoints, pause and resume. The run on
SmolLM2 where the reward must rise is in test_rft_smol.py."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from pydantic import TypeAdapter

from selftune.data.render import RenderedFile, format_call
from selftune.graders.run import Context, answer_sample, grade_answers, no_judge
from selftune.live import serve_model
from selftune.schemas.graders import Grader
from selftune.train.grpo import CLIP, Reinforcement
from selftune.train.step import StepContext, collate
from tests.conftest import ALICE, Conformance, LiveServer, chat_lines, run_cli
from tests.test_jobs_api import all_events, straight_and_paused, upload, wait
from tests.test_memory import grads, lora_model

WORDS = ["red", "green", "blue", "black", "white"]


def prompt_lines(n: int, *, offset: int = 0) -> str:
    """Prompts ending with the user's message, with a key only the grader reads."""
    rows = []
    for i in range(offset, offset + n):
        messages = [
            {"role": "system", "content": "Answer with one colour."},
            {"role": "user", "content": f"question {i}: which colour?"},
        ]
        rows.append(json.dumps({"messages": messages, "colour": WORDS[i % len(WORDS)], "number": i}))
    return "\n".join(rows) + "\n"


CONTAINS = {
    "type": "string_check",
    "name": "has the colour",
    "input": "{{sample.output_text}}",
    "reference": "{{item.colour}}",
    "operation": "ilike",
}
# Half for naming the colour, half for length; fails (a runtime error, reward 0) on every third item:
# counted, never fatal. (One python grader: a multi grader's map of graders, as OpenAI's RFT guide
# writes it, is not in the official schema the job object is checked against.)
FLAKY = {
    "type": "python",
    "name": "flaky",
    "source": "def grade(sample, item):\n    if item['number'] % 3 == 0:\n        raise ValueError('no')\n"
    "    text = sample['output_text']\n"
    "    return 0.5 * (item['colour'] in text.lower()) + 0.5 * min(1.0, len(text) / 50)\n",
}


@pytest.mark.parametrize("micro_tokens", [10_000, 40])
def test_the_step_is_grpo_on_the_answers_alone(tiny_model_dir: Path, micro_tokens: int) -> None:
    """Against the model's own full logits: each answer's loss is the mean over its tokens (the
    prompt is context) of -A * ratio plus beta times exp(r - p) - (r - p) - 1, with the reference r
    the model with its adapter off; the batch's loss is their sum over the batch's answer count,
    whatever the micro-batches."""
    from transformers import AutoTokenizer

    model = lora_model(tiny_model_dir)  # random LoRA weights: the policy differs from the reference
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    group, beta = 3, 0.3
    grpo = Reinforcement(
        RenderedFile(), RenderedFile(), tok, grader=CONTAINS, json_answers=False, group=group,
        answer_tokens=8, max_len=64, kl_beta=beta, new_adapter=True,
    )  # fmt: skip
    ctx = StepContext(0, torch.device("cpu"), nullcontext, micro_tokens, 7, 2)
    grpo.prepare(model, ctx, None)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    answers = [[20 + k, 30, 40 + k][: 1 + k % 3] for k in range(len(prompts) * group)]
    advantages = torch.tensor([1.0, -0.5, -0.5, 0.0, 2.0, -2.0])
    loss_sum, kl_sum, tokens = grpo.train_on(model, prompts, answers, advantages, ctx, batch_prompts=4)
    got = grads(model)

    rows = [(prompts[k // group] + a, [-100] * len(prompts[k // group]) + a) for k, a in enumerate(answers)]
    batch = collate(rows, 0, torch.device("cpu"))

    def logps() -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        return torch.log_softmax(logits.float(), -1).gather(2, batch["input_ids"][:, 1:, None]).squeeze(2)

    with torch.no_grad(), model.disable_adapter():
        reference = logps()
    policy = logps()
    trained = batch["labels"][:, 1:] != -100
    total = torch.zeros(())
    kls = torch.zeros(())
    for k in range(len(rows)):
        p, r = policy[k][trained[k]], reference[k][trained[k]]
        ratio = torch.exp(p - p.detach())
        pg = -torch.min(ratio * advantages[k], torch.clamp(ratio, 1 - CLIP, 1 + CLIP) * advantages[k])
        kl = torch.exp(r - p) - (r - p) - 1
        total = total + (pg + beta * kl).mean()
        kls = kls + kl.detach().mean()
    (total / (4 * group)).backward()
    want = grads(model)
    assert got.keys() == want.keys() and got
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6)
    assert loss_sum == pytest.approx(float(total), rel=1e-4)
    assert kl_sum == pytest.approx(float(kls), rel=1e-4) and kl_sum > 0.001
    assert tokens == sum(len(ids) for ids, _ in rows)


def test_llamacpp_samples_the_adapter_as_it_is_at_each_step(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The sampler converts the adapter at every call: greedy, its answers are the training process's
    token for token (the tiny model's f16 GGUF), before and after the adapter changes; sampled, the
    answers of a group differ, stay within their budget, and come again with the same seed."""
    from transformers import AutoTokenizer

    from selftune.convert.model import convert_model
    from selftune.data.render import render_prompt, stop_token_ids
    from selftune.train.generate import generate_tokens
    from selftune.train.sampling import llamacpp_sampler

    model = lora_model(tiny_model_dir)  # random LoRA weights, on
    model.eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    stops = stop_token_ids(tok, model.generation_config)
    gguf = convert_model(tiny_model_dir, tmp_path / "tiny.gguf")
    sampler = llamacpp_sampler(str(gguf), str(tiny_model_dir), "cpu", False)
    assert sampler is not None
    assert llamacpp_sampler(str(gguf), str(tiny_model_dir), "cuda", False) is None  # a GPU samples itself
    assert llamacpp_sampler(str(gguf), str(tiny_model_dir), "cpu", True) is None  # sharded
    prompts = [render_prompt(tok, [{"role": "user", "content": f"question {i}: which colour?"}]) for i in range(4)]
    limits = [12, 5, 12, 9]

    def in_process() -> list[list[int]]:
        rows = generate_tokens(model, tok, torch.device("cpu"), nullcontext, prompts, limits)
        return [r[: next((k + 1 for k, t in enumerate(r) if t in stops), len(r))] for r in rows]

    before = in_process()
    assert sampler.sample(model, prompts, limits, samples=1, seed=0, stops=stops, temperature=0.0) == before
    with torch.no_grad():  # a step later: other adapter weights
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(-4.0)
    after = in_process()
    assert after != before
    assert sampler.sample(model, prompts, limits, samples=1, seed=0, stops=stops, temperature=0.0) == after

    group = sampler.sample(model, prompts[:2], limits[:2], samples=4, seed=7, stops=stops)
    assert len(group) == 8 and all(len(a) <= n for a, n in zip(group, [12] * 4 + [5] * 4, strict=True))
    assert len({tuple(a) for a in group[:4]}) > 1
    assert sampler.sample(model, prompts[:2], limits[:2], samples=4, seed=7, stops=stops) == group

    # A process whose share of a batch is nothing (2 processes, a batch of 1) takes part with no answers.
    grpo = Reinforcement(
        RenderedFile(), RenderedFile(), tok, grader=CONTAINS, json_answers=False, group=4,
        answer_tokens=8, max_len=64, kl_beta=0.04, new_adapter=True,
    )  # fmt: skip
    ctx = StepContext(0, torch.device("cpu"), nullcontext, 10_000, 7, 2)
    grpo.prepare(model, ctx, None)
    grpo.sampler = sampler
    values, tokens = grpo.step(model, [0], ctx, [])
    assert tokens == 0 and values["reward_mean"] == 0 and values["answer_tokens"] == 0


def test_an_answers_tool_calls_are_its_output_tools() -> None:
    """Where a prompt's line offers tools, the calls a sampled answer makes are graded as
    ``{{sample.output_tools}}`` (OpenAI's ``tool_calls``), the rest as ``output_text``."""
    tools = [{"type": "function", "function": {"name": "capital", "parameters": {"type": "object"}}}]
    call = format_call("capital", {"country": "Peru"})
    sample = answer_sample(f"Let me look.\n{call}", {"tools": tools, "capital": "Lima"})
    assert sample["output_text"] == "Let me look."
    (made,) = sample["output_tools"]
    assert made["type"] == "function" and made["function"]["name"] == "capital"
    assert json.loads(made["function"]["arguments"]) == {"country": "Peru"} and made["id"].startswith("call_")
    # Without tools offered, the same text is only text; a line with tools whose answer calls none, too.
    assert answer_sample(call, {"capital": "Lima"}) == {"output_text": call, "output_tools": [], "choices": []}
    assert answer_sample("Lima.", {"tools": tools})["output_tools"] == []
    by_name = {"type": "string_check", "name": "c", "input": "{{sample.output_tools.0.function.name}}"}
    graded = grade_answers(
        TypeAdapter(Grader).validate_python({**by_name, "reference": "capital", "operation": "eq"}),
        [call, "Lima."],
        [{"tools": tools}, {"tools": tools}],
        Context(no_judge),
    )
    assert [g.reward for g in graded] == [1.0, 0.0] and graded[1].errors.sample_parse_error


def rft(grader: dict[str, Any], **hyperparameters: Any) -> dict[str, Any]:
    return {"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": hyperparameters}}


def test_a_reinforcement_job_samples_grades_and_trains(
    client: openai.OpenAI, server: LiveServer, conformance: Conformance
) -> None:
    train, valid = upload(client, prompt_lines(12)), upload(client, prompt_lines(6, offset=100), "valid.jsonl")
    method = rft(FLAKY, n_epochs=2, batch_size=3, eval_interval=2, eval_samples=4, reasoning_effort="low")
    job = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=train,
        validation_file=valid,
        method=method,
        seed=3,  # type: ignore[arg-type]
    )
    assert job.method.type == "reinforcement"
    settings = job.method.reinforcement
    assert settings is not None and settings.grader.type == "python"
    hp = settings.hyperparameters
    assert (hp.n_epochs, hp.batch_size, hp.eval_interval, hp.eval_samples) == (2, 3, 2, 4)
    assert hp.compute_multiplier == 1.0 and hp.reasoning_effort == "low"
    done = wait(client, job.id)
    assert done.status == "succeeded", done.error
    conformance.check("FineTuningJob", httpx.get(f"{server.base_url}/fine_tuning/jobs/{job.id}").json())
    events = all_events(client, job.id)
    started = next(e for e in events if e.message.startswith("Fine-tuning job started"))
    assert "12 prompts" in started.message and "4 answers per prompt of up to 128 tokens" in started.message
    assert "sampled by llama.cpp on " in started.message  # on a CPU, from the tiny model's GGUF
    metrics = [e.data for e in events if e.type == "metrics"]
    assert [m["step"] for m in metrics] == list(range(1, 9)) and all(m["total_steps"] == 8 for m in metrics)
    for m in metrics:
        assert 0 <= m["train_reward_mean"] <= 1 and m["train_kl"] >= 0 and m["train_answer_tokens"] > 0
        # Items 0, 3, 6, 9 of the twelve fail the python grader: a third of each epoch's answers.
        assert 0 <= m["train_grader_error_rate"] <= 1
        assert m["train_sampling_seconds"] > 0 and m["train_grading_seconds"] > 0
        assert "train_mean_token_accuracy" not in m
    assert sum(m["train_grader_error_rate"] for m in metrics) / len(metrics) == pytest.approx(1 / 3, abs=1e-6)
    validated = [m for m in metrics if "valid_reward_mean" in m]
    assert [m["step"] for m in validated] == [2, 4, 6, 8]
    # Validation items 100..103: 102 fails the python grader (102 % 3 == 0), one in four.
    assert all(m["valid_grader_error_rate"] == pytest.approx(0.25) for m in validated)
    assert metrics[0]["train_kl"] == pytest.approx(0, abs=1e-6)  # the first step's model is the reference
    # Checkpoints where the job was evaluated; the three best by validation reward and the last are kept.
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    steps = sorted(c.step_number for c in checkpoints)
    assert set(steps) <= {2, 4, 6, 8} and 8 in steps and len(steps) >= 3
    best = sorted(validated, key=lambda m: (-m["valid_reward_mean"], m["step"]))[:3]
    assert {m["step"] for m in best} <= set(steps)
    assert all("valid_reward_mean" in c.metrics.to_dict() for c in checkpoints)
    # The job's own comparison: the starting model graded on the same four prompts at the end.
    compared = (done.model_extra or {})["quality"]["validation_reward"]
    assert compared["prompts"] == 4 and compared["fine_tuned"] == validated[-1]["valid_reward_mean"]
    assert 0 <= compared["base"] <= 0.75  # one in four fails the grader, for either model
    assert any(e.message.startswith("Validation reward on 4 prompt(s): starting model") for e in events)
    r = client.chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": "question 1: which colour?"}], max_tokens=3
    )
    assert r.choices[0].message.role == "assistant"
    # The estimate takes the same request.
    est = client.post(
        "/fine_tuning/jobs/estimate",
        body={"model": "tiny", "training_file": train, "method": method},
        cast_to=object,
    )
    assert est["method"] == "reinforcement" and est["group_size"] == 4 and est["answer_tokens"] == 128  # type: ignore[index]


# A judge that reads the item alone (not the answer): /graders/run tells what the trainer's judge must
# give every answer of each prompt. (The random tiny model says "yes" to each of these prompts.)
LABEL = {
    "type": "label_model",
    "name": "judge",
    "model": "tiny",
    "input": [{"role": "user", "content": "Is {{item.colour}} the colour of question {{item.number}}?"}],
    "labels": ["yes", "no"],
    "passing_labels": ["yes"],
}
JUDGED = {"type": "multi", "name": "judged", "graders": {"judge": LABEL}, "calculate_output": "judge"}


def test_a_model_grader_judges_in_the_trainer_as_graders_run_does(client: openai.OpenAI) -> None:
    """A label_model grader's judge (the tiny model, greedy under the labels' grammar) runs in the
    training process on llama.cpp: each step's rewards are the ones /graders/run gives, unflagged."""
    items = [json.loads(line) for line in prompt_lines(12).splitlines()]
    graded = [client.fine_tuning.alpha.graders.run(grader=JUDGED, model_sample="-", item=i) for i in items]  # type: ignore[arg-type]
    assert all(g.metadata.sampled_model_name == "tiny" for g in graded)
    expected = sum(g.reward for g in graded) / len(graded)
    train, valid = upload(client, prompt_lines(12)), upload(client, prompt_lines(4, offset=100), "valid.jsonl")
    method = rft(JUDGED, n_epochs=1, batch_size=3, eval_interval=4, eval_samples=2, reasoning_effort="low")
    job = client.fine_tuning.jobs.create(
        model="tiny", training_file=train, validation_file=valid, method=method, seed=5
    )  # type: ignore[arg-type]
    done = wait(client, job.id)
    assert done.status == "succeeded", done.error
    events = all_events(client, job.id)
    started = next(e for e in events if e.message.startswith("Fine-tuning job started"))
    assert "judged by tiny (llama.cpp)" in started.message, started.message
    metrics = [e.data for e in events if e.type == "metrics"]
    # A judge that failed or answered what does not parse would flag the grade and give 0.
    assert len(metrics) == 4 and all(m["train_grader_error_rate"] == 0 for m in metrics)
    # Every prompt once, each answer given its prompt's verdict: the steps' mean is the verdicts' mean.
    assert sum(m["train_reward_mean"] for m in metrics) / 4 == pytest.approx(expected, abs=1e-6)
    assert metrics[-1]["valid_grader_error_rate"] == 0 and metrics[-1]["valid_reward_mean"] == pytest.approx(expected)


def test_a_judge_this_server_lacks_is_called_from_the_trainer(
    keyed_server: LiveServer, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """SELFTUNE_JUDGE_BASE_URL: a judge this server does not have (``tiny``: it serves ``own-tiny``)
    is called by the trainer on the operator's judge API (here the keyed server, so the key must
    reach the trainer: without it every grade would be a flagged 401)."""
    judge_api = keyed_server.client(ALICE)
    items = [json.loads(line) for line in prompt_lines(10).splitlines()]
    graded = [judge_api.fine_tuning.alpha.graders.run(grader=JUDGED, model_sample="-", item=i) for i in items]  # type: ignore[arg-type]
    expected = sum(g.reward for g in graded) / len(graded)
    here = serve_model(
        tmp_path,
        "own-tiny",
        tiny_model_dir,
        SELFTUNE_ENGINE="torch",
        SELFTUNE_JUDGE_BASE_URL=keyed_server.base_url,
        SELFTUNE_JUDGE_API_KEY=ALICE,
    )
    try:
        client = here.client()
        train, valid = upload(client, prompt_lines(10)), upload(client, prompt_lines(2, offset=100), "valid.jsonl")
        method = rft(JUDGED, n_epochs=1, batch_size=5, eval_interval=2, eval_samples=2, reasoning_effort="low")
        job = client.fine_tuning.jobs.create(
            model="own-tiny", training_file=train, validation_file=valid, method=method
        )  # type: ignore[arg-type]
        done = wait(client, job.id)
        assert done.status == "succeeded", done.error
        events = all_events(client, job.id)
        started = next(e for e in events if e.message.startswith("Fine-tuning job started"))
        assert f"judged by tiny ({keyed_server.base_url})" in started.message, started.message
        metrics = [e.data for e in events if e.type == "metrics"]
        assert len(metrics) == 2 and all(m["train_grader_error_rate"] == 0 for m in metrics)
        assert sum(m["train_reward_mean"] for m in metrics) / 2 == pytest.approx(expected, abs=1e-6)
        # The key went to the trainer's environment, never into the job's files.
        assert ALICE not in (here.home / "jobs" / job.id / "job.json").read_text()
    finally:
        here.stop()


@pytest.mark.parametrize(
    ("method", "param", "words"),
    [
        ({"type": "reinforcement"}, "method.reinforcement.grader", "required"),
        (rft({"type": "string_check", "name": "x", "input": "{{sample.output_text}}"}), None, "reference"),
        (
            rft({**CONTAINS, "reference": "{{answer.colour}}"}),
            "method.reinforcement.grader.reference",
            "item.<key>",
        ),
        (
            rft({"type": "score_model", "name": "j", "model": "no-such-judge", "input": LABEL["input"]}),
            "method.reinforcement.grader.model",
            "'no-such-judge' does not exist",
        ),
        (rft(LABEL), "method.reinforcement.grader", "only inside a multi grader"),
        (rft(CONTAINS, compute_multiplier=11), None, "compute_multiplier"),
        (rft(CONTAINS, reasoning_effort="extreme"), None, "reasoning_effort"),
        (
            {"type": "reinforcement", "reinforcement": {"grader": CONTAINS, "response_format": {"type": "yaml"}}},
            "method.reinforcement.response_format",
            "json_schema",
        ),
        ({"type": "supervised", "reinforcement": {"grader": CONTAINS}}, "method.reinforcement", ""),
    ],
)
def test_what_a_reinforcement_request_cannot_be(
    client: openai.OpenAI, method: dict[str, Any], param: str | None, words: str
) -> None:
    train, valid = upload(client, prompt_lines(12)), upload(client, prompt_lines(4, offset=50), "valid.jsonl")
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(
            model="tiny",
            training_file=train,
            validation_file=valid,
            method=method,  # type: ignore[arg-type]
        )
    if param is not None:
        assert e.value.param == param, e.value.message
    assert words in e.value.message


def test_prompts_and_conversations_train_only_their_own_method(client: openai.OpenAI) -> None:
    prompts, chats = upload(client, prompt_lines(12)), upload(client, chat_lines(12), "chat.jsonl")
    job = client.fine_tuning.jobs.create(model="tiny", training_file=prompts)
    failed = wait(client, job.id)
    assert failed.status == "failed" and failed.error.code == "invalid_file_format"
    assert "prompts without answers" in failed.error.message and "'reinforcement'" in failed.error.message
    with pytest.raises(openai.BadRequestError) as e:  # OpenAI's rule: its prompts pick the checkpoints
        client.fine_tuning.jobs.create(model="tiny", training_file=prompts, method=rft(CONTAINS))  # type: ignore[arg-type]
    assert e.value.param == "validation_file"
    job = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=chats,
        validation_file=prompts,
        method=rft(CONTAINS),  # type: ignore[arg-type]
    )
    failed = wait(client, job.id)
    assert failed.status == "failed" and "samples its own answers" in failed.error.message
    # A prompts file whose later line brings its own answer: refused at upload, that line named.
    lines = prompt_lines(11) + json.dumps(
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    )
    with pytest.raises(openai.BadRequestError) as e:
        upload(client, lines + "\n")
    assert "train.jsonl:12" in e.value.message and "the last message must be the user's" in e.value.message


def test_the_cli_validates_estimates_and_creates_a_reinforcement_job(
    client: openai.OpenAI, server: LiveServer, tmp_path: Path
) -> None:
    train, valid, grader = tmp_path / "prompts.jsonl", tmp_path / "valid.jsonl", tmp_path / "grader.json"
    train.write_text(prompt_lines(12))
    valid.write_text(prompt_lines(4, offset=20))
    grader.write_text(json.dumps(CONTAINS))
    out = run_cli("validate", str(train)).stdout
    assert "12 prompt(s) for a reinforcement job, no errors, 0 warning(s)" in out
    home = {"SELFTUNE_HOME": str(server.home)}
    est = json.loads(run_cli("estimate", str(train), "--model", "tiny", "--json", env=home).stdout)
    assert est["method"] == "reinforcement" and est["group_size"] == 4 and est["answer_tokens"] == 256
    assert est["tokens_per_epoch"] > 12 * 4 * 256
    env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-test"}
    args = ["--model", "tiny", "--training-file", str(train), "--validation-file", str(valid)]
    job_id = run_cli(
        "jobs", "create", *args, "--grader", str(grader), "--eval-interval", "3", "--compute-multiplier", "0.5",
        "--epochs", "1", env=env,
    ).stdout.strip()  # fmt: skip
    job = wait(client, job_id)
    assert job.status == "succeeded", job.error
    settings = job.method.reinforcement
    assert settings is not None and settings.grader.type == "string_check"
    assert settings.hyperparameters.eval_interval == 3 and settings.hyperparameters.compute_multiplier == 0.5
    started = next(e for e in all_events(client, job_id) if e.message.startswith("Fine-tuning job started"))
    assert "2 answers per prompt" in started.message
    wrong = run_cli("jobs", "create", *args, "--eval-interval", "3", env=env, check=False)
    assert wrong.returncode != 0 and "--method reinforcement" in wrong.stderr
    missing = run_cli("jobs", "create", *args, "--method", "reinforcement", env=env, check=False)
    assert missing.returncode != 0 and "--grader FILE" in missing.stderr


def test_a_paused_reinforcement_job_resumes_where_it_stopped(client: openai.OpenAI) -> None:
    """The sampling draws from the seeded generator saved with the state: a resumed run takes the same
    answers, so its rewards are the uninterrupted run's."""
    spec: dict[str, Any] = {
        "model": "tiny",
        "training_file": upload(client, prompt_lines(12)),
        "validation_file": upload(client, prompt_lines(4, offset=50), "valid.jsonl"),
        "seed": 11,
        "method": rft(CONTAINS, n_epochs=2, batch_size=1, reasoning_effort="low"),
    }
    straight, job = straight_and_paused(client, spec, 5)

    def rewards(job_id: str) -> dict[int, tuple[float, float]]:
        metrics = [e.data for e in all_events(client, job_id) if e.type == "metrics"]
        return {m["step"]: (m["train_reward_mean"], m["train_answer_tokens"]) for m in metrics}

    a, b = rewards(straight), rewards(job)
    assert sorted(a) == sorted(b) == list(range(1, 25))
    assert a == b
