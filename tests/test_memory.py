"""Training that plans its memory: micro-batches and chunked cross-entropy give the one-batch step,
the plan switches gradient checkpointing on only when it must, and a job that cannot fit is refused
before it trains, with the numbers."""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path

import httpx
import pytest
import torch

from selftune.data.render import IGNORE
from selftune.errors import InsufficientMemory
from selftune.live import LiveServer
from selftune.train.memory import ModelShape, activation_bytes, parse_bytes, plan
from selftune.train.step import accumulate, micro_batches
from tests.conftest import build_tiny_model, run_cli, start_server
from tests.test_train import run_recipe, write_data


def lora_model(folder: Path) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False),
    )
    model.train()
    return model


def rows_of(folder: Path, n: int) -> list[tuple[list[int], list[int]]]:
    from transformers import AutoTokenizer

    from selftune.data.render import render_training

    tok = AutoTokenizer.from_pretrained(folder)
    return [
        render_training(
            tok,
            [
                {"role": "user", "content": "question " * (1 + i % 5)},
                {"role": "assistant", "content": "answer " * (1 + (3 * i) % 7)},
            ],
        )
        for i in range(n)
    ]


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def test_micro_batches_and_chunks_give_the_one_batch_gradient(tiny_model_dir: Path) -> None:
    model = lora_model(tiny_model_dir)
    rows = sorted(rows_of(tiny_model_dir, 6), key=lambda r: len(r[0]))
    pad, cpu = 0, torch.device("cpu")

    # The reference: one batch, the model's own full logits, mean cross-entropy over trained tokens.
    from selftune.train.step import collate

    batch = collate(rows, pad, cpu)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    reference = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE
    )
    reference.backward()
    want = grads(model)

    for micro_tokens, ce_chunk in ((10_000, 10_000), (1, 3), (40, 7)):
        loss, accuracy, tokens = accumulate(model, rows, pad, cpu, nullcontext, micro_tokens, ce_chunk)
        got = grads(model)
        assert abs(loss - float(reference)) < 1e-5, (micro_tokens, ce_chunk)
        assert tokens == sum(len(ids) for ids, _ in rows) and 0 <= accuracy <= 1
        assert got.keys() == want.keys() and len(got) == 2 * 3 * 2  # lora_A and lora_B, 3 targets, 2 layers
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_micro_batches_fit_the_token_budget() -> None:
    assert micro_batches([3, 4, 5, 9], 100) == [[0, 1, 2, 3]]
    assert micro_batches([3, 4, 5, 9], 10) == [[0, 1], [2], [3]]  # padded: 2 x 4 = 8 fits, 3 x 5 = 15 does not
    assert micro_batches([3, 4, 5, 9], 1) == [[0], [1], [2], [3]]  # one row is the least a micro-batch holds
    assert parse_bytes("6G") == 6 * 2**30 and parse_bytes("512M") == 512 * 2**20 and parse_bytes("1000") == 1000
    with pytest.raises(ValueError, match="SELFTUNE_TRAIN_MEMORY"):
        parse_bytes("lots")


SMOL = ModelShape(
    parameters=134_515_008,
    embedding_parameters=28_311_552,
    file_bytes=538_060_032,
    layers=30,
    hidden=576,
    intermediate=1536,
    heads=9,
    vocab=49_152,
)
QWEN = ModelShape(
    parameters=630_167_424,
    embedding_parameters=136_134_656,
    file_bytes=2_520_669_696,
    layers=24,
    hidden=896,
    intermediate=4864,
    heads=14,
    vocab=151_936,
)
COMMON = {"bf16": True, "lora_parameters": 5_000_000, "budget_source": "test"}


