"""One job on two processes against one: speed on SmolLM2, loss equality on the test model.

    python -m bench.distributed [--work DIR]     (also part of ``make bench``)

- **speed**: the same SmolLM2 job (the bench's first 64 moodswapper examples, batch size 8, one
  epoch, bf16 where the CPU has it) run by the recipe directly, on 1 process of 2 threads and on 2
  processes of 1 thread (torchrun, gloo), alternating, fastest of each; tokens/s of the training loop
  (model loading excluded).
- **equality**: the tiny random-init test model in fp32 on 1 and 2 processes: the largest
  difference of any step's training loss.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from bench import met
from selftune.methods import Hyperparameters
from selftune.train.protocol import Done, Launch, Metrics, TrainConfig, read_events, recipe_command, save_config

ROUNDS = 2
EXAMPLES = 64


def train(cfg: TrainConfig, nproc: int, threads: int) -> list[Any]:
    """Run the recipe on ``nproc`` processes of ``threads`` threads each; its events."""
    out = Path(cfg.output_dir)
    subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with (out.parent / f"{out.name}.log").open("wb") as log:
        rc = subprocess.run(
            recipe_command(save_config(cfg), cfg.method, Launch(nproc)), stdout=log, stderr=subprocess.STDOUT, env=env
        ).returncode
    if rc != 0:
        raise RuntimeError(f"training on {nproc} process(es) exited with {rc}: see {out.parent / out.name}.log")
    return read_events(cfg.job_dir.events)


def run(work: Path, base_dir: Path, train_file: Path) -> dict[str, Any]:
    from bench.measure import log
    from selftune.live import build_tiny_model

    work.mkdir(parents=True, exist_ok=True)
    subset = work / "train.jsonl"
    subset.write_text("".join(train_file.read_text().splitlines(keepends=True)[:EXAMPLES]))
    hp = Hyperparameters(n_epochs=1, batch_size=8, learning_rate_multiplier=1.0)
    r: dict[str, Any] = {"cores": os.cpu_count(), "examples": EXAMPLES, "runs": {"1x2": [], "2x1": []}}
    for i in range(ROUNDS):
        for shape, nproc, threads in (("1x2", 1, 2), ("2x1", 2, 1)):
            cfg = TrainConfig(
                base_model_dir=str(base_dir),
                train_file=str(subset),
                output_dir=str(work / f"smol-{shape}-{i}"),
                hyperparameters=hp,
                quality_prompts=0,
            )
            done = next(e for e in train(cfg, nproc, threads) if isinstance(e, Done))
            r["runs"][shape].append(done.loop_tokens / done.loop_seconds)
            log(f"  {shape}: {r['runs'][shape][-1]:.0f} tokens/s")
    r["speed"] = {shape: max(runs) for shape, runs in r["runs"].items()}

    tiny = work / "tiny"
    if not tiny.exists():
        build_tiny_model(tiny)
    losses = []
    for nproc in (1, 2):
        cfg = TrainConfig(
            base_model_dir=str(tiny),
            train_file=str(subset),
            output_dir=str(work / f"tiny-{nproc}"),
            hyperparameters=Hyperparameters(n_epochs=2, batch_size=4, learning_rate_multiplier=10.0),
            precision="fp32",
            quality_prompts=0,
        )
        losses.append([e.train_loss for e in train(cfg, nproc, 1) if isinstance(e, Metrics)])
    r["steps"] = len(losses[0])
    r["max_loss_difference"] = max(abs(a - b) for a, b in zip(*losses, strict=True))
    return r


def rows(r: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The headline's targets (issue 31's) and the section's table, for ``BENCHMARKS.md``."""
    ratio = r["speed"]["2x1"] / r["speed"]["1x2"]
    diff = r["max_loss_difference"]
    targets = [
        f"| 2 processes × 1 thread against 1 process × 2 threads, same job (a ratio to report: {r['cores']} cores "
        f"are shared either way) | **{ratio:.2f}×** | reported |",
        f"| identical losses (fp32) on 1 and 2 processes, test model, {r['steps']} steps | "
        f"**{diff:.1e}** max difference | {met(diff <= 1e-4)} |",
    ]
    table = [
        f"The recipe on {r['examples']} moodswapper examples of SmolLM2 (batch size 8, one epoch), on this "
        f"{r['cores']}-core CPU, fastest of {ROUNDS} runs each (`python -m bench.distributed`). The two processes "
        "run torchrun with gloo, data parallel: each does half of every batch on one thread, then they sum the "
        "adapter's gradients.",
        "",
        "| processes × threads | tokens/s |",
        "|---|---|",
        *(f"| {shape.replace('x', ' × ')} | {speed:.0f} |" for shape, speed in r["speed"].items()),
    ]
    return targets, table


def main() -> None:
    from bench.measure import REPO, base_model_dir, make_data

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--work", type=Path, default=REPO / ".bench" / "distributed")
    args = p.parse_args()
    r = run(args.work, base_model_dir(args.work), make_data(args.work)["train"])
    print(json.dumps(r, indent=2, default=str))
    targets, table = rows(r)
    print("\n".join([*targets, "", *table]))


if __name__ == "__main__":
    main()
