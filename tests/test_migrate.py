"""``selftune migrate`` from a second live selftune server acting as the source (it speaks OpenAI's API).

The source holds two finished jobs (one with a validation file) and a cancelled one. The migration
is shown as a dry run, killed halfway, and run again after the source has started refusing to send
fine-tune files back (as OpenAI does), with one file missing from ``--files-dir``; then once more
with it. At the end the target holds each file and job exactly once, the old models' answers are
recorded, and one report compares old and new.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from selftune.live import LiveServer
from tests.conftest import chat_lines, run_cli, start_server


def wait(client: openai.OpenAI, job_id: str) -> openai.types.fine_tuning.FineTuningJob:
    job = client.fine_tuning.jobs.retrieve(job_id)
    deadline = time.monotonic() + 300
    while job.status not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.3)
        job = client.fine_tuning.jobs.retrieve(job_id)
    return job


def test_migrate_two_jobs_resumes_and_compares(tmp_path: Path, tiny_model_dir: Path) -> None:
    source = start_server(tmp_path / "source", tiny_model_dir)
    target = start_server(tmp_path / "target", tiny_model_dir)
    try:
        src, dst = source.client(), target.client()
        mine = tmp_path / "mine"
        mine.mkdir()
        for name, text in (
            ("faq.jsonl", chat_lines(12)),
            ("support.jsonl", chat_lines(10, offset=20)),
            ("support_val.jsonl", chat_lines(4, offset=40)),
        ):
            (mine / name).write_text(text)
        up = {p.name: src.files.create(file=p.open("rb"), purpose="fine-tune").id for p in sorted(mine.iterdir())}
        a = src.fine_tuning.jobs.create(
            model="tiny",
            training_file=up["faq.jsonl"],
            suffix="faq",
            seed=3,
            hyperparameters={"n_epochs": 1},
            metadata={"team": "search"},
        )
        a = wait(src, a.id)
        b = src.fine_tuning.jobs.create(
            model="tiny",
            training_file=up["support.jsonl"],
            validation_file=up["support_val.jsonl"],
            suffix="support",
            seed=5,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 2}}},
        )
        b = wait(src, b.id)
        assert a.status == b.status == "succeeded", (a.error, b.error)
        cancelled = src.fine_tuning.jobs.create(model="tiny", training_file=up["faq.jsonl"])
        src.fine_tuning.jobs.cancel(cancelled.id)
        old = {a.id: str(a.fine_tuned_model), b.id: str(b.fine_tuned_model)}

        out = tmp_path / "migration"
        env = {"OPENAI_API_KEY": "sk-source", "SELFTUNE_BASE_URL": target.base_url}
        args = ("migrate", "--from-base-url", source.base_url, "--out", str(out), "--samples", "6")

        # The plan, and nothing else.
        plan = run_cli(*args, "--dry-run", env=env)
        assert a.id in plan.stdout and b.id in plan.stdout and "tiny -> tiny" in plan.stdout, plan.stdout
        assert '"n_epochs": 2' in plan.stdout and "support_val.jsonl" in plan.stdout
        assert f"left out {cancelled.id}: status cancelled" in plan.stderr, plan.stderr
        assert not out.exists() and not dst.files.list().data and not dst.fine_tuning.jobs.list().data

        # Killed once the first job is created on the target.
        proc = subprocess.Popen(
            [sys.executable, "-m", "selftune", *args],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while not dst.fine_tuning.jobs.list().data and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert len(dst.fine_tuning.jobs.list().data) == 1

        # The source now refuses to send fine-tune files back, as OpenAI does.
        source.stop()
        env_off = {**source.env, "SELFTUNE_FINE_TUNE_DOWNLOADS": "false"}
        source = LiveServer(source.home, env_off, port=source.port).start(keep_port=True)  # the same address
        src = source.client()
        with pytest.raises(openai.BadRequestError, match="Not allowed to download files of purpose: fine-tune"):
            src.files.content(up["faq.jsonl"])
        copies = tmp_path / "copies"
        copies.mkdir()
        for name in ("faq.jsonl", "support.jsonl"):
            (copies / name).write_bytes((mine / name).read_bytes())
        short = run_cli(*args, "--files-dir", str(copies), env=env, check=False)
        assert short.returncode == 1, short.stderr
        assert "support_val.jsonl" in short.stderr and "copy the file you uploaded as support_val.jsonl" in short.stderr
        state = json.loads((out / "state.json").read_text())
        assert state["jobs"][a.id]["model"] and state["jobs"][a.id]["eval"], state["jobs"][a.id]
        assert not state["jobs"][b.id].get("model")

        # The missing file under another name (the legacy SDK names every upload "file"): its size finds it.
        (copies / "held-out.jsonl").write_bytes((mine / "support_val.jsonl").read_bytes())
        code = tmp_path / "app"
        code.mkdir()
        (code / "bot.py").write_text(f'FAQ = "{old[a.id]}"\nSUPPORT = "{old[b.id]}"\n')
        done = run_cli(*args, "--files-dir", str(copies), "--rewrite", str(code), env=env)
        assert "found in --files-dir as held-out.jsonl (the only file of its size)" in done.stderr, done.stderr
    finally:
        source.stop()
        target.stop()

    # Each file and job exactly once on the target, with the source job's settings.
    target = LiveServer(target.home, {**target.env, "SELFTUNE_WORKER": "false"}).start()
    try:
        dst = target.client()
        assert sorted(f.filename for f in dst.files.list(purpose="fine-tune").data) == sorted(
            ["faq.jsonl", "support.jsonl", "support_val.jsonl"]
        )
        jobs = {j.metadata["migrated_from"]: j for j in dst.fine_tuning.jobs.list().data if j.metadata}
        assert set(jobs) == {a.id, b.id} and len(dst.fine_tuning.jobs.list().data) == 2
        new_a, new_b = jobs[a.id], jobs[b.id]
        assert new_a.status == new_b.status == "succeeded"
        assert ":faq:" in str(new_a.fine_tuned_model) and new_a.seed == 3 and new_a.metadata["team"] == "search"
        assert new_a.hyperparameters.n_epochs == 1
        assert new_b.hyperparameters.n_epochs == 2 and new_b.hyperparameters.batch_size == 2 and new_b.seed == 5
        assert new_b.validation_file is not None and ":support:" in str(new_b.fine_tuned_model)
    finally:
        target.stop()

    # The old models' answers were recorded: B's to its validation prompts, A's to 6 sampled training lines.
    b_answers = [json.loads(line) for line in (out / b.id / "old-answers.jsonl").read_text().splitlines()]
    a_answers = (out / a.id / "old-answers.jsonl").read_text().splitlines()
    assert [r["messages"][0]["content"] for r in b_answers] == [f"question {i}" for i in range(40, 44)]
    assert len(a_answers) == 6
    state = json.loads((out / "state.json").read_text())
    assert state["jobs"][b.id]["answers"] == [r["messages"][-1]["content"] for r in b_answers]
    # One report: per job, old and new, against the data and against the old model's answers.
    report = (out / "report.md").read_text()
    for job_id in (a.id, b.id):
        assert job_id in report and state["jobs"][job_id]["model"] in report and old[job_id] in report
        numbers = state["jobs"][job_id]["eval"]
        assert numbers["data"]["models"] == ["tiny", old[job_id], state["jobs"][job_id]["model"]]
        assert numbers["old"]["models"] == ["tiny", state["jobs"][job_id]["model"]]
        assert all(len(v) == 3 for v in numbers["data"]["metrics"].values()) and numbers["data"]["metrics"]
        assert numbers["old"]["n"] >= 1
        # Same data, seed and base as the source: the new model answers exactly as the old one did.
        contains = numbers["old"]["metrics"]["contains"]
        assert contains[1] > contains[0], numbers
        assert (out / job_id / "against-old-model.md").is_file() and (out / job_id / "against-data.json").is_file()
    # The code-change list, applied to a copy.
    rewritten = (out / "rewritten" / "app" / "bot.py").read_text()
    assert state["jobs"][a.id]["model"] in rewritten and state["jobs"][b.id]["model"] in rewritten
    assert old[a.id] in (code / "bot.py").read_text()  # the original is untouched
    assert f'-FAQ = "{old[a.id]}"' in done.stdout and f'+FAQ = "{state["jobs"][a.id]["model"]}"' in done.stdout