def test_the_plan_takes_the_fastest_option_that_fits() -> None:
    roomy = plan(SMOL, longest=1000, batch_tokens=8000, budget_bytes=20 * 2**30, **COMMON)  # type: ignore[arg-type]
    assert roomy.fits and roomy.attention == "eager" and not roomy.checkpointing and not roomy.quantized
    assert roomy.micro_tokens == 1024 and roomy.peak < 5 * 2**30
    # Room for one example with SDPA but not with eager attention's T x T scores: SDPA, no checkpointing.
    fixed = roomy.peak - roomy.micro_tokens * roomy.per_token
    sdpa = activation_bytes(SMOL, 1000, eager=False, checkpointing=False, bytes_per=2)
    assert sdpa * 1.01 < roomy.per_token
    budget = fixed + int(1000 * sdpa * 1.01)
    tight = plan(SMOL, longest=1000, batch_tokens=8000, budget_bytes=budget, **COMMON)  # type: ignore[arg-type]
    assert tight.attention == "sdpa" and not tight.checkpointing and 1000 <= tight.micro_tokens < 1024
    assert tight.peak <= budget
    # Longer than eager attention is ever used for, and one example fits only with checkpointing.
    long = plan(SMOL, longest=8000, batch_tokens=8000, budget_bytes=5 * 2**30, **COMMON)  # type: ignore[arg-type]
    assert long.attention == "sdpa" and long.checkpointing and long.micro_tokens == 8000 and long.peak <= 5 * 2**30
    # The cross-entropy chunk shrinks with the vocabulary: its logits stay within the same bytes.
    assert plan(QWEN, longest=100, batch_tokens=800, budget_bytes=20 * 2**30, **COMMON).ce_chunk < roomy.ce_chunk  # type: ignore[arg-type]
    with pytest.raises(InsufficientMemory, match=r"needs about \d+\.\d GB .* budget is 1\.0 GB \(test\)"):
        plan(QWEN, longest=2000, batch_tokens=2000, budget_bytes=2**30, **COMMON)  # type: ignore[arg-type]


def test_on_cuda_a_base_that_does_not_fit_is_trained_in_4_bits() -> None:
    gpu = {**COMMON, "device": "cuda", "longest": 100, "batch_tokens": 800, "budget_bytes": 2 * 2**30}
    full = plan(QWEN, **{**gpu, "budget_bytes": 20 * 2**30})  # type: ignore[arg-type]
    assert not full.quantized and full.attention == "sdpa"  # eager attention is a CPU choice
    small = plan(QWEN, **gpu, quantize="auto")  # type: ignore[arg-type]
    assert small.quantized and not small.checkpointing and small.peak <= 2 * 2**30
    # bf16 blocks become NF4; the embeddings (tied to the output projection) stay bf16.
    blocks = QWEN.parameters - QWEN.embedding_parameters
    assert small.weights == int(blocks * 0.52) + QWEN.embedding_parameters * 2 < full.weights / 2
    with pytest.raises(InsufficientMemory, match="register the model with --qlora"):
        plan(QWEN, **gpu)  # type: ignore[arg-type]
    # Asked for at registration: a 4-bit base whatever the room.
    assert plan(QWEN, **{**gpu, "budget_bytes": 20 * 2**30}, quantize="always").quantized  # type: ignore[arg-type]


