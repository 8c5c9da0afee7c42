"""Client commands for any OpenAI-compatible server, through the ``openai`` SDK: files, jobs, chat,
models (``models add`` and ``--local`` act on this machine's catalog instead)."""

from __future__ import annotations

import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import click

from selftune.cli.common import (
    api_errors,
    auto_or_int,
    client_options,
    console,
    db_option,
    friendly_errors,
    group_with_client,
    home_option,
    job_method,
    new_table,
    open_catalog,
    print_table,
    reinforcement_options,
    sdk_client,
    upload_file,
)
from selftune.methods import TRAINED
from selftune.statuses import JOBS, JobStatus

files = group_with_client("files", "Files on a server.")
jobs = group_with_client("jobs", "Fine-tuning jobs on a server.")


@files.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
@api_errors
def files_upload(ctx: click.Context, path: Path) -> None:
    """Validate and upload a training file; prints its id."""
    click.echo(upload_file(sdk_client(ctx), path))


@files.command("list")
@click.pass_context
@api_errors
def files_list(ctx: click.Context) -> None:
    """List uploaded files, newest first."""
    table = new_table("id", "filename", "purpose", "bytes", "created")
    for f in sdk_client(ctx).files.list():
        table.add_row(
            f.id, f.filename, f.purpose, f"{f.bytes:,}", time.strftime("%Y-%m-%d %H:%M", time.localtime(f.created_at))
        )
    print_table(table)


@files.command("rm")
@click.argument("file_id")
@click.pass_context
@api_errors
def files_rm(ctx: click.Context, file_id: str) -> None:
    """Delete a file."""
    sdk_client(ctx).files.delete(file_id)
    click.echo(f"deleted {file_id}")


@jobs.command("create")
@click.option("--model", required=True, help="Base model, alias (gpt-3.5-turbo) or ft: model to continue.")
@click.option(
    "--training-file", "training", required=True, help="A local JSONL path (validated, uploaded) or a file id."
)
@click.option("--validation-file", "validation", default=None, help="A local JSONL path or a file id.")
@click.option("--epochs", default=None, help="n_epochs: a number or 'auto'.")
@click.option("--batch-size", default=None, help="batch_size: a number or 'auto'.")
@click.option("--lr-multiplier", type=float, default=None, help="learning_rate_multiplier.")
@click.option(
    "--method",
    type=click.Choice([m.value for m in TRAINED]),
    default=None,
    help="[default: dpo for a local file of preference pairs, else supervised]",
)
@click.option("--beta", type=float, default=None, help="DPO's beta, in (0, 2] [default: auto, 0.1].")
@click.option(
    "--rpo-alpha",
    type=float,
    default=None,
    help="DPO's anchor: weight of the next-token loss on the preferred output, 0 for none [default: auto].",
)
@reinforcement_options
@click.option("--suffix", default=None, help="Up to 64 characters in the model name.")
@click.option("--seed", type=int, default=None)
@click.option("--follow", is_flag=True, help="Then follow it to the end (as `jobs follow`).")
@click.pass_context
@api_errors
def jobs_create(
    ctx: click.Context,
    model: str,
    training: str,
    validation: str | None,
    epochs: str | None,
    batch_size: str | None,
    lr_multiplier: float | None,
    method: str | None,
    beta: float | None,
    rpo_alpha: float | None,
    grader: Path | None,
    compute_multiplier: float | None,
    eval_interval: int | None,
    eval_samples: int | None,
    reasoning_effort: str | None,
    suffix: str | None,
    seed: int | None,
    follow: bool,
) -> None:
    """Create a fine-tuning job; prints its id. Local files are validated first and uploaded."""
    client = sdk_client(ctx)

    def file_id(value: str) -> str:
        return upload_file(client, Path(value)) if Path(value).is_file() else value

    hp: dict[str, Any] = {}
    if epochs is not None:
        hp["n_epochs"] = auto_or_int(epochs, "--epochs")
    if batch_size is not None:
        hp["batch_size"] = auto_or_int(batch_size, "--batch-size")
    if lr_multiplier is not None:
        hp["learning_rate_multiplier"] = lr_multiplier
    specific = {
        "beta": beta,
        "rpo_alpha": rpo_alpha,
        "compute_multiplier": compute_multiplier,
        "eval_interval": eval_interval,
        "eval_samples": eval_samples,
        "reasoning_effort": reasoning_effort,
    }
    method, settings = job_method(method, Path(training), grader, hp, specific)
    kwargs: dict[str, Any] = {"model": model, "training_file": file_id(training)}
    if validation:
        kwargs["validation_file"] = file_id(validation)
    if hp or method != "supervised":
        kwargs["method"] = {"type": method, method: settings}
    if suffix:
        kwargs["suffix"] = suffix
    if seed is not None:
        kwargs["seed"] = seed
    job = client.fine_tuning.jobs.create(**kwargs)
    click.echo(job.id)
    if follow:
        _follow(client, job.id)


