"""The ``selftune`` command: the server, the data tools, and a client for any OpenAI-compatible API.

    selftune serve [--host 127.0.0.1] [--port 8000]     run the API and the training worker
    selftune worker [--slots 1]                         run only the training worker
    selftune prepare INPUT -o train.jsonl               CSV/JSON/Parquet/Alpaca/ShareGPT -> chat JSONL
    selftune validate | estimate | render FILE          check, cost and show a training file
    selftune files ... | jobs ... | chat MODEL          drive a server through the openai SDK
    selftune models add NAME PATH                       register a HF folder, a GGUF file or a Hub id
    selftune models list [--local]                      the server's models (--local: base models here)
    selftune models rm ID [--local]                     delete a fine-tuned model (--local: unregister a base)
    selftune eval --models BASE ft:... --data held.jsonl  base vs fine-tuned, side by side, with metrics

Server flags also read their ``SELFTUNE_*`` environment variables; client commands read
``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``. Library and API errors become clean one-line messages
here, at the edge.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from selftune import __version__
from selftune.config import Settings
from selftune.errors import SelftuneError

F = TypeVar("F", bound=Callable[..., Any])
console = Console(stderr=True, soft_wrap=True)  # log lines, not a layout: never wrap them


def _settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _friendly_errors(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SelftuneError as e:
            raise click.ClickException(e.message) from e

    return wrapper  # type: ignore[return-value]


home_option = click.option(
    "--home", type=click.Path(path_type=Path), default=None, help="Data directory [env SELFTUNE_HOME]."
)
db_option = click.option("--database-url", default=None, help="SQLAlchemy URL [env SELFTUNE_DATABASE_URL].")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="selftune")
def cli() -> None:
    """selftune: OpenAI-compatible fine-tuning on your own machine.

    \b
    Server:   serve | worker
    Data:     prepare | validate | estimate | render
    Client:   files upload | list | rm    jobs create | list | get | follow | cancel | pause | resume
              chat MODEL
    Models:   models list | rm (on the server; --local: base models here) | add (a base model here)
    """


@cli.command()
@click.option("--host", default=None, help="Address to bind [env SELFTUNE_HOST, default 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [env SELFTUNE_PORT, default 8000].")
@click.option("--api-keys", default=None, help="'KEY[:OWNER],...' [env SELFTUNE_API_KEYS]; none = local mode.")
@click.option("--default-model", default=None, help="Base model to preload and alias [env SELFTUNE_DEFAULT_MODEL].")
@click.option("--no-preload", is_flag=True, help="Do not load the default model at startup.")
@click.option(
    "--no-worker", is_flag=True, help="Do not train here; run `selftune worker` elsewhere [env SELFTUNE_WORKER]."
)
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@home_option
@db_option
@_friendly_errors
def serve(
    host: str | None,
    port: int | None,
    api_keys: str | None,
    default_model: str | None,
    no_preload: bool,
    no_worker: bool,
    log_level: str,
    home: Path | None,
    database_url: str | None,
) -> None:
    """Run the OpenAI-compatible API server."""
    import uvicorn

    from selftune.server.app import create_app

    settings = _settings(
        host=host,
        port=port,
        api_keys=api_keys,
        default_model=default_model,
        home=home,
        database_url=database_url,
        preload=False if no_preload else None,
        worker=False if no_worker else None,
    )
    settings.check_bind()
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    url = f"http://{settings.host}:{settings.port}"
    if settings.local_mode:
        console.print(
            f"[bold]selftune {__version__}[/] in [yellow]local mode[/]: no API keys configured, so it "
            f"listens on {settings.host} only and accepts any key."
        )
    else:
        console.print(f"[bold]selftune {__version__}[/]: API keys required ({len(settings.keys)} configured).")
    console.print(f"data: {settings.home}   API: {url}/v1   default model: {settings.default_model}")
    console.print(f'use it:  OpenAI(base_url="{url}/v1", api_key="...")   dashboard: {url}/')
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=log_level)


@cli.command()
@click.option("--slots", type=int, default=None, help="Jobs trained at once [env SELFTUNE_WORKER_SLOTS, default 1].")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@home_option
@db_option
@_friendly_errors
def worker(slots: int | None, log_level: str, home: Path | None, database_url: str | None) -> None:
    """Run only the training worker.

    It takes jobs from the same database as the server (SELFTUNE_DATABASE_URL) and reads and
    writes the same SELFTUNE_HOME, so on another machine that folder must be shared storage.
    Stop it with Ctrl-C: running jobs save their state and go back to the queue.
    """
    from selftune.server.app import build_services
    from selftune.worker import Worker, run_forever

    settings = _settings(home=home, database_url=database_url, worker_slots=slots)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    services = build_services(settings)
    console.print(f"[bold]selftune worker[/]: data {settings.home}, {settings.worker_slots} slot(s)")
    try:
        run_forever(Worker(settings, services.store, services.blobs, services.catalog))
    finally:
        services.engine.close()
        services.store.close()


def _catalog(home: Path | None, database_url: str | None) -> Any:
    from selftune.catalog import Catalog
    from selftune.store import Store

    settings = _settings(home=home, database_url=database_url)
    settings.home.mkdir(parents=True, exist_ok=True)
    return Catalog(settings, Store(settings.db_url))


# --- data: validate, estimate, render ----------------------------------------------------------------

model_option = click.option(
    "--model", default=None, help="Base model (or alias) whose chat template to use [default: the default model]."
)
max_len_option = click.option(
    "--max-seq-len", type=int, default=1024, show_default=True, help="Longer examples are truncated, as in training."
)
file_argument = click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))


def _tokenizer(model: str | None, home: Path | None) -> tuple[str, Path, Any]:
    """The base model's name, weights folder and tokenizer (converting a GGUF model once, if needed)."""
    from selftune.config import LOCAL_OWNER

    catalog = _catalog(home, None)
    spec = catalog.resolve(model or catalog.settings.default_model, LOCAL_OWNER).base
    with console.status(f"loading the {spec.name} tokenizer ..."):
        return spec.name, catalog.materialize(spec), catalog.tokenizer(spec)


