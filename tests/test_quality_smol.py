"""End to end on SmolLM2: DPO learns a form without losing the content, and a broken job says so.

The pairs differ only in form (``bench.dpo_quality``, from the ``countryinfo`` package): "What is
the capital of X?" answered ``Capital: Y`` (preferred) or ``The capital of X is Y.``. With the
defaults before issue 29 the job succeeded and the model answered every question "Capital:
Capital: Capital: ..." (form 100%, content 0%, ended 0%, measured with ``python -m bench.dpo_quality``).

- **Healthy**: a DPO job with every hyperparameter ``auto`` on 120 pairs. Asked every held-out
  country through the Evals API (one eval, a completions run for the base and one for the
  fine-tuned model, graded by ``string_check`` graders), the fine-tuned model answers in the new form (at least 90%), names the
  capital at least as often as the base model does on the same questions, and ends its answers
  (``finish_reason == "stop"``, at least 90%). The quality guard says ``ok``.
- **Broken**: the same pairs at 100 times the ``auto`` learning rate, without the anchor
  (``rpo_alpha`` 0): on an Intel Xeon 0/16 answers ended, all looping. The job still succeeds (the
  model exists and may be inspected), but it says it came out worse than its base in every place a
  user looks: a ``warn`` event, the job's ``quality``, ``selftune jobs follow`` and the dashboard.

``pytest -s`` prints the numbers (the closing note quotes them).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest

from bench.dpo_quality import FORM, MAX_TOKENS, Question, score, split, write_pairs
from selftune.methods import DPO_LEARNING_RATE_MULTIPLIER
from tests.conftest import LiveServer, run_cli
from tests.test_dashboard import CHROMIUM, CLOSED_NETWORK_FLAGS

pytestmark = pytest.mark.slow

BASE = "SmolLM2-135M-Instruct"


def train(client: openai.OpenAI, file_id: str, hyperparameters: dict[str, Any], suffix: str) -> Any:
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=file_id,
        suffix=suffix,
        seed=1,
        method={"type": "dpo", "dpo": {"hyperparameters": hyperparameters}},
    )
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(1)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    return job


CRITERIA = [  # the bench's form and ended, as OpenAI's graders
    {"type": "string_check", "name": "form", "input": "{{sample.output_text}}", "reference": FORM, "operation": "like"},
    {
        "type": "string_check",
        "name": "ended",
        "input": "{{sample.choices.0.finish_reason}}",
        "reference": "stop",
        "operation": "eq",
    },
]


def compare(client: openai.OpenAI, models: list[str], held: list[Question]) -> dict[str, tuple[Any, list[Any]]]:
    """Base against fine-tuned through the Evals API: one eval over the held-out questions, a
    completions run per model (both at once, greedy), each run with its answers as
    ``(text, ended)`` in question order."""
    ev = client.evals.create(
        name="capitals, held out",
        data_source_config={
            "type": "custom",
            "item_schema": {"type": "object", "properties": {"prompt": {"type": "string"}}, "required": ["prompt"]},
            "include_sample_schema": True,
        },
        testing_criteria=CRITERIA,  # type: ignore[arg-type]
    )
    content = [{"item": {"prompt": q.prompt, "capital": q.capital}} for q in held]
    runs: dict[str, Any] = {
        model: client.evals.runs.create(
            ev.id,
            name=model,
            data_source={  # type: ignore[arg-type]
                "type": "completions",
                "model": model,
                "source": {"type": "file_content", "content": content},
                "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.prompt}}"}]},
                "sampling_params": {"temperature": 0, "max_completion_tokens": MAX_TOKENS, "seed": 1},
            },
        )
        for model in models
    }
    out = {}
    for model, run in runs.items():
        while run.status not in ("completed", "failed", "canceled"):
            time.sleep(1)
            run = client.evals.runs.retrieve(run.id, eval_id=ev.id)
        assert run.status == "completed" and run.result_counts.errored == 0, run
        items = sorted(
            client.evals.runs.output_items.list(run.id, eval_id=ev.id, limit=100), key=lambda i: i.datasource_item_id
        )
        answers = [(i.sample.output[0].content or "", i.sample.finish_reason == "stop") for i in items]
        out[model] = (run, answers)
    return out


def passed(run: Any, criterion: str) -> int:
    (result,) = [r for r in run.per_testing_criteria_results if r.testing_criteria == criterion]
    return int(result.passed)


@pytest.fixture(scope="module")
def pairs(smol_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[Question]]:
    train_q, held = split()
    path = write_pairs(tmp_path_factory.mktemp("capitals") / "capitals.jsonl", train_q)
    return smol_server.client().files.create(file=path.open("rb"), purpose="fine-tune").id, held


def test_dpo_with_auto_settings_learns_the_form_and_keeps_the_content(
    smol_server: LiveServer, pairs: tuple[str, list[Question]]
) -> None:
    client = smol_server.client(timeout=600)
    file_id, held = pairs
    t0 = time.monotonic()
    job = train(client, file_id, {}, "form")
    seconds = time.monotonic() - t0
    assert job.fine_tuned_model is not None
    quality = (job.model_extra or {})["quality"]
    assert quality["verdict"] == "ok", quality["message"]

    compared = compare(client, [BASE, job.fine_tuned_model], held)
    (base_run, base_answers), (tuned_run, tuned_answers) = compared[BASE], compared[job.fine_tuned_model]
    base, tuned = score(held, base_answers), score(held, tuned_answers)
    hp = job.method.dpo.hyperparameters
    print(
        f"\nDPO, auto settings ({hp.model_dump()}), {seconds:.0f} s; {len(held)} held-out countries:\n"
        f"  base        form {base.form:.0%}  content {base.content:.0%}  ended {base.ended:.0%}\n"
        f"  fine-tuned  form {tuned.form:.0%}  content {tuned.content:.0%}  ended {tuned.ended:.0%}\n"
        f"  guard: {quality['message']}"
    )
    assert tuned.form >= 0.9
    assert tuned.content >= base.content
    assert tuned.ended >= 0.9
    # The runs' own graders agree with the answers they returned.
    n = len(held)
    for run, scores in ((base_run, base), (tuned_run, tuned)):
        assert run.result_counts.total == n and passed(run, "ended") == round(scores.ended * n)
        assert passed(run, "form") >= round(scores.form * n)  # "like": anywhere, not only at the start
    assert passed(tuned_run, "form") > passed(base_run, "form")


def test_a_broken_job_says_so_in_events_job_cli_and_dashboard(
    smol_server: LiveServer, pairs: tuple[str, list[Question]], tmp_path: Path
) -> None:
    client = smol_server.client(timeout=600)
    file_id, _ = pairs
    # Without the anchor at 100 times the rate: at that rate with the anchor the job came out fine on
    # an Intel Xeon (16/16 answers ended), where it had degenerated on an AMD EPYC.
    broken = {"learning_rate_multiplier": 100 * DPO_LEARNING_RATE_MULTIPLIER, "rpo_alpha": 0, "n_epochs": 1}
    job = train(client, file_id, broken, "broken")

    quality = (job.model_extra or {})["quality"]
    print(f"\nbroken job (learning rate x100, no anchor): {quality['message']}")
    assert quality["verdict"] == "degenerated"
    assert quality["fine_tuned"]["degenerate"] > quality["base"]["degenerate"]
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert any(e.level == "warn" and "came out worse than its base" in e.message for e in events)

    env = {"OPENAI_BASE_URL": smol_server.base_url, "OPENAI_API_KEY": "local"}
    follow = run_cli("jobs", "follow", job.id, env=env)
    assert follow.stdout.strip().endswith(str(job.fine_tuned_model))
    assert f"warning: {job.fine_tuned_model} came out worse than its base" in follow.stderr

    if CHROMIUM is None:
        pytest.skip("the dashboard part needs Debian's chromium (make test installs it when run as root)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CLOSED_NETWORK_FLAGS)
        try:
            page = browser.new_page()
            page.goto(f"{smol_server.url}/#/jobs/{job.id}")
            box = page.wait_for_selector("#quality [data-verdict=degenerated]")
            assert box is not None and "came out worse than its base" in box.inner_text()
            stray = "[...document.getElementById('view').childNodes].some(n => n.nodeType === 3 && n.textContent.trim() === 'null')"
            assert not page.evaluate(stray)  # the page printed a stray "null" under its charts before
        finally:
            browser.close()