@jobs.command("list")
@click.option("--limit", type=int, default=20, show_default=True)
@click.pass_context
@api_errors
def jobs_list(ctx: click.Context, limit: int) -> None:
    """List jobs, newest first."""
    table = new_table("id", "status", "model", "fine_tuned_model", "created")
    for job in sdk_client(ctx).fine_tuning.jobs.list(limit=limit).data:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(job.created_at))
        table.add_row(job.id, job.status, job.model, job.fine_tuned_model or "", created)
    print_table(table)


@jobs.command("get")
@click.argument("job_id")
@click.pass_context
@api_errors
def jobs_get(ctx: click.Context, job_id: str) -> None:
    """Print a job as JSON."""
    click.echo(sdk_client(ctx).fine_tuning.jobs.retrieve(job_id).model_dump_json(indent=2))


def _action(verb: str) -> None:
    @jobs.command(verb, help=f"{verb.capitalize()} a job; prints its new status.")
    @click.argument("job_id")
    @click.pass_context
    @api_errors
    def command(ctx: click.Context, job_id: str) -> None:
        job = getattr(sdk_client(ctx).fine_tuning.jobs, verb)(job_id)
        click.echo(f"{job.id}: {job.status}")


for _verb in ("cancel", "pause", "resume"):
    _action(_verb)


@jobs.command("follow")
@click.argument("job_id")
@click.pass_context
@api_errors
def jobs_follow(ctx: click.Context, job_id: str) -> None:
    """Follow a job: its messages, a progress bar with losses and ETA, then the model id.

    Exits 1 if the job fails or is cancelled.
    """
    _follow(sdk_client(ctx), job_id)


def _follow(client: Any, job_id: str) -> None:
    job = follow_job(client, job_id)
    if job.status != JobStatus.SUCCEEDED:
        reason = f": {job.error.message}" if job.error and job.error.message else ""
        raise click.ClickException(f"job {job_id} {job.status}{reason}")
    quality = (job.model_extra or {}).get("quality") or {}
    if quality.get("verdict", "ok") != "ok":
        click.secho(
            f"warning: {job.fine_tuned_model} came out worse than its base: {quality['message']}", fg="yellow", err=True
        )
    click.echo(job.fine_tuned_model)


def follow_job(client: Any, job_id: str) -> Any:
    """Show a job's messages and a progress bar with its losses until it ends; return the final job."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    seen: set[str] = set()
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    task = progress.add_task("training", total=None, loss="")
    with progress:
        while True:
            job = client.fine_tuning.jobs.retrieve(job_id)
            fresh = [e for e in client.fine_tuning.jobs.list_events(job_id, limit=100).data if e.id not in seen]
            for event in reversed(fresh):
                seen.add(event.id)
                if event.type == "metrics" and event.data:
                    d = dict(event.data)
                    loss = f"loss {d['train_loss']:.3f}"
                    if "valid_loss" in d:
                        loss += f"  valid {d['valid_loss']:.3f}"
                    progress.update(task, completed=d["step"], total=d.get("total_steps"), loss=loss)
                else:
                    progress.console.print(f"[dim]{event.level}[/] {event.message}")
            if job.status in JOBS.terminal:
                return job
            time.sleep(1)


@click.command()
@click.argument("model")
@click.option("--system", default=None, help="A system message for the conversation.")
@click.option("--max-tokens", type=int, default=512, show_default=True)
@click.option("--temperature", type=float, default=0.7, show_default=True)
@client_options
@click.pass_context
@api_errors
def chat(
    ctx: click.Context, model: str, system: str | None, max_tokens: int, temperature: float, base_url: str, api_key: str
) -> None:
    """Chat with MODEL, streaming; one line is one turn (Ctrl-D to end). Reads stdin when piped."""
    ctx.obj = {"base_url": base_url, "api_key": api_key}
    client = sdk_client(ctx)
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        reply = []
        stream = client.chat.completions.create(
            model=model, messages=messages, stream=True, max_tokens=max_tokens, temperature=temperature
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                reply.append(chunk.choices[0].delta.content)
                click.echo(chunk.choices[0].delta.content, nl=False)
        click.echo()
        messages.append({"role": "assistant", "content": "".join(reply)})


@click.command()
@client_options
@click.pass_context
@api_errors
def workers(ctx: click.Context, base_url: str, api_key: str) -> None:
    """List the training workers of a server's database: host, device, memory offered, jobs."""
    ctx.obj = {"base_url": base_url, "api_key": api_key}
    listing = sdk_client(ctx).get("/workers", cast_to=object)
    table = new_table("worker", "device", "memory", "slots", "processes", "group", "jobs", "last seen")
    for w in listing["data"]:
        device = f"{w['device']} x{w['gpus']}" if w["gpus"] else w["device"]
        seen = time.strftime("%H:%M:%S", time.localtime(w["last_seen_at"]))
        jobs_here = ", ".join(w["jobs"]) or str(w["active_jobs"])
        group = f"{w['group']} ({w['nnodes']} machines)" if w.get("group") else ""
        memory = f"{w['memory_bytes'] / 2**30:.1f} GB"
        table.add_row(w["id"], device, memory, str(w["slots"]), str(w.get("nproc", 1)), group, jobs_here, seen)
    print_table(table)


