"""One job on many processes (torchrun, gloo on this CPU) and on a group of machines.

- The arithmetic: each process's share of a batch adds up to the batch (gradients and metrics).
- The recipe on 2 processes trains like on 1: the same per-step losses (fp32, within 1e-4) and the
  same adapter, for SFT and DPO; with a memory budget the whole base does not fit, the plan shards
  it over the processes (FSDP2) and it still trains like one process, and resumes exactly. A
  reinforcement job on 2 processes: each samples (llama.cpp) and grades its share, the metrics add up.
- A worker with ``SELFTUNE_WORKER_NPROC_PER_NODE=2``, through the SDK: pause and resume (the same
  losses as an uninterrupted run), cancel, and one rank SIGKILLed: the job fails, no process is left.
- Two workers with homes of their own (``--nnodes 2 --group``), sharing PostgreSQL and a real S3
  server: one job trained on both; a member machine lost ends the job instead of hanging it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from selftune.data.render import render_file
from selftune.live import build_tiny_model
from selftune.live_cluster import LiveCluster, free_ports
from selftune.methods import Hyperparameters, MethodType
from selftune.train.memory import ModelShape, activation_bytes, sharded_weight_bytes
from selftune.train.protocol import Launch, TrainConfig, recipe_command, save_config
from selftune.train.step import NextToken, StepContext
from tests.conftest import (
    LiveServer,
    chat_lines,
    new_database,
    preference_lines,
    run_cli,
    start_server,
    trivia_jsonl,
)
from tests.test_cluster import running_cluster
from tests.test_jobs_api import FINAL, all_events, trainer_pids, upload, wait, wait_for_step


def ranks(job_id: str) -> list[int]:
    """The job's torchrun ranks (not the launcher, which holds torchrun's agent)."""
    out = []
    for pid in trainer_pids(job_id):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"selftune.train.launch" not in cmd:
            out.append(pid)
    return out


def gone(job_id: str, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while trainer_pids(job_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not trainer_pids(job_id)


# --- the arithmetic ---------------------------------------------------------------------------------


def test_shares_of_a_batch_add_up_to_the_batch(tiny_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selftune.data.render import render_file

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    path = Path(tiny_model_dir).parent / "shares.jsonl"
    path.write_text(chat_lines(5))
    rows = render_file(tokenizer, str(path), 256).rows
    objective = NextToken(rows, [])
    ctx = StepContext(tokenizer.pad_token_id or 0, torch.device("cpu"), nullcontext, 10_000, 64, 5)
    params = [p for p in model.parameters() if p.requires_grad]

    def grads() -> list[torch.Tensor]:
        out = [p.grad.clone() for p in params]  # type: ignore[union-attr]
        model.zero_grad(set_to_none=True)
        return out

    batch = [0, 1, 2, 3, 4]
    whole, tokens = objective.step(model, batch, ctx, batch)
    want = grads()
    summed: dict[str, float] = {}
    total = 0
    got = [torch.zeros_like(g) for g in want]
    for part in ([0, 2, 4], [1, 3], []):  # three processes, one with nothing to do
        values, n = objective.step(model, batch, ctx, part)
        for k, v in values.items():
            summed[k] = summed.get(k, 0.0) + v
        total += n
        if part:
            got = [a + b for a, b in zip(got, grads(), strict=True)]
    assert total == tokens
    assert summed == pytest.approx(whole, rel=1e-6)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# --- the recipe on 1 and 2 processes ------------------------------------------------------------------


def train(
    tmp_path: Path, tiny_model_dir: Path, name: str, nproc: int, method: MethodType, data: str, **env: str
) -> Path:
    (tmp_path / f"{name}.jsonl").write_text(data)
    cfg = TrainConfig(
        base_model_dir=str(tiny_model_dir),
        train_file=str(tmp_path / f"{name}.jsonl"),
        valid_file=str(tmp_path / f"{name}.jsonl"),
        output_dir=str(tmp_path / f"{name}-{nproc}"),
        method=method,
        hyperparameters=Hyperparameters(n_epochs=2, batch_size=3, learning_rate_multiplier=10.0, beta=0.1)
        if method == MethodType.DPO
        else Hyperparameters(n_epochs=2, batch_size=3, learning_rate_multiplier=10.0),
        seed=5,
        precision="fp32",  # bf16 sums in another order differ in the third digit
        quality_prompts=0,
    )
    out = Path(cfg.output_dir)
    with (tmp_path / f"{name}-{nproc}.log").open("wb") as log:
        rc = subprocess.run(
            recipe_command(save_config(cfg), method, Launch(nproc)),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1", **env},
            timeout=600,
        ).returncode
    assert rc == 0, (tmp_path / f"{name}-{nproc}.log").read_text()[-3000:]
    assert not (out / "exit-status").exists() or (out / "exit-status").read_text() == "0"
    return out


def events(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def memory_plan(out: Path) -> dict[str, Any]:
    return next(e["data"]["memory_plan"] for e in events(out) if "memory_plan" in e["data"])


@pytest.mark.parametrize("method", [MethodType.SUPERVISED, MethodType.DPO])
def test_two_processes_train_like_one(tmp_path: Path, tiny_model_dir: Path, method: MethodType) -> None:
    data = preference_lines(8) if method == MethodType.DPO else chat_lines(10)
    one = train(tmp_path, tiny_model_dir, str(method), 1, method, data)
    two = train(tmp_path, tiny_model_dir, str(method), 2, method, data)
    started = [e for e in events(two) if e["message"].startswith("Fine-tuning job started")]
    assert len(started) == 1 and started[0]["data"]["world_size"] == 2
    assert "2 processes, data parallel (gloo)" in started[0]["message"]
    assert events(one)[0]["data"]["world_size"] == 1
    # The main rank alone writes: one started event, one done event, one metrics event per step.
    assert [e["type"] for e in events(two)].count("done") == 1

    def metrics(out: Path) -> list[dict[str, float]]:
        return [e["data"] for e in events(out) if e["type"] == "metrics"]

    a, b = metrics(one), metrics(two)
    assert [m["step"] for m in a] == [m["step"] for m in b] == list(range(1, len(a) + 1))
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert y[k] == pytest.approx(x[k], abs=1e-4), (k, x, y)
    assert metrics(one)[-1]["train_loss"] != metrics(one)[0]["train_loss"]  # it trained
    wa, wb = (load_file(out / "adapter" / "adapter_model.safetensors") for out in (one, two))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)


def test_a_reinforcement_job_trains_on_two_processes(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Each rank samples its share of the prompts with llama.cpp (its own server, from the base's GGUF)
    and grades it; the ranks' rewards and counts add up in the main rank's metrics, which report the
    whole batch: every answer graded (the python grader fails one item in three), every step there."""
    from selftune.convert.model import convert_model
    from tests.test_rft import FLAKY, prompt_lines

    (tmp_path / "prompts.jsonl").write_text(prompt_lines(12))
    requested = {"n_epochs": 1, "batch_size": 4, "eval_interval": 3, "eval_samples": 4, "reasoning_effort": "low"}
    cfg = TrainConfig(
        base_model_dir=str(tiny_model_dir),
        train_file=str(tmp_path / "prompts.jsonl"),
        valid_file=str(tmp_path / "prompts.jsonl"),
        output_dir=str(tmp_path / "rft-2"),
        method=MethodType.REINFORCEMENT,
        hyperparameters=Hyperparameters.resolve(requested, 12, MethodType.REINFORCEMENT),
        seed=5,
        grader=FLAKY,
        sampling_gguf=str(convert_model(tiny_model_dir, tmp_path / "tiny.gguf")),
    )
    log = tmp_path / "rft-2.log"
    with log.open("wb") as out:
        rc = subprocess.run(
            recipe_command(save_config(cfg), cfg.method, Launch(2)),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            timeout=600,
        ).returncode
    assert rc == 0, log.read_text()[-3000:]
    got = events(Path(cfg.output_dir))
    started = next(e for e in got if e["message"].startswith("Fine-tuning job started"))
    assert started["data"]["world_size"] == 2 and "sampled by llama.cpp on tiny.gguf" in started["message"]
    metrics = [e["data"] for e in got if e["type"] == "metrics"]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    # Items 0, 3, 6, 9 fail the python grader: a third of the epoch's answers, whichever rank graded them.
    assert sum(m["train_grader_error_rate"] for m in metrics) / 3 == pytest.approx(1 / 3, abs=1e-6)
    assert all(0 < m["train_answer_tokens"] <= 128 and 0 <= m["train_reward_mean"] <= 1 for m in metrics)
    assert [e["type"] for e in got].count("done") == 1
    assert (Path(cfg.output_dir) / "adapter" / "adapter_model.safetensors").is_file()


