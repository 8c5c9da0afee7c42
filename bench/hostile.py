"""The hostile-client part of ``make bench``: what a flood or a careless client costs the server.

1. **A 300 MB body with no key**, declared (Content-Length) and streamed (chunked), to a server with
   API keys: the seconds until it answers 4xx, and how much its resident memory grew.
2. **Chat latency while a 100 MB batch is validated and answered**: a chat request after another on
   the default model (``make serve``'s server, SmolLM2 on llama.cpp), idle, then from the batch's
   creation through its validation and the first ``ANSWER_SECONDS`` of its answering (then it is
   cancelled: answering 100 MB of lines takes hours on two cores). p50 against idle.
3. **Fuzzing** (``bench.fuzz``): at least 2,000 generated requests to every documented route, none
   answered 5xx and none outside the served OpenAPI document.

    python -m bench.hostile [--work DIR]   # these alone; prints the headline's rows
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import time
from pathlib import Path
from typing import Any

from bench import met
from bench.fuzz import fuzz
from selftune.config import Settings
from selftune.live import LiveServer, build_tiny_model, serve_model, watching

BODY_BYTES = 300 << 20
BATCH_BYTES = 100 << 20
ANSWER_SECONDS = 30
FUZZ_EXAMPLES = 60
KEYS = "sk-bench-0123456789:bench"


def raw_request(port: int, head: str, body_bytes: int, chunked: bool = False, timeout: float = 10) -> tuple[str, float]:
    """Send a request whose body is ``body_bytes`` of zeros (declared, or chunked), as fast as the server
    takes it, and stop sending as soon as it answers; (status line, seconds to the answer)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setblocking(False)
    t0 = time.monotonic()
    block = b"0" * (1 << 20)
    piece = (f"{len(block):x}\r\n".encode() + block + b"\r\n") if chunked else block
    pending, sent, sending, answer = memoryview(head.encode()), 0, True, b""
    while time.monotonic() - t0 < timeout and b"\r\n" not in answer:
        try:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
            continue
        except BlockingIOError:
            pass
        except ConnectionError:
            break
        if sending and not pending and sent < body_bytes:
            pending, sent = memoryview(piece), sent + len(block)
        if sending and pending:
            try:
                pending = pending[sock.send(pending) :]
            except BlockingIOError:
                time.sleep(0.001)
            except ConnectionError:  # the server stopped reading: what it answered is still to be read
                sending = False
        else:
            time.sleep(0.001)
    seconds = time.monotonic() - t0
    sock.close()
    return answer.split(b"\r\n", 1)[0].decode(errors="replace"), seconds


CHAT_HEAD = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


def big_body(server: LiveServer) -> dict[str, Any]:
    """A 300 MB body without a key, declared and chunked."""
    out: dict[str, Any] = {}
    for how, head, chunked in (
        ("declared", CHAT_HEAD + f"Content-Length: {BODY_BYTES}\r\n\r\n", False),
        ("chunked", CHAT_HEAD + "Transfer-Encoding: chunked\r\n\r\n", True),
    ):
        with watching(server, chat=False) as w:
            status, seconds = raw_request(server.port, head, BODY_BYTES, chunked=chunked)
        out[how] = {"status": status, "seconds": seconds, "rss_growth_mb": w.grew_mb}
    return out


def batch_lines(model: str, size: int) -> bytes:
    """Chat lines of about 1 KB each (a paragraph of prompt), ``size`` bytes in all."""
    prompt = " ".join(f"item {k} of the list, described briefly." for k in range(25))
    lines, total, i = [], 0, 0
    while total < size:
        body = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": f"{i}: {prompt}"}]}
        line = json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
        lines.append(line.encode() + b"\n")
        total, i = total + len(lines[-1]), i + 1
    return b"".join(lines)


