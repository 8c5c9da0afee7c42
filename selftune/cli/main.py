"""The ``selftune`` command: its group, and the commands of each module attached to it, by section.

The help lists every command from the commands themselves (``Sections.format_commands``): a new
command shows up in ``selftune --help`` and in the docs' CLI page (docs/cli.md renders this group
with mkdocs-click) by being registered in ``SECTIONS``, and in no other way.
"""

from __future__ import annotations

import sys

import click

from selftune import __version__
from selftune.cli import client, data, evaluate, export, migrate, server

SECTIONS: dict[str, tuple[click.Command, ...]] = {
    "Server": (server.serve, server.worker, client.workers),
    "Data": (data.prepare, data.validate, data.estimate, data.render),
    "Client, for any OpenAI-compatible server": (client.files, client.jobs, client.chat, client.models),
    "Results": (evaluate.eval_, export.export_),
    "Moving from OpenAI": (migrate.migrate,),
}


class Sections(click.Group):
    """A group whose help lists its commands by section, groups with their subcommands."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        for section, commands in SECTIONS.items():
            rows = []
            for command in commands:
                assert command.name is not None
                text = command.get_short_help_str(limit=300)  # the whole first sentence, wrapped
                if isinstance(command, click.Group):
                    text = f"{text.rstrip('.')}: {', '.join(command.commands)}."
                rows.append((command.name, text))
            with formatter.section(section):
                formatter.write_dl(rows)


@click.group(cls=Sections, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="selftune")
def cli() -> None:
    """selftune: OpenAI-compatible fine-tuning on your own machine.

    Run `selftune COMMAND --help` for a command's options.
    """


for _commands in SECTIONS.values():
    for _command in _commands:
        cli.add_command(_command)


def main() -> None:
    try:
        cli(prog_name="selftune")
    except KeyboardInterrupt:
        sys.exit(130)
