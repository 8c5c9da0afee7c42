"""The ``selftune`` command: run the server, and manage base models.

    selftune serve [--host 127.0.0.1] [--port 8000]     run the API and the training worker
    selftune worker [--slots 1]                         run only the training worker
    selftune models add NAME PATH                       register a HF folder, a GGUF file or a Hub id
    selftune models list                                list base models and aliases
    selftune models rm NAME                             unregister a base model you added

Every flag also reads its ``SELFTUNE_*`` environment variable. Library errors become clean
one-line messages here, at the edge.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
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
    Models:   models add | list | rm
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
    console.print(f'use it:  OpenAI(base_url="{url}/v1", api_key="...")')
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


@cli.group()
def models() -> None:
    """Base models: add, list, remove."""


def _catalog(home: Path | None, database_url: str | None) -> Any:
    from selftune.catalog import Catalog
    from selftune.store import Store

    settings = _settings(home=home, database_url=database_url)
    settings.home.mkdir(parents=True, exist_ok=True)
    return Catalog(settings, Store(settings.db_url))


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
@home_option
@db_option
@_friendly_errors
def models_list(home: Path | None, database_url: str | None) -> None:
    """List base models and the aliases that point at them."""
    catalog = _catalog(home, database_url)
    aliases = catalog.aliases()
    table = Table("model", "source", "ready", "aliases")
    for spec in catalog.base_models():
        ready = (catalog.weights_dir(spec) / "config.json").is_file()
        names = ", ".join(sorted(a for a, t in aliases.items() if t == spec.name))
        table.add_row(spec.name, spec.source, "yes" if ready else "on first use", names)
    Console().print(table)


@models.command("rm")
@click.argument("name")
@home_option
@db_option
@_friendly_errors
def models_rm(name: str, home: Path | None, database_url: str | None) -> None:
    """Unregister base model NAME (one added with `models add`)."""
    _catalog(home, database_url).remove(name)
    click.echo(f"removed {name}")


def main() -> None:
    try:
        cli(prog_name="selftune")
    except KeyboardInterrupt:
        sys.exit(130)
