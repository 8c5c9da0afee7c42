"""``selftune migrate``: bring a team's fine-tuning jobs over from OpenAI (or any compatible server),
record the old models' answers, retrain on selftune and compare. The steps are in ``selftune.job_transfer``."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from selftune.atomic import write_atomic
from selftune.cli.common import api_errors, console, friendly_errors, new_table, print_table
from selftune.errors import MigrationProblem
from selftune.statuses import JobStatus

OPENAI_URL = "https://api.openai.com/v1"


def _mapping(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for value in values:
        old, sep, new = value.partition("=")
        if not sep or not old or not new:
            raise click.BadParameter(f"{value!r} is not SOURCE_MODEL=TARGET_MODEL", param_hint="--map")
        out[old] = new
    return out


def _since(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC).timestamp())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date like 2026-11-30", param_hint="--since") from None


@click.command("migrate")
@click.option("--from-base-url", default=OPENAI_URL, show_default=True, help="The server the jobs are on now.")
@click.option("--from-api-key", envvar="OPENAI_API_KEY", default=None, help="Its API key [env OPENAI_API_KEY].")
@click.option(
    "--base-url",
    envvar="SELFTUNE_BASE_URL",
    default="http://127.0.0.1:8000/v1",
    show_default=True,
    help="The selftune server to migrate into [env SELFTUNE_BASE_URL].",
)
@click.option("--api-key", envvar="SELFTUNE_API_KEY", default="local", help="Its API key [env SELFTUNE_API_KEY].")
@click.option("--job", "only", multiple=True, help="Only this source job (repeatable).")
@click.option("--since", default=None, help="Only jobs created on or after this date (YYYY-MM-DD).")
@click.option("--suffix", default=None, help="Only jobs whose model has this suffix.")
@click.option("--map", "maps", multiple=True, help="SOURCE_MODEL=TARGET_MODEL: the base to train from (repeatable).")
@click.option(
    "--files-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Your copies of the training files, for a source that will not send them back (OpenAI).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("selftune-migration"),
    show_default=True,
    help="State, recorded answers and reports.",
)
@click.option("--samples", type=int, default=20, show_default=True, help="Prompts the old model answers, per job.")
@click.option("--seed", type=int, default=0, show_default=True, help="Which training lines are sampled.")
@click.option("--dry-run", is_flag=True, help="Show the plan and stop: nothing is uploaded, created or written.")
@click.option("--no-wait", is_flag=True, help="Create the jobs and leave them queued (a rerun waits and compares).")
@click.option(
    "--rewrite",
    type=click.Path(exists=True, path_type=Path),
    multiple=True,
    help="A file or folder of code/config naming old models: copies with the new ids go to OUT/rewritten.",
)
@api_errors
@friendly_errors
def migrate(
    from_base_url: str,
    from_api_key: str | None,
    base_url: str,
    api_key: str,
    only: tuple[str, ...],
    since: str | None,
    suffix: str | None,
    maps: tuple[str, ...],
    files_dir: Path | None,
    out: Path,
    samples: int,
    seed: int,
    dry_run: bool,
    no_wait: bool,
    rewrite: tuple[Path, ...],
) -> None:
    """Retrain a server's fine-tuning jobs on selftune and compare the new models with the old ones.

    \b
        export OPENAI_API_KEY=sk-...
        selftune migrate --files-dir ./training-data --dry-run     # the plan
        selftune migrate --files-dir ./training-data --rewrite src/

    Resumable: the state in OUT/state.json records each finished step; run the same command again
    after an interruption or a failure and it goes on from there, creating nothing twice.
    """
    import openai

    from selftune import job_transfer as m

    if not from_api_key:
        raise click.UsageError("pass --from-api-key or set OPENAI_API_KEY: the key of the server the jobs are on")
    if from_base_url.rstrip("/") == base_url.rstrip("/"):
        raise click.UsageError(f"--from-base-url and --base-url are the same server ({base_url})")
    click.get_current_context().obj = {"base_url": base_url, "api_key": api_key}  # for api_errors
    # The SDK backs off and retries rate limits, 5xx and lost connections; the state covers the rest.
    source = openai.OpenAI(base_url=from_base_url, api_key=from_api_key, max_retries=6, timeout=600)
    target = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=2, timeout=600)
    state = m.State.load(out / "state.json", from_base_url, base_url)
    jobs, skipped = m.list_jobs(source, only=only, since=_since(since), suffix=suffix)
    mapping = _mapping(maps)
    _show_plan(source, target, jobs, skipped, mapping, state)
    if dry_run or not jobs:
        console.print("dry run: nothing was changed" if dry_run else "no job to migrate")
        return
    problems: dict[str, str] = {}
    try:
        for src in jobs:
            try:
                _migrate_one(source, target, src, mapping, state, files_dir, out, samples, seed, no_wait)
            except (MigrationProblem, openai.APIError) as e:
                problems[src.id] = str(getattr(e, "message", None) or e)
                state.job(src.id)["error"] = problems[src.id]
                state.save()
                console.print(f"[red]{src.id}[/]: {problems[src.id]}")
    except KeyboardInterrupt:
        console.print(f"interrupted: what finished is in {out / 'state.json'}; run the same command to go on")
        sys.exit(130)
    _finish(state, problems, out, rewrite)


def _show_plan(
    source: Any, target: Any, jobs: list[Any], skipped: list[tuple[str, str]], mapping: dict[str, str], state: Any
) -> None:
    from selftune import job_transfer as m

    table = new_table("source job", "model", "trains from", "method", "hyperparameters", "seed", "files", "done")
    for src in jobs:
        try:
            base = m.map_model(target, src, mapping, state)
        except MigrationProblem as e:
            base = f"? {e}"
        names = []
        for fid in (src.training_file, src.validation_file):
            if fid:
                try:
                    names.append(source.files.retrieve(fid).filename)
                except Exception:  # the plan shows what it can; the run reports the error
                    names.append(fid)
        j = state.data["jobs"].get(src.id, {})
        steps = {"files": "files", "answers": "old answers", "target_job": "job", "model": "model", "eval": "compared"}
        done = [name for key, name in steps.items() if j.get(key) is not None]
        table.add_row(
            src.id,
            src.fine_tuned_model,
            f"{src.model} -> {base}",
            src.method,
            json.dumps(src.hyperparameters),
            str(src.seed),
            ", ".join(names),
            ", ".join(done) or "-",
        )
    print_table(table)
    for job_id, why in skipped:
        console.print(f"[yellow]left out[/] {job_id}: {why}")


def _migrate_one(
    source: Any,
    target: Any,
    src: Any,
    mapping: dict[str, str],
    state: Any,
    files_dir: Path | None,
    out: Path,
    samples: int,
    seed: int,
    no_wait: bool,
) -> None:
    import openai

    from selftune import job_transfer as m
    from selftune.cli.client import follow_job
    from selftune.eval import load_examples

    j = state.job(src.id)
    j.update(old_model=src.fine_tuned_model, error=None)
    folder = out / src.id
    folder.mkdir(parents=True, exist_ok=True)
    if j.get("files") is None:
        contents = {}
        ids = {}
        for kind, fid in (("training", src.training_file), ("validation", src.validation_file)):
            if fid:
                name, content, how = m.fetch_file(source, fid, files_dir)
                console.print(f"{src.id}: {kind} file {name}: {how}")
                contents[kind] = content
                ids[kind] = m.upload(target, name, content, state)
        lines, came_from = m.eval_set(contents["training"], contents.get("validation"), samples, seed)
        write_atomic(folder / "eval-set.jsonl", "".join(ln + "\n" for ln in lines))
        j.update(files=ids, eval_set_from=came_from)
        state.save()
    examples = load_examples(folder / "eval-set.jsonl", filename=f"{src.id}/eval-set.jsonl")
    if j.get("answers") is None:
        console.print(f"{src.id}: recording {src.fine_tuned_model}'s answers to {len(examples)} prompts")
        try:
            answers = m.record_answers(source, src.fine_tuned_model, examples)
        except openai.NotFoundError as e:  # retired already: train anyway, compare with the base only
            answers = [""] * len(examples)
            j["answers_note"] = f"{src.fine_tuned_model} no longer answers ({e.message}): no comparison with it"
            console.print(f"[yellow]{src.id}[/]: {j['answers_note']}")
        write_atomic(folder / "old-answers.jsonl", m.answers_jsonl(examples, answers))
        j.update(answers=answers)
        state.save()
    if j.get("target_job") is None:
        base = m.map_model(target, src, mapping, state)
        job = m.find_target_job(target, src.id) or m.create_job(target, src, base, j["files"])
        j.update(target_job=job.id, base=base)
        state.save()
        console.print(f"{src.id}: selftune job {job.id} ({job.status})")
    job = target.fine_tuning.jobs.retrieve(j["target_job"]) if no_wait else follow_job(target, j["target_job"])
    if job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
        j.update(target_job=None)  # the next run creates it again
        reason = job.error.message if job.error and job.error.message else ""
        raise MigrationProblem(f"selftune job {job.id} {job.status}: {reason}")
    if job.status != JobStatus.SUCCEEDED:
        j.update(status=job.status)
        state.save()
        return
    j.update(model=job.fine_tuned_model, status=JobStatus.SUCCEEDED.value)
    state.save()
    if j.get("eval") is None:
        console.print(f"{src.id}: comparing {j['base']}, {src.fine_tuned_model} and {job.fine_tuned_model}")
        j["eval"] = m.compare(
            target, j["base"], job.fine_tuned_model, src.fine_tuned_model, examples, j["answers"], folder
        )
        state.save()


def _finish(state: Any, problems: dict[str, str], out: Path, rewrite: tuple[Path, ...]) -> None:
    from selftune import job_transfer as m

    write_atomic(out / "report.md", m.report_markdown(state, problems))
    table = new_table(
        "old model", "new model", "against the data (base / old / new)", "agreement with old (base / new)"
    )
    for j in state.data["jobs"].values():
        if j.get("model"):
            ev = j.get("eval") or {}
            table.add_row(j["old_model"], j["model"], m.cell(ev.get("data")), m.cell(ev.get("old")))
    print_table(table)
    for original, copy, diff in m.rewrite(list(rewrite), state.replacements(), out / "rewritten"):
        console.print(f"rewrote {original} -> {copy}")
        click.echo(diff)
    console.print(f"report: {out / 'report.md'}")
    if problems:
        raise click.ClickException(
            f"{len(problems)} job(s) not finished: "
            + "; ".join(f"{k}: {v}" for k, v in problems.items())
            + ". Fix what they say and run the same command again."
        )
