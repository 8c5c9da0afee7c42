"""Local data tools: ``prepare``, ``validate``, ``estimate`` and ``render``. Each is a thin layer over
``selftune.data`` and ``selftune.train.estimate``, which the server and the trainer use too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from selftune.cli.common import (
    auto_or_int,
    checked,
    console,
    file_argument,
    friendly_errors,
    home_option,
    line_list,
    load_tokenizer,
    max_len_option,
    model_option,
    open_catalog,
    settings_from,
)
from selftune.methods import MethodType


@click.command()
@click.argument("input", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Chat JSONL to write."
)
@click.option(
    "--val-split", type=click.FloatRange(0, 0.9), default=0.0, show_default=True, help="Share held out for validation."
)
@click.option(
    "--val-output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Validation JSONL [default: OUTPUT with _val before the extension].",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Shuffle seed for the split.")
@click.option("--user-col", default=None, help="Column with the user's message (guessed when absent).")
@click.option("--assistant-col", default=None, help="Column with the answer (guessed when absent).")
@click.option("--system", default=None, help="A system message to put first in every example.")
@click.option("--system-col", default=None, help="Column with a per-example system message.")
@click.option("--chosen-col", default=None, help="Preference pairs (DPO): column with the preferred answer.")
@click.option("--rejected-col", default=None, help="Preference pairs (DPO): column with the non-preferred answer.")
@click.option(
    "--skip-bad", is_flag=True, help="Skip records that do not convert (each is reported) instead of stopping."
)
def prepare(
    input: Path,
    output: Path,
    val_split: float,
    val_output: Path | None,
    seed: int,
    user_col: str | None,
    assistant_col: str | None,
    system: str | None,
    system_col: str | None,
    chosen_col: str | None,
    rejected_col: str | None,
    skip_bad: bool,
) -> None:
    """Convert INPUT (CSV, TSV, JSON, JSONL, Parquet, YAML; Alpaca, ShareGPT or columns) to chat JSONL,
    or, from prompt, chosen and rejected columns, to preference pairs for DPO jobs.

    Removes exact duplicates, optionally splits off a validation set, and checks the result with
    `selftune validate`. Nothing is written unless every record converts.
    """
    from selftune.data.prepare import Mapping, write_jsonl
    from selftune.data.prepare import prepare as convert
    from selftune.data.validate import validate_file
    from selftune.errors import PrepareError

    try:
        mapping = Mapping(user_col, assistant_col, system, system_col, chosen_col, rejected_col)
        result = convert(input, mapping, val_split=val_split, seed=seed)
    except PrepareError as e:
        raise click.ClickException(str(e)) from e
    for problem in result.problems[:50]:
        click.echo(("skipped " if skip_bad else "") + problem, err=True)
    if len(result.problems) > 50:
        click.echo(f"... and {len(result.problems) - 50} more", err=True)
    if result.problems and not skip_bad:
        raise click.ClickException(
            f"{len(result.problems)} record(s) of {result.read} could not be converted; nothing written. "
            "Fix them, or pass --skip-bad to leave them out."
        )
    if not result.train:
        raise click.ClickException(f"{input}: no examples found")
    outputs = [(output, result.train)]
    if result.valid:
        outputs.append((val_output or output.with_name(f"{output.stem}_val{output.suffix}"), result.valid))
    for path, examples in outputs:
        write_jsonl(path, examples)
    click.echo(
        f"{input}: {result.read} record(s) ({', '.join(sorted(result.formats))}), "
        f"{result.duplicates} exact duplicate(s) removed"
    )
    for path, examples in outputs:
        click.echo(f"wrote {len(examples)} example(s) to {path}")
        report = validate_file(path)
        click.echo("  " + report.summary(max_lines=5).replace("\n", "\n  "))
    if result.overlap:
        click.echo(
            f"warning: {result.overlap} validation example(s) have a prompt that is also in the training set; "
            "their validation loss will look better than it should",
            err=True,
        )


@click.command()
@file_argument
@click.option("--model", default=None, help="Also count tokens under this base model's chat template.")
@max_len_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@home_option
@friendly_errors
def validate(file: Path, model: str | None, max_seq_len: int | None, as_json: bool, home: Path | None) -> None:
    """Check a training file: every problem, as FILE:LINE, before any job starts.

    The same checks the server runs at upload (the OpenAI cookbook's, with its error keys, plus
    ours). With --model, also token statistics under that model's chat template, and the examples
    that would be truncated or have nothing to train. Exits 1 if there are errors.
    """
    from selftune.data.render import render_file
    from selftune.data.stats import token_stats
    from selftune.data.validate import validate_file

    report = validate_file(file, filename=str(file))
    out: dict[str, Any] = {
        "file": str(file),
        "ok": report.ok,
        "format": report.format,
        "examples": report.n_examples,
        "duplicates": report.n_duplicates,
        "errors": [p.to_dict() for p in report.errors],
        "warnings": [p.to_dict() for p in report.warnings],
    }
    if model is not None and report.ok and report.format in ("chat", "prompts"):
        out["model"], _, tok, limit = load_tokenizer(model, home, max_seq_len)
        out["max_seq_len"] = limit
        rendered = render_file(tok, file, limit)
        out["tokens"] = token_stats(rendered.lengths)
        out["truncated_lines"] = rendered.truncated
        out["no_trainable_tokens_lines"] = rendered.empty
        out["unshown_name_lines"] = rendered.unshown_names
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(report.summary())
        if "tokens" in out:
            _print_token_stats(out, out["max_seq_len"], file)
    if not report.ok:
        sys.exit(1)


def _print_token_stats(out: dict[str, Any], max_seq_len: int, file: Path) -> None:
    t = out["tokens"]
    click.echo(f"tokens per example under {out['model']}: min {t['min']}, mean {t['mean']}, max {t['max']}")
    widest = max((b["count"] for b in t["histogram"]), default=1)
    for b in t["histogram"]:
        bar = "#" * max(1, round(40 * b["count"] / widest))
        click.echo(f"  {b['from']:>6}-{b['to']:<6} {b['count']:>6}  {bar}")
    if out["truncated_lines"]:
        click.echo(
            f"{len(out['truncated_lines'])} example(s) exceed {max_seq_len} tokens and will be truncated: "
            + line_list(out["truncated_lines"], file)
        )
    if out["unshown_name_lines"]:
        click.echo(
            f'{len(out["unshown_name_lines"])} example(s) give a message a "name" that {out["model"]}\'s chat '
            "template does not show, so it is not trained: " + line_list(out["unshown_name_lines"], file)
        )
    if out["no_trainable_tokens_lines"]:
        click.echo(
            f"{len(out['no_trainable_tokens_lines'])} example(s) have no trainable tokens after truncation "
            "and will be skipped: " + line_list(out["no_trainable_tokens_lines"], file)
        )


@click.command()
@file_argument
@model_option
@click.option("--epochs", default="auto", show_default=True, help="n_epochs: a number or 'auto' (OpenAI's rule).")
@click.option("--batch-size", default="auto", show_default=True, help="batch_size: a number or 'auto'.")
@click.option("--price-per-1k", type=float, default=0.008, show_default=True, help="Price per 1,000 billed tokens.")
@click.option("--probe", is_flag=True, help="Measure this machine's training speed first (about a minute).")
@max_len_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@home_option
@friendly_errors
def estimate(
    file: Path,
    model: str | None,
    epochs: str,
    batch_size: str,
    price_per_1k: float,
    probe: bool,
    max_seq_len: int | None,
    as_json: bool,
    home: Path | None,
) -> None:
    """Epochs, steps, billed tokens, cost and wall time of a job on FILE, before running it.

    Billed tokens are tokens x epochs (the tutorials' formula) with the trainer's own count, so they
    equal the job's trained_tokens. The wall time uses this machine's measured speed: from the last
    job that finished here, or from --probe.
    """
    from selftune.data.render import render_file
    from selftune.train.estimate import estimate as estimate_job
    from selftune.train.estimate import load_throughput

    checked(file)
    name, folder, tok, limit = load_tokenizer(model, home, max_seq_len)
    rendered = render_file(tok, file, limit)
    settings = settings_from(home=home)
    qlora = open_catalog(home, None).get_base(name).qlora
    if probe and rendered.format == "prompts":
        raise click.UsageError(
            "--probe measures supervised and DPO training; a reinforcement job's speed depends on its answers "
            "and its grader, and is recorded when one finishes here"
        )
    if probe:
        method = MethodType.DPO if rendered.format == "preference" else MethodType.SUPERVISED
        _probe(name, folder, file, settings.home, auto_or_int(batch_size, "--batch-size"), qlora, method)
    hp = {"n_epochs": auto_or_int(epochs, "--epochs"), "batch_size": auto_or_int(batch_size, "--batch-size")}
    est = estimate_job(rendered, hp, price_per_1k, load_throughput(settings.home, name), folder, qlora=qlora)
    if as_json:
        click.echo(json.dumps({"model": name, **est.to_dict()}, indent=2))
        return
    click.echo(f"{file}: {est.examples} example(s), {est.tokens_per_epoch:,} tokens per epoch under {name}")
    click.echo(f"n_epochs {est.n_epochs}, batch_size {est.batch_size}: {est.steps:,} steps")
    if est.group_size is not None:
        click.echo(
            f"reinforcement: {est.group_size} answers per prompt of up to {est.answer_tokens} tokens; the token "
            "counts below assume every answer takes its whole room (an upper bound)"
        )
    click.echo(f"billed tokens: {est.tokens_per_epoch:,} x {est.n_epochs} = {est.billed_tokens:,}")
    click.echo(f"cost at {price_per_1k:g} per 1K tokens: {est.cost:.4f}")
    if est.fits_memory is not None:
        peak = f"about {est.peak_memory_bytes / 2**30:.1f} GB at its peak; " if est.peak_memory_bytes else ""
        verdict = "fits" if est.fits_memory else "does NOT fit"
        click.echo(f"memory: {peak}{verdict} this machine ({est.memory_plan})")
    if est.seconds is None:
        click.echo("wall time: not measured on this machine yet; run with --probe, or finish one job first")
    else:
        click.echo(
            f"wall time: about {_duration(est.seconds)} at {est.tokens_per_second:g} tokens/s "
            f"(measured by {est.throughput_source})"
        )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _probe(
    model: str, base_dir: Path, file: Path, home: Path, batch_size: str | int, qlora: bool, method: MethodType
) -> None:
    """Train briefly on the first examples of FILE, in the recipe's own process as a worker runs it,
    and record the speed it reports in its ``Done`` event."""
    import tempfile

    from selftune.methods import Hyperparameters, auto_batch_size
    from selftune.train.estimate import record_throughput
    from selftune.train.protocol import Done, Error, Exit, JobDir, TrainConfig, read_events, recipe_command, save_config

    with tempfile.TemporaryDirectory() as tmp:
        rows = [line for line in file.read_text("utf-8").splitlines() if line.strip()]
        bs = batch_size if isinstance(batch_size, int) else auto_batch_size(len(rows))
        sample = Path(tmp) / "probe.jsonl"
        sample.write_text("\n".join(rows[: bs * 6]) + "\n")
        files = JobDir(Path(tmp) / "out")
        cfg = TrainConfig(
            str(base_dir),
            str(sample),
            str(files.root),
            method=method,
            hyperparameters=Hyperparameters.resolve({"n_epochs": 1, "batch_size": bs}, len(rows), method),
            train_name=file.name,
            qlora=qlora,
            quality_prompts=0,  # a probe measures speed; its model is thrown away
        )
        with console.status(f"measuring training speed on {model} (batch size {bs}) ..."):
            config = save_config(cfg)
            with files.log.open("wb") as log:
                rc = subprocess.run(
                    recipe_command(config, method), stdout=log, stderr=subprocess.STDOUT, check=False
                ).returncode
        events = read_events(files.events)
        done = next((e for e in events if isinstance(e, Done)), None)
        if rc != Exit.DONE or done is None:
            error = next((e.message for e in events if isinstance(e, Error)), None)
            tail = "\n".join(files.log.read_text(errors="replace").splitlines()[-10:])
            raise click.ClickException(f"the speed probe failed (exit {rc}): {error or tail}")
    record_throughput(home, model, done.tokens_per_second, bs, "a probe")


@click.command()
@file_argument
@model_option
@click.option("-n", "count", type=int, default=3, show_default=True, help="How many examples to show.")
@max_len_option
@home_option
@friendly_errors
def render(file: Path, model: str | None, count: int, max_seq_len: int | None, home: Path | None) -> None:
    """Show examples exactly as the trainer sees them, with the trained tokens highlighted.

    The text is the model's own chat template; trained tokens (assistant replies, through the
    end-of-turn token) are green, context is dim. When the output is not a terminal, trained spans
    are marked [[like this]] instead.
    """
    from rich.text import Text

    from selftune.data.render import IGNORE, render_file

    checked(file)
    name, _, tok, limit = load_tokenizer(model, home, max_seq_len)
    rendered = render_file(tok, file, limit)
    out = Console(soft_wrap=True)
    for (ids, labels), line in list(zip(rendered.rows, rendered.lines, strict=True))[:count]:
        trained = sum(label != IGNORE for label in labels)
        out.rule(f"{file}:{line}  {len(ids)} tokens, {trained} trained  ({name})")
        text = Text()
        start = 0
        for end in range(1, len(ids) + 1):  # decode runs of same-kind tokens, so characters stay whole
            if end == len(ids) or (labels[end] != IGNORE) != (labels[start] != IGNORE):
                piece = tok.decode(ids[start:end])
                if labels[start] == IGNORE:
                    text.append(piece, style="dim")
                elif out.is_terminal:
                    text.append(piece, style="bold green")
                else:
                    text.append(f"[[{piece}]]")
                start = end
        out.print(text)
    skipped = len(rendered.empty)
    if skipped:
        out.print(f"{skipped} example(s) have nothing to train and are not shown (lines {line_list(rendered.empty)})")