def test_a_base_too_large_for_each_process_is_sharded_and_trains_like_one_process(tmp_path: Path) -> None:
    """FSDP2 over gloo, chosen by the memory plan: with a budget in which the whole base does not fit
    each of the two processes but half of every layer does, each rank holds its shard; the same
    losses and adapter as one process, and a pause mid-run resumes to the same losses."""
    deep = build_tiny_model(tmp_path / "deep", layers=8, width=64)  # sharding saves a quarter of 8 layers
    data = chat_lines(10)
    one = train(tmp_path, deep, "sft", 1, MethodType.SUPERVISED, data)
    whole = memory_plan(one)
    assert not whole["sharded"] and not whole["checkpointing"]
    # The budget half way between what the checkpointed whole base and the checkpointed sharded one
    # need for the longest example (everything else the same).
    shape = ModelShape.of(deep)
    longest = max(render_file(AutoTokenizer.from_pretrained(deep), tmp_path / "sft.jsonl", 1024).lengths)
    fixed = whole["peak"] - whole["micro_tokens"] * whole["per_token"]
    example = longest * activation_bytes(shape, longest, eager=False, checkpointing=True, bytes_per=4)
    need_whole = fixed + example
    need_sharded = fixed - whole["weights"] - whole["lora_state"] // 2 + sharded_weight_bytes(shape, 4, 2) + example
    assert need_sharded < need_whole
    budget = str(need_whole + need_sharded)  # shared by the two processes: each plans with half of it
    sharded = train(tmp_path, deep, "sft", 2, MethodType.SUPERVISED, data, SELFTUNE_TRAIN_MEMORY=budget)
    plan = memory_plan(sharded)
    assert plan["sharded"] and plan["checkpointing"] and plan["budget_source"].endswith("shared by 2 processes")
    started = next(e for e in events(sharded) if e["message"].startswith("Fine-tuning job started"))
    assert "fully sharded data parallel, FSDP2 (gloo)" in started["message"] and started["data"]["strategy"] == "fsdp"

    def metrics(out: Path) -> dict[int, float]:
        return {e["data"]["step"]: e["data"]["train_loss"] for e in events(out) if e["type"] == "metrics"}

    a, b = metrics(one), metrics(sharded)
    assert sorted(a) == sorted(b) and max(abs(a[s] - b[s]) for s in a) < 1e-4
    wa, wb = (load_file(out / "adapter" / "adapter_model.safetensors") for out in (one, sharded))
    assert wa.keys() == wb.keys() and len(wa) > 0
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-3, atol=1e-4)

    # Paused after step 3 (the pause file, as the worker makes it), then started again.
    cfg = json.loads((sharded / "job.json").read_text())
    cfg["output_dir"] = str(tmp_path / "paused")
    Path(cfg["output_dir"]).mkdir()
    job = Path(cfg["output_dir"]) / "job.json"
    job.write_text(json.dumps(cfg))
    # Asked for, whatever the room: sharded again (without checkpointing), the same losses.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SELFTUNE_TRAIN_STRATEGY": "fsdp"}
    command = recipe_command(job, MethodType.SUPERVISED, Launch(2))
    with (tmp_path / "paused.log").open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            seen = job.parent / "events.jsonl"
            if seen.exists() and any('"step": 3,' in line for line in seen.read_text().splitlines()):
                (job.parent / "pause").touch()
                break
            time.sleep(0.05)
        assert proc.wait(timeout=300) == 3, (tmp_path / "paused.log").read_text()[-3000:]  # Exit.PAUSED
        (job.parent / "pause").unlink()
        assert subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=600).returncode == 0
    resumed = metrics(job.parent)
    assert memory_plan(job.parent)["sharded"]
    assert any(e["message"].startswith("Training resumed at step") for e in events(job.parent))
    assert sorted(resumed) == sorted(b) and max(abs(resumed[s] - b[s]) for s in b) < 1e-4


