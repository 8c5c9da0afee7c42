"""Many machines on one: what a second worker, a fresh server and the object store cost or give.

    python -m bench.cluster [--work DIR]     (also part of ``make bench``)

The cluster of ``docs/cluster.md`` (``selftune.live_cluster``: SeaweedFS as the S3 store, two
servers and two workers with homes of their own, one PostgreSQL database) runs three measurements,
each against its peer in the same run:

- **spread**: the same 4 small SmolLM2 jobs (12 chatterbot trivia pairs, 1 epoch, batch size 4)
  with one worker, then with two; wall time from the first create to the last success;
- **first answer on a server that never saw the model**: three fine-tuned models trained
  elsewhere, each asked on the server that served none of them, against its adapter's download
  alone (fetched from the store into an empty folder) and against the next request; medians;
- **storage overhead**: one job trained by a server with its own worker, on PostgreSQL, with the
  local folder as the store and with the S3 store, alternating three times; the fastest wall time
  of each, from create to success.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import met
from selftune.live import LiveServer
from selftune.live_cluster import CREDENTIALS, Layout, LiveCluster, new_database

MODEL = "SmolLM2-135M-Instruct"
JOBS = 4
HYPERPARAMETERS = {"n_epochs": 1, "batch_size": 4}
ROUNDS = 3


def trivia(path: Path, n: int = 12) -> Path:
    from importlib.resources import files

    import yaml

    convs = yaml.safe_load(files("chatterbot_corpus").joinpath("data/english/trivia.yml").read_text("utf-8"))
    pairs = [(str(c[0]), str(c[1])) for c in convs["conversations"] if len(c) == 2][:n]
    lines = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def jobs_wall_time(server: LiveServer, data: Path, n: int) -> dict[str, Any]:
    """Create ``n`` jobs at once; seconds until the last succeeded, the jobs and their models."""
    client = server.client(timeout=300)
    file_id = client.files.create(file=data.open("rb"), purpose="fine-tune").id
    t0 = time.monotonic()
    ids = [
        client.fine_tuning.jobs.create(model=MODEL, training_file=file_id, hyperparameters=HYPERPARAMETERS, seed=i).id
        for i in range(n)
    ]
    jobs = {}
    while len(jobs) < n:
        for job_id in ids:
            job = client.fine_tuning.jobs.retrieve(job_id)
            if job.status in ("succeeded", "failed", "cancelled"):
                assert job.status == "succeeded", job.error
                jobs[job_id] = job
        time.sleep(0.2)
    seconds = time.monotonic() - t0
    return {"seconds": seconds, "jobs": ids, "models": [j.fine_tuned_model for j in jobs.values()]}


def trained_by(cluster: LiveCluster, job_ids: list[str]) -> int:
    """How many of the cluster's workers trained these jobs (each worker's log names its jobs)."""
    return sum(any(f"training {j} " in w.tail(10**7) for j in job_ids) for w in cluster.workers)


def first_answer(cluster: LiveCluster, models: list[str]) -> dict[str, Any]:
    """For each of ``models``, on the server that has served none of them: its first request, its
    adapter's download alone (into an empty folder), and the next request; the medians."""
    from selftune.storage import S3Storage

    fresh = cluster.servers[1].client(timeout=300)
    jobs = {j.fine_tuned_model: j.id for j in fresh.fine_tuning.jobs.list(limit=100)}
    os.environ.update({**CREDENTIALS, "AWS_ENDPOINT_URL": cluster.layout.endpoint})
    store = S3Storage(f"s3://{cluster.layout.bucket}/")
    ask = [{"role": "user", "content": "What is the capital of France?"}]
    runs: list[dict[str, float]] = []
    for model in models:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.monotonic()
            store.get(f"jobs/{jobs[model]}/adapter", Path(tmp) / "adapter")
            download = time.monotonic() - t0
            size = sum(p.stat().st_size for p in (Path(tmp) / "adapter").rglob("*") if p.is_file())
        times = []
        for _ in range(2):
            t0 = time.monotonic()
            fresh.chat.completions.create(model=model, messages=ask, max_tokens=8, temperature=0)  # type: ignore[arg-type]
            times.append(time.monotonic() - t0)
        runs.append({"first": times[0], "download": download, "second": times[1], "adapter_bytes": size})
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]} | {"runs": runs}


