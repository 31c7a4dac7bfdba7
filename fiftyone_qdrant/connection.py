"""Where an index lives: the embedded store on local disk (served by a local
Qdrant service, :mod:`fiftyone_qdrant.service`), or a server. Both are
reached with ``qdrant_client.QdrantClient`` (:class:`~.server.ServerStore`).

Settings come from kwargs, ``FIFTYONE_BRAIN_SIMILARITY_QDRANT_*`` environment
variables or ``~/.fiftyone/brain_config.json`` (FiftyOne's brain config
merges the last two for us). With no ``url`` the index lives in the embedded
store at ``path`` (default ``~/.fiftyone/qdrant``).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Dict, Optional, Tuple

from .store import VectorStore
from .errors import ConfigError
from .redaction import safe_url

_stores: Dict[Tuple, VectorStore] = {}
_stores_lock = threading.Lock()


def default_store_path() -> str:
    """``FIFTYONE_BRAIN_SIMILARITY_QDRANT_PATH``, else ``qdrant/`` beside
    FiftyOne's config file (``~/.fiftyone/qdrant``)."""
    if os.environ.get("FIFTYONE_BRAIN_SIMILARITY_QDRANT_PATH"):
        return os.environ["FIFTYONE_BRAIN_SIMILARITY_QDRANT_PATH"]
    config_path = os.environ.get("FIFTYONE_CONFIG_PATH") or os.path.join(
        os.path.expanduser("~"), ".fiftyone", "config.json"
    )
    return os.path.join(os.path.dirname(config_path), "qdrant")


@dataclasses.dataclass(frozen=True)
class ConnectionSettings:
    url: Optional[str] = None
    api_key: Optional[str] = dataclasses.field(default=None, repr=False)
    grpc_port: Optional[int] = None
    prefer_grpc: Optional[bool] = None
    https: Optional[bool] = None
    timeout: Optional[float] = None
    path: Optional[str] = None

    def __post_init__(self):
        if self.url is not None and not isinstance(self.url, str):
            raise ConfigError("`url` must be a string such as 'http://localhost:6333'")
        if self.grpc_port is not None and (
            isinstance(self.grpc_port, bool) or not isinstance(self.grpc_port, int) or not 0 < self.grpc_port < 65536
        ):
            raise ConfigError("`grpc_port` must be an integer port number, got %r" % (self.grpc_port,))
        if self.timeout is not None and (
            isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) or self.timeout <= 0
        ):
            raise ConfigError("`timeout` must be a positive number of seconds, got %r" % (self.timeout,))

    def __repr__(self) -> str:  # the URL's password is a secret too
        return "ConnectionSettings(url=%r, grpc_port=%r, prefer_grpc=%r, https=%r, timeout=%r, path=%r)" % (
            safe_url(self.url) if self.url else None, self.grpc_port, self.prefer_grpc, self.https, self.timeout,
            self.path,
        )

    @property
    def is_embedded(self) -> bool:
        return not self.url

    @property
    def store_path(self) -> str:
        return os.path.abspath(os.path.expanduser(self.path or default_store_path()))

    def describe(self) -> str:
        """Where the index lives, safe to log (no API key)."""
        if self.is_embedded:
            return "embedded Qdrant store at '%s'" % self.store_path
        return "Qdrant server at '%s'" % safe_url(self.url)

    def open(self) -> VectorStore:
        """A store shared by every index of this process with the same
        settings (one client per store per process)."""
        if self.is_embedded:
            key: Tuple = ("embedded", self.store_path)
        else:
            key = ("server", self.url, self.api_key, self.grpc_port, self.prefer_grpc, self.https, self.timeout)

        with _stores_lock:
            store = _stores.get(key)
            if store is None:
                store = _stores[key] = self.connect()
            return store

    def connect(self) -> VectorStore:
        """A new store of the caller's own, which the caller closes."""
        if self.is_embedded:
            from . import local

            local.start_service(self.store_path)  # starts while qdrant-client is imported
        from .server import ServerStore  # imports qdrant-client (~1.4 s): only to connect

        if self.is_embedded:
            return ServerStore.local(self.store_path)

        return ServerStore(
            self.url,
            api_key=self.api_key,
            grpc_port=self.grpc_port,
            prefer_grpc=self.prefer_grpc,
            https=self.https,
            timeout=self.timeout,
        )


def close_all() -> None:
    """Closes every cached store (tests; before another process writes)."""
    with _stores_lock:
        for store in _stores.values():
            store.close()
        _stores.clear()
