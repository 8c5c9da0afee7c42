"""Checking an export before it is handed over: a reader selftune did not write answers as selftune does.

The reference is the model as selftune trained and serves it: the unquantised base weights with
the PEFT adapter applied, in PyTorch, greedy. For each golden prompt it gives the answer (up to
``TOKENS`` tokens or the end of turn) and, at every position of it, its top token and that
token's lead over the runner-up in nats.

The export is then read by its own tool: ``transformers`` from the exported folder (its tokenizer
and chat template included: the prompt it renders must be the prompt selftune renders), or
llama.cpp from the exported GGUF (with the exported LoRA beside it for ``--lora``). Two numbers:

- **equal answers**: the reader's own greedy answer, stopping where its own stop-token metadata
  says, against the reference answer (an export that never stops fails this);
- **next-token agreement**: teacher-forced on the reference answer, how often the reader's top
  token is the reference's, and the largest lead among the positions where it is not.

An export passes when every answer is equal, or when agreement reaches ``min_agreement`` and no
miss happens where the reference decided clearly (lead above ``decided``). Both depend on how
lossy the format is (``CRITERIA``): a quantised GGUF rounds where the top two tokens nearly tie,
a wrongly merged or wrongly permuted one misses everywhere.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from selftune.atomic import write_atomic
from selftune.data.render import render_prompt, stop_token_ids
from selftune.errors import VerificationFailed

GOLDEN = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three colors.",
    "How do I boil an egg?",
    "Tell me a joke about cats.",
    "What is 12 times 7?",
    "Translate 'good morning' into Spanish.",
    "Explain photosynthesis in one sentence.",
)
TOKENS = 32

CRITERIA: dict[str, tuple[float, float | None]] = {
    "unquantised": (0.98, 0.05),
    "f16": (0.98, 0.1),
    "q8_0": (0.85, None),
    "q4_k_m": (0.60, None),
    "served": (0.80, None),
}
"""Per precision: (minimum next-token agreement, the lead in nats above which any miss fails).

