"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by playwright; no browser
is ever downloaded), against a live server with the tiny model.

One user's flow: a rejected upload shows its problems line by line; a job made in the form shows an
estimate, trains with a live chart, and after a reload shows its whole curve and its evaluation; a
long job pauses, keeps its curve through a reload, resumes and is cancelled; the playground
streams two models side by side; a batch runs from its page; the pages fit a phone. Screenshots land in ``test-artifacts/dashboard/``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, LiveServer, chat_lines, preference_lines

CHROMIUM = os.environ.get("SELFTUNE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
CLOSED_NETWORK_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-dev-shm-usage",
]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it when run as root)"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CLOSED_NETWORK_FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, server: LiveServer) -> Iterator[Any]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    requests: list[str] = []
    pg.on("request", lambda r: requests.append(r.url))
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(60_000)
    yield pg
    context.close()
    assert not errors, errors
    outside = [u for u in requests if not u.startswith(server.url) and not u.startswith(("data:", "blob:"))]
    assert not outside, f"the dashboard reached outside its server: {outside}"


def shot(pg: Any, name: str) -> None:
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


POINTS = "Number(document.querySelector('#loss-chart')?.dataset.points || 0)"


def points(pg: Any) -> int:
    return int(pg.get_attribute("#loss-chart", "data-points") or 0)


def test_upload_train_watch_reload_and_compare(page: Any, server: LiveServer, tmp_path: Path) -> None:
    pg = page
    # A broken file: every problem, line by line, and nothing stored.
    broken = tmp_path / "broken.jsonl"
    broken.write_text(chat_lines(11) + '{"messages": [{"role": "assitant", "content": "x"}]}\n{oops\n')
    pg.goto(server.url + "/#/files")
    pg.set_input_files("#file-input", str(broken))
    pg.wait_for_selector("#problems")
    lines = [r.split("\t") for r in pg.inner_text("#problems tbody").splitlines()]
    assert {r[0] for r in lines if r[1] == "error"} == {"12", "13"}, lines
    assert any("did you mean 'assistant'" in r[2] for r in lines if r[0] == "12")
    shot(pg, "1-files-rejected")

    # Train and validation files, uploaded from the new-job form itself.
    train, valid = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    train.write_text(chat_lines(400))
    valid.write_text(chat_lines(6, offset=1000))
    pg.goto(server.url + "/#/new")
    pg.wait_for_selector("#create")
    pg.locator("input[type=file]").nth(0).set_input_files(str(train))
    pg.wait_for_function("document.querySelector('#training-file').selectedOptions[0]?.text.startsWith('train.jsonl')")
    pg.locator("input[type=file]").nth(1).set_input_files(str(valid))
    pg.wait_for_function("document.querySelector('#validation-file').selectedOptions[0]?.text.startsWith('valid')")
    pg.select_option("#model", "tiny")
    pg.fill("#epochs", "3")
    pg.fill("#suffix", "ui")
    pg.dispatch_event("#epochs", "change")
    pg.wait_for_function("document.querySelector('#estimate').innerText.includes('3 epochs')")
    estimate = pg.inner_text("#estimate")
    assert "400 examples" in estimate, estimate
    steps = int(re.search(r"([\d,]+) steps", estimate).group(1).replace(",", ""))  # type: ignore[union-attr]
    shot(pg, "2-new-job-estimate")
    pg.click("#create")
    pg.wait_for_url("**/#/jobs/ftjob-*")
    job_id = pg.url.rsplit("/", 1)[-1]

    # This job is short (a few seconds of training on the tiny model), so it can finish within one
    # poll: live growth is checked on the long job below. After a reload the whole curve is there.
    pg.wait_for_selector("h1 [data-status=succeeded]", timeout=300_000)
    pg.reload()
    pg.wait_for_function(f"{POINTS} === {steps}")
    report = pg.frame_locator("iframe.report")  # the job's evaluation report, base vs fine-tuned
    assert report.locator("h1").inner_text().startswith("Evaluation: tiny vs ft:tiny:local:ui:")
    assert pg.locator("#checkpoints tbody tr").count() == 3
    assert "Eval:" in pg.inner_text("#events")
    shot(pg, "4-job-succeeded")
    # The link to the same answers on the Evals API: the eval's runs, base and fine-tuned side by side.
    pg.click("#job-eval")
    pg.wait_for_selector("#runs tr[data-row='items passed']")
    assert pg.locator("#runs tr[data-row='items passed'] [data-run]").count() == 2
    pg.go_back()
    model = pg.inner_text("#checkpoints tbody tr:first-child td:nth-child(2)").rsplit(":ckpt-step-", 1)[0]
    assert model.startswith("ft:tiny:local:ui:")

    # A long job (50 epochs, thousands of steps): the chart grows while it trains; pause it, reload
    # (the curve stays), resume (it grows again), cancel.
    pg.goto(server.url + "/#/new")
    pg.wait_for_selector("#create")
    pg.select_option("#training-file", label=pg.inner_text("#training-file option:has-text('train.jsonl')"))
    pg.select_option("#model", "tiny")
    pg.fill("#epochs", "50")
    pg.click("#create")
    pg.wait_for_url("**/#/jobs/ftjob-*")
    long_job = pg.url.rsplit("/", 1)[-1]
    assert long_job != job_id
    pg.wait_for_function(f"{POINTS} > 0", timeout=120_000)
    first = points(pg)
    pg.wait_for_function(f"{POINTS} > {first}", timeout=120_000)
    shot(pg, "3-job-training")
    pg.click("#pause")
    pg.wait_for_selector("h1 [data-status=paused]", timeout=120_000)
    pg.wait_for_timeout(2 * 1500)  # a last poll picks up the last events
    paused_at = points(pg)
    assert paused_at > 0
    shot(pg, "5-job-paused")
    pg.reload()
    pg.wait_for_function(f"{POINTS} === {paused_at}")
    pg.click("#resume")
    pg.wait_for_function(f"{POINTS} > {paused_at}", timeout=120_000)
    pg.click("#cancel")
    pg.wait_for_selector("h1 [data-status=cancelled]")

    # The jobs list, the models page, and the playground: both models answer, streamed.
    pg.goto(server.url + "/#/jobs")
    pg.wait_for_selector(f"tr[data-job='{job_id}'] [data-status=succeeded]")
    pg.goto(server.url + "/#/models")
    pg.wait_for_selector(f"#models td:text-is('{model}')")
    # Download the fine-tuned model as a merged folder: exported, verified, saved as a tar.
    row = pg.locator(f"#models tr:has(td:text-is('{model}'))")
    row.locator("select.export-format").select_option(label="merged (transformers)")
    with pg.expect_download(timeout=300_000) as download:
        row.locator("button.export").click()
    with tarfile.open(download.value.path()) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile(next(n for n in names if n.endswith("/selftune-export.json"))))  # type: ignore[arg-type]
    assert any(n.endswith("/model.safetensors") for n in names), names
    assert manifest["model"] == model and manifest["verification"]["passed"]
    row.locator(".export-state:text-matches('^saved ')").wait_for()
    shot(pg, "6-models-export")
    pg.goto(server.url + f"/#/playground?a=tiny&b={model}")
    pg.wait_for_selector("#send")
    assert pg.input_value("#model-b") == model
    pg.fill("#max-tokens", "12")
    pg.fill("#prompt", "question 3")
    pg.click("#send")
    pg.wait_for_selector("#answers-a .answer[data-done='1']")
    pg.wait_for_selector("#answers-b .answer[data-done='1']")
    shot(pg, "7-playground")

    # Phone width: nothing wider than the screen.
    pg.set_viewport_size({"width": 390, "height": 844})
    for route in (f"#/jobs/{job_id}", "#/jobs", "#/playground", "#/new", "#/models"):
        pg.goto(server.url + "/" + route)
        pg.wait_for_timeout(800)
        width = pg.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, (route, width)
    shot(pg, "8-phone-new-job")
    (ARTIFACTS / "flow.json").write_text(json.dumps({"job": job_id, "model": model, "steps": steps}))


