"""The one place the stateful parts are built from ``Settings``: the store, the file blobs and the catalog.

The server adds its inference engine on top (``server.app.build_services``); ``selftune worker``
and the CLI's local commands use these alone, so they never load a model they do not need.
"""

from __future__ import annotations

from dataclasses import dataclass

from selftune.blobs import Blobs
from selftune.catalog import Catalog
from selftune.config import Settings
from selftune.store import Store


@dataclass
class Core:
    settings: Settings
    store: Store
    blobs: Blobs
    catalog: Catalog

    def close(self) -> None:
        self.store.close()


def open_core(settings: Settings) -> Core:
    """Create ``SELFTUNE_HOME`` if needed, open (and upgrade) the database, and the catalog on it."""
    settings.home.mkdir(parents=True, exist_ok=True)
    store = Store(settings.db_url)
    return Core(settings, store, Blobs(settings.home / "files"), Catalog(settings, store))