def _checked(file: Path) -> Any:
    """Validate ``file``; print its problems and exit 1 if it has errors."""
    from selftune.data.validate import validate_file

    report = validate_file(file, filename=str(file))
    if not report.ok:
        click.echo(report.summary(), err=True)
        sys.exit(1)
    return report


@cli.command()
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
    skip_bad: bool,
) -> None:
    """Convert INPUT (CSV, TSV, JSON, JSONL, Parquet, YAML; Alpaca, ShareGPT or columns) to chat JSONL.

    Removes exact duplicates, optionally splits off a validation set, and checks the result with
    `selftune validate`. Nothing is written unless every record converts.
    """
    from selftune.data.prepare import Mapping, PrepareError, write_jsonl
    from selftune.data.prepare import prepare as convert
    from selftune.data.validate import validate_file

    try:
        result = convert(input, Mapping(user_col, assistant_col, system, system_col), val_split=val_split, seed=seed)
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


@cli.command()
@file_argument
@click.option("--model", default=None, help="Also count tokens under this base model's chat template.")
@max_len_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@home_option
@_friendly_errors
def validate(file: Path, model: str | None, max_seq_len: int, as_json: bool, home: Path | None) -> None:
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
    if model is not None and report.ok and report.format == "chat":
        out["model"], _, tok = _tokenizer(model, home)
        rendered = render_file(tok, file, max_seq_len)
        out["tokens"] = token_stats(rendered.lengths)
        out["truncated_lines"] = rendered.truncated
        out["no_trainable_tokens_lines"] = rendered.empty
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(report.summary())
        if "tokens" in out:
            _print_token_stats(out, max_seq_len)
    if not report.ok:
        sys.exit(1)


