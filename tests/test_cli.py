"""The CLI on real files and a live server: the data commands (validate, estimate, render) and the
client commands (files, jobs, chat), run as a user runs them."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import pytest

from selftune.methods import Hyperparameters
from selftune.train import lora
from selftune.train.protocol import TrainConfig
from tests.conftest import LiveServer, chat_lines, run_cli


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, str]:
    env = {"SELFTUNE_HOME": str(tmp_path_factory.mktemp("cli-home"))}
    run_cli("models", "add", "tiny", str(tiny_model_dir), env=env)
    return env


def test_validate_reports_token_statistics(home: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(
        chat_lines(12)
        + json.dumps({"messages": [{"role": "user", "content": "x " * 300}, {"role": "assistant", "content": "y"}]})
        + "\n"
    )
    out = json.loads(
        run_cli("validate", str(data), "--model", "tiny", "--max-seq-len", "64", "--json", env=home).stdout
    )
    assert out["ok"] and out["examples"] == 13 and out["model"] == "tiny"
    assert (
        out["tokens"]["min"] >= 10
        and out["tokens"]["max"] > 300
        and sum(b["count"] for b in out["tokens"]["histogram"]) == 13
    )
    assert out["truncated_lines"] == [13] and out["no_trainable_tokens_lines"] == [13]  # the answer was cut off
    text = run_cli("validate", str(data), "--model", "tiny", "--max-seq-len", "64", env=home).stdout
    assert "tokens per example under tiny" in text and f"will be truncated: {data}:13" in text
    # Without --max-seq-len the limit is the job's: the model's context (4096 here), capped by the setting.
    default = json.loads(run_cli("validate", str(data), "--model", "tiny", "--json", env=home).stdout)
    assert default["max_seq_len"] == 4096 and default["truncated_lines"] == []
    capped = {**home, "SELFTUNE_MAX_SEQ_LEN": "64"}
    assert (
        json.loads(run_cli("validate", str(data), "--model", "tiny", "--json", env=capped).stdout)["max_seq_len"] == 64
    )


def test_validate_names_what_the_template_would_drop(home: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "names.jsonl"
    named = {"messages": [{"role": "user", "content": "hi", "name": "ana"}, {"role": "assistant", "content": "hello"}]}
    data.write_text(chat_lines(11) + json.dumps(named) + "\n")
    out = json.loads(run_cli("validate", str(data), "--model", "tiny", "--json", env=home).stdout)
    assert out["unshown_name_lines"] == [12]
    text = run_cli("validate", str(data), "--model", "tiny", env=home).stdout
    assert f"does not show, so it is not trained: {data}:12" in text


def test_validate_names_file_and_line_and_exits_1(home: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(chat_lines(3) + '{"messages": [{"role": "assitant", "content": "x"}]}\n' + "{not json\n")
    proc = run_cli("validate", str(bad), env=home, check=False)
    assert proc.returncode == 1
    assert f"{bad}:4: error:" in proc.stdout and "[unrecognized_role]" in proc.stdout
    assert f"{bad}:5: error: not valid JSON" in proc.stdout
    out = json.loads(run_cli("validate", str(bad), "--json", env=home, check=False).stdout)
    assert not out["ok"] and {e["line"] for e in out["errors"]} == {4, 5}
    # estimate and render refuse it the same way, before loading any model.
    for cmd in ("estimate", "render"):
        proc = run_cli(cmd, str(bad), "--model", "tiny", env=home, check=False)
        assert proc.returncode == 1 and f"{bad}:4:" in proc.stderr


def test_estimate_counts_what_the_trainer_counts(home: dict[str, str], tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(chat_lines(20))
    est = json.loads(run_cli("estimate", str(data), "--model", "tiny", "--epochs", "2", "--json", env=home).stdout)
    assert est["n_epochs"] == 2 and est["batch_size"] == 1 and est["steps"] == 40
    assert est["cost"] == pytest.approx(est["billed_tokens"] / 1000 * 0.008)
    hp = Hyperparameters(n_epochs=2, batch_size=1, learning_rate_multiplier=1.0)
    cfg = TrainConfig(str(tiny_model_dir), str(data), str(tmp_path / "run"), hyperparameters=hp)
    (tmp_path / "job.json").write_text(json.dumps(cfg.to_dict()))
    assert lora.run(str(tmp_path / "job.json")) == 0
    done = json.loads((tmp_path / "run" / "events.jsonl").read_text().splitlines()[-1])
    assert est["billed_tokens"] == done["data"]["trained_tokens"]
    auto = json.loads(run_cli("estimate", str(data), "--model", "tiny", "--json", env=home).stdout)
    assert auto["n_epochs"] == 5  # the cookbook: 100 // 20


def test_estimate_probe_measures_wall_time(home: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(chat_lines(20))
    out = run_cli("estimate", str(data), "--model", "tiny", "--probe", env=home).stdout
    assert "wall time: about" in out and "measured by a probe" in out
    stored = json.loads((Path(home["SELFTUNE_HOME"]) / "throughput.json").read_text())
    assert stored["tiny"]["tokens_per_second"] > 0
    proc = run_cli("estimate", str(data), "--model", "tiny", "--epochs", "many", env=home, check=False)
    assert proc.returncode == 2 and "--epochs" in proc.stderr


def test_render_marks_the_trained_tokens(home: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "skip", "weight": 0},
                {"role": "user", "content": "again"},
                {"role": "assistant", "content": "learn this"},
            ]
        }
    ]
    data.write_text(json.dumps(rows[0]) + "\n" + chat_lines(2))
    wide = {**home, "COLUMNS": "400"}  # the header names the file in full, however deep tmp_path is
    out = run_cli("render", str(data), "--model", "tiny", "-n", "2", env=wide).stdout
    assert f"{data}:1" in out and f"{data}:2" in out and f"{data}:3" not in out
    assert "[[learn this<|im_end|>]]" in out and "[[skip" not in out and "skip<|im_end|>" in out
    assert "<|im_start|>user\nhi<|im_end|>" in out


def test_render_shows_tool_turns_with_the_calls_trained(home: dict[str, str], tmp_path: Path) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    row = {
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "18 C"},
            {"role": "assistant", "content": "Sunny."},
        ],
        "tools": tools,
    }
    data = tmp_path / "calls.jsonl"
    data.write_text(json.dumps(row) + "\n")
    out = run_cli("render", str(data), "--model", "tiny", env=home).stdout
    assert '[[<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>]]' in out
    assert "<tool_response>\n18 C\n</tool_response>" in out and "[[<tool_response>" not in out
    assert "[[Sunny.<|im_end|>]]" in out and '"name": "get_weather", "parameters"' in out  # the schema, untrained


def api(server: LiveServer) -> dict[str, str]:
    return {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-test"}


def test_from_a_local_file_to_a_chatting_model(server: LiveServer, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(chat_lines(12))
    proc = run_cli(
        "jobs",
        "create",
        "--model",
        "tiny",
        "--training-file",
        str(data),
        "--epochs",
        "1",
        "--suffix",
        "cli",
        "--follow",
        env=api(server),
    )
    job_id, model = proc.stdout.split()[0], proc.stdout.split()[-1]
    assert job_id.startswith("ftjob-") and model.startswith("ft:tiny:local:cli:")
    assert "12/12" in proc.stderr and "The job has successfully completed" in proc.stderr
    got = json.loads(run_cli("jobs", "get", job_id, env=api(server)).stdout)
    assert got["status"] == "succeeded" and got["hyperparameters"]["n_epochs"] == 1
    listed = run_cli("jobs", "list", env=api(server)).stdout
    assert job_id in listed and model in listed
    reply = run_cli("chat", model, "--max-tokens", "4", env=api(server), input="question 1\n\nquestion 2\n")
    # One streamed answer per turn, each ending in a newline. (The random tiny model may emit newlines
    # and control characters of its own, so count "at least", and not with splitlines.)
    assert reply.returncode == 0 and reply.stdout.count("\n") >= 2
    assert model in run_cli("models", "list", env=api(server)).stdout
    assert run_cli("models", "rm", model, env=api(server)).stdout.strip() == f"removed {model}"
    assert model not in run_cli("models", "list", env=api(server)).stdout.split()  # its checkpoints stay


def test_broken_files_are_refused_before_upload(server: LiveServer, tmp_path: Path) -> None:
    bad = tmp_path / "broken-upload.jsonl"
    bad.write_text(chat_lines(10) + '{"messages": [{"role": "user", "content": "no answer"}]}\n')
    for args in (("files", "upload", str(bad)), ("jobs", "create", "--model", "tiny", "--training-file", str(bad))):
        proc = run_cli(*args, env=api(server), check=False)
        assert proc.returncode == 1 and f"{bad}:11: error:" in proc.stderr
    assert "broken-upload.jsonl" not in run_cli("files", "list", env=api(server)).stdout


def test_files_and_job_actions(server: LiveServer, tmp_path: Path) -> None:
    data = tmp_path / "few.jsonl"
    data.write_text(chat_lines(3))
    file_id = run_cli("files", "upload", str(data), env=api(server)).stdout.strip()
    assert file_id in run_cli("files", "list", env=api(server)).stdout
    # Too few examples: the job fails, and follow says so with exit status 1.
    proc = run_cli(
        "jobs", "create", "--model", "tiny", "--training-file", file_id, "--follow", env=api(server), check=False
    )
    assert proc.returncode == 1 and "failed: Training file has 3 example(s)" in proc.stderr
    big = tmp_path / "big.jsonl"
    big.write_text(chat_lines(200))
    job_id = run_cli(
        "jobs", "create", "--model", "tiny", "--training-file", str(big), "--epochs", "20", env=api(server)
    ).stdout.strip()
    assert run_cli("jobs", "cancel", job_id, env=api(server)).stdout.strip() == f"{job_id}: cancelled"
    proc = run_cli("jobs", "resume", job_id, env=api(server), check=False)
    assert proc.returncode == 1 and "cannot be resumed" in proc.stderr
    assert run_cli("files", "rm", file_id, env=api(server)).stdout.strip() == f"deleted {file_id}"
    proc = run_cli("files", "list", env={"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}, check=False)
    assert proc.returncode == 1 and "cannot reach http://127.0.0.1:9/v1" in proc.stderr


ZARAGOZA = Path(str(files("zaragoza_construction_faq"))) / "data"
CHATTERBOT = Path(str(files("chatterbot_corpus"))) / "data" / "english"


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("faq-en-alpaca.jsonl", "alpaca"),
        ("faq-en-sharegpt.jsonl", "sharegpt"),
        ("faq-en.csv", "columns"),
        ("faq-en.json", "columns"),
    ],
)
def test_prepare_converts_real_datasets(tmp_path: Path, name: str, kind: str) -> None:
    out = tmp_path / "train.jsonl"
    proc = run_cli(
        "prepare", str(ZARAGOZA / name), "-o", str(out), "--val-split", "0.1", "--seed", "1", "--system", "Be brief."
    )
    assert f"503 record(s) ({kind})" in proc.stdout and "no errors" in proc.stdout
    train = [json.loads(line) for line in out.read_text().splitlines()]
    valid = [json.loads(line) for line in (tmp_path / "train_val.jsonl").read_text().splitlines()]
    assert len(train) + len(valid) == 503 and len(valid) == 50
    first = train[0]["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant"] and first[0]["content"] == "Be brief."
    assert run_cli("validate", str(out)).returncode == 0
    again = tmp_path / "again.jsonl"
    run_cli(
        "prepare", str(ZARAGOZA / name), "-o", str(again), "--val-split", "0.1", "--seed", "1", "--system", "Be brief."
    )
    assert again.read_text() == out.read_text()  # the split is reproducible


def test_prepare_chatterbot_yaml_duplicates_and_overlap(tmp_path: Path) -> None:
    out = tmp_path / "trivia.jsonl"
    proc = run_cli("prepare", str(CHATTERBOT / "trivia.yml"), "-o", str(out), check=False)
    # The corpus has one malformed entry: named by position, nothing written unless asked to skip it.
    assert proc.returncode == 1 and "trivia.yml:conversation 14: expected an object" in proc.stderr and not out.exists()
    proc = run_cli("prepare", str(CHATTERBOT / "trivia.yml"), "-o", str(out), "--skip-bad")
    assert "skipped" in proc.stderr and len(out.read_text().splitlines()) == 260
    rows = [{"q": "same question", "a": "answer one"}, {"q": "same question", "a": "answer two"}] + [
        {"q": f"q{i}", "a": f"a{i}"} for i in range(8)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [*rows, rows[2], rows[3]]))
    proc = run_cli("prepare", str(data), "-o", str(tmp_path / "p.jsonl"), "--val-split", "0.5", "--seed", "3")
    assert "2 exact duplicate(s) removed" in proc.stdout
    assert ("prompt that is also in the training set" in proc.stderr) == (
        _split_has_overlap(tmp_path / "p.jsonl", tmp_path / "p_val.jsonl")
    )


def _split_has_overlap(train: Path, valid: Path) -> bool:
    def prompts(p: Path) -> set[str]:
        return {json.loads(line)["messages"][0]["content"] for line in p.read_text().splitlines()}

    return bool(prompts(train) & prompts(valid))


def test_prepare_columns_parquet_and_errors(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {"ticket": [f"problem {i}" for i in range(10)], "fix": [f"fix {i}" for i in range(10)], "tone": ["calm"] * 10}
    )
    pq.write_table(table, tmp_path / "t.parquet")
    proc = run_cli("prepare", str(tmp_path / "t.parquet"), "-o", str(tmp_path / "x.jsonl"), check=False)
    assert (
        proc.returncode == 1
        and "pass --user-col and --assistant-col" in proc.stderr
        and "t.parquet:row 1" in proc.stderr
    )
    run_cli(
        "prepare",
        str(tmp_path / "t.parquet"),
        "-o",
        str(tmp_path / "x.jsonl"),
        "--user-col",
        "ticket",
        "--assistant-col",
        "fix",
        "--system-col",
        "tone",
    )
    first = json.loads((tmp_path / "x.jsonl").read_text().splitlines()[0])["messages"]
    assert first[0] == {"role": "system", "content": "calm"} and first[2]["content"].startswith("fix ")
    tsv = tmp_path / "d.tsv"
    tsv.write_text("prompt\tcompletion\nhello\tworld\nempty\t\n")
    proc = run_cli("prepare", str(tsv), "-o", str(tmp_path / "d.jsonl"), check=False)
    assert proc.returncode == 1 and f"{tsv}:3: no assistant answer" in proc.stderr
    proc = run_cli(
        "prepare", str(tmp_path / "t.parquet"), "-o", str(tmp_path / "y.txt"), "--user-col", "nope", check=False
    )
    assert proc.returncode == 1 and not (tmp_path / "y.txt").exists()
