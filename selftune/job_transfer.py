"""Moving fine-tuning jobs from OpenAI (or any OpenAI-compatible server) to selftune.

For each source job that produced a model, in this order, each step recorded in the state file as
it finishes (so a rerun skips what is done and retries what failed):

1. **files**: the training and validation files, downloaded from the source or, where it refuses
   (OpenAI never serves ``fine-tune`` files back), found in ``files_dir`` by name and byte size;
   uploaded to the target once per content (SHA-256).
2. **answers**: the old ``ft:`` model answers the prompts of the validation file (or a seeded sample
   of the training file), before it is retired. Saved as a training-format JSONL file.
3. **job**: the same method, hyperparameters, suffix, seed and metadata on the target, tagged with
   ``metadata.migrated_from`` (so a job created by a run killed before it could record it is found
   and reused, never created twice).
4. **eval**: once the new job succeeded, base, old and new answers are scored against the data's
   own answers, and base and new against the old model's answers (their agreement with it).

The source client retries rate limits, server errors and lost connections with the SDK's own
exponential back-off (``max_retries``); anything still failing is recorded for that job and the
next run retries it. Nothing here prints: the CLI (``cli/migrate.py``) shows the plan and progress.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from selftune.atomic import write_atomic
from selftune.errors import MigrationProblem
from selftune.eval.core import EvalReport, Example, default_max_tokens, score
from selftune.eval.embed import load_embedder
from selftune.eval.remote import api_answerer
from selftune.eval.report import to_json, to_markdown
from selftune.statuses import JobStatus

STATE_VERSION = 1
TAG = "migrated_from"
"""The metadata key that ties a target job to its source job."""


@dataclass
class SourceJob:
    id: str
    model: str
    fine_tuned_model: str
    method: str
    hyperparameters: dict[str, Any]
    suffix: str | None
    seed: int | None
    metadata: dict[str, str]
    training_file: str
    validation_file: str | None
    created_at: int

    @classmethod
    def of(cls, job: Any) -> SourceJob:
        method = job.method.type if job.method and job.method.type else "supervised"
        detail = getattr(job.method, method, None) if job.method else None
        hp = detail.hyperparameters if detail is not None and detail.hyperparameters else job.hyperparameters
        params = {k: v for k, v in (hp.model_dump() if hp is not None else {}).items() if v is not None}
        return cls(
            id=job.id,
            model=job.model,
            fine_tuned_model=job.fine_tuned_model,
            method=method,
            hyperparameters=params,
            suffix=getattr(job, "user_provided_suffix", None) or suffix_of(job.fine_tuned_model),
            seed=job.seed,
            metadata=dict(job.metadata or {}),
            training_file=job.training_file,
            validation_file=job.validation_file,
            created_at=job.created_at,
        )


def suffix_of(model: str) -> str | None:
    """``ft:{base}:{org}:{suffix}:{id}``'s suffix (``None`` when empty or not of that shape)."""
    parts = model.split(":")
    return (parts[3] or None) if len(parts) == 5 and parts[0] == "ft" else None


def list_jobs(
    source: Any, *, only: Sequence[str] = (), since: int | None = None, suffix: str | None = None
) -> tuple[list[SourceJob], list[tuple[str, str]]]:
    """The source's jobs to migrate, oldest first (a job continuing an ``ft:`` model comes after the
    one that made it), and the ones left out with the reason (never silently)."""
    wanted, skipped = [], []
    for job in source.fine_tuning.jobs.list(limit=100):  # the SDK follows the pages
        if only and job.id not in only:
            continue
        if since is not None and job.created_at < since:
            continue
        if job.status != JobStatus.SUCCEEDED or not job.fine_tuned_model:
            skipped.append((job.id, f"status {job.status}: no model to migrate"))
            continue
        src = SourceJob.of(job)
        if suffix is not None and src.suffix != suffix:
            continue
        wanted.append(src)
    missing = set(only) - {j.id for j in wanted} - {i for i, _ in skipped}
    skipped += [(i, "not found on the source") for i in sorted(missing)]
    return sorted(wanted, key=lambda j: j.created_at), skipped


