"""OpenAI's graders through the SDK (``client.fine_tuning.alpha.graders``), on the real server.

Every grader type with known rewards; the python grader's sandbox (a loop, an allocation past
2 GB, a socket, a look at the selftune home: each stopped or refused, and flagged); the judges
(``score_model``, ``label_model``) on the tiny model; bad graders answered with a 400 naming the
field, and a missing item field at run time flagged, not a 500.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from selftune.live import serve_model
from tests.conftest import ALICE, BOB, Conformance, LiveServer


def run(client: openai.OpenAI, grader: dict[str, Any], sample: str, item: dict[str, Any] | None = None) -> Any:
    return client.fine_tuning.alpha.graders.run(grader=grader, model_sample=sample, item=item or {})  # type: ignore[arg-type]


def reward(client: openai.OpenAI, grader: dict[str, Any], sample: str, item: dict[str, Any] | None = None) -> float:
    r = run(client, grader, sample, item)
    assert not any(r.metadata.errors.model_dump().values()), r.metadata.errors
    return float(r.reward)


def check(op: str, reference: str = "{{item.answer}}") -> dict[str, Any]:
    return {
        "type": "string_check",
        "name": op,
        "input": "{{sample.output_text}}",
        "reference": reference,
        "operation": op,
    }


def test_string_check_and_templates(server: LiveServer, conformance: Conformance) -> None:
    client = server.client()
    item = {"answer": "Paris", "city": {"name": "Paris"}}
    assert [reward(client, check(op), "Paris", item) for op in ("eq", "ne", "like", "ilike")] == [1, 0, 1, 1]
    assert [reward(client, check(op), "It is paris.", item) for op in ("eq", "ne", "like", "ilike")] == [0, 1, 0, 1]
    assert reward(client, check("eq", "{{item.city.name}}"), "Paris", item) == 1  # nested keys
    # The answer read as JSON: {{sample.output_json.*}}.
    assert reward(client, check("eq", "{{sample.output_json.city}}"), '{"city": "Paris"}') == 0
    grader = {**check("eq"), "input": "{{sample.output_json.city}}"}
    assert reward(client, grader, '{"city": "Paris"}', item) == 1
    raw = httpx.post(
        f"{server.base_url}/fine_tuning/alpha/graders/run",
        json={"grader": check("eq"), "model_sample": "Paris", "item": item},
    ).json()
    conformance.check("RunGraderResponse", raw)
    assert raw["metadata"]["name"] == "eq" and raw["metadata"]["type"] == "string_check"
    assert raw["metadata"]["execution_time"] >= 0 and raw["metadata"]["token_usage"] is None
    valid = client.fine_tuning.alpha.graders.validate(grader=check("like"))  # type: ignore[arg-type]
    assert valid.grader is not None and valid.grader.type == "string_check"  # type: ignore[union-attr]
    conformance.check(
        "ValidateGraderResponse",
        httpx.post(f"{server.base_url}/fine_tuning/alpha/graders/validate", json={"grader": check("eq")}).json(),
    )


@pytest.mark.parametrize(
    ("metric", "same", "known"),
    [
        ("fuzzy_match", 1.0, 0.8),  # hello/hallo: 8 of 10 characters in an alignment
        ("bleu", 1.0, None),
        ("gleu", 1.0, None),
        ("meteor", 0.9921875, None),  # METEOR's fragmentation penalty keeps one chunk of 4 words below 1
        ("rouge_1", 1.0, 0.0),
        ("rouge_2", 1.0, 0.0),
        ("rouge_5", 0.0, 0.0),  # 4 words have no 5-gram
        ("rouge_l", 1.0, 0.0),
        ("cosine", 1.0, None),
    ],
)
def test_text_similarity_metrics(server: LiveServer, metric: str, same: float, known: float | None) -> None:
    client = server.client()
    grader = {
        "type": "text_similarity",
        "name": metric,
        "input": "{{sample.output_text}}",
        "reference": "{{item.reference}}",
        "evaluation_metric": metric,
    }
    sentence = "the cat sat down"
    assert reward(client, grader, sentence, {"reference": sentence}) == pytest.approx(same, abs=1e-4)
    if known is not None:
        sample, ref = ("hello", "hallo") if metric == "fuzzy_match" else ("one two", "three four")
        assert reward(client, grader, sample, {"reference": ref}) == pytest.approx(known, abs=1e-4)
    half = reward(client, grader, "the cat sat down", {"reference": "the cat stood up"})
    assert 0 <= half < same or metric == "rouge_5"


PYTHON = """
def grade(sample, item):
    return 1.0 if sample["output_text"].strip() == item["answer"] else 0.25
