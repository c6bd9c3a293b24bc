"""Redis Cluster URLs: ``redis+cluster://host:port`` and ``rediss+cluster://host:port`` (TLS).

The host and port are a seed: any node of the cluster; the client discovers the others. Credentials and query
options apply to every node.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


def node_url(url: str, host: str | None = None, port: int | None = None) -> str:
    """The plain ``redis://``/``rediss://`` form of a cluster URL, optionally pointed at another node."""
    parts = urlsplit(url)
    scheme = CLUSTER_SCHEMES.get(parts.scheme, parts.scheme)
    netloc = parts.netloc
    if host is not None and port is not None:
        credentials = netloc.rpartition("@")[0]
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        netloc = f"{credentials}@{address}" if credentials else address
    return urlunsplit((scheme, netloc, parts.path, parts.query, parts.fragment))