def chat_during_batch(server: LiveServer, model: str) -> dict[str, Any]:
    client = server.client(timeout=600)
    with watching(server, model=model) as idle:
        time.sleep(15)
    data = batch_lines(model, BATCH_BYTES)
    upload = client.files.create(file=("bench-batch.jsonl", data), purpose="batch")
    with watching(server, model=model) as busy:
        t0 = time.monotonic()
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
        while (batch := client.batches.retrieve(batch.id)).status == "validating":
            time.sleep(0.5)
        validated = time.monotonic() - t0
        time.sleep(ANSWER_SECONDS)
        answered = client.batches.retrieve(batch.id).request_counts
    client.batches.cancel(batch.id)
    idle_p50, busy_p50 = _p50(idle.latencies_s), _p50(busy.latencies_s)
    return {
        "batch_mb": len(data) / 2**20,
        "lines": data.count(b"\n"),
        "status_after_validation": batch.status,
        "validation_seconds": validated,
        "answered_in_window": answered.completed if answered else 0,
        "idle_p50_s": idle_p50,
        "busy_p50_s": busy_p50,
        "ratio": busy_p50 / idle_p50,
        "chat_requests": len(busy.latencies_s),
        "rss_growth_mb": busy.grew_mb,
    }


def _p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run(work: Path, quick: bool = False) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    tiny = build_tiny_model(work / "tiny")
    r: dict[str, Any] = {}
    keyed = serve_model(work / "home-keyed", "tiny", tiny, SELFTUNE_ENGINE="torch", SELFTUNE_API_KEYS=KEYS)
    try:
        r["big_body"] = big_body(keyed)
    finally:
        keyed.stop()
    fuzzed = serve_model(work / "home-fuzz", "tiny", tiny, SELFTUNE_ENGINE="torch")
    try:
        r["fuzz"] = vars(fuzz(fuzzed, 5 if quick else FUZZ_EXAMPLES))
    finally:
        fuzzed.stop()
    default = LiveServer(work / "home-default").start(timeout=900)
    try:
        model = Settings(home=default.home).default_model
        r["batch_load"] = chat_during_batch(default, model)
    finally:
        default.stop()
    return r


def rows(h: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The headline's three targets, and the section's table."""
    body, load, fz = h["big_body"], h["batch_load"], h["fuzz"]
    worst = max(body.values(), key=lambda b: (b["seconds"], b["rss_growth_mb"]))
    body_ok = all(
        b["status"].split()[1].startswith("4") and b["seconds"] < 1 and b["rss_growth_mb"] < 50 for b in body.values()
    )
    server_errors = sum(n for status, n in fz["statuses"].items() if int(status) >= 500)
    fuzz_ok = fz["requests"] >= 2000 and server_errors == 0 and not fz["failures"]
    targets = [
        f"| a 300 MB body without a key: 4xx in < 1 s, memory + < 50 MB | **{worst['seconds']:.3f} s, "
        f"+{worst['rss_growth_mb']:.0f} MB** | {met(body_ok)} |",
        f"| chat p50 while a 100 MB batch is validated and answered ≤ 2× idle | **{load['ratio']:.2f}×** "
        f"| {met(load['ratio'] <= 2)} |",
        f"| fuzzing: ≥ 2,000 requests, 0 answered 5xx, 0 outside the schema | **{fz['requests']} requests, "
        f"{server_errors} 5xx, {len(fz['failures'])} failures** | {met(fuzz_ok)} |",
    ]
    table = [
        "| case | answer | seconds | server memory |",
        "|---|---|---|---|",
        *(
            f"| 300 MB body, {how}, no key | {b['status']} | {b['seconds']:.3f} | +{b['rss_growth_mb']:.0f} MB |"
            for how, b in body.items()
        ),
        f"| {load['batch_mb']:.0f} MB batch ({load['lines']:,} lines): validated | {load['status_after_validation']} "
        f"| {load['validation_seconds']:.1f} | +{load['rss_growth_mb']:.0f} MB |",
        "",
        f"Chat p50 idle {load['idle_p50_s'] * 1000:.0f} ms; while the batch was validated and for "
        f"{ANSWER_SECONDS} s of answering ({load['answered_in_window']} lines answered) "
        f"{load['busy_p50_s'] * 1000:.0f} ms over {load['chat_requests']} requests. Fuzzing: "
        f"{fz['requests']} requests to {fz['operations']} operations in {fz['seconds']:.0f} s "
        f"({', '.join(f'{n} × {s}' for s, n in sorted(fz['statuses'].items()))}).",
    ]
    return targets, table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--work", type=Path, default=Path(__file__).resolve().parent.parent / ".bench" / "hostile")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    r = run(args.work, args.quick)
    (args.work / "hostile.json").write_text(json.dumps(r, indent=2, default=str))
    targets, table = rows(json.loads(json.dumps(r, default=str)))
    print("\n".join(["| target | result | |", "|---|---|---|", *targets, "", *table]))


if __name__ == "__main__":
    main()
