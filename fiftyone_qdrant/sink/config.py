"""The reference connectors' configuration: a ``config.yaml`` (topic, gRPC
URL, API key) with ``${{ secrets.NAME }}`` resolved from a secrets file or
the environment, turned into :func:`~fiftyone_qdrant.sink.open_target`
arguments that reach Qdrant as the connectors do."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Dict, Mapping, Optional

from ..errors import ConfigError


#: the port of Qdrant's gRPC API, which the connectors' ``url`` names
QDRANT_GRPC_PORT = 6334


@dataclasses.dataclass
class ConnectorConfig:
    """What the reference connector's ``config.yaml`` says. Its ``url`` is
    Qdrant's **gRPC** URL (``http://localhost:6334``), as for the Fluvio and
    Kafka connectors (``qdrant.grpc.url``): see :meth:`connection`."""

    topic: Optional[str]
    url: Optional[str]
    api_key: Optional[str]

    def connection(self) -> Dict[str, Any]:
        """:func:`open_target` arguments that reach the server as the
        connector does: gRPC on the URL's port (6334 if it names none), TLS
        for ``https``. The REST URL handed on is the same host on the REST
        default port, which a gRPC client does not use for points."""
        if not self.url:
            return {"api_key": self.api_key} if self.api_key else {}
        import urllib.parse

        parts = urllib.parse.urlsplit(self.url if "://" in self.url else "http://" + self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("The connector's qdrant.url %r is not an http(s)://host:port URL" % self.url)
        try:
            port = parts.port or QDRANT_GRPC_PORT
        except ValueError:
            raise ConfigError("The connector's qdrant.url %r has an invalid port" % self.url) from None
        host = "[%s]" % parts.hostname if ":" in parts.hostname else parts.hostname
        return {"url": "%s://%s" % (parts.scheme, host), "grpc_port": port, "prefer_grpc": True,
                "https": parts.scheme == "https", "api_key": self.api_key}


_SECRET_RE = re.compile(r"\$\{\{\s*secrets\.([A-Za-z0-9_]+)\s*\}\}")


def read_secrets(path: Optional[str]) -> Dict[str, str]:
    """A connector secrets file: ``NAME=value`` lines, ``#`` comments."""
    secrets: Dict[str, str] = {}
    if not path:
        return secrets
    with open(path) as f:
        for number, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if "=" not in line:
                raise ConfigError("%s line %d: expected NAME=value" % (path, number))
            name, value = line.split("=", 1)
            secrets[name.strip()] = value.strip().strip("\"'")
    return secrets


def load_connector_config(path: str, secrets_path: Optional[str] = None,
                          environ: Optional[Mapping[str, str]] = None) -> ConnectorConfig:
    """Reads ``meta.topic``, ``qdrant.url`` and ``qdrant.api_key`` from a
    connector config, resolving ``${{ secrets.NAME }}`` from the secrets
    file, then from the environment."""
    import yaml

    environ = os.environ if environ is None else environ
    secrets = read_secrets(secrets_path)
    with open(path) as f:
        doc = yaml.safe_load(f) or {}

    def resolve(value: Any) -> Optional[str]:
        if value is None:
            return None

        def substitute(match):
            name = match.group(1)
            if name in secrets:
                return secrets[name]
            if name in environ:
                return environ[name]
            raise ConfigError(
                "Secret %s used in '%s' is neither in the secrets file nor in the environment" % (name, path)
            )

        return _SECRET_RE.sub(substitute, str(value))

    meta = doc.get("meta") or {}
    qdrant = doc.get("qdrant") or {}
    topic = meta.get("topic")
    if isinstance(topic, dict):  # newer connector configs: {topic: {meta: {name: ...}}}
        topic = (topic.get("meta") or {}).get("name")
    return ConnectorConfig(topic=resolve(topic), url=resolve(qdrant.get("url")), api_key=resolve(qdrant.get("api_key")))
