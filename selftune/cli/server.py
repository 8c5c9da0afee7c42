"""Process launchers: ``selftune serve`` (the API, with a worker on a thread) and ``selftune worker``."""

from __future__ import annotations

import faulthandler
import logging
import signal
from pathlib import Path

import click

from selftune import __version__
from selftune.cli.common import console, db_option, friendly_errors, home_option, settings_from

KEEP_ALIVE_SECONDS = 65


@click.command()
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
@friendly_errors
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

    settings = settings_from(
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
    # `kill -USR1 <pid>` prints every thread's stack to stderr: what a server that stopped answering waits on.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
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
    # Idle connections are kept longer than clients keep them (httpx, under the OpenAI SDKs, drops
    # them after 5 s, uvicorn's default too): a client then never sends on a connection the server
    # is closing at that moment, which it sees as "connection reset" (seen in a clean-clone CI).
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )


@click.command()
@click.option("--slots", type=int, default=None, help="Jobs trained at once [env SELFTUNE_WORKER_SLOTS, default 1].")
@click.option(
    "--nproc-per-node",
    type=click.IntRange(min=1),
    default=None,
    help="Processes each job trains on, data parallel under torchrun [env SELFTUNE_WORKER_NPROC_PER_NODE; "
    "default one per GPU, one on a CPU].",
)
@click.option(
    "--nnodes",
    type=click.IntRange(min=1),
    default=None,
    help="Machines that train each job together: start a worker with the same --nnodes and --group on each "
    "[env SELFTUNE_WORKER_NNODES, default 1].",
)
@click.option("--group", default=None, help="The name of this worker's group [env SELFTUNE_WORKER_GROUP].")
@click.option(
    "--address",
    default=None,
    help="Where the group's other machines reach this one [env SELFTUNE_WORKER_ADDRESS, default its host name].",
)
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@home_option
@db_option
@friendly_errors
def worker(
    slots: int | None,
    nproc_per_node: int | None,
    nnodes: int | None,
    group: str | None,
    address: str | None,
    log_level: str,
    home: Path | None,
    database_url: str | None,
) -> None:
    """Run only the training worker.

    It takes jobs from the same database as the servers (SELFTUNE_DATABASE_URL, PostgreSQL for
    many machines). On another machine it keeps its own SELFTUNE_HOME and finds the training
    files, base models and checkpoints in the object store (SELFTUNE_STORAGE_URL=s3://...), where
    it puts the adapters it trains; it claims only jobs whose model fits the memory it offers
    (SELFTUNE_WORKER_MEMORY_BYTES, or measured). Stop it with Ctrl-C: running jobs save their
    state and go back to the queue, for any worker.

    With --nproc-per-node N it trains each job on N processes (torchrun, data parallel: gloo on a
    CPU, NCCL on GPUs). With --nnodes M --group NAME on each of M machines, the M workers train
    each job together (docs/distributed.md).
    """
    from selftune.services import open_core
    from selftune.worker import Worker, run_forever

    settings = settings_from(
        home=home,
        database_url=database_url,
        worker_slots=slots,
        worker_nproc_per_node=nproc_per_node,
        worker_nnodes=nnodes,
        worker_group=group,
        worker_address=address,
    )
    settings.check_group()
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    core = open_core(settings)  # no inference engine: a worker only trains
    shape = f"{settings.worker_slots} slot(s)"
    if settings.worker_nnodes > 1:
        shape = f"group {settings.worker_group} of {settings.worker_nnodes} machines, one job at a time"
    console.print(f"[bold]selftune worker[/]: data {settings.home}, {shape}")
    try:
        run_forever(Worker(core))
    finally:
        core.close()
