"""The one place the stateful parts are built from ``Settings``.

``Core`` is what every process needs: the store, the file blobs, the catalog, and typed access to
the objects that follow the lifecycle pattern (batches, uploads, exports, stored responses).
``selftune worker`` and the CLI's local commands use it alone, so they never load a model they do
not need. ``Services`` adds what a server has on top: the API keys, the inference engine, the
exports; ``build_services`` makes it for ``selftune serve`` (``server.app``), and route handlers,
the serving layer (``selftune.serving``) and the batch runner receive it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from selftune.blobs import Blobs
from selftune.cache import Cache
from selftune.catalog import Catalog
from selftune.config import Settings
from selftune.lifecycle import Objects
from selftune.schemas.batches import Batch
from selftune.schemas.responses import StoredResponse
from selftune.schemas.uploads import Upload
from selftune.statuses import BATCHES, UPLOADS
from selftune.storage import Storage, open_storage
from selftune.store import Store

if TYPE_CHECKING:
    from selftune.evals.service import Evals
    from selftune.export.service import Exports
    from selftune.graders.python_grader import Slots
    from selftune.inference.engine import Engine
    from selftune.serving.admission import Admission


@dataclass
class Core:
    settings: Settings
    store: Store
    blobs: Blobs
    catalog: Catalog
    storage: Storage
    """Where the bytes of files, adapters, checkpoints and exports live (``selftune.storage``)."""
    cache: Cache | None
    """With a remote store: this machine's copies of what it fetched; None with the local folder."""

    @cached_property
    def batches(self) -> Objects[Batch]:
        return Objects(self.store.objects, "batch", Batch, BATCHES, "batch", stamp=True)

    @cached_property
    def uploads(self) -> Objects[Upload]:
        return Objects(self.store.objects, "upload", Upload, UPLOADS, "upload")

    @cached_property
    def responses(self) -> Objects[StoredResponse]:
        """Stored responses: written once, finished (a response has no status machine)."""
        return Objects(self.store.objects, "response", StoredResponse, None, "response")

    def close(self) -> None:
        self.store.close()


def open_core(settings: Settings) -> Core:
    """Create ``SELFTUNE_HOME`` if needed, open (and upgrade) the database, the store of objects and
    the catalog on them."""
    settings.check_storage()
    settings.home.mkdir(parents=True, exist_ok=True)
    storage = open_storage(settings.storage_url, settings.home)
    cache = Cache(settings.home / "cache", storage, settings.cache_bytes) if storage.remote else None
    store = Store(settings.db_url)
    return Core(settings, store, Blobs(settings.home / "files", cache), Catalog(settings, store, cache), storage, cache)


@dataclass
class Services(Core):
    """Everything a request handler may call; built once in the app's lifespan."""

    keys: dict[str, str]
    engine: Engine
    exports: Exports
    admission: Admission

    @cached_property
    def python_graders(self) -> Slots:
        """Python graders at once on this server: in all, and per owner (with API keys)."""
        from selftune.graders.python_grader import Slots

        s = self.settings
        return Slots(s.max_python_graders, s.max_python_graders_per_owner if self.keys else s.max_python_graders)

    @cached_property
    def evals(self) -> Evals:
        from selftune.evals.service import Evals

        return Evals(self.store, self.blobs, self.catalog)

    def close(self) -> None:
        if "python_graders" in self.__dict__:
            self.python_graders.close()
        self.exports.close()
        self.engine.close()
        super().close()


def build_services(settings: Settings) -> Services:
    """The server's services: ``open_core`` plus the inference engine (which imports torch) and exports."""
    from selftune.export.service import Exports
    from selftune.inference.router import Router
    from selftune.serving.admission import Admission

    core = open_core(settings)
    engine = Router(settings, core.catalog)
    exports = Exports(settings, core.store, core.catalog)
    admission = Admission(settings)
    return Services(
        settings,
        core.store,
        core.blobs,
        core.catalog,
        core.storage,
        core.cache,
        settings.keys,
        engine,
        exports,
        admission,
    )
