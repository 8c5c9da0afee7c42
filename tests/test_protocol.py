"""The worker-recipe contract (selftune.train.protocol) and the import boundary it exists for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from selftune.methods import Hyperparameters, MethodType
from selftune.train.protocol import (
    Checkpoint,
    Done,
    Error,
    EventReader,
    EventWriter,
    JobDir,
    Message,
    Metrics,
    Paused,
    TrainConfig,
    load_config,
    read_events,
    recipe_command,
    save_config,
)

ONE_OF_EACH = [
    Message("Fine-tuning job started", extra={"total_steps": 4}),
    Metrics("Step 1/4: training loss=1.00", step=1, total_steps=4, trained_tokens=37, train_loss=1.0, valid_loss=2.0),
    Checkpoint(
        "Checkpoint created at step 2", step=2, epoch=1, path="/c/step-2", metrics={"x": 1.0}, kept=["/c/step-2"]
    ),
    Paused("Fine-tuning job paused at step 2/4", step=2),
    Error("bad.jsonl:1: nothing to train", code="invalid_file_format"),
    Done("Training finished in 1.0s", trained_tokens=74, steps=4, seconds=1.0, tokens_per_second=None),
]


def test_every_event_type_round_trips(tmp_path: Path) -> None:
    writer = EventWriter(tmp_path / "events.jsonl")
    for e in ONE_OF_EACH:
        writer.emit(e)
    writer.close()
    back = read_events(tmp_path / "events.jsonl")
    assert [type(e) for e in back] == [type(e) for e in ONE_OF_EACH]
    for sent, got in zip(ONE_OF_EACH, back, strict=True):
        assert got.data() == sent.data() and got.message == sent.message and got.level == sent.level
        assert got.time > 0  # stamped when written
    metrics = back[1]
    assert isinstance(metrics, Metrics) and "trained_tokens" not in metrics.public()
    assert "valid_mean_token_accuracy" not in metrics.public()  # not measured at this step: not sent as null
    # The wire shape stays the one the worker relayed before the protocol had types.
    line = json.loads((tmp_path / "events.jsonl").read_text().splitlines()[4])
    assert line["type"] == "error" and line["level"] == "error" and line["data"] == {"code": "invalid_file_format"}


def test_reader_takes_whole_lines_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    reader = EventReader(path)  # the file does not exist yet: nothing to read, no error
    assert reader.read() == []
    path.write_text(Message("one").to_line() + "\n" + '{"type": "mess')  # a line still being written
    assert [e.message for e in reader.read()] == ["one"]
    with path.open("a") as f:
        f.write('age", "message": "two"}\n{not json}\n{"type": "from-a-newer-recipe", "message": "three"}\n')
    got = reader.read()
    assert [e.message for e in got] == ["two", "three"] and all(isinstance(e, Message) for e in got)
    # A new run's reader starts where the file ends: an earlier run's events are not relayed twice.
    assert EventReader(path).read() == []


def test_config_round_trip_and_typed_hyperparameters(tmp_path: Path) -> None:
    hp = Hyperparameters.from_dict({"n_epochs": "3", "batch_size": 2.0, "learning_rate_multiplier": "0.5", "beta": 1})
    assert hp == Hyperparameters(3, 2, 0.5, 1.0)
    cfg = TrainConfig(
        "/m", "/t.jsonl", str(tmp_path / "job"), method=MethodType.DPO, hyperparameters=hp, train_name="t.jsonl"
    )
    path = save_config(cfg)
    back = load_config(path)
    assert path == JobDir(tmp_path / "job").config and back == cfg
    assert isinstance(back.hyperparameters, Hyperparameters) and back.method is MethodType.DPO
    assert cfg.hyperparameters.learning_rate == pytest.approx(5e-4)
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "method_from_the_future": 1}))
    with pytest.raises(ValueError, match="method_from_the_future"):
        load_config(path)
    assert recipe_command(path)[1:] == ["-m", "selftune.train.lora", str(path)]
    assert json.loads(path.read_text())["hyperparameters"] == hp.to_dict()  # one object, nested whole


@pytest.mark.parametrize("module", ["selftune.worker", "selftune.jobs", "selftune.train.protocol", "selftune.cli"])
def test_the_worker_side_never_imports_torch(module: str) -> None:
    code = f"import sys, {module}; print(json.dumps(sorted(m for m in ('torch', 'transformers', 'selftune.train.lora', 'selftune.eval') if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