@click.group()
@client_options
@click.pass_context
def models(ctx: click.Context, base_url: str, api_key: str) -> None:
    """Models on a server, or with --local the base models of this machine."""
    ctx.obj = {"base_url": base_url, "api_key": api_key}


@models.command("add")
@click.argument("name")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option(
    "--chat-template",
    "chat_template",
    default=None,
    help="A Jinja chat template file, or the name of one selftune ships (gemma), for a model without one.",
)
@click.option("--sha256", default=None, help="Check the GGUF file (or the parts joined) against this SHA-256.")
@click.option(
    "--qlora",
    is_flag=True,
    help="Train its jobs on a 4-bit base (QLoRA, bitsandbytes): a quarter of the weights' memory, slower steps.",
)
@home_option
@db_option
@friendly_errors
def models_add(
    name: str,
    paths: tuple[str, ...],
    chat_template: str | None,
    sha256: str | None,
    qlora: bool,
    home: Path | None,
    database_url: str | None,
) -> None:
    """Register base model NAME from PATH: a Hugging Face folder, a .gguf file (or its parts, in
    order, joined into one), an s3://bucket/key URL of either, or a Hub id.

    GGUF files are converted once to safetensors (later loads take under a second), and folders of
    Llama, Mistral or Qwen2 models with a byte-level BPE tokenizer once to a float16 GGUF for llama.cpp.
    The chat template is checked now (it must prompt a reply, render prefixes as prefixes and end
    each turn with a stop token), so a model selftune cannot train is refused here, not mid-job.
    """
    t0 = time.perf_counter()
    template = read_template(chat_template) if chat_template else None
    with console.status(f"preparing {name} ..."):
        done = open_catalog(home, database_url).add(
            name, list(paths), chat_template=template, sha256=sha256, qlora=qlora
        )
    click.echo(f"added {done.spec.name} ({done.spec.source}) -> {done.folder} in {time.perf_counter() - t0:.1f}s")
    click.echo(f"llama.cpp serves it from {done.gguf}" if done.gguf else "the PyTorch engine serves it (no GGUF)")
    stop = done.template
    click.echo(
        f"chat template checked; an assistant turn ends with token {stop.end_of_turn}"
        + (" (added to its stop tokens)" if stop.missing_stop else "")
        + ("; it adds a default system prompt to conversations without one" if stop.injected_system else "")
    )
    if qlora:
        click.echo("its jobs train on a 4-bit base (QLoRA); served and exported at full precision")


def read_template(option: str) -> str:
    """``--chat-template``: a file, or one of the templates shipped in ``selftune/templates``."""
    path = Path(option).expanduser()
    if path.is_file():
        return path.read_text("utf-8")
    shipped = resources.files("selftune").joinpath("templates", f"{option}.jinja")
    if shipped.is_file():
        return shipped.read_text("utf-8")
    names = sorted(p.name.removesuffix(".jinja") for p in resources.files("selftune").joinpath("templates").iterdir())
    raise click.BadParameter(f"{option}: no such file, nor a shipped template ({', '.join(names)})")


@models.command("list")
@click.option("--local", is_flag=True, help="Base models registered on this machine, with their sources and aliases.")
@home_option
@db_option
@click.pass_context
@api_errors
@friendly_errors
def models_list(ctx: click.Context, local: bool, home: Path | None, database_url: str | None) -> None:
    """List the server's models (base and fine-tuned), or with --local the base models here."""
    if not local:
        table = new_table("id", "owned_by", "created")
        for m in sdk_client(ctx).models.list():
            table.add_row(m.id, m.owned_by, time.strftime("%Y-%m-%d %H:%M", time.localtime(m.created)))
        print_table(table)
        return
    catalog = open_catalog(home, database_url)
    aliases = catalog.aliases()
    table = new_table("model", "source", "ready", "trains on", "aliases")
    for spec in catalog.base_models():
        ready = (catalog.weights_dir(spec) / "config.json").is_file()
        names = ", ".join(sorted(a for a, t in aliases.items() if t == spec.name))
        base = "4-bit base (--qlora)" if spec.qlora else "its weights"
        table.add_row(spec.name, spec.source, "yes" if ready else "on first use", base, names)
    print_table(table)


@models.command("rm")
@click.argument("name")
@click.option("--local", is_flag=True, help="Unregister a base model added here with `models add`.")
@home_option
@db_option
@click.pass_context
@api_errors
@friendly_errors
def models_rm(ctx: click.Context, name: str, local: bool, home: Path | None, database_url: str | None) -> None:
    """Delete a fine-tuned model on the server, or with --local unregister base model NAME here."""
    if local:
        open_catalog(home, database_url).remove(name)
    else:
        sdk_client(ctx).models.delete(name)
    click.echo(f"removed {name}")
