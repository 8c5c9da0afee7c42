"""The export process the server starts: ``python -m selftune.export.run EXPORT_JSON``.

It reads its request from the record (``selftune.exports``), builds the export into the record's
folder, and rewrites the record as it goes: progress at most every half second, then ``succeeded``
with the manifest, or ``failed`` with the error's message (a verification failure's numbers
included). It needs no database: the server resolved the model's paths before starting it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from selftune.convert.quantize import DEFAULT_QUANTIZE
from selftune.errors import SelftuneError
from selftune.export.build import ExportSpec, Source, export
from selftune.export.verify import VerificationFailed


def main(path: Path) -> int:
    from selftune.exports import write_record

    record: dict[str, Any] = json.loads(path.read_text())
    last = [0.0]

    def progress(stage: str, done: int, total: int) -> None:
        if time.monotonic() - last[0] >= 0.5 or done == total:
            last[0] = time.monotonic()
            record["progress"] = {"stage": stage, "done": done, "total": total}
            write_record(path, record)

    spec = ExportSpec(record["format"], record["quantize"] or DEFAULT_QUANTIZE, record["lora"])  # as parsed
    try:
        record["manifest"] = export(Source.from_dict(record["source"]), spec, path.parent / record["folder"], progress)
        record["status"] = "succeeded"
    except VerificationFailed as e:
        record.update(status="failed", error={"code": "export_verification_failed", "message": str(e)})
    except SelftuneError as e:  # not enough room, a missing file: the message says what to do
        record.update(status="failed", error={"code": e.code or "export_failed", "message": e.message})
    except Exception as e:  # reported on the record, which is what the client reads
        logging.exception("export failed")
        record.update(status="failed", error={"code": "export_failed", "message": f"{type(e).__name__}: {e}"})
    record["progress"] = None
    write_record(path, record)
    return 0 if record["status"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
