"""Whether the server running this app was asked to stop.

uvicorn runs the lifespan shutdown only after every open connection has closed, so an endless stream cannot
wait for it: it has to notice the signal itself. uvicorn installs its ``Server.handle_exit`` as the SIGTERM
handler, so the server (and its ``should_exit`` flag) is reachable from the handler.
"""

from __future__ import annotations

import signal


def server_is_exiting() -> bool:
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return bool(getattr(server, "should_exit", False))