"""


def python(source: str) -> dict[str, Any]:
    return {"type": "python", "name": "py", "source": source}


def test_python_graders_at_once_are_bounded_per_owner(keyed_server: LiveServer) -> None:
    """Two at once per owner (SELFTUNE_MAX_PYTHON_GRADERS_PER_OWNER): alice's third is a 429 while
    her two run, and bob's runs beside them."""
    slow = {
        "type": "python",
        "name": "slow",
        "source": "def grade(sample, item):\n    import time\n    time.sleep(4)\n    return 1.0",
    }
    alice, bob = keyed_server.client(ALICE), keyed_server.client(BOB)

    def call(client: openai.OpenAI) -> float | str:
        try:
            return float(run(client, slow, "x").reward)
        except openai.RateLimitError as e:
            return str(e.response.headers.get("retry-after")) + " " + e.message

    with ThreadPoolExecutor(4) as pool:
        first = [pool.submit(call, alice) for _ in range(2)]
        time.sleep(1.5)  # both are running (each sleeps 4 s in its sandbox)
        third, other = pool.submit(call, alice), pool.submit(call, bob)
        results = [f.result() for f in (*first, third, other)]
    assert results[:2] == [1.0, 1.0] and results[3] == 1.0, results
    assert isinstance(results[2], str) and results[2].startswith("1 ") and "2 of yours are running" in results[2]


def test_python_grader_scores_and_is_isolated(server: LiveServer) -> None:
    client = server.client()
    assert reward(client, python(PYTHON), " 4 ", {"answer": "4"}) == 1.0
    assert reward(client, python(PYTHON), "5", {"answer": "4"}) == 0.25

    def fails(source: str) -> str:
        r = run(client, python(source), "x")
        errors = r.metadata.errors
        assert r.reward == 0 and errors.python_grader_runtime_error, errors
        assert not errors.python_grader_server_error, errors
        return str(errors.python_grader_runtime_error_details)

    assert "ZeroDivisionError" in fails("def grade(sample, item):\n    return 1 / 0")
    assert "not a number" in fails("def grade(sample, item):\n    return 'high'")
    assert "stopped after 5 s" in fails("def grade(sample, item):\n    while True:\n        pass")
    assert "MemoryError" in fails("def grade(sample, item):\n    return len(bytearray(3 * 2**30))")
    port = server.base_url.split(":")[-1].split("/")[0]
    reach = f"def grade(sample, item):\n    import socket\n    socket.create_connection(('127.0.0.1', {port}), 2)\n"
    assert "Network is unreachable" in fails(reach + "    return 1.0")
    # The selftune home (every owner's files and the database) is an empty, unreadable folder.
    look = f"def grade(sample, item):\n    import os\n    return float(len(os.listdir({str(server.home)!r})))"
    assert "PermissionError" in fails(look)
    unmount = f"def grade(sample, item):\n    import ctypes\n    return float(ctypes.CDLL(None).umount2({str(server.home).encode()!r}, 2))"
    assert reward(client, python(unmount), "x") == -1.0  # the cover cannot be taken off


def test_multi_grader_formula(server: LiveServer) -> None:
    client = server.client()
    grader = {
        "type": "multi",
        "name": "both",
        "graders": {"exact": check("eq"), "near": {**check("ilike"), "name": "near"}},
        "calculate_output": "0.75 * exact + 0.25 * near ^ 2 + min(1, abs(-0.5)) - floor(0.9)",
    }
    r = run(client, grader, "paris", {"answer": "Paris"})
    assert r.reward == pytest.approx(0.25 + 0.5) and r.sub_rewards == {"exact": 0.0, "near": 1.0}
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.alpha.graders.validate(grader={**grader, "calculate_output": "exact + nope"})  # type: ignore[arg-type]
    assert e.value.body["param"] == "grader.calculate_output" and "'nope'" in e.value.message  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.alpha.graders.validate(grader={**grader, "calculate_output": "__import__('os')"})  # type: ignore[arg-type]
    assert e.value.body["param"] == "grader.calculate_output"  # type: ignore[index]


