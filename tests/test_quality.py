"""The quality guard's judgement (``selftune.eval.quality``) and the overfitting watch
(``selftune.train.watch``), on real text: answers from package data sets, and the failure the
guard exists for, a DPO model that says "Capital:" forever.

The end-to-end proof (real jobs on SmolLM2, through the SDK, the CLI and the dashboard) is in
``test_quality_smol.py``; here are the rules, fast.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import pytest

from selftune.eval.quality import Answer, assess, flaws, profile, repeats
from selftune.train.protocol import TrainConfig
from selftune.train.watch import OVERFIT_PATIENCE, ValidationWatch
from tests.test_train import run_recipe


def mood_answers(mood: str = "happy") -> list[str]:
    text = files("moodswapper").joinpath(f"data/{mood}.jsonl").read_text("utf-8")
    return [json.loads(line)["response"] for line in text.splitlines() if line.strip()]


def test_real_prose_is_never_called_a_loop() -> None:
    moods = ("happy", "depressed", "zen", "drunk", "childish", "bored", "scared", "nostalgic", "exhausted")
    answers = [a for mood in moods for a in mood_answers(mood)]
    assert len(answers) > 4000
    looping = [a for a in answers if repeats(a)]
    assert not looping, looping[:3]


def test_a_loop_is_called_a_loop() -> None:
    assert repeats("Capital: " * 40)
    assert repeats("Capital" * 40)  # a loop without spaces (seen at 100x DPO's learning rate)
    sentence = "The capital of France is Paris, a city on the Seine with many old bridges and museums. "
    assert repeats(sentence * 3)
    assert not repeats(sentence)
    assert not repeats("Capital: Capital: Paris")  # too short to judge


def test_each_flaw_is_named() -> None:
    assert flaws(Answer("Capital: Paris", ended=True)) == []
    assert flaws(Answer("", ended=True)) == ["empty"]
    assert flaws(Answer("Capital: " * 40, ended=False)) == ["unended", "repeats"]


def test_the_guard_flags_the_capital_loop_and_passes_a_healthy_model() -> None:
    prose = mood_answers()[:16]
    base = [Answer(a, ended=True) for a in prose]
    broken = [Answer("Capital: " * 30, ended=False) for _ in prose]
    healthy = [Answer("Capital: " + a.split()[0], ended=True) for a in prose]

    verdict = assess(base, broken, "validation file", best="ft:m:o::x:ckpt-step-10")
    assert verdict.verdict == "degenerated"
    assert "0/16 ended" in verdict.message and "16 looping" in verdict.message
    assert "ft:m:o::x:ckpt-step-10" in verdict.message
    final = assess(base, broken, "validation file", best="ft:m:o::x:ckpt-step-10", suggest_best=False)
    assert "ckpt-step-10" not in final.message and final.best_checkpoint == "ft:m:o::x:ckpt-step-10"
    assert verdict.fine_tuned.collapsed and not verdict.base.collapsed

    assert assess(base, healthy, "validation file").verdict == "ok"


def test_a_rambling_base_does_not_make_a_rambling_model_a_regression() -> None:
    """A small base model rambles too; only a clear excess over it is flagged."""
    prose = mood_answers()[:16]
    base = [Answer(a, ended=i % 2 == 0) for i, a in enumerate(prose)]
    same = [Answer(a, ended=i % 2 == 1) for i, a in enumerate(prose)]
    assert assess(base, same, "training file").verdict == "ok"
    worse = [Answer(a, ended=i < 4) for i, a in enumerate(prose)]
    assert assess(base, worse, "training file").verdict == "degenerated"


def test_one_answer_to_every_prompt_is_a_collapse() -> None:
    prose = mood_answers()[:8]
    same = [Answer("I am happy to help!", ended=True) for _ in prose]
    assert profile(same).collapsed
    assert assess([Answer(a, True) for a in prose], same, "training file").verdict == "degenerated"


@pytest.fixture
def cfg() -> TrainConfig:
    return TrainConfig(base_model_dir="b", train_file="t", output_dir="o", model_name="ft:m:o::x")


def test_rising_validation_loss_warns_once_and_names_the_best_checkpoint(cfg: TrainConfig) -> None:
    watch = ValidationWatch()
    assert watch.add(10, 0.288, cfg) is None
    assert watch.add(20, 0.40, cfg) is None  # one rise is noise
    warning = watch.add(30, 0.551, cfg)
    assert warning is not None and warning.level == "warn"
    assert f"risen for {OVERFIT_PATIENCE} evaluations" in warning.message
    assert "ft:m:o::x:ckpt-step-10" in warning.message and "0.288" in warning.message
    assert watch.add(40, 0.6, cfg) is None  # said once
    assert watch.best_checkpoint(cfg) == "ft:m:o::x:ckpt-step-10"
    # The state survives a pause.
    again = ValidationWatch.from_state(json.loads(json.dumps(watch.to_state())))
    assert again == watch


def test_pruning_keeps_the_newest_and_the_best(cfg: TrainConfig) -> None:
    watch = ValidationWatch([(10, 0.2), (20, 0.3), (30, 0.4), (40, 0.5)])
    kept = [f"ck/step-{s}" for s in (10, 20, 30, 40)]
    assert watch.prune(kept, 3, lambda s: f"ck/step-{s}") == []
    assert watch.prune(kept, 2, lambda s: f"ck/step-{s}") == ["ck/step-20"]
    assert watch.prune(kept, 1, lambda s: f"ck/step-{s}") == ["ck/step-20", "ck/step-30"]
    assert ValidationWatch().prune(kept, 3, lambda s: f"ck/step-{s}") == ["ck/step-10"]
    assert ValidationWatch().best_checkpoint(cfg) is None  # no validation file, no best


def test_a_job_that_overfits_says_so_and_keeps_its_best_checkpoint(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The recipe trains "question k" -> "answer k" at a high rate while its validation file expects
    "other k" to the same questions. At each checkpoint it keeps the last 3 and the best by full
    validation loss, marks the best so far, warns (once) when the loss has risen twice in a row,
    and names the best checkpoint in the job's quality when it is not the final model."""
    other = tmp_path / "other.jsonl"
    other.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"question {k}"},
                        {"role": "assistant", "content": f"other {k}"},
                    ]
                }
            )
            + "\n"
            for k in range(4)
        )
    )
    out, events = run_recipe(
        tmp_path,
        tiny_model_dir,
        "overfit",
        valid_file=str(other),
        model_name="ft:t:o::x",
        learning_rate_multiplier=100.0,
    )
    history = [
        (e["data"]["step"], e["data"]["metrics"]["full_valid_loss"]) for e in events if e["type"] == "checkpoint"
    ]
    # Which checkpoints rose twice in a row depends on a random-init model's last digits, so the test
    # derives what the recipe must have said from the losses it reported, and checks that.
    rises = [k for k in range(2, len(history)) if history[k - 2][1] < history[k - 1][1] < history[k][1]]
    warnings = [e for e in events if e["message"].startswith("Validation loss has risen for 2 evaluations")]
    assert len(warnings) == (1 if rises else 0), history
    if rises:
        best_then = min(history[: rises[0] + 1], key=lambda h: h[1])[0]
        assert f"ft:t:o::x:ckpt-step-{best_then}" in warnings[0]["message"] and warnings[0]["level"] == "warn"
        assert warnings[0]["data"] == {"overfitting": True, "best_step": best_then}
    best = min(history, key=lambda h: h[1])[0]
    kept = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").iterdir())
    assert kept == sorted({best, *(s for s, _ in history[-3:])})  # the last 3, and the best one
    marked = [
        e["data"]["step"] for e in events if e["type"] == "checkpoint" and "lowest validation loss" in e["message"]
    ]
    assert marked[-1] == best
    quality = next(e for e in events if e["type"] == "done")["data"]["quality"]
    assert quality["best_checkpoint"] == f"ft:t:o::x:ckpt-step-{best}"
