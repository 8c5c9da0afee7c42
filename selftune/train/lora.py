"""The LoRA training recipe. It reads top to bottom: config, data, model, resume, loop, checks, result.

One recipe trains both methods: ``supervised`` (``step.NextToken``, the next-token loss on the
assistant messages) and ``dpo`` (``dpo.Preference``, preference pairs). The objective is the only
part that differs; checkpoints, pause and resume, events and result files are the same code.

    python -m selftune.train.lora JOB_DIR/job.json

It keeps the worker-recipe contract of ``selftune.train.protocol``: its only input is ``job.json``
(a ``TrainConfig``) plus the files it names, its only outputs are the files of the job folder and
the events in ``events.jsonl``, and its exit status says how it ended. It never imports the server
or the store, so it runs and is tested on its own.

On several processes (torchrun, started through ``train.launch``) the same code runs on each: the
``World`` of ``train.distributed`` gives each rank its share of every batch and sums the gradients,
and only its main rank writes events and files, evaluates and checks; on one process it does nothing.

Speed comes from doing less, not from a framework: bf16 autocast where the hardware has it (a LoRA
step is about 1.8x faster on an avx512_bf16 CPU), no gradient checkpointing for small models, and
batches grouped by length so little time goes to padding.
"""

from __future__ import annotations

import csv
import ctypes
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from selftune.atomic import staged, write_atomic
from selftune.children import exit_with_parent, orphaned
from selftune.convert.lora import convert_if_supported
from selftune.data.render import RenderedFile, render_file
from selftune.errors import InvalidRequest, SelftuneError
from selftune.methods import RFT_BEST_CHECKPOINTS, RFT_KL_BETA, MethodType, answer_tokens, format_mismatch, group_size
from selftune.train import memory
from selftune.train.checks import check_job
from selftune.train.distributed import CONTINUE, PAUSE, STOP, World
from selftune.train.dpo import Preference
from selftune.train.grpo import Reinforcement
from selftune.train.judging import training_judge
from selftune.train.protocol import (
    Checkpoint,
    Done,
    Error,
    EventWriter,
    Exit,
    Message,
    Metrics,
    Paused,
    TrainConfig,
    load_config,
)
from selftune.train.sampling import llamacpp_sampler
from selftune.train.step import NextToken, Objective, StepContext, plan_epochs
from selftune.train.tracking import open_events
from selftune.train.watch import ValidationWatch


def load_examples(path: str, tokenizer: Any, max_len: int, events: EventWriter, name: str, what: str) -> RenderedFile:
    """Render a JSONL file (validated at upload, so it is not validated again). Truncated examples and
    examples with nothing left to train are reported by line; the latter are dropped."""
    try:
        rendered = render_file(tokenizer, path, max_len)
    except ValueError as e:  # a file that skipped validation (a hand-written job.json): say where
        raise InvalidRequest(f"{name}:{e}", code="invalid_file_format") from e
    if rendered.truncated:
        events.emit(
            Message(
                f"{len(rendered.truncated)} {what} example(s) longer than {max_len} tokens were truncated "
                f"(the end is cut): {_lines(rendered.truncated, name)}",
                level="warn",
            )
        )
    if rendered.unshown_names:
        events.emit(
            Message(
                f'{len(rendered.unshown_names)} {what} example(s) give a message a "name", which this model\'s chat '
                f"template does not show, so it is not trained: {_lines(rendered.unshown_names, name)}",
                level="warn",
            )
        )
    if rendered.empty:
        events.emit(
            Message(
                f"{len(rendered.empty)} {what} example(s) have no trainable tokens after truncation and are "
                f"skipped: {_lines(rendered.empty, name)}; shorten them or raise SELFTUNE_MAX_SEQ_LEN",
                level="warn",
            )
        )
    return rendered


def _lines(lines: list[int], name: str) -> str:
    return ", ".join(f"{name}:{n}" for n in lines[:10]) + (f" and {len(lines) - 10} more" if len(lines) > 10 else "")


