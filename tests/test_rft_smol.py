"""Reinforcement fine-tuning on the real SmolLM2, through the SDK, on a task whose answers a grader
can check: "What is the capital of X?" (countries and capitals from the ``countryinfo`` package,
as in ``bench.dpo_quality``), graded by ``text_similarity`` ``fuzzy_match`` against the capital.
The base model knows many capitals but wraps them in sentences ("The capital of France is Paris."),
which the grader scores low; the reward is earned by answering with the capital alone, so it rises
only if the model keeps the content while it changes the form.

Held-out questions decide: the validation reward rises during the job, the fine-tuned model beats
the base on the grader over questions it never saw, and the quality guard finds its answers ended
and varied."""

from __future__ import annotations

from statistics import mean
from typing import Any

from bench.dpo_quality import split
from bench.rft_quality import GRADER, prompt_lines
from tests.conftest import LiveServer
from tests.test_jobs_api import all_events, wait

BASE = "SmolLM2-135M-Instruct"


def test_rft_raises_the_reward_on_held_out_questions(smol_server: LiveServer) -> None:
    """llama.cpp samples the answers (on a CPU, as every job does), and its answers are not repeatable
    to the token (``train.sampling``), so the margins are set on the spread of three runs on a 2-core
    Intel Xeon with avx512_bf16 and avx512_fp16 (seed 7, the default learning rate; a fourth run
    failed with the earlier margins, which assertion lost with its output): the training reward's
    first four steps averaged 0.099, 0.114, 0.123 and its last four 0.204, 0.188, 0.181; the validation reward at step 12 was 0.262, 0.276, 0.263,
    against the starting model's 0.218 on the same 32 prompts; on 48 other held-out questions through
    the server the base scored 0.222 and the fine-tuned model 0.245, 0.243, 0.237. The margins
    asserted are about half the smallest of those gains."""
    client = smol_server.client()
    train_q, held_out = split(seed=1)
    train = client.files.create(file=("capitals.jsonl", prompt_lines(train_q[:48]).encode()), purpose="fine-tune")
    valid = client.files.create(file=("held-out.jsonl", prompt_lines(held_out[:32]).encode()), purpose="fine-tune")
    method: Any = {
        "type": "reinforcement",
        "reinforcement": {
            "grader": GRADER,
            "hyperparameters": {"n_epochs": 1, "eval_interval": 4, "eval_samples": 32, "reasoning_effort": "low"},
        },
    }
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=train.id,
        validation_file=valid.id,
        method=method,
        seed=7,
    )
    done = wait(client, job.id, timeout=900)
    assert done.status == "succeeded", done.error
    metrics = [e.data for e in all_events(client, job.id) if e.type == "metrics"]
    train_reward = [m["train_reward_mean"] for m in metrics]
    valid_reward = [m["valid_reward_mean"] for m in metrics if "valid_reward_mean" in m]
    print("train reward", [round(r, 3) for r in train_reward], "valid reward", [round(r, 3) for r in valid_reward])
    assert len(train_reward) == 12 and len(valid_reward) == 3
    assert mean(train_reward[-4:]) >= mean(train_reward[:4]) + 0.03
    assert all(m["train_grader_error_rate"] == 0 for m in metrics)
    # The quality guard: the fine-tuned model's answers to the validation prompts ended and varied.
    quality = (done.model_extra or {})["quality"]
    assert quality["verdict"] == "ok", quality
    compared = quality["validation_reward"]  # the job's own comparison on the validation prompts
    print("validation reward, starting model against fine-tuned:", compared)
    assert compared["prompts"] == 32 and compared["fine_tuned"] == valid_reward[-1]
    assert compared["fine_tuned"] >= compared["base"] + 0.02

    def grade(model: str) -> list[float]:
        rewards = []
        for q in held_out[32:80]:
            answer = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": q.prompt}], max_tokens=64, temperature=0
            )
            run = client.fine_tuning.alpha.graders.run(
                grader=GRADER,  # type: ignore[arg-type]
                model_sample=answer.choices[0].message.content or "",
                item={"capital": q.capital},
            )
            rewards.append(run.reward)
        return rewards

    base, tuned = mean(grade(BASE)), mean(grade(done.fine_tuned_model))
    print(f"held-out reward: base {base:.3f}, fine-tuned {tuned:.3f}")
    assert tuned >= base + 0.007