def storage_overhead(work: Path, data: Path, s3_env: dict[str, str], rounds: int = ROUNDS) -> dict[str, Any]:
    """The same job on a server with its own worker, local folder against the S3 store: both servers
    started once, the jobs run one at a time, alternating, ``rounds`` times; the fastest of each."""
    times: dict[str, list[float]] = {"local folder": [], "S3 store": []}
    with new_database() as local_db, new_database() as s3_db:
        servers = {}
        for label, extra in (
            ("local folder", {"SELFTUNE_DATABASE_URL": local_db}),
            ("S3 store", {**s3_env, "SELFTUNE_DATABASE_URL": s3_db}),
        ):
            home = work / label.replace(" ", "-")
            shutil.rmtree(home, ignore_errors=True)
            servers[label] = LiveServer(home, extra).start(timeout=600)
        try:
            for _ in range(rounds):
                for label, server in servers.items():
                    times[label].append(jobs_wall_time(server, data, 1)["seconds"])
        finally:
            for server in servers.values():
                server.stop()
    return {label: min(t) for label, t in times.items()} | {"runs": times}


def run(work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    data = trivia(work / "trivia.jsonl")
    r: dict[str, Any] = {"jobs": JOBS, "hyperparameters": HYPERPARAMETERS, "cores": os.cpu_count()}
    with new_database() as url:
        shutil.rmtree(work / "cluster", ignore_errors=True)
        layout = Layout.on_free_ports(url, work / "cluster")
        cluster = LiveCluster(layout, {"SELFTUNE_LEASE_SECONDS": "10"})
        try:
            cluster.start()
            second = cluster.workers[1]
            assert second.proc is not None
            second.proc.terminate()  # one worker first (it removes its row as it stops)
            second.proc.wait(timeout=60)
            one = jobs_wall_time(cluster.servers[0], data, JOBS)
            cluster.restart_worker(1)
            cluster.wait_for_workers(2)
            two = jobs_wall_time(cluster.servers[0], data, JOBS)
            two["workers"] = trained_by(cluster, two["jobs"])
            r["spread"] = {"one worker": one, "two workers": two}
            r["first_answer"] = first_answer(cluster, two["models"][:3])
            cluster.stop(keep_store=True)  # nothing else running while one job is timed
            store_env = {k: v for k, v in layout.environment.items() if k != "SELFTUNE_DATABASE_URL"}
            r["storage"] = storage_overhead(work, data, store_env)
        finally:
            cluster.stop()
    return r


def rows(r: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The headline's targets (issue 30's) and the section's table, for ``BENCHMARKS.md``."""
    one, two = r["spread"]["one worker"], r["spread"]["two workers"]
    spread = two["seconds"] / one["seconds"]
    fa = r["first_answer"]
    overhead = r["storage"]["S3 store"] / r["storage"]["local folder"] - 1

    targets = [
        f"| {r['jobs']} jobs on 2 workers ≤ 0.6× the time on 1 | **{spread:.2f}×** | {met(spread <= 0.6)} |",
        f"| first answer of a model on a server that never saw it ≤ 2 s + the adapter's download | "
        f"**{fa['first']:.2f} s** ({fa['download']:.2f} s download) | {met(fa['first'] <= 2 + fa['download'])} |",
        f"| the S3 store adds ≤ 5% to a job's wall time | **{overhead:+.1%}** | {met(overhead <= 0.05)} |",
    ]
    table = [
        f"SeaweedFS as the S3 store, one PostgreSQL database, servers and workers with homes of their own on this "
        f"{r['cores']}-core machine (`python -m bench.cluster`). Jobs: 12 chatterbot trivia pairs on {MODEL}, "
        f"{r['hyperparameters']}.",
        "",
        "| measurement | seconds |",
        "|---|---|",
        f"| {r['jobs']} jobs, one worker | {one['seconds']:.1f} |",
        f"| {r['jobs']} jobs, two workers (both trained: {two['workers'] == 2}) | {two['seconds']:.1f} |",
        f"| first answer on a server that never saw the model (median of {len(fa['runs'])}) | {fa['first']:.2f} |",
        f"| the adapter's download alone ({fa['adapter_bytes'] / 2**20:.1f} MB) | {fa['download']:.2f} |",
        f"| the next answer | {fa['second']:.2f} |",
        f"| one job, local folder (fastest of {len(r['storage']['runs']['local folder'])}) | "
        f"{r['storage']['local folder']:.1f} |",
        f"| one job, S3 store (fastest of {len(r['storage']['runs']['S3 store'])}) | {r['storage']['S3 store']:.1f} |",
    ]
    return targets, table


def main() -> None:
    from bench.measure import REPO

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--work", type=Path, default=REPO / ".bench" / "cluster")
    args = p.parse_args()
    r = run(args.work)
    print(json.dumps(r, indent=2, default=str))
    targets, table = rows(r)
    print("\n".join([*targets, "", *table]))


if __name__ == "__main__":
    main()
