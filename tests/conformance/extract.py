"""Cut the schemas the tests check out of OpenAI's official OpenAPI spec (2.9 MB) into a small JSON file.

    python tests/conformance/extract.py ../shared/conformance/openai-openapi.yaml

The result, ``openai-schemas.json``, holds those schemas and everything they reference, unchanged,
plus the source's sha256, so that the conformance tests run on any clean clone.
``test_conformance_copy_is_current`` checks it against the full spec whenever that is present.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
OUT = HERE / "openai-schemas.json"
CHECKED = [
    "Batch",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "DeleteFileResponse",
    "DeleteModelResponse",
    "ErrorResponse",
    "Eval",
    "EvalList",
    "EvalRun",
    "EvalRunList",
    "EvalRunOutputItem",
    "EvalRunOutputItemList",
    "DeleteFineTuningCheckpointPermissionResponse",
    "FineTuningJob",
    "FineTuningJobCheckpoint",
    "FineTuningJobEvent",
    "ListBatchesResponse",
    "ListFilesResponse",
    "ListFineTuningCheckpointPermissionResponse",
    "ListFineTuningJobCheckpointsResponse",
    "ListFineTuningJobEventsResponse",
    "ListModelsResponse",
    "ListPaginatedFineTuningJobsResponse",
    "Model",
    "RunGraderResponse",
    "ValidateGraderResponse",
    "OpenAIFile",
    "Response",
    "ResponseItemList",
    "Upload",
    "UploadPart",
]
PREFIX = "#/components/schemas/"


def extract(spec_path: Path) -> dict[str, Any]:
    raw = spec_path.read_bytes()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    schemas = yaml.load(raw, Loader=loader)["components"]["schemas"]
    keep: dict[str, Any] = {}
    todo = list(CHECKED)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep[name] = schemas[name]
            todo.extend(_refs(schemas[name]))
    return {
        "source": "openai/openai-openapi openapi.yaml (shared/conformance/openai-openapi.yaml)",
        "sha256": hashlib.sha256(raw).hexdigest(),
        "components": {"schemas": dict(sorted(keep.items()))},
    }


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [node["$ref"][len(PREFIX) :]] if isinstance(node.get("$ref"), str) else []
        return out + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


if __name__ == "__main__":
    data = extract(Path(sys.argv[1]))
    OUT.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    print(f"{OUT}: {len(data['components']['schemas'])} schemas, {OUT.stat().st_size} bytes")
