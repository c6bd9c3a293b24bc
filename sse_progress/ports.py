"""Can this process listen where it was told to? Asked before a command prints anything.

uvicorn binds its socket only after the app's startup has run (and the demo prints its URLs there), then
exits 3 with a traceback-like log; a port in use is better told in one line, up front.
"""

from __future__ import annotations

import errno
import socket


def cannot_listen(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound, as one line; None when it can (checked as uvicorn binds: with
    SO_REUSEADDR, so a port left in TIME_WAIT by a previous run counts as free)."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        return f"cannot listen on {host}: {error.strerror}"
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                return bind_failure(host, port, error)
    return None


def bind_failure(host: str, port: int, error: OSError) -> str:
    """The one line for a failed bind: a port in use is named as such."""
    if error.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use"
    return f"cannot listen on port {port} on {host}: {error.strerror or error}"
