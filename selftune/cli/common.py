"""What the CLI's commands share: the console, options, error conversion, and small helpers.

Library and API errors become clean one-line messages here, at the edge (``friendly_errors`` for
selftune's own, ``api_errors`` for the SDK's).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from selftune.config import Settings
from selftune.errors import SelftuneError

F = TypeVar("F", bound=Callable[..., Any])
console = Console(stderr=True, soft_wrap=True)  # log lines, not a layout: never wrap them


def settings_from(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def friendly_errors(fn: F) -> F:
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


def open_catalog(home: Path | None, database_url: str | None) -> Any:
    """This machine's catalog of base models (no server needed)."""
    from selftune.services import open_core

    return open_core(settings_from(home=home, database_url=database_url)).catalog


model_option = click.option(
    "--model", default=None, help="Base model (or alias) whose chat template to use [default: the default model]."
)
max_len_option = click.option(
    "--max-seq-len",
    type=int,
    default=None,
    help="Longer examples are truncated, as in training [default: the model's context length, "
    "capped by SELFTUNE_MAX_SEQ_LEN].",
)
file_argument = click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))


def load_tokenizer(model: str | None, home: Path | None, max_seq_len: int | None) -> tuple[str, Path, Any, int]:
    """The base model's name, weights folder, tokenizer (converting a GGUF model once, if needed) and
    sequence limit: ``max_seq_len`` if given, else what a job on this model would use."""
    from selftune.config import LOCAL_OWNER

    catalog = open_catalog(home, None)
    spec = catalog.resolve(model or catalog.settings.default_model, LOCAL_OWNER).base
    with console.status(f"loading the {spec.name} tokenizer ..."):
        folder, tokenizer = catalog.materialize(spec), catalog.tokenizer(spec)
    return spec.name, folder, tokenizer, max_seq_len or catalog.sequence_limit(spec)


def checked(file: Path) -> Any:
    """Validate ``file``; print its problems and exit 1 if it has errors."""
    from selftune.data.validate import validate_file

    report = validate_file(file, filename=str(file))
    if not report.ok:
        click.echo(report.summary(), err=True)
        sys.exit(1)
    return report


def line_list(lines: list[int], file: Path | str | None = None) -> str:
    """The first ten line numbers, as ``FILE:LINE`` when the file is given."""
    shown = [f"{file}:{n}" if file is not None else str(n) for n in lines[:10]]
    return ", ".join(shown) + (f" and {len(lines) - 10} more" if len(lines) > 10 else "")


def auto_or_int(value: str, flag: str) -> str | int:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither 'auto' nor a whole number", param_hint=flag) from None


DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"


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


def sdk_client(ctx: click.Context) -> Any:
    import openai

    return openai.OpenAI(base_url=ctx.obj["base_url"], api_key=ctx.obj["api_key"], max_retries=2)


def api_errors(fn: F) -> F:
    """SDK errors as one clean line: what the server said, or that it cannot be reached."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import openai

        try:
            return fn(*args, **kwargs)
        except openai.APIConnectionError as e:
            ours = click.get_current_context().obj["base_url"]
            url = str(e.request.url) if getattr(e, "request", None) is not None else ours
            where, hint = (ours, ": is `selftune serve` running?") if url.startswith(ours.rstrip("/")) else (url, "")
            raise click.ClickException(f"cannot reach {where}{hint} ({e.__cause__ or e})") from e
        except openai.APIStatusError as e:
            body = e.body if isinstance(e.body, dict) else {}
            raise click.ClickException(f"{e.status_code}: {body.get('message') or e.message}") from e

    return wrapper  # type: ignore[return-value]


def group_with_client(name: str, help: str) -> click.Group:
    @click.group(name, help=help)
    @client_options
    @click.pass_context
    def group(ctx: click.Context, base_url: str, api_key: str) -> None:
        ctx.obj = {"base_url": base_url, "api_key": api_key}

    return group


def new_table(*columns: str) -> Table:
    """Ids and model names are copied from here into other commands: never cut or wrap them."""
    table = Table()
    for name in columns:
        table.add_column(name, no_wrap=name in ("id", "model", "fine_tuned_model"))
    return table


def print_table(table: Table) -> None:
    Console(width=None if sys.stdout.isatty() else 250).print(table)


def upload_file(client: Any, path: Path) -> str:
    """Validate locally (refusing a broken file before sending anything), then upload."""
    checked(path)
    with path.open("rb") as f:
        return str(client.files.create(file=(path.name, f), purpose="fine-tune").id)


SPECIFIC = {
    "beta": "dpo",
    "rpo_alpha": "dpo",
    "compute_multiplier": "reinforcement",
    "eval_interval": "reinforcement",
    "eval_samples": "reinforcement",
    "reasoning_effort": "reinforcement",
}
"""The method-specific hyperparameters ``selftune jobs create`` takes, and their method."""


def job_method(
    method: str | None, training: Path, grader: Path | None, hp: dict[str, Any], specific: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """``jobs create``'s method and its ``method.<type>`` settings: the method named, else
    ``reinforcement`` with a grader, ``dpo`` for a local file of preference pairs, else ``supervised``;
    a method's own flags refused on another method."""
    if method is None and grader is not None:
        method = "reinforcement"
    method = method or ("dpo" if training.is_file() and _holds_pairs(training) else "supervised")
    for key, value in specific.items():
        if value is not None:
            owner = SPECIFIC[key]
            if method != owner:
                flag = "--" + key.replace("_", "-")
                raise click.UsageError(f"{flag} is a {owner} hyperparameter; pass --method {owner} with it")
            hp[key] = value
    settings: dict[str, Any] = {"hyperparameters": hp}
    if method == "reinforcement":
        if grader is None:
            raise click.UsageError("a reinforcement job needs --grader FILE: a JSON file holding the grader")
        try:
            settings["grader"] = json.loads(grader.read_text(encoding="utf-8"))
        except ValueError as e:
            raise click.UsageError(f"--grader {grader}: not JSON ({e})") from None
    elif grader is not None:
        raise click.UsageError("--grader is for reinforcement jobs (--method reinforcement)")
    return method, settings


def _holds_pairs(path: Path) -> bool:
    """Whether a (validated) JSONL file is in the preference format: its first example says."""
    with path.open(encoding="utf-8-sig") as f:
        first = next((line for line in f if line.strip()), "{}")
    try:
        return "preferred_output" in json.loads(first)
    except ValueError:
        return False


def reinforcement_options(f: F) -> F:
    """``jobs create``'s options for a reinforcement job: the grader and its hyperparameters."""
    options = [
        click.option(
            "--grader",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None,
            help="Reinforcement: a JSON file holding the grader (implies --method reinforcement).",
        ),
        click.option("--compute-multiplier", type=float, default=None, help="Reinforcement: answers per prompt, x4."),
        click.option("--eval-interval", type=int, default=None, help="Reinforcement: validation reward every N steps."),
        click.option("--eval-samples", type=int, default=None, help="Reinforcement: validation prompts graded."),
        click.option(
            "--reasoning-effort",
            type=click.Choice(["low", "medium", "high"]),
            default=None,
            help="Reinforcement: an answer's room, 128, 256 or 512 tokens [default: medium].",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f
