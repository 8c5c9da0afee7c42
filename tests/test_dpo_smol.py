"""End to end on SmolLM2: a DPO job on real preference pairs makes the model prefer what was preferred.

The pairs come from ``moodswapper`` (installed by ``make install``): the same prompt answered in its
"happy" mood (preferred) and its "depressed" mood (not preferred). A DPO job trains on some prompts
with others held out as the validation file. Then, through the SDK:

- the held-out reward accuracy (the job's full validation pass) is well above chance (50%);
- held-out prompts go to the base and the fine-tuned model, and a mood classifier scores each
  answer: logistic regression on MiniLM embeddings (``selftune.eval.embed``), fitted on the
  package's happy and depressed answers to prompts used neither for training nor here. The
  fine-tuned model's answers are classed happy more often, with a higher mean probability.

``pytest -s`` prints the numbers (the README and the closing note quote them).
"""

from __future__ import annotations

import importlib.util
import json
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import mean
from typing import Any

import pytest
import torch

from selftune.eval.core import Example, preference_margins
from selftune.eval.embed import Embedder, load_embedder
from tests.conftest import LiveServer

pytestmark = pytest.mark.slow

BASE = "SmolLM2-135M-Instruct"
N_TRAIN, N_HELD = 48, 12


def moods(mood: str) -> dict[str, str]:
    """prompt -> the package's answer in ``mood`` (refusals left out)."""
    spec = importlib.util.find_spec("moodswapper")
    assert spec is not None and spec.submodule_search_locations, "moodswapper is installed by make install"
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    rows = [json.loads(line) for line in (data / f"{mood}.jsonl").read_text("utf-8").splitlines() if line.strip()]
    return {r["prompt"]: r["response"] for r in rows if r.get("kind") == "mood"}


def mood_pairs() -> list[dict[str, Any]]:
    happy, sad = moods("happy"), moods("depressed")
    prompts = sorted(set(happy) & set(sad))
    random.Random(0).shuffle(prompts)
    return [
        {
            "input": {"messages": [{"role": "user", "content": p}]},
            "preferred_output": [{"role": "assistant", "content": happy[p]}],
            "non_preferred_output": [{"role": "assistant", "content": sad[p]}],
        }
        for p in prompts[: N_TRAIN + N_HELD]
    ]


def mood_classifier(embedder: Embedder, used: set[str]) -> Callable[[list[str]], list[float]]:
    """P(happy) of a text: logistic regression (L-BFGS, a little L2) on the embeddings of the
    package's happy and depressed answers to the prompts not in ``used``."""
    happy, sad = moods("happy"), moods("depressed")
    positive = embedder.embed([a for p, a in happy.items() if p not in used])
    negative = embedder.embed([a for p, a in sad.items() if p not in used])
    x = torch.cat([positive, negative])
    y = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))])
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + 1e-3 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    fitted = float(((x @ w + b > 0).float() == y).float().mean())
    assert fitted > 0.85, f"the mood classifier fits its own data only {fitted:.0%}"
    return lambda texts: [float(v) for v in torch.sigmoid(embedder.embed(texts) @ w + b).detach()]


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_dpo_on_mood_pairs_moves_answers_toward_the_preferred_style(smol_server: LiveServer, tmp_path: Path) -> None:
    client = smol_server.client(timeout=600)
    pairs = mood_pairs()
    train, held = pairs[:N_TRAIN], pairs[N_TRAIN:]
    train_file = client.files.create(file=write(tmp_path / "moods.jsonl", train).open("rb"), purpose="fine-tune")
    held_file = client.files.create(file=write(tmp_path / "held.jsonl", held).open("rb"), purpose="fine-tune")
    t0 = time.monotonic()
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=train_file.id,
        validation_file=held_file.id,
        suffix="happy",
        seed=1,
        method={
            "type": "dpo",
            "dpo": {"hyperparameters": {"beta": 0.1, "n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 1}},
        },
    )
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(1)
        job = client.fine_tuning.jobs.retrieve(job.id)
    seconds = time.monotonic() - t0
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model is not None
    assert (job.model_extra or {})["quality"]["verdict"] == "ok"  # the guard passes a healthy model

    # Held-out reward accuracy: the share of held-out pairs whose preferred answer the model now rates
    # higher, relative to the reference (the base). At the first step it is 0 (all rewards are 0).
    ckpt = client.fine_tuning.jobs.checkpoints.list(job.id).data[0]
    metrics = ckpt.metrics.model_dump()
    held_accuracy, held_margin = metrics["full_valid_reward_accuracy"], metrics["full_valid_reward_margin"]
    assert held_accuracy >= 0.8 and held_margin > 0, metrics

    # The style shift, through the SDK: the same held-out prompts to both models, greedy.
    def ask(model: str, row: dict[str, Any]) -> str:
        r = client.chat.completions.create(model=model, messages=row["input"]["messages"], max_tokens=80, temperature=0)
        return r.choices[0].message.content or ""

    with ThreadPoolExecutor(8) as pool:
        base = list(pool.map(lambda row: ask(BASE, row), held))
        tuned = list(pool.map(lambda row: ask(job.fine_tuned_model, row), held))  # type: ignore[arg-type]
    embedder, why = load_embedder()
    assert embedder is not None, why
    examples = [
        Example(
            i,
            row["input"]["messages"],
            row["preferred_output"][0]["content"],
            row["non_preferred_output"][0]["content"],
        )
        for i, row in enumerate(held)
    ]
    before, after = preference_margins(embedder, base, examples), preference_margins(embedder, tuned, examples)
    happy = mood_classifier(embedder, {row["input"]["messages"][0]["content"] for row in pairs})
    p_base, p_tuned = happy(base), happy(tuned)
    n = len(held)
    print(
        f"\nDPO on {N_TRAIN} mood pairs: {seconds:.0f} s from create to succeeded; held-out reward accuracy "
        f"{held_accuracy:.0%} (margin {held_margin:.2f}) on {n} pairs\n"
        f"mood classifier, P(happy) on {n} held-out prompts: base {mean(p_base):.2f} -> fine-tuned "
        f"{mean(p_tuned):.2f}; classed happy {sum(p > 0.5 for p in p_base)}/{n} -> {sum(p > 0.5 for p in p_tuned)}/{n}"
        f"; higher for the fine-tuned answer on {sum(t > b for t, b in zip(p_tuned, p_base, strict=True))}/{n}\n"
        f"embedding margin (preferred minus non-preferred answers): {mean(before):.3f} -> {mean(after):.3f}"
    )
    for b, t in list(zip(base, tuned, strict=True))[:3]:
        print(f"  base:  {b[:110]!r}\n  tuned: {t[:110]!r}")
    assert mean(p_tuned) > mean(p_base) + 0.05
    assert sum(p > 0.5 for p in p_tuned) > sum(p > 0.5 for p in p_base)

    # The job's own evaluation compared base and fine-tuned on the held-out inputs the same way.
    report = json.loads(client.files.content(job.result_files[2]).text)
    assert report["primary"] == "prefers" and report["models"] == [BASE, job.fine_tuned_model]
    stats = report["stats"]
    assert stats[job.fine_tuned_model]["preference_margin"]["mean"] > stats[BASE]["preference_margin"]["mean"]
