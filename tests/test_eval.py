"""Evaluation: metrics on hand-checked values, the report formats, the judge's order, and the whole
path on a live server (``selftune eval`` through the SDK, and the report a job attaches)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from selftune.errors import InvalidFile
from selftune.eval import metrics as m
from selftune.eval.core import EvalReport, Example, Messages, Tick, load_examples, score
from selftune.eval.judge import judge, parse_verdict
from selftune.eval.report import to_html, to_markdown
from tests.conftest import LiveServer, chat_lines, run_cli


def test_normalisation_exact_match_and_contains() -> None:
    assert m.normalize("The  Knee-cap.") == "knee cap"
    assert m.exact_match("knee cap", "The Knee cap!") == 1.0
    assert m.exact_match("a knee cap, I think", "Knee cap") == 0.0
    assert m.contains("It was Richard Nixon, obviously.", "Richard Nixon") == 1.0
    assert m.contains("Nixonville", "Nixon") == 0.0  # whole words only
    assert m.contains("anything", "") == 0.0


def test_token_f1_and_rouge_l_by_hand() -> None:
    # normalised: pred [cat, sat, on, mat], ref [cat, is, on, mat]: 3 common, P = R = 3/4
    assert m.token_f1("The cat sat on the mat", "the cat is on the mat") == pytest.approx(0.75)
    # the LCS (cat, on, mat) is also 3 long here
    assert m.rouge_l("The cat sat on the mat", "the cat is on the mat") == pytest.approx(0.75)
    # same bag of words, reversed order: F1 is 1, but the longest common subsequence is one word
    assert m.token_f1("cat mat on", "on mat cat") == pytest.approx(1.0)
    assert m.rouge_l("cat mat on", "on mat cat") == pytest.approx(1 / 3)
    # P = 1/2 (2 of 4 predicted), R = 2/3 (2 of 3 reference): F = 2PR/(P+R) = 4/7
    assert m.rouge_l("red blue green yellow", "red green white") == pytest.approx(4 / 7)
    assert m.token_f1("", "") == 1.0 and m.token_f1("x", "") == 0.0


def test_json_and_labels() -> None:
    assert m.parse_json('```json\n{"a": 1}\n```') == {"a": 1}
    assert m.json_valid('{"a": 1') == 0.0 and m.json_valid(" [1, 2] ") == 1.0
    assert m.is_json_reference('{"x": true}') and not m.is_json_reference("42")
    refs = ["Positive", "negative.", "positive", "Negative", "positive"]
    labels = m.label_set(refs)
    assert labels == ["negative", "positive"]
    assert m.label_set(["one answer", "another one", "a third"]) is None  # nothing repeats
    assert m.predict_label("I'd say it is positive", labels) == "positive"
    assert m.predict_label("positive or negative", labels) == m.OTHER_LABEL
    gold = ["positive", "positive", "negative"]
    assert m.confusion(gold, ["positive", "negative", m.OTHER_LABEL], labels) == [[0, 0, 1], [1, 1, 0]]


def test_bootstrap_interval() -> None:
    assert m.bootstrap_ci([1.0] * 10) == (1.0, 1.0)
    values = [1.0] * 30 + [0.0] * 10
    low, high = m.bootstrap_ci(values, seed=3)
    assert low < 0.75 < high and low > 0.5 and high < 0.95
    assert m.bootstrap_ci(values, seed=3) == (low, high)  # seeded


def _examples(refs: Sequence[str]) -> list[Example]:
    return [Example(i + 1, [{"role": "user", "content": f"q{i}"}], r) for i, r in enumerate(refs)]


def test_score_picks_the_metric_finds_flips_and_summarises() -> None:
    refs = ["Paris", "Richard Nixon", "Knee cap", "Ireland"]
    report = score(
        _examples(refs),
        {
            "base": ["It is Paris.", "No idea", "Knee cap", "France"],
            "tuned": ["Paris", "Richard Nixon", "the elbow", "Ireland"],
        },
    )
    assert report.kind == "short" and report.primary == "contains"
    assert report.flips("tuned") == {"fixed": [1, 3], "broken": [2]}
    assert report.stats["base"]["contains"].mean == 0.5 and report.stats["tuned"]["exact_match"].mean == 0.75
    assert report.summary() == "Eval: contains answer 50% → 75%, exact match 25% → 75%, ROUGE-L 0.38 → 0.75 (n=4)"
    labels = score(_examples(["yes", "no", "yes", "no"]), {"a": ["yes", "yes", "Yes.", "maybe"]})
    assert labels.kind == "labels" and labels.confusion["a"] == [[0, 1, 1], [0, 2, 0]]


def test_reports_escape_and_show_every_answer() -> None:
    report = score(_examples(["<b>bold</b>", "x | y"]), {"base": ["<script>alert(1)</script>", "x | y"]})
    page = to_html(report)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page.lower() and "http" not in page  # self-contained, nothing to load
    assert "x \\| y" in to_markdown(report)


def test_the_judge_order_is_random_so_position_bias_cancels() -> None:
    report = score(_examples([f"answer {i}" for i in range(40)]), {"base": ["x"] * 40, "tuned": ["y"] * 40})
    seen: list[Messages] = []

    def always_first(prompts: Sequence[Messages], tick: Tick) -> list[str]:
        seen.extend(prompts)
        return ["A"] * len(prompts)

    result = judge(report, always_first, "lazy-judge", lambda: None)["results"]["tuned"]
    # A judge that always picks the first answer gives each side about half the wins.
    assert result["wins"] + result["losses"] == 40 and 10 <= result["wins"] <= 30
    assert result["first_position_rate"] == 1.0
    a_is_tuned = sum("Answer A:\ny" in p[-1]["content"] for p in seen)
    assert a_is_tuned == result["wins"]
    assert parse_verdict("B.") == "B" and parse_verdict("tie") == "T" and parse_verdict("no idea") is None


def test_bad_eval_files_say_where(tmp_path: Path) -> None:
    bad = tmp_path / "held.jsonl"
    bad.write_text(chat_lines(2) + '{"messages": [{"role": "assistant", "content": "hi"}]}\n{not json\n')
    with pytest.raises(InvalidFile) as e:
        load_examples(bad)
    assert f"{bad}:4" in e.value.message
    no_question = tmp_path / "q.jsonl"
    no_question.write_text(json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}) + "\n")
    with pytest.raises(InvalidFile, match=r"q.jsonl:1: .*no user message"):
        load_examples(no_question)
    # the prompt is everything before the last assistant message, which is the reference
    ok = tmp_path / "ok.jsonl"
    ok.write_text(chat_lines(3))
    assert load_examples(ok, limit=2)[1].prompt == [{"role": "user", "content": "question 1"}]


# --- live: the CLI through the SDK, and the report a job attaches --------------------------------------


def _wait(client: object, job_id: str) -> object:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)  # type: ignore[attr-defined]
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"{job_id} did not finish")


def test_a_job_with_a_validation_file_attaches_its_evaluation(server: LiveServer, tmp_path: Path) -> None:
    client = server.client()
    train = client.files.create(file=("t.jsonl", chat_lines(12).encode()), purpose="fine-tune")
    valid = client.files.create(file=("v.jsonl", chat_lines(5, offset=100).encode()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny", training_file=train.id, validation_file=valid.id, hyperparameters={"n_epochs": 1}
    )
    job = _wait(client, job.id)
    assert job.status == "succeeded", job.error  # type: ignore[attr-defined]
    names = [client.files.retrieve(f).filename for f in job.result_files]  # type: ignore[attr-defined]
    assert names == ["step_metrics.csv", "eval_report.html", "eval_report.json"]
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]  # type: ignore[attr-defined]
    summary = [e for e in events if e.startswith("Eval: ")]
    assert len(summary) == 1 and summary[0].endswith("(n=5)")
    report = json.loads(client.files.content(job.result_files[2]).text)  # type: ignore[attr-defined]
    assert report["models"] == ["tiny", job.fine_tuned_model] and report["n"] == 5  # type: ignore[attr-defined]
    assert report["summary"] == summary[0] and report["examples"][0]["reference"] == "answer 100"
    page = client.files.content(job.result_files[1]).text  # type: ignore[attr-defined]
    assert page.startswith("<!doctype html>") and "answer 104" in page
    # The same answers are an eval of the Evals API: a run per model, graded by the server.
    named = [e for e in events if e.startswith("Evaluation: eval ")]
    assert len(named) == 1, events
    eval_id = named[0].split()[2].rstrip(",")
    ev = client.evals.retrieve(eval_id)
    assert ev.metadata == {"fine_tuning_job_id": job.id} and job.id in ev.name  # type: ignore[attr-defined]
    _same_answers(client, eval_id, report)


def _same_answers(client: Any, eval_id: str, report: dict[str, Any]) -> None:
    """The eval's runs (one per model, named after it, oldest first) hold the report's answers,
    every item graded."""
    deadline = time.monotonic() + 60
    runs = client.evals.runs.list(eval_id, order="asc").data
    while any(r.status in ("queued", "in_progress") for r in runs) and time.monotonic() < deadline:
        time.sleep(0.2)
        runs = client.evals.runs.list(eval_id, order="asc").data
    assert [r.name for r in runs] == report["models"] and {r.status for r in runs} == {"completed"}
    for run, model in zip(runs, report["models"], strict=True):
        assert run.result_counts.total == report["n"] and run.result_counts.errored == 0
        items = sorted(client.evals.runs.output_items.list(run.id, eval_id=eval_id), key=lambda o: o.datasource_item_id)
        assert [o.sample.output[0].content for o in items] == [ex["outputs"][model] for ex in report["examples"]]
        assert [o.datasource_item["reference"] for o in items] == [ex["reference"] for ex in report["examples"]]


def test_eval_cli_compares_models_with_a_judge(server: LiveServer, tmp_path: Path) -> None:
    client = server.client()
    train = client.files.create(file=("t.jsonl", chat_lines(10).encode()), purpose="fine-tune")
    job = _wait(client, client.fine_tuning.jobs.create(model="tiny", training_file=train.id, suffix="judged").id)
    tuned = job.fine_tuned_model  # type: ignore[attr-defined]
    held = tmp_path / "held.jsonl"
    held.write_text(chat_lines(6, offset=50))
    out = {k: tmp_path / f"report.{k}" for k in ("html", "md", "json")}
    env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-test"}
    proc = run_cli(
        "eval",
        "--models",
        "tiny",
        tuned,
        "--data",
        str(held),
        "--judge",
        "tiny",
        "--max-tokens",
        "6",
        "--html",
        str(out["html"]),
        "--markdown",
        str(out["md"]),
        "--json",
        str(out["json"]),
        env=env,
    )
    assert "contains answer" in proc.stdout and "n=6" in proc.stdout
    report = json.loads(out["json"].read_text())
    assert report["models"] == ["tiny", tuned] and report["n"] == 6
    assert report["summary"] in proc.stdout.splitlines()  # whole, on one line, whatever the terminal width
    for model in ("tiny", tuned):
        assert set(report["stats"][model]) >= {"exact_match", "contains", "token_f1", "rouge_l", "embedding"}
        assert all(0 <= s["low"] <= s["mean"] <= s["high"] <= 1 for s in report["stats"][model].values())
    verdicts = report["judge"]["results"][tuned]
    assert report["judge"]["model"] == "tiny"
    assert verdicts["wins"] + verdicts["losses"] + verdicts["ties"] + verdicts["invalid"] == 6
    assert len(verdicts["verdicts"]) == 6
    page = out["html"].read_text()
    for ex in report["examples"]:
        for answer in ex["outputs"].values():
            assert _html(answer) in page
    assert "answer 55" in out["md"].read_text()
    # The answers came from an eval of the server's Evals API, a completions run per model.
    note = next(n for n in report["notes"] if n.startswith("answers sampled by the Evals API"))
    _same_answers(client, note.split()[7], report)
    # The same comparison sent as one Batch per model (the judge's too) gives the same answers.
    batched = tmp_path / "batched.json"
    args = ["--models", "tiny", tuned, "--data", str(held), "--judge", "tiny", "--max-tokens", "6"]
    run_cli("eval", *args, "--batch", "--json", str(batched), env=env)
    again = json.loads(batched.read_text())
    assert [ex["outputs"] for ex in again["examples"]] == [ex["outputs"] for ex in report["examples"]]
    assert again["judge"]["results"][tuned]["verdicts"] == verdicts["verdicts"]
    assert client.batches.list().data[0].endpoint == "/v1/chat/completions"
    assert not any("Evals API" in n for n in again["notes"])
    # ... and asked one by one through chat completions (what `selftune eval` does against other APIs).
    direct = tmp_path / "direct.json"
    run_cli("eval", *args, "--direct", "--json", str(direct), env=env)
    assert [ex["outputs"] for ex in json.loads(direct.read_text())["examples"]] == [
        ex["outputs"] for ex in report["examples"]
    ]
    missing = run_cli("eval", "--models", "tiny", "--data", str(tmp_path / "nope.jsonl"), env=env, check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    unknown = run_cli("eval", "-m", "no-such-model", "--data", str(held), env=env, check=False)
    assert unknown.returncode == 1 and "404" in unknown.stderr and "no-such-model" in unknown.stderr


def _html(text: str) -> str:
    import html

    return html.escape(text)


def test_report_object_round_trips(tmp_path: Path) -> None:
    report = score(_examples(["Paris"]), {"base": ["Paris"]})
    assert isinstance(report, EvalReport)
    data = report.to_dict()
    assert data["examples"][0]["scores"]["base"]["exact_match"] == 1.0 and data["flips"] == {}
    json.dumps(data)  # plain JSON, nothing custom
