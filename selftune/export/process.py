"""The export process a server starts, and the folder it talks through: ``python -m selftune.export.process FOLDER``.

The contract between the server's export runner (``export.runner``) and this process is the export's
folder, ``SELFTUNE_HOME/exports/ID/``, and nothing else (no database):

- ``request.json`` (in): the model's resolved ``Source``, the ``ExportSpec`` and the name of the
  folder to build (written by the runner before each start);
- ``progress.json`` (out): ``{"stage", "done", "total"}``, rewritten at most every half second;
- ``result.json`` (out, last): ``{"manifest": ...}`` once the export is built and verified, or
  ``{"error": {"code", "message"}}`` (a verification failure's numbers included);
- ``NAME/``: the finished files (``export.build`` renames them into place only when verified);
- exit status 0 when it succeeded, 1 when it failed; ``export.log`` holds its output.

Every file is written atomically. The process dies with the server that started it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from selftune.atomic import write_atomic
from selftune.errors import SelftuneError
from selftune.export.spec import ExportSpec, Source

REQUEST, PROGRESS, RESULT, LOG = "request.json", "progress.json", "result.json", "export.log"


@dataclass(frozen=True)
class ExportRequest:
    source: Source
    spec: ExportSpec
    folder: str
    """The name of the finished folder inside the export's folder (the archive's top folder)."""

    def write(self, root: Path) -> None:
        data = {"source": self.source.to_dict(), "spec": asdict(self.spec), "folder": self.folder}
        write_atomic(root / REQUEST, json.dumps(data, indent=2))

    @classmethod
    def read(cls, root: Path) -> ExportRequest:
        data = json.loads((root / REQUEST).read_text())
        return cls(Source.from_dict(data["source"]), ExportSpec(**data["spec"]), data["folder"])


def read_progress(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / PROGRESS).read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def read_result(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / RESULT).read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def main(root: Path) -> int:
    from selftune.children import exit_with_parent
    from selftune.export.build import export

    exit_with_parent()  # a server killed with SIGKILL leaves no export running: the next claim rebuilds it
    request = ExportRequest.read(root)
    last = [0.0]

    def progress(stage: str, done: int, total: int) -> None:
        if time.monotonic() - last[0] >= 0.5 or done == total:
            last[0] = time.monotonic()
            write_atomic(root / PROGRESS, json.dumps({"stage": stage, "done": done, "total": total}))

    try:
        result: dict[str, Any] = {"manifest": export(request.source, request.spec, root / request.folder, progress)}
    except SelftuneError as e:  # not enough room, a failed verification: the message says what to do
        result = {"error": {"code": e.code or "export_failed", "message": e.message}}
    except Exception as e:  # reported as the export's error, which is what the client reads
        logging.exception("export failed")
        result = {"error": {"code": "export_failed", "message": f"{type(e).__name__}: {e}"}}
    write_atomic(root / RESULT, json.dumps(result, indent=2))
    return 0 if "manifest" in result else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
