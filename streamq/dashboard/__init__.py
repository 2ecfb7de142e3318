"""The web dashboard: queues, workers, jobs, the DLQ, delayed jobs, schedules and the demo.

``create_dashboard(app)`` returns an ASGI app (Starlette: a small toolkit with
no build step, mountable at a path in a user's own Starlette or FastAPI app).
Pages are rendered on the server (Jinja2, autoescape on); a few lines of our
own JavaScript refresh the live parts and follow a running job (Server-Sent
Events). Every asset ships in the package: no CDN.

Safe by default: ``auth`` ("user:password" for HTTP Basic, "token:<secret>"
for a bearer token), CSRF-checked POSTs for every change, and ``read_only``
to hide and refuse them (see ``streamq.dashboard.security``). ``streamq
dashboard`` serves it (``streamq.dashboard.server.serve``).

Needs the extra: ``pip install 'streamq[dashboard]'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from streamq.app import App
from streamq.dashboard.charts import BucketCache
from streamq.dashboard.render import STATIC, environment
from streamq.dashboard.security import Auth, SecurityMiddleware
from streamq.errors import ConfigError

if TYPE_CHECKING:
    import jinja2

    from streamq.demo_pool import DemoControl

__all__ = ["Dashboard", "create_dashboard"]

DEFAULT_REFRESH_MS = 2000


@dataclass(slots=True)
class Dashboard:
    """What every route needs: the Apps by queue name, the mode, and shared caches."""

    apps: dict[str, App]
    read_only: bool
    demo: DemoControl | None
    env: jinja2.Environment
    refresh_ms: int = DEFAULT_REFRESH_MS
    buckets: BucketCache = field(default_factory=BucketCache)


def create_dashboard(
    apps: App | Sequence[App],
    *,
    read_only: bool = False,
    auth: str | None = None,
    demo: DemoControl | None = None,
) -> Starlette:
    """The dashboard of one or several Apps (a queue switcher), as an ASGI app.

    ``auth``: ``"user:password"`` (HTTP Basic) or ``"token:<secret>"`` (a bearer
    token, or ``?token=`` once, then a cookie); None: no authentication (the
    CLI allows that only on a loopback address). ``read_only``: no forms, and
    every POST is refused (403). ``demo``: adds the live demo page.

    Raises ConfigError for no Apps, two Apps with the same queue name, or a bad ``auth``.
    """
    from streamq.dashboard import actions, demo_routes, routes  # routes need Dashboard

    listed = [apps] if isinstance(apps, App) else list(apps)
    if not listed or not all(isinstance(a, App) for a in listed):
        raise ConfigError("create_dashboard needs an App or a sequence of Apps")
    by_name: dict[str, App] = {}
    for app in listed:
        if app.name in by_name:
            raise ConfigError(f"two Apps share the queue name {app.name!r}")
        by_name[app.name] = app
    parsed = Auth.parse(auth) if auth is not None else None
    dashboard = Dashboard(by_name, read_only, demo, environment())
    route_list: list[Route | Mount] = [
        *routes.routes(dashboard),
        *actions.routes(dashboard),
        *demo_routes.routes(dashboard),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(
        routes=route_list,
        middleware=[Middleware(SecurityMiddleware, auth=parsed, read_only=read_only)],
        exception_handlers=routes.exception_handlers(dashboard),
    )