def test_a_base_too_large_for_one_process_is_sharded_over_the_job_s_processes() -> None:
    """Whole, the base does not fit one process's share; sharded over two (FSDP2) it does, before a
    4-bit base is tried. On a CPU the processes load in turns, so one whole copy is loaded at a time."""
    cpu = {**COMMON, "longest": 1000, "batch_tokens": 8000, "budget_bytes": int(3.5 * 2**30)}
    with pytest.raises(InsufficientMemory):
        plan(QWEN, **cpu)  # type: ignore[arg-type]
    with pytest.raises(InsufficientMemory):
        plan(QWEN, **cpu, world=2, local=2, shard="never")  # type: ignore[arg-type]
    two = plan(QWEN, **cpu, world=2, local=2)  # type: ignore[arg-type]
    assert two.sharded and not two.quantized and "sharded over the processes, FSDP2" in two.describe()
    blocks = (QWEN.parameters - QWEN.embedding_parameters) * 2
    # The embeddings whole, half of every layer, and two layers gathered whole while they run.
    assert two.weights == QWEN.embedding_parameters * 2 + blocks // 2 + blocks * 2 // 24
    assert two.lora_state == 5_000_000 * 16 // 2
    # Loading all at once would not fit: two whole copies of the model.
    with pytest.raises(InsufficientMemory):
        plan(QWEN, **{**cpu, "budget_bytes": int(3.5 * 2**30) // 2}, world=4, local=2)  # type: ignore[arg-type]
    roomy = plan(QWEN, **{**cpu, "budget_bytes": 8 * 2**30}, world=2, local=2)  # type: ignore[arg-type]
    assert not roomy.sharded  # data parallel (no gathers) wherever the whole base fits
    assert plan(QWEN, **{**cpu, "budget_bytes": 8 * 2**30}, world=2, local=2, shard="always").sharded  # type: ignore[arg-type]
    # On CUDA: sharded before a 4-bit base, which one process needs for the same room.
    gpu = {**COMMON, "device": "cuda", "longest": 100, "batch_tokens": 800, "budget_bytes": 2 * 2**30}
    assert plan(QWEN, **gpu, quantize="auto").quantized  # type: ignore[arg-type]
    sharded = plan(QWEN, **gpu, quantize="auto", world=2)  # type: ignore[arg-type]
    assert sharded.sharded and not sharded.quantized and sharded.peak <= 2 * 2**30


def test_the_recipe_follows_its_plan(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    from selftune.data.render import render_file

    def plan_of(events: list[dict[str, object]]) -> dict[str, int]:
        return next(e["data"]["memory_plan"] for e in events if "memory_plan" in e.get("data", {}))  # type: ignore[index,operator]

    _, roomy = run_recipe(tmp_path, tiny_model_dir, "roomy", precision="fp32")  # bf16 would round differently
    first = plan_of(roomy)
    # Room for what the process holds besides activations, plus 60% of one example's: only a
    # checkpointed model, one example at a time, fits.
    longest = max(render_file(AutoTokenizer.from_pretrained(tiny_model_dir), tmp_path / "train.jsonl", 1024).lengths)
    fixed = first["peak"] - first["micro_tokens"] * first["per_token"]
    monkeypatch.setenv("SELFTUNE_TRAIN_MEMORY", str(fixed + int(0.6 * longest * first["per_token"])))
    _, tight = run_recipe(tmp_path, tiny_model_dir, "tight", precision="fp32")
    plans = [first, plan_of(tight)]
    assert not plans[0]["checkpointing"] and plans[0]["budget_source"] == "free RAM"
    assert plans[1]["checkpointing"] and plans[1]["budget_source"] == "SELFTUNE_TRAIN_MEMORY"
    assert plans[1]["micro_tokens"] < plans[0]["micro_tokens"]
    losses = [[e["data"]["train_loss"] for e in ev if e["type"] == "metrics"] for ev in (roomy, tight)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-3, abs=1e-4)  # the same training, in smaller pieces


def test_a_job_that_cannot_fit_is_refused_with_the_numbers(tmp_path: Path, tiny_model_dir: Path) -> None:
    srv = start_server(tmp_path / "home", tiny_model_dir, SELFTUNE_TRAIN_MEMORY="100M")
    try:
        client = srv.client()
        upload = client.files.create(file=write_data(tmp_path / "t.jsonl", 10).open("rb"), purpose="fine-tune")
        estimate = httpx.post(
            srv.base_url + "/fine_tuning/jobs/estimate", json={"model": "tiny", "training_file": upload.id}
        ).json()
        assert estimate["fits_memory"] is False, estimate
        assert "budget is 0.1 GB (SELFTUNE_TRAIN_MEMORY)" in estimate["memory_plan"]
        job = client.fine_tuning.jobs.create(model="tiny", training_file=upload.id)
        while job.status not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.5)
            job = client.fine_tuning.jobs.retrieve(job.id)
        assert job.status == "failed" and job.error and job.error.code == "insufficient_memory"
        assert "budget is 0.1 GB" in str(job.error.message) and "SELFTUNE_TRAIN_MEMORY" in str(job.error.message)
        assert not any(e.message.startswith("Step ") for e in client.fine_tuning.jobs.list_events(job.id).data)
    finally:
        srv.stop()
    env = {"SELFTUNE_HOME": str(tmp_path / "home"), "SELFTUNE_TRAIN_MEMORY": "100M"}
    out = run_cli("estimate", str(tmp_path / "t.jsonl"), "--model", "tiny", env=env).stdout
    assert "does NOT fit this machine" in out, out
    roomy = json.loads(
        run_cli(
            "estimate",
            str(tmp_path / "t.jsonl"),
            "--model",
            "tiny",
            "--json",
            env={"SELFTUNE_HOME": env["SELFTUNE_HOME"]},
        ).stdout
    )
    assert roomy["fits_memory"] is True and 1 * 2**30 < roomy["peak_memory_bytes"] < roomy["memory_budget_bytes"]


def test_a_model_registered_with_qlora_trains_on_a_4_bit_base(tmp_path: Path, tiny_model_dir: Path) -> None:
    """bitsandbytes' NF4 layers, on this CPU: registration checks they can run, the job's plan says
    4-bit, training learns, and the fine-tuned model answers at full precision."""
    env = {"SELFTUNE_HOME": str(tmp_path / "home"), "SELFTUNE_ENGINE": "torch"}
    narrow = run_cli("models", "add", "narrow", str(tiny_model_dir), "--qlora", env=env, check=False)
    assert narrow.returncode != 0 and "multiple of 64 wide, and this model's are 32 and 64" in narrow.stderr
    wide = build_tiny_model(tmp_path / "wide", width=64)
    assert "train on a 4-bit base (QLoRA)" in run_cli("models", "add", "wide", str(wide), "--qlora", env=env).stdout
    listed = [line for line in run_cli("models", "list", "--local", env=env).stdout.splitlines() if "wide" in line]
    assert "4-bit base" in listed[0], listed
    data = write_data(tmp_path / "t.jsonl", 24)
    out = json.loads(run_cli("estimate", str(data), "--model", "wide", "--json", env=env).stdout)
    assert out["fits_memory"] is True and "(4-bit base, QLoRA)" in out["memory_plan"]

    srv = LiveServer(tmp_path / "home", {"SELFTUNE_ENGINE": "torch", "SELFTUNE_EVAL_EXAMPLES": "0"}).start()
    try:
        client = srv.client()
        upload = client.files.create(file=data.open("rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="wide",
            training_file=upload.id,
            hyperparameters={"n_epochs": 6, "batch_size": 4, "learning_rate_multiplier": 5},
        )
        while job.status not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.5)
            job = client.fine_tuning.jobs.retrieve(job.id)
        assert job.status == "succeeded", job.error
        events = list(reversed(list(client.fine_tuning.jobs.list_events(job.id, limit=100))))
        plan_event = next(e for e in events if e.message.startswith("Memory plan:"))
        assert "(4-bit base, QLoRA)" in plan_event.message
        losses = [float(e.data["train_loss"]) for e in events if e.type == "metrics"]  # type: ignore[index]
        assert sum(losses[-3:]) < 0.9 * sum(losses[:3]), losses  # it learns (from random weights, slowly)
        assert job.fine_tuned_model
        reply = client.chat.completions.create(
            model=job.fine_tuned_model, messages=[{"role": "user", "content": "question 1"}], max_tokens=5
        )
        assert reply.choices[0].message.content is not None
    finally:
        srv.stop()
