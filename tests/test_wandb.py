"""Jobs with a Weights & Biases integration log their metrics to a W&B run (offline here: no network)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import openai
import pytest

from selftune import integrations
from selftune.errors import InvalidRequest
from tests.conftest import LiveServer, chat_lines
from tests.test_jobs_api import all_events, upload, wait


def test_a_job_logs_its_metrics_to_an_offline_wandb_run(client: openai.OpenAI, server: LiveServer) -> None:
    job = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=upload(client, chat_lines(12)),
        hyperparameters={"n_epochs": 1},
        integrations=[{"type": "wandb", "wandb": {"project": "selftune-tests", "name": "tiny-run", "tags": ["ci"]}}],
    )
    done = wait(client, job.id)
    assert done.status == "succeeded", done.error
    said = [e.message for e in all_events(client, job.id) if "W&B" in e.message]
    assert len(said) == 1 and said[0].startswith("Logging metrics to the W&B run 'tiny-run' offline in "), said
    folder = Path(re.search(r"offline in (\S+)", said[0]).group(1))  # type: ignore[union-attr]
    (log,) = folder.glob("run-*.wandb")  # what `wandb sync` uploads: protobuf records, strings kept as they are
    records = log.read_bytes()
    assert records.count(b"train_loss") >= 12  # a history row per step (and the summary)
    for text in (b"tiny-run", b"selftune-tests", b"ci", b"learning_rate_multiplier", b"checkpoint/train_loss"):
        assert text in records, text


@pytest.mark.parametrize(
    ("integration", "words"),
    [
        ({"type": "mlflow"}, "must be 'wandb'"),
        ({"type": "wandb", "wandb": {"name": "x"}}, '"project"'),
        ({"type": "wandb", "wandb": {"project": "p", "colour": "red"}}, "unknown key(s) colour"),
        ({"type": "wandb", "wandb": {"project": "p", "tags": "a,b"}}, "list of strings"),
    ],
)
def test_integrations_selftune_cannot_honour_are_400s(
    client: openai.OpenAI, integration: dict[str, object], words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(
            model="tiny",
            training_file=upload(client, chat_lines(12)),
            integrations=[integration],  # type: ignore[list-item]
        )
    assert e.value.param == "integrations[0]" and words in e.value.message


def test_without_the_wandb_package_creating_the_job_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # what importlib sees when the package is not installed
    with pytest.raises(InvalidRequest) as e:
        integrations.check([{"type": "wandb", "wandb": {"project": "p"}}])
    assert "pip install 'selftune[wandb]'" in e.value.message and e.value.code == "integration_unavailable"
