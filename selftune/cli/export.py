"""``selftune export``: a model as files other tools run, built by the server (or here, ``--local``).

Against a server the CLI starts the export (``POST /v1/exports``), follows its progress, checks this
disk's room for the result before downloading, streams the archive into a hidden folder beside
``--output``, checks every file's SHA-256 against the export's manifest, and only then renames it
into place. ``--local`` builds from this machine's catalog with the same code the server runs.
"""

from __future__ import annotations

import json
import tarfile
import time
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from selftune.atomic import staged_dir
from selftune.blobs import sha256_file
from selftune.cli.common import (
    api_errors,
    client_options,
    console,
    db_option,
    friendly_errors,
    home_option,
    new_table,
    print_table,
    sdk_client,
    settings_from,
)
from selftune.convert.quantize import DEFAULT_QUANTIZE, QUANTIZE_LEVELS
from selftune.export.spec import FORMATS, MANIFEST, check_room
from selftune.statuses import EXPORTS, ExportStatus


@click.command("export")
@click.argument("model")
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True, help="What to write (see README).")
@click.option(
    "--quantize",
    type=click.Choice(QUANTIZE_LEVELS),
    default=None,
    help=f"gguf and ollama: the weights' precision [default: {DEFAULT_QUANTIZE}; with --lora, the base GGUF "
    "the server serves, as it is].",
)
@click.option("--lora", is_flag=True, help="gguf, ollama: the base GGUF and the GGUF LoRA, not one merged file.")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True, help="Folder to create.")
@click.option("--local", is_flag=True, help="Build here from this machine's models, without a server.")
@client_options
@home_option
@db_option
@api_errors
@friendly_errors
def export_(
    model: str,
    fmt: str,
    quantize: str | None,
    lora: bool,
    output: Path,
    local: bool,
    base_url: str,
    api_key: str,
    home: Path | None,
    database_url: str | None,
) -> None:
    """Export MODEL (base, ft: or checkpoint) as an adapter, a merged folder, a GGUF or an Ollama bundle.

    Every export is loaded by an independent reader (transformers, llama.cpp) and must answer a few
    golden prompts as selftune does before it is written.
    """
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise click.ClickException(f"{output} already exists and is not empty; choose a new output folder")
    if output.is_dir():
        output.rmdir()
    output = output.resolve()
    t0 = time.perf_counter()
    if local:
        manifest = _local(model, fmt, quantize, lora, output, home, database_url)
    else:
        ctx = click.get_current_context()
        ctx.obj = {"base_url": base_url, "api_key": api_key}
        manifest = _remote(sdk_client(ctx), model, fmt, quantize, lora, output)
    _report(manifest, output, time.perf_counter() - t0)


def _bar(*, download: bool = False) -> Progress:
    columns: list[Any] = [TextColumn("{task.description}"), BarColumn()]
    columns.append(DownloadColumn() if download else TextColumn("{task.completed}/{task.total}"))
    return Progress(*columns, TimeElapsedColumn(), console=console, transient=True)


def _local(
    model: str, fmt: str, quantize: str | None, lora: bool, output: Path, home: Path | None, database_url: str | None
) -> dict[str, Any]:
    from selftune.config import LOCAL_OWNER
    from selftune.export.build import export
    from selftune.export.service import source
    from selftune.export.spec import ExportSpec
    from selftune.services import open_core

    core = open_core(settings_from(home=home, database_url=database_url))
    try:
        src = source(core.catalog, core.store, model, LOCAL_OWNER)
    finally:
        core.close()
    spec = ExportSpec.parse(fmt, quantize, lora, src.adapter is not None)
    with _bar() as bar:
        task = bar.add_task("starting", total=1)

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage, completed=done, total=max(total, 1))

        return export(src, spec, output, progress)


def _remote(client: Any, model: str, fmt: str, quantize: str | None, lora: bool, output: Path) -> dict[str, Any]:
    import httpx

    body = {"model": model, "format": fmt, "quantize": quantize, "lora": lora}
    record: dict[str, Any] = client.post("/exports", body=body, cast_to=object)
    with _bar() as bar:
        task = bar.add_task("waiting for the server", total=1)
        while record["status"] not in EXPORTS.terminal:
            if record.get("progress"):
                p = record["progress"]
                bar.update(task, description=p["stage"], completed=p["done"], total=max(p["total"], 1))
            time.sleep(0.5)
            record = client.get(f"/exports/{record['id']}", cast_to=object)
    if record["status"] != ExportStatus.SUCCEEDED:
        error = record.get("error") or {}
        raise click.ClickException(f"export {record['id']} failed: {error.get('message', 'no reason given')}")
    check_room(output.parent, int(record["bytes"]))
    with staged_dir(output) as staging:  # renamed to --output only once every checksum matched
        url = f"{str(client.base_url).rstrip('/')}/exports/{record['id']}/content"
        headers = {"Authorization": f"Bearer {client.api_key}"}
        with httpx.stream("GET", url, headers=headers, timeout=60) as response, _bar(download=True) as bar:
            response.raise_for_status()
            task = bar.add_task("downloading", total=int(response.headers.get("content-length") or 0))
            reader = _Counted(response.iter_bytes(2**20), lambda n: bar.advance(task, n))
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    member.name = member.name.split("/", 1)[1]  # files land in --output, not a folder in it
                    tar.extract(member, staging, filter="data")
        manifest: dict[str, Any] = json.loads((staging / MANIFEST).read_text())
        _check_sums(staging, manifest)
    return manifest


class _Counted:
    """A file-like reader over the response's chunks, for ``tarfile``'s stream mode."""

    def __init__(self, chunks: Any, advance: Any) -> None:
        self.chunks, self.advance, self.buffer = chunks, advance, b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self.buffer) < n:
            chunk = next(self.chunks, None)
            if chunk is None:
                break
            self.advance(len(chunk))
            self.buffer += chunk
        out, self.buffer = (self.buffer, b"") if n < 0 else (self.buffer[:n], self.buffer[n:])
        return out


def _check_sums(folder: Path, manifest: dict[str, Any]) -> None:
    for name, entry in manifest["files"].items():
        if sha256_file(folder / name) != entry["sha256"]:
            raise click.ClickException(f"{name} arrived damaged (SHA-256 differs from the export's); download it again")


def _report(manifest: dict[str, Any], output: Path, seconds: float) -> None:
    table = new_table("file", "size", "sha256")
    total = 0
    for name, entry in manifest["files"].items():
        total += entry["bytes"]
        table.add_row(name, f"{entry['bytes'] / 1e6:,.1f} MB", entry["sha256"])
    print_table(table)
    v = manifest["verification"]
    size = f"{total / 1e6:,.1f} MB"
    click.echo(f"exported {manifest['model']} as {manifest['format']} to {output}: {size} in {seconds:.0f}s")
    click.echo(
        f"verified with {v['reader']}: {v['equal_answers']}/{v['prompts']} answers equal, "
        f"next-token agreement {v['agreement']:.1%} over {v['positions']} positions"
    )
    if v.get("twin"):
        t = v["twin"]
        click.echo(f"  and as float16 (exact check): {t['equal_answers']}/{t['prompts']} equal, {t['agreement']:.1%}")
    for tool, command in manifest["run"].items():
        click.echo(f"  {tool}: (cd {output} && {command})")
