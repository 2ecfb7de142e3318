"""Serving the dashboard: the bind check and uvicorn, for ``streamq dashboard`` and the demo.

``check_bind`` refuses a non-loopback address without auth: a dashboard can
requeue and purge, so it is never open to a network by accident.
``serve`` runs uvicorn's Server in the caller's event loop and returns when
it stops (Ctrl-C or SIGTERM); open event streams get ``GRACE_S`` to end.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from streamq.app import App
from streamq.dashboard import create_dashboard
from streamq.demo_pool import DemoControl
from streamq.errors import ConfigError

GRACE_S = 3
"""How long shutdown waits for open connections (a job page's event stream)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, auth: str | None) -> None:
    """ConfigError when ``host`` is reachable from other machines and there is no auth."""
    if auth is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve the dashboard on {host} without --auth "
            "(user:password or token:<secret>); only loopback addresses may go without"
        )


async def serve(
    apps: App | Sequence[App],
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    auth: str | None = None,
    read_only: bool = False,
    demo: DemoControl | None = None,
    log_level: str = "warning",
) -> None:
    """Serve the dashboard until interrupted (uvicorn's own signal handling)."""
    import uvicorn

    check_bind(host, auth)
    dashboard = create_dashboard(apps, read_only=read_only, auth=auth, demo=demo)
    config = uvicorn.Config(
        dashboard, host=host, port=port, log_level=log_level, lifespan="off",
        timeout_graceful_shutdown=GRACE_S, proxy_headers=False,
    )  # fmt: skip
    await uvicorn.Server(config).serve()
