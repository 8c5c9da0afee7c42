"""The evaluation on the Evals API: held-out examples as an eval's items, each model's answers as one
of its runs, graded there by OpenAI's graders.

``selftune eval`` (through the SDK, ``completions`` runs that the server samples) and the evaluation
at the end of a job (in the worker, runs over the answers the trainer gave: ``jsonl`` runs with
samples) both build their eval here, so the dashboard's Evals pages show either one the same way:
base and fine-tuned side by side, and every item. The report's own metrics (SQuAD-normalised
matches, token F1, label accuracy, leaning to the preferred output) have no OpenAI grader; they
are computed once, in ``selftune.eval.core.score``, from the answers the runs hold.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from selftune.errors import SelftuneError
from selftune.eval.core import Answerer, Example, Prompt, Tick

if TYPE_CHECKING:
    from selftune.evals.service import Evals

ITEM_SCHEMA = {
    "type": "object",
    "properties": {
        "prompt": {"type": ["array", "string"]},
        "reference": {"type": "string"},
        "line": {"type": "integer"},
    },
    "required": ["prompt", "reference"],
}
CRITERIA = [
    {
        "type": "string_check",
        "name": "contains the reference",
        "operation": "ilike",
        "input": "{{sample.output_text}}",
        "reference": "{{item.reference}}",
    },
    {
        "type": "text_similarity",
        "name": "ROUGE-L >= 0.5",
        "evaluation_metric": "rouge_l",
        "input": "{{sample.output_text}}",
        "reference": "{{item.reference}}",
        "pass_threshold": 0.5,
    },
]
"""An item passes when the answer holds the reference (any case) and shares most of its words."""


def eval_request(name: str, *, given_samples: bool, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """The body of ``POST /v1/evals`` for held-out examples."""
    config = {"type": "custom", "item_schema": ITEM_SCHEMA, "include_sample_schema": given_samples}
    body: dict[str, Any] = {"name": name[:256], "data_source_config": config, "testing_criteria": CRITERIA}
    if metadata:
        body["metadata"] = metadata
    return body


def item(line: int, prompt: Prompt, reference: str) -> dict[str, Any]:
    return {"prompt": prompt, "reference": reference, "line": line}


def completions_run(
    model: str, examples: Sequence[Example], *, max_tokens: int, temperature: float, seed: int | None
) -> dict[str, Any]:
    """The body of ``POST /v1/evals/{id}/runs`` that has the server ask ``model`` every prompt."""
    params: dict[str, Any] = {"temperature": temperature, "max_completion_tokens": max_tokens}
    if seed is not None:
        params["seed"] = seed
    rows = [{"item": item(ex.line, ex.prompt, ex.reference)} for ex in examples]
    source = {
        "type": "completions",
        "model": model,
        "input_messages": {"type": "item_reference", "item_reference": "item.prompt"},
        "sampling_params": params,
        "source": {"type": "file_content", "content": rows},
    }
    return {"name": model, "data_source": source}


def publish_job_report(evals: Evals, owner: str, job_id: str, model: str, base: str, report: dict[str, Any]) -> str:
    """A fine-tuning job's evaluation as its eval: named after the job and its two models, its id made
    from the job's (so a job finished again after its worker died publishes nothing twice)."""
    name = f"{job_id}: {model} against {base}"
    eval_id = f"eval_{job_id.removeprefix('ftjob-')}"
    return publish_report(evals, owner, report, name, {"fine_tuning_job_id": job_id}, eval_id)