# --- a worker with two processes, through the SDK -----------------------------------------------------


@pytest.fixture(scope="module")
def nproc2(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[LiveServer]:
    srv = start_server(tmp_path_factory.mktemp("home-nproc2"), tiny_model_dir, SELFTUNE_WORKER_NPROC_PER_NODE="2")
    yield srv
    srv.stop()


def test_a_worker_with_two_processes_pauses_resumes_and_cancels(nproc2: LiveServer) -> None:
    client = nproc2.client()
    listed = client.get("/workers", cast_to=object)["data"]  # type: ignore[index]
    assert [w["nproc"] for w in listed] == [2], listed
    train_id = upload(client, chat_lines(200))
    spec: dict[str, Any] = {
        "model": "tiny",
        "training_file": train_id,
        "seed": 7,
        "hyperparameters": {"n_epochs": 3, "batch_size": 2},
    }
    straight = wait(client, client.fine_tuning.jobs.create(**spec).id, timeout=600)
    assert straight.status == "succeeded", straight.error
    messages = [e.message for e in all_events(client, straight.id)]
    assert any("2 processes, data parallel (gloo)" in m for m in messages), messages

    job = client.fine_tuning.jobs.create(**spec)
    wait_for_step(client, job.id, 20)
    client.fine_tuning.jobs.pause(job.id)
    paused = wait(client, job.id, until=("paused", *FINAL))
    assert paused.status == "paused" and gone(job.id)
    client.fine_tuning.jobs.resume(job.id)
    done = wait(client, job.id, timeout=600)
    assert done.status == "succeeded", done.error
    assert any(e.message.startswith("Training resumed at step") for e in all_events(client, job.id))

    def losses(job_id: str) -> dict[int, float]:
        return {e.data["step"]: e.data["train_loss"] for e in all_events(client, job_id) if e.type == "metrics"}

    a, b = losses(straight.id), losses(job.id)
    assert sorted(a) == sorted(b) == list(range(1, 301))
    assert max(abs(a[s] - b[s]) for s in a) < 1e-4
    answer = client.chat.completions.create(
        model=str(done.fine_tuned_model), messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    assert answer.model == done.fine_tuned_model

    cancelled = client.fine_tuning.jobs.create(**spec)
    wait_for_step(client, cancelled.id, 5)
    assert len(ranks(cancelled.id)) == 2
    client.fine_tuning.jobs.cancel(cancelled.id)
    assert wait(client, cancelled.id).status == "cancelled"
    assert gone(cancelled.id), "a rank outlived its cancelled job"


def test_a_rank_killed_fails_the_job_and_leaves_no_process(nproc2: LiveServer) -> None:
    client = nproc2.client()
    train_id = upload(client, chat_lines(200))
    job = client.fine_tuning.jobs.create(
        model="tiny", training_file=train_id, hyperparameters={"n_epochs": 3, "batch_size": 2}
    )
    wait_for_step(client, job.id, 5)
    two = ranks(job.id)
    assert len(two) == 2
    os.kill(two[-1], signal.SIGKILL)
    failed = wait(client, job.id, timeout=120)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "training_failed" and "exited with status" in failed.error.message
    assert gone(job.id), "the other rank or the launcher outlived the job"


# --- two machines, one job ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    with new_database() as url:
        # One server is enough; both workers in one group.
        options = "--nnodes 2 --group pair --address 127.0.0.1"
        yield from running_cluster(tmp_path_factory, url, server_ports=(free_ports(1)[0],), worker_options=options)


def test_two_machines_train_one_job_and_a_lost_one_ends_it(group: LiveCluster, tmp_path: Path) -> None:
    client = group.servers[0].client(timeout=300)
    listed = client.get("/workers", cast_to=object)["data"]  # type: ignore[index]
    assert sorted((w["group"], w["nnodes"]) for w in listed) == [("pair", 2), ("pair", 2)], listed
    data = client.files.create(file=trivia_jsonl(tmp_path / "trivia.jsonl", 12).open("rb"), purpose="fine-tune")
    hp = {"n_epochs": 1, "batch_size": 4}
    job = client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=data.id, hyperparameters=hp)
    done = wait(client, job.id, timeout=900)
    assert done.status == "succeeded", done.error
    logs = {w.name: w.tail(10**7) for w in group.workers}
    head = [n for n, text in logs.items() if f"training {job.id} " in text]
    member = [n for n, text in logs.items() if f"joining {job.id} " in text]
    assert len(head) == 1 and len(member) == 1 and head != member, logs
    messages = [e.message for e in all_events(client, job.id)]
    assert any("2 processes, data parallel (gloo)" in m for m in messages), messages
    answer = client.chat.completions.create(
        model=str(done.fine_tuned_model), messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert answer.choices[0].message.content is not None

    # A member machine lost mid-run: the head's ranks fail at their next collective, and the job
    # fails with the reason instead of waiting for a machine that will not come back.
    longer = client.fine_tuning.jobs.create(
        model="SmolLM2-135M-Instruct", training_file=data.id, hyperparameters={"n_epochs": 6, "batch_size": 4}
    )
    wait_for_step(client, longer.id, 1, timeout=600)
    lost = next(w for w in group.workers if f"joining {longer.id} " in w.tail(10**7))
    lost.kill()
    failed = wait(client, longer.id, timeout=300)
    assert failed.status == "failed" and failed.error is not None, failed
    assert "group pair trained it on 2 machines" in failed.error.message, failed.error.message
    assert gone(longer.id), "a rank outlived the job"


def test_a_group_needs_a_name(tmp_path: Path) -> None:
    proc = run_cli("worker", "--nnodes", "2", env={"SELFTUNE_HOME": str(tmp_path)}, check=False)
    assert proc.returncode != 0
    assert "--group NAME" in proc.stdout + proc.stderr