def release_freed_memory() -> None:
    """Hand memory that torch has freed back to the OS. glibc keeps freed blocks for reuse, and a
    step's tensors vary in shape, so without this the process's resident size only ever grows
    (measured: from 2.7 to 4.2 GB over 25 steps that each need under 2 GB)."""
    if sys.platform.startswith("linux"):
        with suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def load_base(auto: Any, folder: str, plan: memory.Plan, dtype: torch.dtype, device: torch.device) -> Any:
    """The frozen base as the plan says: at ``dtype``, or with its linear layers in NF4 (QLoRA),
    quantised while loading, on the training device, computing in ``dtype``."""
    if not plan.quantized:
        return auto.from_pretrained(folder, dtype=dtype, attn_implementation=plan.attention).to(device)
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )
    return auto.from_pretrained(
        folder,
        dtype=dtype,
        attn_implementation=plan.attention,
        quantization_config=quantization,
        device_map={"": device.index or 0} if device.type == "cuda" else None,
    )


def keep_activations_in_bf16(model: Any) -> None:
    """peft casts each LoRA layer's input to its float32 weights, and autocast casts it straight back
    to bf16 for the matmul: two copies of every activation that change no value (bf16 -> float32 ->
    bf16 is exact). Without them a step on the bench data is about 10% faster."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False  # type: ignore[attr-defined]  # read by peft with getattr


def main(cfg: TrainConfig, world: World) -> int:
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    files, hp = cfg.job_dir, cfg.hyperparameters
    dpo, rft = cfg.method == MethodType.DPO, cfg.method == MethodType.REINFORCEMENT
    files.root.mkdir(parents=True, exist_ok=True)
    events = open_events(cfg, world.main)  # also logs to W&B when the job has that integration
    # Under torchrun the parent is its agent, which the worker started (``train.launch``).
    parent = int(os.environ.get("SELFTUNE_AGENT_PID") or os.getppid())
    exit_with_parent()
    t_start = time.perf_counter()

    # --- setup: determinism, device, precision ----------------------------------------------------
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = world.device()
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and memory.bf16_supported(device.type))

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()

    # --- data -------------------------------------------------------------------------------------
    tokenizer = AutoTokenizer.from_pretrained(cfg.base_model_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_name = cfg.train_name or os.path.basename(cfg.train_file)
    rendered = load_examples(cfg.train_file, tokenizer, cfg.max_seq_len, events, train_name, "training")
    if not rendered.rows:
        raise InvalidRequest(
            f"{train_name}:{rendered.empty[0] if rendered.empty else 1}: no training example has a trainable "
            "token; every example needs an assistant message to learn from"
            + (f" (and a reinforcement prompt fewer than {cfg.max_seq_len} tokens)" if rft else ""),
            code="invalid_file_format",
        )
    valid, valid_name = RenderedFile(), cfg.valid_name or os.path.basename(cfg.valid_file or "")
    if cfg.valid_file:
        valid = load_examples(cfg.valid_file, tokenizer, cfg.max_seq_len, events, valid_name, "validation")
    for name, data in ((train_name, rendered), (valid_name, valid)):
        # the worker checked; a hand-written job.json may not have been
        wrong = format_mismatch(name, data.format, MethodType(cfg.method)) if data.rows else None
        if wrong:
            raise InvalidRequest(wrong, code="invalid_file_format")
    objective: Objective
    if rft:
        assert cfg.grader is not None and hp.compute_multiplier is not None
        fmt = (cfg.response_format or {}).get("type")
        objective = Reinforcement(
            rendered,
            valid,
            tokenizer,
            grader=cfg.grader,
            json_answers=fmt in ("json_object", "json_schema"),
            group=group_size(hp.compute_multiplier),
            answer_tokens=answer_tokens(hp.reasoning_effort),
            max_len=cfg.max_seq_len,
            kl_beta=RFT_KL_BETA,
            new_adapter=not cfg.init_adapter,
            hidden=cfg.hidden_dirs,
        )
    elif dpo:
        assert hp.beta is not None
        objective = Preference(
            rendered.rows, valid.rows, hp.beta, hp.rpo_alpha or 0.0, new_adapter=not cfg.init_adapter
        )
    else:
        objective = NextToken(rendered.rows, valid.rows)
    n_train, n_valid = objective.size("train"), objective.size("valid")
    rft_valid = list(range(min(hp.eval_samples or n_valid, n_valid)))  # what a reinforcement job scores
    # The whole run's batch order is fixed by the seed up front, so a resumed run takes exactly the
    # batches an uninterrupted one would have: the data position is just the step number.
    schedule = plan_epochs(objective.lengths(), hp.n_epochs, hp.batch_size, cfg.seed)
    total_steps = len(schedule)
    steps_per_epoch = total_steps // hp.n_epochs
    eval_every = hp.eval_interval or cfg.eval_every or max(1, total_steps // 10)

    # --- model ------------------------------------------------------------------------------------
    # The frozen base weights are stored in bf16 when autocast computes in bf16 anyway: the matmuls
    # see the same values, without re-casting 135M+ weights every step. LoRA weights stay fp32.
    base_dtype = torch.bfloat16 if use_bf16 else torch.float32
    # The plan picks the attention (eager where it is faster and fits), checkpointing and a 4-bit base.
    longest = max(objective.lengths() + [len(ids) for ids, _ in valid.rows])
    width = max(
        max(len(ids) for ids, _ in rows) * len(rows) for rows in (objective.rows("train", i) for _, i in schedule)
    )
    shard = memory.STRATEGIES.get(os.environ.get("SELFTUNE_TRAIN_STRATEGY") or "auto")
    if shard is None:
        raise InvalidRequest(
            f"SELFTUNE_TRAIN_STRATEGY={os.environ['SELFTUNE_TRAIN_STRATEGY']!r}: use auto (the default: "
            "shard the base over the processes only when it does not fit whole), data_parallel or fsdp",
            code="invalid_configuration",
        )
    plan = world.agree(  # every rank trains the same way (each measures its own memory)
        lambda: memory.plan_job(
            cfg.base_model_dir,
            longest=longest,
            batch_tokens=width,
            lora_r=cfg.lora_r,
            lora_targets=cfg.lora_targets,
            device=device.type,
            bf16=use_bf16,
            qlora=cfg.qlora,
            rows_per_example=rendered.per_example,
            world=world.size,
            shard=shard,
        )
    )  # raises InsufficientMemory or QuantizationUnavailable, whose codes fail the job

    def build(on: torch.device) -> Any:
        """The base as the plan says, with the adapter (new or the job's initial one) on it."""
        model = load_base(AutoModelForCausalLM, cfg.base_model_dir, plan, base_dtype, on)
        release_freed_memory()  # what loading the weights took and let go (the float32 file, read once)
        if plan.checkpointing:  # only when one example would not fit without it: it costs a forward pass
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.init_adapter:
            model = PeftModel.from_pretrained(model, cfg.init_adapter, is_trainable=True)
        else:
            lora = LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=cfg.lora_targets,
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, lora)
        if use_bf16:
            keep_activations_in_bf16(model)
        return model.train()

    if plan.sharded:  # each rank keeps its shard of every decoder layer (FSDP2), built on the CPU
        model, world = world.load_sharded(lambda: build(torch.device("cpu")), release_freed_memory)
        model.to(device)  # the whole parts (embeddings, norm); FSDP2 put the shards on the rank's device
    else:
        model = build(device)
        world.share_parameters([p for p in model.parameters() if p.requires_grad])  # the main rank's initialisation
    params = [p for p in model.parameters() if p.requires_grad]
    if isinstance(objective, Reinforcement):  # on a CPU llama.cpp samples the answers (train.sampling)
        objective.sampler = llamacpp_sampler(cfg.sampling_gguf, cfg.base_model_dir, device.type, world.sharded)
        objective.judge = training_judge(cfg.judges, torch.get_num_threads())  # model graders' judges
    # Every rank takes part in what needs the whole model: with a sharded one, all of them.
    together = world.main or world.sharded
    optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=0.0)
    warmup = max(1, int(total_steps * cfg.warmup_ratio))

    def lr_factor(s: int) -> float:  # linear warmup, then linear decay to zero
        if s < warmup:
            return (s + 1) / warmup
        return max(0.0, (total_steps - s) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)

    # --- resume: everything that changes during training comes back from the state file ------------
    step, trained_tokens = 0, 0
    metrics_rows: list[dict[str, Any]] = []
    checkpoints: list[str] = []
    watch = ValidationWatch()
    # Read by the main rank (the only one that writes it) and handed to the others.
    state: dict[str, Any] | None = world.agree(
        lambda: (
            torch.load(files.state, map_location="cpu", weights_only=False)
            if cfg.resume and files.state.is_file()
            else None
        )
    )
    if state is not None:
        if world.sharded:
            world.restore(model, state["adapter"], optimizer, state["optimizer"])
        else:
            set_peft_model_state_dict(model, state["adapter"])
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step, trained_tokens = state["step"], state["trained_tokens"]
        metrics_rows = state["metrics_rows"]
        # Saved as paths of the folder the state was written in, which may be another worker's:
        # the same checkpoints in this job folder (the worker fetched them from the store).
        checkpoints = [str(files.checkpoint(int(Path(c).name.removeprefix("step-")))) for c in state["checkpoints"]]
        watch = ValidationWatch.from_state(state.get("validation"))
        events.emit(Message(f"Training resumed at step {step}/{total_steps}", extra={"step": step}))
    else:
        events.emit(
            Message(
                f"Fine-tuning job started: {n_train} {_what(cfg.method)}, "
                f"{hp.n_epochs} epoch(s), batch size {hp.batch_size}, learning rate {hp.learning_rate:g}"
                f"{f', beta {hp.beta:g}' if dpo else ''}{_sampling(objective) if rft else ''}, "
                f"{'bf16' if use_bf16 else 'fp32'} on "
                f"{device.type}{f', {world.strategy}' if world.distributed else ''}",
                extra={
                    "total_steps": total_steps,
                    "examples": n_train,
                    "method": cfg.method,
                    "world_size": world.size,
                    "strategy": "fsdp" if world.sharded else "data_parallel" if world.distributed else "single",
                },
            )
        )

    events.emit(Message(plan.describe(), extra={"memory_plan": plan.to_dict()}))
    ctx = StepContext(pad_id, device, autocast, plan.micro_tokens, plan.ce_chunk, hp.batch_size)
    if dpo and state is None:
        events.emit(Message(f"Scoring {n_train + n_valid} preference pair(s) with the reference model"))
    # Computed once, by the main rank (DPO's reference scores), and taken as saved by the others.
    saved = world.agree(lambda: objective.prepare(model, ctx, state.get("objective") if state else None))
    prepared = objective.prepare(model, ctx, saved) if not world.main else saved

    def save_state() -> None:
        """Adapter, optimizer, scheduler, RNG and position, written atomically (by the main rank:
        the ranks' adapters and optimizers are the same; sharded, every rank gathers them to it)."""
        adapter = world.full_adapter(model) if world.sharded else get_peft_model_state_dict(model)
        optim = world.full_optimizer(model, optimizer) if world.sharded else optimizer.state_dict()
        if not world.main:
            return
        state = {
            "adapter": adapter,
            "optimizer": optim,
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "step": step,
            "trained_tokens": trained_tokens,
            "metrics_rows": metrics_rows,
            "checkpoints": checkpoints,
            "objective": prepared,
            "validation": watch.to_state(),
        }
        with staged(files.state) as tmp:
            torch.save(state, tmp)

    def save_adapter(folder: Path) -> None:
        """The adapter's folder, servable by llama.cpp at once (the main rank writes it; sharded,
        every rank gathers the adapter to it first)."""
        whole = world.full_adapter(model) if world.sharded else None
        if world.main:
            model.save_pretrained(folder, **({"state_dict": whole} if whole is not None else {}))
            convert_if_supported(folder, cfg.base_model_dir)

    # --- the loop ---------------------------------------------------------------------------------
    speed_from: tuple[float, int] | None = None  # (time, tokens) after this run's first step
    loop_start, loop_tokens = time.perf_counter(), trained_tokens
    while step < total_steps:
        decision = world.decide(lambda: PAUSE if files.pause.exists() else STOP if orphaned(parent) else CONTINUE)
        if decision == PAUSE:
            if together:
                save_state()
                events.emit(Paused(f"Fine-tuning job paused at step {step}/{total_steps}", step=step))
            return Exit.PAUSED
        if decision == STOP or orphaned(parent):
            return Exit.FAILED
        epoch, idx = schedule[step]
        if (part := world.part(idx)) or not world.sharded:
            values, tokens = world.sum_values(*objective.step(model, idx, ctx, part))
        else:  # sharded, every rank takes part in every backward: this one adds a pass at weight 0
            values, _ = objective.step(model, idx, ctx, idx[:1], scale=0.0)
            values, tokens = world.sum_values(dict.fromkeys(values, 0.0), 0)
        world.sum_gradients(params)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        release_freed_memory()
        step += 1
        # Like OpenAI's billing: every token of every example seen, not only the trained ones.
        trained_tokens += tokens
        row: dict[str, Any] = {"step": step, **_prefixed("train_", values)}
        key, label = objective.headline
        message = f"Step {step}/{total_steps}: training {label}={row['train_' + key]:.2f}"
        evaluating = bool(n_valid) and (step % eval_every == 0 or step == total_steps)
        if evaluating and together:
            # Like OpenAI: valid_loss on one small batch of the validation data (the next one in turn),
            # full_valid_loss on all of it at each epoch end. A full pass every few steps would cost
            # more than the training itself once the validation file is large. Reinforcement jobs
            # (like OpenAI's) score the same first eval_samples prompts each time.
            start = (step // eval_every - 1) * hp.batch_size
            v_idx = [(start + k) % n_valid for k in range(min(hp.batch_size, n_valid))]
            if rft:
                v_idx = rft_valid
            row.update(_prefixed("valid_", objective.evaluate(model, "valid", v_idx, ctx)))
            message += f", validation {label}={row['valid_' + key]:.2f}"
        metrics_rows.append(row)
        if speed_from is None:  # model loading and the first step's warm-up are not training speed
            speed_from = (time.perf_counter(), trained_tokens)
        events.emit(Metrics(message, total_steps=total_steps, trained_tokens=trained_tokens, **row))

        # Reinforcement jobs checkpoint where they are evaluated, as OpenAI's do.
        checkpointed = step % steps_per_epoch == 0 if not rft else evaluating
        if checkpointed and together:
            # End of epoch: a checkpoint, callable as ft:...:ckpt-step-N; keep the last few. The
            # resumable state is saved with it, so a crash loses at most one epoch.
            ckpt = files.checkpoint(step)
            save_adapter(ckpt)
            checkpoints.append(str(ckpt))
            ckpt_metrics = dict(row)
            overfitting = None
            if rft:  # ranked by validation reward: the watch keeps what is lowest
                watch.add(step, -row["valid_reward_mean"], cfg)
            elif n_valid:
                full = objective.evaluate(model, "valid", range(n_valid), ctx)
                ckpt_metrics.update(_prefixed("full_valid_", full))
                overfitting = watch.add(step, full["loss"], cfg)
            # Keep the last few, and always the best by validation loss (the one to use if the end
            # overfits); of a reinforcement job, the last and the three best by validation reward.
            kept = (1, RFT_BEST_CHECKPOINTS) if rft else (cfg.keep_checkpoints, 1)
            for old in watch.prune(checkpoints, kept[0], files.checkpoint, best=kept[1]):
                checkpoints.remove(old)
                if world.main:
                    shutil.rmtree(old, ignore_errors=True)
            save_state()
            best_note = f" (the {'highest validation reward' if rft else 'lowest validation loss'} so far)"
            best_note = best_note if watch.best_step == step else ""
            checkpoint = Checkpoint(
                f"Checkpoint created at step {step}{best_note}",
                step=step,
                epoch=epoch + 1,
                path=str(ckpt),
                metrics=ckpt_metrics,
                kept=list(checkpoints),
            )
            events.emit(checkpoint)
            if overfitting:
                events.emit(overfitting)
        if checkpointed:
            world.wait()  # while the main rank saves and evaluates the checkpoint

    loop_seconds = time.perf_counter() - loop_start
    if not together:
        world.wait()  # for the main rank's checks and results
        return Exit.DONE

    # --- checks: did the model come out worse than it went in; is it better on held-out data? -----
    # Sharded, the other ranks generate in step with the main one (the same greedy answers), and
    # write their copy of the report where nobody reads it.
    # Saved before the quality check: after it (it switches the adapter off and on again) the sharded
    # gather, which takes the parameters that require gradients, found none.
    save_adapter(files.adapter)
    checked = cfg if world.main else replace(cfg, output_dir=tempfile.mkdtemp(prefix="selftune-rank-"))
    rewards = None
    if rft and n_valid:
        # The job's own comparison on its grader: the starting model's greedy answers to the prompts
        # every evaluation scored, against the final evaluation's (made at the last step).
        assert isinstance(objective, Reinforcement)
        base_reward = objective.evaluate(model, "valid", rft_valid, ctx, starting=True)["reward_mean"]
        final = metrics_rows[-1]["valid_reward_mean"]  # the last step is always evaluated (rows resume with the state)
        rewards = {"prompts": len(rft_valid), "base": base_reward, "fine_tuned": final}
        events.emit(
            Message(
                f"Validation reward on {len(rft_valid)} prompt(s): starting model {base_reward:.3f}, "
                f"fine-tuned {final:.3f} ({final - base_reward:+.3f})"
            )
        )
    reports, quality = check_job(
        model, tokenizer, device, autocast, checked, watch.best_checkpoint(cfg), watch.best_step == step
    )
    if not world.main:
        world.wait()
        return Exit.DONE
    for report in reports:
        events.emit(report)

    # --- result -----------------------------------------------------------------------------------
    write_metrics_csv(files.metrics, metrics_rows, objective.columns)
    elapsed = time.perf_counter() - t_start
    speed = None
    if speed_from is not None and trained_tokens > speed_from[1]:
        speed = (trained_tokens - speed_from[1]) / (time.perf_counter() - speed_from[0])
    done = Done(
        f"Training finished in {elapsed:.1f}s",
        trained_tokens=trained_tokens,
        steps=step,
        seconds=elapsed,
        tokens_per_second=speed,
        loop_seconds=loop_seconds,
        loop_tokens=trained_tokens - loop_tokens,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        world_size=world.size,
        quality=quality.to_dict() | {"validation_reward": rewards} if quality else None,
    )
    events.emit(done)
    world.wait()
    return Exit.DONE


def _what(method: MethodType) -> str:
    return {MethodType.DPO: "preference pairs", MethodType.REINFORCEMENT: "prompts"}.get(method, "examples")


def _sampling(objective: Any) -> str:
    engine = objective.sampler.describe() if objective.sampler else "the training process"
    judged = f", judged by {objective.judge.describe()}" if objective.judge else ""
    return (
        f", {objective.group} answers per prompt of up to {objective.answer_tokens} tokens sampled by {engine}{judged}"
    )


def _prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {prefix + k: v for k, v in values.items()}


def write_metrics_csv(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    """The result file: OpenAI's five columns first (its ``train_accuracy`` is our
    ``train_mean_token_accuracy``), then the objective's own (DPO's rewards), train then valid."""
    extra = [c for c in columns if c not in ("loss", "mean_token_accuracy")]
    header = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    keys = ["step", "train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    header += [f"{split}_{c}" for split in ("train", "valid") for c in extra]
    keys += [f"{split}_{c}" for split in ("train", "valid") for c in extra]
    with staged(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([r["step"], *(_fmt(r.get(k)) for k in keys[1:])])


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.5f}"


def run(job_json: str) -> int:
    cfg = load_config(job_json)
    world = World.join()
    try:
        code = main(cfg, world)
    except SelftuneError as e:  # what the job cannot be trained on, with the code its error will carry
        if world.main:
            EventWriter(cfg.job_dir.events).emit(Error(e.message, code=e.code or "training_failed"))
        code = Exit.DATA_ERROR
    if not world.distributed:
        return code
    # torchrun takes any status but 0 for a crash: the main rank's outcome goes in a file that the
    # launcher (``train.launch``) exits with.
    if world.main:
        write_atomic(cfg.job_dir.exit_status, str(int(code)))
    world.close()
    return 0 if code != Exit.FAILED else code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
