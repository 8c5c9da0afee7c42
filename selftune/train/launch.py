"""Start the recipe on many processes with torchrun, keeping the worker-recipe contract.

    python -m selftune.train.launch --nproc-per-node N [--recipe MODULE] JOB_DIR/job.json
    python -m selftune.train.launch --nproc-per-node N --nnodes M --rdzv-endpoint HOST:PORT \\
        --rdzv-id ID [--member] JOB_DIR/job.json

The worker runs this instead of the recipe when it gives a job more than one process
(``protocol.recipe_command``). It runs torchrun's launcher in this process, so that:

- the processes die with the worker: this process dies with its parent (``exit_with_parent``), and
  each rank with this process (the recipe arms the same, with this process as its parent);
- the exit status is the recipe's (``protocol.Exit``): torchrun takes any status but 0 for a crash, so
  the main rank writes its outcome to ``JOB_DIR/exit-status`` and the ranks exit 0; this launcher
  exits with that outcome, or ``FAILED`` when there is none (a rank crashed or was killed, and
  torchrun ended the others).

One machine: ``--standalone`` (a rendezvous on a free local port). Several: c10d rendezvous at the
endpoint the claiming worker (the head) hosts and the database hands its group (``selftune.groups``);
a ``--member`` joins it and reports nothing (its ranks are never the main one).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from selftune.children import exit_with_parent
from selftune.train.protocol import Exit, JobDir

JOIN_TIMEOUT_SECONDS = 300
"""How long the machines of a group wait for each other to join a job's rendezvous."""


def torchrun_arguments(args: argparse.Namespace) -> list[str]:
    out = ["--nproc-per-node", str(args.nproc_per_node), "--max-restarts", "0"]
    if args.nnodes <= 1:
        out.append("--standalone")
    else:
        conf = f"is_host={0 if args.member else 1},join_timeout={JOIN_TIMEOUT_SECONDS}"
        out += ["--nnodes", str(args.nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", args.rdzv_endpoint]
        out += ["--rdzv-id", args.rdzv_id, "--rdzv-conf", conf]
    return [*out, "-m", args.recipe, args.config]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m selftune.train.launch")
    parser.add_argument("--recipe", default="selftune.train.lora")
    parser.add_argument("--nproc-per-node", type=int, required=True)
    parser.add_argument("--nnodes", type=int, default=1)
    parser.add_argument("--rdzv-endpoint", default="")
    parser.add_argument("--rdzv-id", default="")
    parser.add_argument("--member", action="store_true")
    parser.add_argument("config")
    args = parser.parse_args(argv)
    exit_with_parent()
    files = JobDir(Path(args.config).parent)
    files.exit_status.unlink(missing_ok=True)
    os.environ["SELFTUNE_AGENT_PID"] = str(os.getpid())
    os.environ["SELFTUNE_HEAD"] = "0" if args.member else "1"
    logging.basicConfig(level=logging.INFO)
    from torch.distributed.run import main as torchrun

    ended = Exit.DONE
    try:
        torchrun(torchrun_arguments(args))
    except SystemExit as e:
        if e.code not in (0, None):
            print(f"torchrun exited with {e.code}", file=sys.stderr)
            ended = Exit.FAILED
    except Exception as e:  # a rank failed: torchrun has ended the others and printed which and why
        print(f"torchrun: {e.__class__.__name__}: {e}", file=sys.stderr)
        ended = Exit.FAILED
    if args.member:
        return ended
    try:
        return int(files.exit_status.read_text())
    except (OSError, ValueError):
        return Exit.FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
