"""Base models on many machines: the weights' hash at registration, their bytes in the store, and
each machine's own copy checked against both.

``Catalog.add`` records the SHA-256 of a model's weights (``model_files.weights_sha256``) and, with a
remote store, uploads what another machine needs of it (``share``): its GGUF file, or a whole folder
(a Hugging Face folder; selftune's own for a GGUF given a chat template or joined from parts), once
per hash, under ``bases/SHA256/``. ``Catalog.materialize`` and ``Catalog.gguf`` see each model through
``here``: on a machine that lacks the weights they come from the store into
``SELFTUNE_HOME/models/NAME.src``; a copy whose hash differs is refused with both hashes. On one
machine (no remote store) nothing is checked: the registration's own files are the model.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from selftune.atomic import locked
from selftune.cache import Cache
from selftune.errors import InvalidRequest, NotFound
from selftune.model_files import slug, weights_sha256

if TYPE_CHECKING:
    from selftune.catalog import BaseModelSpec


def from_s3(url: str, folder: Path) -> Path:
    """A model given as an ``s3://bucket/key`` URL (a GGUF file, or a folder's prefix), downloaded
    (streamed, complete or not at all) into selftune's folder for it; the AWS_* variables reach the
    bucket. Registered from there, it is shared like any local model: other machines fetch it from
    selftune's store, and need no access to that bucket."""
    from selftune.storage import S3Storage

    location, _, name = url.rstrip("/").rpartition("/")
    if not name or location == "s3:/":
        raise InvalidRequest(f"{url}: name an object or a prefix in the bucket (s3://bucket/path/model.gguf)")
    copy = folder / name
    if not S3Storage(location).get(name, copy):
        raise InvalidRequest(f"{url}: no such object or prefix in the bucket", param="path")
    return copy


def source_path(spec: BaseModelSpec) -> Path:
    """The file (gguf) or folder (hf) the model's weights come from."""
    return Path(spec.path) / spec.gguf_file if spec.source == "gguf" and spec.gguf_file else Path(spec.path)


class SharedBases:
    def __init__(self, models_dir: Path, cache: Cache | None) -> None:
        self.models_dir = models_dir
        self.cache = cache
        self._checked: dict[tuple[str, str, str], BaseModelSpec] = {}
        """Models checked (or fetched) by this process: hashing weights again at every use would cost seconds."""

    def share(self, spec: BaseModelSpec) -> tuple[str | None, str | None]:
        """The weights' hash, and with a remote store the key their bytes are stored under:
        (sha256, key), or (None, None) for a Hub id, which every machine fetches from the Hub."""
        if spec.source == "hub":
            return None, None
        digest = weights_sha256(source_path(spec))
        if self.cache is None:
            return digest, None
        unit = self._unit(spec)
        key = f"bases/{digest}/{'folder' if unit.is_dir() else unit.name}"
        if not self.cache.storage.exists(key):
            self.cache.storage.put(key, unit.resolve() if unit.is_file() else unit)
        return digest, key

    def _unit(self, spec: BaseModelSpec) -> Path:
        """What another machine needs of the model (see the module's docstring)."""
        folder = Path(spec.path)
        if spec.source == "hf" or folder.resolve().is_relative_to(self.models_dir.resolve()):
            return folder
        return source_path(spec)

    def here(self, spec: BaseModelSpec) -> BaseModelSpec:
        """``spec`` as this machine has it: its weights fetched from the store when they are not here,
        refused when the copy here has another hash. Checked once per process."""
        if spec.sha256 is None or spec.source == "hub" or self.cache is None:
            return spec  # one machine; the built-in model, models.toml entries, older registrations
        memo = (spec.name, spec.sha256, spec.path)
        if memo in self._checked:
            return self._checked[memo]
        source = source_path(spec)
        local = spec
        if not source.exists() and spec.stored_key:
            folder = self.models_dir / f"{slug(spec.name)}.src"
            copy = folder if spec.stored_key.endswith("/folder") else folder / str(spec.gguf_file)
            with locked(self.models_dir / f".{folder.name}.lock"):
                if not copy.exists() and not self.cache.storage.get(spec.stored_key, copy):
                    raise NotFound(f"{spec.name}: its weights are neither at {source} nor in the store")
            local = replace(spec, path=str(folder))
            source = source_path(local)
        if source.exists() and (digest := weights_sha256(source)) != spec.sha256:
            raise InvalidRequest(
                f"{spec.name}: the weights at {source} on this machine have SHA-256 {digest}, but the model was "
                f"registered with {spec.sha256}: they are another model (or damaged). Register it again with "
                f"`selftune models add {spec.name} PATH` from the machine that has the right weights, or remove "
                "this copy so the store's is used.",
                param="model",
                code="model_mismatch",
            )
        self._checked[memo] = local
        return local
