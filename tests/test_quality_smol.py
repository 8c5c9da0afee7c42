"""End to end on SmolLM2: DPO learns a form without losing the content, and a broken job says so.

The pairs differ only in form (``bench.dpo_quality``, from the ``countryinfo`` package): "What is
the capital of X?" answered ``Capital: Y`` (preferred) or ``The capital of X is Y.``. With the
defaults before issue 29 the job succeeded and the model answered every question "Capital:
Capital: Capital: ..." (form 100%, content 0%, ended 0%, measured with ``python -m bench.dpo_quality``).

- **Healthy**: a DPO job with every hyperparameter ``auto`` on 120 pairs. Asked every held-out
  country through the SDK, the fine-tuned model answers in the new form (at least 90%), names the
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from bench.dpo_quality import MAX_TOKENS, Question, score, split, write_pairs
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


def answers(client: openai.OpenAI, model: str, held: list[Question]) -> list[tuple[str, bool]]:
    def ask(q: Question) -> tuple[str, bool]:
        r = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": q.prompt}],
            max_tokens=MAX_TOKENS,
            temperature=0,
        )
        return r.choices[0].message.content or "", r.choices[0].finish_reason == "stop"

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(ask, held))


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

    base = score(held, answers(client, BASE, held))
    tuned = score(held, answers(client, job.fine_tuned_model, held))
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
