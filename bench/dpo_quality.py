"""DPO that learns a form and keeps the content: selftune's DPO before and after its defaults
changed, against TRL's ``DPOTrainer`` with TRL's defaults and with selftune's settings.

    python -m bench.dpo_quality [--work DIR]     (also part of ``make bench``)

The pairs differ only in form, as in the report that started this (issue 29): for a country from
the ``countryinfo`` package, "What is the capital of X?" answered ``Capital: Y`` (preferred) or
``The capital of X is Y.`` (not preferred). 120 countries train; every other country is held out.
Each model answers the held-out questions greedily (48 tokens), and one function scores them:

- **form learned**: the answer starts with ``Capital:``;
- **content right**: the capital's name is in the answer (case and accents folded);
- **answers ended**: the model ended its turn within the 48 tokens.

The test ``test_quality_smol.py`` uses the same pairs and the same scoring through the API.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import met, peer_run, recipe_run

N_TRAIN = 120
MAX_TOKENS = 48
FORM = "Capital:"


def countries() -> list[tuple[str, str]]:
    """(country, capital) from ``countryinfo``'s data files (MIT; installed ``--no-deps`` by
    ``make install``, never imported), in file order."""
    spec = importlib.util.find_spec("countryinfo")
    assert spec is not None and spec.submodule_search_locations, "countryinfo is installed by make install"
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    out = []
    for path in sorted(data.glob("*.json")):
        entry = json.loads(path.read_text("utf-8"))
        if isinstance(entry.get("name"), str) and isinstance(entry.get("capital"), str) and entry["capital"].strip():
            out.append((entry["name"], entry["capital"].strip()))
    return out


@dataclass(frozen=True)
class Question:
    country: str
    capital: str

    @property
    def prompt(self) -> str:
        return f"What is the capital of {self.country}?"

    def pair(self) -> dict[str, Any]:
        """The preference line: the same content, two forms."""
        return {
            "input": {"messages": [{"role": "user", "content": self.prompt}]},
            "preferred_output": [{"role": "assistant", "content": f"{FORM} {self.capital}"}],
            "non_preferred_output": [
                {"role": "assistant", "content": f"The capital of {self.country} is {self.capital}."}
            ],
        }


def split(seed: int = 0) -> tuple[list[Question], list[Question]]:
    """120 training questions and the held-out rest, shuffled by ``seed``."""
    qs = [Question(country, capital) for country, capital in countries()]
    random.Random(seed).shuffle(qs)
    return qs[:N_TRAIN], qs[N_TRAIN:]


def write_pairs(path: Path, questions: Sequence[Question]) -> Path:
    path.write_text("".join(json.dumps(q.pair()) + "\n" for q in questions), encoding="utf-8")
    return path


def fold(text: str) -> str:
    """Lower case without accents or punctuation, for "is the capital in the answer"."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return " ".join("".join(c if c.isalnum() else " " for c in plain).split())


@dataclass(frozen=True)
class Scores:
    answers: int
    form: float
    content: float
    ended: float

    def row(self) -> str:
        return f"{self.form:.0%} | {self.content:.0%} | {self.ended:.0%}"


def score(held: Sequence[Question], answers: Sequence[tuple[str, bool]]) -> Scores:
    """``answers``: (text, ended) per held-out question, in order."""
    n = max(1, len(held))
    return Scores(
        answers=len(held),
        form=sum(text.strip().startswith(FORM) for text, _ in answers) / n,
        content=sum(fold(q.capital) in fold(text) for q, (text, _) in zip(held, answers, strict=True)) / n,
        ended=sum(ended for _, ended in answers) / n,
    )


# --- make bench: every variant trained and scored on this machine ----------------------------------


def answer_all(
    base_dir: Path, adapter: str | None, held: Sequence[Question], max_tokens: int = MAX_TOKENS
) -> list[tuple[str, bool]]:
    """Greedy answers of the base (``adapter`` None) or base + adapter, generated as the recipe's guard does."""
    return answer_conversations(base_dir, adapter, [[{"role": "user", "content": q.prompt}] for q in held], max_tokens)