def test_a_dpo_job_charts_its_rewards(page: Any, server: LiveServer) -> None:
    client = server.client()
    train = client.files.create(file=("pairs.jsonl", preference_lines(12).encode()), purpose="fine-tune")
    valid = client.files.create(file=("held.jsonl", preference_lines(4, offset=50).encode()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=train.id,
        validation_file=valid.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 2}}},
    )
    page.goto(server.url + f"/#/jobs/{job.id}")
    page.wait_for_selector("h1 [data-status=succeeded]", timeout=300_000)
    page.reload()
    page.wait_for_function("Number(document.querySelector('#margin-chart')?.dataset.points || 0) === 6")
    assert "Reward accuracy" in page.inner_text("#accuracy-chart")
    assert "Reward margin" in page.inner_text("#margin-chart")
    assert "dpo (beta 0.1)" in page.inner_text(".grid")
    assert "valid reward accuracy" in page.inner_text("#checkpoints thead")
    shot(page, "7-dpo-job")


def test_a_wrong_key_is_asked_for_again(browser: Any, keyed_server: LiveServer) -> None:
    context = browser.new_context()
    pg = context.new_page()
    pg.goto(keyed_server.url + "/#/jobs")
    pg.wait_for_selector("#banner:not([hidden])")
    assert "API key" in pg.inner_text("#banner")
    pg.fill("#key", "sk-alice-0123456789")
    pg.click("#key-form button")
    pg.wait_for_selector("#jobs")
    assert pg.is_hidden("#banner")
    context.close()