Measured on SmolLM2 (README, Export): unquantised and f16 exports give the reference's answers
token for token. Quantised ones are re-quantised from weights that were already 4-bit (the
shipped Q4_1 base, de-quantised for training), onto another grid, and llama.cpp quantises
activations too, so their misses are not all near-ties: q8_0 agreed on 94-98% of positions with
misses up to 0.7 nats, q4_k_m on 74-90%; ``served`` (the server's own Q4_1 base with the LoRA
beside it) on 90-96%. Those bars only catch a quantisation gone wrong: every quantised GGUF is
also checked as float16 at f16's bar (``formats._gguf_check``), which catches a wrong merge or
a lost permutation."""


@dataclass
class Answer:
    text: str
    prompt: list[int]
    tokens: list[int]
    """The greedy answer, its end-of-turn token included when it ended there."""
    choices: list[int]
    leads: list[float]


@dataclass
class Reference:
    answers: list[Answer]
    stop_ids: set[int]
    tokenizer: Any


@dataclass
class Verification:
    reader: str
    precision: str
    prompts: int
    equal_answers: int
    agreement: float
    positions: int
    largest_miss_lead: float
    min_agreement: float
    decided: float | None
    passed: bool
    samples: list[dict[str, str]] = field(default_factory=list)
    """Per prompt: the reference's answer and the reader's, as text (for the report)."""
    twin: dict[str, Any] | None = None
    """A quantised GGUF's float16 twin's verification (``formats._gguf_check``)."""
    worst_miss: str = ""
    """Where the largest miss happened (prompt, position, both tokens), so that a failure says where to look."""

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        bar = "" if self.decided is None else f" (needs < {self.decided})"
        return (
            f"{self.reader}: {verdict}: {self.equal_answers}/{self.prompts} answers equal, next-token agreement "
            f"{self.agreement:.1%} over {self.positions} positions (needs {self.min_agreement:.0%}), "
            f"largest lead among misses {self.largest_miss_lead:.2f} nats{bar}"
            + (f"; {self.worst_miss}" if self.worst_miss and not self.passed else "")
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CACHE = ".export-reference.json"
"""Written in ``reference``'s ``cache`` folder (the model's own adapter folder): several exports of one
model (each format, each precision) compute its reference once."""


def reference(
    base_folder: Path, adapter: Path | None, prompts: Sequence[str] = GOLDEN, *, cache: Path | None = None
) -> Reference:
    """Greedy answers of base + adapter in float32 PyTorch, with the lead at each position; kept in
    ``cache/CACHE`` under a key of everything they depend on (the adapter's bytes, the base's weight
    files, the prompts, the libraries' versions), and read from there when the key matches."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_folder)
    key = _reference_key(base_folder, adapter, prompts)
    path = cache / CACHE if cache is not None else None
    if path is not None and path.is_file():
        try:
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                return Reference([Answer(**a) for a in saved["answers"]], set(saved["stop_ids"]), tokenizer)
        except (OSError, ValueError, TypeError, KeyError):
            pass  # unreadable or from another layout: computed again below
    ref = _compute_reference(base_folder, adapter, prompts, tokenizer)
    if path is not None:
        data = {"key": key, "answers": [asdict(a) for a in ref.answers], "stop_ids": sorted(ref.stop_ids)}
        with suppress(OSError):  # a read-only model folder: the reference just is not kept
            write_atomic(path, json.dumps(data))
    return ref


def _reference_key(base_folder: Path, adapter: Path | None, prompts: Sequence[str]) -> str:
    import peft
    import torch
    import transformers

    digest = hashlib.sha256(
        json.dumps([list(prompts), TOKENS, torch.__version__, transformers.__version__, peft.__version__]).encode()
    )
    for f in sorted(base_folder.iterdir()):  # weights by size and time (hashing GBs would cost more than it saves)
        if f.is_file() and not f.name.startswith("."):  # not this cache itself
            st = f.stat()
            digest.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    if adapter is not None:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            digest.update((adapter / name).read_bytes())
    return digest.hexdigest()


def _compute_reference(base_folder: Path, adapter: Path | None, prompts: Sequence[str], tokenizer: Any) -> Reference:
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    model.eval()
    stops = stop_token_ids(tokenizer, model.generation_config)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).eval()
    answers = []
    with torch.no_grad():
        for text in prompts:
            ids = render_prompt(tokenizer, [{"role": "user", "content": text}])
            out = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=TOKENS,
                eos_token_id=sorted(stops),
                pad_token_id=sorted(stops)[0],
            )
            tokens = _until_stop(out[0, len(ids) :].tolist(), stops)
            choices, leads = _teacher_forced(model, ids, tokens)
            answers.append(Answer(text, ids, tokens, choices, leads))
    return Reference(answers, stops, tokenizer)


def _until_stop(tokens: list[int], stops: set[int]) -> list[int]:
    for k, t in enumerate(tokens):
        if t in stops:
            return tokens[: k + 1]
    return tokens


def _teacher_forced(model: Any, ids: list[int], tokens: list[int]) -> tuple[list[int], list[float]]:
    import torch

    logits = model(torch.tensor([ids + tokens])).logits[0, len(ids) - 1 : len(ids) + len(tokens) - 1].float()
    top = torch.topk(torch.log_softmax(logits, -1), 2)
    return top.indices[:, 0].tolist(), (top.values[:, 0] - top.values[:, 1]).tolist()