def answer_conversations(
    base_dir: Path, adapter: str | None, conversations: Sequence[list[dict[str, str]]], max_tokens: int = MAX_TOKENS
) -> list[tuple[str, bool]]:
    """``answer_all`` for conversations (a system message, say): (text, ended) of each, in order."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selftune.train import memory
    from selftune.train.checks import Answers

    bf16 = memory.bf16_supported("cpu")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16 if bf16 else torch.float32)
    if adapter:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()

    def autocast() -> Any:
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    # The quality guard's own answerer: the same generation, cut at the same stop tokens.
    answers = Answers(model, tokenizer, torch.device("cpu"), autocast, [max_tokens] * len(conversations), adapter=True)
    answers(list(conversations), lambda: None)
    return [(a.text, a.ended) for a in answers.answers]


def selftune_run(base_dir: Path, train: Path, out: Path, requested: dict[str, Any], seed: int) -> dict[str, Any]:
    """The recipe itself (``python -m selftune.train.lora``) on a job.json, as a worker runs it."""
    from selftune.methods import Hyperparameters, MethodType
    from selftune.train.protocol import Done

    hp = Hyperparameters.resolve(requested, N_TRAIN, MethodType.DPO)
    cfg, events = recipe_run(base_dir, train, out, method=MethodType.DPO, hyperparameters=hp, seed=seed)
    done = next(e for e in events if isinstance(e, Done))
    return {
        "seconds": done.loop_seconds,  # the training loop, as TRL's trainer.train() is timed
        "adapter": str(cfg.job_dir.adapter),
        "settings": hp.to_dict() | {"learning_rate": hp.learning_rate},
        "quality": done.quality,
    }


def trl_run(
    base_dir: Path, train: Path, out: Path, variant: str, settings: dict[str, Any], seed: int
) -> dict[str, Any]:
    return peer_run("bench.trl_dpo", base_dir, train, out, seed, variant=variant, settings=settings)


def run(work: Path, base_dir: Path, seed: int = 1) -> dict[str, Any]:
    """Train every variant on the same pairs and score each on the same held-out questions."""
    from bench.measure import log

    work.mkdir(parents=True, exist_ok=True)
    train_q, held = split()
    train = write_pairs(work / "capitals.jsonl", train_q)
    r: dict[str, Any] = {"train": len(train_q), "held": len(held), "max_tokens": MAX_TOKENS, "variants": {}}

    def record(name: str, info: dict[str, Any]) -> None:
        scores = score(held, answer_all(base_dir, info.get("adapter"), held))
        r["variants"][name] = {**info, "scores": asdict(scores)}
        log(f"  {name}: form | content | ended = {scores.row()}")

    log("DPO quality: the base model")
    record("base model", {})
    log("DPO quality: selftune before (learning rate 5e-4, no anchor)")
    record(
        "selftune, previous defaults",
        selftune_run(base_dir, train, work / "before", {"learning_rate_multiplier": 0.5, "rpo_alpha": 0}, seed),
    )
    log("DPO quality: selftune with its defaults")
    now = selftune_run(base_dir, train, work / "now", {}, seed)
    record("selftune defaults", now)
    s = now["settings"]
    mine = {
        "learning_rate": s["learning_rate"],
        "epochs": s["n_epochs"],
        "batch_size": s["batch_size"],
        "beta": s["beta"],
        "rpo_alpha": s["rpo_alpha"],
    }
    log("DPO quality: TRL DPOTrainer with its defaults")
    record("TRL defaults", trl_run(base_dir, train, work / "trl-defaults", "defaults", {}, seed))
    log("DPO quality: TRL DPOTrainer with selftune's settings")
    record("TRL, selftune's settings", trl_run(base_dir, train, work / "trl-selftune", "selftune", mine, seed))
    return r


def rows(r: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The headline's targets (issue 29's) and the section's table, for ``BENCHMARKS.md``."""
    v = r["variants"]
    base, now = v["base model"]["scores"], v["selftune defaults"]["scores"]

    targets = [
        f"| DPO defaults learn a form: ≥ 90% of held-out answers | **{now['form']:.0%}** | {met(now['form'] >= 0.9)} |",
        f"| DPO defaults keep the content: ≥ the base's {base['content']:.0%} | **{now['content']:.0%}** | "
        f"{met(now['content'] >= base['content'])} |",
        f"| DPO defaults end their answers: ≥ 90% | **{now['ended']:.0%}** | {met(now['ended'] >= 0.9)} |",
    ]
    table = [
        f'{r["train"]} pairs that differ only in form (`countryinfo`: "What is the capital of X?" answered '
        f"`{FORM} Y`, preferred, or `The capital of X is Y.`), scored on {r['held']} held-out countries, greedy, "
        f"{r['max_tokens']} tokens (`python -m bench.dpo_quality`). Form: the answer starts with `{FORM}`; content: "
        "it names the capital; ended: the model ended its turn. TRL's `DPOTrainer` trains the same LoRA on the "
        "same pairs, with `DPOConfig`'s defaults and with selftune's settings (its anchor as "
        '`loss_type=["sigmoid", "sft"]`).',
        "",
        "| model | settings | form | content | ended | quality guard | training loop seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, x in v.items():
        st = x.get("settings") or {}
        settings = ", ".join(f"{k} {val}" for k, val in st.items() if k not in ("trl",)) if st else ""
        guard = (x.get("quality") or {}).get("verdict", "")
        seconds = f"{x['seconds']:.0f}" if "seconds" in x else ""
        table.append(f"| {name} | {settings} | {Scores(**x['scores']).row()} | {guard} | {seconds} |")
    return targets, table


def main() -> None:
    from bench.measure import REPO, base_model_dir

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--work", type=Path, default=REPO / ".bench" / "dpo")
    args = p.parse_args()
    print(json.dumps(run(args.work, base_model_dir(args.work)), indent=2, default=str))


if __name__ == "__main__":
    main()