@dataclass
class State:
    """What is done, per source job, written after every step (temporary file, then rename)."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, source_url: str, target_url: str) -> State:
        data = json.loads(path.read_text("utf-8")) if path.exists() else {}
        if data and (data.get("source"), data.get("target")) != (source_url, target_url):
            raise MigrationProblem(
                f"{path} records a migration from {data.get('source')} to {data.get('target')}, not from "
                f"{source_url} to {target_url}: pass another --out folder for this one"
            )
        data = {"version": STATE_VERSION, "source": source_url, "target": target_url, "uploads": {}, "jobs": {}, **data}
        return cls(path, data)

    def job(self, job_id: str) -> dict[str, Any]:
        jobs: dict[str, dict[str, Any]] = self.data["jobs"]
        return jobs.setdefault(job_id, {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(self.data, indent=2, sort_keys=True))

    def replacements(self) -> dict[str, str]:
        """Old model id -> new model id, for the jobs whose new model exists."""
        return {j["old_model"]: j["model"] for j in self.data["jobs"].values() if j.get("model")}


def map_model(target: Any, src: SourceJob, maps: dict[str, str], state: State) -> str:
    """The target model a source job trains from: ``--map``, else a model migrated earlier in this
    migration (a job that continued an ``ft:`` model), else the same name if the target knows it
    (selftune resolves OpenAI's names through its migration aliases)."""
    import openai

    if src.model in maps:
        return maps[src.model]
    earlier = state.replacements().get(src.model)
    if earlier:
        return earlier
    if src.model.startswith("ft:"):
        raise MigrationProblem(
            f"it continues {src.model}, which this migration has not brought over: migrate the job that "
            f"made it first, or pass --map {src.model}=MODEL"
        )
    try:
        return str(target.models.retrieve(src.model).id)
    except openai.NotFoundError:
        raise MigrationProblem(
            f"the target has no model {src.model!r}: pass --map {src.model}=MODEL (see `selftune models list`)"
        ) from None


def fetch_file(source: Any, file_id: str, files_dir: Path | None) -> tuple[str, bytes, str]:
    """A source file's name and bytes, and where they came from. Downloaded where the source serves
    it; else the copy in ``files_dir`` with its name and size (or, since the legacy SDK names every
    upload ``file``, the one file there of its size)."""
    import openai

    meta = source.files.retrieve(file_id)
    try:
        return meta.filename, source.files.content(file_id).read(), "downloaded"
    except (openai.BadRequestError, openai.PermissionDeniedError, openai.NotFoundError) as e:
        refused = getattr(e, "message", str(e))
    wanted = f"{meta.filename} ({meta.bytes:,} bytes)"
    if files_dir is None:
        raise MigrationProblem(
            f"the source will not send {file_id} {wanted} ({refused}): pass --files-dir DIR holding your copy"
        )
    sized = [p for p in sorted(files_dir.rglob("*")) if p.is_file() and p.stat().st_size == meta.bytes]
    named = [p for p in sized if p.name == meta.filename]
    if named or len(sized) == 1:
        path = (named or sized)[0]
        how = "found in --files-dir" if named else f"found in --files-dir as {path.name} (the only file of its size)"
        return meta.filename, path.read_bytes(), how
    others = f"{len(sized)} files of that size, none of that name" if sized else "no file of that size"
    raise MigrationProblem(
        f"the source will not send {file_id} {wanted} ({refused}), and {files_dir} has {others}: "
        f"copy the file you uploaded as {meta.filename} there"
    )


def upload(target: Any, name: str, content: bytes, state: State) -> str:
    """The target's id for this content, uploading it only the first time."""
    digest = hashlib.sha256(content).hexdigest()
    uploads = state.data["uploads"]
    if digest not in uploads:
        uploads[digest] = (
            _uploaded(target, name, content, digest)
            or target.files.create(file=(name, content), purpose="fine-tune").id
        )
        state.save()
    return str(uploads[digest])


def _uploaded(target: Any, name: str, content: bytes, digest: str) -> str | None:
    """A target file with this content that a run killed before recording it already uploaded."""
    import openai

    for f in target.files.list(purpose="fine-tune"):
        if f.filename == name and f.bytes == len(content):
            try:
                if hashlib.sha256(target.files.content(f.id).read()).hexdigest() == digest:
                    return str(f.id)
            except openai.APIError:
                continue
    return None


def eval_set(training: bytes, validation: bytes | None, samples: int, seed: int) -> tuple[list[str], str]:
    """The lines the old model answers: the validation file's, or a seeded sample of the training
    file's; at most ``samples``. And which file they came from."""
    lines = [ln for ln in (validation or training).decode("utf-8-sig").splitlines() if ln.strip()]
    if validation is None and len(lines) > samples:
        lines = [lines[i] for i in sorted(random.Random(seed).sample(range(len(lines)), samples))]
    return lines[:samples], "validation" if validation is not None else "training"


def record_answers(source: Any, model: str, examples: Sequence[Example]) -> list[str]:
    """The old model's greedy answers to each example's prompt."""
    limits = [default_max_tokens(ex.reference) for ex in examples]
    return api_answerer(source, model, max_tokens=limits, concurrency=4)([ex.prompt for ex in examples], lambda: None)


def answers_jsonl(examples: Sequence[Example], answers: Sequence[str]) -> str:
    """The old answers as an eval set in the data's format (empty answers left out: they cannot be references)."""
    rows = [
        {"prompt": ex.prompt, "completion": a}
        if isinstance(ex.prompt, str)
        else {"messages": [*ex.prompt, {"role": "assistant", "content": a}]}
        for ex, a in zip(examples, answers, strict=True)
        if a.strip()
    ]
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def find_target_job(target: Any, source_job: str) -> Any | None:
    """A target job made from ``source_job`` that has not failed (the newest), if any."""
    for job in target.fine_tuning.jobs.list(limit=100, metadata={TAG: source_job}):
        if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
            return job
    return None


def create_job(target: Any, src: SourceJob, model: str, files: dict[str, str]) -> Any:
    hp = dict(src.hyperparameters)
    metadata = {**dict(list(src.metadata.items())[:15]), TAG: src.id}
    kwargs: dict[str, Any] = {
        "model": model,
        "training_file": files["training"],
        "method": {"type": src.method, src.method: {"hyperparameters": hp}},
        "metadata": metadata,
    }
    if "validation" in files:
        kwargs["validation_file"] = files["validation"]
    if src.suffix:
        kwargs["suffix"] = src.suffix
    if src.seed is not None:
        kwargs["seed"] = src.seed
    return target.fine_tuning.jobs.create(**kwargs)


def compare(
    target: Any,
    base: str,
    new: str,
    old: str,
    examples: Sequence[Example],
    old_answers: Sequence[str],
    folder: Path,
) -> dict[str, Any]:
    """Two reports in ``folder``: base, old and new scored against the data's answers; base and new
    against the old model's answers. Returns the numbers the migration report shows."""
    limits = [default_max_tokens(ex.reference) for ex in examples]
    prompts = [ex.prompt for ex in examples]
    answers = {m: api_answerer(target, m, max_tokens=limits, concurrency=4)(prompts, lambda: None) for m in (base, new)}
    embedder, why_not = load_embedder()
    notes = [why_not] if why_not else []
    kept = [i for i, a in enumerate(old_answers) if a.strip()]
    if kept:  # an old model that gave no answer is left out
        answers = {base: answers[base], old: list(old_answers), new: answers[new]}
    on_data = score(examples, answers, embedder=embedder, data="data", notes=notes)
    agree = None
    if kept:
        refs = [Example(examples[i].line, examples[i].prompt, old_answers[i]) for i in kept]
        subset = {m: [answers[m][i] for i in kept] for m in (base, new)}
        agree = score(refs, subset, embedder=embedder, data=f"answers of {old}", notes=notes)
    for name, report in (("against-data", on_data), ("against-old-model", agree)):
        if report is not None:
            write_atomic(folder / f"{name}.md", to_markdown(report))
            write_atomic(folder / f"{name}.json", to_json(report))
    return {"data": _numbers(on_data), "old": _numbers(agree) if agree else None}


def _numbers(report: EvalReport) -> dict[str, Any]:
    keys = [k for k in (report.primary, "embedding") if k in report.metric_keys]
    return {
        "summary": report.summary(),
        "models": report.models,
        "metrics": {k: [round(report.stats[m][k].mean, 4) for m in report.models] for k in dict.fromkeys(keys)},
        "n": len(report.examples),
    }


def rewrite(paths: Sequence[Path], replacements: dict[str, str], out: Path) -> list[tuple[Path, Path, str]]:
    """Copies of the text files under ``paths`` that name an old model, with the new ids, under
    ``out``; returns (original, copy, unified diff) for each. The originals are never touched."""
    import difflib

    if not replacements:
        return []
    pattern = re.compile("|".join(re.escape(k) for k in sorted(replacements, key=len, reverse=True)))
    done = []
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            try:
                text = path.read_text("utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            new = pattern.sub(lambda m: replacements[m.group(0)], text)
            if new == text:
                continue
            rel = path.relative_to(root.parent)
            copy = out / rel
            copy.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(copy, new)
            diff = difflib.unified_diff(
                text.splitlines(keepends=True), new.splitlines(keepends=True), str(path), str(copy)
            )
            done.append((path, copy, "".join(diff)))
    return done


def report_markdown(state: State, problems: dict[str, str]) -> str:
    """The whole migration on one page: per job, old and new model and how they compare."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Migration from {state.data['source']} to {state.data['target']}",
        "",
        f"Written {when}.",
        "",
        "| source job | old model | new model | status | against the data (base / old / new) "
        "| agreement with the old model (base / new) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for job_id, j in state.data["jobs"].items():
        ev = j.get("eval") or {}
        status = problems.get(job_id) or j.get("status", "")
        lines.append(
            f"| {job_id} | `{j.get('old_model', '')}` | `{j.get('model') or ''}` | {status} "
            f"| {cell(ev.get('data'))} | {cell(ev.get('old'))} |"
        )
    lines += ["", "Each job's folder holds the reports in full (`against-data.md`, `against-old-model.md`)."]
    return "\n".join(lines) + "\n"


def cell(numbers: dict[str, Any] | None) -> str:
    """``contains: 0.10 / 0.80 / 0.75; embedding: ...``, one value per model in the report's order."""
    if not numbers:
        return ""
    return "; ".join(f"{k}: " + " / ".join(f"{v:.2f}" for v in per) for k, per in numbers["metrics"].items())
