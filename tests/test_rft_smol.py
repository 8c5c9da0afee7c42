"""Reinforcement fine-tuning on the real SmolLM2, through the SDK, on the bench's task
(``bench.rft_quality``): open questions from the ``moodswapper`` package after the system message
"Answer in one sentence of at most 15 words.", graded by a ``python`` grader (1 for 3 to 15 words,
15/words above). The base model half follows the instruction; the reward is earned by following it.

Held-out questions decide: the fine-tuned model beats the starting model on the validation prompts
(the job's own comparison) and the base on the grader over questions it never saw, through the
server, and the quality guard finds its answers ended and varied (an answer that says nothing to
every question would be caught as collapsed)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import mean
from typing import Any

from bench.rft_quality import GRADER, conversation, prompts_file, questions
from tests.conftest import LiveServer
from tests.test_jobs_api import all_events, wait

BASE = "SmolLM2-135M-Instruct"
TRAIN_MARGIN, COMPARISON_MARGIN, HELD_OUT_MARGIN = 0.008, 0.08, 0.07


def test_rft_raises_the_reward_on_held_out_questions(smol_server: LiveServer, tmp_path: Path) -> None:
    """llama.cpp samples the answers (on a CPU, as every job does), and its answers are not repeatable
    to the token (``train.sampling``), so the margins are set on the spread of three runs of this job
    (seed 7, the default learning rate) on a 2-core Intel Xeon without avx512_bf16, 2026-12-07: this
    test once, ``python -m bench.rft_quality`` and a script running the recipe the same way. The
    training reward's mean over steps 1-6 → 7-12: 0.668 → 0.766, 0.645 → 0.715, 0.679 → 0.696; the
    job's own comparison on the 32 validation prompts: 0.670 → 0.924, 0.844, 0.927; 48 held-out
    questions: base 0.616 → 0.878 through the server (this test), 0.649 → 0.789 and 0.856 answered
    by the quality guard's generation (the other two). The margins asserted are about half the
    smallest of those gains (+0.017, +0.174, +0.140)."""
    client = smol_server.client()
    qs = questions()
    train_file = prompts_file(tmp_path / "brief.jsonl", qs[:48])
    valid_file = prompts_file(tmp_path / "held-out.jsonl", qs[48:80])
    train = client.files.create(file=train_file.open("rb"), purpose="fine-tune")
    valid = client.files.create(file=valid_file.open("rb"), purpose="fine-tune")
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
    assert mean(train_reward[6:]) >= mean(train_reward[:6]) + TRAIN_MARGIN  # each half sees 24 of the prompts
    assert all(m["train_grader_error_rate"] == 0 for m in metrics)
    # The quality guard: the fine-tuned model's answers to the validation prompts ended and varied.
    quality = (done.model_extra or {})["quality"]
    assert quality["verdict"] == "ok", quality
    compared = quality["validation_reward"]  # the job's own comparison on the validation prompts
    print("validation reward, starting model against fine-tuned:", compared)
    assert compared["prompts"] == 32 and compared["fine_tuned"] == valid_reward[-1]
    assert compared["fine_tuned"] >= compared["base"] + COMPARISON_MARGIN

    def grade(model: str) -> list[float]:
        def one(question: str) -> float:
            answer = client.chat.completions.create(
                model=model,
                messages=conversation(question),
                max_tokens=128,
                temperature=0,  # type: ignore[arg-type]
            )
            run = client.fine_tuning.alpha.graders.run(
                grader=GRADER,  # type: ignore[arg-type]
                model_sample=answer.choices[0].message.content or "",
                item={},
            )
            return float(run.reward)

        with ThreadPoolExecutor(8) as pool:  # the server batches them
            return list(pool.map(one, qs[80:128]))

    base, tuned = mean(grade(BASE)), mean(grade(done.fine_tuned_model))
    print(f"held-out reward: base {base:.3f}, fine-tuned {tuned:.3f}")
    assert tuned >= base + HELD_OUT_MARGIN
