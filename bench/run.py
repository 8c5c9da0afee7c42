"""``make bench``: selftune against its peers, side by side, in one run; writes ``BENCHMARKS.md``.

    python -m bench.run [--out BENCHMARKS.md] [--quick]

Everything runs on this machine in one go, on the same model (SmolLM2-135M-Instruct), the same data
(200 ``happy`` examples from ``moodswapper`` plus 50 held out), the same LoRA (r=16, alpha=32, all
linear layers), the same sequence limit, batch size, epochs and learning rate:

1. training: a selftune job through the API (as users run it) against TRL ``SFTTrainer`` with its
   default ``SFTConfig`` and TRL tuned for the CPU, each in its own process;
2. the roofline: this machine's peak matmul rate, and the 4*N FLOPs per trained token of LoRA;
3. quality: final training loss, and held-out loss of every adapter measured by one function;
4. serving: time to first token and decode rate of llama.cpp alone (``xllamacpp`` on the same GGUF)
   against our server on the llama.cpp and the PyTorch engines (base and fine-tuned), and a plain
   transformers loop; 8 concurrent clients on the base, one adapter and mixed adapters; chat latency
   idle and while a job trains, with the training process at idle priority and at normal priority;
5. memory: peak RSS of training and serving;
6. scaling: job wall time at 50, 200 and 800 examples.
7. a hostile client (``bench.hostile``): a 300 MB body without a key, chat latency while a 100 MB
   batch is validated and answered, and schema-driven fuzzing of every route (``bench.fuzz``);
8. DPO quality (``bench.dpo_quality``): form learned, content kept and answers ended on form-only
   pairs, selftune's DPO defaults (before and now) against TRL ``DPOTrainer`` (its defaults, and
   selftune's settings).
9. reinforcement fine-tuning (``bench.rft_quality``): held-out reward on a grader and reward gained
   per minute, selftune's GRPO against TRL ``GRPOTrainer`` with the same settings and grader.

Ratios, not absolute times, are the point: the machine is shared and its speed drifts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.measure import REPO, log, run
from bench.report import report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    p.add_argument("--work", type=Path, default=REPO / ".bench")
    p.add_argument("--quick", action="store_true", help="16 examples: checks the run works; numbers mean nothing")
    p.add_argument("--report-only", action="store_true", help="Rewrite the report from the last run's results.json")
    args = p.parse_args()
    results = args.work / "results.json"
    if args.report_only:
        r = json.loads(results.read_text())
        r["scaling"] = {int(k): v for k, v in r["scaling"].items()}
    else:
        r = run(args.work, args.quick)
        results.write_text(json.dumps(r, indent=2, default=str))
    text = report(r, "make bench")
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(args.out)
    log(f"wrote {args.out} ({r['wall_seconds'] / 60:.1f} min)")
    print(text)


if __name__ == "__main__":
    main()
