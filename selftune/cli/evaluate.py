"""``selftune eval``: base against fine-tuned on held-out data, through any OpenAI-compatible API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console

from selftune.cli.common import api_errors, client_options, console, friendly_errors, sdk_client


@click.command("eval")
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
@click.option(
    "--batch", "use_batch", is_flag=True, help="Send each model's prompts as one Batch (/v1/batches) instead."
)
@click.option(
    "--direct",
    is_flag=True,
    help="Ask the models through chat completions even where the server has the Evals API.",
)
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
@api_errors
@friendly_errors
def eval_(
    ctx: click.Context,
    more_models: tuple[str, ...],
    models_: tuple[str, ...],
    data: Path,
    limit: int | None,
    judge: str | None,
    concurrency: int,
    use_batch: bool,
    direct: bool,
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
    On a selftune server the answers come from runs of one eval of its Evals API (one run per model,
    shown side by side on the dashboard's Evals page); elsewhere, from chat completions.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from selftune.atomic import write_atomic
    from selftune.eval import evaluate, load_examples
    from selftune.eval.core import default_max_tokens
    from selftune.eval.on_evals import EvalsAnswerers, has_evals_api
    from selftune.eval.remote import api_answerer, batch_answerer
    from selftune.eval.report import print_report, to_html, to_json, to_markdown

    names = list(dict.fromkeys([*models_, *more_models]))
    if not names:
        raise click.UsageError("name at least one model: --models BASE ft:...")
    ctx.obj = {"base_url": base_url, "api_key": api_key}
    client = sdk_client(ctx)
    examples = load_examples(data, limit=limit)
    if not examples:
        raise click.ClickException(f"{data} has no examples")
    limits = [max_tokens or default_max_tokens(ex.reference) for ex in examples]

    def answerer(name: str, limit: int | list[int], temperature: float = 0.0) -> Any:
        if use_batch:
            return batch_answerer(client, name, max_tokens=limit, temperature=temperature, seed=seed)
        return api_answerer(client, name, max_tokens=limit, concurrency=concurrency, temperature=temperature, seed=seed)

    chat = all(not isinstance(ex.prompt, str) for ex in examples)  # Evals runs ask chat models
    on_evals = None
    if chat and not use_batch and not direct and has_evals_api(client):
        for name in names:  # an unknown model is the models endpoint's 404, before anything is created
            client.models.retrieve(name)
        on_evals = EvalsAnswerers(
            client,
            examples,
            f"selftune eval: {', '.join(names)} on {data.name}",
            max_tokens=max(limits),
            temperature=temperature,
            seed=seed,
        )
        answerers = {name: on_evals(name) for name in names}
    else:
        answerers = {name: answerer(name, limits, temperature) for name in names}
    judge_with = (judge, answerer(judge, 16)) if judge else None
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
    if on_evals is not None:
        report.notes.append(on_evals.note())
    print_report(report, Console(soft_wrap=False), show=show)
    for path, text in ((html_out, to_html), (md_out, to_markdown), (json_out, to_json)):
        if path is not None:
            write_atomic(path, text(report))
            console.print(f"wrote {path}")