def test_a_model_this_server_lacks_is_judged_by_the_operators_judge_api(
    server: LiveServer, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """SELFTUNE_JUDGE_BASE_URL: a grader's model this server does not serve goes to that API (here
    the session's server, which serves ``tiny``; this one serves its model as ``own-tiny``)."""
    judged = serve_model(
        tmp_path, "own-tiny", tiny_model_dir, SELFTUNE_ENGINE="torch", SELFTUNE_JUDGE_BASE_URL=server.base_url
    )
    try:
        client = judged.client()
        label = {
            "type": "label_model",
            "name": "mood",
            "model": "tiny",  # not here: the judge API's
            "input": [{"role": "user", "content": "Mood of: {{sample.output_text}}"}],
            "labels": ["happy", "sad"],
            "passing_labels": ["happy"],
        }
        r = run(client, label, "What a day!")
        assert not any(r.metadata.errors.model_dump().values()) and r.reward in (0.0, 1.0)
        assert r.model_grader_token_usage_per_model["tiny"]["prompt_tokens"] > 0
        assert run(client, {**label, "model": "own-tiny"}, "x").model_grader_token_usage_per_model.keys() == {
            "own-tiny"
        }
        # A model neither has: accepted here (the judge API decides), and its refusal is a flagged grade.
        client.fine_tuning.alpha.graders.validate(grader={**label, "model": "no-such-judge"})  # type: ignore[arg-type]
        r = run(client, {**label, "model": "no-such-judge"}, "x")
        errors = r.metadata.errors
        assert (
            r.reward == 0
            and errors.model_grader_server_error
            and "no-such-judge" in errors.model_grader_server_error_details
        )
    finally:
        judged.stop()


def test_model_judges_on_a_served_model(server: LiveServer) -> None:
    client = server.client()
    prompt = [{"role": "user", "content": "Answer: {{sample.output_text}}. Reference: {{item.answer}}. Score it."}]
    score = {"type": "score_model", "name": "judge", "model": "tiny", "input": prompt, "range": [0, 100]}
    r = run(client, score, "4", {"answer": "4"})
    errors = r.metadata.errors
    # A random tiny model: its score is any number in range (the schema makes it a number), or,
    # outside the range, a parse error; never a server error.
    assert not errors.model_grader_server_error and (0 <= r.reward <= 100 or errors.model_grader_parse_error)
    assert r.metadata.sampled_model_name == "tiny" and r.metadata.token_usage > 0
    assert r.model_grader_token_usage_per_model["tiny"]["prompt_tokens"] > 0
    label = {
        "type": "label_model",
        "name": "mood",
        "model": "tiny",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Mood of: {{sample.output_text}}"}]}],
        "labels": ["happy", "sad"],
        "passing_labels": ["happy"],
    }
    multi = {"type": "multi", "name": "m", "graders": {"mood": label}, "calculate_output": "mood"}
    r = run(client, multi, "What a day!")
    assert not any(r.metadata.errors.model_dump().values()) and r.reward in (0.0, 1.0)
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.alpha.graders.validate(grader={**score, "model": "no-such-model"})  # type: ignore[arg-type]
    assert e.value.body["param"] == "grader.model"  # type: ignore[index]


@pytest.mark.parametrize(
    ("grader", "param"),
    [
        ({**check("eq"), "reference": "{{answer}}"}, "grader.reference"),
        ({**check("eq"), "reference": "{{sample.text}}"}, "grader.reference"),
        ({**check("eq"), "operation": "contains"}, "grader.string_check.operation"),
        ({**check("eq"), "pass_treshold": 0.5}, "grader.string_check.pass_treshold"),
        (python("def grade(sample, item)\n    return 1"), "grader.source"),
        (python("x = 1"), "grader.source"),
        (
            {
                "type": "label_model",
                "name": "l",
                "model": "tiny",
                "input": [{"role": "user", "content": "x"}],
                "labels": ["a"],
                "passing_labels": ["b"],
            },
            "grader.passing_labels",
        ),
        (
            {
                "type": "score_model",
                "name": "s",
                "model": "tiny",
                "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}],
            },
            "grader.input.0.content",
        ),
    ],
)
def test_bad_graders_are_400s_naming_the_field(server: LiveServer, grader: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        server.client().fine_tuning.alpha.graders.run(grader=grader, model_sample="x")  # type: ignore[arg-type]
    assert e.value.body["param"] == param, e.value.body  # type: ignore[index]


def test_a_missing_item_field_is_flagged_not_fatal(server: LiveServer) -> None:
    r = run(server.client(), check("eq"), "Paris", {"solution": "Paris"})
    assert r.reward == 0 and r.metadata.errors.invalid_variable_error
    r = run(server.client(), {**check("eq"), "input": "{{sample.output_json.city}}"}, "not json", {"answer": "x"})
    assert r.reward == 0 and r.metadata.errors.sample_parse_error