def _print_token_stats(out: dict[str, Any], max_seq_len: int) -> None:
    t = out["tokens"]
    click.echo(f"tokens per example under {out['model']}: min {t['min']}, mean {t['mean']}, max {t['max']}")
    widest = max((b["count"] for b in t["histogram"]), default=1)
    for b in t["histogram"]:
        bar = "#" * max(1, round(40 * b["count"] / widest))
        click.echo(f"  {b['from']:>6}-{b['to']:<6} {b['count']:>6}  {bar}")
    if out["truncated_lines"]:
        click.echo(
            f"{len(out['truncated_lines'])} example(s) exceed {max_seq_len} tokens and will be truncated "
            f"(lines {_lines(out['truncated_lines'])})"
        )
    if out["no_trainable_tokens_lines"]:
        click.echo(
            f"{len(out['no_trainable_tokens_lines'])} example(s) have no trainable tokens after truncation "
            f"and will be skipped (lines {_lines(out['no_trainable_tokens_lines'])})"
        )


def _lines(lines: list[int]) -> str:
    return ", ".join(map(str, lines[:10])) + (" ..." if len(lines) > 10 else "")


@cli.command()
@file_argument
@model_option
@click.option("--epochs", default="auto", show_default=True, help="n_epochs: a number or 'auto' (OpenAI's rule).")
@click.option("--batch-size", default="auto", show_default=True, help="batch_size: a number or 'auto'.")
@click.option("--price-per-1k", type=float, default=0.008, show_default=True, help="Price per 1,000 billed tokens.")
@click.option("--probe", is_flag=True, help="Measure this machine's training speed first (about a minute).")
@max_len_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@home_option
@_friendly_errors
def estimate(
    file: Path,
    model: str | None,
    epochs: str,
    batch_size: str,
    price_per_1k: float,
    probe: bool,
    max_seq_len: int,
    as_json: bool,
    home: Path | None,
) -> None:
    """Epochs, steps, billed tokens, cost and wall time of a job on FILE, before running it.

    Billed tokens are tokens x epochs (the tutorials' formula) with the trainer's own count, so they
    equal the job's trained_tokens. The wall time uses this machine's measured speed: from the last
    job that finished here, or from --probe.
    """
    from selftune.data.render import render_file
    from selftune.data.stats import estimate as estimate_job
    from selftune.data.stats import load_throughput

    _checked(file)
    name, folder, tok = _tokenizer(model, home)
    rendered = render_file(tok, file, max_seq_len)
    settings = _settings(home=home)
    if probe:
        _probe(name, folder, file, settings.home, _auto_or_int(batch_size, "--batch-size"))
    hp = {"n_epochs": _auto_or_int(epochs, "--epochs"), "batch_size": _auto_or_int(batch_size, "--batch-size")}
    est = estimate_job(rendered, hp, price_per_1k, load_throughput(settings.home, name))
    if as_json:
        click.echo(json.dumps({"model": name, **est.to_dict()}, indent=2))
        return
    click.echo(f"{file}: {est.examples} example(s), {est.tokens_per_epoch:,} tokens per epoch under {name}")
    click.echo(f"n_epochs {est.n_epochs}, batch_size {est.batch_size}: {est.steps:,} steps")
    click.echo(f"billed tokens: {est.tokens_per_epoch:,} x {est.n_epochs} = {est.billed_tokens:,}")
    click.echo(f"cost at {price_per_1k:g} per 1K tokens: {est.cost:.4f}")
    if est.seconds is None:
        click.echo("wall time: not measured on this machine yet; run with --probe, or finish one job first")
    else:
        click.echo(
            f"wall time: about {_duration(est.seconds)} at {est.tokens_per_second:g} tokens/s "
            f"(measured by {est.throughput_source})"
        )


