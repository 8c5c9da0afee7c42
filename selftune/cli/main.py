"""The ``selftune`` command: its group, and the commands of each module attached to it."""

from __future__ import annotations

import sys

import click

from selftune import __version__
from selftune.cli import client, data, evaluate, export, migrate, server


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
              export MODEL --format adapter|merged|gguf|ollama --output DIR
    Moving:   migrate (OpenAI fine-tuning jobs retrained here, old and new models compared)
    """


for command in (
    server.serve,
    server.worker,
    data.prepare,
    data.validate,
    data.estimate,
    data.render,
    client.files,
    client.jobs,
    client.chat,
    client.models,
    evaluate.eval_,
    export.export_,
    migrate.migrate,
):
    cli.add_command(command)


def main() -> None:
    try:
        cli(prog_name="selftune")
    except KeyboardInterrupt:
        sys.exit(130)