def verdict(
    ref: Reference, reader: str, precision: str, greedy: list[list[int]], forced: list[list[int]]
) -> Verification:
    """Compare a reader's greedy answers and teacher-forced top tokens with the reference."""
    min_agreement, decided = CRITERIA[precision]
    equal = agree = total = 0
    largest, worst = 0.0, None
    samples = []
    for answer, got, top in zip(ref.answers, greedy, forced, strict=True):
        equal += _same_answer(answer.tokens, got, ref.stop_ids)
        for k, (want, have, lead) in enumerate(zip(answer.choices, top, answer.leads, strict=True)):
            total += 1
            if want == have or (want in ref.stop_ids and have in ref.stop_ids):
                agree += 1
            elif lead >= largest:
                largest, worst = lead, (answer, k, have)
        samples.append(
            {
                "reference": ref.tokenizer.decode(answer.tokens, skip_special_tokens=True),
                "export": ref.tokenizer.decode(got, skip_special_tokens=True),
            }
        )
    agreement = agree / max(total, 1)
    where = ""
    if worst is not None:
        answer, k, have = worst
        decode = ref.tokenizer.decode
        where = (
            f"worst miss: {answer.text!r}, answer token {k + 1}, after {decode(answer.tokens[:k])!r}: "
            f"reference {decode([answer.choices[k]])!r}, {reader} {decode([have]) if have >= 0 else '(nothing)'!r}"
        )
    passed = equal == len(ref.answers) or (agreement >= min_agreement and (decided is None or largest < decided))
    return Verification(
        reader,
        precision,
        len(ref.answers),
        equal,
        agreement,
        total,
        largest,
        min_agreement,
        decided,
        passed,
        samples,
        worst_miss=where,
    )


def _same_answer(want: list[int], got: list[int], stops: set[int]) -> bool:
    """Equal tokens; a reader that reports no end-of-turn token, or another one of the model's, still ends there."""

    def ends(t: list[int]) -> bool:
        return bool(t) and t[-1] in stops

    return want[: len(want) - ends(want)] == got[: len(got) - ends(got)] and ends(want) == ends(got)


def with_transformers(folder: Path, ref: Reference, precision: str = "unquantised") -> Verification:
    """Load an exported Hugging Face folder with plain transformers (its own tokenizer and generation config)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model: Any = AutoModelForCausalLM.from_pretrained(folder)
    model.eval()
    greedy, forced = [], []
    with torch.no_grad():
        for answer in ref.answers:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": answer.text}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
            if list(ids) != answer.prompt:
                raise VerificationFailed(
                    "the exported tokenizer's chat template renders prompts differently from the one trained "
                    f"({len(ids)} tokens against {len(answer.prompt)})"
                )
            out = model.generate(
                torch.tensor([answer.prompt]),
                attention_mask=torch.ones(1, len(answer.prompt), dtype=torch.long),
                do_sample=False,
                max_new_tokens=TOKENS,
            )
            stops = stop_token_ids(tokenizer, model.generation_config)
            greedy.append(_until_stop(out[0, len(answer.prompt) :].tolist(), stops))
            forced.append(_teacher_forced(model, answer.prompt, answer.tokens)[0])
    return verdict(ref, "transformers", precision, greedy, forced)


def with_llamacpp(gguf: Path, lora: Path | None, ref: Reference, precision: str) -> Verification:
    """Load an exported GGUF (and GGUF LoRA) with llama.cpp and query it with token prompts."""
    import xllamacpp as x

    p = x.CommonParams()
    p.model.path = str(gguf)
    p.n_parallel = 1
    p.n_ctx = 2048
    p.warmup = False
    p.verbosity = -1
    if lora is not None:
        p.lora_adapters = [x.CommonAdapterLoraInfo(str(lora), 1.0)]
    server = x.Server(p)
    greedy = [_complete(server, a.prompt, TOKENS, lora is not None) for a in ref.answers]
    forced = [
        [(_complete(server, a.prompt + a.tokens[:k], 1, lora is not None) or [-1])[0] for k in range(len(a.tokens))]
        for a in ref.answers
    ]
    del server
    return verdict(ref, "llama.cpp", precision, greedy, forced)


def _complete(server: Any, prompt: list[int], max_tokens: int, lora: bool) -> list[int]:
    request: dict[str, Any] = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "logprobs": 1,
        "stream": True,
    }
    if lora:
        request["lora"] = [{"id": 0, "scale": 1.0}]
    tokens: list[int] = []
    errors: list[Any] = []

    def on_chunk(chunk: dict[str, Any]) -> bool:
        if "choices" not in chunk:
            errors.append(chunk)
            return True
        for choice in chunk["choices"]:
            tokens.extend(int(e["id"]) for e in (choice.get("logprobs") or {}).get("content") or [])
        return False

    server.handle_completions(request, on_chunk)
    if errors:
        raise VerificationFailed(f"llama.cpp refused the export: {errors[0]}")
    return tokens