def _auto_or_int(value: str, flag: str) -> str | int:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither 'auto' nor a whole number", param_hint=flag) from None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No weight-loading progress bars or deprecation notices in the middle of our output."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _probe(model: str, base_dir: Path, file: Path, home: Path, batch_size: str | int) -> None:
    """Train briefly on the first examples of FILE and record the recipe's measured tokens/s."""
    import tempfile

    from selftune.data.stats import record_throughput
    from selftune.train import lora
    from selftune.train.config import TrainConfig, auto_batch_size

    with tempfile.TemporaryDirectory() as tmp:
        lines = [line for line in file.read_text("utf-8").splitlines() if line.strip()]
        bs = batch_size if isinstance(batch_size, int) else auto_batch_size(len(lines))
        sample = Path(tmp) / "probe.jsonl"
        sample.write_text("\n".join(lines[: bs * 6]) + "\n")
        cfg = TrainConfig(str(base_dir), str(sample), str(Path(tmp) / "out"), n_epochs=1, batch_size=bs)
        with console.status(f"measuring training speed on {model} (batch size {bs}) ..."), _quiet_transformers():
            lora.main(cfg)
        done = json.loads((Path(tmp) / "out" / "events.jsonl").read_text().splitlines()[-1])
    record_throughput(home, model, done["data"].get("tokens_per_second"), bs, "a probe")


@cli.command()
@file_argument
@model_option
@click.option("-n", "count", type=int, default=3, show_default=True, help="How many examples to show.")
@max_len_option
@home_option
@_friendly_errors
def render(file: Path, model: str | None, count: int, max_seq_len: int, home: Path | None) -> None:
    """Show examples exactly as the trainer sees them, with the trained tokens highlighted.

    The text is the model's own chat template; trained tokens (assistant replies, through the
    end-of-turn token) are green, context is dim. When the output is not a terminal, trained spans
    are marked [[like this]] instead.
    """
    from rich.text import Text

    from selftune.data.render import IGNORE, render_file

    _checked(file)
    name, _, tok = _tokenizer(model, home)
    rendered = render_file(tok, file, max_seq_len)
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
        out.print(f"{skipped} example(s) have nothing to train and are not shown (lines {_lines(rendered.empty)})")


# --- client commands: any OpenAI-compatible server, through the openai SDK ---------------------------

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
FINAL = ("succeeded", "failed", "cancelled")


def client_options(fn: F) -> F:
    fn = click.option(
        "--api-key",
        envvar="OPENAI_API_KEY",
        default="local",
        show_default=False,
        help="API key [env OPENAI_API_KEY; any value in local mode].",
    )(fn)
    fn = click.option(
        "--base-url",
        envvar="OPENAI_BASE_URL",
        default=DEFAULT_BASE_URL,
        show_default=True,
        help="Server [env OPENAI_BASE_URL]; https://api.openai.com/v1 works too.",
    )(fn)
    return fn


def _client(ctx: click.Context) -> Any:
    import openai

    return openai.OpenAI(base_url=ctx.obj["base_url"], api_key=ctx.obj["api_key"], max_retries=2)


