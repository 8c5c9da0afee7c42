"""A selftune server in a child process on 127.0.0.1, for tests, benchmarks and scripts.

``LiveServer(home, env).start()`` runs ``python -m selftune serve`` on a free loopback port with
its own ``SELFTUNE_HOME``, waits until ``/health`` answers, and hands out ``openai`` clients for it.
The test suite and ``make bench`` both use this one helper, so they start servers the same way,
and the same tiny random-init model (``build_tiny_model``) for what needs a model, not a good one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai

from selftune.errors import ServerFailed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    home: Path
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment (``SELFTUNE_*`` settings) on top of this process's."""
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def log(self) -> str:
        path = self.home / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = 300, *, keep_port: bool = False) -> LiveServer:
        """Start on a free port, or on ``port`` with ``keep_port`` (a restart clients must find again)."""
        if not (keep_port and self.port):
            self.port = free_port()
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "SELFTUNE_HOME": str(self.home), "PYTHONUNBUFFERED": "1", **self.env}
        with (self.home / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "selftune", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            return self.wait_healthy(timeout)
        except ServerFailed:
            self.stop()
            raise

    def wait_healthy(self, timeout: float) -> LiveServer:
        """Until ``/health`` answers; ``ServerFailed`` with the log's tail if it exits or never does."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(f"server exited with {self.proc.returncode}:\n{self.log[-4000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise ServerFailed(f"server did not become healthy in {timeout}s:\n{self.log[-4000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                # Stuck: its threads' stacks go to its log (``selftune serve`` registers SIGUSR1) first.
                self.proc.send_signal(signal.SIGUSR1)
                time.sleep(1)
                self.proc.kill()
                self.proc.wait()

    def client(self, api_key: str = "sk-test", timeout: float = 120) -> openai.OpenAI:
        """The real SDK, without retries: a test or benchmark must see the first answer."""
        return openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=timeout)

    def health(self) -> dict[str, Any]:
        return httpx.get(self.url + "/health", timeout=5).json()  # type: ignore[no-any-return]

    def rss_mb(self) -> float:
        """The server process's resident memory now (Linux)."""
        return self._status("VmRSS:")

    def peak_rss_mb(self) -> float:
        """The server process's peak resident memory so far (Linux)."""
        return self._status("VmHWM:")

    def _status(self, field: str) -> float:
        if self.proc is None:
            return float("nan")
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
        return float("nan")


CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_model(out: Path, *, context: int = 4096, seed: int = 0, width: int = 32, layers: int = 2) -> Path:
    """A random-init Llama (2 layers, width 32 unless asked) with a byte-level BPE tokenizer trained right here."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [
        "The quick brown fox jumps over the lazy dog.",
        "What is the capital of France? Paris is the capital of France.",
        "system user assistant hello world question answer",
    ] * 20
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    tok.chat_template = CHATML
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def serve_model(home: Path, name: str, model_dir: Path, **env: str) -> LiveServer:
    """A server whose default model is ``model_dir``, registered under ``name`` (``selftune models add``)."""
    run_env = {**os.environ, "SELFTUNE_HOME": str(home), **env}
    cmd = [sys.executable, "-m", "selftune", "models", "add", name, str(model_dir)]
    proc = subprocess.run(cmd, env=run_env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise ServerFailed(f"selftune models add {name} failed:\n{proc.stdout}\n{proc.stderr}")
    return LiveServer(home, {"SELFTUNE_DEFAULT_MODEL": name, **env}).start()


@dataclass
class Watched:
    """What a server did while a test worked on it: its resident memory and a chat request's latency."""

    rss_before_mb: float
    rss_peak_mb: float = 0.0
    latencies_s: list[float] = field(default_factory=list)

    @property
    def grew_mb(self) -> float:
        return self.rss_peak_mb - self.rss_before_mb

    def summary(self) -> str:
        times = sorted(self.latencies_s)
        p50 = f"{times[len(times) // 2] * 1000:.0f} ms" if times else "no request finished"
        return f"peak RSS +{self.grew_mb:.0f} MB, chat p50 {p50} over {len(times)} request(s)"


@contextmanager
def watching(server: LiveServer, model: str = "tiny", chat: bool = True) -> Iterator[Watched]:
    """Sample the server's memory every 10 ms, and (with ``chat``) time short chat requests, one
    after another, while the ``with`` block runs; print the figures after it."""
    watched = Watched(server.rss_mb())
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            watched.rss_peak_mb = max(watched.rss_peak_mb, server.rss_mb())
            stop.wait(0.01)

    def ask() -> None:
        client = server.client(timeout=60)
        while not stop.is_set():
            t0 = time.monotonic()
            with suppress(openai.APIError):
                client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
                watched.latencies_s.append(time.monotonic() - t0)
            stop.wait(0.05)

    threads = [threading.Thread(target=sample, daemon=True)]
    if chat:
        threads.append(threading.Thread(target=ask, daemon=True))
    for t in threads:
        t.start()
    try:
        yield watched
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=70)
        print(f"\n{watched.summary()}")
