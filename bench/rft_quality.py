"""Reinforcement fine-tuning side by side: selftune's GRPO (``method: reinforcement``) against TRL's
``GRPOTrainer``, on the same model, prompts, grader, group size and steps.

    python -m bench.rft_quality [--work DIR] [--prompts N]     (also part of ``make bench``)

The task: answer briefly, as asked. The prompts are the ``moodswapper`` package's open questions
("What is the difference between a latte and a flat white?"), each after the system message
"Answer in one sentence of at most 15 words."; a ``python`` grader gives 1 to an answer of 3 to
15 words, 15/words to a longer one, 0 to one under 3. The base model half follows the instruction
(greedy, about 0.65; at temperature 1 the answers to one prompt differ in length, so every group
has something to learn from): a task a user checks but cannot write the answers for, which RFT
teaches. (Until 2026-12-07 the bench asked for capitals with a ``fuzzy_match`` grader; SmolLM2-135M
knows too few capitals for any trainer to gain much there: ``tests/test_rft_smol.py`` keeps it.)

``N`` training prompts (48 by default), one epoch, selftune's defaults for a reinforcement job: 4
prompts a step, 4 answers each, up to 128 tokens (``reasoning_effort: low``), a LoRA rate of 2e-4,
the KL anchor at 0.04. TRL gets the same settings (``bench.trl_grpo``) and the grader as its reward
function.

selftune's job is evaluated once, at its last step (a larger ``eval_interval`` than the default, since
TRL evaluates nothing); its 32 validation prompts are held out from training. Then one function
answers 48 other held-out prompts greedily (128 tokens) with the base and both adapters and grades
the answers with the same grader:

- **held-out reward**: the mean reward, against the base's;
- **reward gained per minute**: (held-out reward - the base's) / the training loop's minutes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
from collections.abc import Sequence
from pathlib import Path
from statistics import mean
from typing import Any

from bench import met, peer_run, recipe_run
from bench.dpo_quality import answer_conversations

INSTRUCTION = "Answer in one sentence of at most 15 words."
GRADER = {
    "type": "python",
    "name": "brief",
    "source": "def grade(sample, item):\n"
    "    words = len(sample['output_text'].split())\n"
    "    if words < 3:\n"
    "        return 0.0\n"
    "    return 1.0 if words <= 15 else 15 / words\n",
}
N_VALID = 32
N_HELD = 48
SEED = 7
REQUESTED = {"n_epochs": 1, "reasoning_effort": "low", "eval_samples": N_VALID}
GAIN_TARGET = 0.15
SPEED_TARGET = 2.0


def questions(seed: int = 1) -> list[str]:
    """``moodswapper``'s open questions (its ``generation`` prompts: MIT; installed ``--no-deps`` by
    ``make install``, never imported), shuffled by ``seed``."""
    spec = importlib.util.find_spec("moodswapper")
    assert spec is not None and spec.submodule_search_locations, "moodswapper is installed by make install"
    data = Path(next(iter(spec.submodule_search_locations))) / "data" / "prompts.json"
    prompts = [q["prompt"] for q in json.loads(data.read_text("utf-8"))["generation"]]
    random.Random(seed).shuffle(prompts)
    return prompts


def conversation(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": question}]


def prompts_file(path: Path, qs: Sequence[str]) -> Path:
    """A prompts file: each question after the instruction (the grader reads only the answer)."""
    path.write_text("".join(json.dumps({"messages": conversation(q)}) + "\n" for q in qs), encoding="utf-8")
    return path


def held_out(base_dir: Path, adapter: str | None, held: Sequence[str], tokens: int) -> dict[str, float]:
    """Greedy answers (the quality guard's answerer) graded by ``GRADER``, as selftune grades."""
    from bench.trl_grpo import grader_reward

    answers = answer_conversations(base_dir, adapter, [conversation(q) for q in held], tokens)
    rewards = grader_reward(GRADER, [])([a for a, _ in answers])
    return {
        "reward": mean(rewards),
        "ended": mean(float(e) for _, e in answers),
        "words": mean(len(a.split()) for a, _ in answers),
    }


def selftune_run(base_dir: Path, train: Path, valid: Path, out: Path, hp: Any) -> dict[str, Any]:
    """The recipe itself (``python -m selftune.train.lora``) on a job.json, as a worker runs it."""
    from bench.measure import _default_gguf
    from selftune.methods import MethodType
    from selftune.train.protocol import Done, Metrics

    cfg, events = recipe_run(
        base_dir,
        train,
        out,
        valid_file=str(valid),
        method=MethodType.REINFORCEMENT,
        hyperparameters=hp,
        seed=SEED,
        grader=GRADER,
        sampling_gguf=str(_default_gguf()),  # as a worker on a CPU sets it: llama.cpp samples the answers
    )
    done = next(e for e in events if isinstance(e, Done))
    metrics = [e for e in events if isinstance(e, Metrics)]
    return {
        "seconds": done.loop_seconds,  # the training loop, as TRL's trainer.train() is timed
        "adapter": str(cfg.job_dir.adapter),
        "train_reward": [m.train_reward_mean for m in metrics],
        "step_seconds": {
            part: sum(getattr(m, f"train_{part}_seconds") or 0.0 for m in metrics)
            for part in ("sampling", "grading", "training")
        },
        "quality": done.quality,
    }


def hyperparameters(n_train: int) -> Any:
    """selftune's resolved settings for the run (which TRL gets too), evaluated once, at the last step."""
    from dataclasses import replace

    from selftune.methods import Hyperparameters, MethodType

    hp = Hyperparameters.resolve(REQUESTED, n_train, MethodType.REINFORCEMENT)
    return replace(hp, eval_interval=-(-n_train // hp.batch_size) * hp.n_epochs)


def trl_run(base_dir: Path, train: Path, out: Path, hp: Any) -> dict[str, Any]:
    from selftune.methods import RFT_KL_BETA, answer_tokens, group_size

    settings = {
        "learning_rate": hp.learning_rate,
        "epochs": hp.n_epochs,
        "batch_size": hp.batch_size,
        "group": group_size(hp.compute_multiplier),
        "answer_tokens": answer_tokens(hp.reasoning_effort),
        "beta": RFT_KL_BETA,
    }
    return peer_run("bench.trl_grpo", base_dir, train, out, SEED, grader=GRADER, settings=settings)


def run(work: Path, base_dir: Path, n_train: int = 48) -> dict[str, Any]:
    """Both trainers on the same prompts; the base and both adapters graded on the same held-out questions."""
    from bench.measure import log
    from selftune.methods import answer_tokens

    work.mkdir(parents=True, exist_ok=True)
    qs = questions()
    train = prompts_file(work / "brief.jsonl", qs[:n_train])
    valid = prompts_file(work / "validation.jsonl", qs[n_train : n_train + N_VALID])
    held = qs[n_train + N_VALID : n_train + N_VALID + N_HELD]
    hp = hyperparameters(n_train)
    tokens = answer_tokens(hp.reasoning_effort)
    r: dict[str, Any] = {"train": n_train, "held": len(held), "tokens": tokens, "variants": {}}
    log("RFT: the base model on the held-out questions")
    r["variants"]["base model"] = {"held_out": held_out(base_dir, None, held, tokens)}
    for name, go in (
        ("selftune", lambda: selftune_run(base_dir, train, valid, work / "selftune", hp)),
        ("TRL GRPOTrainer", lambda: trl_run(base_dir, train, work / "trl", hp)),
    ):
        log(f"RFT: {name}")
        info = go()
        info["held_out"] = held_out(base_dir, info["adapter"], held, tokens)
        r["variants"][name] = info
        log(f"  held-out reward {info['held_out']['reward']:.3f} after {info['seconds']:.0f} s")
    return r


def rows(r: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The headline's targets (issue 33's) and the section's table, for ``BENCHMARKS.md``."""
    v = r["variants"]
    base = v["base model"]["held_out"]["reward"]
    ours, trl = v["selftune"], v["TRL GRPOTrainer"]
    gain = {name: v[name]["held_out"]["reward"] - base for name in ("selftune", "TRL GRPOTrainer")}
    per_minute = {name: gain[name] / (v[name]["seconds"] / 60) for name in gain}
    no_worse = ours["held_out"]["reward"] >= trl["held_out"]["reward"]
    if per_minute["TRL GRPOTrainer"] > 0:
        ratio = per_minute["selftune"] / per_minute["TRL GRPOTrainer"]
        speed, verdict = f"**{ratio:.2f}×**", met(ratio >= SPEED_TARGET and no_worse)
    else:  # TRL gained nothing: no ratio to state
        speed = f"**{per_minute['selftune']:+.4f}/min** (TRL gained {gain['TRL GRPOTrainer']:+.3f})"
        verdict = "not comparable"
    targets = [
        f"| RFT: held-out reward ≥ base + {GAIN_TARGET} | **{gain['selftune']:+.3f}** | "
        f"{met(gain['selftune'] >= GAIN_TARGET)} |",
        f"| RFT: reward gained per minute ≥ {SPEED_TARGET:g}× TRL GRPOTrainer, held-out reward no worse | "
        f"{speed} | {verdict} |",
    ]
    table = [
        f'{r["train"]} open questions (`moodswapper`) after the system message "{INSTRUCTION}", one epoch, '
        f"4 prompts a step, 4 answers each of up to {r['tokens']} tokens at temperature 1, a LoRA rate of 2e-4, "
        "KL weight 0.04, graded by a `python` grader: 1 for 3 to 15 words, 15/words above "
        "(`python -m bench.rft_quality`). TRL's `GRPOTrainer` with the same settings "
        '(`loss_type="grpo"`) and the grader as its reward function. '
        f"Held-out: {r['held']} other questions, greedy, graded the same way.",
        "",
        "| model | held-out reward | gained | ended | words | training loop seconds | gained per minute | "
        "training reward, first four steps → last four |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, x in v.items():
        h = x["held_out"]
        if name == "base model":
            table.append(f"| {name} | {h['reward']:.3f} | | {h['ended']:.0%} | {h['words']:.1f} | | | |")
            continue
        rewards = x["train_reward"]
        curve = f"{mean(rewards[:4]):.3f} → {mean(rewards[-4:]):.3f}" if rewards else ""
        table.append(
            f"| {name} | {h['reward']:.3f} | {gain[name]:+.3f} | {h['ended']:.0%} | {h['words']:.1f} | "
            f"{x['seconds']:.0f} | {per_minute[name]:+.4f} | {curve} |"
        )
    parts = ours.get("step_seconds") or {}
    if parts:
        table += [
            "",
            "selftune's steps, summed: "
            + ", ".join(f"{part} {seconds:.0f} s" for part, seconds in parts.items())
            + " (the rest of the loop: its one evaluation and checkpoint).",
        ]
    return targets, table


def main() -> None:
    from bench.measure import REPO, base_model_dir

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--work", type=Path, default=REPO / ".bench" / "rft")
    p.add_argument("--prompts", type=int, default=48)
    args = p.parse_args()
    r = run(args.work, base_model_dir(args.work), args.prompts)
    (args.work / "results.json").write_text(json.dumps(r, indent=2, default=str))
    targets, table = rows(r)
    print("\n".join([*targets, "", *table]))


if __name__ == "__main__":
    main()