def _api_errors(fn: F) -> F:
    """SDK errors as one clean line: what the server said, or that it cannot be reached."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import openai

        try:
            return fn(*args, **kwargs)
        except openai.APIConnectionError as e:
            ctx = click.get_current_context()
            raise click.ClickException(
                f"cannot reach {ctx.obj['base_url']}: is `selftune serve` running? ({e.__cause__ or e})"
            ) from e
        except openai.APIStatusError as e:
            body = e.body if isinstance(e.body, dict) else {}
            raise click.ClickException(f"{e.status_code}: {body.get('message') or e.message}") from e

    return wrapper  # type: ignore[return-value]


def _group_with_client(name: str, help: str) -> click.Group:
    @cli.group(name, help=help)
    @client_options
    @click.pass_context
    def group(ctx: click.Context, base_url: str, api_key: str) -> None:
        ctx.obj = {"base_url": base_url, "api_key": api_key}

    return group


files = _group_with_client("files", "Training files on a server: upload, list, rm.")
jobs = _group_with_client("jobs", "Fine-tuning jobs on a server: create, list, get, follow, cancel, pause, resume.")


def _table(*columns: str) -> Table:
    """Ids and model names are copied from here into other commands: never cut or wrap them."""
    table = Table()
    for name in columns:
        table.add_column(name, no_wrap=name in ("id", "model", "fine_tuned_model"))
    return table


def _print(table: Table) -> None:
    Console(width=None if sys.stdout.isatty() else 250).print(table)


def _upload(client: Any, path: Path) -> str:
    """Validate locally (refusing a broken file before sending anything), then upload."""
    _checked(path)
    with path.open("rb") as f:
        return str(client.files.create(file=(path.name, f), purpose="fine-tune").id)


@files.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
@_api_errors
def files_upload(ctx: click.Context, path: Path) -> None:
    """Validate and upload a training file; prints its id."""
    click.echo(_upload(_client(ctx), path))


@files.command("list")
@click.pass_context
@_api_errors
def files_list(ctx: click.Context) -> None:
    """List uploaded files, newest first."""
    table = _table("id", "filename", "purpose", "bytes", "created")
    for f in _client(ctx).files.list():
        table.add_row(
            f.id, f.filename, f.purpose, f"{f.bytes:,}", time.strftime("%Y-%m-%d %H:%M", time.localtime(f.created_at))
        )
    _print(table)


@files.command("rm")
@click.argument("file_id")
@click.pass_context
@_api_errors
def files_rm(ctx: click.Context, file_id: str) -> None:
    """Delete a file."""
    _client(ctx).files.delete(file_id)
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
@click.option("--suffix", default=None, help="Up to 64 characters in the model name.")
@click.option("--seed", type=int, default=None)
@click.option("--follow", is_flag=True, help="Then follow it to the end (as `jobs follow`).")
@click.pass_context
@_api_errors
def jobs_create(
    ctx: click.Context,
    model: str,
    training: str,
    validation: str | None,
    epochs: str | None,
    batch_size: str | None,
    lr_multiplier: float | None,
    suffix: str | None,
    seed: int | None,
    follow: bool,
) -> None:
    """Create a fine-tuning job; prints its id. Local files are validated first and uploaded."""
    client = _client(ctx)

    def file_id(value: str) -> str:
        return _upload(client, Path(value)) if Path(value).is_file() else value

    hp: dict[str, Any] = {}
    if epochs is not None:
        hp["n_epochs"] = _auto_or_int(epochs, "--epochs")
    if batch_size is not None:
        hp["batch_size"] = _auto_or_int(batch_size, "--batch-size")
    if lr_multiplier is not None:
        hp["learning_rate_multiplier"] = lr_multiplier
    kwargs: dict[str, Any] = {"model": model, "training_file": file_id(training)}
    if validation:
        kwargs["validation_file"] = file_id(validation)
    if hp:
        kwargs["method"] = {"type": "supervised", "supervised": {"hyperparameters": hp}}
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
@_api_errors
def jobs_list(ctx: click.Context, limit: int) -> None:
    """List jobs, newest first."""
    table = _table("id", "status", "model", "fine_tuned_model", "created")
    for job in _client(ctx).fine_tuning.jobs.list(limit=limit).data:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(job.created_at))
        table.add_row(job.id, job.status, job.model, job.fine_tuned_model or "", created)
    _print(table)


@jobs.command("get")
@click.argument("job_id")
@click.pass_context
@_api_errors
def jobs_get(ctx: click.Context, job_id: str) -> None:
    """Print a job as JSON."""
    click.echo(_client(ctx).fine_tuning.jobs.retrieve(job_id).model_dump_json(indent=2))


def _action(verb: str) -> None:
    @jobs.command(verb, help=f"{verb.capitalize()} a job; prints its new status.")
    @click.argument("job_id")
    @click.pass_context
    @_api_errors
    def command(ctx: click.Context, job_id: str) -> None:
        job = getattr(_client(ctx).fine_tuning.jobs, verb)(job_id)
        click.echo(f"{job.id}: {job.status}")


for _verb in ("cancel", "pause", "resume"):
    _action(_verb)


@jobs.command("follow")
@click.argument("job_id")
@click.pass_context
@_api_errors
def jobs_follow(ctx: click.Context, job_id: str) -> None:
    """Follow a job: its messages, a progress bar with losses and ETA, then the model id.

    Exits 1 if the job fails or is cancelled.
    """
    _follow(_client(ctx), job_id)


def _follow(client: Any, job_id: str) -> None:
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
            if job.status in FINAL:
                break
            time.sleep(1)
    if job.status != "succeeded":
        reason = f": {job.error.message}" if job.error and job.error.message else ""
        raise click.ClickException(f"job {job_id} {job.status}{reason}")
    click.echo(job.fine_tuned_model)


@cli.command()
@click.argument("model")
@click.option("--system", default=None, help="A system message for the conversation.")
@click.option("--max-tokens", type=int, default=512, show_default=True)
@click.option("--temperature", type=float, default=0.7, show_default=True)
@client_options
@click.pass_context
@_api_errors
def chat(
    ctx: click.Context, model: str, system: str | None, max_tokens: int, temperature: float, base_url: str, api_key: str
) -> None:
    """Chat with MODEL, streaming; one line is one turn (Ctrl-D to end). Reads stdin when piped."""
    ctx.obj = {"base_url": base_url, "api_key": api_key}
    client = _client(ctx)
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


@cli.group()
@client_options
@click.pass_context
def models(ctx: click.Context, base_url: str, api_key: str) -> None:
    """Models: list and rm on a server (--local: base models on this machine); add a base model here."""
    ctx.obj = {"base_url": base_url, "api_key": api_key}


@models.command("add")
@click.argument("name")
@click.argument("path")
@home_option
@db_option
@_friendly_errors
def models_add(name: str, path: str, home: Path | None, database_url: str | None) -> None:
    """Register base model NAME from PATH: a Hugging Face folder, a .gguf file, or a Hub id.

    GGUF files are converted once to safetensors (later loads take under a second).
    """
    t0 = time.perf_counter()
    with console.status(f"preparing {name} ..."):
        spec, folder = _catalog(home, database_url).add(name, path)
    click.echo(f"added {spec.name} ({spec.source}) -> {folder} in {time.perf_counter() - t0:.1f}s")


@models.command("list")
@click.option("--local", is_flag=True, help="Base models registered on this machine, with their sources and aliases.")
@home_option
@db_option
@click.pass_context
@_api_errors
@_friendly_errors
def models_list(ctx: click.Context, local: bool, home: Path | None, database_url: str | None) -> None:
    """List the server's models (base and fine-tuned), or with --local the base models here."""
    if not local:
        table = _table("id", "owned_by", "created")
        for m in _client(ctx).models.list():
            table.add_row(m.id, m.owned_by, time.strftime("%Y-%m-%d %H:%M", time.localtime(m.created)))
        _print(table)
        return
    catalog = _catalog(home, database_url)
    aliases = catalog.aliases()
    table = _table("model", "source", "ready", "aliases")
    for spec in catalog.base_models():
        ready = (catalog.weights_dir(spec) / "config.json").is_file()
        names = ", ".join(sorted(a for a, t in aliases.items() if t == spec.name))
        table.add_row(spec.name, spec.source, "yes" if ready else "on first use", names)
    _print(table)


