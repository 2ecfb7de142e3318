"""Templates and links: Jinja2 with autoescape always on, and URLs that know the mount point.

Links are the dashboard's own route paths under ``scope["root_path"]``, so the
dashboard works at ``/`` and mounted at ``/ops`` inside a user's app alike
(``request.url_for`` would ask the outermost router, which names routes by
its own mounts).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from streamq.dashboard.data import when
from streamq.stats import format_duration

if TYPE_CHECKING:
    from streamq.dashboard import Dashboard

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        # Every value is escaped: job arguments, results, errors and task names are
        # user data. Nothing in the templates marks job data |safe.
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["duration"] = lambda s: "-" if s is None else format_duration(float(s))
    env.filters["ms_age"] = lambda ms: "-" if ms is None else format_duration(int(ms) / 1000)
    env.filters["iso"] = lambda d: (
        "-" if d is None else d.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    )
    env.filters["num"] = lambda n: "-" if n is None else f"{n:,.0f}"
    return env


def url(request: Request, name: str, query: dict[str, Any] | None = None, **params: Any) -> str:
    """The path of one of the dashboard's routes, under its mount point."""
    router = request.scope["app"].router
    path = str(router.url_path_for(name, **{k: str(v) for k, v in params.items()}))
    root = str(request.scope.get("root_path") or "").rstrip("/")
    shown = {k: v for k, v in (query or {}).items() if v not in (None, "")}
    return root + path + ("?" + urlencode(shown) if shown else "")


def render(
    dashboard: Dashboard, request: Request, template: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    def link(name: str, query: dict[str, Any] | None = None, **params: Any) -> str:
        return url(request, name, query, **params)

    html = dashboard.env.get_template(template).render(
        request=request,
        url=link,
        csrf=request.state.csrf,
        read_only=dashboard.read_only,
        queues=list(dashboard.apps),
        has_demo=dashboard.demo is not None,
        **context,
    )
    return HTMLResponse(html, status_code=status_code, headers={"cache-control": "no-store"})
