"""The python grader's sandbox, run as a script: ``python -I sandbox.py WORK HIDDEN...``.

Started by ``selftune.graders.python_grader`` under ``unshare --user --map-root-user --net --mount``
(a user namespace of its own, a network namespace with no interface up, a mount namespace). It
imports nothing of selftune. In order, it

1. mounts an empty tmpfs over each HIDDEN folder (the selftune home: every owner's files, the
   database, the models), as root of its user namespace;
2. enters a second user and mount namespace, in which those mounts are locked (the kernel refuses
   to unmount, from a less privileged namespace, what a more privileged one mounted);
3. sets its limits (OpenAI's: 2 GB of memory, 2 minutes of CPU, 1 GB per file written) and sends
   its own output and the grader's to /dev/null;
4. runs the source, calls ``grade(sample, item)`` on the JSON read from stdin, and writes
   ``{"reward": x}`` or ``{"error": traceback}`` to WORK/result.json.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import resource
import sys
import traceback

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MEMORY = 2 * 2**30
CPU_SECONDS = 120
FILE_BYTES = 2**30


def main() -> int:
    work, *hidden = sys.argv[1:]
    libc = ctypes.CDLL(None, use_errno=True)
    for folder in hidden:
        if os.path.isdir(folder) and libc.mount(b"tmpfs", folder.encode(), b"tmpfs", 0, b"size=64k,mode=0") != 0:
            print(f"cannot hide {folder}: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
            return 70
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
        print(f"cannot enter a nested namespace: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 70
    job = json.loads(sys.stdin.read())
    for limit, value in (
        (resource.RLIMIT_AS, MEMORY),
        (resource.RLIMIT_CPU, CPU_SECONDS),
        (resource.RLIMIT_FSIZE, FILE_BYTES),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(limit, (value, value))
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    result: dict[str, object]
    try:
        namespace: dict[str, object] = {"__name__": "grader"}
        exec(compile(job["source"], "grader.py", "exec"), namespace)
        grade = namespace.get("grade")
        if not callable(grade):
            raise NameError("the source defines no grade(sample, item) function")
        value = grade(job["sample"], job["item"])
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise TypeError(f"grade() returned {value!r}, not a number")
        result = {"reward": float(value)}
    except BaseException:
        result = {"error": traceback.format_exc(limit=-8)[-4000:]}
    with open(os.path.join(work, "result.json"), "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