def publish_report(
    evals: Evals, owner: str, report: dict[str, Any], name: str, metadata: dict[str, str], eval_id: str
) -> str:
    """A finished report (``EvalReport.to_dict``) as the eval ``eval_id`` with one run per model over
    the answers it holds; the server's eval runner grades them. Publishing again (a job finished a
    second time after its worker died) finds the eval there and adds nothing. Returns the eval's id."""
    from selftune.errors import NotFound
    from selftune.schemas.evals import CreateEvalRequest, CreateEvalRunRequest

    try:
        return evals.evals.get(owner, eval_id).id
    except NotFound:
        pass
    body = CreateEvalRequest.model_validate(eval_request(name, given_samples=True, metadata=metadata))
    ev = evals.create(owner, body, eval_id)
    for model in report["models"]:
        rows = [
            {
                "item": item(ex["line"], ex["prompt"], ex["reference"]),
                "sample": {"model": model, "output_text": ex["outputs"][model]},
            }
            for ex in report["examples"]
        ]
        source = {"type": "jsonl", "source": {"type": "file_content", "content": rows}}
        evals.create_run(owner, ev.id, CreateEvalRunRequest.model_validate({"name": model, "data_source": source}))
    return ev.id


def has_evals_api(client: Any) -> bool:
    """Whether the server behind ``client`` (an ``openai.OpenAI``) has the Evals API: selftune does;
    OpenAI closed its own on 2026-11-30, and vLLM and most other servers never had one."""
    import openai

    try:
        client.evals.list(limit=1)
    except (openai.NotFoundError, openai.BadRequestError, openai.PermissionDeniedError):
        return False
    return True


class EvalsAnswerers:
    """``Answerer``s that each create a ``completions`` run of one eval and wait for its answers, so
    the server samples them (at its eval concurrency, resumable, on the dashboard)."""

    def __init__(
        self,
        client: Any,
        examples: Sequence[Example],
        name: str,
        *,
        max_tokens: int,
        temperature: float,
        seed: int | None,
        poll_s: float = 0.5,
    ) -> None:
        self.client, self.examples, self.poll_s = client, list(examples), poll_s
        self.params = {"max_tokens": max_tokens, "temperature": temperature, "seed": seed}
        self.eval_id: str = client.evals.create(**eval_request(name, given_samples=False)).id
        self.runs: dict[str, str] = {}

    def __call__(self, model: str) -> Answerer:
        def answer(prompts: Sequence[Prompt], tick: Tick) -> list[str]:
            return self.answers(model, tick)

        return answer

    def answers(self, model: str, tick: Tick) -> list[str]:
        from selftune.statuses import EVAL_RUNS, EvalRunStatus

        client, eval_id = self.client, self.eval_id
        run = client.evals.runs.create(eval_id, **completions_run(model, self.examples, **self.params))  # type: ignore[arg-type]
        self.runs[model] = run.id
        seen = 0
        try:
            while run.status not in EVAL_RUNS.terminal:
                time.sleep(self.poll_s)
                run = client.evals.runs.retrieve(run.id, eval_id=eval_id)
                done = run.result_counts.total if run.result_counts else 0
                for _ in range(done - seen):
                    tick()
                seen = max(seen, done)
        except KeyboardInterrupt:
            client.evals.runs.cancel(run.id, eval_id=eval_id)
            raise
        if run.status != EvalRunStatus.COMPLETED:
            why = run.error.message if run.error else run.status
            raise SelftuneError(f"eval run {run.id} for {model} ended {run.status}: {why}")
        answers = [""] * len(self.examples)
        for out in client.evals.runs.output_items.list(run.id, eval_id=eval_id, limit=100):
            error = out.sample.error
            if error is not None and error.message:
                line = self.examples[out.datasource_item_id].line
                raise SelftuneError(f"{model} could not answer line {line}: {error.message}")
            output = out.sample.output
            answers[out.datasource_item_id] = str(output[0].content or "") if output else ""
        for _ in range(len(self.examples) - seen):
            tick()
        return answers

    def note(self) -> str:
        runs = ", ".join(f"{model}: {run}" for model, run in self.runs.items())
        return f"answers sampled by the Evals API: eval {self.eval_id} ({runs}); dashboard page /#/evals/{self.eval_id}"