def test_a_batch_runs_from_the_dashboard(page: Any, server: LiveServer, tmp_path: Path) -> None:
    """Upload a file of requests on the Batches page, start it, watch it finish, download its output;
    a file with a wrong line fails and says which line and why."""
    pg = page

    def request(i: int, url: str = "/v1/chat/completions") -> str:
        body = {"model": "tiny", "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 3}
        return json.dumps({"custom_id": f"r{i}", "method": "POST", "url": url, "body": body}) + "\n"

    # Names no other test uses: the server is shared, and the file picker lists every batch file by name
    # (test_batches uploads its own "requests.jsonl"), so the wait below must see this upload selected.
    tag = secrets.token_hex(4)
    good, bad = tmp_path / f"dashboard-requests-{tag}.jsonl", tmp_path / f"dashboard-wrong-{tag}.jsonl"
    good.write_text("".join(request(i) for i in range(3)))
    bad.write_text(request(0) + request(1, url="/v1/completions"))
    pg.goto(server.url + "/#/batches")
    ids: dict[Path, str] = {}  # the server is shared: other tests' batches are listed too
    for path in (good, bad):
        pg.set_input_files("#batch-upload", str(path))
        pg.wait_for_function(
            f"document.querySelector('#batch-file').selectedOptions[0]?.text.startsWith('{path.name}')"
        )
        file_id = pg.input_value("#batch-file")
        pg.click("#start-batch")
        for _ in range(100):  # the click's request is on its way
            started = [b.id for b in server.client().batches.list(limit=100) if b.input_file_id == file_id]
            if started:
                break
            pg.wait_for_timeout(100)
        (ids[path],) = started
        pg.wait_for_selector(f"#batches tr[data-batch='{ids[path]}']")
    done = pg.locator(f"#batches tr[data-batch='{ids[good]}']:has([data-status=completed])")
    done.wait_for(timeout=120_000)
    assert done.locator("td.progress").inner_text() == "3 / 3"
    with pg.expect_download() as download:
        done.locator("button:text-is('Output')").click()
    lines = [json.loads(x) for x in Path(download.value.path()).read_text().splitlines()]
    assert sorted(x["custom_id"] for x in lines) == ["r0", "r1", "r2"]
    assert all(x["response"]["status_code"] == 200 for x in lines)
    pg.wait_for_selector(f"#batches tr[data-batch='{ids[bad]}'] [data-status=failed]", timeout=120_000)
    problem = pg.inner_text(f"#batches tr[data-batch='{ids[bad]}'] + tr.batch-errors")
    assert "2" in problem.split() and "mismatched_url" in problem, problem
    shot(pg, "9-batches")
    pg.set_viewport_size({"width": 390, "height": 844})
    pg.wait_for_timeout(800)
    assert pg.evaluate("document.documentElement.scrollWidth") <= 390


def test_an_evals_runs_side_by_side_and_their_output_items(page: Any, server: LiveServer) -> None:
    """Two runs of one eval (given samples: a "base" and a "tuned" set) compared on the eval's page,
    and a run's report_url opening its output items."""
    client = server.client()
    criteria = [
        {
            "type": "string_check",
            "name": "exact",
            "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}",
            "operation": "eq",
        },
        {
            "type": "string_check",
            "name": "capital",
            "input": "{{sample.output_text}}",
            "reference": "Capital:",
            "operation": "like",
        },
    ]
    ev = client.evals.create(
        name=f"dashboard capitals {secrets.token_hex(3)}",
        data_source_config={
            "type": "custom",
            "item_schema": {"type": "object", "properties": {"answer": {"type": "string"}}},
            "include_sample_schema": True,
        },
        testing_criteria=criteria,  # type: ignore[arg-type]
    )
    answers = ["Capital: Paris", "Capital: Rome", "Capital: Oslo"]
    samples = {"base": ["Paris", "It is Rome.", "Oslo"], "tuned": ["Capital: Paris", "Capital: Rome", "Capital: Bern"]}
    runs = {}
    for name, outputs in samples.items():
        content = [{"item": {"answer": a}, "sample": {"output_text": o}} for a, o in zip(answers, outputs, strict=True)]
        runs[name] = client.evals.runs.create(
            ev.id, name=name, data_source={"type": "jsonl", "source": {"type": "file_content", "content": content}}
        )
    pg = page
    pg.goto(server.url + "/#/evals")
    pg.click(f"#evals tr[data-eval='{ev.id}'] a")
    pg.wait_for_selector(f"#runs [data-run='{runs['tuned'].id}'] [data-status=completed]", timeout=60_000)
    pg.wait_for_selector(f"#runs [data-run='{runs['base'].id}'] [data-status=completed]")
    passed = pg.inner_text("#runs tr[data-row='items passed']")
    assert "0 / 3 (0%)" in passed and "2 / 3 (67%)" in passed, passed
    assert pg.inner_text("#runs tr[data-row='passed: exact']").split("\t")[1:] == ["0 / 3 (0%)", "2 / 3 (67%)"]
    shot(pg, "10-evals")

    pg.goto(server.url + runs["tuned"].report_url)
    pg.wait_for_selector("#output-items tr[data-item='2'] [data-status=fail]")
    assert pg.inner_text("#run-counts") == "2 passed, 1 failed, 0 errored of 3"
    assert "Capital: Bern" in pg.inner_text("#output-items tr[data-item='2']")
    assert "exact: 0.00" in pg.inner_text("#output-items tr[data-item='2']")