@models.command("rm")
@click.argument("name")
@click.option("--local", is_flag=True, help="Unregister a base model added here with `models add`.")
@home_option
@db_option
@click.pass_context
@_api_errors
@_friendly_errors
def models_rm(ctx: click.Context, name: str, local: bool, home: Path | None, database_url: str | None) -> None:
    """Delete a fine-tuned model on the server, or with --local unregister base model NAME here."""
    if local:
        _catalog(home, database_url).remove(name)
    else:
        _client(ctx).models.delete(name)
    click.echo(f"removed {name}")


@cli.command("eval")
@click.argument("more_models", nargs=-1, metavar="[MODEL]...")
@click.option("--models", "-m", "models_", multiple=True, help="A model to compare; the first is the baseline.")
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Held-out examples in the training format; the last assistant message is the reference.",
)
@click.option("--limit", type=int, default=None, help="Only the first N examples.")
@click.option("--judge", default=None, help="Also have this model pick the better answer of each pair.")
@click.option("--concurrency", type=int, default=4, show_default=True, help="Requests in flight per model.")
@click.option("--max-tokens", type=int, default=None, help="Answer length limit [default: about 2x the reference].")
@click.option("--temperature", type=float, default=0.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="For sampling, bootstrap and the judge's order.")
@click.option("--no-embeddings", is_flag=True, help="Skip embedding similarity (it loads MiniLM, about 2 s).")
@click.option("--show", type=int, default=10, show_default=True, help="Examples in the terminal table (0: none).")
@click.option("--html", "html_out", type=click.Path(dir_okay=False, path_type=Path), help="Write an HTML report.")
@click.option("--markdown", "md_out", type=click.Path(dir_okay=False, path_type=Path), help="Write a Markdown report.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON report.")
@client_options
@click.pass_context
@_api_errors
@_friendly_errors
def eval_(
    ctx: click.Context,
    more_models: tuple[str, ...],
    models_: tuple[str, ...],
    data: Path,
    limit: int | None,
    judge: str | None,
    concurrency: int,
    max_tokens: int | None,
    temperature: float,
    seed: int,
    no_embeddings: bool,
    show: int,
    html_out: Path | None,
    md_out: Path | None,
    json_out: Path | None,
    base_url: str,
    api_key: str,
) -> None:
    """Compare models on held-out data: the base first, then fine-tuned ones.

    \b
        selftune eval --models SmolLM2-135M-Instruct ft:SmolLM2-135M-Instruct:local:faq:AbC123xy \\
                      --data train_val.jsonl --html report.html

    Each example's conversation, without its last assistant message, is sent to every model through
    the OpenAI API (selftune or any compatible server); the answers are scored against that message.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from selftune.blobs import write_atomic
    from selftune.eval import evaluate, load_examples
    from selftune.eval.core import default_max_tokens
    from selftune.eval.remote import api_answerer
    from selftune.eval.report import print_report, to_html, to_json, to_markdown

    names = list(dict.fromkeys([*models_, *more_models]))
    if not names:
        raise click.UsageError("name at least one model: --models BASE ft:...")
    ctx.obj = {"base_url": base_url, "api_key": api_key}
    client = _client(ctx)
    examples = load_examples(data, limit=limit)
    if not examples:
        raise click.ClickException(f"{data} has no examples")
    limits = [max_tokens or default_max_tokens(ex.reference) for ex in examples]
    answerers = {
        name: api_answerer(client, name, max_tokens=limits, concurrency=concurrency, temperature=temperature, seed=seed)
        for name in names
    }
    judge_with = None
    if judge:
        judge_with = (judge, api_answerer(client, judge, max_tokens=16, concurrency=concurrency, seed=seed))
    total = len(examples) * (len(names) + (len(names) - 1 if judge else 0))
    with Progress(
        TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    ) as progress:
        task = progress.add_task("eval", total=total)
        report = evaluate(
            examples,
            answerers,
            judge_with=judge_with,
            embeddings=not no_embeddings,
            data=str(data),
            seed=seed,
            tick=lambda: progress.advance(task),
        )
    print_report(report, Console(soft_wrap=False), show=show)
    for path, text in ((html_out, to_html), (md_out, to_markdown), (json_out, to_json)):
        if path is not None:
            write_atomic(path, text(report))
            console.print(f"wrote {path}")


def main() -> None:
    try:
        cli(prog_name="selftune")
    except KeyboardInterrupt:
        sys.exit(130)
