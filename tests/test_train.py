"""The training recipe on a tiny random-init model, and the resolution of "auto" hyperparameters."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

from selftune.methods import Hyperparameters, MethodType, auto_epochs
from selftune.train import lora
from selftune.train.protocol import TrainConfig


@pytest.mark.parametrize(
    ("n", "epochs"), [(5, 20), (10, 10), (33, 3), (34, 3), (8333, 3), (10_000, 2), (30_000, 1), (1, 25)]
)
def test_auto_epochs_is_the_cookbook_heuristic(n: int, epochs: int) -> None:
    assert auto_epochs(n) == epochs


def test_resolution_keeps_explicit_values() -> None:
    assert Hyperparameters.resolve(None, 40) == Hyperparameters(n_epochs=3, batch_size=1, learning_rate_multiplier=1.0)
    assert Hyperparameters.resolve({"n_epochs": 2, "batch_size": "auto"}, 640).batch_size == 8
    assert Hyperparameters.resolve({"n_epochs": 2, "learning_rate_multiplier": 0.5}, 640).n_epochs == 2
    dpo = Hyperparameters.resolve({"beta": "auto"}, 40, MethodType.DPO)
    assert (dpo.beta, dpo.learning_rate_multiplier, dpo.rpo_alpha) == (0.1, 0.1, 1.0)
    assert "beta" not in dpo.common() and "rpo_alpha" not in dpo.common()
    assert Hyperparameters.resolve({"rpo_alpha": 0}, 40, MethodType.DPO).rpo_alpha == 0.0  # anchor off
    # A DPO job stored before the anchor existed trained without one, and still reads so.
    assert (
        Hyperparameters.from_dict(
            {"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1, "beta": 0.1}
        ).rpo_alpha
        is None
    )


def write_data(path: Path, n: int, offset: int = 0) -> Path:
    with path.open("w") as f:
        for i in range(offset, offset + n):
            msgs = [
                {"role": "user", "content": f"question {i % 4}"},
                {"role": "assistant", "content": f"answer {i % 4}"},
            ]
            f.write(json.dumps({"messages": msgs}) + "\n")
    return path


def run_recipe(
    tmp_path: Path, tiny_model_dir: Path, name: str, **overrides: object
) -> tuple[Path, list[dict[str, object]]]:
    cfg = TrainConfig(
        base_model_dir=str(tiny_model_dir),
        train_file=str(write_data(tmp_path / "train.jsonl", 16)),
        valid_file=str(write_data(tmp_path / "valid.jsonl", 4, offset=100)),
        output_dir=str(tmp_path / name),
        hyperparameters=Hyperparameters(n_epochs=8, batch_size=2, learning_rate_multiplier=10.0),
        seed=3,
    )
    for k, v in overrides.items():
        if k in Hyperparameters.__dataclass_fields__:
            cfg.hyperparameters = replace(cfg.hyperparameters, **{k: v})
        else:
            setattr(cfg, k, v)
    job = tmp_path / f"{name}.json"
    job.write_text(json.dumps(cfg.to_dict()))
    rc = lora.run(str(job))
    events = [json.loads(line) for line in (Path(cfg.output_dir) / "events.jsonl").read_text().splitlines()]
    assert rc == 0, events[-1]
    return Path(cfg.output_dir), events


def test_recipe_learns_writes_results_and_is_deterministic(tmp_path: Path, tiny_model_dir: Path) -> None:
    out, events = run_recipe(tmp_path, tiny_model_dir, "a")
    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    assert len(metrics) == 64 and metrics[-1]["total_steps"] == 64  # 16 examples / 2 x 8 epochs
    # A random-init model this small learns slowly; a broken mask or a frozen adapter would not move at all.
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] - 0.3
    assert "valid_loss" in metrics[-1] and events[0]["message"].startswith("Fine-tuning job started")
    ckpts = [e for e in events if e["type"] == "checkpoint"]
    assert [c["data"]["step"] for c in ckpts] == list(range(8, 65, 8)) and "full_valid_loss" in ckpts[-1]["data"][
        "metrics"
    ]
    assert (out / "adapter" / "adapter_config.json").is_file()
    with (out / "metrics.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    assert len(rows) == 65
    done = events[-1]
    assert done["type"] == "done" and done["data"]["trained_tokens"] == metrics[-1]["trained_tokens"]
    _, again = run_recipe(tmp_path, tiny_model_dir, "b")
    assert [e["data"]["train_loss"] for e in again if e["type"] == "metrics"] == [m["train_loss"] for m in metrics]


def test_checkpoints_are_pruned_to_the_last_three(tmp_path: Path, tiny_model_dir: Path) -> None:
    out, _ = run_recipe(tmp_path, tiny_model_dir, "c", n_epochs=5, valid_file=None)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-24", "step-32", "step-40"]


def test_bad_data_fails_with_a_code(tmp_path: Path, tiny_model_dir: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "only a question"}]}\n')
    cfg = TrainConfig(base_model_dir=str(tiny_model_dir), train_file=str(bad), output_dir=str(tmp_path / "o"))
    job = tmp_path / "job.json"
    job.write_text(json.dumps(cfg.to_dict()))
    assert lora.run(str(job)) == 2
    last = json.loads((tmp_path / "o" / "events.jsonl").read_text().splitlines()[-1])
    assert (
        last["type"] == "error" and last["data"]["code"] == "invalid_file_format" and "bad.jsonl:1" in last["message"]
    )


def test_every_epoch_sees_every_example_once_in_its_own_order() -> None:
    from selftune.train.step import plan_epochs

    lengths = [5 + (7 * i) % 40 for i in range(60)]
    schedule = plan_epochs(lengths, 3, 4, seed=11)
    epochs = [[i for e, idx in schedule if e == k for i in idx] for k in range(3)]
    assert all(sorted(order) == list(range(60)) for order in epochs)
    assert len({tuple(order) for order in epochs}) == 3  # reshuffled each epoch
    assert plan_epochs(lengths, 3, 4, seed=11) == schedule != plan_epochs(lengths, 3, 4, seed=12)
